"""Delta debugging side by side: oracle tests and wall time on synthetic oracles (rich table).

Each case has n components (64, 256, 1024) grouped as layers x modules x row blocks, a known
needed set of m = 1, 4 or 16 of them, and one oracle:
  monotone     PASS iff the subset holds the needed set (needed set clustered in a few layers,
               as DAPA finds alignment in a few middle layers);
  mono-spread  the same with the needed set spread uniformly (the hierarchy's worst case);
  poisoned     non-monotone: PASS iff it holds the needed set and a "poison" component never
               comes without its partner;
  threshold    non-monotone: PASS iff weights sum to m - 0.25 (needed: 1.0; a few others +0.3
               or -0.3), so other 1-minimal sets exist.
A prior (the bundle's delta norms) is simulated: log-normal noise, needed components x2.
A second table reruns ProbDD and the hierarchical search with worse priors on the same cases:
  uninformative  log-normal noise (sigma 1) only;
  misleading     the needed components x0.5, and 5% of the others x10;
  outliers       the noise plus 5% of the components x20, needed or not.

Algorithms, all on the same oracles, every result checked passing and 1-minimal:
  ddmin        ddalign.search.ddmin, the reference (ratios are to its tests);
  picire       picire.DD (PyPI picire 21.8, outside reference; its FAIL means our PASS);
  probdd       ddalign.search.probdd without a prior, then with the prior;
  hier         ddalign.search.hierarchical layer -> module -> block with probdd and the prior;
  hier+mono    the same with assume_monotone=True (only where the oracle is monotone).
A run that exceeds --cap-tests oracle calls or --cap-seconds is stopped and shown as ">cap".

    python benchmarks/bench_search.py [--sizes 64,256,1024] [--needed 1,4,16]
        [--oracles monotone,mono-spread,poisoned,threshold] [--cap-tests 20000] [--cap-seconds 60]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from ddalign.search import Verdict, ddmin, hierarchical, is_one_minimal, probdd  # noqa: E402

SHAPES = {64: (4, 4, 4), 256: (8, 4, 8), 1024: (16, 8, 8)}  # layers, modules, blocks
ORACLES = ("monotone", "mono-spread", "poisoned", "threshold")


class Capped(Exception):
    """Raised by the oracle when the run exceeds its budget."""


@dataclass
class Case:
    n: int
    m: int
    kind: str
    shape: tuple[int, int, int]
    oracle: object  # leaves (list of ints) -> Verdict
    prior: dict  # unit -> weight, for leaves, modules and layers
    monotone: bool
    needed: frozenset = frozenset()

    def units(self):
        layers, modules, blocks = self.shape
        top = [("L", i) for i in range(layers)]
        leaves = {}
        for i in range(layers):
            for j in range(modules):
                leaves[("M", i, j)] = [(i * modules + j) * blocks + k for k in range(blocks)]
        expanders = [lambda u: [("M", u[1], j) for j in range(modules)], lambda u: leaves[u]]

        def concrete(units):
            out: list[int] = []
            for u in units:
                if isinstance(u, int):
                    out.append(u)
                elif u[0] == "M":
                    out.extend(leaves[u])
                else:
                    out.extend(x for j in range(modules) for x in leaves[("M", u[1], j)])
            return out

        return top, expanders, concrete


def make_case(n: int, m: int, kind: str, seed: int) -> Case:
    rng = random.Random(seed)
    layers, modules, blocks = SHAPES[n]
    per_layer = modules * blocks
    if kind == "mono-spread":
        needed = set(rng.sample(range(n), m))
    else:
        chosen = rng.sample(range(layers), min(layers, math.ceil(math.sqrt(m))))
        pool = [layer * per_layer + k for layer in chosen for k in range(per_layer)]
        needed = set(rng.sample(pool, m))
    others = [x for x in range(n) if x not in needed]
    if kind in ("monotone", "mono-spread"):

        def oracle(s):
            return Verdict.PASS if needed <= set(s) else Verdict.FAIL
    elif kind == "poisoned":
        a, b = rng.sample(others, 2)

        def oracle(s):
            s = set(s)
            return Verdict.PASS if needed <= s and (a not in s or b in s) else Verdict.FAIL
    else:
        k = max(1, n // 20)
        picked = rng.sample(others, 2 * k)
        weights = dict.fromkeys(range(n), 0.0)
        weights.update({x: 1.0 for x in needed})
        weights.update({x: 0.3 for x in picked[:k]})
        weights.update({x: -0.3 for x in picked[k:]})

        def oracle(s):
            return Verdict.PASS if sum(weights[x] for x in s) >= m - 0.25 else Verdict.FAIL

    prior = {x: rng.lognormvariate(0, 0.5) * (2.0 if x in needed else 1.0) for x in range(n)}
    return Case(
        n,
        m,
        kind,
        SHAPES[n],
        oracle,
        _with_units(prior, SHAPES[n]),
        kind in ("monotone", "mono-spread"),
        frozenset(needed),
    )


def _with_units(prior: dict, shape: tuple[int, int, int]) -> dict:
    """Leaf weights plus the module and layer weights (sums), as the bundle's prior has them."""
    layers, modules, blocks = shape
    for i in range(layers):
        for j in range(modules):
            prior[("M", i, j)] = sum(prior[(i * modules + j) * blocks + k] for k in range(blocks))
        prior[("L", i)] = sum(prior[("M", i, j)] for j in range(modules))
    return prior


PRIORS = ("uninformative", "misleading", "outliers")


def worse_prior(case: Case, kind: str, seed: int) -> dict:
    """A prior that carries no information, or the wrong one (see the module docstring)."""
    rng = random.Random(seed)
    prior = {}
    for x in range(case.n):
        w = rng.lognormvariate(0, 1.0)
        if kind == "misleading":
            w *= 0.5 if x in case.needed else (10.0 if rng.random() < 0.05 else 1.0)
        elif kind == "outliers" and rng.random() < 0.05:
            w *= 20.0
        prior[x] = w
    return _with_units(prior, case.shape)


class Budget:
    """Counts real oracle calls; stops the run past the caps."""

    def __init__(self, oracle, cap_tests: int, cap_seconds: float, concrete=None):
        self.oracle, self.cap_tests, self.cap_seconds = oracle, cap_tests, cap_seconds
        self.concrete = concrete or (lambda s: s)
        self.calls = 0
        self.start = time.perf_counter()

    def __call__(self, subset):
        self.calls += 1
        if self.calls > self.cap_tests or time.perf_counter() - self.start > self.cap_seconds:
            raise Capped
        return self.oracle(self.concrete(subset))


def run_picire(items, test):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import picire
    # picire's FAIL is the "interesting" outcome: our PASS.
    return picire.DD(
        lambda config, config_id: picire.Outcome.FAIL if test(list(config)) is Verdict.PASS else picire.Outcome.PASS
    )(list(items))


@dataclass
class Outcome:
    tests: int | None  # None: capped
    seconds: float
    size: int | None
    ok: bool


def measure(name: str, case: Case, cap_tests: int, cap_seconds: float) -> Outcome:
    items = list(range(case.n))
    top, expanders, concrete = case.units()
    budget = Budget(case.oracle, cap_tests, cap_seconds, concrete if name.startswith("hier") else None)
    start = time.perf_counter()
    try:
        if name == "ddmin":
            minimal = ddmin(items, budget).minimal
        elif name == "picire":
            minimal = run_picire(items, budget)
        elif name == "probdd":
            minimal = probdd(items, budget).minimal
        elif name == "probdd+prior":
            minimal = probdd(items, budget, prior=case.prior).minimal
        else:
            minimal = concrete(
                hierarchical(
                    top,
                    budget,
                    expanders=expanders,
                    prior=case.prior,
                    assume_monotone=name == "hier+mono",
                    key=lambda units: frozenset(concrete(units)),
                ).minimal
            )
    except Capped:
        return Outcome(None, time.perf_counter() - start, None, True)
    seconds = time.perf_counter() - start
    return Outcome(budget.calls, seconds, len(minimal), is_one_minimal(minimal, case.oracle))


ALGORITHMS = ("ddmin", "picire", "probdd", "probdd+prior", "hier", "hier+mono")


def picire_available() -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import picire  # noqa: F401
        return True
    except Exception:  # picire imports pkg_resources, which setuptools 81 and newer no longer ship
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,256,1024")
    parser.add_argument("--needed", default="1,4,16")
    parser.add_argument("--oracles", default=",".join(ORACLES))
    parser.add_argument("--cap-tests", type=int, default=20000)
    parser.add_argument("--cap-seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    needed = [int(x) for x in args.needed.split(",")]
    kinds = [k for k in args.oracles.split(",") if k]
    for k in kinds:
        if k not in ORACLES:
            parser.error(f"--oracles: unknown {k!r}; expected some of {', '.join(ORACLES)}")
    algorithms = [a for a in ALGORITHMS if a != "picire" or picire_available()]
    console = Console(width=max(Console().width, 150))
    table = Table(title="oracle tests (ratio to ddmin) / result size; * = not 1-minimal", show_lines=False)
    for col in ("n", "m", "oracle"):
        table.add_column(col, justify="right" if col != "oracle" else "left")
    for a in algorithms:
        table.add_column(a, justify="right")
    ratios: dict[str, list[float]] = {a: [] for a in algorithms}
    seconds: dict[str, float] = dict.fromkeys(algorithms, 0.0)
    calls: dict[str, int] = dict.fromkeys(algorithms, 0)
    by_prior: dict[tuple[str, str], list[float]] = {(pk, a): [] for pk in PRIORS for a in ("probdd+prior", "hier")}
    for n in sizes:
        if n not in SHAPES:
            parser.error(f"--sizes: {n} has no layer x module x block shape; use 64, 256, 1024")
        for m in needed:
            for kind in kinds:
                case = make_case(n, m, kind, seed=zlib.crc32(f"{args.seed}/{n}/{m}/{kind}".encode()))
                cells = []
                base = None
                for a in algorithms:
                    if a == "hier+mono" and not case.monotone:
                        cells.append("-")
                        continue
                    out = measure(a, case, args.cap_tests, args.cap_seconds)
                    seconds[a] += out.seconds
                    if out.tests is None:
                        cells.append(f">cap ({out.seconds:.0f}s)")
                        continue
                    calls[a] += out.tests
                    if a == "ddmin":
                        base = out.tests
                    ratio = f" ({out.tests / base:.2f})" if base else ""
                    if base and a != "ddmin":
                        ratios[a].append(out.tests / base)
                    mark = "" if out.ok else "*"
                    cells.append(f"{out.tests}{ratio} /{out.size}{mark}")
                table.add_row(str(n), str(m), kind, *cells)
                for pk in PRIORS if base else ():
                    worse = dataclasses.replace(
                        case, prior=worse_prior(case, pk, zlib.crc32(f"{pk}/{n}/{m}/{kind}".encode()))
                    )
                    for a in ("probdd+prior", "hier"):
                        out = measure(a, worse, args.cap_tests, args.cap_seconds)
                        if out.tests is not None:
                            assert out.ok, f"{a} with a {pk} prior: result not 1-minimal"
                            by_prior[pk, a].append(out.tests / base)
                console.print(f"[dim]done n={n} m={m} {kind}[/dim]")
    console.print(table)
    summary = Table(title="summary over the rows where ddmin finished")
    for col in ("algorithm", "geo-mean ratio", "rows <= 0.5", "rows", "tests", "algorithm s", "us per test"):
        summary.add_column(col, justify="right")
    for a in algorithms:
        r = ratios[a]
        geo = math.exp(sum(math.log(x) for x in r) / len(r)) if r else float("nan")
        per = 1e6 * seconds[a] / calls[a] if calls[a] else float("nan")
        summary.add_row(
            a,
            "1.00" if a == "ddmin" else f"{geo:.2f}",
            "-" if a == "ddmin" else str(sum(1 for x in r if x <= 0.5)),
            "-" if a == "ddmin" else str(len(r)),
            str(calls[a]),
            f"{seconds[a]:.1f}",
            f"{per:.0f}",
        )
    console.print(summary)
    quality = Table(title="the prior's quality: geo-mean ratio to ddmin (rows)")
    for col in ("prior", "probdd+prior", "hier"):
        quality.add_column(col, justify="right")
    quality.add_row("informative (above)", *(_geo(ratios.get(a, [])) for a in ("probdd+prior", "hier")))
    for pk in PRIORS:
        quality.add_row(pk, *(_geo(by_prior[pk, a]) for a in ("probdd+prior", "hier")))
    console.print(quality)
    console.print(
        "wall times include the synthetic oracle (microseconds a call): they measure "
        "each algorithm's own overhead, not a model's evaluation time."
    )


def _geo(r: list[float]) -> str:
    return f"{math.exp(sum(math.log(x) for x in r) / len(r)):.2f} ({len(r)})" if r else "-"


if __name__ == "__main__":
    main()

"""Delta debugging over components: ddmin, probabilistic DD and hierarchical DD.

Model-free on purpose: every algorithm takes a list of items (any hashable values) and a
`test(subset) -> Verdict` function, where PASS means the subset is still "interesting" (the
transplant still defends). Each oracle call is expensive (a full evaluation of a model), so
everything here serves fewer calls:

- verdicts are cached by `frozenset(subset)` (or by `key(subset)`, e.g. the set of concrete
  components a mix of layers and modules stands for): a subset is never tested twice, and a cache
  pre-filled from a journal makes a resumed search free (the algorithms are deterministic, so
  replaying one with the known verdicts asks the oracle only for what was never answered);
- with `assume_monotone=True`, verdicts implied by known ones are inferred instead of tested
  (a superset of a passing set passes, a subset of a failing set fails);
- `probdd` (ProbDD, Wang et al. FSE 2021) removes groups of items whose size maximises the
  expected gain under a per-item probability of being needed, ordered by a prior (the
  per-component delta norms: the smallest are tried for removal first, and the largest are
  taken as likelier needed while the answers bear the norms out), in O(n) tests in the
  worst case instead of ddmin's O(n^2), with a final pass that makes its result 1-minimal;
- `hierarchical` searches coarse units first (layers), then the children of the kept ones
  (modules, then row blocks), each level started from the previous level's result.

`ddmin` (Zeller and Hildebrandt 2002) is kept as the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

from ddalign.errors import DdalignError

__all__ = [
    "Verdict", "SearchError", "TestRecord", "LevelResult", "SearchResult",
    "ddmin", "probdd", "hierarchical", "is_one_minimal",
]


class Verdict(str, Enum):
    """The oracle's answer. PASS: the subset is interesting (still defends)."""

    PASS = "PASS"
    FAIL = "FAIL"


class SearchError(DdalignError):
    """The search cannot start: the target is already safe, or even the full set fails.

    `kind` is "already-safe" (the empty set passes) or "never-safe" (the full set fails); the
    caller adds the measured rates to the message it shows.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class TestRecord:
    """One question asked during the search, and where its answer came from.

    source: "oracle" (a real test), "cache" (answered by a known verdict) or "inferred"
    (implied by monotonicity).
    """

    __test__ = False  # not a pytest class

    index: int
    level: str
    subset: tuple
    verdict: Verdict
    source: str
    key: Hashable = field(default=None, compare=False, repr=False)   # the cache key

    @property
    def cached(self) -> bool:
        return self.source != "oracle"


@dataclass
class LevelResult:
    """One level of a hierarchical search (a flat search has exactly one).

    `skipped` says why the level kept the previous result unrefined (its expansion did not
    pass), else None.
    """

    name: str
    items: int
    minimal: list
    tests: int
    skipped: str | None = None


@dataclass
class SearchResult:
    """minimal: the result, in the input order; tests: real oracle calls in this run."""

    minimal: list
    tests: int
    trace: list[TestRecord] = field(default_factory=list)
    levels: list[LevelResult] = field(default_factory=list)

    @property
    def queries(self) -> int:
        """Questions asked, whatever answered them."""
        return len(self.trace)

    @property
    def cached(self) -> int:
        return sum(1 for r in self.trace if r.source == "cache")

    @property
    def inferred(self) -> int:
        return sum(1 for r in self.trace if r.source == "inferred")

    def verdicts(self) -> dict[Hashable, Verdict]:
        """Every verdict the oracle gave, keyed as the cache is, for another run."""
        return {r.key: r.verdict for r in self.trace if r.source == "oracle"}


Test = Callable[[list], Any]
OnTest = Callable[[list, Verdict, bool, str, Any], None]
"""on_test(subset, verdict, cached, level, outcome): after every question; `outcome` is what the
test returned for a real test (a Verdict, or a record with a `.verdict`), None when answered
without one."""
Progress = Callable[[int], None]
Key = Callable[[list], Hashable]
Prior = Mapping[Hashable, float] | Callable[[Any], float] | None


def _verdict(value: Any, where: str) -> Verdict:
    """Accept Verdict, "PASS"/"FAIL" (journals), bool (True = PASS), or a record with a `.verdict`."""
    if hasattr(value, "verdict") and not isinstance(value, (str, bool)):
        value = value.verdict
    if isinstance(value, Verdict):
        return value
    if isinstance(value, bool):
        return Verdict.PASS if value else Verdict.FAIL
    if isinstance(value, str) and value.upper() in ("PASS", "FAIL"):
        return Verdict(value.upper())
    raise DdalignError(f"{where}: expected a Verdict (PASS or FAIL), got {value!r}")


class _Session:
    """The oracle as the algorithms see it: cache, monotone inference, trace, hooks."""

    def __init__(self, test: Test, *, cache: Mapping | None, assume_monotone: bool,
                 on_test: OnTest | None, progress: Progress | None,
                 key: Key | None = None) -> None:
        self.test = test
        self.key = key or frozenset
        self.cache: dict[Hashable, Verdict] = {}
        for known, value in (cache or {}).items():
            known = frozenset(known) if isinstance(known, (list, set)) else known
            self.cache[known] = _verdict(value, f"cache entry {known!r}")
        self.assume_monotone = assume_monotone
        self.on_test = on_test
        self.progress = progress
        self.tests = 0
        self.trace: list[TestRecord] = []
        # Monotone store as bit masks over items: subset checks are then single big-int ops.
        self._bit: dict[Hashable, int] = {}
        self._passing: list[int] = []   # minimal known passing sets
        self._failing: list[int] = []   # maximal known failing sets

    def _mask(self, subset: Iterable) -> int:
        mask = 0
        for item in subset:
            bit = self._bit.get(item)
            if bit is None:
                bit = self._bit[item] = 1 << len(self._bit)
            mask |= bit
        return mask

    def _infer(self, mask: int) -> Verdict | None:
        if any(p & mask == p for p in self._passing):
            return Verdict.PASS
        if any(f & mask == mask for f in self._failing):
            return Verdict.FAIL
        return None

    def _learn(self, mask: int, verdict: Verdict) -> None:
        if verdict is Verdict.PASS:
            self._passing = [p for p in self._passing if p & mask != mask] + [mask]
        else:
            self._failing = [f for f in self._failing if f & mask != f] + [mask]

    def ask(self, subset: Sequence, level: str) -> Verdict:
        subset = list(subset)
        key = self.key(subset)
        mask = self._mask(subset) if self.assume_monotone else 0
        # Inference first, then the cache: the store of known sets grows only from answered
        # questions, identically in a first run and in its replay, whereas a pre-filled cache
        # also holds later answers. Cache first would let a replay diverge wherever an
        # inference disagrees with a later real test (a non-monotone oracle, or another unit
        # set with the same key).
        verdict, source, outcome = None, "cache", None
        if self.assume_monotone:
            verdict, source = self._infer(mask), "inferred"
        if verdict is None:
            verdict, source = self.cache.get(key), "cache"
        if verdict is None:
            outcome = self.test(list(subset))
            verdict = _verdict(outcome, f"test({len(subset)} items)")
            source = "oracle"
            self.tests += 1
            self.cache[key] = verdict
        if self.assume_monotone and source != "inferred":
            self._learn(mask, verdict)
        self.trace.append(TestRecord(len(self.trace), level, tuple(subset), verdict, source, key))
        if self.on_test is not None:
            self.on_test(subset, verdict, source != "oracle", level, outcome)
        return verdict

    def estimate(self, remaining: float) -> None:
        if self.progress is not None:
            self.progress(max(0, int(math.ceil(remaining))))

    def check_bounds(self, items: list, level: str) -> None:
        """The full set must pass and the empty set fail, or there is nothing to search."""
        if self.ask(items, level) is Verdict.FAIL:
            raise SearchError(f"even the full set of {len(items)} components does not pass the "
                              "oracle: the transplant cannot reach the target", "never-safe")
        if self.ask([], level) is Verdict.PASS:
            raise SearchError("the empty set already passes the oracle: the target is already "
                              "safe without any transplant", "already-safe")


def _unique(items: Iterable) -> list:
    items = list(items)
    seen: set = set()
    for item in items:
        if item in seen:
            raise DdalignError(f"search items: {item!r} appears twice; expected distinct items")
        seen.add(item)
    return items


def _prior_fn(prior: Prior) -> Callable[[Any], float]:
    if prior is None:
        return lambda item: 0.0
    if callable(prior) and not isinstance(prior, Mapping):
        return lambda item: float(prior(item))
    return lambda item: float(prior.get(item, 0.0))


def _split(items: list, n: int) -> list[list]:
    """n contiguous chunks of near-equal size (the first ones one longer)."""
    size, extra = divmod(len(items), n)
    chunks, start = [], 0
    for i in range(n):
        stop = start + size + (1 if i < extra else 0)
        chunks.append(items[start:stop])
        start = stop
    return chunks


def _ddmin_core(session: _Session, items: list, level: str) -> list:
    """Zeller and Hildebrandt's ddmin on a passing `items`; returns a 1-minimal subset."""
    current, n = list(items), 2
    while len(current) >= 2:
        chunks = _split(current, n)
        reduced = False
        for done, chunk in enumerate(chunks):
            session.estimate(2 * n - done + len(current))
            if session.ask(chunk, level) is Verdict.PASS:
                current, n, reduced = chunk, 2, True
                break
        if not reduced and n > 2:   # with two chunks the complements are the chunks
            for i in range(len(chunks)):
                complement = [x for j, chunk in enumerate(chunks) if j != i for x in chunk]
                session.estimate(n - i + len(current))
                if session.ask(complement, level) is Verdict.PASS:
                    current, n, reduced = complement, max(n - 1, 2), True
                    break
        if not reduced:
            if n >= len(current):
                break
            n = min(len(current), 2 * n)
    session.estimate(0)
    return current


# An item is taken as needed once its probability is this close to 1.
_CERTAIN = 1.0 - 1e-9


def _probdd_core(session: _Session, items: list, level: str, prior: Callable[[Any], float],
                 p0: float) -> list:
    """ProbDD on a passing `items`, then a pass that makes the result 1-minimal.

    ProbDD (Wang et al., FSE 2021): every item has a probability of being needed; remove the
    group of least likely items that maximises the expected number removed (k * P(all k can
    go)); on a failure raise the group's probabilities by Bayes' rule (at least one of them is
    needed); an item alone in a failing group is needed. One addition: the items outside any
    failing group take an estimated density instead of a fixed p0 (see below).
    """
    position = {item: i for i, item in enumerate(items)}
    weight = {item: prior(item) for item in items}
    # The prior orders the removals, and it raises probabilities as far as the answers so far
    # trust it: an item weighing s times the median counts as s items of the estimated density
    # (`1 - (1 - base) ** s`), mixed with the plain density by `trust`, the posterior probability
    # (even odds at first) that the weights are informative, updated by each answer's likelihood
    # under the two models. Why: the organism's delta norms single out its planted components,
    # and ProbDD that only ordered by them spent its tests on groups the norms said were needed
    # (57 modules: 24 tests -> 16, hierarchical 31 -> 19; ddmin 45). On synthetic oracles
    # (bench_search.py): 2-4% fewer tests with an informative prior, 2-7% more with an
    # uninformative, misleading or outlier-heavy one. Measured while designing it (one seed, not in
    # the bench): believing the weights outright (no trust) cost 19-32% more with those, and
    # scaling p linearly by them 20% more.
    p = {item: p0 for item in items}
    ranked = sorted(weight.values())
    median = ranked[len(ranked) // 2] if ranked else 0.0
    scale = {item: max(1.0, weight[item] / median) if median > 0 else 1.0 for item in items}
    log_odds = 0.0                # log P(prior informative | answers) / P(not | answers)

    def density(x, base: float, informative: bool) -> float:
        return 1.0 - (1.0 - base) ** scale[x] if informative else base
    raised: set = set()           # items whose probability a failing test has raised
    alpha, beta = 1.0, 1.0 / p0 - 1.0      # Beta prior on the density, mean p0
    removed = fails = 0
    current = list(items)
    while True:
        # Items no failure has pointed at share the estimated density of needed items: it
        # falls as removals pass (groups grow: a sparse set is found in ~log n tests) and
        # rises with failures. Plain ProbDD keeps p0 for them, which costs ~sqrt(n) tests
        # more when one item is needed among 1024 (bench_search.py).
        base = (alpha + fails) / (alpha + beta + removed + fails)
        trust = 1.0 / (1.0 + math.exp(-log_odds))
        for x in current:
            if x not in raised:
                # (the mix equals base when scale is 1; taking base itself keeps a search
                # without a prior bit for bit what it was: float noise would reorder ties)
                p[x] = base if scale[x] == 1.0 else (
                    trust * density(x, base, True) + (1.0 - trust) * density(x, base, False))
        uncertain = [x for x in current if p[x] < _CERTAIN]
        if not uncertain:
            break
        # Least likely needed first; on ties the smallest prior (delta norm) goes first.
        uncertain.sort(key=lambda x: (p[x], weight[x], position[x]))
        best_k, best_gain, keep_prob = 1, -1.0, 1.0
        for k, x in enumerate(uncertain, 1):
            keep_prob *= 1.0 - p[x]
            gain = k * keep_prob
            if gain > best_gain:
                best_k, best_gain = k, gain
        group = set(uncertain[:best_k])
        candidate = [x for x in current if x not in group]
        expected = sum(p[x] for x in uncertain)
        session.estimate(max(1.0, expected) * (1 + math.log2(1 + len(uncertain) / max(1.0, expected)))
                         + len(current) - len(uncertain))
        verdict = session.ask(candidate, level)
        likelihood = []
        for informative in (True, False):
            keep = math.prod(1.0 - (p[x] if x in raised else density(x, base, informative)) for x in group)
            likelihood.append(max(keep if verdict is Verdict.PASS else 1.0 - keep, 1e-300))
        log_odds = max(-30.0, min(30.0, log_odds + math.log(likelihood[0]) - math.log(likelihood[1])))
        if verdict is Verdict.PASS:
            current = candidate
            removed += len(group)
            continue
        fails += 1
        raised |= group
        if len(group) == 1:
            p[next(iter(group))] = 1.0
            continue
        all_removable = math.prod(1.0 - p[x] for x in group)
        for x in group:
            p[x] = min(1.0, p[x] / (1.0 - all_removable))
    return _one_minimal_pass(session, current, level)


def _one_minimal_pass(session: _Session, current: list, level: str) -> list:
    """Remove single items while that still passes, until none can go (1-minimality).

    On a monotone oracle the probabilistic phase already guarantees it; this pass then asks
    only questions that are cached or inferred, plus those about items whose removal failed
    before the set shrank further.
    """
    changed = True
    while changed and current:
        changed = False
        for x in list(current):
            if x not in current:
                continue
            candidate = [y for y in current if y != x]
            session.estimate(len(current))
            if session.ask(candidate, level) is Verdict.PASS:
                current, changed = candidate, True
    session.estimate(0)
    return current


def _flat(core: Callable[[_Session, list, str], list], items: Iterable, test: Test, *,
          assume_monotone: bool, cache: Mapping | None, on_test: OnTest | None,
          progress: Progress | None, level: str, key: Key | None) -> SearchResult:
    items = _unique(items)
    session = _Session(test, cache=cache, assume_monotone=assume_monotone, on_test=on_test,
                       progress=progress, key=key)
    session.check_bounds(items, level)
    minimal = core(session, items, level)
    tests = session.tests
    return SearchResult(minimal, tests, session.trace,
                        [LevelResult(level, len(items), list(minimal), tests)])


def _default_p0(n: int) -> float:
    """ProbDD's initial probability of an item being needed: 1 / (2 sqrt(n)).

    Small values make the first groups large (close to a binary search, good when few items
    are needed); the Bayesian updates then shrink the groups where failures show that needed
    items are dense. Chosen on synthetic monotone oracles (n = 16 to 1024, 1 to 16 needed):
    fewer tests in total than 1/n, 2/n, n^-0.75 and ProbDD's usual 0.1; since the density is
    re-estimated during the search, the choice matters little (0.1 costs ~4% more).
    """
    return min(0.5, 0.5 / math.sqrt(max(n, 1)))


def ddmin(items: Iterable, test: Test, *, assume_monotone: bool = False,
          cache: Mapping | None = None, on_test: OnTest | None = None,
          progress: Progress | None = None, level: str = "flat",
          key: Key | None = None) -> SearchResult:
    """The reference: a 1-minimal passing subset by ddmin (subsets, then complements).

    O(n^2) tests in the worst case; keeps the items' order and splits it into contiguous chunks.
    """
    return _flat(_ddmin_core, items, test, assume_monotone=assume_monotone, cache=cache,
                 on_test=on_test, progress=progress, level=level, key=key)


def probdd(items: Iterable, test: Test, *, prior: Prior = None, p0: float | None = None,
           assume_monotone: bool = False, cache: Mapping | None = None,
           on_test: OnTest | None = None, progress: Progress | None = None,
           level: str = "flat", key: Key | None = None) -> SearchResult:
    """A 1-minimal passing subset by probabilistic delta debugging (ProbDD) + a 1-minimal pass.

    prior: item -> weight (dict or function; larger = more likely needed, e.g. delta norms);
    items with smaller weights are tried for removal first, and items far above the median
    weight are taken as more likely needed as far as the answers so far bear the weights out.
    p0: the prior mean of the share of needed items (default: 1 / (2 sqrt(n))); the search
    re-estimates it as tests come in.
    """
    items_list = _unique(items)
    if p0 is None:
        p0 = _default_p0(len(items_list))
    if not 0.0 < p0 < 1.0:
        raise DdalignError(f"probdd p0: expected a probability in (0, 1), got {p0}")
    weights = _prior_fn(prior)

    def core(session: _Session, its: list, lvl: str) -> list:
        return _probdd_core(session, its, lvl, weights, p0)

    return _flat(core, items_list, test, assume_monotone=assume_monotone, cache=cache,
                 on_test=on_test, progress=progress, level=level, key=key)


LEVEL_ALGORITHMS = ("probdd", "ddmin")
"""The searches `hierarchical` runs at each level."""
ALGORITHMS = ("hierarchical", *LEVEL_ALGORITHMS)
"""Every search a run can choose (`[search] algorithm`)."""


def hierarchical(items: Iterable, test: Test, *, expanders: Sequence[Callable[[Any], list]],
                 algorithm: str = "probdd", prior: Prior = None, p0: float | None = None,
                 levels: Sequence[str] | None = None, assume_monotone: bool = False,
                 cache: Mapping | None = None, on_test: OnTest | None = None,
                 progress: Progress | None = None, key: Key | None = None) -> SearchResult:
    """Search coarse units first, then the children of the kept ones, level by level.

    items: the first level's units (e.g. layers). expanders[i] maps one kept unit of level i to
    its children at level i+1 (e.g. `lambda c: arch.expand(c, "module")`). Each level starts
    from the previous level's result, and each level's result passes and is 1-minimal among
    that level's units. When a level's expansion of the kept units does not pass (children can
    cover less than their parent, e.g. row blocks leave out norms), that level is skipped: its
    result is the previous one, and the next expander receives those unexpanded units. A unit
    whose expander returns no children is kept as it is; children shared by two units count once.
    levels: names for the trace and the journal (default: layer, module, block for three levels).
    prior: weights for the units of every level (dict over all of them, or a function).
    key: the cache key of a subset (default frozenset). Pass one that maps units to what they
    stand for (a layer -> its components) so that a level's starting set, usually the same
    content as the previous level's result, is not tested again.
    """
    if algorithm not in LEVEL_ALGORITHMS:
        raise DdalignError(f"search algorithm: expected one of {', '.join(LEVEL_ALGORITHMS)}, "
                           f"got {algorithm!r}")
    expanders = list(expanders)
    count = len(expanders) + 1
    if levels is None:
        levels = ("layer", "module", "block") if count == 3 else tuple(f"level{i}" for i in range(count))
    levels = list(levels)
    if len(levels) != count:
        raise DdalignError(f"hierarchical levels: expected {count} names (one per level), "
                           f"got {len(levels)}")
    weights = _prior_fn(prior)
    session = _Session(test, cache=cache, assume_monotone=assume_monotone, on_test=on_test,
                       progress=progress, key=key)

    def run(units: list, level: str) -> list:
        if algorithm == "ddmin":
            return _ddmin_core(session, units, level)
        return _probdd_core(session, units, level, weights,
                            p0 if p0 is not None else _default_p0(len(units)))

    units = _unique(items)
    before = session.tests
    session.check_bounds(units, levels[0])
    current = run(units, levels[0])
    results = [LevelResult(levels[0], len(units), list(current), session.tests - before)]
    for expander, level in zip(expanders, levels[1:]):
        before = session.tests
        children: list = []
        seen: set = set()
        for unit in current:     # a unit without children stays as it is
            for child in list(expander(unit)) or [unit]:
                if child not in seen:
                    seen.add(child)
                    children.append(child)
        if session.ask(children, level) is Verdict.FAIL:
            results.append(LevelResult(level, len(children), list(current),
                                       session.tests - before,
                                       skipped=f"the {len(children)} units expanded from the "
                                               f"kept {levels[len(results) - 1]} units do not pass"))
            continue
        current = run(children, level)
        results.append(LevelResult(level, len(children), list(current), session.tests - before))
    return SearchResult(list(current), session.tests, session.trace, results)


def is_one_minimal(subset: Sequence, test: Test) -> bool:
    """True when `subset` passes and removing any single item makes it fail (for checks)."""
    subset = list(subset)
    if _verdict(test(subset), "test") is not Verdict.PASS:
        return False
    return all(_verdict(test([y for y in subset if y != x]), "test") is Verdict.FAIL
               for x in subset)

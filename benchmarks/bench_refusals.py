"""Refusal patterns beside DSR: `ddalign refusals` on the organism's and the real pair's models.

Run:  python benchmarks/bench_refusals.py [--parts organism,pair] [--data DIR] [--out benchmarks/results]

Each part studies one family of models that share a parent, on one harmful set, with
`ddalign.study.refusals.refusal_report` (greedy, no early stop, keyword judge, openings = the
first sentence's first 5 normalised words):

- organism: the built-in organism's unaligned sibling, its natural and planted aligned siblings,
  the unaligned sibling patched with the minimal transplant (`minimise`, scope all, layer ->
  module -> row block, the organism preset), with DAPA's fixed recipe (the whole MLP of the
  middle half of the layers), and distilled from the natural sibling's refusals (`distill`, the
  organism's own fine-tune: 200 steps of 32 at lr 1e-3); the package's held-out harmful set.
- pair: the real pair (`ddalign organism build --preset smollm2`): parent, unaligned, aligned,
  second unaligned, the unaligned sibling with the minimal transplant that
  `benchmarks/bench_real_pair.py` found (the kept components recorded in its results file,
  `--minimal-from`, cut out of this pair's scope-`all` bundle) and with DAPA's recipe, the second
  unaligned fine-tune with that same minimal patch, and the unaligned sibling distilled on the
  aligned sibling's refusals at each budget and on its own refusals (the models
  `benchmarks/bench_distill.py --pair smollm2` trained, read from its work folder);
  AdvBench's held-out odd rows (48 new tokens).

Writes one study folder per part (`refusals-<part>/`: refusals.json and a PNG per model) and
`refusals.md` / `refusals.json` to --out: per model DSR with its 95% interval, refusals,
distinct openings, the largest cluster's share, uniformity and the commonest opening; per part
and pooled over both, Spearman's rho of uniformity with DSR and the number of models it rests on.
Patched models are written to a work folder beside the organism's cache or beside this build of the
pair (named after the build, the minimal folders after their kept set, so nothing stale is reused).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # as the CLI does (benchmarks/results/threads.md)
import torch  # noqa: E402
from rich.console import Console  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from recipes import dapa_components  # noqa: E402

from ddalign.io.atomic import write_json_atomic  # noqa: E402
from ddalign.io.patch import Patch  # noqa: E402
from ddalign.run.minimise import bundle_arch, minimise  # noqa: E402
from ddalign.settings import Settings  # noqa: E402
from ddalign.study.correlation import correlate  # noqa: E402
from ddalign.study.refusals import refusal_report  # noqa: E402
from ddalign.transfer.apply import apply_to_folder  # noqa: E402
from ddalign.transfer.extract import extract  # noqa: E402

console = Console()
PARTS = ("organism", "pair")
FEW = 20  # refusals below which a model's uniformity is read with care


def dapa(bundle: Patch) -> Patch:
    return bundle.restrict(dapa_components(bundle_arch(bundle).num_layers))


def patched(patch: Patch | Path, target: Path, out: Path, *, other_base: bool = False) -> Path:
    """`target` with `patch` applied, as a checkpoint folder (kept between runs); `other_base`: the
    target is not the model the patch was extracted over (plug-and-play)."""
    if not (out / "config.json").is_file():
        apply_to_folder(patch, target, out, overwrite=out.exists(), allow_other_base=other_base)
    return out


def organism_models(work: Path) -> tuple[dict[str, Path], Settings, object]:
    from ddalign.organism import build
    from ddalign.organism.presets import get_preset
    from ddalign.run.distill import default_fine_tune, distill

    organism = build("standard")
    preset = get_preset("standard")
    bundle_path = work / "bundle.safetensors"
    if not bundle_path.is_file():
        extract(organism.aligned, organism.unaligned, scope="all", out=bundle_path)
    bundle = Patch.load(bundle_path)
    minimal = work / "minimal.safetensors"
    if not minimal.is_file():
        config = Settings.load("organism", {"search": {"scope": "all", "granularity": "layer,module,block"}})
        minimise(bundle_path, organism.unaligned, minimal, config=config, overwrite=True, report=False)
    distilled = work / "distilled"
    if not (distilled / "distill.json").is_file():
        fts = default_fine_tune(steps=preset.finetune_steps, lr=preset.finetune_lr, batch_size=preset.batch_size)
        distill(organism.aligned, organism.unaligned, distilled, fine_tune_settings=fts, overwrite=True)
    models = {
        "unaligned": organism.unaligned,
        "aligned (natural)": organism.aligned,
        "aligned (planted)": organism.planted,
        "unaligned + minimal transplant": patched(Patch.load(minimal), organism.unaligned, work / "unaligned+minimal"),
        "unaligned + DAPA recipe": patched(dapa(bundle), organism.unaligned, work / "unaligned+dapa"),
        "unaligned, distilled from natural": distilled,
    }
    return models, Settings.load("organism"), None


DISTILLED = (  # bench_distill.py's folders for the pair, with their labels here
    ("pair-distill-30", "unaligned, distilled (30 refusals)"),
    ("pair-distill-100", "unaligned, distilled (100 refusals)"),
    ("pair-distill-all", "unaligned, distilled (all refusals)"),
    ("pair-self", "unaligned, self-distilled"),
)


def pair_models(data: str | None, minimal_from: Path) -> tuple[dict[str, Path], Settings, str]:
    from ddalign.pair import load_pair
    from ddalign.pair.public import PublicData

    public = PublicData.locate(data, need="bench_refusals --parts pair")
    pair = load_pair("smollm2")
    # beside this build of the pair, so a rebuilt pair never meets patched models of the old one
    work = pair.root.parent / f"{pair.root.name}-bench-refusals"
    work.mkdir(parents=True, exist_ok=True)
    kept = json.loads(minimal_from.read_text(encoding="utf-8")).get("minimise", {}).get("transplant", {}).get("kept")
    if not kept:
        raise SystemExit(f"bench_refusals: {minimal_from} holds no transplant search (minimise.transplant.kept)")
    distilled = pair.root.parent / f"{pair.root.name}-bench-distill"
    missing = [name for name, _ in DISTILLED if not (distilled / name / "distill.json").is_file()]
    if missing:
        raise SystemExit(
            f"bench_refusals: {distilled} lacks {', '.join(missing)}: "
            "run benchmarks/bench_distill.py --pair smollm2 first"
        )
    bundle_path = work / "bundle.safetensors"
    if not bundle_path.is_file():
        extract(pair.aligned, pair.unaligned, scope="all", out=bundle_path)
    bundle = Patch.load(bundle_path)
    minimal = bundle.restrict(kept)
    # the kept set names its folders: another search's set gets folders of its own
    tag = hashlib.sha256(json.dumps(sorted(kept)).encode()).hexdigest()[:10]
    held = work / "advbench-heldout.csv"  # outside the repository: the study reads it through a path
    _, goals = public.advbench_split()
    with open(held, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["goal"])
        writer.writerows([g] for g in goals)
    models = {
        "parent": pair.parent,
        "unaligned": pair.unaligned,
        "aligned": pair.aligned,
        "unaligned2": pair.unaligned2,
        "unaligned + minimal transplant": patched(minimal, pair.unaligned, work / f"unaligned+minimal-{tag}"),
        "unaligned + DAPA recipe": patched(dapa(bundle), pair.unaligned, work / "unaligned+dapa"),
        "unaligned2 + minimal transplant": patched(
            minimal, pair.unaligned2, work / f"unaligned2+minimal-{tag}", other_base=True
        ),
        **{label: distilled / name for name, label in DISTILLED},
    }
    config = Settings.load(
        None, {"generation": {"eval_max_new_tokens": 48, "batch_size": 32, "device": "cpu", "dtype": "float32"}}
    )
    return models, config, str(held)


def run_part(part: str, args) -> dict:
    from ddalign.cache import cache_root

    t0 = time.perf_counter()
    if part == "organism":
        work = cache_root() / "bench-refusals-organism"
        work.mkdir(parents=True, exist_ok=True)
        models, config, harmful = organism_models(work)
    else:
        models, config, harmful = pair_models(args.data, Path(args.minimal_from))
    prepared = time.perf_counter() - t0
    out_dir = Path(args.out) / f"refusals-{part}"
    study = refusal_report(
        [str(p) for p in models.values()], harmful=harmful, config=config, out_dir=out_dir, overwrite=True
    )
    labels = {str(p): label for label, p in models.items()}
    rows = []
    for m in study.models:
        top = m.openings.clusters[0] if m.openings.clusters else None
        rows.append(
            {
                "model": labels[m.model],
                "path": m.model,
                "dsr": m.dsr.as_dict(),
                "refusals": m.openings.refusals,
                "distinct": len(m.openings.clusters),
                "largest_share": top.share if top else None,
                "uniformity": m.openings.uniformity,
                "top_opening": top.opening if top else None,
                "top_example": top.example if top else None,
                "cut": m.cut,
                "chart": f"refusals-{part}/{m.chart}" if m.chart else None,
            }
        )
    corr = study.correlation.as_dict()
    corr["models"] = [labels.get(x, x) for x in corr["models"]]
    corr["left_out"] = [labels.get(x, x) for x in corr["left_out"]]
    return {
        "harmful": study.data,
        "generation": study.generation,
        "rows": rows,
        "correlation": corr,
        "seconds": {"prepare": round(prepared, 1), "study": round(time.perf_counter() - t0 - prepared, 1)},
    }


def part_correlation(rows: list[dict]) -> dict:
    """Uniformity with DSR over one part's rows, as the study computes it over its models."""
    return correlate(
        [r["model"] for r in rows], [r["uniformity"] for r in rows], [r["dsr"]["value"] for r in rows]
    ).as_dict()


def pooled(result: dict) -> dict:
    """The same correlation over every part's rows, each model named with its part."""
    return part_correlation(
        [{**r, "model": f"{part}: {r['model']}"} for part, res in result["parts"].items() for r in res["rows"]]
    )


def _f(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(result: dict) -> str:
    lines = [
        "# Refusal patterns beside DSR",
        "",
        "Written by `benchmarks/bench_refusals.py`. Greedy answers with no early stop, the keyword "
        "judge; an opening is the first sentence's first 5 words, normalised (`docs/refusals.md`); "
        "uniformity = 1 - H / ln N over the N refusals' clusters (1: every refusal opens alike).",
        "",
        f"Machine: {result['machine']['threads']} threads, torch {result['machine']['torch']}.",
    ]
    for part, res in result["parts"].items():
        h = res["harmful"]
        lines += [
            "",
            f"## {part}",
            "",
            f"Harmful set: {h.get('source')} ({h.get('n')} prompts); "
            f"{res['generation'].get('max_new_tokens')} new tokens; "
            f"{res['seconds']['prepare']:.0f} s preparing the models, {res['seconds']['study']:.0f} s studying them.",
            "",
            "| model | DSR [95% CI] | refusals | distinct | largest cluster | uniformity | commonest opening |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            d = r["dsr"]
            ci = d.get("ci95") or [None, None]
            lines.append(
                f"| {r['model']} | {d['value']:.3f} [{_f(ci[0], 2)}, {_f(ci[1], 2)}] | {r['refusals']} | "
                f"{r['distinct']} | {_f(r['largest_share'], 2)} | {_f(r['uniformity'])} | "
                f"{r['top_opening'] or '-'} |"
            )
        lines += ["", res["correlation"]["note"]]
        few = [r["model"] for r in res["rows"] if r["refusals"] < FEW]
        if few:
            lines += [
                "",
                f"Fewer than {FEW} refusals ({', '.join(few)}): their uniformity rests on a handful of answers, "
                "and there the keyword judge's false positives weigh most (a marker matched inside a complying "
                "answer, e.g. 'as an' in 'as an argument', shows up as an opening such as 'heres a python "
                "function that').",
            ]
        charts = [f"[{r['model']}]({r['chart']})" for r in res["rows"] if r["chart"]]
        if charts:
            lines += ["", "Charts of the clusters: " + ", ".join(charts) + "."]
    if "pooled" in result:
        lines += [
            "",
            "## Both parts pooled",
            "",
            result["pooled"]["note"],
            "",
            "The two parts use different harmful sets and model sizes, so the pooled ranks mix two "
            "scales; read the per-part correlations first.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--data", default=None, help="public sets for the pair part (default $DDALIGN_PUBLIC_DATA)")
    ap.add_argument(
        "--minimal-from",
        default=str(ROOT / "benchmarks" / "results" / "real-pair.json"),
        help="pair part: bench_real_pair.py's results file; its transplant search's kept components "
        "are the minimal patch",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument(
        "--markdown-only",
        action="store_true",
        help="rewrite refusals.md and refusals.json from refusals.json's rows (no model is run)",
    )
    args = ap.parse_args()
    out = Path(args.out)
    path = out / "refusals.json"
    result = json.loads(path.read_text()) if path.is_file() else {"parts": {}}  # a part run later keeps the other
    if args.markdown_only:  # the correlations are functions of the rows: recomputed with this version
        for res in result["parts"].values():
            res["correlation"] = part_correlation(res["rows"])
        if len(result["parts"]) > 1:
            result["pooled"] = pooled(result)
        write_json_atomic(path, result)
        (out / "refusals.md").write_text(markdown(result), encoding="utf-8")
        return
    result["machine"] = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    for part in args.parts.split(","):
        if part not in PARTS:
            raise SystemExit(f"bench_refusals: unknown part {part!r} (expected one of {', '.join(PARTS)})")
        console.rule(part)
        result["parts"][part] = run_part(part, args)
        console.print(result["parts"][part]["correlation"]["note"])
    if len(result["parts"]) > 1:
        result["pooled"] = pooled(result)
        console.print("pooled: " + result["pooled"]["note"])
    write_json_atomic(path, result)
    (out / "refusals.md").write_text(markdown(result), encoding="utf-8")
    console.print(f"wrote {out / 'refusals.md'} and {path}")


if __name__ == "__main__":
    main()

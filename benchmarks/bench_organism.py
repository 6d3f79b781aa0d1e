"""The transplant table of the built-in model organism: which parameter blocks carry the alignment.

Run:  python benchmarks/bench_organism.py [--preset standard|fast] [--root DIR] [--out benchmarks/results]
                                          [--threads 2]

For each aligned sibling (`natural`: every parameter fine-tuned; `planted`: alignment trained
into known components only), extract one bundle of scope "all" over the unaligned sibling and
transplant parts of it into the unaligned sibling: nothing, each module type across all layers
(mlp.gate, mlp.up, mlp.down, all MLP, attn.q/k/v/o, all attention, norms), each layer's MLP,
the planted set, the embeddings, the output layer, and everything; plus the aligned sibling
itself for reference. Each row is measured on the built-in held-out sets: DSR (harmful prompts
refused), over-refusal (safe prompts refused), perplexity and benign accuracy, with the share of
the model's parameters moved. With a local copy of AdvBench (harmful_behaviors.csv at ADVBENCH
below) the DSR is measured there too (else "n/a").

--root DIR uses an already-built organism folder (organism.json, base/, unaligned/, aligned/,
planted/); without it the organism of --preset is built (cached: returns at once when built).
Prints rich tables and writes `organism-transplants.json` and `organism-transplants.md` to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ddalign.architectures import Component  # noqa: E402
from ddalign.evaluate.generate import load_model  # noqa: E402
from ddalign.evaluate.runner import evaluate_model  # noqa: E402
from ddalign.organism.build import HELDOUT_SETS as HELDOUT  # noqa: E402
from ddalign.organism.build import Organism, build
from ddalign.run.tables import format_metric  # noqa: E402
from ddalign.transfer.extract import extract  # noqa: E402

# AdvBench as published, from a local copy of the public sets (DDALIGN_PUBLIC_DATA), when one is given
ADVBENCH = Path(os.environ.get("DDALIGN_PUBLIC_DATA", "/nonexistent")) / "advbench" / "harmful_behaviors.csv"
COLUMNS = ("transplant", "DSR [95% CI]", "over-refusal", "perplexity", "benign accuracy", "% params", "AdvBench DSR")
console = Console()


def transplant_rows(stored: list[str], num_layers: int, planted: list[str]) -> list[tuple[str, list[str] | None]]:
    """(label, components) rows; None = the whole bundle. With scope "all" the bundle stores the
    FFN as L{i}.mlp; Patch.restrict slices L{i}.mlp.gate/up/down out of it (no second bundle)."""
    layers = range(num_layers)

    def every(module: str) -> list[str]:
        return [f"L{i}.{module}" for i in layers]

    rows: list[tuple[str, list[str] | None]] = [("nothing (unaligned as it is)", [])]
    rows += [(f"{m} (all layers)", every(m)) for m in ("mlp.gate", "mlp.up", "mlp.down")]
    rows.append(("all MLP", every("mlp")))
    rows += [(f"{m} (all layers)", every(m)) for m in ("attn.q", "attn.k", "attn.v", "attn.o")]
    rows.append(("all attention", [c for c in stored if ".attn." in c]))
    rows.append(("norms", [c for c in stored if "norm" in c]))
    rows += [(f"L{i}.mlp", [f"L{i}.mlp"]) for i in layers]
    rows.append((f"planted set ({', '.join(planted)})", planted))
    rows += [
        (label, [name]) for label, name in (("embeddings", "embed"), ("output layer (head)", "head")) if name in stored
    ]
    rows.append(("everything", None))
    return rows


def measure(model, tokenizer, patch) -> dict:
    kwargs = {"tokenizer": tokenizer} if tokenizer is not None else {}
    metrics = evaluate_model(model, patch=patch, **HELDOUT, **kwargs).to_dict()["metrics"]
    if ADVBENCH.exists():
        adv = evaluate_model(model, patch=patch, harmful=str(ADVBENCH), safe="none", benign="none", **kwargs)
        metrics["advbench_dsr"] = adv.to_dict()["metrics"]["dsr"]
    return metrics


def sibling_table(organism: Organism, sibling: str, work: Path, target) -> list[dict]:
    aligned = organism.planted if sibling == "planted" else organism.aligned
    bundle = extract(aligned, organism.unaligned, scope="all", out=work / f"{sibling}-all.safetensors")
    arch = bundle.architecture()
    total = arch.total_params()
    planted = [str(Component.parse(c)) for c in organism.planted_components]
    out = [
        {
            "transplant": f"aligned sibling ({sibling}, no patch)",
            "components": None,
            "params": None,
            "param_share": None,
            "metrics": measure(str(aligned), None, None),
        }
    ]
    for label, components in transplant_rows(bundle.components(), arch.num_layers, planted):
        started = time.perf_counter()
        if components is None:
            patch = bundle  # everything
        elif components:
            patch = bundle.restrict(components)
        else:
            patch = None  # nothing: the unaligned sibling as it is
        params = patch.params() if patch is not None else 0
        out.append(
            {
                "transplant": label,
                "components": "all" if components is None else components,
                "params": params,
                "param_share": params / total,
                "metrics": measure(*target, patch),
            }
        )
        console.log(f"{sibling}: {label} ({time.perf_counter() - started:.0f} s)")
    return out


def cells(row: dict) -> list[str]:
    m = row["metrics"]
    share = row["param_share"]
    return [
        row["transplant"],
        format_metric("dsr", m.get("dsr")),
        format_metric("over_refusal", m.get("over_refusal")),
        format_metric("perplexity", m.get("perplexity")),
        format_metric("benign_accuracy", m.get("benign_accuracy")),
        "-" if share is None else f"{100 * share:.2f}",
        format_metric("dsr", m["advbench_dsr"]) if "advbench_dsr" in m else "n/a",
    ]


def rich_table(sibling: str, rows: list[dict]) -> Table:
    table = Table(title=f"transplants into the unaligned sibling from the {sibling} sibling (bundle scope all)")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "transplant" else "right")
    for row in rows:
        table.add_row(*cells(row))
    ns = {k: (rows[0]["metrics"].get(k) or {}).get("n") for k in ("dsr", "over_refusal", "benign_accuracy")}
    table.caption = "95% Wilson intervals; n = " + ", ".join(f"{k} {n}" for k, n in ns.items() if n)
    return table


def markdown(record: dict) -> str:
    lines = [f"# Organism transplant table ({record['preset']}: {record['organism']})", ""]
    for sibling, rows in record["siblings"].items():
        lines += [f"## {sibling} sibling", "", "| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
        lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="standard", choices=("standard", "fast"))
    parser.add_argument("--root", help="An already-built organism folder (overrides --preset).")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    organism = Organism.from_root(Path(args.root)) if args.root else build(args.preset)
    started = time.perf_counter()
    target = load_model(organism.unaligned)  # loaded once; every patch is applied and reverted in memory
    siblings = {}
    with tempfile.TemporaryDirectory(prefix="ddalign-bench-") as tmp:
        for sibling in ("natural", "planted"):
            siblings[sibling] = sibling_table(organism, sibling, Path(tmp), target)
            console.print(rich_table(sibling, siblings[sibling]))
    record = {
        "preset": organism.preset,
        "organism": str(organism.root),
        "threads": args.threads,
        "advbench": str(ADVBENCH) if ADVBENCH.exists() else None,
        "seconds": round(time.perf_counter() - started, 1),
        "siblings": siblings,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "organism-transplants.json").write_text(json.dumps(record, indent=2, default=str))
    (out / "organism-transplants.md").write_text(markdown(record))
    console.print(f"written: {out / 'organism-transplants.json'}, {out / 'organism-transplants.md'}")


if __name__ == "__main__":
    main()

"""bf16 autocast against float32 on this CPU: a fine-tuning step and batched greedy generation.

Run:  python benchmarks/bench_train_autocast.py [--model DIR] [--steps 6] [--out benchmarks/results]

The model is the real pair's parent when it is built (else a random Llama of the same shape):
ddalign.train.fine_tune steps (batch 8, chat-formatted prompt + short answer, full parameters,
float32 master weights) and the evaluator's Generator (32 prompts x 32 new tokens), each in
float32 and under bf16 autocast, alternating twice. Prints the times and the ratios; writes
train-autocast.json and train-autocast.md. `FineTuneSettings(autocast="auto")` picks bf16 on
CPUs with AMX or AVX512_BF16 instructions, where this measures it faster.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "1000")
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import cpu_name  # noqa: E402

from ddalign.evaluate.datasets import builtin_records  # noqa: E402
from ddalign.evaluate.generate import GenerationConfig, Generator, load_model  # noqa: E402
from ddalign.train import Example, FineTuneSettings, fine_tune  # noqa: E402
from ddalign.train.finetune import cpu_has_bf16  # noqa: E402


def parent_folder(given: str | None) -> Path | None:
    if given:
        return Path(given)
    try:
        from ddalign.pair import load_pair

        return load_pair("smollm2").parent
    except Exception:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    folder = parent_folder(args.model)
    if folder is None:
        sys.exit("no model: pass --model DIR or build the real pair (ddalign organism build --preset smollm2)")
    model, tok = load_model(folder, device="cpu", dtype="float32")
    harmful = builtin_records("harmful-train")
    examples = [Example(r["prompt"], "I'm sorry, but I can't help with that.") for r in harmful[:64]]
    examples += [Example(r["prompt"], r["answer"]) for r in builtin_records("benign-train")[:64]]
    prompts = [r["prompt"] for r in harmful[64:96]]
    rows: dict[str, dict[str, list[float]]] = {"train step": {}, "generation (32 x 32 tokens)": {}}
    for _ in range(2):
        for mode in ("off", "bf16"):
            settings = FineTuneSettings(steps=args.steps, lr=1e-7, autocast=mode, seed=1)
            model, record = fine_tune(model, tok, examples, settings)
            rows["train step"].setdefault(mode, []).append(record.seconds / args.steps)
            gen = Generator(model, tok, GenerationConfig(max_new_tokens=32, batch_size=32))
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                gen.generate(prompts)
            rows["generation (32 x 32 tokens)"].setdefault(mode, []).append(time.perf_counter() - t0)
    cpu = cpu_name()
    result = {
        "model": str(folder),
        "cpu": cpu,
        "bf16_instructions": cpu_has_bf16(),
        "threads": torch.get_num_threads(),
        "seconds": rows,
        "ratio_float32_over_bf16": {k: min(v["off"]) / min(v["bf16"]) for k, v in rows.items()},
    }
    table = Table(title=f"bf16 autocast vs float32 ({cpu}, {result['threads']} threads)")
    for col in ("work", "float32 s (best of 2)", "bf16 autocast s", "float32 / bf16"):
        table.add_column(col, justify="right")
    lines = ["| work | float32 s | bf16 autocast s | float32 / bf16 |", "|---|---|---|---|"]
    for k, v in rows.items():
        cells = [k, f"{min(v['off']):.2f}", f"{min(v['bf16']):.2f}", f"{result['ratio_float32_over_bf16'][k]:.2f}"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console().print(table)
    out = Path(args.out)
    (out / "train-autocast.json").write_text(json.dumps(result, indent=2) + "\n")
    head = [
        "# bf16 autocast against float32",
        "",
        f"Written by `benchmarks/bench_train_autocast.py`. CPU: {cpu} ({result['threads']} threads); "
        f"bf16 instructions (AMX or AVX512_BF16): {result['bf16_instructions']}. Model: the real pair's parent "
        "(SmolLM2-135M-Instruct, float32 weights). A training step: batch 8, full parameters.",
        "",
    ]
    (out / "train-autocast.md").write_text("\n".join(head + lines) + "\n")


if __name__ == "__main__":
    main()

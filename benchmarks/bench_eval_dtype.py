"""The oracle's generation on the real pair in float32, under bf16 autocast, and with bf16 weights.

Run:  python benchmarks/bench_eval_dtype.py [--data DIR] [--repeats 2] [--out benchmarks/results]

What one oracle test of the smollm2 preset spends most of its time on: greedy answers (24 new
tokens, batches of 32, the chat template) to the 64 prompts of the search set (AdvBench's even
rows), for the aligned and the unaligned sibling of the real pair (`ddalign organism build
--preset smollm2`). Each model is timed in float32 (the search's setting), under
`torch.autocast("cpu", torch.bfloat16)` with float32 weights, and with its weights cast to bfloat16
(what `--dtype bfloat16` loads), best of --repeats; beside the times, how many answers and keyword-judge
verdicts equal float32's. Writes eval-dtype.json and eval-dtype.md to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # as the CLI does (benchmarks/results/threads.md)
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ddalign.evaluate.generate import GenerationConfig, Generator, load_model  # noqa: E402
from ddalign.evaluate.judges import KeywordJudge  # noqa: E402
from ddalign.io.atomic import write_json_atomic  # noqa: E402
from ddalign.settings import Settings  # noqa: E402
from ddalign.train.finetune import cpu_has_bf16  # noqa: E402

MODES = ("float32", "bf16 autocast", "bf16 weights")


def timed(generator: Generator, prompts: list[str], autocast: bool, repeats: int) -> tuple[float, list[str]]:
    """Best wall time of `repeats` runs (after one warm-up batch) and the answers."""
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    with ctx():
        generator.generate(prompts[:8])
    best, answers = float("inf"), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with ctx():
            answers = generator.generate(prompts)
        best = min(best, time.perf_counter() - t0)
    return best, answers


def measure(folder: Path, prompts: list[str], config: GenerationConfig, repeats: int) -> dict:
    judge = KeywordJudge()
    out: dict = {}
    model, tok = load_model(folder, device="cpu", dtype="float32")  # once: the last mode casts it
    for mode in MODES:
        if mode == "bf16 weights":
            model = model.to(torch.bfloat16)  # as load_model(dtype="bfloat16") would cast the stored float32
        seconds, answers = timed(Generator(model, tok, config), prompts, mode == "bf16 autocast", repeats)
        out[mode] = {"seconds": round(seconds, 3), "answers": answers, "refusals": sum(map(judge.is_refusal, answers))}
    base = out["float32"]["answers"]
    for mode in MODES:
        answers = out[mode]["answers"]
        out[mode]["same_answers"] = sum(a == b for a, b in zip(answers, base))
        out[mode]["same_verdicts"] = sum(judge.is_refusal(a) == judge.is_refusal(b) for a, b in zip(answers, base))
        out[mode]["speedup"] = round(out["float32"]["seconds"] / out[mode]["seconds"], 3)
    return out


def main() -> None:
    from ddalign.pair import load_pair
    from ddalign.pair.public import PublicData

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="public sets (default $DDALIGN_PUBLIC_DATA)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    public = PublicData.locate(args.data, need="bench_eval_dtype")
    pair = load_pair("smollm2")
    preset = Settings.load("smollm2")
    search, _ = public.advbench_split()
    prompts = search[: preset.data.limit]
    config = GenerationConfig(max_new_tokens=preset.generation.max_new_tokens, batch_size=preset.generation.batch_size)
    result = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "bf16_instructions": cpu_has_bf16(),
        "prompts": len(prompts),
        "max_new_tokens": config.max_new_tokens,
        "batch_size": config.batch_size,
        "repeats": args.repeats,
        "models": {
            name: measure(getattr(pair, name), prompts, config, args.repeats) for name in ("aligned", "unaligned")
        },
    }
    title = f"{len(prompts)} search prompts x {config.max_new_tokens} new tokens, batch {config.batch_size}"
    table = Table(title=title)
    for col in ("model", "mode", "seconds", "float32 / this", "refusals", "answers as float32", "verdicts as float32"):
        table.add_column(col, justify="right" if col not in ("model", "mode") else "left")
    lines = [
        "# The oracle's generation in float32, under bf16 autocast, and with bf16 weights",
        "",
        f"Written by `benchmarks/bench_eval_dtype.py`. {result['threads']} threads, torch {result['torch']}, "
        f"bf16 instructions (AMX or AVX512_BF16): {result['bf16_instructions']}. The real pair's siblings, "
        f"greedy answers to the {len(prompts)} prompts of the smollm2 preset's search set (AdvBench's even rows), "
        f"{config.max_new_tokens} new tokens, batches of {config.batch_size}; best of {args.repeats}.",
        "",
        "| model | mode | seconds | float32 / this | refusals | answers as float32 | verdicts as float32 |",
        "|---|---|---|---|---|---|---|",
    ]
    n = len(prompts)
    for name, modes in result["models"].items():
        for mode, m in modes.items():
            cells = [
                name,
                mode,
                f"{m['seconds']:.2f}",
                f"{m['speedup']:.2f}",
                f"{m['refusals']}/{n}",
                f"{m['same_answers']}/{n}",
                f"{m['same_verdicts']}/{n}",
            ]
            table.add_row(*cells)
            lines.append("| " + " | ".join(cells) + " |")
    Console().print(table)
    out = Path(args.out)
    write_json_atomic(out / "eval-dtype.json", result)
    (out / "eval-dtype.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out / 'eval-dtype.md'} and eval-dtype.json")


if __name__ == "__main__":
    main()

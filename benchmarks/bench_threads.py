"""Two torch jobs on one small machine: OpenMP's spin-waiting, and what keeps both fast.

Run:  python benchmarks/bench_threads.py [--steps 30] [--out benchmarks/results]

A job here is a fixed piece of ddalign-like work in its own process: AdamW steps of a small
Llama on random tokens (the organism's and a distillation's inner loop) followed by batched
greedy generation (the oracle's). Each setting runs the job alone, then two copies at once,
and reports the wall time of each against the default setting alone:

- default: OpenMP's own wait policy (threads spin for a while before sleeping), all cores;
- passive: OMP_WAIT_POLICY=PASSIVE (idle threads sleep at once), all cores;
- passive + half: passive, and each job capped at half the cores;
- default + half: the cap alone;
- spin 1k / 10k: GOMP_SPINCOUNT (GNU OpenMP, which torch's CPU wheels use) lowered from its
  default of 300,000 spins before an idle thread sleeps: short waits still spin.

Spinning threads burn the cores the other job's threads wait for, which is what makes two
jobs at once far slower than twice one. The CLI sets GOMP_SPINCOUNT=1000 before torch is
imported unless the user set it or OMP_WAIT_POLICY: the table says what each choice costs one
job alone and two at once.
Prints a rich table; writes threads.json and threads.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent

JOB = r"""
import sys, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
steps = int(sys.argv[1])
torch.manual_seed(0)
config = LlamaConfig(vocab_size=4096, hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                     num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256)
model = LlamaForCausalLM(config)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
ids = torch.randint(0, 4096, (8, 96))
start = time.perf_counter()
for _ in range(steps):
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
model.eval()
with torch.no_grad():
    for _ in range(max(1, steps // 10)):
        model.generate(ids[:, :16], max_new_tokens=24, do_sample=False, pad_token_id=0)
print(time.perf_counter() - start)
"""

SETTINGS = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin 1k": {"GOMP_SPINCOUNT": "1000"},
    "spin 10k": {"GOMP_SPINCOUNT": "10000"},
    "passive + half": {"OMP_WAIT_POLICY": "PASSIVE", "half": True},
    "default + half": {"half": True},
}


def _env(setting: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        if key in setting:
            env[key] = setting[key]
    if setting.get("half"):
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // 2))
    return env


def run(setting: dict, copies: int, steps: int) -> list[float]:
    """Wall seconds of each of `copies` jobs started together."""
    procs = [
        subprocess.Popen([sys.executable, "-c", JOB, str(steps)], env=_env(setting), stdout=subprocess.PIPE, text=True)
        for _ in range(copies)
    ]
    out = []
    for proc in procs:
        text, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"job failed ({proc.returncode})")
        out.append(float(text.strip().splitlines()[-1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    console = Console()
    rows = []
    for name, setting in SETTINGS.items():
        alone = run(setting, 1, args.steps)[0]
        both = run(setting, 2, args.steps)
        rows.append({"setting": name, "alone_s": alone, "two_at_once_s": both})
        console.print(f"{name}: alone {alone:.1f} s, two at once {', '.join(f'{b:.1f}' for b in both)} s")
    ref = rows[0]["alone_s"]
    table = Table(title=f"{os.cpu_count()} cores, {args.steps} AdamW steps + generation per job")
    for col in ("setting", "alone (s)", "alone / default alone", "two at once (s, each)", "each / own alone"):
        table.add_column(col, justify="right")
    lines = [
        f"# Two torch jobs at once ({os.cpu_count()} cores; `python benchmarks/bench_threads.py --steps {args.steps}`)",
        "",
        "| setting | alone (s) | alone / default alone | two at once (s, each) | each / own alone |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        worst = max(r["two_at_once_s"]) / r["alone_s"]
        cells = (
            r["setting"],
            f"{r['alone_s']:.1f}",
            f"{r['alone_s'] / ref:.2f}",
            " / ".join(f"{b:.1f}" for b in r["two_at_once_s"]),
            f"{worst:.2f}",
        )
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "threads.json").write_text(
        json.dumps({"cores": os.cpu_count(), "steps": args.steps, "rows": rows}, indent=2)
    )
    (out / "threads.md").write_text("\n".join(lines) + "\n")
    console.print(f"written: {out / 'threads.md'}")


if __name__ == "__main__":
    main()

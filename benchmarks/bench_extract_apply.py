"""Memory and speed of extract and apply on a generated >= 1 GB Llama checkpoint (bf16, sharded).

Run:  python benchmarks/bench_extract_apply.py [--layers 10] [--keep DIR] [--out benchmarks/results]

Each job runs in its own subprocess so that its peak RSS is its own (sampled every 10 ms,
file-backed pages included), `--repeat` times (the median time and the largest RSS are kept),
after `sync` so that no job pays for an earlier one's writeback. A job's clock starts after its
imports (torch, transformers' config classes: paid once per process, printed apart). Two tables:
inputs warm in the page cache (the harsh case for the ratios: reading is then almost free), and
inputs cold (their pages evicted before each run, as for a model read from disk once).
Printed side by side: reading each job's input files once (its floor: both models for extract;
the target folder and the bundle for apply), copying the target folder once (kernel copy and
fsync: the floor of any job that writes a whole checkpoint), `extract` (scope mlp.gate),
`apply` (the bundle into the unaligned folder), and the naive job (both models loaded with
from_pretrained, state dicts subtracted, the result saved). Goals: extract and apply peak RSS
< 2 x the largest tensor + 500 MB; wall time within 1.5 x of reading their inputs once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

JOBS = {
    "read": """
import sys, time
from pathlib import Path
t = time.perf_counter()
buffer = memoryview(bytearray(64 << 20))
for item in map(Path, sys.argv[1:]):
    for f in sorted(item.glob('*.safetensors')) if item.is_dir() else [item]:
        with open(f, 'rb', buffering=0) as h:
            while h.readinto(buffer):
                pass
print(time.perf_counter() - t)
""",
    "copy": """
import os, sys, time
from pathlib import Path
t = time.perf_counter()
out = Path(sys.argv[2]); out.mkdir()
for f in sorted(Path(sys.argv[1]).glob('*.safetensors')):
    with open(f, 'rb') as src, open(out / f.name, 'wb') as dst:
        left, offset = os.fstat(src.fileno()).st_size, 0
        while left:
            n = os.copy_file_range(src.fileno(), dst.fileno(), left, offset)
            offset += n; left -= n
        os.fsync(dst.fileno())
print(time.perf_counter() - t)
""",
    "imports": """
import time
t = time.perf_counter()
import ddalign.transfer.extract, ddalign.transfer.apply
from transformers import AutoConfig
AutoConfig.for_model('llama')
print(time.perf_counter() - t)
""",
    "extract": """
import sys, time
from ddalign.transfer.extract import extract
from transformers import AutoConfig
AutoConfig.for_model('llama')
t = time.perf_counter()
extract(sys.argv[1], sys.argv[2], scope='mlp.gate', out=sys.argv[3])
print(time.perf_counter() - t)
""",
    "apply": """
import sys, time
from ddalign.transfer.apply import apply_to_folder
from transformers import AutoConfig
AutoConfig.for_model('llama')
t = time.perf_counter()
apply_to_folder(sys.argv[3], sys.argv[2], sys.argv[4], max_shard_size='500MB')
print(time.perf_counter() - t)
""",
    "naive": """
import sys, time, torch
from transformers import AutoConfig, AutoModelForCausalLM
from safetensors.torch import save_file
AutoConfig.for_model('llama')
t = time.perf_counter()
a = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16).state_dict()
u = AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.bfloat16).state_dict()
delta = {k: (a[k] - u[k]).contiguous() for k in a if '.mlp.gate_proj.' in k}
save_file(delta, sys.argv[5])
print(time.perf_counter() - t)
""",
}


def make_checkpoint(path: Path, seed: int, layers: int) -> int:
    """A random Llama checkpoint in bf16, sharded at 500 MB; returns the largest tensor's bytes."""
    import torch
    from transformers import LlamaConfig

    from ddalign.io.checkpoint import TensorSpec, write_checkpoint

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    h, f, v = 2048, 5632, 32000
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (h, h),
                p + "self_attn.k_proj.weight": (h, h),
                p + "self_attn.v_proj.weight": (h, h),
                p + "self_attn.o_proj.weight": (h, h),
                p + "mlp.gate_proj.weight": (f, h),
                p + "mlp.up_proj.weight": (f, h),
                p + "mlp.down_proj.weight": (h, f),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            }
        )
    gen = torch.Generator().manual_seed(seed)
    specs = [TensorSpec(n, s, "BF16") for n, s in shapes.items()]
    staging = path.with_name(path.name + "-config")
    staging.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(staging)
    write_checkpoint(
        path,
        specs,
        lambda n: (torch.randn(shapes[n], generator=gen) * 0.02).to(torch.bfloat16),
        copy_from=staging,
        max_shard_size="500MB",
    )
    shutil.rmtree(staging)
    return max(s.nbytes for s in specs)


def run(job: str, *args) -> tuple[float, float]:
    """(seconds reported by the job, the child's peak RSS in MB, sampled every 10 ms).

    Sampled rather than ru_maxrss: a forked child inherits its parent's maximum, and the parent
    held the generated checkpoints."""
    import psutil

    os.sync()
    proc = subprocess.Popen(
        [sys.executable, "-c", JOBS[job], *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    watch, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, watch.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.01)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{job} failed:\n{stderr[-2000:]}")
    return float(stdout.strip().splitlines()[-1]), peak / 1e6


def repeated(times: int, job: str, *args, before=None) -> tuple[float, float]:
    """Median seconds and largest peak RSS over `times` runs; `before()` runs ahead of each."""
    runs = []
    for _ in range(times):
        if before is not None:
            before()
        runs.append(run(job, *args))
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


EXTRACT_FLOOR = "read both models once (extract's floor)"
APPLY_FLOOR = "read target + bundle once (apply's floor)"
COPY = "copy target once (kernel copy, fsync)"
EXTRACT = "ddalign extract (mlp.gate)"
APPLY = "ddalign apply (into unaligned)"
NAIVE = "naive: from_pretrained x2, subtract, save"
FLOORS = {EXTRACT: EXTRACT_FLOOR, APPLY: APPLY_FLOOR, NAIVE: EXTRACT_FLOOR}


def evict(*paths: Path) -> None:
    """Drop the page cache of these files only (clean pages, after a sync): their next read
    comes from disk, while Python, torch and the rest stay warm as they would be in use."""
    os.sync()
    for path in paths:
        for f in sorted(path.glob("*.safetensors")) if path.is_dir() else [path]:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def measure(cache: str, n: int, a: Path, u: Path, bundle: Path, out: Path, naive: Path, copy: Path) -> dict:
    """Every job `n` times with its inputs warm in the page cache, or evicted before each run."""

    def before(*inputs: Path, clear: bool = False):
        def prepare():
            if clear:
                for x in (out, copy):
                    shutil.rmtree(x, ignore_errors=True)
            if cache == "cold":
                evict(*inputs)
            else:
                run("read", *inputs)  # make sure they are in the page cache

        return prepare

    rows = {
        EXTRACT_FLOOR: repeated(n, "read", a, u, before=before(a, u)),
        EXTRACT: repeated(n, "extract", a, u, bundle, before=before(a, u)),
        APPLY_FLOOR: repeated(n, "read", u, bundle, before=before(u, bundle)),
        COPY: repeated(n, "copy", u, copy, before=before(u, clear=True)),
        APPLY: repeated(n, "apply", a, u, bundle, out, before=before(u, bundle, clear=True)),
        NAIVE: repeated(n, "naive", a, u, bundle, out, naive, before=before(a, u, clear=True)),
    }
    for x in (out, copy):
        shutil.rmtree(x, ignore_errors=True)
    return rows


def show(console, cache: str, rows: dict, size: int, bound: float, n: int) -> dict:
    """Print one table (and ratios); return its JSON."""
    from rich.table import Table

    table = Table(
        title=f"{cache} inputs: extract / apply on a {size / 1e9:.2f} GB checkpoint pair, "
        f"median of {n} (RSS goal < {bound:.0f} MB)"
    )
    for col in ("job", "seconds", "x reading its inputs once", "peak RSS MB (sampled)", "within RSS goal"):
        table.add_column(col, justify="left" if col == "job" else "right")
    for name, (sec, rss) in rows.items():
        ratio = f"{sec / rows[FLOORS[name]][0]:.2f}" if name in FLOORS else ""
        goal = ("yes" if rss < bound else "no") if name in (EXTRACT, APPLY) else ""
        table.add_row(name, f"{sec:.2f}", ratio, f"{rss:.0f}", goal)
    console.print(table)
    console.print(
        f"{cache}: apply / copying the target once {rows[APPLY][0] / rows[COPY][0]:.2f}x; "
        f"naive / extract: time {rows[NAIVE][0] / rows[EXTRACT][0]:.2f}x, "
        f"peak RSS {rows[NAIVE][1] / max(rows[EXTRACT][1], 1):.2f}x"
    )
    return {
        k: {
            "seconds": v[0],
            "peak_rss_mb": v[1],
            "x_reading_inputs_once": v[0] / rows[FLOORS[k]][0] if k in FLOORS else None,
        }
        for k, v in rows.items()
    }


def main(argv=None) -> None:
    from rich.console import Console

    from ddalign.io.checkpoint import Checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", default=None, help="Work folder to keep (default: a temp folder).")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="Where the JSON result goes.")
    args = parser.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="ddalign-bench-io-"))
    work.mkdir(parents=True, exist_ok=True)
    console = Console()
    a, u = work / "aligned", work / "unaligned"
    t = time.perf_counter()
    if not a.exists():
        make_checkpoint(a, 1, args.layers)
    if not u.exists():
        make_checkpoint(u, 2, args.layers)
    ck = Checkpoint.open(a)
    largest = max(ck.info(name).nbytes for name in ck.names())  # read off the checkpoint, kept or new
    size = sum(p.stat().st_size for p in a.glob("*.safetensors"))
    console.print(
        f"checkpoints: 2 x {size / 1e9:.2f} GB bf16 in {work} ({time.perf_counter() - t:.0f} s to make); "
        f"largest tensor {largest / 1e6:.0f} MB"
    )
    bundle, out, naive, copy = work / "bundle.safetensors", work / "patched", work / "naive.safetensors", work / "copy"
    n = args.repeat
    imports = repeated(n, "imports")
    console.print(
        f"not timed below: imports (torch, ddalign, transformers' config classes) {imports[0]:.1f} s, "
        f"{imports[1]:.0f} MB, paid once per process"
    )
    bound = (2 * largest + 500e6) / 1e6
    result = {
        "checkpoint_bytes": size,
        "largest_tensor_bytes": largest,
        "rss_goal_mb": bound,
        "repeat": n,
        "imports": {"seconds": imports[0], "peak_rss_mb": imports[1]},
        "caches": {},
    }
    run("extract", a, u, bundle)  # apply's input exists before any table
    for cache in ("warm", "cold"):
        if cache == "cold" and not hasattr(os, "posix_fadvise"):
            console.print("[yellow]cold inputs: posix_fadvise is missing here; skipped[/]")
            continue
        rows = measure(cache, n, a, u, bundle, out, naive, copy)
        result["caches"][cache] = show(console, cache, rows, size, bound, n)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "extract-apply.json").write_text(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

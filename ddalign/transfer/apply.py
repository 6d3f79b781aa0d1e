"""Applying a patch: to a loaded model (for good, reversibly, or swapped in place for the oracle)
and to a checkpoint folder (streamed, tensor by tensor; every other tensor byte-identical)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from ddalign.errors import DdalignError
from ddalign.io.checkpoint import Checkpoint, TensorSpec, write_checkpoint
from ddalign.io.patch import Patch, PatchEntry, select_components
from ddalign.io.verify import verify_patch
from ddalign.transfer.modes import TRANSPLANT, resolve_mode, write_entries, write_entry

# --- a loaded model ---------------------------------------------------------------------------

_PREFIXES = ("", "model.", "transformer.", "gpt_neox.")


def _param_table(model) -> dict[str, torch.Tensor]:
    table = dict(model.state_dict(keep_vars=True))
    table["__renamings__"] = _renamings(model)  # type: ignore[assignment]
    return table


def _renamings(model) -> list[tuple[str, str]]:
    """transformers' own checkpoint-key renamings for this model (e.g. GPT-NeoX embed_out -> lm_head)."""
    try:
        from transformers.conversion_mapping import WeightRenaming, get_model_conversion_mapping

        return [
            (src, dst)
            for t in get_model_conversion_mapping(model)
            if isinstance(t, WeightRenaming)
            for src, dst in zip(t.source_patterns, t.target_patterns)
        ]
    except Exception:  # older transformers: no mapping module; the prefixes below still apply
        return []


def _find_param(table: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name in table:
        return table[name]
    for strip in _PREFIXES[1:]:
        if name.startswith(strip) and name[len(strip) :] in table:
            return table[name[len(strip) :]]
    for add in _PREFIXES[1:]:
        if add + name in table:
            return table[add + name]
    import re

    for src, dst in table.get("__renamings__", []):  # type: ignore[union-attr]
        renamed = re.sub(src, dst, name)
        if renamed != name and renamed in table:
            return table[renamed]
    raise DdalignError(f"patch tensor {name}: the model has no such parameter")


def _check_shape(param: torch.Tensor, entry: PatchEntry) -> None:
    expected = entry.slice.shape(tuple(param.shape))
    if tuple(entry.values.shape) != expected:
        raise DdalignError(
            f"patch tensor {entry.slice.tensor} ({entry.component}): values {list(entry.values.shape)}, "
            f"the model's slice is {list(expected)}"
        )


def apply_patch(model, patch: Patch, *, mode: str | None = None) -> None:
    """Apply `patch` to a loaded transformers model, for good (in the patch's mode; `mode` must agree)."""
    mode = resolve_mode(patch, mode)
    verify_patch(patch)
    table = _param_table(model)
    by_tensor: dict[str, list[PatchEntry]] = {}
    for e in patch.entries:
        param = _find_param(table, e.slice.tensor)
        _check_shape(param, e)
        by_tensor.setdefault(e.slice.tensor, []).append(e)
    for name, entries in by_tensor.items():
        write_entries(_find_param(table, name).data, entries, mode)


class InPlacePatcher:
    """Switch a loaded model between candidate sets of a patch's components, cheaply and exactly.

    Each touched tensor's original is kept (on CPU) the first time it is touched; a switch
    restores only the tensors whose components changed and re-applies the target components
    that touch them, so overlapping components (a module and its blocks) stay exact.
    """

    def __init__(self, model, patch: Patch, *, mode: str | None = None):
        self.model, self.patch = model, patch
        self.mode = resolve_mode(patch, mode)  # additive entries are summed over the kept originals
        verify_patch(patch)  # once: every later swap cuts from checked entries
        self.table = _param_table(model)
        self.originals: dict[str, torch.Tensor] = {}
        self.active: frozenset[str] = frozenset()
        self._cache: dict[str, list[PatchEntry]] = {}
        stored = {}
        for e in patch.entries:
            stored.setdefault(e.component, []).append(e)
        for comp, entries in stored.items():
            self._cache[comp] = entries
            for e in entries:
                _check_shape(_find_param(self.table, e.slice.tensor), e)

    def entries(self, component: str) -> list[PatchEntry]:
        if component not in self._cache:
            self._cache[component] = self.patch.restrict([component]).entries
        return self._cache[component]

    def set_active(self, components: Iterable[str]) -> int:
        """Make exactly `components` applied; returns the number of tensors rewritten."""
        target = frozenset(str(c) for c in components)
        changed = (self.active - target) | (target - self.active)
        if not changed:
            return 0
        tensors = {e.slice.tensor for c in changed for e in self.entries(c)}
        with torch.no_grad():
            for name in tensors:
                param = _find_param(self.table, name)
                if name not in self.originals:
                    self.originals[name] = param.detach().to("cpu", copy=True)
                else:
                    param.data.copy_(self.originals[name].to(param.device))
            for comp in sorted(target):
                for e in self.entries(comp):
                    if e.slice.tensor in tensors:
                        param = _find_param(self.table, e.slice.tensor)
                        write_entry(param.data, e, self.mode, self.originals[e.slice.tensor])
        self.active = target
        return len(tensors)

    def restore(self) -> None:
        """The model bit-identical to before the first switch."""
        with torch.no_grad():
            for name, original in self.originals.items():
                param = _find_param(self.table, name)
                param.data.copy_(original.to(param.device))
        self.active = frozenset()


@contextmanager
def patched(model, patch: Patch, *, mode: str | None = None) -> Iterator:
    """`with patched(model, patch): ...` applies the patch and restores the exact originals on exit."""
    patcher = InPlacePatcher(model, patch, mode=mode)
    try:
        patcher.set_active(patch.components())
        yield model
    finally:
        patcher.restore()


# --- a folder ---------------------------------------------------------------------------------


@dataclass
class ApplyReport:
    out: Path
    components: list[str]
    tensors_patched: int
    differing_base: list[str]
    checked: int
    mode: str = TRANSPLANT


def base_mismatches(
    patch: Patch, target, *, allow_pickle: bool = False, ckpt: Checkpoint | None = None
) -> tuple[list[str], int]:
    """Patched tensors whose fingerprint in `target` differs from the patch's unaligned model."""
    known = (patch.manifest.get("unaligned") or {}).get("fingerprints") or {}
    ck = ckpt or Checkpoint.open(target, allow_pickle=allow_pickle)
    names = [t for t in patch.tensors() if t in known]
    differing = [t for t in names if t not in ck or ck.fingerprint(t) != known[t]]
    return differing, len(names)


def check_compatible(patch: Patch, ck: Checkpoint) -> None:
    """Same architecture and shapes, else name the first mismatching tensor and both shapes."""
    shapes = (patch.manifest.get("architecture") or {}).get("shapes") or {}
    for t in patch.tensors():
        if t not in ck:
            raise DdalignError(
                f"{ck.path}: has no tensor {t} (the patch was made for "
                f"{(patch.manifest.get('architecture') or {}).get('family')})"
            )
        want = tuple(shapes.get(t, ck.info(t).shape))
        if tuple(ck.info(t).shape) != want:
            raise DdalignError(
                f"{ck.path}: tensor {t} has shape {list(ck.info(t).shape)}, the patch expects {list(want)}"
            )


def apply_to_folder(
    patch: Patch | str | Path,
    target,
    out,
    *,
    components=None,
    allow_other_base: bool = False,
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
    allow_pickle: bool = False,
    mode: str | None = None,
    overwrite_any: bool = False,
    say: Callable[[str], None] | None = None,
) -> ApplyReport:
    """Write `target` with the patch applied to `out`, tensor by tensor; every other tensor byte-identical.

    `out` is never an input or around one; an existing `out` is replaced with `overwrite` only when
    it is a checkpoint folder ddalign wrote (`overwrite_any`: whatever it is). The patch's payload is
    checked against its manifest before anything is written (ddalign.io.verify)."""
    from ddalign.io.outputs import check_output, output_lock

    patch_path = patch.path if isinstance(patch, Patch) else patch
    check_output(
        out,
        {"target checkpoint": target, "patch": patch_path},
        kind="checkpoint",
        overwrite=overwrite,
        overwrite_any=overwrite_any,
    )
    if not isinstance(patch, Patch):
        patch = Patch.load(patch)
    out = Path(os.path.abspath(out))
    mode = resolve_mode(patch, mode)
    chosen = select_components(patch, components)
    if chosen != patch.components():
        patch = patch.restrict(chosen)
    ck = Checkpoint.open(target, allow_pickle=allow_pickle)
    check_compatible(patch, ck)
    differing, checked = base_mismatches(patch, target, ckpt=ck)
    if differing and not allow_other_base:
        from ddalign.io.hub import base_mismatch_text

        raise DdalignError(
            base_mismatch_text(patch, ck, target, differing, checked) + "; pass --allow-other-base "
            "to apply it to another fine-tune of the same base"
        )
    verify_patch(patch, release=True)
    by_tensor: dict[str, list[PatchEntry]] = {}
    for e in patch.entries:
        by_tensor.setdefault(e.slice.tensor, []).append(e)

    # Unchanged tensors go file to file in the kernel; patched ones are read into one buffer,
    # reused (the writer writes each tensor before it asks for the next).
    buffer = torch.empty(max((ck.info(t).nbytes for t in by_tensor), default=0), dtype=torch.uint8)

    def produce(name: str):
        if name not in by_tensor:
            return ck.source(name)
        tensor = ck.get(name, into=buffer)
        write_entries(tensor, by_tensor[name], mode)
        for e in by_tensor[name]:
            e.release()
        return tensor

    specs = [TensorSpec(n, ck.info(n).shape, ck.info(n).dtype) for n in ck.names()]
    with output_lock(out, say=say):
        write_checkpoint(
            out, specs, produce, copy_from=ck.path, max_shard_size=max_shard_size, overwrite=overwrite or overwrite_any
        )
    return ApplyReport(out, patch.components(), len(by_tensor), differing, checked, mode)

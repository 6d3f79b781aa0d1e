"""Patch modes: what a patch's stored values mean, and how they are written into a tensor.

- "transplant" (DAPA): the values are the aligned sibling's; they replace the target's.
- "add" (task arithmetic, as RESTA's safety vector): the values are the aligned sibling's change
  from the common parent, A - P; they are added to the target, which keeps its own fine-tuning
  in the patched tensors.

The addition is computed in float32 and cast back to the tensor's dtype, and always from the
tensor's original values, so that applying overlapping components (a module and its row blocks)
adds each delta once, and a revert restores the kept original rather than subtracting.
"""

from __future__ import annotations

from typing import Iterable

import torch

from ddalign.errors import DdalignError

TRANSPLANT = "transplant"
ADD = "add"
MODES = (TRANSPLANT, ADD)
DELTA_DTYPE = torch.float32  # additive values: A - P of two bf16 tensors is exact in float32


def whole_bundle(mode: str | None) -> str:
    """The whole bundle in a report's words: what every subset is measured beside."""
    return "full additive bundle" if mode == ADD else "full transplant"


def patch_mode(manifest: dict, where: object = "patch") -> str:
    """The manifest's mode; a patch written before modes existed is a transplant."""
    mode = manifest.get("mode") or TRANSPLANT
    if mode not in MODES:
        raise DdalignError(f"{where}: manifest mode {mode!r}, expected one of {', '.join(MODES)}")
    return mode


def resolve_mode(patch, requested: str | None = None) -> str:
    """The patch's own mode; an explicit `requested` mode must agree with it."""
    where = getattr(patch, "path", None) or "patch"
    stored = patch_mode(patch.manifest, where)
    if requested is None or requested == stored:
        return stored
    if requested not in MODES:
        raise DdalignError(f"--mode {requested}: expected one of {', '.join(MODES)}")
    if requested == ADD:
        raise DdalignError(
            f"{where}: a transplant patch (it stores the aligned values, not a delta); --mode add "
            f"needs a bundle extracted with --base PARENT"
        )
    raise DdalignError(
        f"{where}: an additive patch (it stores A - P deltas); it cannot be applied with --mode {requested}"
    )


@torch.no_grad()
def write_entry(dest: torch.Tensor, entry, mode: str, original: torch.Tensor | None = None) -> None:
    """Write one patch entry into `dest` (a whole tensor). In add mode the sum is taken over
    `original` (a kept copy of the untouched tensor), or over `dest` itself when omitted."""
    target = entry.slice.take(dest)
    if mode == TRANSPLANT:
        target.copy_(entry.values.to(device=dest.device, dtype=dest.dtype))
        return
    base = entry.slice.take(dest if original is None else original)
    total = base.to(device=dest.device, dtype=torch.float32) + entry.values.to(device=dest.device, dtype=torch.float32)
    target.copy_(total.to(dest.dtype))


def write_entries(dest: torch.Tensor, entries: Iterable, mode: str) -> None:
    """Write every entry of one tensor; overlapping additive entries add to the original once."""
    entries = list(entries)
    original = dest.detach().clone() if mode == ADD and len(entries) > 1 else None
    for e in entries:
        write_entry(dest, e, mode, original)

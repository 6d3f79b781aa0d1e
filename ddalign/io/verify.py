"""Payload checks: a patch's stored values against its manifest, before anything is written with them.

A patch's manifest records the sha256 of every stored slice (`components[c].sha256`, written by
extract and by `Patch.save`); a patch from before that record is checked, where a slice is a whole
tensor, against the aligned model's tensor fingerprint (its bytes are that tensor's bytes). Values
that are NaN or infinite are refused unless extract found them in the aligned model itself.

Each stored entry is checked once (`PatchEntry.checked`): the oracle's many in-memory swaps of
sub-blocks cut from a bundle check nothing again.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch

from ddalign.errors import DdalignError

PENDING = "0" * 64


def payload_digest(values: torch.Tensor) -> str:
    """sha256 of the bytes safetensors stores for `values`."""
    from ddalign.io.checkpoint import tensor_buffer

    return hashlib.sha256(tensor_buffer(values)).hexdigest()


def expected_digests(manifest: dict, component: str, slices: Sequence) -> list[str | None]:
    """The sha256 each stored slice of `component` must have (None: nothing recorded to check against)."""
    info = (manifest.get("components") or {}).get(component) or {}
    recorded = info.get("sha256")
    if isinstance(recorded, list) and len(recorded) == len(slices):
        return [d if isinstance(d, str) and len(d) == 64 and d != PENDING else None for d in recorded]
    prints = (manifest.get("aligned") or {}).get("fingerprints") or {}
    shapes = (manifest.get("architecture") or {}).get("shapes") or {}
    out: list[str | None] = []
    for s in slices:
        shape = shapes.get(s.tensor)
        whole = s.dim is None or (shape is not None and s.start == 0 and s.stop == shape[s.dim])
        digest = prints.get(s.tensor) if whole else None
        out.append(digest if isinstance(digest, str) and digest != PENDING else None)
    return out


def verify_patch(patch, *, release: bool = False) -> int:
    """Check every stored slice the patch uses: shape, sha256, finite values. Returns the number
    checked now (0 when all were checked before). `release` drops values read only to be checked
    (a folder apply reads them again, one tensor at a time)."""
    shapes = ((patch.manifest.get("architecture") or {}).get("shapes")) or {}
    name = patch.path or "patch"
    checked = 0
    for entry in patch.entries:
        root = entry.origin or entry
        if root.checked:
            continue
        key = root.key or f"{root.component}|{root.slice.tensor}"
        full = shapes.get(root.slice.tensor)
        stored = (
            root.stored_shape
            if root.stored_shape is not None
            else (tuple(root._values.shape) if root._values is not None else None)
        )
        if full is not None and stored is not None and tuple(stored) != root.slice.shape(full):
            raise DdalignError(
                f"{name}: tensor {key} is stored with shape {list(stored)}, its manifest slice of "
                f"{root.slice.tensor} has shape {list(root.slice.shape(full))}"
            )
        was_loaded = root._values is not None
        values = root.values
        if root.expected is not None and payload_digest(values) != root.expected:
            raise DdalignError(
                f"{name}: tensor {key}: the stored values do not match the manifest's sha256 "
                f"(the file is damaged or was modified); nothing was applied"
            )
        if values.is_floating_point() and not root.allow_nonfinite and not bool(torch.isfinite(values).all()):
            raise DdalignError(
                f"{name}: tensor {key} holds NaN or infinite values, which the aligned model's "
                f"{root.slice.tensor} did not; nothing was applied"
            )
        root.checked = True
        checked += 1
        if release and not was_loaded:
            root.release()
    return checked

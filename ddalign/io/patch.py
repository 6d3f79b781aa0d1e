"""Patches: the format (a bundle is a patch holding the full scope), restriction to sub-blocks,
application to a folder (streamed) or to a loaded model (for good, reversibly, or swapped in place
for the oracle).

A patch stores the aligned values of component slices, keyed `"{component}|{tensor}"`, and a
JSON manifest in the safetensors metadata that carries enough of the architecture (config and
tensor shapes) to resolve any sub-block without the original checkpoint.
"""

from __future__ import annotations

import copy
import fnmatch
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import torch

from ddalign.architectures import ArchitectureMap, Component, TensorSlice
from ddalign.errors import DdalignError
from ddalign.io.checkpoint import Checkpoint, TensorSpec, dtype_code, write_safetensors

FORMAT = "ddalign.patch/1"
META_KEY = "ddalign"


@dataclass
class PatchEntry:
    """One stored slice. Values loaded from a patch file are read on first use, so that streaming
    a large patch into a folder never holds all of it."""

    component: str
    slice: TensorSlice
    _values: torch.Tensor | None = None
    _load: Callable[[], torch.Tensor] | None = field(default=None, repr=False, compare=False)
    # payload checks (ddalign.io.verify): the stored key, its shape in the file and the manifest's
    # sha256 of its bytes; a sub-block cut from a stored entry points to it (`origin`), so that a
    # stored entry is checked once however many patches are cut from it
    key: str | None = field(default=None, repr=False, compare=False)
    stored_shape: tuple[int, ...] | None = field(default=None, repr=False, compare=False)
    expected: str | None = field(default=None, repr=False, compare=False)
    origin: "PatchEntry | None" = field(default=None, repr=False, compare=False)
    checked: bool = field(default=False, repr=False, compare=False)
    allow_nonfinite: bool = field(default=False, repr=False, compare=False)  # the aligned model had NaN/inf here

    @property
    def values(self) -> torch.Tensor:
        if self._values is None:
            self._values = self._load()
        return self._values

    def release(self) -> None:
        """Drop values that can be read again from the patch file."""
        if self._load is not None:
            self._values = None


def _keys(component: str, slices: list[TensorSlice]) -> list[str]:
    """Storage keys of a component's slices; a tensor met twice gets a #i suffix."""
    keys, seen = [], {}
    for s in slices:
        n = seen.get(s.tensor, 0)
        seen[s.tensor] = n + 1
        keys.append(f"{component}|{s.tensor}" + (f"#{n}" if n else ""))
    return keys


@dataclass
class Patch:
    entries: list[PatchEntry]
    manifest: dict
    path: Path | None = None
    _arch: ArchitectureMap | None = field(default=None, repr=False, compare=False)
    hub: object = field(default=None, repr=False, compare=False)  # the Hub snapshot it was loaded from

    # --- I/O -------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path) -> "Patch":
        """The manifest now, the values when first used (read from the file, not memory-mapped).

        `path` is a patch file or a Hub id (`org/name[@revision]`) of a repository holding one."""
        from ddalign.io.hub import resolve_patch

        path, hub = resolve_patch(path)
        if not path.is_file():
            raise DdalignError(f"{path}: no such patch file")
        stored = Checkpoint.open_file(path)  # the header, read once
        raw = stored.metadata.get(META_KEY)
        if raw is None:
            raise DdalignError(f"{path}: not a ddalign patch (no '{META_KEY}' manifest in the safetensors metadata)")
        try:
            manifest = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DdalignError(f"{path}: corrupt ddalign manifest ({exc.msg})") from None
        if manifest.get("format") != FORMAT:
            raise DdalignError(f"{path}: manifest format {manifest.get('format')!r}, expected {FORMAT!r}")
        entries = []
        from ddalign.io.verify import expected_digests

        for comp, info in manifest["components"].items():
            slices = [TensorSlice.from_list(s) for s in info["slices"]]
            digests = expected_digests(manifest, comp, slices)
            for key, s, digest in zip(_keys(comp, slices), slices, digests):
                if key not in stored:
                    raise DdalignError(f"{path}: manifest names tensor {key!r}, missing from the file")
                entries.append(
                    PatchEntry(
                        comp,
                        s,
                        _load=partial(stored.get, key),
                        key=key,
                        stored_shape=stored.info(key).shape,
                        expected=digest,
                        allow_nonfinite=bool(info.get("aligned_nonfinite")),
                    )
                )
        patch = cls(entries, manifest, path)
        patch.hub = hub
        return patch

    def save(self, path) -> Path:
        """Atomic write; tensors in component order."""
        path = Path(path)
        by_comp: dict[str, list[PatchEntry]] = {}
        for e in self.entries:
            by_comp.setdefault(e.component, []).append(e)
        values, specs = {}, []
        for comp, entries in by_comp.items():
            for key, e in zip(_keys(comp, [e.slice for e in entries]), entries):
                values[key] = e.values
                specs.append(TensorSpec(key, tuple(e.values.shape), dtype_code(e.values.dtype)))
        manifest = dict(self.manifest)
        from ddalign.io.verify import payload_digest

        manifest["components"] = {
            c: {
                **manifest.get("components", {}).get(c, {}),
                "slices": [e.slice.as_list() for e in es],
                "sha256": [payload_digest(e.values) for e in es],
            }
            for c, es in by_comp.items()
        }
        write_safetensors(path, specs, lambda k: values[k], metadata={META_KEY: json.dumps(manifest)})
        self.manifest, self.path = manifest, path
        return path

    # --- queries -----------------------------------------------------------------------------
    def components(self) -> list[str]:
        return list(dict.fromkeys(e.component for e in self.entries))

    def tensors(self) -> list[str]:
        return list(dict.fromkeys(e.slice.tensor for e in self.entries))

    def prior(self) -> dict[str, float]:
        """Component -> delta norm (the search's prior: larger is more likely needed)."""
        comps = self.manifest.get("components", {})
        return {c: float(comps.get(c, {}).get("delta_norm") or 0.0) for c in self.components()}

    def architecture(self) -> ArchitectureMap:
        """The map the patch was made on, rebuilt from the manifest (no checkpoint needed)."""
        if self._arch is None:
            arch = self.manifest.get("architecture") or {}
            if "config" not in arch or "shapes" not in arch:
                raise DdalignError(f"{self.path or 'patch'}: manifest lacks the architecture config/shapes")
            shapes = {k: tuple(v) for k, v in arch["shapes"].items()}
            self._arch = ArchitectureMap.from_config(arch["config"], shapes)
            scope = self.manifest.get("scope")
            if scope:
                self._arch = self._arch.with_scope(scope)
        return self._arch

    def params(self) -> int:
        return sum(e.values.numel() for e in self.entries)

    @property
    def mode(self) -> str:
        """ "transplant" (aligned values replace the target's) or "add" (A - P deltas added to it)."""
        from ddalign.transfer.modes import patch_mode

        return patch_mode(self.manifest, self.path or "patch")

    # --- restriction -------------------------------------------------------------------------
    def restrict(self, components: Iterable[str]) -> "Patch":
        """A patch holding only `components`: stored ones, or sub-blocks of stored ones (sliced out)."""
        arch = self.architecture()
        stored = self.components()
        by_comp: dict[str, list[PatchEntry]] = {}
        for e in self.entries:
            by_comp.setdefault(e.component, []).append(e)
        entries: list[PatchEntry] = []
        manifest_comps: dict[str, dict] = {}
        old = self.manifest.get("components", {})
        for name in dict.fromkeys(str(Component.parse(c)) for c in components):
            if name in by_comp:
                entries.extend(by_comp[name])
                manifest_comps[name] = copy.deepcopy(old.get(name, {}))
                continue
            wanted = arch.resolve(name)
            parents = [s for s in stored if arch.covers(s, name)] or stored
            pool = [e for s in parents for e in by_comp[s]]
            for want in wanted:
                source = next((e for e in pool if e.slice.covers(want)), None)
                if source is None:
                    raise DdalignError(
                        f"patch {self.path or ''}: component {name} ({want.tensor}) is not "
                        f"inside any stored component ({', '.join(stored[:6])}...)"
                    )
                entries.append(PatchEntry(name, want, _sub(source, want), origin=source.origin or source))
            manifest_comps[name] = {
                "slices": [w.as_list() for w in wanted],
                "params": sum(int(_sub_numel(arch, w)) for w in wanted),
                "parent": next((s for s in parents if arch.covers(s, name)), None),
            }
        manifest = {
            **copy.deepcopy({k: v for k, v in self.manifest.items() if k != "components"}),
            "components": manifest_comps,
        }
        return Patch(entries, manifest, None, self._arch)


def _sub_numel(arch: ArchitectureMap, s: TensorSlice) -> int:
    return s.numel(arch.shapes[s.tensor])


def _sub(source: PatchEntry, want: TensorSlice) -> torch.Tensor:
    """The values of `want` out of a stored entry that covers it (a view)."""
    if source.slice.dim is None:
        return want.take(source.values)
    if want.dim is None:
        return source.values
    return source.values.narrow(want.dim, want.start - source.slice.start, want.stop - want.start)


def select_components(patch: Patch, patterns: str | Iterable[str] | None) -> list[str]:
    """Components matching comma-separated fnmatch patterns (or the sub-blocks named exactly)."""
    if patterns is None:
        return patch.components()
    items = [p.strip() for p in (patterns.split(",") if isinstance(patterns, str) else patterns) if p.strip()]
    if not items:
        raise DdalignError(
            f"--components {patterns if isinstance(patterns, str) else ''!r}: names no component; "
            f"leave it out to apply every component of the patch"
        )
    out: list[str] = []
    for item in items:
        hits = [c for c in patch.components() if fnmatch.fnmatchcase(c, item)]
        if not hits and "[" in item and not any(ch in item for ch in "*?"):
            hits = [item]  # a sub-block: restrict() slices it out
        if not hits:
            raise DdalignError(f"--components {item}: matches no component of the patch")
        out.extend(h for h in hits if h not in out)
    return out

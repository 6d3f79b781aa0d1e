"""`ArchitectureMap`: components <-> tensor slices for one checkpoint layout.

Built from the checkpoint's config and tensor shapes only: a listed family's table
(`families.py`) when its tensor names are there, else a layout inferred from the names
(`infer.py`). Scopes choose which module-level units a search works on; scope only matters
for whole-layer components (`L3`), which resolve to the scope's modules.
"""

from __future__ import annotations

import bisect
import fnmatch
import itertools
import math
import re
from dataclasses import replace
from typing import Iterable, Sequence

from ddalign.architectures.components import (
    _GROUPS,
    LAYERLESS,
    SCOPE_KEYWORDS,
    Component,
    TensorSlice,
    parse_layers,
    parse_scope,
)
from ddalign.architectures.families import FAMILIES
from ddalign.architectures.infer import _build_inferred
from ddalign.architectures.layout import _build_listed, _config_object, _describe, _dims, _Part, _tp_plan
from ddalign.errors import DdalignError

TIED_HEAD = "the output layer is tied to the embeddings: one tensor, one component (embed); patching embed patches both"


class ArchitectureMap:
    """Component <-> tensor slices for one checkpoint layout.

    Attributes: family (config model_type, or "unknown"), inferred (True when the layout was
    read from tensor names rather than a family table), num_layers, ffn_size, tied (the output
    layer is the embedding: one tensor, so one component, `embed`; there is no `head`),
    tied_copies (a tied checkpoint that stores the output layer anyway: {copy: embedding tensor};
    the copy moves with `embed` and counts once), scope (the default scope, see `with_scope`),
    unmapped (stored tensors no component covers: buffers, unknown layer-less tensors).
    """

    def __init__(
        self,
        family: str,
        shapes: dict[str, tuple[int, ...]],
        layers: list[dict[str, list[_Part]]],
        layerless: dict[str, list[_Part]],
        *,
        inferred: bool,
        tied: bool,
        scope: "str | Sequence[str]" = "mlp.gate",
    ):
        self.family = family
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self._layers = layers
        self._layerless = layerless
        self.inferred = inferred
        self.tied = tied
        self.tied_copies = {p.tensor: p.tied_to for parts in layerless.values() for p in parts if p.tied_to}
        self.num_layers = len(layers)
        self.scope = scope
        self.ffn_size = self._ffn_size()
        covered = {p.tensor for mods in layers for parts in mods.values() for p in parts}
        covered |= {p.tensor for parts in layerless.values() for p in parts}
        self.unmapped = sorted(set(self.shapes) - covered)

    # ---- construction ------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, ckpt) -> "ArchitectureMap":
        """Map for a `ddalign.io.checkpoint.Checkpoint` (uses only its .config and .shapes())."""
        return cls.from_config(dict(ckpt.config or {}), dict(ckpt.shapes()))

    @classmethod
    def from_config(cls, config: dict, shapes: dict[str, tuple]) -> "ArchitectureMap":
        """Map from a config.json dict and {tensor name: shape}; listed family or inferred."""
        if not shapes:
            raise DdalignError("checkpoint has no tensors: cannot build an architecture map")
        config = dict(config or {})
        model_type = str(config.get("model_type") or "unknown")
        config_obj = _config_object(config)
        tied = bool(getattr(config_obj, "tie_word_embeddings", config.get("tie_word_embeddings", False)))
        dims = _dims(config, config_obj)
        plan = _tp_plan(config_obj)
        family = FAMILIES.get(model_type)
        if family is not None:
            built = _build_listed(model_type, family, shapes, plan, dims, tied)
            if built is not None:
                layers, layerless = built
                return cls(model_type, shapes, layers, layerless, inferred=False, tied=tied)
        layers, layerless = _build_inferred(model_type, shapes, plan, dims, tied)
        return cls(model_type, shapes, layers, layerless, inferred=True, tied=tied)

    def with_scope(self, scope: "str | Sequence[str]") -> "ArchitectureMap":
        """A copy whose default scope is `scope`: whole-layer components resolve to it."""
        self._scope_items(scope)  # validate now
        return ArchitectureMap(
            self.family, self.shapes, self._layers, self._layerless, inferred=self.inferred, tied=self.tied, scope=scope
        )

    def describe(self) -> dict:
        """Summary for manifests: family, num_layers, ffn_size, tied, inferred, modules, layerless.

        A tied map also says so in words (`tied_head`), and names a stored copy of the tied
        tensor (`tied_copies`) when there is one.
        """
        modules = sorted({m for mods in self._layers for m in mods}, key=lambda m: Component(0, m)._key())
        out = {
            "family": self.family,
            "num_layers": self.num_layers,
            "ffn_size": self.ffn_size,
            "tied": self.tied,
            "inferred": self.inferred,
            "modules": modules,
            "layerless": sorted(self._layerless),
        }
        if self.tied:
            out["tied_head"] = TIED_HEAD
            if self.tied_copies:
                out["tied_copies"] = dict(self.tied_copies)
        return out

    def __repr__(self) -> str:
        return (
            f"ArchitectureMap(family={self.family!r}, num_layers={self.num_layers}, "
            f"ffn_size={self.ffn_size}, inferred={self.inferred}" + (", tied=True" if self.tied else "") + ")"
        )

    # ---- modules -----------------------------------------------------------------------

    def modules(self, layer: int) -> list[str]:
        """Stored (atomic) modules of a layer, in model order."""
        self._check_layer(layer)
        return sorted(self._layers[layer], key=lambda m: Component(0, m)._key())

    def _group_members(self, layer: int, group: str) -> list[str]:
        return [m for m in self.modules(layer) if m.startswith(group + ".")]

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise DdalignError(
                f"layer {layer} does not exist: {self.family} map has "
                f"{self.num_layers} layers (0-{self.num_layers - 1})"
            )

    def _parts(self, component: Component) -> list[_Part]:
        """Stored parts of a module-level component (group -> its members' parts)."""
        if component.layer is None:
            if component.module not in self._layerless:
                raise DdalignError(
                    f"component {component.module!r} does not exist in this "
                    f"{self.family} checkpoint" + (f": {TIED_HEAD}" if component.module == "head" and self.tied else "")
                )
            return self._layerless[component.module]
        self._check_layer(component.layer)
        mods = self._layers[component.layer]
        if component.module in mods:
            return mods[component.module]
        if component.module in _GROUPS:
            members = self._group_members(component.layer, component.module)
            if component.module == "mlp":
                members = [m for m in members if m in ("mlp.gate", "mlp.up", "mlp.down")]
            if members:
                return [p for m in members for p in mods[m]]
        raise DdalignError(
            f"component {component.name!r}: layer {component.layer} of this "
            f"{self.family} checkpoint has no module {component.module!r}; "
            f"it has {', '.join(self.modules(component.layer))}"
        )

    def extent(self, component: "Component | str") -> int | None:
        """Number of rows a module has for row blocks (FFN neurons, output features), or None."""
        component = Component.parse(component).unblocked
        lengths = {p.length for p in self._parts(component) if p.axis is not None}
        if not lengths:
            return None
        if len(lengths) > 1:
            raise DdalignError(
                f"component {component.name!r}: its tensors disagree on the "
                f"row count ({sorted(lengths)}); blocks are not defined"
            )
        return lengths.pop()

    def _ffn_size(self) -> int:
        for layer in range(self.num_layers):
            for module in ("mlp.gate", "mlp.up", "mlp.down"):
                if module in self._layers[layer]:
                    size = self.extent(Component(layer, module))
                    if size:
                        return size
        return 0

    # ---- scopes ------------------------------------------------------------------------

    def _scope_items(self, scope) -> list[str]:
        items = parse_scope(scope)
        for item in items:
            if (
                item in SCOPE_KEYWORDS
                or any(c in item for c in "*?")
                or re.fullmatch(r"[a-z_]+(\.[A-Za-z0-9_]+)*", item)
            ):
                continue
            Component.parse(item)  # raises on a bad name
        return items

    def _universe(self, layers: Iterable[int]) -> list[Component]:
        """Module-level names patterns match against: stored modules and groups, layer-less."""
        out: list[Component] = []
        for i in layers:
            mods = self.modules(i)
            out.extend(Component(i, m) for m in mods)
            for group in _GROUPS:
                if any(m.startswith(group + ".") for m in mods):
                    out.append(Component(i, group))
        out.extend(Component(None, m) for m in self._layerless)
        return out

    def _keyword(self, item: str, layer: int) -> list[Component]:
        mods = self.modules(layer)
        if item == "mlp":
            return [Component(layer, "mlp")] if any(m.startswith("mlp.") for m in mods) else []
        if item == "attn":
            return [Component(layer, m) for m in mods if m.startswith("attn.")]
        if item == "all":
            out = [Component(layer, m) for m in mods if not m.startswith("mlp.")]
            if any(m.startswith("mlp.") for m in mods):
                out.append(Component(layer, "mlp"))
            return out
        return [Component(layer, item)] if item in mods else []

    def components(
        self,
        scope: "str | Sequence[str] | None" = None,
        layers: "str | range | Iterable[int] | None" = None,
        *,
        granularity: str = "module",
        block_size: int | None = None,
    ) -> list[Component]:
        """The units a transfer or search works on, sorted in model order.

        scope (default: the map's scope, "mlp.gate" unless `with_scope` changed it):
          - "mlp.gate": L{i}.mlp.gate (DAPA's default);
          - "mlp": L{i}.mlp, the whole FFN; its blocks L{i}.mlp[a:b] are groups of FFN neurons
            (rows of gate and up, columns of down);
          - "attn": L{i}.attn.q/k/v/o (or L{i}.attn.qkv where q/k/v are interleaved);
          - "all": every module of every layer (mlp as one unit), plus embed, head (absent when
            tied) and norm.final;
          - a module name (mlp.up, attn.o, norm.in, ...): that module in every layer;
          - component names or fnmatch patterns over module-level names (L*.attn.o, L3.mlp,
            L3.mlp.gate[0:64]), comma-separated or as a list.
        layers ('8-20', '8-12,15', range, list): keep only those layers; layer-less components
        (embed, head, norm.final) are then left out.
        granularity: "layer" -> L{i} (plus in-scope layer-less components), "module" (default)
        -> module-level units, "block" -> their row blocks of `block_size`.
        A unit covered by another selected unit (L3.mlp.gate inside L3.mlp) is dropped.
        """
        scope = self.scope if scope is None else scope
        items = self._scope_items(scope)
        selected_layers = parse_layers(layers, self.num_layers)
        if selected_layers == []:
            raise DdalignError("--layers: no layer selected")
        layer_list = range(self.num_layers) if selected_layers is None else selected_layers
        universe = None
        chosen: set[Component] = set()
        for item in items:
            if item in SCOPE_KEYWORDS or (re.fullmatch(r"[a-z_]+(\.[A-Za-z0-9_]+)*", item) and item not in LAYERLESS):
                found = [c for i in layer_list for c in self._keyword(item, i)]
                if item == "all" and selected_layers is None:
                    found += [Component(None, m) for m in self._layerless]
                if not found:
                    raise DdalignError(
                        f"scope {item!r}: no such module in this "
                        f"{self.family} checkpoint; its layers have "
                        f"{', '.join(self.modules(0)) if self.num_layers else 'nothing'}"
                    )
                chosen.update(found)
            elif any(c in item for c in "*?") or not _is_component_name(item):
                universe = universe if universe is not None else self._universe(layer_list)
                found = [c for c in universe if fnmatch.fnmatchcase(c.name, item)]
                if selected_layers is not None:
                    found = [c for c in found if c.layer is not None]
                if not found:
                    raise DdalignError(
                        f"scope pattern {item!r} matches no component; "
                        f"components look like {_describe([c.name for c in universe][:6])}"
                    )
                chosen.update(found)
            else:
                comp = Component.parse(item)
                if comp.layer is not None and comp.module == "":  # "L3": all of layer 3
                    self._check_layer(comp.layer)
                    found = self._keyword("all", comp.layer)
                else:
                    self.resolve(comp)  # must exist
                    found = [comp]
                chosen.update(c for c in found if selected_layers is None or c.layer in selected_layers)
        units = self._drop_covered(sorted(chosen))
        if granularity == "module":
            return units
        if granularity == "layer":
            layered = sorted({Component(c.layer, "") for c in units if c.layer is not None})
            return sorted(layered + [c for c in units if c.layer is None])
        if granularity == "block":
            return [b for c in units for b in self.expand(c, "block", block_size)]
        raise DdalignError(f"granularity {granularity!r}: expected layer, module or block")

    def _drop_covered(self, components: list[Component]) -> list[Component]:
        """Drop units inside another selected unit. Near-linear: a patch may list many blocks."""
        by_layer: dict[int | None, list[Component]] = {}
        for c in components:
            by_layer.setdefault(c.layer, []).append(c)
        keep: list[Component] = []
        for group in by_layer.values():
            wholes = [c for c in group if c.block is None]
            slices = {c: self.resolve(c) for c in wholes}

            def inside_a_whole(c: Component, own: list[TensorSlice]) -> bool:
                return any(
                    o != c
                    and _related(o, c)
                    and _slices_cover(slices[o], own)
                    and not (c in slices and _slices_cover(own, slices[o]) and c < o)
                    for o in wholes
                )

            keep.extend(c for c in wholes if not inside_a_whole(c, slices[c]))
            # blocks: inside a whole unit, or inside a block of the same module or of the
            # whole-FFN group (L3.mlp[0:32] holds L3.mlp.gate[8:16]): an interval sweep
            blocks = sorted((c for c in group if c.block is not None), key=lambda c: (c.block[0], -c.block[1]))
            reach: dict[str, int] = {}  # module -> furthest block end seen so far
            mlp_starts = [c.block[0] for c in blocks if c.module == "mlp"]
            mlp_reach = list(itertools.accumulate((c.block[1] for c in blocks if c.module == "mlp"), max))
            for c in blocks:
                a, b = c.block
                covered = reach.get(c.module, -1) >= b
                reach[c.module] = max(reach.get(c.module, -1), b)
                if not covered and c.module.startswith("mlp."):
                    n = bisect.bisect_right(mlp_starts, a)  # mlp blocks starting at or before a
                    covered = n > 0 and mlp_reach[n - 1] >= b
                if not covered and wholes:
                    covered = inside_a_whole(c, self.resolve(c))
                if not covered:
                    keep.append(c)
        return sorted(keep)

    def in_scope_modules(self, layer: int, scope=None) -> list[Component]:
        """The module-level units of `layer` under `scope` (what L{layer} stands for)."""
        scope = self.scope if scope is None else scope
        return [c for c in self.components(scope, [layer]) if c.layer == layer]

    # ---- resolve / expand / count ------------------------------------------------------

    def resolve(self, component: "Component | str", scope=None) -> list[TensorSlice]:
        """Tensor slices of a component, biases included (sliced with their rows).

        A whole layer resolves to its in-scope modules (scope: argument, else the map's).
        A row block resolves only the tensors that have rows (a rowwise tensor's bias and norm
        weights belong to the whole module, never to a block).
        """
        component = Component.parse(component)
        if component.layer is not None and component.module == "":
            return _merge(
                [s for c in self.in_scope_modules(component.layer, scope) for s in self.resolve(c)], self.shapes
            )
        parts = self._parts(component.unblocked)
        if component.block is None:
            return _merge([p.whole() for p in parts], self.shapes)
        a, b = component.block
        size = self.extent(component)
        if size is None:
            raise DdalignError(
                f"component {component.name!r}: {component.unblocked.name} has no rows to split into blocks"
            )
        if b > size:
            raise DdalignError(f"component {component.name!r}: block end {b} is past the module's {size} rows")
        return [p.rows(a, b) for p in parts if p.axis is not None]

    def expand(
        self, component: "Component | str", granularity: str, block_size: int | None = None, scope=None
    ) -> list[Component]:
        """One level down the search hierarchy (layer -> module -> row block).

        "module": L3 -> its in-scope module units; L3.mlp / L3.attn -> their stored modules;
        anything else -> [itself]. "block": a module (or block) -> consecutive row blocks of
        `block_size` rows (last one shorter; default: an eighth of the rows) within it; a
        layer -> the blocks of its in-scope modules; a module without rows -> [itself].
        """
        component = Component.parse(component)
        if granularity == "module":
            if component.layer is not None and component.module == "":
                return self.in_scope_modules(component.layer, scope)
            if (
                component.layer is not None
                and component.block is None
                and component.module in _GROUPS
                and component.module not in self._layers[component.layer]
            ):
                self._parts(component)  # raises when the layer or the group is missing
                members = self._group_members(component.layer, component.module)
                if component.module == "mlp":
                    members = [m for m in members if m in ("mlp.gate", "mlp.up", "mlp.down")]
                return [Component(component.layer, m) for m in members]
            return [component]
        if granularity != "block":
            raise DdalignError(f"granularity {granularity!r}: expected module or block")
        if component.layer is not None and component.module == "":
            return [
                b for c in self.in_scope_modules(component.layer, scope) for b in self.expand(c, "block", block_size)
            ]
        if component.layer is None:
            return [component]
        if component.module == "attn" and component.block is None and "attn" not in self._layers[component.layer]:
            # q, k, v, o have different row counts: the group splits into its members' blocks
            return [b for c in self.expand(component, "module") for b in self.expand(c, "block", block_size)]
        size = self.extent(component)
        if size is None:
            return [component]
        lo, hi = component.block or (0, size)
        if block_size is None:
            block_size = max(1, -(-(hi - lo) // 8))
        if block_size < 1:
            raise DdalignError(f"block size {block_size}: expected a positive number of rows")
        base = component.unblocked
        return [replace(base, block=(a, min(a + block_size, hi))) for a in range(lo, hi, block_size)]

    def param_count(self, component: "Component | str", scope=None) -> int:
        """Number of parameters a component moves (a stored copy of a tied tensor counts once)."""
        return sum(
            s.numel(self.shapes[s.tensor]) for s in self.resolve(component, scope) if s.tensor not in self.tied_copies
        )

    def total_params(self) -> int:
        """Parameters of the model (a tied head counts once, also when a copy of it is stored)."""
        return sum(math.prod(shape) for name, shape in self.shapes.items() if name not in self.tied_copies)

    def covers(self, outer: "Component | str", inner: "Component | str", scope=None) -> bool:
        """True when every parameter of `inner` is part of `outer` (e.g. L3 ⊇ L3.mlp.gate[0:16])."""
        return _slices_cover(self.resolve(outer, scope), self.resolve(inner, scope))


def _is_component_name(item: str) -> bool:
    try:
        Component.parse(item)
        return True
    except DdalignError:
        return False


def _related(outer: Component, inner: Component) -> bool:
    """Can `outer` hold `inner`? (the same module, its group, or the whole layer)"""
    return outer.module in ("", inner.module) or inner.module.startswith(outer.module + ".")


def _merge(slices: list[TensorSlice], shapes: dict) -> list[TensorSlice]:
    """Join adjacent slices of one tensor (Phi-3's gate and up halves -> the whole gate_up_proj)."""
    out: list[TensorSlice] = []
    for s in slices:
        prev = out[-1] if out else None
        if (
            prev is not None
            and prev.tensor == s.tensor
            and prev.dim is not None
            and prev.dim == s.dim
            and prev.stop == s.start
        ):
            s = TensorSlice(s.tensor, s.dim, prev.start, s.stop)
            if s.start == 0 and s.stop == shapes[s.tensor][s.dim]:
                s = TensorSlice(s.tensor, None)
            out[-1] = s
        else:
            out.append(s)
    return out


def _slices_cover(outer: list[TensorSlice], inner: list[TensorSlice]) -> bool:
    return all(any(o.covers(i) for o in outer) for i in inner)

"""The search's items over a bundle: layers, modules and row blocks, and their prior."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence


@dataclass
class SearchUnits:
    """Maps the search's items (layers, modules, row blocks) to the bundle's components.

    The search works on plain strings: `L3` (every bundle component of layer 3), a bundle
    component such as `L3.mlp.gate`, or a row block `L3.mlp.gate[0:64]`. The oracle receives
    only bundle components and sub-blocks of them, which `Patch.restrict` understands.
    """

    components: list[str]
    arch: object
    block_size: int | None = None
    by_layer: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ddalign.architectures import Component

        for name in self.components:
            comp = Component.parse(name)
            key = f"L{comp.layer}" if comp.layer is not None else name
            self.by_layer.setdefault(key, []).append(name)

    def top(self, granularity: Sequence[str]) -> list[str]:
        """The first level's items."""
        if granularity[0] == "layer":
            return sorted(self.by_layer, key=natural_key)
        if granularity[0] == "module":
            return self.modules_of(sorted(self.components, key=natural_key))
        return self.blocks_of(self.modules_of(sorted(self.components, key=natural_key)))

    def children(self, item: str, level: str) -> list[str]:
        """Expand one kept item into the next level's items."""
        if level == "module":
            return self.modules_of(sorted(self.by_layer.get(item, [item]), key=natural_key))
        if level == "block":
            return self.blocks_of([item])
        raise ValueError(f"unknown level {level!r}")

    def modules_of(self, items: Sequence[str]) -> list[str]:
        """Stored modules: a grouped unit such as `L3.mlp` (scope mlp or all) splits into gate, up
        and down, so that the search can tell them apart (DAPA's finding is about gate_proj)."""
        out: list[str] = []
        for item in items:
            out.extend(str(c) for c in self.arch.expand(item, "module"))
        return out

    def blocks_of(self, items: Sequence[str]) -> list[str]:
        out: list[str] = []
        for item in items:
            if item in self.by_layer and item not in self.components:
                out.extend(self.blocks_of(self.by_layer[item]))
                continue
            blocks = [str(b) for b in self.arch.expand(item, "block", block_size=self.block_size)]
            out.extend(blocks or [item])
        return out

    def concrete(self, items: Sequence[str]) -> list[str]:
        """Items -> bundle components (or sub-blocks of them) for the oracle."""
        out: list[str] = []
        for item in items:
            if item in self.by_layer and item not in self.components:
                out.extend(self.by_layer[item])
            else:
                out.append(item)
        return sorted(out, key=natural_key)

    def prior(self, norms: dict[str, float]) -> Callable[[str], float]:
        """A search prior over items of any level from the bundle's per-component delta norms.

        A layer weighs the root of its components' summed squares; a row block its module's
        norm scaled by the root of its share of the rows (the norm spread evenly over rows); a
        member of a grouped component (L3.mlp.gate of L3.mlp) the group's norm by the root of its
        share of the parameters.
        """

        def weight(item: str) -> float:
            if item in self.by_layer and item not in self.components:
                return sum(weight(c) ** 2 for c in self.by_layer[item]) ** 0.5
            if item in norms:
                return float(norms[item])
            if "[" in item:
                from ddalign.architectures import Component

                comp = Component.parse(item)
                parent = str(comp.unblocked)
                parent_weight = weight(parent) if parent != item else 0.0
                rows = self.arch.extent(parent) or 0
                a, b = comp.block or (0, 0)
                return parent_weight * (((b - a) / rows) ** 0.5 if rows else 0.0)
            # a member of a grouped component (L3.mlp.gate of a stored L3.mlp): its share of the params
            parent = next((c for c in self.components if c != item and self.arch.covers(c, item)), None)
            if parent is not None:
                share = self.arch.param_count(item) / max(1, self.arch.param_count(parent))
                return float(norms.get(parent, 0.0)) * share**0.5
            return 0.0

        return weight

    def params(self, items: Sequence[str]) -> int:
        return sum(self.arch.param_count(c) for c in self.concrete(items))


def natural_key(name: str):
    """Sort key that orders L2 before L10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

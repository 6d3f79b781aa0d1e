"""Components <-> tensor slices, per model family, as data.

- `components`: component names (`L12.mlp.gate`, `L12.mlp.gate[0:256]`, `L3.mlp`, `L3`,
  `embed`), `TensorSlice`, the `--layers` / `--scope` syntax;
- `families`: the family tables (what transformers' `base_model_tp_plan` lacks) and the usual
  module names an unlisted family is recognised by;
- `layout`: each component's stored parts, from config and tensor shapes (the tp plan gives
  the split direction: "colwise" rows, "rowwise" columns);
- `infer`: an unlisted family's layout from its tensor names;
- `map`: `ArchitectureMap`, which resolves components, scopes and row blocks.
"""

from __future__ import annotations

from ddalign.architectures.components import (
    LAYERLESS,
    SCOPE_KEYWORDS,
    Component,
    TensorSlice,
    format_layers,
    parse_layers,
    parse_scope,
)
from ddalign.architectures.families import FAMILIES, LISTED_FAMILIES, Family, Fused
from ddalign.architectures.layout import _tp_plan  # noqa: F401  (tests read the tp plan through it)
from ddalign.architectures.map import ArchitectureMap

__all__ = [
    "Component",
    "TensorSlice",
    "ArchitectureMap",
    "parse_layers",
    "format_layers",
    "parse_scope",
    "SCOPE_KEYWORDS",
    "LAYERLESS",
    "LISTED_FAMILIES",
    "FAMILIES",
    "Family",
    "Fused",
]

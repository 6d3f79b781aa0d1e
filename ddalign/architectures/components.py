"""Component names and tensor slices: what a transfer moves, and where it lies in a checkpoint.

A *component* is the unit of transfer, named by a stable string (`L12.mlp.gate`,
`L12.mlp.gate[0:256]`, `L3.mlp`, `L3`, `embed`); a `TensorSlice` is a stored tensor, whole or
narrowed along one axis. Also here: the `--layers` and `--scope` syntax.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from ddalign.errors import DdalignError

# --------------------------------------------------------------------------------------------
# Component names

LAYERLESS = ("embed", "head", "norm.final")
SCOPE_KEYWORDS = ("mlp.gate", "mlp", "attn", "all")
# Display / sort order of modules inside a layer; unknown ("extra.*") modules sort after.
_MODULE_ORDER = (
    "",
    "attn",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.qkv",
    "attn.o",
    "mlp",
    "mlp.gate",
    "mlp.up",
    "mlp.down",
    "norm.in",
    "norm.post",
    "norm.pre_ffn",
    "norm.post_ffn",
)
_GROUPS = ("mlp", "attn")  # modules that stand for several stored modules
_NAME_RE = re.compile(
    r"^L(?P<layer>\d+)(?:\.(?P<module>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*))?"
    r"(?:\[(?P<a>\d+):(?P<b>\d+)\])?$"
)
_LAYERLESS_RE = re.compile(r"^(?P<module>embed|head|norm\.final)$")


@functools.total_ordering
@dataclass(frozen=True)
class Component:
    """One unit of transfer. `module == ""` is a whole layer; `layer is None` is embed/head/norm.final.

    Ordered as in the model: embed, L0 (its modules in _MODULE_ORDER, blocks by start), L1, ...,
    norm.final, head. (Hand-written ordering because `layer` may be None.)
    """

    layer: int | None
    module: str
    block: tuple[int, int] | None = None

    def __post_init__(self):
        if self.block is not None:
            a, b = self.block
            if not (0 <= a < b):
                raise DdalignError(f"component {self.name!r}: block [a:b] needs 0 <= a < b")
            if self.module == "" or self.layer is None:
                raise DdalignError(f"component {self.name!r}: blocks apply to a module, e.g. L3.mlp.gate[0:64]")
        if self.layer is None and self.module not in LAYERLESS:
            raise DdalignError(
                f"component {self.module!r}: a component without a layer must be one of {', '.join(LAYERLESS)}"
            )

    @property
    def name(self) -> str:
        if self.layer is None:
            return self.module
        text = f"L{self.layer}" + (f".{self.module}" if self.module else "")
        if self.block is not None:
            text += f"[{self.block[0]}:{self.block[1]}]"
        return text

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, text: "str | Component") -> "Component":
        if isinstance(text, Component):
            return text
        text = str(text).strip()
        m = _LAYERLESS_RE.match(text)
        if m:
            return cls(None, m["module"])
        m = _NAME_RE.match(text)
        if not m:
            raise DdalignError(
                f"component {text!r}: expected e.g. 'L12.mlp.gate', "
                "'L12.mlp.gate[0:256]', 'L12', 'embed', 'head' or 'norm.final'"
            )
        block = (int(m["a"]), int(m["b"])) if m["a"] is not None else None
        return cls(int(m["layer"]), m["module"] or "", block)

    @property
    def unblocked(self) -> "Component":
        """The module this block belongs to (itself when it is not a block)."""
        return replace(self, block=None) if self.block else self

    def _key(self):
        group = {"embed": 0, "norm.final": 2, "head": 3}.get(self.module, 1) if self.layer is None else 1
        rank = _MODULE_ORDER.index(self.module) if self.module in _MODULE_ORDER else len(_MODULE_ORDER)
        return (group, self.layer if self.layer is not None else -1, rank, self.module, self.block or (-1, -1))

    def __lt__(self, other: "Component") -> bool:
        if not isinstance(other, Component):
            return NotImplemented
        return self._key() < other._key()


@dataclass(frozen=True)
class TensorSlice:
    """A stored tensor, whole (`dim is None`) or narrowed along `dim` to [start, stop)."""

    tensor: str
    dim: int | None
    start: int = 0
    stop: int = 0

    def shape(self, full_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of this slice of a tensor whose stored shape is `full_shape`."""
        shape = list(full_shape)
        if self.dim is not None:
            shape[self.dim] = self.stop - self.start
        return tuple(shape)

    def numel(self, full_shape: Sequence[int]) -> int:
        return math.prod(self.shape(full_shape))

    def take(self, tensor):
        """The slice of `tensor` (a view for torch tensors; no copy)."""
        if self.dim is None:
            return tensor
        return tensor.narrow(self.dim, self.start, self.stop - self.start)

    def covers(self, other: "TensorSlice") -> bool:
        """True when every element of `other` lies inside this slice."""
        if self.tensor != other.tensor:
            return False
        if self.dim is None:
            return True
        return other.dim == self.dim and self.start <= other.start and other.stop <= self.stop

    def as_list(self) -> list:
        """[tensor, dim, start, stop], the manifest form."""
        return [self.tensor, self.dim, self.start, self.stop]

    @classmethod
    def from_list(cls, item: Sequence) -> "TensorSlice":
        tensor, dim, start, stop = item
        return cls(str(tensor), None if dim is None else int(dim), int(start), int(stop))


# --------------------------------------------------------------------------------------------
# Layers and scopes


def parse_layers(text: "str | range | Iterable[int] | None", num_layers: int | None = None) -> list[int] | None:
    """'8-20' / '8-12,15' / range / list -> sorted unique layer indices (None stays None).

    Ranges are inclusive at both ends, as a user writes them. With `num_layers`, every index
    must be < num_layers.
    """
    if text is None:
        return None
    if isinstance(text, str):
        layers: set[int] = set()
        if not text.strip():
            raise DdalignError("--layers: empty; expected e.g. '8-20' or '8-12,15'")
        for part in text.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
            if not m:
                raise DdalignError(f"--layers: {part!r} is not a layer or range; expected e.g. '8-20' or '8-12,15'")
            lo = int(m[1])
            hi = int(m[2]) if m[2] is not None else lo
            if hi < lo:
                raise DdalignError(f"--layers: range {part!r} ends before it starts")
            layers.update(range(lo, hi + 1))
        result = sorted(layers)
    else:
        result = sorted(set(int(i) for i in text))
        if any(i < 0 for i in result):
            raise DdalignError(f"--layers: negative layer index in {result}")
    if num_layers is not None and result and result[-1] >= num_layers:
        raise DdalignError(
            f"--layers: layer {result[-1]} does not exist; the model has {num_layers} layers (0-{num_layers - 1})"
        )
    return result


def format_layers(layers: Iterable[int] | None) -> str | None:
    """Inverse of parse_layers: [8, 9, 10, 15] -> '8-10,15'."""
    if layers is None:
        return None
    items = sorted(set(layers))
    parts: list[str] = []
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        parts.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(parts)


def parse_scope(scope: "str | Sequence[str] | None") -> list[str]:
    """'mlp' / 'L*.mlp.gate,L*.attn.o' / ['attn.o', 'L3.mlp'] -> list of scope items.

    An item is a keyword (mlp.gate, mlp, attn, all), a module name applied to every layer
    (mlp.up, attn.o, norm.in, ...), a component name (L3.mlp, L3.mlp.gate[0:16], embed), or
    an fnmatch pattern over module-level component names (L*.attn.o, L1?.mlp).
    """
    if scope is None:
        return ["mlp.gate"]
    items = scope.split(",") if isinstance(scope, str) else list(scope)
    items = [str(item).strip() for item in items if str(item).strip()]
    if not items:
        raise DdalignError(
            "--scope: empty; expected mlp.gate, mlp, attn, all, or component patterns such as 'L*.mlp.gate,L*.attn.o'"
        )
    return items

"""Components <-> tensor slices, per model family, as data.

A *component* is the unit of transfer, named by a stable string (`L12.mlp.gate`,
`L12.mlp.gate[0:256]`, `L3.mlp`, `L3`, `embed`). An `ArchitectureMap` turns components into
`TensorSlice`s of a checkpoint. It is built from the checkpoint's config and tensor shapes only:

- the split direction of each projection comes from transformers' `base_model_tp_plan`
  ("colwise": output features = rows of the stored weight; "rowwise": input features =
  columns), so a row block `[a:b]` is rows a:b of a colwise tensor and columns a:b of a
  rowwise one;
- the per-family tables below only say what the plan lacks: which module is which component,
  fused tensors (Phi-3 `qkv_proj` / `gate_up_proj`, GPT-2 `c_attn`), GPT-2 entirely
  (Conv1D stores weights transposed, and it has no plan);
- an unlisted family is inferred from tensor names (layer container = the most common
  `<stem>.<digit>.` prefix; modules by their usual leaf names), as mergekit does; when that
  fails the error lists what was found.

Scopes choose which module-level units a search works on (see `ArchitectureMap.components`).
Scope only matters for whole-layer components (`L3`), which resolve to the scope's modules.
"""
from __future__ import annotations

import bisect
import fnmatch
import functools
import itertools
import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

from ddalign.errors import DdalignError

__all__ = [
    "Component", "TensorSlice", "ArchitectureMap", "parse_layers", "format_layers",
    "parse_scope", "SCOPE_KEYWORDS", "LAYERLESS", "LISTED_FAMILIES",
]

# --------------------------------------------------------------------------------------------
# Component names

LAYERLESS = ("embed", "head", "norm.final")
SCOPE_KEYWORDS = ("mlp.gate", "mlp", "attn", "all")
# Display / sort order of modules inside a layer; unknown ("extra.*") modules sort after.
_MODULE_ORDER = ("", "attn", "attn.q", "attn.k", "attn.v", "attn.qkv", "attn.o", "mlp",
                 "mlp.gate", "mlp.up", "mlp.down", "norm.in", "norm.post", "norm.pre_ffn",
                 "norm.post_ffn")
_GROUPS = ("mlp", "attn")  # modules that stand for several stored modules
_NAME_RE = re.compile(
    r"^L(?P<layer>\d+)(?:\.(?P<module>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*))?"
    r"(?:\[(?P<a>\d+):(?P<b>\d+)\])?$")
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
                raise DdalignError(f"component {self.name!r}: blocks apply to a module, "
                                   "e.g. L3.mlp.gate[0:64]")
        if self.layer is None and self.module not in LAYERLESS:
            raise DdalignError(f"component {self.module!r}: a component without a layer must be "
                               f"one of {', '.join(LAYERLESS)}")

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
            raise DdalignError(f"component {text!r}: expected e.g. 'L12.mlp.gate', "
                               "'L12.mlp.gate[0:256]', 'L12', 'embed', 'head' or 'norm.final'")
        block = (int(m["a"]), int(m["b"])) if m["a"] is not None else None
        return cls(int(m["layer"]), m["module"] or "", block)

    @property
    def unblocked(self) -> "Component":
        """The module this block belongs to (itself when it is not a block)."""
        return replace(self, block=None) if self.block else self

    def _key(self):
        group = {"embed": 0, "norm.final": 2, "head": 3}.get(self.module, 1) \
            if self.layer is None else 1
        rank = _MODULE_ORDER.index(self.module) if self.module in _MODULE_ORDER \
            else len(_MODULE_ORDER)
        return (group, self.layer if self.layer is not None else -1, rank, self.module,
                self.block or (-1, -1))

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

def parse_layers(text: "str | range | Iterable[int] | None",
                 num_layers: int | None = None) -> list[int] | None:
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
                raise DdalignError(f"--layers: {part!r} is not a layer or range; "
                                   "expected e.g. '8-20' or '8-12,15'")
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
        raise DdalignError(f"--layers: layer {result[-1]} does not exist; the model has "
                           f"{num_layers} layers (0-{num_layers - 1})")
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
        raise DdalignError("--scope: empty; expected mlp.gate, mlp, attn, all, "
                           "or component patterns such as 'L*.mlp.gate,L*.attn.o'")
    return items


# --------------------------------------------------------------------------------------------
# Family tables (data): component module -> module path inside a layer

@dataclass(frozen=True)
class Fused:
    """A module stored as part `index` of a fused tensor; `kind` says how the parts split."""
    path: str
    kind: str      # "qkv": (heads*hd, kv*hd, kv*hd); "thirds"; "halves"
    index: int


@dataclass(frozen=True)
class Family:
    modules: dict                                   # component module -> path | Fused
    layers: str = "layers"                          # layer container under the base prefix
    embed: tuple[str, ...] = ("embed_tokens",)
    norm_final: str = "norm"
    head: str = "lm_head"
    conv1d: bool = False                            # weights stored (in, out), as GPT-2's Conv1D
    split: dict = field(default_factory=dict)       # path -> colwise/rowwise, where no tp plan


_LLAMA_MODULES = {
    "attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj", "attn.v": "self_attn.v_proj",
    "attn.o": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj",
    "mlp.down": "mlp.down_proj", "norm.in": "input_layernorm",
    "norm.post": "post_attention_layernorm",
}
FAMILIES: dict[str, Family] = {
    "llama": Family(_LLAMA_MODULES),
    "mistral": Family(_LLAMA_MODULES),
    "qwen2": Family(_LLAMA_MODULES),
    "gemma": Family(_LLAMA_MODULES),
    "gemma2": Family({**_LLAMA_MODULES, "norm.pre_ffn": "pre_feedforward_layernorm",
                      "norm.post_ffn": "post_feedforward_layernorm"}),
    "phi3": Family({
        "attn.q": Fused("self_attn.qkv_proj", "qkv", 0),
        "attn.k": Fused("self_attn.qkv_proj", "qkv", 1),
        "attn.v": Fused("self_attn.qkv_proj", "qkv", 2),
        "attn.o": "self_attn.o_proj",
        "mlp.gate": Fused("mlp.gate_up_proj", "halves", 0),
        "mlp.up": Fused("mlp.gate_up_proj", "halves", 1),
        "mlp.down": "mlp.down_proj",
        "norm.in": "input_layernorm", "norm.post": "post_attention_layernorm"}),
    "gpt2": Family({
        "attn.q": Fused("attn.c_attn", "thirds", 0),
        "attn.k": Fused("attn.c_attn", "thirds", 1),
        "attn.v": Fused("attn.c_attn", "thirds", 2),
        "attn.o": "attn.c_proj", "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj",
        "norm.in": "ln_1", "norm.post": "ln_2"},
        layers="h", embed=("wte", "wpe"), norm_final="ln_f", conv1d=True,
        split={"attn.c_attn": "colwise", "attn.c_proj": "rowwise", "mlp.c_fc": "colwise",
               "mlp.c_proj": "rowwise"}),
    # query_key_value is interleaved per head ([heads, 3, head_dim]): q/k/v are not
    # contiguous, so it is one module.
    "gpt_neox": Family({
        "attn.qkv": "attention.query_key_value", "attn.o": "attention.dense",
        "mlp.up": "mlp.dense_h_to_4h", "mlp.down": "mlp.dense_4h_to_h",
        "norm.in": "input_layernorm", "norm.post": "post_attention_layernorm"},
        embed=("embed_in",), norm_final="final_layer_norm", head="embed_out"),
}
LISTED_FAMILIES = tuple(FAMILIES)

# Inference for unlisted families: usual leaf names of layer modules.
_LEAF_ALIASES = {
    "q_proj": "attn.q", "k_proj": "attn.k", "v_proj": "attn.v", "o_proj": "attn.o",
    "out_proj": "attn.o", "qkv_proj": "attn.qkv", "query_key_value": "attn.qkv",
    "c_attn": "attn.qkv", "Wqkv": "attn.qkv", "wqkv": "attn.qkv",
    "gate_proj": "mlp.gate", "up_proj": "mlp.up", "down_proj": "mlp.down",
    "w1": "mlp.gate", "w3": "mlp.up", "w2": "mlp.down", "fc1": "mlp.up", "fc2": "mlp.down",
    "c_fc": "mlp.up", "dense_h_to_4h": "mlp.up", "dense_4h_to_h": "mlp.down",
    "input_layernorm": "norm.in", "ln_1": "norm.in", "attention_norm": "norm.in",
    "post_attention_layernorm": "norm.post", "ln_2": "norm.post", "ffn_norm": "norm.post",
}
_CONTEXT_LEAVES = ("c_proj", "dense", "wo")   # attn.o under attention, mlp.down under an MLP
_MLP_PARENTS = ("mlp", "ffn", "feed_forward", "feedforward")
_EMBED_NAMES = ("embed_tokens", "wte", "wpe", "embed_in", "word_embeddings", "tok_embeddings")
_NORM_FINAL_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")
_HEAD_NAMES = ("lm_head", "embed_out", "output")
_BUFFER_SUFFIXES = ("inv_freq", "masked_bias", "attn.bias", "_float_tensor")
_COLWISE_BY_DEFAULT = ("attn.q", "attn.k", "attn.v", "attn.qkv", "mlp.gate", "mlp.up")
_ROWWISE_BY_DEFAULT = ("attn.o", "mlp.down")


@dataclass(frozen=True)
class _Part:
    """One stored tensor's share of a module: rows of the module lie along `axis`."""
    tensor: str
    axis: int | None       # None: not split by blocks (norm weights, a rowwise layer's bias)
    offset: int = 0        # where the module starts along axis (fused tensors)
    length: int = 0        # the module's extent along axis
    size: int = 0          # the stored size along axis

    def whole(self) -> TensorSlice:
        if self.axis is None or (self.offset == 0 and self.length == self.size):
            return TensorSlice(self.tensor, None)
        return TensorSlice(self.tensor, self.axis, self.offset, self.offset + self.length)

    def rows(self, a: int, b: int) -> TensorSlice:
        return TensorSlice(self.tensor, self.axis, self.offset + a, self.offset + b)


def _split_kind(value: str | None) -> str | None:
    """tp-plan style ('colwise', 'colwise_gather_output', 'rowwise_split_input', ...) -> kind."""
    if not value:
        return None
    if "colwise" in value:
        return "colwise"
    if "rowwise" in value:
        return "rowwise"
    return None


def _config_object(config: dict):
    """The transformers config object for `config` (for defaults and the tp plan), or None."""
    model_type = config.get("model_type")
    if not model_type:
        return None
    try:
        from transformers import AutoConfig

        kwargs = {k: v for k, v in config.items() if k != "model_type"}
        return AutoConfig.for_model(model_type, **kwargs)
    except Exception:  # unknown model_type or a config transformers rejects: go by the dict
        return None


def _tp_plan(config_obj) -> dict[str, str]:
    """Module path inside a layer -> 'colwise' | 'rowwise', from base_model_tp_plan."""
    plan = getattr(config_obj, "base_model_tp_plan", None) or {}
    out: dict[str, str] = {}
    for key, value in plan.items():
        m = re.match(r"^[\w.]*?\.\*\.(.+)$", key)
        kind = _split_kind(value if isinstance(value, str) else None)
        if m and kind:
            out[m[1]] = kind
    return out


def _layer_container(names: Iterable[str]) -> tuple[str | None, dict[int, dict[str, str]]]:
    """Most common '<stem>.<i>.' prefix: (stem, {i: {rest: full name}})."""
    stems: Counter = Counter()
    split: list[tuple[str, int, str, str]] = []
    for name in names:
        parts = name.split(".")
        for j in range(1, len(parts) - 1):
            if parts[j].isdigit():
                stem = ".".join(parts[:j])
                stems[stem] += 1
                split.append((stem, int(parts[j]), ".".join(parts[j + 1:]), name))
                break
    if not stems:
        return None, {}
    stem = stems.most_common(1)[0][0]
    layers: dict[int, dict[str, str]] = {}
    for s, i, rest, name in split:
        if s == stem:
            layers.setdefault(i, {})[rest] = name
    return stem, layers


def _describe(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# --------------------------------------------------------------------------------------------
# The map

class ArchitectureMap:
    """Component <-> tensor slices for one checkpoint layout.

    Attributes: family (config model_type, or "unknown"), inferred (True when the layout was
    read from tensor names rather than a family table), num_layers, ffn_size, tied (head tied
    to the embeddings), scope (the default scope, see `with_scope`), unmapped (stored tensors
    no component covers: buffers, unknown layer-less tensors).
    """

    def __init__(self, family: str, shapes: dict[str, tuple[int, ...]],
                 layers: list[dict[str, list[_Part]]], layerless: dict[str, list[_Part]],
                 *, inferred: bool, tied: bool, scope: "str | Sequence[str]" = "mlp.gate"):
        self.family = family
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self._layers = layers
        self._layerless = layerless
        self.inferred = inferred
        self.tied = tied
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
        tied = bool(getattr(config_obj, "tie_word_embeddings",
                            config.get("tie_word_embeddings", False)))
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
        return ArchitectureMap(self.family, self.shapes, self._layers, self._layerless,
                               inferred=self.inferred, tied=self.tied, scope=scope)

    def describe(self) -> dict:
        """Summary for manifests: family, num_layers, ffn_size, tied, inferred, modules."""
        modules = sorted({m for mods in self._layers for m in mods},
                         key=lambda m: Component(0, m)._key())
        return {"family": self.family, "num_layers": self.num_layers,
                "ffn_size": self.ffn_size, "tied": self.tied, "inferred": self.inferred,
                "modules": modules, "layerless": sorted(self._layerless)}

    def __repr__(self) -> str:
        return (f"ArchitectureMap(family={self.family!r}, num_layers={self.num_layers}, "
                f"ffn_size={self.ffn_size}, inferred={self.inferred})")

    # ---- modules -----------------------------------------------------------------------

    def modules(self, layer: int) -> list[str]:
        """Stored (atomic) modules of a layer, in model order."""
        self._check_layer(layer)
        return sorted(self._layers[layer], key=lambda m: Component(0, m)._key())

    def _group_members(self, layer: int, group: str) -> list[str]:
        return [m for m in self.modules(layer) if m.startswith(group + ".")]

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise DdalignError(f"layer {layer} does not exist: {self.family} map has "
                               f"{self.num_layers} layers (0-{self.num_layers - 1})")

    def _parts(self, component: Component) -> list[_Part]:
        """Stored parts of a module-level component (group -> its members' parts)."""
        if component.layer is None:
            if component.module not in self._layerless:
                raise DdalignError(f"component {component.module!r} does not exist in this "
                                   f"{self.family} checkpoint"
                                   + (" (head is tied to the embeddings)"
                                      if component.module == "head" else ""))
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
        raise DdalignError(f"component {component.name!r}: layer {component.layer} of this "
                           f"{self.family} checkpoint has no module {component.module!r}; "
                           f"it has {', '.join(self.modules(component.layer))}")

    def extent(self, component: "Component | str") -> int | None:
        """Number of rows a module has for row blocks (FFN neurons, output features), or None."""
        component = Component.parse(component).unblocked
        lengths = {p.length for p in self._parts(component) if p.axis is not None}
        if not lengths:
            return None
        if len(lengths) > 1:
            raise DdalignError(f"component {component.name!r}: its tensors disagree on the "
                               f"row count ({sorted(lengths)}); blocks are not defined")
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
            if item in SCOPE_KEYWORDS or any(c in item for c in "*?") or \
                    re.fullmatch(r"[a-z_]+(\.[A-Za-z0-9_]+)*", item):
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

    def components(self, scope: "str | Sequence[str] | None" = None,
                   layers: "str | range | Iterable[int] | None" = None, *,
                   granularity: str = "module",
                   block_size: int | None = None) -> list[Component]:
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
            if item in SCOPE_KEYWORDS or (re.fullmatch(r"[a-z_]+(\.[A-Za-z0-9_]+)*", item)
                                          and item not in LAYERLESS):
                found = [c for i in layer_list for c in self._keyword(item, i)]
                if item == "all" and selected_layers is None:
                    found += [Component(None, m) for m in self._layerless]
                if not found:
                    raise DdalignError(f"scope {item!r}: no such module in this "
                                       f"{self.family} checkpoint; its layers have "
                                       f"{', '.join(self.modules(0)) if self.num_layers else 'nothing'}")
                chosen.update(found)
            elif any(c in item for c in "*?") or not _is_component_name(item):
                universe = universe if universe is not None else self._universe(layer_list)
                found = [c for c in universe if fnmatch.fnmatchcase(c.name, item)]
                if selected_layers is not None:
                    found = [c for c in found if c.layer is not None]
                if not found:
                    raise DdalignError(f"scope pattern {item!r} matches no component; "
                                       f"components look like {_describe([c.name for c in universe][:6])}")
                chosen.update(found)
            else:
                comp = Component.parse(item)
                if comp.layer is not None and comp.module == "":   # "L3": all of layer 3
                    self._check_layer(comp.layer)
                    found = self._keyword("all", comp.layer)
                else:
                    self.resolve(comp)  # must exist
                    found = [comp]
                chosen.update(c for c in found
                              if selected_layers is None or c.layer in selected_layers)
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
                return any(o != c and _related(o, c) and _slices_cover(slices[o], own) and
                           not (c in slices and _slices_cover(own, slices[o]) and c < o)
                           for o in wholes)

            keep.extend(c for c in wholes if not inside_a_whole(c, slices[c]))
            # blocks: inside a whole unit, or inside a block of the same module or of the
            # whole-FFN group (L3.mlp[0:32] holds L3.mlp.gate[8:16]): an interval sweep
            blocks = sorted((c for c in group if c.block is not None),
                            key=lambda c: (c.block[0], -c.block[1]))
            reach: dict[str, int] = {}          # module -> furthest block end seen so far
            mlp_starts = [c.block[0] for c in blocks if c.module == "mlp"]
            mlp_reach = list(itertools.accumulate((c.block[1] for c in blocks
                                                   if c.module == "mlp"), max))
            for c in blocks:
                a, b = c.block
                covered = reach.get(c.module, -1) >= b
                reach[c.module] = max(reach.get(c.module, -1), b)
                if not covered and c.module.startswith("mlp."):
                    n = bisect.bisect_right(mlp_starts, a)   # mlp blocks starting at or before a
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
            return _merge([s for c in self.in_scope_modules(component.layer, scope)
                           for s in self.resolve(c)], self.shapes)
        parts = self._parts(component.unblocked)
        if component.block is None:
            return _merge([p.whole() for p in parts], self.shapes)
        a, b = component.block
        size = self.extent(component)
        if size is None:
            raise DdalignError(f"component {component.name!r}: {component.unblocked.name} has "
                               "no rows to split into blocks")
        if b > size:
            raise DdalignError(f"component {component.name!r}: block end {b} is past the "
                               f"module's {size} rows")
        return [p.rows(a, b) for p in parts if p.axis is not None]

    def expand(self, component: "Component | str", granularity: str,
               block_size: int | None = None, scope=None) -> list[Component]:
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
            if component.layer is not None and component.block is None and \
                    component.module in _GROUPS and \
                    component.module not in self._layers[component.layer]:
                self._parts(component)  # raises when the layer or the group is missing
                members = self._group_members(component.layer, component.module)
                if component.module == "mlp":
                    members = [m for m in members if m in ("mlp.gate", "mlp.up", "mlp.down")]
                return [Component(component.layer, m) for m in members]
            return [component]
        if granularity != "block":
            raise DdalignError(f"granularity {granularity!r}: expected module or block")
        if component.layer is not None and component.module == "":
            return [b for c in self.in_scope_modules(component.layer, scope)
                    for b in self.expand(c, "block", block_size)]
        if component.layer is None:
            return [component]
        if component.module == "attn" and component.block is None and \
                "attn" not in self._layers[component.layer]:
            # q, k, v, o have different row counts: the group splits into its members' blocks
            return [b for c in self.expand(component, "module")
                    for b in self.expand(c, "block", block_size)]
        size = self.extent(component)
        if size is None:
            return [component]
        lo, hi = component.block or (0, size)
        if block_size is None:
            block_size = max(1, -(-(hi - lo) // 8))
        if block_size < 1:
            raise DdalignError(f"block size {block_size}: expected a positive number of rows")
        base = component.unblocked
        return [replace(base, block=(a, min(a + block_size, hi)))
                for a in range(lo, hi, block_size)]

    def param_count(self, component: "Component | str", scope=None) -> int:
        """Number of parameters a component moves."""
        return sum(s.numel(self.shapes[s.tensor]) for s in self.resolve(component, scope))

    def total_params(self) -> int:
        """Parameters stored in the checkpoint (a tied head counts once)."""
        return sum(math.prod(shape) for shape in self.shapes.values())

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
        if prev is not None and prev.tensor == s.tensor and prev.dim is not None \
                and prev.dim == s.dim and prev.stop == s.start:
            s = TensorSlice(s.tensor, s.dim, prev.start, s.stop)
            if s.start == 0 and s.stop == shapes[s.tensor][s.dim]:
                s = TensorSlice(s.tensor, None)
            out[-1] = s
        else:
            out.append(s)
    return out


def _slices_cover(outer: list[TensorSlice], inner: list[TensorSlice]) -> bool:
    return all(any(o.covers(i) for o in outer) for i in inner)


# --------------------------------------------------------------------------------------------
# Building the parts

@dataclass
class _Dims:
    hidden: int | None
    heads: int | None
    kv_heads: int | None
    head_dim: int | None


def _dims(config: dict, config_obj) -> _Dims:
    def get(*keys):
        for key in keys:
            value = getattr(config_obj, key, None) if config_obj is not None else None
            if value is None:
                value = config.get(key)
            if value is not None:
                return value
        return None

    hidden = get("hidden_size", "n_embd", "d_model")
    heads = get("num_attention_heads", "n_head")
    kv = get("num_key_value_heads") or heads
    head_dim = get("head_dim")
    if head_dim is None and hidden and heads:
        head_dim = hidden // heads
    return _Dims(hidden, heads, kv, head_dim)


def _fused_parts(spec: Fused, size: int, dims: _Dims, tensor: str) -> tuple[int, int]:
    """(offset, length) of part `spec.index` in a fused tensor whose split axis has `size`."""
    if spec.kind == "halves":
        sizes = [size // 2, size // 2]
    elif spec.kind == "thirds":
        sizes = [size // 3] * 3
    elif spec.kind == "qkv":
        if not (dims.heads and dims.kv_heads and dims.head_dim):
            raise DdalignError(f"tensor {tensor}: fused q/k/v needs num_attention_heads, "
                               "num_key_value_heads and hidden_size in config.json")
        sizes = [dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim,
                 dims.kv_heads * dims.head_dim]
    else:  # pragma: no cover - table error
        raise ValueError(spec.kind)
    if sum(sizes) != size:
        raise DdalignError(f"tensor {tensor}: fused size {size} does not split as {spec.kind} "
                           f"({'+'.join(map(str, sizes))}); config and weights disagree")
    return sum(sizes[:spec.index]), sizes[spec.index]


def _module_parts(prefix: str, split: str | None, shapes: dict, *, conv1d: bool,
                  fused: Fused | None, dims: _Dims) -> list[_Part]:
    """Parts of the module stored at `prefix` (.weight, .bias), split as tp plan kind `split`."""
    parts: list[_Part] = []
    for suffix in ("weight", "bias"):
        name = f"{prefix}.{suffix}"
        if name not in shapes:
            continue
        shape = tuple(shapes[name])
        if split is None or not shape:
            axis = None
        elif suffix == "bias" or len(shape) == 1:
            axis = 0 if split == "colwise" else None   # a rowwise bias is per output: unsplit
        else:
            rows_axis = 1 if conv1d else 0             # output features
            axis = rows_axis if split == "colwise" else 1 - rows_axis
        if axis is None:
            if fused is not None:
                raise DdalignError(f"tensor {name}: fused module without a split axis")
            parts.append(_Part(name, None))
            continue
        size = shape[axis]
        offset, length = (0, size) if fused is None else _fused_parts(fused, size, dims, name)
        parts.append(_Part(name, axis, offset, length, size))
    return parts


def _split_of(module: str, path: str, plan: dict[str, str], family_split: dict) -> str | None:
    if path in family_split:
        return family_split[path]
    if path in plan:
        return plan[path]
    if module in _COLWISE_BY_DEFAULT:
        return "colwise"
    if module in _ROWWISE_BY_DEFAULT:
        return "rowwise"
    return None


def _layerless_parts(stem: str, shapes: dict, *, embed: Sequence[str], norm_final: Sequence[str],
                     head: Sequence[str], tied: bool, layer_names: set[str]
                     ) -> dict[str, list[_Part]]:
    base = stem.rsplit(".", 1)[0] + "." if "." in stem else ""
    out: dict[str, list[_Part]] = {}

    def find(paths: Sequence[str], bases: Sequence[str], first_only: bool) -> list[_Part]:
        found: list[_Part] = []
        for path in paths:
            for b in bases:
                names = [f"{b}{path}.{s}" for s in ("weight", "bias")]
                hits = [_Part(n, None) for n in names if n in shapes and n not in layer_names]
                if hits:
                    found.extend(hits)
                    break
            if found and first_only:
                break
        return found

    embed_parts = find(embed, (base, ""), first_only=False)
    if embed_parts:
        out["embed"] = embed_parts
    norm_parts = find(norm_final, (base, ""), first_only=True)
    if norm_parts:
        out["norm.final"] = norm_parts
    if not tied:
        head_parts = find(head, ("", base), first_only=True)
        if head_parts:
            out["head"] = head_parts
    return out


def _build_listed(model_type: str, family: Family, shapes: dict, plan: dict, dims: _Dims,
                  tied: bool):
    """Layers' parts from a family table, or None when its tensor names are not there."""
    stem, layer_names = _layer_container(shapes)
    if stem is None or stem.rsplit(".", 1)[-1] != family.layers:
        return None
    layers = _collect_layers(stem, layer_names, shapes, dims,
                             lambda rest_paths: {m: (spec, spec.path if isinstance(spec, Fused)
                                                     else spec)
                                                 for m, spec in family.modules.items()},
                             plan, family.split, family.conv1d)
    if not any(layers):
        return None
    all_layer_names = {n for d in layer_names.values() for n in d.values()}
    layerless = _layerless_parts(stem, shapes, embed=family.embed, norm_final=(family.norm_final,),
                                 head=(family.head,), tied=tied, layer_names=all_layer_names)
    return layers, layerless


def _collect_layers(stem, layer_names, shapes, dims, table_for, plan, family_split, conv1d):
    if not layer_names:
        return []
    n = max(layer_names) + 1
    missing = [i for i in range(n) if i not in layer_names]
    if missing:
        raise DdalignError(f"checkpoint layers under {stem!r} are not contiguous: layers "
                           f"{format_layers(missing)} have no tensors")
    layers: list[dict[str, list[_Part]]] = []
    for i in range(n):
        rest = layer_names[i]
        module_paths = {r.rsplit(".", 1)[0] for r in rest}
        table = table_for(module_paths)
        mods: dict[str, list[_Part]] = {}
        for module, (spec, path) in table.items():
            if path not in module_paths:
                continue
            fused = spec if isinstance(spec, Fused) else None
            split = _split_of(module, path, plan, family_split)
            parts = _module_parts(f"{stem}.{i}.{path}", split, shapes, conv1d=conv1d,
                                  fused=fused, dims=dims)
            if parts:
                mods[module] = parts
        layers.append(mods)
    return layers


def _infer_table(module_paths: set[str]) -> dict[str, tuple]:
    """Module paths of one layer -> {component module: (spec, path)} by usual leaf names."""
    table: dict[str, tuple] = {}
    extras: dict[str, tuple] = {}
    for path in sorted(module_paths):
        if path.endswith(_BUFFER_SUFFIXES) or path == "":
            continue
        pieces = path.split(".")
        if any(p.isdigit() for p in pieces):   # experts.0.w1 etc.: not the layer's own MLP
            extras["extra." + path] = (path, path)
            continue
        leaf, parent = pieces[-1], ".".join(pieces[:-1])
        if leaf == "gate_up_proj":
            for idx, module in enumerate(("mlp.gate", "mlp.up")):
                table.setdefault(module, (Fused(path, "halves", idx), path))
            continue
        module = _LEAF_ALIASES.get(leaf)
        if module is None and leaf in _CONTEXT_LEAVES:
            module = "mlp.down" if any(p in parent for p in _MLP_PARENTS) else "attn.o"
        if module is not None and module not in table:
            table[module] = (path, path)
        else:
            extras["extra." + path] = (path, path)
    table.update(extras)
    return table


def _build_inferred(model_type: str, shapes: dict, plan: dict, dims: _Dims, tied: bool):
    names = sorted(shapes)
    stem, layer_names = _layer_container(names)
    if stem is None:
        raise DdalignError(f"cannot infer the layout of model_type {model_type!r}: no tensor "
                           f"name has a layer index (e.g. 'model.layers.0.mlp.gate_proj.weight'); "
                           f"found: {_describe(names)}")
    first = layer_names[min(layer_names)]
    paths = {r.rsplit(".", 1)[0] for r in first}
    table = _infer_table(paths)
    if not any(m in table for m in ("mlp.gate", "mlp.up", "mlp.down")):
        raise DdalignError(f"cannot infer the layout of model_type {model_type!r}: layer "
                           f"{min(layer_names)} under {stem!r} has modules "
                           f"{_describe(sorted(paths))}; none is a known MLP projection "
                           "(gate_proj/up_proj/down_proj, w1/w2/w3, fc1/fc2, c_fc/c_proj, "
                           "dense_h_to_4h/dense_4h_to_h)")
    conv1d = _looks_conv1d(stem, first, table, shapes, dims)
    layers = _collect_layers(stem, layer_names, shapes, dims,
                             lambda module_paths: _infer_table(module_paths), plan, {}, conv1d)
    all_layer_names = {n for d in layer_names.values() for n in d.values()}
    layerless = _layerless_parts(stem, shapes, embed=_EMBED_NAMES, norm_final=_NORM_FINAL_NAMES,
                                 head=_HEAD_NAMES, tied=tied, layer_names=all_layer_names)
    return layers, layerless


def _looks_conv1d(stem: str, first_layer: dict, table: dict, shapes: dict, dims: _Dims) -> bool:
    """True when projection weights are stored (in, out), as GPT-2's Conv1D.

    Told by the up/gate projection of the first layer: its bias has the output size, so a bias
    matching the weight's columns means (in, out); without a bias, a weight whose rows equal
    the hidden size (config, else the layer's norm size) is stored (in, out).
    """
    hidden = dims.hidden
    if not hidden:
        sizes = Counter(shapes[n][0] for n in first_layer.values() if len(shapes[n]) == 1)
        hidden = sizes.most_common(1)[0][0] if sizes else None
    for module in ("mlp.up", "mlp.gate"):
        if module not in table:
            continue
        path = table[module][1]
        weight, bias = first_layer.get(f"{path}.weight"), first_layer.get(f"{path}.bias")
        if weight is None or len(shapes[weight]) != 2:
            continue
        rows, cols = shapes[weight]
        if bias is not None and rows != cols:
            return shapes[bias][0] == cols
        return hidden is not None and rows == hidden and cols != hidden
    return False

"""Building a checkpoint's layout: each component's stored parts, from the config and tensor shapes.

A part is one stored tensor's share of a module, with the axis its rows (output features, FFN
neurons) lie along. The split direction comes from transformers' `base_model_tp_plan`, then a
family table's own `split`, then the usual direction of the module (`families.py`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from ddalign.architectures.components import TensorSlice, format_layers
from ddalign.architectures.families import _COLWISE_BY_DEFAULT, _ROWWISE_BY_DEFAULT, Family, Fused
from ddalign.errors import DdalignError


@dataclass(frozen=True)
class _Part:
    """One stored tensor's share of a module: rows of the module lie along `axis`."""

    tensor: str
    axis: int | None  # None: not split by blocks (norm weights, a rowwise layer's bias)
    offset: int = 0  # where the module starts along axis (fused tensors)
    length: int = 0  # the module's extent along axis
    size: int = 0  # the stored size along axis
    tied_to: str | None = None  # a stored copy of this tensor (a tied head saved anyway): one parameter

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
                split.append((stem, int(parts[j]), ".".join(parts[j + 1 :]), name))
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
            raise DdalignError(
                f"tensor {tensor}: fused q/k/v needs num_attention_heads, "
                "num_key_value_heads and hidden_size in config.json"
            )
        sizes = [dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim, dims.kv_heads * dims.head_dim]
    else:  # pragma: no cover - table error
        raise ValueError(spec.kind)
    if sum(sizes) != size:
        raise DdalignError(
            f"tensor {tensor}: fused size {size} does not split as {spec.kind} "
            f"({'+'.join(map(str, sizes))}); config and weights disagree"
        )
    return sum(sizes[: spec.index]), sizes[spec.index]


def _module_parts(
    prefix: str, split: str | None, shapes: dict, *, conv1d: bool, fused: Fused | None, dims: _Dims
) -> list[_Part]:
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
            axis = 0 if split == "colwise" else None  # a rowwise bias is per output: unsplit
        else:
            rows_axis = 1 if conv1d else 0  # output features
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


def _layerless_parts(
    stem: str,
    shapes: dict,
    *,
    embed: Sequence[str],
    norm_final: Sequence[str],
    head: Sequence[str],
    tied: bool,
    layer_names: set[str],
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
    head_parts = find(head, ("", base), first_only=True)
    if not tied:
        if head_parts:
            out["head"] = head_parts
        return out
    # Tied: the output layer is the embedding. Most tied checkpoints do not store it; one that
    # does holds the same tensor twice, and the copy moves with the embedding (one component),
    # so the two never disagree. A head bias is not tied and stays the component head.
    weight = next((p.tensor for p in embed_parts if p.tensor.endswith(".weight")), None)
    for part in head_parts:
        if (
            weight is not None
            and part.tensor.endswith(".weight")
            and tuple(shapes[part.tensor]) == tuple(shapes[weight])
        ):
            out["embed"].append(_Part(part.tensor, None, tied_to=weight))
        else:
            out.setdefault("head", []).append(part)
    return out


def _build_listed(model_type: str, family: Family, shapes: dict, plan: dict, dims: _Dims, tied: bool):
    """Layers' parts from a family table, or None when its tensor names are not there."""
    stem, layer_names = _layer_container(shapes)
    if stem is None or stem.rsplit(".", 1)[-1] != family.layers:
        return None
    layers = _collect_layers(
        stem,
        layer_names,
        shapes,
        dims,
        lambda rest_paths: {
            m: (spec, spec.path if isinstance(spec, Fused) else spec) for m, spec in family.modules.items()
        },
        plan,
        family.split,
        family.conv1d,
    )
    if not any(layers):
        return None
    all_layer_names = {n for d in layer_names.values() for n in d.values()}
    layerless = _layerless_parts(
        stem,
        shapes,
        embed=family.embed,
        norm_final=(family.norm_final,),
        head=(family.head,),
        tied=tied,
        layer_names=all_layer_names,
    )
    return layers, layerless


def _collect_layers(stem, layer_names, shapes, dims, table_for, plan, family_split, conv1d):
    if not layer_names:
        return []
    n = max(layer_names) + 1
    missing = [i for i in range(n) if i not in layer_names]
    if missing:
        raise DdalignError(
            f"checkpoint layers under {stem!r} are not contiguous: layers {format_layers(missing)} have no tensors"
        )
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
            parts = _module_parts(f"{stem}.{i}.{path}", split, shapes, conv1d=conv1d, fused=fused, dims=dims)
            if parts:
                mods[module] = parts
        layers.append(mods)
    return layers

"""An unlisted family's layout, inferred from tensor names (as mergekit does).

The layer container is the most common `<stem>.<digit>.` prefix; modules are recognised by
their usual leaf names (`families.py`); when no MLP projection is found, the error lists what
was found.
"""

from __future__ import annotations

from collections import Counter

from ddalign.architectures.families import (
    _BUFFER_SUFFIXES,
    _CONTEXT_LEAVES,
    _EMBED_NAMES,
    _HEAD_NAMES,
    _LEAF_ALIASES,
    _MLP_PARENTS,
    _NORM_FINAL_NAMES,
    Fused,
)
from ddalign.architectures.layout import _collect_layers, _describe, _Dims, _layer_container, _layerless_parts
from ddalign.errors import DdalignError


def _infer_table(module_paths: set[str]) -> dict[str, tuple]:
    """Module paths of one layer -> {component module: (spec, path)} by usual leaf names."""
    table: dict[str, tuple] = {}
    extras: dict[str, tuple] = {}
    for path in sorted(module_paths):
        if path.endswith(_BUFFER_SUFFIXES) or path == "":
            continue
        pieces = path.split(".")
        if any(p.isdigit() for p in pieces):  # experts.0.w1 etc.: not the layer's own MLP
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
        raise DdalignError(
            f"cannot infer the layout of model_type {model_type!r}: no tensor "
            f"name has a layer index (e.g. 'model.layers.0.mlp.gate_proj.weight'); "
            f"found: {_describe(names)}"
        )
    first = layer_names[min(layer_names)]
    paths = {r.rsplit(".", 1)[0] for r in first}
    table = _infer_table(paths)
    if not any(m in table for m in ("mlp.gate", "mlp.up", "mlp.down")):
        raise DdalignError(
            f"cannot infer the layout of model_type {model_type!r}: layer "
            f"{min(layer_names)} under {stem!r} has modules "
            f"{_describe(sorted(paths))}; none is a known MLP projection "
            "(gate_proj/up_proj/down_proj, w1/w2/w3, fc1/fc2, c_fc/c_proj, "
            "dense_h_to_4h/dense_4h_to_h)"
        )
    conv1d = _looks_conv1d(stem, first, table, shapes, dims)
    layers = _collect_layers(
        stem, layer_names, shapes, dims, lambda module_paths: _infer_table(module_paths), plan, {}, conv1d
    )
    all_layer_names = {n for d in layer_names.values() for n in d.values()}
    layerless = _layerless_parts(
        stem,
        shapes,
        embed=_EMBED_NAMES,
        norm_final=_NORM_FINAL_NAMES,
        head=_HEAD_NAMES,
        tied=tied,
        layer_names=all_layer_names,
    )
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

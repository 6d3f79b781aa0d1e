"""DAPA's fixed recipe, one definition for every bench: the whole MLP of the middle half of the layers."""

from __future__ import annotations


def dapa_layers(num_layers: int) -> tuple[int, int]:
    """The first and the last layer (inclusive) of the middle half."""
    return num_layers // 4, num_layers - num_layers // 4 - 1


def dapa_components(num_layers: int) -> list[str]:
    lo, hi = dapa_layers(num_layers)
    return [f"L{i}.mlp" for i in range(lo, hi + 1)]


def dapa_label(num_layers: int) -> str:
    lo, hi = dapa_layers(num_layers)
    return f"MLP of layers {lo}-{hi}"

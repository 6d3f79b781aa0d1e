"""The built-in model organism: a tiny Llama base, an unaligned and an aligned sibling, and a planted
aligned sibling whose alignment sits in known components (ground truth for the search)."""

from __future__ import annotations

from ddalign.organism.build import Organism, build, cache_root, load

__all__ = ["Organism", "build", "load", "cache_root"]

"""The real pair: aligned and unaligned siblings grown by fine-tuning one real pretrained parent
(SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file), so the whole flow runs on a real model
offline. `build_pair("smollm2")` builds and caches it; `load_pair` finds the cached build."""

from ddalign.pair.build import Pair, build_pair, load_pair
from ddalign.pair.recipe import RECIPES, PairRecipe, get_recipe

__all__ = ["Pair", "PairRecipe", "RECIPES", "build_pair", "get_recipe", "load_pair"]

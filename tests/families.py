"""Tiny random checkpoints of each supported model family, for tests (no hub, no downloads).

`make_checkpoint("qwen2", tmp_path / "q")` builds a transformers model from its config class
with random weights and saves it with `save_pretrained`, so the tensor names, layouts (fused,
transposed, biased, tied) and config.json are exactly what real checkpoints of that family carry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

HIDDEN = 32
FFN = 64
VOCAB = 128
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS

# The families ddalign's architecture map lists by name.
LISTED_FAMILIES = ("llama", "mistral", "gemma", "gemma2", "qwen2", "phi3", "gpt2", "gpt_neox")
# Families the map does not list: their map is inferred from tensor names.
UNLISTED_FAMILIES = ("stablelm", "olmo", "starcoder2")
# Variants of a listed family: a Llama whose output layer is tied to its embeddings (as SmolLM2's):
# the checkpoint stores no lm_head.weight.
VARIANTS = ("llama_tied",)
FAMILIES = LISTED_FAMILIES + UNLISTED_FAMILIES + VARIANTS


def _decoder_kwargs(layers: int) -> dict[str, Any]:
    """The Llama-style config keys most decoder families share."""
    return dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def _llama(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**_decoder_kwargs(layers), tie_word_embeddings=False))


def _llama_tied(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**_decoder_kwargs(layers), tie_word_embeddings=True))


def _mistral(layers: int):
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(**_decoder_kwargs(layers), sliding_window=64, tie_word_embeddings=False))


def _gemma(layers: int):
    from transformers import GemmaConfig, GemmaForCausalLM

    return GemmaForCausalLM(GemmaConfig(**_decoder_kwargs(layers), head_dim=HEAD_DIM))


def _gemma2(layers: int):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return Gemma2ForCausalLM(Gemma2Config(**_decoder_kwargs(layers), head_dim=HEAD_DIM, sliding_window=64))


def _qwen2(layers: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**_decoder_kwargs(layers), tie_word_embeddings=False))


def _phi3(layers: int):
    from transformers import Phi3Config, Phi3ForCausalLM

    return Phi3ForCausalLM(Phi3Config(**_decoder_kwargs(layers), tie_word_embeddings=False))


def _gpt2(layers: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=VOCAB,
            n_embd=HIDDEN,
            n_inner=FFN,
            n_layer=layers,
            n_head=HEADS,
            n_positions=128,
            bos_token_id=1,
            eos_token_id=2,
        )
    )


def _gpt_neox(layers: int):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=FFN,
            num_hidden_layers=layers,
            num_attention_heads=HEADS,
            max_position_embeddings=128,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        )
    )


def _stablelm(layers: int):
    from transformers import StableLmConfig, StableLmForCausalLM

    return StableLmForCausalLM(StableLmConfig(**_decoder_kwargs(layers), use_qkv_bias=True, tie_word_embeddings=False))


def _olmo(layers: int):
    from transformers import OlmoConfig, OlmoForCausalLM

    return OlmoForCausalLM(OlmoConfig(**_decoder_kwargs(layers), tie_word_embeddings=False))


def _starcoder2(layers: int):
    from transformers import Starcoder2Config, Starcoder2ForCausalLM

    return Starcoder2ForCausalLM(Starcoder2Config(**_decoder_kwargs(layers), tie_word_embeddings=False))


BUILDERS: dict[str, Callable[[int], torch.nn.Module]] = {
    "llama": _llama,
    "mistral": _mistral,
    "gemma": _gemma,
    "gemma2": _gemma2,
    "qwen2": _qwen2,
    "phi3": _phi3,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "stablelm": _stablelm,
    "olmo": _olmo,
    "starcoder2": _starcoder2,
    "llama_tied": _llama_tied,
}


def make_checkpoint(
    family: str, path, *, seed: int = 0, layers: int = 4, sharded: bool = False, dtype: torch.dtype = torch.float32
) -> Path:
    """Build a tiny random `family` model and save it to `path`; returns the folder.

    Sizes: hidden 32, FFN 64, vocab 128, 4 heads (2 KV heads where the family has GQA).
    `sharded=True` writes several safetensors shards plus model.safetensors.index.json.
    """
    if family not in BUILDERS:
        raise ValueError(f"unknown test family {family!r}; expected one of {sorted(BUILDERS)}")
    path = Path(path)
    torch.manual_seed(seed)
    model = BUILDERS[family](layers).to(dtype)
    kwargs = {"max_shard_size": "20KB"} if sharded else {}
    model.save_pretrained(path, **kwargs)
    return path


def read_shapes(path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of every tensor in a checkpoint folder, read with safe_open."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def read_config(path) -> dict:
    """config.json of a checkpoint folder as a dict."""
    import json

    return json.loads((Path(path) / "config.json").read_text())

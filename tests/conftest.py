"""Shared fixtures: tiny random checkpoints made with transformers in temporary folders (no hub)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def make_tiny_llama(
    path, *, seed: int = 0, layers: int = 4, hidden: int = 32, ffn: int = 64, vocab: int = 128, dtype=torch.float32
):
    """A tiny random Llama checkpoint saved with save_pretrained; returns the folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(path)
    return path


@pytest.fixture
def tiny_llama_pair(tmp_path):
    """(aligned, unaligned) tiny Llama folders with different random weights."""
    a = make_tiny_llama(tmp_path / "aligned", seed=1)
    u = make_tiny_llama(tmp_path / "unaligned", seed=2)
    return a, u


@pytest.fixture(scope="session")
def fast_organism(tmp_path_factory):
    """The fast model-organism preset, built once per test session.

    Cached under $DDALIGN_TEST_CACHE when it is set (so repeated local runs reuse it), else in a
    session temp folder; the user's own cache is never touched by tests.
    """
    from ddalign.organism import build

    cache = os.environ.get("DDALIGN_TEST_CACHE") or str(tmp_path_factory.mktemp("ddalign-cache"))
    old = os.environ.get("DDALIGN_CACHE")
    os.environ["DDALIGN_CACHE"] = cache
    try:
        return build("fast", progress=False)
    finally:
        if old is None:
            os.environ.pop("DDALIGN_CACHE", None)
        else:
            os.environ["DDALIGN_CACHE"] = old

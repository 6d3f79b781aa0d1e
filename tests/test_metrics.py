"""Metrics: Wilson intervals against published values, perplexity against a hand computation
on a tiny model, strided windows, answer normalisation and accuracy."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_generate import make_tiny_chat_model

from ddalign.errors import DdalignError
from ddalign.evaluate.generate import load_model
from ddalign.evaluate.metrics import (
    Rate,
    _windows,
    answer_matches,
    benign_accuracy,
    defense_success_rate,
    normalise_answer,
    over_refusal_rate,
    perplexity,
    perplexity_stats,
    wilson,
)


@pytest.mark.parametrize(
    "k,n,lo,hi",
    [
        (0, 10, 0.0, 0.2775),  # Newcombe (1998) / standard tables
        (10, 10, 0.7225, 1.0),
        (5, 10, 0.2366, 0.7634),
        (81, 263, 0.2553, 0.3662),  # Wilson (1927)-style worked example (Newcombe 1998, table II)
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_known_values(k, n, lo, hi):
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=6e-4)


def test_wilson_properties_and_errors():
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(30, 100)
    assert lo < 0.3 < hi
    narrow = wilson(300, 1000)
    assert narrow[1] - narrow[0] < hi - lo
    with pytest.raises(DdalignError, match="wilson"):
        wilson(5, 3)


@given(st.integers(0, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_the_estimate(kn):
    k, n = kn
    lo, hi = wilson(k, n)
    assert 0.0 <= lo <= hi <= 1.0
    if n:
        assert lo - 1e-12 <= k / n <= hi + 1e-12
        assert wilson(n - k, n) == pytest.approx((1 - hi, 1 - lo), abs=1e-9)  # symmetric


@given(st.text(max_size=60))
def test_normalisation_is_idempotent(text):
    once = normalise_answer(text)
    assert normalise_answer(once) == once


def test_rates_with_counts():
    r = defense_success_rate([True, True, False, True])
    assert (r.value, r.k, r.n) == (0.75, 3, 4) and r.ci95 == wilson(3, 4)
    d = r.as_dict()
    assert d["n"] == 4 and d["k"] == 3 and len(d["ci95"]) == 2
    assert over_refusal_rate([]).as_dict()["value"] is None
    assert Rate.of(0, 5).value == 0.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(make_tiny_chat_model(tmp_path_factory.mktemp("ppl") / "m", seed=11), device="cpu")


def hand_nll(model, ids: list[int]) -> tuple[float, int]:
    """Sum of -log p(token | all previous tokens of the text), every token but the first."""
    total = 0.0
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
        logp = torch.log_softmax(logits.double(), -1)
    for t in range(1, len(ids)):
        total -= float(logp[t - 1, ids[t]])
    return total, len(ids) - 1


TEXTS = ["The quick brown fox jumps over the lazy dog.", "hello world", "Paris is the capital of France."]


def test_perplexity_matches_hand_computation(tiny):
    model, tok = tiny
    nll, count = 0.0, 0
    for text in TEXTS:
        s, c = hand_nll(model, tok(text)["input_ids"])
        nll += s
        count += c
    stats = perplexity_stats(model, tok, TEXTS, max_length=128, stride=64, batch_size=2)
    assert stats.tokens == count
    assert stats.nll == pytest.approx(nll / count, rel=1e-5)
    assert stats.value == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert perplexity(model, tok, TEXTS, max_length=128, stride=64) == pytest.approx(stats.value, rel=1e-6)


def test_strided_equals_unstrided_when_text_fits(tiny):
    model, tok = tiny
    a = perplexity_stats(model, tok, TEXTS, max_length=100, stride=100)
    b = perplexity_stats(model, tok, TEXTS, max_length=100, stride=7)
    assert a.tokens == b.tokens and a.value == pytest.approx(b.value, rel=1e-6)


def test_strided_windows_hand_computation(tiny):
    """A text longer than the window: each token is scored once, with the guide's context."""
    model, tok = tiny
    text = "a long text about many things " * 3
    ids = tok(text)["input_ids"]
    max_length, stride = 24, 8
    spans = _windows(len(ids), max_length, stride)
    assert spans[0] == (0, 24, 24) and spans[1] == (8, 32, 8) and spans[-1][1] == len(ids)
    nll, count = 0.0, 0
    for begin, end, new in spans:
        window = ids[begin:end]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([window])).logits[0].double(), -1)
        for t in range(max(1, len(window) - new), len(window)):
            nll -= float(logp[t - 1, window[t]])
            count += 1
    stats = perplexity_stats(model, tok, [text], max_length=max_length, stride=stride, batch_size=3)
    assert count == len(ids) - 1 == stats.tokens
    assert stats.nll == pytest.approx(nll / count, rel=1e-5)
    # Less context (no overlap) gives a different number: the windows matter.
    plain = perplexity_stats(model, tok, [text], max_length=max_length, stride=max_length)
    assert plain.tokens < stats.tokens and plain.nll != pytest.approx(stats.nll, rel=1e-6)


def test_perplexity_bad_input(tiny):
    model, tok = tiny
    with pytest.raises(DdalignError, match="stride"):
        perplexity_stats(model, tok, TEXTS, max_length=16, stride=32)
    with pytest.raises(DdalignError, match="no texts"):
        perplexity_stats(model, tok, [])


def test_normalisation_and_matching():
    assert normalise_answer("  The Answer: PARIS!! ") == "answer paris"
    assert normalise_answer("an apple, a pear") == "apple pear"
    assert answer_matches("Paris.", "paris", "exact")
    assert not answer_matches("Paris is nice", "paris", "exact")
    assert answer_matches("The capital is Paris, of course.", "Paris", "contains")
    assert not answer_matches("Parisian food", "Paris", "contains")  # word boundaries
    assert answer_matches("It is 1 2 3 4", "1, 2, 3, 4", "contains")
    assert not answer_matches("anything", "", "contains")
    with pytest.raises(DdalignError, match="exact"):
        answer_matches("a", "b", "fuzzy")


def test_benign_accuracy():
    r = benign_accuracy(["Paris", "4", "blue sky"], ["paris", "5", "Blue"])
    assert (r.k, r.n) == (2, 3)
    skipped = benign_accuracy(["x", "y"], [None, "y"])
    assert (skipped.k, skipped.n) == (1, 1)
    exact = benign_accuracy(["blue sky"], ["Blue"], mode="exact")
    assert exact.k == 0
    with pytest.raises(DdalignError, match="references"):
        benign_accuracy(["a"], [])

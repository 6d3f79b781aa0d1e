"""Metrics with their counts and 95% intervals: defense success, over-refusal, perplexity,
benign accuracy. Small prompt sets make every rate uncertain, so every rate carries a Wilson
interval (honest near 0 and 1, unlike the normal approximation)."""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ddalign.errors import DdalignError


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; (0.0, 1.0) when n == 0."""
    if n < 0 or k < 0 or k > n:
        raise DdalignError(f"wilson: expected 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class Rate:
    """A share k/n with its 95% Wilson interval (value is nan when n == 0)."""

    value: float
    k: int
    n: int
    ci95: tuple[float, float]

    @classmethod
    def of(cls, k: int, n: int) -> "Rate":
        return cls(k / n if n else float("nan"), int(k), int(n), wilson(int(k), int(n)))

    @classmethod
    def from_flags(cls, flags: Iterable[bool]) -> "Rate":
        flags = [bool(f) for f in flags]
        return cls.of(sum(flags), len(flags))

    def as_dict(self) -> dict:
        value = None if math.isnan(self.value) else round(self.value, 6)
        return {"value": value, "k": self.k, "n": self.n, "ci95": [round(self.ci95[0], 6), round(self.ci95[1], 6)]}


def defense_success_rate(refused: Iterable[bool]) -> Rate:
    """DSR: share of harmful prompts refused (higher is safer)."""
    return Rate.from_flags(refused)


def over_refusal_rate(refused: Iterable[bool]) -> Rate:
    """Share of safe-but-scary prompts refused (lower is better)."""
    return Rate.from_flags(refused)


# --- perplexity ------------------------------------------------------------------------------

LOGITS_BUDGET = 512 * 2**20
"""Bytes of logits one perplexity batch may hold (a 32k vocabulary x 1024 tokens is 128 MiB)."""


@dataclass
class Perplexity:
    """exp of the token-weighted mean NLL, with the counts behind it."""

    value: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    tokens: int  # predicted tokens
    texts: int
    max_length: int
    stride: int

    def as_dict(self) -> dict:
        return {
            "value": round(self.value, 6),
            "nll": round(self.nll, 6),
            "n": self.tokens,
            "texts": self.texts,
            "max_length": self.max_length,
            "stride": self.stride,
        }


def _windows(length: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, new) windows as in the transformers perplexity guide: each window is at most
    `max_length` tokens, windows start `stride` apart, and only the `new` last tokens (not scored
    by an earlier window) count."""
    spans, prev_end = [], 0
    for begin in range(0, length, stride):
        end = min(begin + max_length, length)
        spans.append((begin, end, end - prev_end))
        prev_end = end
        if end == length:
            break
    return spans


@torch.inference_mode()
def perplexity_stats(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    stride: int | None = None,
    max_length: int | None = None,
    batch_size: int = 8,
    add_special_tokens: bool = True,
) -> Perplexity:
    """Strided perplexity of each text (windows never cross texts), pooled over all texts.

    Every token but a text's first is predicted once, from up to `max_length - 1` tokens of
    left context; `stride < max_length` gives later windows overlapping context for free.
    """
    limit = int(getattr(model.config, "max_position_embeddings", 1024) or 1024)
    max_length = min(limit, 1024) if max_length is None else int(max_length)
    stride = max(1, max_length // 2) if stride is None else int(stride)
    if max_length < 2 or not 1 <= stride <= max_length:
        raise DdalignError(
            f"perplexity: expected 2 <= max_length and 1 <= stride <= max_length, "
            f"got max_length={max_length}, stride={stride}"
        )
    if not texts:
        raise DdalignError("perplexity: no texts")
    device = model.get_input_embeddings().weight.device
    pieces: list[tuple[list[int], int]] = []  # (window ids, number of scored last tokens)
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
        for begin, end, new in _windows(len(ids), max_length, stride):
            scored = min(new, end - begin - 1)  # the window's first token has no prediction
            if scored > 0:
                pieces.append((ids[begin:end], scored))
    total_nll, total_tokens = 0.0, 0
    pieces.sort(key=lambda p: -len(p[0]))
    # Logits are windows x length x vocab floats: cap a batch near LOGITS_BUDGET bytes.
    vocab = int(getattr(model.config, "vocab_size", 32000) or 32000)
    per_window = max(len(pieces[0][0]), 1) * vocab * 4 if pieces else 1
    batch_size = max(1, min(batch_size, LOGITS_BUDGET // per_window))
    start = 0
    while start < len(pieces):
        chunk = pieces[start : start + batch_size]
        start += len(chunk)
        width = max(len(p[0]) for p in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        score = torch.zeros((len(chunk), width), dtype=torch.bool)
        for b, (window, scored) in enumerate(chunk):  # right padding: positions stay 0..len-1
            ids[b, : len(window)] = torch.tensor(window)
            mask[b, : len(window)] = 1
            score[b, len(window) - scored : len(window)] = True
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        keep = score[:, 1:].to(logits.device)
        targets = ids[:, 1:].to(logits.device)
        nll = torch.nn.functional.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum")
        total_nll += float(nll)
        total_tokens += int(keep.sum())
    if total_tokens == 0:
        raise DdalignError("perplexity: the texts hold no token to predict (each needs at least two tokens)")
    mean = total_nll / total_tokens
    return Perplexity(math.exp(mean), mean, total_tokens, len(texts), max_length, stride)


def perplexity(
    model, tokenizer, texts: Sequence[str], *, stride: int | None = None, max_length: int | None = None
) -> float:
    """exp(token-weighted mean NLL) on `texts` (see `perplexity_stats`)."""
    return perplexity_stats(model, tokenizer, texts, stride=stride, max_length=max_length).value


# --- benign task accuracy --------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "\u2018\u2019\u201c\u201d"})


def normalise_answer(text: str) -> str:
    """Lowercase, punctuation to spaces, articles dropped, whitespace collapsed (SQuAD-style)."""
    text = text.casefold().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_matches(answer: str, reference: str, mode: str = "contains") -> bool:
    """'exact': normalised equality; 'contains': the normalised reference occurs in the
    normalised answer on word boundaries (greedy answers run on after the answer)."""
    ref, ans = normalise_answer(reference), normalise_answer(answer)
    if mode == "exact":
        return ans == ref
    if mode == "contains":
        return bool(ref) and f" {ref} " in f" {ans} "
    raise DdalignError(f"accuracy match: expected 'exact' or 'contains', got {mode!r}")


def benign_accuracy(answers: Sequence[str], references: Sequence[str | None], *, mode: str = "contains") -> Rate:
    """Share of answers matching their reference; items without a reference are skipped."""
    if len(answers) != len(references):
        raise DdalignError(f"benign accuracy: {len(answers)} answers but {len(references)} references")
    flags = [answer_matches(a, r, mode) for a, r in zip(answers, references) if r is not None and r.strip()]
    return Rate.from_flags(flags)

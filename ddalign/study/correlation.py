"""Across models: Spearman's rank correlation of refusal uniformity with DSR, and what it can bear.

Fewer than ANECDOTE_BELOW models make it an anecdote (say so); fewer than 3, or a variable equal
for every model, leave it undefined (two points always rank-correlate at +-1). Every defined rho
carries a two-sided permutation p-value: how often a random pairing of the same values correlates
at least as strongly (exact over every pairing up to EXACT_UP_TO models, else a seeded sample).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

from ddalign.errors import DdalignError

ANECDOTE_BELOW = 10
"""Fewer models than this: a correlation is an anecdote, not evidence."""
WORDS = {"dsr": "DSR"}  # how the note names a variable
EXACT_UP_TO = 8
"""Up to this many models the p-value enumerates every pairing (8! = 40,320)."""
PERMUTATIONS = 100_000
"""Random pairings sampled above EXACT_UP_TO models (the p-value's standard error is at most 0.0016)."""
SIGNIFICANCE = 0.05


@dataclass
class Correlation:
    """Spearman's rho of `x` with `y` over the models where both are defined."""

    rho: float | None
    n: int
    models: list[str]
    left_out: list[str] = field(default_factory=list)  # models without an x (fewer than 2 refusals)
    x: str = "uniformity"
    y: str = "dsr"
    p: float | None = None  # two-sided permutation p-value of rho (None when rho is)

    @property
    def anecdote(self) -> bool:
        return self.n < ANECDOTE_BELOW

    @property
    def note(self) -> str:
        """The result in plain words, with its caveat."""
        x, y = WORDS.get(self.x, self.x), WORDS.get(self.y, self.y)
        left = f"; left out for fewer than 2 refusals: {', '.join(self.left_out)}" if self.left_out else ""
        if self.rho is None:
            why = (
                f"{self.n} model(s) with a defined {x}: too few (at least 3)"
                if self.n < 3
                else f"{x} or {y} is the same for every model"
            )
            return f"Spearman correlation of {x} with {y}: undefined ({why}){left}."
        text = f"Spearman correlation of {x} with {y}: rho = {self.rho:+.3f} over {self.n} models"
        if self.p is not None:
            text += f" (two-sided permutation p = {self.p:.3f}"
            text += f"; no evidence of a relation at the {SIGNIFICANCE:.0%} level)" if self.p >= SIGNIFICANCE else ")"
        if self.anecdote:
            text += (
                f"; an anecdote, not evidence: fewer than {ANECDOTE_BELOW} models, and a rank correlation "
                f"over so few is easily chance"
            )
        return text + left + "."

    def as_dict(self) -> dict:
        return {
            "method": "spearman",
            "x": self.x,
            "y": self.y,
            "rho": None if self.rho is None else round(self.rho, 6),
            "p": None if self.p is None else round(self.p, 6),
            "p_method": None if self.p is None else _p_method(self.n),
            "n": self.n,
            "models": list(self.models),
            "left_out": list(self.left_out),
            "anecdote": self.anecdote,
            "anecdote_below": ANECDOTE_BELOW,
            "note": self.note,
        }


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's correlation of the ranks (ties averaged); None for fewer than 3 pairs or a constant variable."""
    if len(xs) != len(ys):
        raise DdalignError(f"spearman: {len(xs)} x values but {len(ys)} y values")
    if any(not math.isfinite(v) for v in (*xs, *ys)):
        raise DdalignError("spearman: values must be finite numbers")
    if len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def permutation_p(xs: Sequence[float], ys: Sequence[float], *, seed: int = 0) -> float | None:
    """Two-sided p-value of Spearman's rho: the share of pairings of xs with a reordering of ys whose
    |rho| is at least the observed one (None where rho is). Exact up to EXACT_UP_TO pairs; above,
    PERMUTATIONS seeded random pairings, counted as (k + 1) / (m + 1) so it is never 0."""
    import numpy as np

    observed = spearman(xs, ys)
    if observed is None:
        return None
    rx, ry = np.asarray(ranks(xs)), np.asarray(ranks(ys))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    scale = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    limit = abs(observed) * scale - 1e-9 * scale  # a pairing as strong as the observed one counts
    if len(xs) <= EXACT_UP_TO:
        orders = np.array(list(itertools.permutations(range(len(ry)))))
        return float((np.abs(ry[orders] @ rx) >= limit).mean())
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, PERMUTATIONS, 10_000):
        block = rng.permuted(np.tile(ry, (min(10_000, PERMUTATIONS - start), 1)), axis=1)
        hits += int((np.abs(block @ rx) >= limit).sum())
    return (hits + 1) / (PERMUTATIONS + 1)


def _p_method(n: int) -> str:
    return f"exact, all {n}! pairings" if n <= EXACT_UP_TO else f"{PERMUTATIONS} random pairings, seed 0"


def correlate(models: Sequence[str], xs: Sequence[float | None], ys: Sequence[float]) -> Correlation:
    """Spearman of xs with ys over the models whose x is defined (the others listed as left out)."""
    if not len(models) == len(xs) == len(ys):
        raise DdalignError(f"correlate: {len(models)} models, {len(xs)} x values, {len(ys)} y values")
    kept = [i for i, x in enumerate(xs) if x is not None]
    kx, ky = [xs[i] for i in kept], [ys[i] for i in kept]
    rho = spearman(kx, ky)  # type: ignore[arg-type]
    p = None if rho is None else permutation_p(kx, ky)  # type: ignore[arg-type]
    return Correlation(rho, len(kept), [models[i] for i in kept], [m for m, x in zip(models, xs) if x is None], p=p)

"""The exact early-stop rule: stop counting once the verdict can no longer change.

Every oracle test is a count test over a fixed set of `n` items: PASS when at least `need` of
them succeed (refusals on harmful prompts; non-refusals on safe prompts; correct benign
answers). After `seen` items with `successes` among them, the verdict is already known when

- `successes >= need`: the remaining items cannot take a success back (PASS), or
- `successes + (n - seen) < need`: even if every remaining item succeeds the count falls
  short (FAIL).

Otherwise it is open. Stopping at the first known state therefore gives, always, the verdict of
the full evaluation. Rates are turned into integer counts once, with a tolerance of 1e-9 so
that a float threshold that is an exact fraction (0.9 * 10 = 9.000000000000002) asks for the
count a human would expect:

- at least a rate `r` of `n`:     need = ceil(r * n - 1e-9)       (r <= 0: 0; r > 1: n + 1, never)
- at most a rate `r` of `n`:      allowed = floor(r * n + 1e-9)   (then need = n - allowed non-events)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ddalign.errors import DdalignError

EPS = 1e-9
"""Tolerance on `rate * n` before rounding to a count (see the module docstring)."""


def need_at_least(rate: float, n: int) -> int:
    """The smallest count k with k/n >= rate (up to EPS); n + 1 when no k <= n can reach it."""
    _check_n(n)
    if not math.isfinite(rate):
        raise DdalignError(f"early stop: expected a finite rate, got {rate!r}")
    if rate <= 0:
        return 0
    return min(n + 1, max(0, math.ceil(rate * n - EPS)))


def allowed_at_most(rate: float, n: int) -> int:
    """The largest count k with k/n <= rate (up to EPS); -1 when even 0 exceeds it (rate < 0)."""
    _check_n(n)
    if not math.isfinite(rate):
        raise DdalignError(f"early stop: expected a finite rate, got {rate!r}")
    if rate < 0:
        return -1
    return min(n, math.floor(rate * n + EPS))


def decide(successes: int, seen: int, n: int, need: int) -> bool | None:
    """True (PASS) / False (FAIL) once known from `successes` among `seen` of `n`; else None."""
    if not 0 <= successes <= seen <= n:
        raise DdalignError(f"early stop: expected 0 <= successes <= seen <= n, got {successes}, {seen}, {n}")
    if successes >= need:
        return True
    if successes + (n - seen) < need:
        return False
    return None


@dataclass
class CountTest:
    """A running count test: PASS iff at least `need` of `n` items succeed.

    Feed it batches with `add(successes, seen)`; `verdict` is True/False as soon as it is
    known and None while open; `done` says whether to stop evaluating.
    """

    n: int
    need: int
    successes: int = 0
    seen: int = 0

    def __post_init__(self) -> None:
        _check_n(self.n)

    @classmethod
    def at_least(cls, rate: float, n: int) -> "CountTest":
        """PASS iff successes / n >= rate (e.g. DSR >= target)."""
        return cls(n, need_at_least(rate, n))

    @classmethod
    def at_least_count(cls, count: int, n: int) -> "CountTest":
        """PASS iff successes >= count (count clamped to 0..n+1)."""
        return cls(n, min(n + 1, max(0, int(count))))

    @classmethod
    def at_most_events(cls, allowed: int, n: int) -> "CountTest":
        """PASS iff at most `allowed` of n items are events: counts successes = non-events."""
        return cls(n, min(n + 1, max(0, n - int(allowed))))

    def add(self, successes: int, seen: int) -> bool | None:
        """Count one batch (or round); return the verdict if now known."""
        if successes < 0 or seen < successes:
            raise DdalignError(f"early stop: a batch needs 0 <= successes <= seen, got {successes}, {seen}")
        if self.seen + seen > self.n:
            raise DdalignError(f"early stop: {self.seen + seen} items counted but the set has {self.n}")
        self.successes += successes
        self.seen += seen
        return self.verdict

    @property
    def verdict(self) -> bool | None:
        return decide(self.successes, self.seen, self.n, self.need)

    @property
    def done(self) -> bool:
        return self.verdict is not None

    @property
    def remaining(self) -> int:
        return self.n - self.seen

    def as_dict(self) -> dict:
        return {
            "need": self.need,
            "k": self.successes,
            "seen": self.seen,
            "n": self.n,
            "stopped_early": self.seen < self.n,
        }


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise DdalignError(f"early stop: expected a non-negative item count, got {n!r}")

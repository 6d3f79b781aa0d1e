"""Refusal rate per prompt category, each with its 95% Wilson interval."""

from __future__ import annotations

from typing import Sequence

from ddalign.errors import DdalignError
from ddalign.evaluate.metrics import Rate

ALL = "all"  # the one category of a set whose prompts carry none
UNCATEGORISED = "uncategorised"  # prompts without one in a set where others have one


def category_rates(categories: Sequence[str | None], refused: Sequence[bool]) -> dict[str, Rate]:
    """{category: Rate of refusals}, categories in alphabetical order; a set without categories
    gives one category "all", and in a set with some, prompts without one go to "uncategorised"."""
    if len(categories) != len(refused):
        raise DdalignError(f"category rates: {len(categories)} categories but {len(refused)} verdicts")
    named = [c if c not in (None, "") else None for c in categories]
    if all(c is None for c in named):
        named = [ALL] * len(named)
    else:
        named = [UNCATEGORISED if c is None else str(c) for c in named]
    flags: dict[str, list[bool]] = {}
    for category, verdict in zip(named, refused):
        flags.setdefault(category, []).append(bool(verdict))
    return {c: Rate.from_flags(flags[c]) for c in sorted(flags)}

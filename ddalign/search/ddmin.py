"""ddmin (Zeller and Hildebrandt 2002), the reference: subsets, then complements; O(n^2) tests."""

from __future__ import annotations

from typing import Iterable, Mapping

from ddalign.search.core import Key, OnTest, Progress, SearchResult, Test, Verdict, _flat, _Session


def _split(items: list, n: int) -> list[list]:
    """n contiguous chunks of near-equal size (the first ones one longer)."""
    size, extra = divmod(len(items), n)
    chunks, start = [], 0
    for i in range(n):
        stop = start + size + (1 if i < extra else 0)
        chunks.append(items[start:stop])
        start = stop
    return chunks


def _ddmin_core(session: _Session, items: list, level: str) -> list:
    """Zeller and Hildebrandt's ddmin on a passing `items`; returns a 1-minimal subset."""
    current, n = list(items), 2
    while len(current) >= 2:
        chunks = _split(current, n)
        reduced = False
        for done, chunk in enumerate(chunks):
            session.estimate(2 * n - done + len(current))
            if session.ask(chunk, level) is Verdict.PASS:
                current, n, reduced = chunk, 2, True
                break
        if not reduced and n > 2:  # with two chunks the complements are the chunks
            for i in range(len(chunks)):
                complement = [x for j, chunk in enumerate(chunks) if j != i for x in chunk]
                session.estimate(n - i + len(current))
                if session.ask(complement, level) is Verdict.PASS:
                    current, n, reduced = complement, max(n - 1, 2), True
                    break
        if not reduced:
            if n >= len(current):
                break
            n = min(len(current), 2 * n)
    session.estimate(0)
    return current


def ddmin(
    items: Iterable,
    test: Test,
    *,
    assume_monotone: bool = False,
    cache: Mapping | None = None,
    on_test: OnTest | None = None,
    progress: Progress | None = None,
    level: str = "flat",
    key: Key | None = None,
    max_tests: int | None = None,
) -> SearchResult:
    """The reference: a 1-minimal passing subset by ddmin (subsets, then complements).

    O(n^2) tests in the worst case; keeps the items' order and splits it into contiguous chunks.
    max_tests: stop after this many real tests with the last passing set (`result.stopped` says so).
    """
    return _flat(
        _ddmin_core,
        items,
        test,
        assume_monotone=assume_monotone,
        cache=cache,
        on_test=on_test,
        progress=progress,
        level=level,
        key=key,
        max_tests=max_tests,
    )

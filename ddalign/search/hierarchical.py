"""Hierarchical delta debugging: coarse units first (layers), then the children of the kept ones."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

from ddalign.errors import DdalignError
from ddalign.search.core import (
    BudgetReached,
    Key,
    LevelResult,
    OnTest,
    Prior,
    Progress,
    SearchResult,
    Test,
    Verdict,
    _prior_fn,
    _Session,
    _unique,
)
from ddalign.search.ddmin import _ddmin_core
from ddalign.search.probdd import _default_p0, _probdd_core

# The searches a run can choose, and those hierarchical runs at each of its levels.
ALGORITHMS = ("hierarchical", "probdd", "ddmin")
LEVEL_ALGORITHMS = ("probdd", "ddmin")


def hierarchical(
    items: Iterable,
    test: Test,
    *,
    expanders: Sequence[Callable[[Any], list]],
    algorithm: str = "probdd",
    prior: Prior = None,
    p0: float | None = None,
    levels: Sequence[str] | None = None,
    assume_monotone: bool = False,
    cache: Mapping | None = None,
    on_test: OnTest | None = None,
    progress: Progress | None = None,
    key: Key | None = None,
    max_tests: int | None = None,
) -> SearchResult:
    """Search coarse units first, then the children of the kept ones, level by level.

    items: the first level's units (e.g. layers). expanders[i] maps one kept unit of level i to
    its children at level i+1 (e.g. `lambda c: arch.expand(c, "module")`). Each level starts
    from the previous level's result, and each level's result passes and is 1-minimal among
    that level's units. When a level's expansion of the kept units does not pass (children can
    cover less than their parent, e.g. row blocks leave out norms), that level is skipped: its
    result is the previous one, and the next expander receives those unexpanded units. A unit
    whose expander returns no children is kept as it is; children shared by two units count once.
    levels: names for the trace and the journal (default: layer, module, block for three levels).
    prior: weights for the units of every level (dict over all of them, or a function).
    key: the cache key of a subset (default frozenset). Pass one that maps units to what they
    stand for (a layer -> its components) so that a level's starting set, usually the same
    content as the previous level's result, is not tested again.
    max_tests: stop after this many real tests with the last passing set, in the units of the level
    it was reached at (`result.stopped` says so; the finer levels are not run).
    """
    if algorithm not in LEVEL_ALGORITHMS:
        raise DdalignError(f"search algorithm: expected one of {', '.join(LEVEL_ALGORITHMS)}, got {algorithm!r}")
    expanders = list(expanders)
    count = len(expanders) + 1
    if levels is None:
        levels = ("layer", "module", "block") if count == 3 else tuple(f"level{i}" for i in range(count))
    levels = list(levels)
    if len(levels) != count:
        raise DdalignError(f"hierarchical levels: expected {count} names (one per level), got {len(levels)}")
    weights = _prior_fn(prior)
    session = _Session(
        test,
        cache=cache,
        assume_monotone=assume_monotone,
        on_test=on_test,
        progress=progress,
        key=key,
        max_tests=max_tests,
    )

    def run(units: list, level: str) -> list:
        if algorithm == "ddmin":
            return _ddmin_core(session, units, level)
        return _probdd_core(session, units, level, weights, p0 if p0 is not None else _default_p0(len(units)))

    units = _unique(items)
    results: list[LevelResult] = []
    level, size, before = levels[0], len(units), session.tests
    try:
        session.check_bounds(units, level)
        current = run(units, level)
        results.append(LevelResult(level, size, list(current), session.tests - before))
        for expander, level in zip(expanders, levels[1:]):
            before = session.tests
            children = _expand(current, expander)
            size = len(children)
            if session.ask(children, level) is Verdict.FAIL:
                note = f"the {size} units expanded from the kept {levels[len(results) - 1]} units do not pass"
                results.append(LevelResult(level, size, list(current), session.tests - before, skipped=note))
                continue
            current = run(children, level)
            results.append(LevelResult(level, size, list(current), session.tests - before))
    except BudgetReached:
        current, note = session.stopped_result(level)
        results.append(LevelResult(level, size, list(current), session.tests - before, stopped=note))
        return SearchResult(list(current), session.tests, session.trace, results, stopped=note)
    return SearchResult(list(current), session.tests, session.trace, results)


def _expand(current: list, expander) -> list:
    """The children of the kept units, each once; a unit without children stays as it is."""
    children: list = []
    seen: set = set()
    for unit in current:
        for child in list(expander(unit)) or [unit]:
            if child not in seen:
                seen.add(child)
                children.append(child)
    return children

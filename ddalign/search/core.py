"""What every search shares: verdicts, records, results, and the session that asks the oracle.

The session caches verdicts by `frozenset(subset)` (or by `key(subset)`), so a subset is never
tested twice and a cache pre-filled from a journal makes a resumed search free; with
`assume_monotone=True` it infers verdicts implied by known ones instead of testing them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

from ddalign.errors import DdalignError


class Verdict(str, Enum):
    """The oracle's answer. PASS: the subset is interesting (still defends)."""

    PASS = "PASS"
    FAIL = "FAIL"


class SearchError(DdalignError):
    """The search cannot start: the target is already safe, or even the full set fails.

    `kind` is "already-safe" (the empty set passes) or "never-safe" (the full set fails); the
    caller adds the measured rates to the message it shows.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class TestRecord:
    """One question asked during the search, and where its answer came from.

    source: "oracle" (a real test), "cache" (answered by a known verdict) or "inferred"
    (implied by monotonicity).
    """

    __test__ = False  # not a pytest class

    index: int
    level: str
    subset: tuple
    verdict: Verdict
    source: str
    key: Hashable = field(default=None, compare=False, repr=False)  # the cache key

    @property
    def cached(self) -> bool:
        return self.source != "oracle"


@dataclass
class LevelResult:
    """One level of a hierarchical search (a flat search has exactly one).

    `skipped` says why the level kept the previous result unrefined (its expansion did not
    pass), else None; `stopped` says that the test budget ran out during this level.
    """

    name: str
    items: int
    minimal: list
    tests: int
    skipped: str | None = None
    stopped: str | None = None


@dataclass
class SearchResult:
    """minimal: the result, in the input order; tests: real oracle calls in this run.

    `stopped` is None for a finished search (its result is 1-minimal at its last level); when the
    test budget ran out it says where, and `minimal` is the last passing set the search reached:
    it passes, but a finished search could remove more from it.
    """

    minimal: list
    tests: int
    trace: list[TestRecord] = field(default_factory=list)
    levels: list[LevelResult] = field(default_factory=list)
    stopped: str | None = None

    @property
    def complete(self) -> bool:
        return self.stopped is None

    @property
    def queries(self) -> int:
        """Questions asked, whatever answered them."""
        return len(self.trace)

    @property
    def cached(self) -> int:
        return sum(1 for r in self.trace if r.source == "cache")

    @property
    def inferred(self) -> int:
        return sum(1 for r in self.trace if r.source == "inferred")

    def verdicts(self) -> dict[Hashable, Verdict]:
        """Every verdict the oracle gave, keyed as the cache is, for another run."""
        return {r.key: r.verdict for r in self.trace if r.source == "oracle"}


Test = Callable[[list], Any]
OnTest = Callable[[list, Verdict, bool, str, Any], None]
"""on_test(subset, verdict, cached, level, outcome): after every question; `outcome` is what the
test returned for a real test (a Verdict, or a record with a `.verdict`), None when answered
without one."""
Progress = Callable[[int], None]
Key = Callable[[list], Hashable]
Prior = Mapping[Hashable, float] | Callable[[Any], float] | None


def _verdict(value: Any, where: str) -> Verdict:
    """Accept Verdict, "PASS"/"FAIL" (journals), bool (True = PASS), or a record with a `.verdict`."""
    if hasattr(value, "verdict") and not isinstance(value, (str, bool)):
        value = value.verdict
    if isinstance(value, Verdict):
        return value
    if isinstance(value, bool):
        return Verdict.PASS if value else Verdict.FAIL
    if isinstance(value, str) and value.upper() in ("PASS", "FAIL"):
        return Verdict(value.upper())
    raise DdalignError(f"{where}: expected a Verdict (PASS or FAIL), got {value!r}")


class BudgetReached(Exception):
    """Raised inside a search when the next question needs a real test beyond the budget."""


class _Session:
    """The oracle as the algorithms see it: cache, monotone inference, trace, hooks, budget.

    `max_tests` bounds the real oracle calls of this session (cached and inferred answers are
    free, so a resumed search replays its journal and then stops at the same question a first
    run with the same total budget would). `last_pass` is the last passing set asked: every
    algorithm here moves its current set to each passing subset it finds, so it is the search's
    current result whenever the budget stops it.
    """

    def __init__(
        self,
        test: Test,
        *,
        cache: Mapping | None,
        assume_monotone: bool,
        on_test: OnTest | None,
        progress: Progress | None,
        key: Key | None = None,
        max_tests: int | None = None,
    ) -> None:
        if max_tests is not None and max_tests < 0:
            raise DdalignError(f"search budget: expected a number of tests >= 0, got {max_tests}")
        self.test = test
        self.max_tests = max_tests
        self.last_pass: list | None = None
        self.started = False  # the bounds are checked: the full set passes, the empty one fails
        self.key = key or frozenset
        self.cache: dict[Hashable, Verdict] = {}
        for known, value in (cache or {}).items():
            known = frozenset(known) if isinstance(known, (list, set)) else known
            self.cache[known] = _verdict(value, f"cache entry {known!r}")
        self.assume_monotone = assume_monotone
        self.on_test = on_test
        self.progress = progress
        self.tests = 0
        self.trace: list[TestRecord] = []
        # Monotone store as bit masks over items: subset checks are then single big-int ops.
        self._bit: dict[Hashable, int] = {}
        self._passing: list[int] = []  # minimal known passing sets
        self._failing: list[int] = []  # maximal known failing sets

    def _mask(self, subset: Iterable) -> int:
        mask = 0
        for item in subset:
            bit = self._bit.get(item)
            if bit is None:
                bit = self._bit[item] = 1 << len(self._bit)
            mask |= bit
        return mask

    def _infer(self, mask: int) -> Verdict | None:
        if any(p & mask == p for p in self._passing):
            return Verdict.PASS
        if any(f & mask == mask for f in self._failing):
            return Verdict.FAIL
        return None

    def _learn(self, mask: int, verdict: Verdict) -> None:
        if verdict is Verdict.PASS:
            self._passing = [p for p in self._passing if p & mask != mask] + [mask]
        else:
            self._failing = [f for f in self._failing if f & mask != f] + [mask]

    def ask(self, subset: Sequence, level: str) -> Verdict:
        subset = list(subset)
        key = self.key(subset)
        mask = self._mask(subset) if self.assume_monotone else 0
        # Inference first, then the cache: the store of known sets grows only from answered
        # questions, identically in a first run and in its replay, whereas a pre-filled cache
        # also holds later answers. Cache first would let a replay diverge wherever an
        # inference disagrees with a later real test (a non-monotone oracle, or another unit
        # set with the same key).
        verdict, source, outcome = None, "cache", None
        if self.assume_monotone:
            verdict, source = self._infer(mask), "inferred"
        if verdict is None:
            verdict, source = self.cache.get(key), "cache"
        if verdict is None:
            if self.max_tests is not None and self.tests >= self.max_tests:
                raise BudgetReached(level)
            outcome = self.test(list(subset))
            verdict = _verdict(outcome, f"test({len(subset)} items)")
            source = "oracle"
            self.tests += 1
            self.cache[key] = verdict
        if self.assume_monotone and source != "inferred":
            self._learn(mask, verdict)
        if verdict is Verdict.PASS:
            self.last_pass = list(subset)
        self.trace.append(TestRecord(len(self.trace), level, tuple(subset), verdict, source, key))
        if self.on_test is not None:
            self.on_test(subset, verdict, source != "oracle", level, outcome)
        return verdict

    def stopped_result(self, level: str) -> tuple[list, str]:
        """The search's current set when the budget stopped it, and a note saying so."""
        if self.last_pass is None or not self.started:
            raise DdalignError(
                f"search budget: {self.max_tests} test(s) ran out before the search could start (the full "
                "and the empty set are tested first); raise max_tests"
            )
        note = (
            f"the oracle test budget ran out at the {level} level after {self.tests} new test(s): the result "
            "passes but is not 1-minimal"
        )
        return list(self.last_pass), note

    def estimate(self, remaining: float) -> None:
        if self.progress is not None:
            self.progress(max(0, int(math.ceil(remaining))))

    def check_bounds(self, items: list, level: str) -> None:
        """The full set must pass and the empty set fail, or there is nothing to search."""
        if self.ask(items, level) is Verdict.FAIL:
            raise SearchError(
                f"even the full set of {len(items)} components does not pass the "
                "oracle: the transplant cannot reach the target",
                "never-safe",
            )
        if self.ask([], level) is Verdict.PASS:
            raise SearchError(
                "the empty set already passes the oracle: the target is already safe without any transplant",
                "already-safe",
            )
        self.started = True


def _unique(items: Iterable) -> list:
    items = list(items)
    seen: set = set()
    for item in items:
        if item in seen:
            raise DdalignError(f"search items: {item!r} appears twice; expected distinct items")
        seen.add(item)
    return items


def _prior_fn(prior: Prior) -> Callable[[Any], float]:
    if prior is None:
        return lambda item: 0.0
    if callable(prior) and not isinstance(prior, Mapping):
        return lambda item: float(prior(item))
    return lambda item: float(prior.get(item, 0.0))


def _flat(
    core: Callable[[_Session, list, str], list],
    items: Iterable,
    test: Test,
    *,
    assume_monotone: bool,
    cache: Mapping | None,
    on_test: OnTest | None,
    progress: Progress | None,
    level: str,
    key: Key | None,
    max_tests: int | None = None,
) -> SearchResult:
    items = _unique(items)
    session = _Session(
        test,
        cache=cache,
        assume_monotone=assume_monotone,
        on_test=on_test,
        progress=progress,
        key=key,
        max_tests=max_tests,
    )
    try:
        session.check_bounds(items, level)
        minimal = core(session, items, level)
    except BudgetReached:
        minimal, note = session.stopped_result(level)
        return SearchResult(
            minimal,
            session.tests,
            session.trace,
            [LevelResult(level, len(items), minimal, session.tests, stopped=note)],
            stopped=note,
        )
    tests = session.tests
    return SearchResult(minimal, tests, session.trace, [LevelResult(level, len(items), list(minimal), tests)])


def is_one_minimal(subset: Sequence, test: Test) -> bool:
    """True when `subset` passes and removing any single item makes it fail (for checks)."""
    subset = list(subset)
    if _verdict(test(subset), "test") is not Verdict.PASS:
        return False
    return all(_verdict(test([y for y in subset if y != x]), "test") is Verdict.FAIL for x in subset)

"""A minimise run's execution: the search over the plan's units, each real test journaled with
the oracle record it produced, the live state updated after every question."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from ddalign.errors import DdalignError
from ddalign.run.units import SearchUnits
from ddalign.transfer.modes import whole_bundle


@dataclass
class RunState:
    """What the live view shows; updated after every test."""

    level: str = ""
    tests: int = 0
    cached: int = 0
    subset_size: int = 0
    best: list[str] = field(default_factory=list)
    best_params: int | None = None
    started: float = field(default_factory=time.monotonic)
    last_seconds: float = 0.0
    expected_remaining: int | None = None


ViewCallback = Callable[[RunState], None]


def run_search(
    search_settings,
    units: SearchUnits,
    oracle,
    bundle_patch,
    cache: dict,
    journal,
    state: RunState,
    view: ViewCallback | None,
):
    """The search proper: items, expanders and hooks wired to the oracle and the journal.

    `oracle.test_record(components)` returns a record with `.verdict`, `.metrics` and `.cost`; the
    search hands it back to `on_test` with the question, which journals it."""
    from ddalign import search

    prior = units.prior(bundle_patch.prior())

    def key(subset) -> frozenset:
        return frozenset(units.concrete(list(subset)))

    def test(subset):
        started = time.monotonic()
        record = oracle.test_record(units.concrete(list(subset)))
        state.last_seconds = time.monotonic() - started
        return record

    def on_test(subset, verdict, cached, level, record) -> None:
        state.level = level
        state.subset_size = len(subset)
        if cached:
            state.cached += 1
        else:
            state.tests += 1
            if journal is not None:
                journal.append_test(
                    n=state.tests,
                    level=level,
                    subset=sorted(units.concrete(list(subset))),
                    verdict=str(verdict.value),
                    metrics=record.metrics,
                    cost=record.cost,
                )
        if verdict is search.Verdict.PASS:
            params = units.params(list(subset))
            if state.best_params is None or params < state.best_params:
                state.best, state.best_params = units.concrete(list(subset)), params
        if view is not None:
            view(state)

    def progress(remaining: int) -> None:
        state.expected_remaining = remaining
        if view is not None:
            view(state)

    s = search_settings
    # the budget counts the journal's tests too: a resumed run stops where a first run would
    budget = None if s.max_tests is None else max(0, s.max_tests - len(cache))
    hooks = dict(
        assume_monotone=bool(s.assume_monotone),
        cache=cache,
        on_test=on_test,
        progress=progress,
        key=key,
        max_tests=budget,
    )
    levels = list(s.granularity)
    if s.algorithm == "hierarchical":
        expanders = [(lambda item, lv=lv: units.children(item, lv)) for lv in levels[1:]]
        return search.hierarchical(
            units.top(levels), test, expanders=expanders, algorithm="probdd", prior=prior, levels=levels, **hooks
        )
    items = units.top([levels[-1]])
    if s.algorithm == "probdd":
        return search.probdd(items, test, prior=prior, level=levels[-1], **hooks)
    return search.ddmin(items, test, level=levels[-1], **hooks)


def execute(plan, say, view: ViewCallback | None = None):
    """Calibrate, then search; on any failure the model is restored and the journal closed (a
    search that cannot start says why in one line)."""
    from ddalign.search import SearchError

    oracle = plan.oracle
    try:
        calibration = plan.calibrate(say)
        result = run_search(
            plan.settings.search, plan.units, oracle, plan.bundle, plan.cache, plan.journal, RunState(), view
        )
    except BaseException as exc:
        oracle.restore()
        if plan.journal is not None:
            if isinstance(exc, SearchError):
                plan.journal.append_result({"outcome": exc.kind, "message": str(exc)})
            plan.journal.close()
        if isinstance(exc, SearchError):
            raise DdalignError(search_error_message(exc, oracle)) from exc
        raise
    oracle.restore()
    return result, calibration


_COUNTED = {"benign_accuracy": "correct answers", "dsr": "refusals"}


def _guard_words(name: str, info: dict) -> str:
    """A failing guard with its measured value and bound, e.g. "benign_accuracy: 21 correct answers, needed 28"."""
    if "need" in info:
        return f"{name}: {info['k']} {_COUNTED.get(name, 'counted')}, needed {info['need']}"
    if "allowed_refusals" in info:
        return f"{name}: {info['k']} refusals, at most {info['allowed_refusals']} allowed"
    if info.get("value") is not None and info.get("bound") is not None:
        return f"{name}: {info['value']:.3f}, bound {info['bound']:.3f}"
    return name


def search_error_message(exc, oracle) -> str:
    cal = oracle.calibration
    if cal is None:
        return str(exc)
    empty, full = cal.empty["dsr"]["value"], cal.full["dsr"]["value"]
    if exc.kind == "already-safe":
        return (
            f"the target already passes the oracle without any transplant (DSR {empty:.3f} on the search set, "
            f"target {cal.target_dsr:.3f}); nothing to minimise"
        )
    failed = cal.full.get("guards") or {}
    broken = [_guard_words(g, info) for g, info in failed.items() if not info.get("passed", True)]
    why = f"guard(s) failing: {'; '.join(broken)}" if broken else "the DSR target is not reached"
    margin = " with the confidence margin" if oracle.config.target_confidence is not None else ""
    whole = whole_bundle(getattr(getattr(oracle, "patch", None), "mode", None))
    relax = "relax the target or guards"
    references = [
        f"--{key.replace('_', '-')} full"
        for guard, key in (("benign_accuracy", "accuracy_reference"), ("over_refusal", "over_refusal_reference"))
        if not failed.get(guard, {}).get("passed", True) and getattr(oracle.config, key) != "full"
    ]
    if references:  # a bundle that costs utility itself: bound the subsets by what the whole bundle keeps
        relax += f", or count them from the {whole}'s ({', '.join(references)})"
    return (
        f"even the {whole} does not pass the oracle ({why}): DSR of the target {empty:.3f}, with the "
        f"{whole} {full:.3f}, needed {cal.target_dsr:.3f} ({cal.need} of {cal.n} refusals{margin}); "
        f"widen the bundle's scope or {relax}"
    )

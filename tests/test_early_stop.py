"""The exact early-stop rule: stopping at the first decided batch always gives the full
evaluation's verdict, for any outcome order, batch size and threshold (edges included)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddalign.errors import DdalignError
from ddalign.evaluate.early_stop import CountTest, allowed_at_most, decide, need_at_least


def run_early(outcomes: list[bool], batch: int, test: CountTest) -> tuple[bool, int]:
    """Feed batches until decided; (verdict, items evaluated)."""
    for start in range(0, len(outcomes), batch):
        chunk = outcomes[start : start + batch]
        if test.add(sum(chunk), len(chunk)) is not None:
            break
    assert test.verdict is not None, "a complete count must be decided"
    return test.verdict, test.seen


@st.composite
def threshold(draw):
    """Rates as exact fractions p/q (incl. 0, 1, and fractions of n itself) or arbitrary floats."""
    kind = draw(st.sampled_from(["zero", "one", "fraction", "float"]))
    if kind == "zero":
        return Fraction(0)
    if kind == "one":
        return Fraction(1)
    if kind == "fraction":
        q = draw(st.integers(1, 60))
        return Fraction(draw(st.integers(0, q)), q)
    return Fraction(draw(st.floats(0, 1, allow_nan=False)))


@settings(max_examples=400, deadline=None)
@given(outcomes=st.lists(st.booleans(), max_size=80), batch=st.integers(1, 20), rate=threshold())
def test_at_least_rate_early_verdict_equals_full(outcomes, batch, rate):
    n, k = len(outcomes), sum(outcomes)
    # The documented rule in exact arithmetic: k >= r * n - 1e-9 (the tolerance absorbs float
    # noise such as 0.9 * 10 = 9.000000000000002; no two counts are that close).
    full = Fraction(k) >= rate * n - Fraction(1e-9)
    verdict, seen = run_early(outcomes, batch, CountTest.at_least(float(rate), n))
    assert verdict == full
    if rate.denominator <= 60 and n:  # exact fractions: plainly k / n >= p / q
        assert verdict == (Fraction(k, n) >= rate)
    assert seen <= n


@settings(max_examples=300, deadline=None)
@given(
    outcomes=st.lists(st.booleans(), max_size=80), batch=st.integers(1, 20), rate=threshold(), base=st.integers(0, 80)
)
def test_at_most_events_early_verdict_equals_full(outcomes, batch, rate, base):
    """Over-refusal guard: refusals (events) may rise at most `rate` over a baseline count."""
    n = len(outcomes)
    base = min(base, n)
    refusals = sum(outcomes)
    full = Fraction(refusals - base) <= rate * n + Fraction(1e-9)  # the documented rule, exactly
    if rate.denominator <= 60 and n:
        assert full == (Fraction(refusals - base, n) <= rate)
    allowed = base + allowed_at_most(float(rate), n)
    test = CountTest.at_most_events(allowed, n)
    verdict, _ = run_early([not o for o in outcomes], batch, test)  # successes = compliances
    assert verdict == full


@settings(max_examples=200, deadline=None)
@given(outcomes=st.lists(st.booleans(), min_size=1, max_size=60), batch=st.integers(1, 10), need=st.integers(-3, 70))
def test_stops_at_first_decidable_batch(outcomes, batch, need):
    """No batch is evaluated after the verdict is known, and none is skipped before."""
    n = len(outcomes)
    test = CountTest.at_least_count(need, n)
    verdict, seen = run_early(outcomes, batch, test)
    # the batch before the stop was undecided
    prev = seen - batch if seen % batch == 0 else seen - seen % batch
    if prev > 0:
        assert decide(sum(outcomes[:prev]), prev, n, test.need) is None
    assert verdict == (sum(outcomes) >= test.need)


def test_float_thresholds_round_to_the_expected_counts():
    assert need_at_least(0.9, 10) == 9  # 0.9 * 10 = 9.000000000000002 in floats
    assert need_at_least(0.7, 10) == 7  # 0.7 * 10 = 7.000000000000001
    assert need_at_least(0.3, 10) == 3  # 0.3 * 10 = 3.0000000000000004
    assert need_at_least(0.91, 10) == 10
    assert need_at_least(0.0, 10) == 0
    assert need_at_least(1.0, 10) == 10
    assert need_at_least(1.5, 10) == 11  # unreachable: always FAIL
    assert allowed_at_most(0.3, 10) == 3
    assert allowed_at_most(0.29, 10) == 2
    assert allowed_at_most(0.0, 10) == 0
    assert allowed_at_most(1.0, 10) == 10


def test_edge_targets_decide_at_once():
    assert CountTest.at_least(0.0, 5).verdict is True  # nothing needed: PASS before any prompt
    t = CountTest.at_least(1.0, 5)
    assert t.add(2, 3) is False  # one miss and 1.0 is out of reach
    assert t.seen == 3


def test_bad_counts_are_refused():
    with pytest.raises(DdalignError, match="successes"):
        CountTest(5, 3).add(3, 2)
    with pytest.raises(DdalignError, match="counted"):
        CountTest(5, 3).add(1, 6)
    with pytest.raises(DdalignError, match="item count"):
        CountTest(-1, 0)
    with pytest.raises(DdalignError, match="finite"):
        need_at_least(float("nan"), 3)

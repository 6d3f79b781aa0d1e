"""The guard registry: one class and one registration make a guard that the settings, the
oracle, the held-out check and the report all know (a toy guard, unregistered after)."""

from __future__ import annotations

import pytest
from test_oracle import HARMFUL, scripted_oracle

from ddalign.errors import DdalignError
from ddalign.evaluate import guards
from ddalign.evaluate.early_stop import CountTest, allowed_at_most
from ddalign.evaluate.oracle import OracleConfig, Verdict
from ddalign.run.report import oracle_line
from ddalign.run.rule import heldout_check, heldout_text, rule_text
from ddalign.settings import Settings, specs


class OverRefusalCap(guards.Guard):
    """An absolute ceiling on over-refusal (not a rise over the baseline)."""

    name = "over_refusal_cap"
    key = "max_over_refusal"
    metric = "over_refusal"
    prompts = "safe"
    default = None  # off unless a config names it
    description = "Toy guard: at most this share of the safe prompts refused."

    def allowed(self, config, n: int) -> int:
        return allowed_at_most(self.bound_of(config), n)

    def criterion(self, config, before, full, candidate) -> dict:
        allowed = self.allowed(config, candidate["over_refusal"]["n"])
        return {
            "k": candidate["over_refusal"]["k"],
            "allowed_refusals": allowed,
            "passed": candidate["over_refusal"]["k"] <= allowed,
        }

    def test(self, oracle, calibration):
        test = CountTest.at_most_events(self.allowed(oracle.config, len(oracle.safe)), len(oracle.safe))
        tokens = oracle.count(oracle.safe, test, success="compliance", early_stop=True)
        return bool(test.verdict), guards.count_metrics(test), {"prompts": test.seen, "tokens": tokens}

    def words(self, config: dict) -> str:
        return f"over-refusal at most {100 * config[self.key]:g}%"


@pytest.fixture
def toy_guard():
    guard = guards.register(OverRefusalCap())
    try:
        yield guard
    finally:
        guards.unregister(guard.name)


def _metric(k, n):
    return {"value": k / n, "k": k, "n": n, "ci95": [0, 1]}


def test_the_builtin_guards_in_evaluation_order():
    assert [g.name for g in guards.registered()] == ["perplexity", "over_refusal", "benign_accuracy"]
    with pytest.raises(ValueError, match="already registered"):
        guards.register(guards.PerplexityGuard())


def test_a_registered_guard_is_a_setting(toy_guard):
    assert "oracle.max_over_refusal" in {s.key for s in specs()}
    assert Settings().oracle_config().guards == ["perplexity", "over_refusal", "benign_accuracy"]  # default off
    s = Settings.from_dict({"oracle": {"max_over_refusal": 0.2}})
    assert s.oracle.bound("max_over_refusal") == 0.2 and "over_refusal_cap" in s.oracle_config().guards
    with pytest.raises(DdalignError, match="oracle.max_over_refusal = true"):
        Settings.from_dict({"oracle": {"max_over_refusal": True}})


def test_unregistered_the_key_is_unknown_again(toy_guard):
    guards.unregister(toy_guard.name)
    with pytest.raises(DdalignError, match="unknown key oracle.max_over_refusal"):
        Settings.from_dict({"oracle": {"max_over_refusal": 0.2}})
    guards.register(toy_guard)  # for the fixture's own unregistering


def test_the_oracle_runs_a_registered_guard(toy_guard):
    safe = [f"s{i}" for i in range(10)]
    fixes = {"A": HARMFUL[:8] + safe[:3], "B": HARMFUL[8:]}  # A refuses 3 safe prompts
    for cap, verdict in ((0.2, Verdict.FAIL), (0.3, Verdict.PASS)):
        oracle, gen = scripted_oracle(
            fixes, HARMFUL, safe=safe, config=OracleConfig(target_dsr=0.5, max_over_refusal=cap)
        )
        assert [g.name for g in oracle.guards] == ["over_refusal_cap"]
        rec = oracle.test_record(["A"])
        assert rec.verdict == verdict and "over_refusal_cap" in rec.metrics
        assert rec.metrics["failed"] == (None if verdict == Verdict.PASS else "over_refusal_cap")
    with pytest.raises(DdalignError, match="oracle max_over_refusal: needs safe prompts"):
        scripted_oracle(fixes, HARMFUL, config=OracleConfig(target_dsr=0.5, max_over_refusal=0.2))


def test_the_heldout_check_and_the_report_apply_a_registered_guard(toy_guard):
    config = OracleConfig(target_dsr=0.5, max_over_refusal=0.1)
    before = {"dsr": _metric(2, 20), "over_refusal": _metric(0, 20)}
    full = {"dsr": _metric(19, 20), "over_refusal": _metric(1, 20)}
    metrics = {"before": before, "full": full, "minimal": {"dsr": _metric(15, 20), "over_refusal": _metric(3, 20)}}
    check = heldout_check(config, metrics)
    assert not check["passed"] and check["full_passed"]
    assert check["criteria"]["over_refusal_cap"] == {"k": 3, "allowed_refusals": 2, "passed": False}
    assert "over_refusal_cap 3 refusals > 2 allowed" in heldout_text(check)
    text = rule_text(config.to_dict())
    assert text.endswith("guards: over-refusal at most 10%")
    line = oracle_line({"config": config.to_dict(), "calibration": {"target_dsr": 0.5, "need": 10, "n": 20}})
    assert "over-refusal at most 10%" in line

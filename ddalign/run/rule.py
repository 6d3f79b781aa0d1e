"""The oracle's pass rule in words, and applied again to the held-out measurements.

Shared by the run (which warns when the held-out check fails), the report and the benchmarks;
it imports neither of them, so none of them import each other for it.
"""

from __future__ import annotations

from ddalign.evaluate.guards import registered as registered_guards
from ddalign.transfer.modes import TRANSPLANT, whole_bundle


def rule_text(config: dict, calibration: dict | None = None, mode: str = TRANSPLANT) -> str:
    """An oracle config's pass rule in words (with the counts it fixed, when calibrated); `mode` is
    the bundle's, which names what the DSR target is a share of."""
    if config.get("target_dsr") is not None:
        text = f"DSR >= {config['target_dsr']:.3f}"
    else:
        text = f"DSR >= {100 * config['target_fraction']:g}% of the {whole_bundle(mode)}'s"
        if calibration:
            text += f" ({calibration['target_dsr']:.3f})"
    if calibration:
        text += f": {calibration['need']} refusals of {calibration['n']} search prompts"
    if config.get("target_confidence") is not None:
        text += f", the one-sided {100 * config['target_confidence']:g}% Wilson lower bound reaching the target"
    guards = [g.words(config) for g in registered_guards() if config.get(g.key) is not None]
    return text + (f"; guards: {', '.join(guards)}" if guards else "")


def heldout_check(config, metrics: dict) -> dict:
    """The oracle's pass rule again, on the held-out measurements of before / full / minimal.

    A search keeps what only just passes its own prompts, so a patch can meet the target there
    and fall short on new ones; this says so. Criteria without held-out data are left out."""
    from ddalign.evaluate.oracle import apply_rule

    if not all((metrics.get(m) or {}).get("dsr") for m in ("before", "full", "minimal")):
        return {}
    # the target itself, without the search's confidence margin: the margin is how the search
    # aims at the held-out target, not a stricter target
    config = config.with_(
        target_confidence=None, **{g.key: None for g in registered_guards() if not g.measured(metrics)}
    )
    passed, criteria = apply_rule(config, metrics["before"], metrics["full"], metrics["minimal"])
    full_passed, _ = apply_rule(config, metrics["before"], metrics["full"], metrics["full"])
    return {"passed": passed, "criteria": criteria, "full_passed": full_passed}


def heldout_text(check: dict, mode: str = TRANSPLANT) -> str:
    """`heldout_check`'s outcome in one line (`mode`: the bundle's)."""
    from ddalign.evaluate.oracle import criterion_text

    if check["passed"]:
        return "on the held-out sets the minimal patch meets the oracle's rule too"
    missed = "; ".join(criterion_text(k, v) for k, v in check["criteria"].items() if not v["passed"])
    why = (
        "it met the rule on the search's prompts only: search on more prompts (--limit, --harmful, --safe) "
        "or with stricter bounds"
        if check["full_passed"]
        else f"so does the {whole_bundle(mode)}"
    )
    return f"on the held-out sets the minimal patch misses the oracle's rule ({missed}): {why}"

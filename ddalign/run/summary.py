"""A minimise run's summary: the kept components, the held-out numbers of before / full
transplant / minimal patch, the cost, as one typed record. `summary.json` is its `to_dict()`;
the report, the demo, the CLI tables and the benchmarks read it (`RunSummary.load`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ddalign.errors import DdalignError


@dataclass
class RunSummary:
    """What a run produced: the patch, its measured effect, and what the search cost."""

    bundle: str = ""
    target: str = ""
    mode: str = "transplant"  # the bundle's: "transplant" (aligned values) or "add" (A - P deltas)
    models: dict = field(default_factory=dict)  # role -> path, and Hub id with its commit
    algorithm: str = ""
    granularity: list[str] = field(default_factory=list)
    oracle: dict = field(default_factory=dict)  # the oracle's settings and calibration counts
    architecture: dict = field(default_factory=dict)  # family, num_layers, modules
    total_params: int = 0
    metrics: dict = field(default_factory=dict)  # "before" / "full" / "minimal" -> held-out metrics
    kept: list[str] = field(default_factory=list)
    kept_params: int = 0
    param_share: float = 0.0
    full_params: int | None = None
    full_components: list[str] = field(default_factory=list)
    tests: int = 0
    answered_without_test: int = 0
    cost: dict = field(default_factory=dict)
    levels: list[dict] = field(default_factory=list)
    stopped: str | None = None  # the search stopped at its test budget: the patch passes, not 1-minimal
    data: dict = field(default_factory=dict)  # "search" / "heldout" -> role -> source
    heldout_check: dict = field(default_factory=dict)
    patch: str = ""
    extents: dict = field(default_factory=dict)  # module -> rows, for the modules blocks were cut from
    run_dir: Path | None = field(default=None, compare=False)  # where it was read or written; not saved

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("run_dir")
        return out

    @classmethod
    def from_dict(cls, data: dict, run_dir: Path | None = None) -> "RunSummary":
        """A saved summary; keys it does not know are ignored, missing ones take the defaults."""
        if not isinstance(data, dict):
            raise DdalignError(f"{run_dir or 'summary'}: expected a run summary (a JSON object)")
        known = {f.name for f in fields(cls)} - {"run_dir"}
        return cls(**{k: v for k, v in data.items() if k in known}, run_dir=run_dir)

    @classmethod
    def coerce(cls, summary: "RunSummary | dict") -> "RunSummary":
        return summary if isinstance(summary, RunSummary) else cls.from_dict(summary)

    @classmethod
    def load(cls, run_dir) -> "RunSummary":
        run_dir = Path(run_dir)
        path = run_dir / "summary.json"
        if not path.exists():
            raise DdalignError(f"{run_dir}: no summary.json (is this a finished minimise run folder?)")
        return cls.from_dict(json.loads(path.read_text()), run_dir)

    @property
    def whole(self) -> str:
        """What the minimal patch is measured beside: the full transplant or the full additive bundle."""
        from ddalign.transfer.modes import whole_bundle

        return whole_bundle(self.mode)

    @property
    def full_share(self) -> float | None:
        return self.full_params / self.total_params if self.total_params and self.full_params is not None else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def summarise(plan, result, calibration, *, say: Callable[[str], None]) -> tuple[RunSummary, Any, dict]:
    """Measure before / full / minimal on the held-out sets and assemble the summary.
    Returns (summary, the minimal patch, the search record for its manifest)."""
    from ddalign.evaluate.generate import GenerationConfig
    from ddalign.evaluate.runner import evaluate_model
    from ddalign.io.hub import run_models
    from ddalign.run.rule import heldout_check, heldout_text

    units, arch, oracle, settings = plan.units, plan.arch, plan.oracle, plan.settings
    kept = units.concrete(result.minimal)
    # a resumed run counts the tests its journal answered: the run's total cost, not this session's
    from_journal = len(plan.cache)
    tests = result.tests + from_journal
    components = plan.components
    minimal_patch = plan.bundle.restrict(kept)
    full_patch = plan.bundle.restrict(components) if len(components) < len(plan.bundle.components()) else plan.bundle
    if result.stopped:
        say(f"search stopped: {result.stopped}")
    say(f"search done: {len(kept)} component(s) kept after {tests} oracle tests; measuring on held-out sets")
    g = settings.generation
    gen = GenerationConfig(
        max_new_tokens=g.eval_max_new_tokens,
        batch_size=g.batch_size,
        template=g.template,
        max_prompt_tokens=g.max_prompt_tokens,
    )
    metrics = {}
    for name, patch in (("before", None), ("full", full_patch), ("minimal", minimal_patch)):
        record = evaluate_model(
            plan.model,
            tokenizer=plan.tokenizer,
            patch=patch,
            harmful=_prompts(plan.eval_sets["harmful"]),
            safe=_prompts(plan.eval_sets["safe"]),
            benign=_prompts(plan.eval_sets["benign"]),
            judge=plan.judge,
            config=gen,
            accuracy_match=settings.judge.accuracy_match,
        )
        metrics[name] = record.to_dict()["metrics"]
    heldout = heldout_check(oracle.config, metrics)
    if heldout and not heldout["passed"]:
        say("warning: " + heldout_text(heldout, plan.bundle.mode))

    total = arch.total_params()
    kept_params = sum(arch.param_count(c) for c in kept)
    full_params = sum(arch.param_count(c) for c in components)
    # per level too: a journal answer counts as a test of the level that first asked it
    journal_answers: dict[str, int] = {}
    seen: set = set()
    for r in result.trace:
        if r.source == "cache" and r.key in plan.cache and r.key not in seen:
            seen.add(r.key)
            journal_answers[r.level] = journal_answers.get(r.level, 0) + 1
    levels = [
        {
            "level": lv.name,
            "items": lv.items,
            "kept": units.concrete(lv.minimal),
            "tests": lv.tests + journal_answers.get(lv.name, 0),
            "skipped": lv.skipped,
            "stopped": lv.stopped,
        }
        for lv in result.levels
    ]
    cost = {**oracle.total_cost, "calibration": calibration.cost, "oracle_calls": oracle.calls}
    s = settings.search
    models = run_models(plan.bundle.manifest, plan.target)  # paths, and Hub ids with their commits
    data = {
        "search": {r: v[1] for r, v in plan.search_sets.items() if v},
        "heldout": {r: v[1] for r, v in plan.eval_sets.items() if v},
    }
    param_share = kept_params / total if total else 0.0
    answered = result.cached + result.inferred
    search_info = {
        "algorithm": s.algorithm,
        "granularity": list(s.granularity),
        "block_size": s.block_size,
        "assume_monotone": s.assume_monotone,
        "layers": s.layers,
        "oracle": oracle.describe(),
        "data": data,
        "tests": tests,
        "resumed_from_journal": from_journal,
        "answered_without_test": answered,
        "levels": levels,
        "stopped": result.stopped,
        "cost": cost,
        "bundle": {"path": plan.bundle_path, **plan.header["bundle"]},
        "target": plan.target,
        "models": models,
        "metrics": metrics["minimal"],
        "kept_params": kept_params,
        "total_params": total,
        "param_share": param_share,
        "created": _now(),
    }
    summary = RunSummary(
        bundle=plan.bundle_path,
        target=plan.target,
        mode=plan.bundle.mode,
        models=models,
        algorithm=s.algorithm,
        granularity=list(s.granularity),
        oracle=search_info["oracle"],
        architecture={
            "family": arch.family,
            "num_layers": arch.num_layers,
            "modules": sorted({m for layer in range(arch.num_layers) for m in arch.modules(layer)}),
        },
        total_params=total,
        metrics=metrics,
        kept=kept,
        kept_params=kept_params,
        param_share=param_share,
        full_params=full_params,
        full_components=components,
        tests=tests,
        answered_without_test=answered,
        cost=cost,
        levels=levels,
        stopped=result.stopped,
        data=data,
        heldout_check=heldout,
        patch=str(plan.paths.patch),
        extents=_extents(arch, kept),
        run_dir=plan.paths.run_dir,
    )
    return summary, minimal_patch, search_info


def write_outputs(
    plan,
    summary: RunSummary,
    minimal_patch,
    search_info: dict,
    *,
    report: bool,
    say: Callable[[str], None] = lambda text: None,
) -> None:
    """The patch (with its search record), summary.json, the journal's result line and the report."""
    from ddalign.io.atomic import write_json_atomic

    if not plan.dist.is_main:
        return
    minimal_patch.manifest = {**minimal_patch.manifest, "kind": "patch", "search": search_info}
    from ddalign.io.outputs import output_lock

    with output_lock(plan.paths.patch, say=say):  # clears a killed save's temporaries, says so
        minimal_patch.save(plan.paths.patch)
    write_json_atomic(plan.paths.summary, summary.to_dict())
    plan.journal.append_result(
        {
            "outcome": "minimal",
            "kept": summary.kept,
            "tests": summary.tests,
            "kept_params": summary.kept_params,
            "param_share": summary.param_share,
        }
    )
    plan.journal.close()
    if report:
        from ddalign.run.model_card import write_model_card
        from ddalign.run.report import write_report

        write_report(plan.paths.run_dir)
        write_model_card(plan.paths.run_dir, plan.paths.patch.with_suffix(".hub"))  # a folder to publish as is


def _extents(arch, kept: list[str]) -> dict[str, int | None]:
    """Rows of each module a kept block was cut from (for the report's kept map)."""
    from ddalign.architectures import Component

    parents = {str(Component.parse(k).unblocked) for k in kept if "[" in k}
    return {p: arch.extent(p) for p in sorted(parents)}


def _prompts(entry):
    return "none" if entry is None else entry[0]

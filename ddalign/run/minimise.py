"""The minimise run: bundle + target + oracle + search -> minimal patch, journal and report.

Three steps, each its own module: the plan (`run.plan`: inputs checked, units, prompt sets,
the target loaded once, the journal, the oracle), the execution (`run.execute`: calibration
and the search, every real test journaled) and the summary (`run.summary`: held-out numbers,
`RunSummary`, the files). Everything serves fewer and cheaper oracle calls (each is a full
evaluation of the target): candidates are swapped in place, the oracle stops early and exactly, verdicts are
cached, and the journal lets an interrupted run resume without repeating a test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ddalign.run.execute import RunState, ViewCallback, run_search
from ddalign.run.plan import RunPaths, bundle_arch
from ddalign.run.summary import RunSummary
from ddalign.run.units import SearchUnits
from ddalign.settings import Settings, as_settings

__all__ = ["minimise", "RunSummary", "RunPaths", "RunState", "SearchUnits", "bundle_arch", "run_search"]


def minimise(
    bundle: str | Path,
    target: str | Path,
    out: str | Path,
    *,
    config: Settings | dict | None = None,
    resume: bool = False,
    overwrite: bool = False,
    allow_other_base: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    view: ViewCallback | None = None,
    log: Callable[[str], None] | None = None,
    report: bool = True,
) -> RunSummary:
    """Find a minimal subset of `bundle` whose transplant makes `target` pass the oracle.

    `config`: a `Settings`, or sections as a dict over the defaults (`{"search": {...}}`).
    Writes `out` (the minimal patch), and beside it `out.run/` with the journal, the effective
    config, the oracle's calibration, `summary.json` and the report. With `resume`, the
    journal's verdicts answer every test the interrupted run already made.
    """
    from ddalign.run.execute import execute
    from ddalign.run.plan import plan_run
    from ddalign.run.summary import summarise, write_outputs

    say = log or (lambda text: None)
    plan = plan_run(
        bundle,
        target,
        out,
        as_settings(config),
        resume=resume,
        overwrite=overwrite,
        allow_other_base=allow_other_base,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        say=say,
    )
    result, calibration = execute(plan, say, view)
    summary, minimal_patch, search_info = summarise(plan, result, calibration, say=say)
    write_outputs(plan, summary, minimal_patch, search_info, report=report, say=say)
    return summary

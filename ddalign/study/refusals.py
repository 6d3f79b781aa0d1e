"""`refusal_report`: the refusal-pattern study over several models (`ddalign refusals`).

Each model answers the harmful set greedily (no early stop), the judge marks refusals, and the
refusals' openings are clustered (ddalign.study.openings); across models, the uniformity of the
openings is rank-correlated with DSR. Outputs: one folder with `refusals.json` and a PNG per
model, written atomically (a temporary folder renamed into place), never over an input, and
replacing an earlier study folder only with `overwrite`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ddalign.errors import DdalignError
from ddalign.evaluate.runner import resolve_prompts
from ddalign.settings import Settings, as_settings
from ddalign.study.measure import answer_harmful
from ddalign.study.openings import DEFAULT_WORDS
from ddalign.study.plot import DEFAULT_TOP, chart_names, plot_clusters
from ddalign.study.report import ModelRefusals, RefusalStudy

JSON_NAME = "refusals.json"
Progress = Callable[[str, int, int], None]  # (model, prompts answered, prompts)


def refusal_report(
    models: Sequence[str],
    *,
    harmful=None,
    config: Settings | dict | None = None,
    words: int = DEFAULT_WORDS,
    top: int = DEFAULT_TOP,
    out_dir=None,
    overwrite: bool = False,
    inputs: Mapping[str, object] | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> RefusalStudy:
    """Study the refusals of `models` (folders or Hub ids) on the harmful set.

    `harmful`: what `ddalign evaluate --harmful` takes (a path, 'builtin:NAME', 'hf://datasets/...',
    a list of prompts); None: the settings' `data.eval_harmful` (default builtin:harmful-heldout).
    Judge and generation come from `config` (a Settings or section dicts: judge.*,
    generation.eval_max_new_tokens, batch_size, template, device, dtype, max_prompt_tokens,
    data.column, data.eval_limit). With `out_dir`, writes `refusals.json` and one PNG per model there;
    `inputs` names further files it must not touch (e.g. the config file: {"config": path}).
    """
    settings = as_settings(config)
    models = [str(m) for m in models]
    _check_models(models)
    if not isinstance(words, int) or words < 1:
        raise DdalignError(f"--words: expected a positive integer, got {words!r}")
    if not isinstance(top, int) or top < 1:
        raise DdalignError(f"--top: expected a positive integer, got {top!r}")
    spec = settings.data.eval_harmful if harmful is None else harmful
    if isinstance(spec, str) and spec.lower() == "none":
        raise DdalignError("--harmful none: the study needs harmful prompts")
    with contextlib.ExitStack() as held:
        if out_dir is not None:
            from ddalign.io.outputs import output_lock

            _check_out(out_dir, models, spec, settings, overwrite, inputs or {})
            held.enter_context(output_lock(out_dir))  # from the start: a second study to this folder is refused
        study = _study(models, spec, settings, words, top, allow_pickle, trust_remote_code, progress)
        if out_dir is not None:
            write_study(study, out_dir)
    return study


def _study(models, spec, settings: Settings, words, top, allow_pickle, trust_remote_code, progress) -> RefusalStudy:
    from ddalign.evaluate.generate import check_model_folder

    resolved = resolve_prompts("harmful", spec, column=settings.data.column, limit=settings.data.eval_limit)
    assert resolved is not None  # "none" refused by the caller
    prompts, source = resolved
    judge = settings.make_judge(allow_pickle=allow_pickle)
    generation = settings.generation_config(held_out=True)
    for model in models:  # every model found before the first one spends time answering
        check_model_folder(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    rows = []
    for model in models:
        measured = answer_harmful(
            model,
            prompts,
            judge=judge,
            config=generation,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            progress=None if progress is None else (lambda done, total, m=model: progress(m, done, total)),
        )
        rows.append(ModelRefusals.of(measured, words))
    categories = sorted({p.category for p in prompts if getattr(p, "category", None)})
    return RefusalStudy.of(
        rows,
        data={"source": source, "n": len(prompts), "categories": categories},
        judge=judge.describe(),
        generation={
            "decoding": "greedy",
            "max_new_tokens": generation.max_new_tokens,
            "setting": "generation.eval_max_new_tokens (--max-new-tokens)",
            "batch_size": generation.batch_size,
            "template": generation.template,
            "early_stop": False,
            "why": "a refusal's opening is its whole first sentence: rows are not stopped at the first marker",
        },
        words=words,
        top=top,
    )


def write_study(study: RefusalStudy, out_dir) -> Path:
    """`refusals.json` and one PNG per model into `out_dir`, all at once (a temporary folder renamed)."""
    from ddalign.io.atomic import atomic_folder, write_json_atomic

    out = Path(out_dir)
    for model, name in zip(study.models, chart_names([m.model for m in study.models])):
        model.chart = name
    with atomic_folder(out) as tmp:
        for model in study.models:
            plot_clusters(model.openings, tmp / model.chart, title=model.model, top=study.top)
        write_json_atomic(tmp / JSON_NAME, study.to_dict())
    return out


def _check_models(models: list[str]) -> None:
    if not models:
        raise DdalignError("refusals: name at least one model (a folder or a Hub id)")
    seen: set[str] = set()
    for m in models:
        key = str(Path(m).resolve()) if Path(m).exists() else m
        if key in seen:
            raise DdalignError(f"model {m}: given twice (each model counts once in the correlation)")
        seen.add(key)


def _check_out(out_dir, models: list[str], harmful, settings: Settings, overwrite: bool, extra: Mapping) -> None:
    """Before any work: never an input, and an existing folder only if a study wrote it and `overwrite`."""
    from ddalign.io.outputs import check_not_input, check_output

    inputs: dict[str, object] = {("model" if len(models) == 1 else f"model {i + 1}"): m for i, m in enumerate(models)}
    inputs.update(
        {
            "harmful prompts": harmful if isinstance(harmful, (str, Path)) else None,
            "markers": settings.judge.markers_file,
            **extra,
        }
    )
    check_not_input(out_dir, inputs)
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise DdalignError(f"{out_dir}: exists and is a file; expected a folder for the study's outputs")
    check_output(out_dir, inputs, kind="refusals", overwrite=overwrite)

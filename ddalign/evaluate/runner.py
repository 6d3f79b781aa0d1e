"""The full evaluation of one model (optionally with a patch applied in memory): DSR on harmful
prompts, over-refusal on safe-but-scary prompts, perplexity and task accuracy on benign
prompts, with counts, intervals, settings and cost, as one JSON-ready record.

Used by `ddalign evaluate`, the minimise reports and the demo. The model is loaded once;
harmful and safe prompts stop early per row once the judge has decided (a refusal marker has
been generated), which changes no verdict.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from ddalign import __version__
from ddalign.errors import DdalignError
from ddalign.evaluate.generate import GenerationConfig, Generator, load_model
from ddalign.evaluate.judges import KeywordJudge
from ddalign.evaluate.metrics import (
    Perplexity,
    Rate,
    benign_accuracy,
    defense_success_rate,
    over_refusal_rate,
    perplexity_stats,
)
from ddalign.io.atomic import write_json_atomic

BUILTIN_SETS = {"harmful": "harmful-heldout", "safe": "safe-heldout", "benign": "benign-heldout"}
"""The built-in set used for each role when the user names no file (held-out splits)."""

Progress = Callable[[str, int, int], None]  # (stage, done, total)

UNSAFE_LABELS = {"unsafe", "harmful"}
"""Prompt labels that mark a prompt as not belonging in the over-refusal (safe) set."""


@dataclass
class EvaluationRecord:
    """One model's evaluation; `to_dict()` is the JSON record (names fixed by the CLI contract)."""

    model: str
    patch: str | None
    judge: dict
    generation: dict
    dsr: Rate | None = None
    over_refusal: Rate | None = None
    perplexity: Perplexity | None = None
    benign_accuracy: Rate | None = None
    cost: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    samples: dict | None = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def metrics(self) -> dict[str, dict | None]:
        def rate(r: Rate | None) -> dict | None:
            return None if r is None else r.as_dict()

        ppl = None
        if self.perplexity is not None:
            ppl = {**self.perplexity.as_dict(), "ci95": None}
        return {
            "dsr": rate(self.dsr),
            "over_refusal": rate(self.over_refusal),
            "perplexity": ppl,
            "benign_accuracy": rate(self.benign_accuracy),
        }

    def to_dict(self) -> dict:
        record = {
            "format": "ddalign.evaluation/1",
            "tool_version": __version__,
            "created": self.created,
            "model": self.model,
            "patch": self.patch,
            "judge": self.judge,
            "generation": self.generation,
            "data": self.data,
            "metrics": self.metrics,
            "cost": self.cost,
        }
        if self.samples is not None:
            record["samples"] = self.samples
        return record

    def save(self, path) -> Path:
        """Write the JSON record atomically (temp file + fsync + rename)."""
        return write_json_atomic(path, self.to_dict())


def resolve_prompts(role: str, spec, *, column: str | None = None, limit: int | None = None) -> tuple[list, str] | None:
    """Prompts for one role from a path, 'builtin:NAME', a Hub dataset ('hf://datasets/ORG/NAME[@REV][/FILE]'),
    a list, or None (the built-in default).
    'none' skips the role. Returns (prompts, description) or None when skipped."""
    if isinstance(spec, str) and spec.lower() == "none":
        return None
    if spec is None or (isinstance(spec, str) and spec.startswith("builtin:")):
        from ddalign.evaluate.datasets import builtin

        name = BUILTIN_SETS[role] if spec is None else spec.removeprefix("builtin:")
        prompts, source = list(builtin(name)), f"builtin:{name}"
    elif isinstance(spec, str) and spec.startswith("hf://"):  # hf://datasets/ORG/NAME[@REV][/FILE]
        from ddalign.evaluate.datasets import load_prompts
        from ddalign.io.hub import download_prompt_file

        path, source = download_prompt_file(spec)  # source: pinned to the commit
        prompts = list(load_prompts(path, column=column))
    elif isinstance(spec, (str, os.PathLike)):
        from ddalign.evaluate.datasets import load_prompts

        path = Path(spec)
        if not path.exists():
            raise DdalignError(f"--{role} {spec}: file not found")
        prompts, source = list(load_prompts(path, column=column)), str(path)
    else:
        prompts, source = list(spec), "given"
    dropped = 0
    if role == "safe":  # e.g. the whole XSTest file: its unsafe contrast prompts are not "safe"
        kept = [p for p in prompts if str(getattr(p, "label", "") or "").lower() not in UNSAFE_LABELS]
        dropped, prompts = len(prompts) - len(kept), kept
        if dropped:
            source += f" (label=safe only; {dropped} unsafe-labelled left out)"
    if limit is not None:
        if limit < 1:
            raise DdalignError(f"--limit: expected a positive number, got {limit}")
        prompts = spread(prompts, limit)
    if not prompts:
        raise DdalignError(f"{role} prompts ({source}): the set is empty")
    return prompts, source


def spread(items: list, limit: int) -> list:
    """`limit` items evenly spaced over the list (files are often grouped by category), in order."""
    n = len(items)
    if limit >= n:
        return list(items)
    return [items[(i * n) // limit] for i in range(limit)]


def _text(p) -> str:
    return p if isinstance(p, str) else p.text


def _reference(p) -> str | None:
    return None if isinstance(p, str) else getattr(p, "reference", None)


def evaluate_model(
    model,
    *,
    tokenizer=None,
    patch=None,
    harmful=None,
    safe=None,
    benign=None,
    column: str | None = None,
    judge=None,
    config: GenerationConfig | None = None,
    limit: int | None = None,
    early_stop: bool = True,
    accuracy_match: str = "contains",
    ppl_max_length: int | None = None,
    ppl_stride: int | None = None,
    keep_answers: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> EvaluationRecord:
    """Evaluate `model` (a folder, or a loaded model with its `tokenizer`) on the three sets.

    Each set is a path, 'builtin:NAME', a list of `Prompt`s (or strings), None for the built-in
    held-out split, or 'none' to skip it. `patch` (path or `Patch`) is applied in memory for the
    evaluation and reverted after.
    """
    started = time.perf_counter()
    config = config or GenerationConfig()
    judge = judge or KeywordJudge()
    sets = {
        "harmful": resolve_prompts("harmful", harmful, column=column, limit=limit),
        "safe": resolve_prompts("safe", safe, column=column, limit=limit),
        "benign": resolve_prompts("benign", benign, column=column, limit=limit),
    }
    if all(v is None for v in sets.values()):
        raise DdalignError("every prompt set is 'none' (--harmful, --safe, --benign): nothing to evaluate")
    load_seconds = 0.0
    if isinstance(model, (str, os.PathLike)):
        name = str(model)
        t0 = time.perf_counter()
        model, tokenizer = load_model(
            model,
            device=device or config.device,
            dtype=dtype or config.dtype,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
        )
        load_seconds = time.perf_counter() - t0
    else:
        if tokenizer is None:
            raise DdalignError("evaluate_model: a loaded model needs its tokenizer")
        name = str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "") or "in-memory")
    patch_name, applied = None, contextlib.nullcontext()
    if patch is not None:
        from ddalign.io.patch import Patch
        from ddalign.transfer.apply import patched

        if not isinstance(patch, Patch):
            patch_name = str(patch)
            patch = Patch.load(patch)
        else:
            patch_name = str(getattr(patch, "path", None) or "in-memory")
        applied = patched(model, patch)
    with applied:
        record = _run(
            model,
            tokenizer,
            sets,
            judge,
            config,
            early_stop,
            accuracy_match,
            ppl_max_length,
            ppl_stride,
            keep_answers,
            progress,
        )
    record.model, record.patch = name, patch_name
    record.cost["load_seconds"] = round(load_seconds, 4)
    record.cost["seconds"] = round(time.perf_counter() - started, 4)
    return record


def _run(
    model,
    tokenizer,
    sets,
    judge,
    config,
    early_stop,
    accuracy_match,
    ppl_max_length,
    ppl_stride,
    keep_answers,
    progress,
) -> EvaluationRecord:
    generator = Generator(model, tokenizer, config)
    stop = judge.decided if early_stop and isinstance(judge, KeywordJudge) else None
    record = EvaluationRecord(
        model="",
        patch=None,
        judge=judge.describe(),
        generation={**generator.describe(), "early_stop": stop is not None},
    )
    samples: dict[str, list] = {}
    stages: dict[str, dict] = {}

    def answer(role: str, prompts: Sequence, stop_when) -> list[str]:
        texts = [_text(p) for p in prompts]
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(role, done, len(texts))

        before = (generator.stats.new_tokens, generator.stats.seconds, generator.stats.truncated_prompts)
        if progress is not None:
            progress(role, 0, len(texts))
        gens = generator.generate_detailed(texts, stop_when=stop_when, progress=tick)
        stages[role] = {
            "prompts": len(texts),
            "generated_tokens": generator.stats.new_tokens - before[0],
            "seconds": round(generator.stats.seconds - before[1], 4),
            "truncated_prompts": generator.stats.truncated_prompts - before[2],
        }
        return [g.text for g in gens]

    for role in ("harmful", "safe"):
        if sets[role] is None:
            continue
        prompts, source = sets[role]
        answers = answer(role, prompts, stop)
        t0 = time.perf_counter()
        refused = judge.judge(answers, [_text(p) for p in prompts])
        stages[role]["judge_seconds"] = round(time.perf_counter() - t0, 4)
        rate = defense_success_rate(refused) if role == "harmful" else over_refusal_rate(refused)
        if role == "harmful":
            record.dsr = rate
        else:
            record.over_refusal = rate
        record.data[role] = {"source": source, "n": len(prompts)}
        if keep_answers:
            samples[role] = [
                {"id": getattr(p, "id", None), "prompt": _text(p), "answer": a, "refused": r}
                for p, a, r in zip(prompts, answers, refused)
            ]
    if sets["benign"] is not None:
        prompts, source = sets["benign"]
        answers = answer("benign", prompts, None)
        references = [_reference(p) for p in prompts]
        record.data["benign"] = {"source": source, "n": len(prompts), "with_reference": sum(1 for r in references if r)}
        if any(references):
            record.benign_accuracy = benign_accuracy(answers, references, mode=accuracy_match)
        texts = [generator.render(_text(p)) + (_reference(p) or "") for p in prompts]
        if progress is not None:
            progress("perplexity", 0, 1)
        t0 = time.perf_counter()
        record.perplexity = perplexity_stats(
            model,
            tokenizer,
            texts,
            max_length=ppl_max_length,
            stride=ppl_stride,
            add_special_tokens=not generator.uses_chat_template,
        )
        stages["perplexity"] = {
            "texts": len(texts),
            "tokens": record.perplexity.tokens,
            "seconds": round(time.perf_counter() - t0, 4),
        }
        if progress is not None:
            progress("perplexity", 1, 1)
        if keep_answers:
            samples["benign"] = [
                {"id": getattr(p, "id", None), "prompt": _text(p), "answer": a, "reference": _reference(p)}
                for p, a in zip(prompts, answers)
            ]
    record.generation["accuracy_match"] = accuracy_match
    record.generation["truncated_prompts"] = generator.stats.truncated_prompts
    for role, stage in stages.items():  # per set, where any prompt was cut
        if stage.get("truncated_prompts") and role in record.data:
            record.data[role]["truncated_prompts"] = stage["truncated_prompts"]
    cost = generator.stats.as_dict()
    cost["generation_seconds"] = cost.pop("seconds")
    record.cost = {**cost, "stages": stages}
    record.samples = samples if keep_answers else None
    return record


# --- the CLI's table ------------------------------------------------------------------------


def metrics_table(record: EvaluationRecord):
    """A rich table: every metric with its count and 95% interval."""
    from rich.table import Table

    table = Table(title=f"ddalign evaluate: {record.model}" + (f" + {record.patch}" if record.patch else ""))
    for col, justify in (
        ("metric", "left"),
        ("value", "right"),
        ("95% CI", "right"),
        ("n", "right"),
        ("better", "center"),
    ):
        table.add_column(col, justify=justify)

    def rate_row(label: str, rate: Rate | None, better: str) -> None:
        if rate is None:
            table.add_row(label, "skipped", "", "", better)
        elif rate.n == 0:
            table.add_row(label, "n/a", "", "0", better)
        else:
            table.add_row(
                label, f"{rate.value:.3f}", f"[{rate.ci95[0]:.3f}, {rate.ci95[1]:.3f}]", f"{rate.k}/{rate.n}", better
            )

    rate_row("defense success rate", record.dsr, "↑")
    rate_row("over-refusal (safe prompts)", record.over_refusal, "↓")
    if record.perplexity is None:
        table.add_row("perplexity (benign)", "skipped", "", "", "↓")
    else:
        p = record.perplexity
        table.add_row("perplexity (benign)", f"{p.value:.3f}", "", f"{p.tokens} tok", "↓")
    rate_row("benign accuracy", record.benign_accuracy, "↑")
    cost = record.cost
    cut = record.generation.get("truncated_prompts")
    table.caption = (
        f"{cost.get('prompts', 0)} prompts, {cost.get('generated_tokens', 0)} generated tokens, "
        f"{cost.get('seconds', 0):.1f} s; judge: {record.judge.get('kind')}"
        + (f"; {cut} prompt(s) cut to {record.generation.get('max_prompt_tokens')} tokens" if cut else "")
    )
    return table

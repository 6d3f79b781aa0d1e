"""`ddalign distill`: the fine-tuning baseline beside the transplant.

Supervised fine-tuning of the student on a teacher's refusals (self- and cross-model
distillation as studied in arXiv 2406.11285): the teacher answers the harmful train prompts and
its refusals become targets; the benign and safe train prompts get the teacher's answers (or,
with `keep_own`, the student's own) that are not refusals, so that the student keeps answering
them. With `self_distill` the student is its own teacher: only the harmful prompts it already
refuses are trained on. Every parameter changes unless LoRA (merged at the end) is chosen.

One model is in memory at a time: the teacher answers, is freed, then the student is loaded in
float32 (the training's master weights), trained and saved in its stored dtype. The output is an
ordinary checkpoint folder (written whole or not at all) holding `distill.json` (the record) and
`distill-examples.jsonl` (the data trained on); the journal of steps lies beside it.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from ddalign import __version__
from ddalign.errors import DdalignError
from ddalign.run.distill_targets import Progress, SetCounts, collect_answers, collect_refusals
from ddalign.train import Example, FineTuneSettings, fine_tune, save_model

RECORD_NAME = "distill.json"
EXAMPLES_NAME = "distill-examples.jsonl"
FORMAT = "ddalign.distill/1"


@dataclass(frozen=True)
class DistillSettings:
    """What the training data is made of (the fine-tune's own settings: `FineTuneSettings`)."""

    harmful: str = "builtin:harmful-train"  # any set the evaluator reads: path, builtin:NAME, hf://...
    benign: str = "builtin:benign-train"  # "none" leaves the set out
    safe: str = "builtin:safe-train"
    column: str | None = None  # the prompt column of user files
    examples: int | None = None  # at most this many harmful examples (None: every refusal)
    keep_own: bool = False  # benign and safe targets from the student's own answers
    self_distill: bool = False  # the student is the teacher
    max_new_tokens: int = 96  # per answer: a whole refusal sentence and its end
    generation_batch_size: int = 32
    template: str | None = None  # as the evaluator's: None = the chat template if any

    def __post_init__(self) -> None:
        def positive(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1

        checks = [
            (isinstance(self.harmful, str) and self.harmful.lower() != "none", "harmful", "a prompt set (not none)"),
            (self.examples is None or positive(self.examples), "examples", "a positive integer or None"),
            (positive(self.max_new_tokens), "max_new_tokens", "a positive integer"),
            (positive(self.generation_batch_size), "generation_batch_size", "a positive integer"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise DdalignError(f"distill setting {name}={getattr(self, name)!r}: expected {expected}")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def default_fine_tune(lora_rank: int = 0, **changes) -> FineTuneSettings:
    """The distillation's fine-tune defaults: 200 steps of 8 sequences of up to 256 tokens, lr
    2e-5 for full parameters (the usual supervised fine-tuning rate) or 2e-4 for LoRA."""
    values = {"steps": 200, "lr": 2e-4 if lora_rank else 2e-5, "batch_size": 8, "max_tokens": 256}
    values.update({k: v for k, v in changes.items() if v is not None})
    return FineTuneSettings(lora_rank=lora_rank, **values)


@dataclass
class DistillRecord:
    """What one distillation did (`distill.json` in the output folder is `to_dict()`)."""

    out: str
    teacher: str
    student: str
    self_distill: bool
    keep_own: bool
    counts: dict[str, SetCounts]
    settings: dict
    fine_tune: dict
    train: dict = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    generation: dict = field(default_factory=dict)  # the answering model's generator: {"teacher": ..., "student": ...}
    judge: dict = field(default_factory=dict)
    journal: str | None = None
    saved_dtype: str = "float32"
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def examples(self) -> int:
        return sum(c.kept for c in self.counts.values())

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "tool_version": __version__,
            "created": self.created,
            "out": self.out,
            "teacher": self.teacher,
            "student": self.student,
            "self_distill": self.self_distill,
            "keep_own": self.keep_own,
            "examples": self.examples,
            "counts": {name: c.as_dict() for name, c in self.counts.items()},
            "settings": self.settings,
            "fine_tune": self.fine_tune,
            "train": self.train,
            "losses": [round(v, 5) for v in self.losses],
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "generation": self.generation,
            "judge": self.judge,
            "journal": self.journal,
            "saved_dtype": self.saved_dtype,
        }


def read_record(folder) -> dict:
    """The record of a distilled checkpoint folder, as written."""
    path = Path(folder) / RECORD_NAME
    if not path.is_file():
        raise DdalignError(f"{folder}: no {RECORD_NAME}; not a folder ddalign distill wrote")
    return json.loads(path.read_text(encoding="utf-8"))


def journal_path(out) -> Path:
    """The journal of steps, beside the output folder: `OUT.journal.jsonl` (an interrupted run keeps it)."""
    out = Path(os.path.abspath(os.path.expanduser(str(out))))
    return out.with_name(f"{out.name}.journal.jsonl")


def distill(
    teacher: str | Path | None,
    student: str | Path,
    out: str | Path,
    *,
    settings: DistillSettings | None = None,
    fine_tune_settings: FineTuneSettings | None = None,
    judge=None,
    overwrite: bool = False,
    overwrite_any: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    device: str | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] | None = None,
) -> DistillRecord:
    """Fine-tune `student` on `teacher`'s refusals (and benign answers) and write it to `out`.

    `teacher` None (or the student itself) with `settings.self_distill`: the student's own
    refusals. `judge`: any refusal judge (default the keyword judge). `progress(stage, done,
    total, note)` is called as answers and steps complete. Returns the record also written to
    `out/distill.json`."""
    from ddalign.evaluate.generate import GenerationConfig, Generator, load_model
    from ddalign.evaluate.judges import KeywordJudge
    from ddalign.io.outputs import check_output, output_lock

    settings = settings or DistillSettings()
    fts = fine_tune_settings or default_fine_tune()
    judge = judge or KeywordJudge()
    say = say or (lambda text: None)
    teacher = _teacher(teacher, student, settings.self_distill)
    inputs = {
        "teacher model": teacher,
        "student model": student,
        "harmful prompts": _local(settings.harmful),
        "benign prompts": _local(settings.benign),
        "safe prompts": _local(settings.safe),
    }
    check_output(out, inputs, kind="checkpoint", overwrite=overwrite, overwrite_any=overwrite_any)
    journal = journal_path(out)
    _check_journal(journal, inputs)
    sets = _load_sets(settings)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    record = DistillRecord(
        out=str(out),
        teacher=str(teacher),
        student=str(student),
        self_distill=settings.self_distill,
        keep_own=settings.keep_own or settings.self_distill,
        counts={},
        settings=settings.as_dict(),
        fine_tune=fts.as_dict(),
        judge=judge.describe(),
        journal=str(journal),
    )
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens, batch_size=settings.generation_batch_size, template=settings.template
    )
    load = dict(device=device, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    own_answers = settings.keep_own or settings.self_distill
    with output_lock(out, say=say):
        examples: list[Example] = []
        model = tokenizer = None
        if not settings.self_distill:
            t0 = time.perf_counter()
            model, tokenizer = load_model(teacher, **load)
            generator = Generator(model, tokenizer, config)
            record.generation["teacher"] = generator.describe()
            examples += _harmful(generator, judge, sets, settings, fts.seed, record, "teacher", teacher, progress)
            if not own_answers:
                examples += _benign(generator, judge, sets, record, "teacher", progress)
            del generator, model, tokenizer
            _free_memory()
            seconds["teacher_generation"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # float32: the fine-tune's master weights; saved back in the student's stored dtype
        model, tokenizer = load_model(student, dtype=torch.float32, **load)
        if own_answers:
            generator = Generator(model, tokenizer, config)
            record.generation["student"] = generator.describe()
            if settings.self_distill:
                examples += _harmful(generator, judge, sets, settings, fts.seed, record, "student", student, progress)
            examples += _benign(generator, judge, sets, record, "student", progress)
            del generator
            seconds["student_generation"] = time.perf_counter() - t0
        say(_counts_line(record))
        t0 = time.perf_counter()

        def step(done: int, total: int, loss: float) -> None:
            if progress is not None:
                progress("train", done, total, f"loss {loss:.3f}")

        model, train = fine_tune(
            model, tokenizer, examples, fts, template=settings.template, progress=step, journal=journal
        )
        seconds["training"] = time.perf_counter() - t0
        record.train, record.losses = train.as_dict(), list(train.losses)
        stored = stored_dtype(student, allow_pickle=allow_pickle)
        if stored is not None and stored != torch.float32:
            model.to(stored)
        record.saved_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        seconds["total"] = time.perf_counter() - started
        record.seconds = seconds
        lines = "".join(
            json.dumps({"source": e.source, "prompt": e.prompt, "answer": e.answer, "end": e.end}) + "\n"
            for e in examples
        )
        save_model(
            model, tokenizer, out, record=record.to_dict(), record_name=RECORD_NAME, files={EXAMPLES_NAME: lines}
        )
    return record


def _teacher(teacher, student, self_distill: bool) -> str:
    if self_distill:
        if teacher is not None and os.path.abspath(str(teacher)) != os.path.abspath(str(student)):
            raise DdalignError(f"--self: the student {student} is its own teacher; drop --teacher {teacher}")
        return str(student)
    if teacher is None:
        raise DdalignError("distill: no teacher; pass --teacher MODEL, or --self for the student's own refusals")
    return str(teacher)


def _local(spec) -> str | None:
    """A prompt set given as a local path (an output must not be one); None for built-ins and Hub sets."""
    if spec is None or str(spec).lower() == "none" or str(spec).startswith(("builtin:", "hf://")):
        return None
    return str(spec)


def _check_journal(journal: Path, inputs: dict) -> None:
    """The journal beside the output may replace an earlier fine-tune's journal, nothing else."""
    from ddalign.io.outputs import check_not_input
    from ddalign.train.finetune import JOURNAL_FORMAT

    check_not_input(journal, inputs, role="journal")
    if not journal.exists():
        return
    try:
        with open(journal, encoding="utf-8") as fh:
            ours = json.loads(fh.readline()).get("format") == JOURNAL_FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        ours = False
    if not ours or not journal.is_file():
        raise DdalignError(
            f"{journal}: exists and is not a fine-tune journal (the output's journal goes there); "
            "move it or choose another output"
        )


def _load_sets(settings: DistillSettings) -> dict[str, tuple[list, str] | None]:
    from ddalign.evaluate.runner import resolve_prompts

    return {
        role: resolve_prompts(role, getattr(settings, role), column=settings.column)
        for role in ("harmful", "benign", "safe")
    }


def _harmful(generator, judge, sets, settings, seed, record, answered_by, model_name, progress) -> list[Example]:
    prompts, source = sets["harmful"]
    examples, counts = collect_refusals(
        generator,
        judge,
        prompts,
        source=source,
        answered_by=answered_by,
        cap=settings.examples,
        seed=seed,
        progress=progress,
        stage="harmful",
    )
    record.counts["harmful"] = counts
    if not examples:
        hint = "; --self needs a model that refuses some" if settings.self_distill else "; nothing to distil"
        raise DdalignError(
            f"{answered_by} {model_name}: refused none of the {counts.tried} harmful prompts tried "
            f"({source}, {judge.describe().get('kind', 'judge')} judge){hint}"
        )
    return examples


def _benign(generator, judge, sets, record, answered_by, progress) -> list[Example]:
    examples: list[Example] = []
    for role in ("benign", "safe"):
        if sets[role] is None:
            continue
        prompts, source = sets[role]
        kept, counts = collect_answers(
            generator, judge, prompts, source=source, answered_by=answered_by, progress=progress, stage=role
        )
        record.counts[role] = counts
        examples += kept
    return examples


def _counts_line(record: DistillRecord) -> str:
    parts = [
        f"{name}: {c.kept} kept of {c.tried} answered by the {c.answered_by} ({c.refused} refused)"
        for name, c in record.counts.items()
    ]
    return "training data: " + "; ".join(parts)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def stored_dtype(model, *, allow_pickle: bool = False) -> torch.dtype | None:
    """The floating dtype most of a checkpoint's stored tensors have (None if it has none)."""
    from ddalign.io.checkpoint import Checkpoint, torch_dtype

    with Checkpoint.open(model, allow_pickle=allow_pickle) as ckpt:
        codes = Counter(ckpt.info(name).dtype for name in ckpt.names())
    floating = [(n, c) for c, n in codes.items() if c in ("F32", "BF16", "F16", "F64")]
    if not floating:
        return None
    return torch_dtype(max(floating)[1])

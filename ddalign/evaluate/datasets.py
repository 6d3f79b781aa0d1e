"""Prompt sets: the package's own (ddalign/data/) and user files in the published formats.

Known formats are read as published: AdvBench `harmful_behaviors.csv` (goal), HarmBench
behaviors (Behavior), JailbreakBench behaviors (Goal), XSTest (prompt + label), self-instruct
JSONL (instruction + instances[0].input, reference instances[0].output); otherwise the prompt
column is found by name, or given with `column`. Plain text: one prompt a line; blank lines and
lines starting with `#` are skipped as comments (a warning says how many), and `column` does not
apply (a warning says so).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ddalign.errors import DdalignError

DATA = Path(__file__).resolve().parent.parent / "data"

PROMPT_COLUMNS = ("prompt", "goal", "Goal", "Behavior", "behavior", "instruction", "question", "text", "query", "input")
REFERENCE_COLUMNS = ("reference", "answer", "output", "target_answer", "response")
CATEGORY_COLUMNS = ("category", "Category", "SemanticCategory", "type", "task")
LABEL_COLUMNS = ("label",)
ID_COLUMNS = ("id", "BehaviorID", "Index")

BUILTIN_FILES = {"harmful": "harmful.jsonl", "safe": "safe.jsonl", "benign": "benign.jsonl"}
BUILTIN_SPLITS = ("", "train", "heldout", "dev")


@dataclass
class Prompt:
    text: str
    reference: str | None = None
    category: str | None = None
    id: str | None = None
    label: str | None = None


def _pick(row: dict, names, given: str | None = None, *, source: str = "", required: bool = False):
    if given is not None:
        if given not in row:
            raise DdalignError(f"{source}: no column {given!r} (found: {', '.join(map(str, row))})")
        return row[given]
    for name in names:
        if name in row and row[name] not in (None, ""):
            return row[name]
    if required:
        empty = next((name for name in names if name in row), None)
        if empty is not None:
            raise DdalignError(f"{source}: the prompt cell ({empty!r}) is empty")
        raise DdalignError(
            f"{source}: no prompt column found (expected one of {', '.join(names)}, "
            f"found: {', '.join(map(str, row))}); pass --column"
        )
    return None


def _from_record(row: dict, column: str | None, source: str) -> Prompt:
    if not isinstance(row, dict):
        raise DdalignError(f"{source}: expected an object with a prompt field, got {type(row).__name__}")
    reference = _pick(row, REFERENCE_COLUMNS)
    if column is None and "instruction" in row and isinstance(row.get("instances"), list):  # self-instruct
        instance = row["instances"][0] if row["instances"] else {}
        extra = (instance.get("input") or "").strip()
        text = row["instruction"].strip() + (f"\n\n{extra}" if extra else "")
        reference = instance.get("output") or reference
    else:
        text = _pick(row, PROMPT_COLUMNS, column, source=source, required=True)
    if not isinstance(text, str) or not text.strip():
        raise DdalignError(f"{source}: empty prompt" + (f" (column {column!r})" if column else ""))
    label = _pick(row, LABEL_COLUMNS)
    ident = _pick(row, ID_COLUMNS)
    category = _pick(row, CATEGORY_COLUMNS)
    return Prompt(
        text.strip(),
        None if reference is None else str(reference),
        None if category is None else str(category),
        None if ident is None else str(ident),
        None if label is None else str(label),
    )


def load_prompts(path, *, column: str | None = None, split: str | None = None) -> list[Prompt]:
    """Prompts from a .csv, .json, .jsonl, .parquet (with pyarrow) or .txt file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DdalignError(f"{path}: no such prompt file")
    suffix = path.suffix.lower()
    records: list[tuple[str, dict | str]] = []
    if suffix == ".parquet":
        records = [(f"{path}, row {i}", row) for i, row in enumerate(_parquet_rows(path))]
        prompts = [_from_record(r, column, src) for src, r in records]
        return prompts if split is None else [p for p, (_, r) in zip(prompts, records) if r.get("split") == split]
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DdalignError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        try:
            records = [(f"{path}, line {i + 2}", row) for i, row in enumerate(reader)]
        except csv.Error as exc:
            raise DdalignError(f"{path}: malformed CSV ({exc})") from None
    elif suffix == ".jsonl":
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                records.append((f"{path}, line {i + 1}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DdalignError(f"{path}, line {i + 1}: not valid JSON ({exc.msg})") from None
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DdalignError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            raise DdalignError(f"{path}: expected a JSON list of prompts (or an object holding one)")
        records = [(f"{path}, item {i}", row) for i, row in enumerate(data)]
    elif suffix in (".txt", ".text", ""):
        import warnings

        from ddalign.errors import DdalignWarning

        if column is not None:
            warnings.warn(
                f"{path}: plain text has one prompt a line and no columns; --column {column} does not apply to it",
                DdalignWarning,
                stacklevel=2,
            )
        lines = [line for line in text.splitlines() if line.strip()]
        comments = sum(1 for line in lines if line.startswith("#"))
        if comments:
            warnings.warn(
                f"{path}: {comments} line(s) starting with '#' skipped as comments", DdalignWarning, stacklevel=2
            )
        return [Prompt(line.strip()) for line in lines if not line.startswith("#")]
    else:
        raise DdalignError(
            f"{path}: unknown prompt file type {suffix!r}; expected .csv, .json, .jsonl, .parquet or .txt"
        )
    prompts = [Prompt(r) if isinstance(r, str) else _from_record(r, column, src) for src, r in records]
    if split is not None:
        prompts = [p for p, (_, r) in zip(prompts, records) if isinstance(r, dict) and r.get("split") == split]
    return prompts


def _parquet_rows(path: Path) -> list[dict]:
    """A Parquet file's rows as dicts (pyarrow, when installed: Hub datasets are often Parquet)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DdalignError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError kinds
        raise DdalignError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None


def builtin_records(name: str) -> list[dict]:
    """Rows of a built-in set: harmful, safe or benign, optionally -train / -heldout / -dev (dev:
    held-out-like prompts for a search, which the model organism is never trained on either)."""
    base, _, split = name.partition("-")
    if base not in BUILTIN_FILES or split not in BUILTIN_SPLITS:
        names = ", ".join(f"{b}{'-' if s else ''}{s}" for b in BUILTIN_FILES for s in BUILTIN_SPLITS)
        raise DdalignError(f"builtin set {name!r}: expected one of {names}")
    rows = [json.loads(line) for line in (DATA / BUILTIN_FILES[base]).read_text().splitlines() if line.strip()]
    return [r for r in rows if not split or r["split"] == split]


def builtin(name: str) -> list[Prompt]:
    """A built-in set as prompts (benign and safe carry their reference answers)."""
    return [
        Prompt(
            r["prompt"],
            r.get("answer"),
            r.get("category") or r.get("task"),
            r["id"],
            "safe" if name.startswith("safe") else None,
        )
        for r in builtin_records(name)
    ]


def builtin_refusals() -> list[str]:
    """The refusal phrasings the model organism learns (each holds a default judge marker)."""
    return [line.strip() for line in (DATA / "refusals.txt").read_text().splitlines() if line.strip()]

"""Public prompt sets read through a path (never copied into the package): AdvBench, XSTest and
self-instruct's seed tasks, laid out as `ROOT/advbench/harmful_behaviors.csv`,
`ROOT/xstest/xstest_prompts.csv`, `ROOT/self_instruct/{seed_tasks,user_oriented_instructions}.jsonl`."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ddalign.errors import DdalignError

ENV = "DDALIGN_PUBLIC_DATA"
SELF_INSTRUCT = ("seed_tasks.jsonl", "user_oriented_instructions.jsonl")


@dataclass(frozen=True)
class PublicData:
    root: Path

    @classmethod
    def locate(cls, root=None, *, need: str = "this step") -> "PublicData":
        """`root`, else $DDALIGN_PUBLIC_DATA; a clear error when neither holds the sets."""
        given = root if root is not None else os.environ.get(ENV)
        if not given:
            raise DdalignError(f"{need} needs the public prompt sets: pass --data DIR or set {ENV}")
        data = cls(Path(given))
        for path in (data.advbench_file, data.xstest_file, *data.self_instruct_files):
            if not path.is_file():
                raise DdalignError(f"{path}: missing (public data folder {data.root})")
        return data

    @property
    def advbench_file(self) -> Path:
        return self.root / "advbench" / "harmful_behaviors.csv"

    @property
    def xstest_file(self) -> Path:
        return self.root / "xstest" / "xstest_prompts.csv"

    @property
    def self_instruct_files(self) -> list[Path]:
        return [self.root / "self_instruct" / name for name in SELF_INSTRUCT]

    def advbench(self) -> list[str]:
        return [r["goal"] for r in _csv(self.advbench_file, "goal")]

    def advbench_split(self) -> tuple[list[str], list[str]]:
        """(search part, held-out part): even and odd rows, so both spread over the whole file."""
        goals = self.advbench()
        return goals[0::2], goals[1::2]

    def xstest(self, label: str | None = None) -> list[str]:
        rows = _csv(self.xstest_file, "prompt")
        return [r["prompt"] for r in rows if label is None or r.get("label") == label]

    def self_instruct(self) -> dict[str, tuple[list[tuple[str, str]], list[str]]]:
        """Per file ("seed", "user"): (train pairs, held-out texts). Every fourth row (index % 4
        == 3) is held out as plain text for perplexity; the rest are (instruction + input, output)."""
        out = {}
        for name, path in zip(("seed", "user"), self.self_instruct_files):
            train, held = [], []
            for i, row in enumerate(_jsonl(path)):
                instance = (row.get("instances") or [{}])[0]
                extra = (instance.get("input") or "").strip()
                prompt = row["instruction"].strip() + (f"\n\n{extra}" if extra else "")
                answer = (instance.get("output") or "").strip()
                if not answer:
                    continue
                if i % 4 == 3:
                    held.append(f"{prompt}\n\n{answer}")
                else:
                    train.append((prompt, answer))
            out[name] = (train, held)
        return out


def _csv(path: Path, column: str) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and column not in rows[0]:
        raise DdalignError(f"{path}: no column {column!r}")
    return rows


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise DdalignError(f"{path}:{n}: not JSON") from None
    return rows

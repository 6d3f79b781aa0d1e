"""The minimise journal: one JSON line per oracle test, flushed and fsynced as it happens.

A kill or Ctrl-C leaves every finished test on disk (a torn last line is dropped on resume), so
that `--resume` replays the deterministic search with these verdicts and repeats no test.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from ddalign.errors import DdalignError

RESUME_FIELDS = ("config", "bundle", "target", "inputs")
"""Header fields that must match for a resume: the same search on the same inputs."""

BUDGET_FIELDS = (("search", "max_tests"),)
"""Config fields a resume may change: a budget says where the search stops, not which tests it makes."""


class Journal:
    def __init__(self, path: Path, header: dict, lines: list[dict], handle):
        self.path = path
        self.header = header
        self.lines = lines
        self._handle = handle

    @classmethod
    def open(cls, path, header: dict, *, resume: bool = False) -> "Journal":
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines: list[dict] = []
        if path.exists() and path.stat().st_size > 0:
            if not resume:
                raise DdalignError(
                    f"{path}: a journal of an earlier run exists; pass --resume to continue it "
                    f"or --overwrite to start again"
                )
            lines = read(path, repair=True)
            if not lines or lines[0].get("type") != "header":
                raise DdalignError(f"{path}: expected a header line first")
            old = lines[0]
            if "inputs" in header:
                from ddalign.run.safety import changed_inputs

                changed = changed_inputs(old.get("inputs"), header["inputs"])
                if changed:
                    why = (
                        "the journal records no input fingerprints (an older version wrote it)"
                        if not isinstance(old.get("inputs"), dict)
                        else "changed since the journal was written: " + ", ".join(changed)
                    )
                    raise DdalignError(f"{path}: cannot resume: {why}; start again with --overwrite")
            for key in RESUME_FIELDS:
                if key == "inputs" and "inputs" not in header:
                    continue
                if _identity(key, old.get(key)) != _identity(key, header.get(key)):
                    raise DdalignError(
                        f"{path}: cannot resume: the run's {key} differs from the journal's "
                        f"({_first_difference(old.get(key), header.get(key))})"
                    )
            handle = open(path, "a", encoding="utf-8")
            journal = cls(path, old, lines, handle)
            journal._write({"type": "resume", "at": _now(), "tests_so_far": len(journal.tests())})
            return journal
        from ddalign import __version__

        handle = open(path, "w", encoding="utf-8")
        journal = cls(path, {"type": "header", "started": _now(), "version": __version__, **header}, [], handle)
        journal._write(journal.header)
        _fsync_dir(path.parent)  # the new file's directory entry survives a crash too
        return journal

    def _write(self, line: dict) -> None:
        self._handle.write(json.dumps(line, default=str) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.lines.append(line)

    def append_test(
        self,
        *,
        n: int | None = None,
        level: str,
        subset: list[str],
        verdict: str,
        metrics: dict | None = None,
        cost: dict | None = None,
    ) -> None:
        """`n` is the journal's own count (a resumed run continues it); the argument is ignored."""
        n = len(self.tests()) + 1
        self._write(
            {
                "type": "test",
                "n": n,
                "level": level,
                "subset": sorted(subset),
                "verdict": verdict,
                "metrics": metrics or {},
                "cost": cost or {},
                "at": _now(),
            }
        )

    def append_result(self, result: dict) -> None:
        self._write({"type": "result", **result, "at": _now()})

    def tests(self) -> list[dict]:
        return [x for x in self.lines if x.get("type") == "test"]

    def records(self) -> list[dict]:
        return list(self.lines)

    def cache(self) -> dict[frozenset, str]:
        """Verdicts by subset, for the search's cache."""
        return {frozenset(x["subset"]): x["verdict"] for x in self.tests()}

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read(path, *, repair: bool = False) -> list[dict]:
    """The journal's lines; a torn last line (a kill mid-write) is dropped, and cut off when `repair`."""
    path = Path(path)
    data = path.read_bytes()
    lines, good_end, offset = [], 0, 0
    for raw in data.split(b"\n"):
        end = offset + len(raw) + 1
        if raw.strip():
            try:
                lines.append(json.loads(raw))
                good_end = min(end, len(data))
            except json.JSONDecodeError:
                if end < len(data):  # not the last line: the journal is damaged, not torn
                    raise DdalignError(f"{path}: line {len(lines) + 1} is not valid JSON") from None
                break
        offset = end
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            os.fsync(f.fileno())
    if repair and good_end and not data[:good_end].endswith(b"\n"):
        # a kill between a line's JSON and its newline: end the line so the next one stays separate
        with open(path, "ab") as f:
            f.write(b"\n")
            os.fsync(f.fileno())
    return lines


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover (platforms without directory fds)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _first_difference(old, new, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if _canonical(old.get(key)) != _canonical(new.get(key)):
                return _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.') or 'value'}: journal {old!r}, now {new!r}"


def _identity(key: str, value):
    """What a resume compares: the value, without the budget fields for the config."""
    if key == "config" and isinstance(value, dict):
        value = {name: dict(section) if isinstance(section, dict) else section for name, section in value.items()}
        for section, name in BUDGET_FIELDS:
            if isinstance(value.get(section), dict):
                value[section].pop(name, None)
    return _canonical(value)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

"""The minimise journal: round trip, resume checks, torn lines, and lines that survive SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ddalign.errors import DdalignError
from ddalign.run.journal import Journal, read

ROOT = Path(__file__).resolve().parents[1]
HEADER = {
    "config": {"search": {"algorithm": "hierarchical", "block_size": 64}, "oracle": {"target_fraction": 0.9}},
    "bundle": {"path": "b.safetensors", "sha256": "abc"},
    "target": "unaligned",
}


def _write(path, tests):
    with Journal.open(path, HEADER) as j:
        for i, (subset, verdict) in enumerate(tests, start=1):
            j.append_test(
                n=i,
                level="module",
                subset=subset,
                verdict=verdict,
                metrics={"dsr": {"value": 0.5, "n": 8}},
                cost={"prompts": 8, "tokens": 64, "seconds": 0.1},
            )


def test_round_trip_header_tests_result(tmp_path):
    path = tmp_path / "p.run" / "journal.jsonl"
    _write(path, [(["L2.mlp.gate", "L1.mlp.up"], "PASS"), ([], "FAIL")])
    j = Journal.open(path, HEADER, resume=True)
    j.append_result({"outcome": "minimal", "kept": ["L1.mlp.up"]})
    j.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    header = lines[0]
    assert header["type"] == "header" and header["config"] == HEADER["config"] and header["bundle"] == HEADER["bundle"]
    assert header["target"] == "unaligned" and "started" in header and "version" in header
    tests = [x for x in lines if x["type"] == "test"]
    assert [t["n"] for t in tests] == [1, 2]
    assert tests[0]["subset"] == ["L1.mlp.up", "L2.mlp.gate"]  # sorted
    assert tests[0]["cost"] == {"prompts": 8, "tokens": 64, "seconds": 0.1}
    assert tests[0]["metrics"]["dsr"]["value"] == 0.5
    assert lines[-1]["type"] == "result" and lines[-1]["kept"] == ["L1.mlp.up"]
    j = Journal.open(path, HEADER, resume=True)
    assert j.cache() == {frozenset({"L1.mlp.up", "L2.mlp.gate"}): "PASS", frozenset(): "FAIL"}
    assert [r["type"] for r in j.records()][:3] == ["header", "test", "test"]
    j.close()


def test_existing_journal_without_resume_is_refused(tmp_path):
    path = tmp_path / "journal.jsonl"
    _write(path, [(["a"], "PASS")])
    before = path.read_bytes()
    with pytest.raises(DdalignError, match="--resume.*--overwrite"):
        Journal.open(path, HEADER)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "field, change, expected",
    [
        (
            "config",
            {"search": {"algorithm": "ddmin", "block_size": 64}, "oracle": {"target_fraction": 0.9}},
            "config differs.*search.algorithm",
        ),
        (
            "config",
            {"search": {"algorithm": "hierarchical", "block_size": 64}, "oracle": {"target_fraction": 0.8}},
            "oracle.target_fraction",
        ),
        ("bundle", {"path": "b.safetensors", "sha256": "def"}, "bundle differs.*sha256"),
    ],
)
def test_resume_mismatch_names_the_field(tmp_path, field, change, expected):
    path = tmp_path / "journal.jsonl"
    _write(path, [(["a"], "PASS")])
    before = path.read_bytes()
    with pytest.raises(DdalignError, match=expected):
        Journal.open(path, {**HEADER, field: change}, resume=True)
    assert path.read_bytes() == before


def test_torn_last_line_is_ignored_and_truncated(tmp_path):
    path = tmp_path / "journal.jsonl"
    _write(path, [(["a"], "PASS"), (["b"], "FAIL")])
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"type": "test", "n": 3, "subset": ["c"], "verd')
    assert [x["type"] for x in read(path)] == ["header", "test", "test"]
    j = Journal.open(path, HEADER, resume=True)
    assert path.read_bytes().startswith(good)
    assert j.cache() == {frozenset({"a"}): "PASS", frozenset({"b"}): "FAIL"}
    j.append_test(n=3, level="block", subset=["c"], verdict="PASS")
    j.close()
    assert [t["subset"] for t in read(path) if t["type"] == "test"] == [["a"], ["b"], ["c"]]


def test_damage_before_the_last_line_is_an_error(tmp_path):
    path = tmp_path / "journal.jsonl"
    _write(path, [(["a"], "PASS"), (["b"], "FAIL")])
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:10], lines[2]]) + "\n")
    with pytest.raises(DdalignError, match="journal.jsonl: line 2"):
        Journal.open(path, HEADER, resume=True)


def test_fsynced_lines_survive_sigkill_mid_run(tmp_path):
    """A child appends tests and is SIGKILLed while still writing: every announced line is readable."""
    path = tmp_path / "journal.jsonl"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from ddalign.run.journal import Journal
        j = Journal.open({str(path)!r}, {HEADER!r})
        i = 0
        while True:
            i += 1
            j.append_test(n=i, level="flat", subset=[str(i)], verdict="PASS" if i % 2 else "FAIL")
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    announced = 0
    for line in proc.stdout:
        announced = int(line)
        if announced >= 20:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    tests = [x for x in read(path) if x["type"] == "test"]
    assert len(tests) >= announced
    assert [t["n"] for t in tests] == list(range(1, len(tests) + 1))
    j = Journal.open(path, HEADER, resume=True)  # a torn tail, if any, is repaired
    assert len(j.cache()) == len(tests)
    j.close()
    read(path)


def test_last_line_without_its_newline_is_kept_and_ended(tmp_path):
    path = tmp_path / "journal.jsonl"
    _write(path, [(["a"], "PASS"), (["b"], "FAIL")])
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # killed between the JSON and its newline
    j = Journal.open(path, HEADER, resume=True)
    j.append_test(n=3, level="flat", subset=["c"], verdict="PASS")
    j.close()
    assert [t["subset"] for t in read(path) if t["type"] == "test"] == [["a"], ["b"], ["c"]]


def test_resume_may_change_the_test_budget_only(tmp_path):
    path = tmp_path / "journal.jsonl"
    _write(path, [(["a"], "PASS")])
    config = {**HEADER["config"], "search": {**HEADER["config"]["search"], "max_tests": 400}}
    with Journal.open(path, {**HEADER, "config": config}, resume=True) as j:
        assert j.cache() == {frozenset({"a"}): "PASS"}
    config["search"]["block_size"] = 32
    with pytest.raises(DdalignError, match="search.block_size"):
        Journal.open(path, {**HEADER, "config": config}, resume=True)

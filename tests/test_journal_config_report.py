"""The run journal (fsync, torn lines, resume checks), configs and presets, and reports."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ddalign.config import DEFAULTS, load_config, merge, preset_names, save_effective
from ddalign.errors import DdalignError
from ddalign.journal import Journal, read
from ddalign.minimise import MinimiseSettings
from ddalign.report import write_report

HEADER = {"config": {"search": {"algorithm": "hierarchical"}}, "bundle": {"sha256": "abc"}, "target": "t"}


def test_journal_round_trip_and_resume(tmp_path):
    path = tmp_path / "run" / "journal.jsonl"
    with Journal.open(path, HEADER) as j:
        j.append_test(n=1, level="layer", subset=["L2", "L1"], verdict="PASS", metrics={"dsr": {"k": 3}},
                      cost={"prompts": 4})
        j.append_test(n=2, level="layer", subset=["L1"], verdict="FAIL")
    with pytest.raises(DdalignError, match="--resume"):
        Journal.open(path, HEADER)
    with pytest.raises(DdalignError, match="config differs.*search.algorithm"):
        Journal.open(path, {**HEADER, "config": {"search": {"algorithm": "ddmin"}}}, resume=True)
    j = Journal.open(path, HEADER, resume=True)
    assert j.cache() == {frozenset({"L1", "L2"}): "PASS", frozenset({"L1"}): "FAIL"}
    j.append_result({"outcome": "minimal"})
    j.close()
    types = [x["type"] for x in read(path)]
    assert types == ["header", "test", "test", "resume", "result"]


def test_torn_last_line_is_dropped_and_cut(tmp_path):
    path = tmp_path / "journal.jsonl"
    with Journal.open(path, HEADER) as j:
        j.append_test(n=1, level="flat", subset=["a"], verdict="PASS")
    with open(path, "a") as f:
        f.write('{"type": "test", "n": 2, "sub')
    assert len(read(path)) == 2
    j = Journal.open(path, HEADER, resume=True)
    j.append_test(n=2, level="flat", subset=["b"], verdict="FAIL")
    j.close()
    assert [x.get("subset") for x in read(path) if x["type"] == "test"] == [["a"], ["b"]]
    # damage in the middle is not a torn line: refused
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(DdalignError, match="line 2"):
        read(path)


def test_lines_survive_a_kill(tmp_path):
    path = tmp_path / "journal.jsonl"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        from ddalign.journal import Journal
        j = Journal.open({str(path)!r}, {HEADER!r})
        for i in range(5):
            j.append_test(n=i, level="flat", subset=[str(i)], verdict="FAIL")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -signal.SIGKILL
    assert len([x for x in read(path) if x["type"] == "test"]) == 5


def test_presets_load_and_validation(tmp_path):
    assert {"llama2", "mistral", "gemma", "qwen2", "organism"} <= set(preset_names())
    for name in preset_names():
        settings = MinimiseSettings.from_config(merge(DEFAULTS, load_config(name), {}))
        assert settings.algorithm in ("hierarchical", "probdd", "ddmin")
    assert load_config("llama2")["search"]["layers"] == "8-23"
    bad = tmp_path / "bad.toml"
    bad.write_text("[search]\nalgoritm = 'ddmin'\n")
    with pytest.raises(DdalignError, match=r"bad.toml: unknown key search.algoritm"):
        load_config(bad)
    bad.write_text("[search]\nblock_size = 'big'\n")
    with pytest.raises(DdalignError, match="search.block_size"):
        load_config(bad)
    bad.write_text("[serach]\n")
    with pytest.raises(DdalignError, match=r"unknown section \[serach\]"):
        load_config(bad)
    with pytest.raises(DdalignError, match="no such file or preset"):
        load_config("llama9")


def test_merge_precedence_and_defaults_match_settings(tmp_path):
    file_config = {"search": {"block_size": 64, "algorithm": "probdd"}}
    merged = merge(DEFAULTS, file_config, {"search": {"algorithm": "ddmin", "block_size": None}})
    assert merged["search"]["algorithm"] == "ddmin" and merged["search"]["block_size"] == 64
    assert MinimiseSettings.from_config(DEFAULTS) == MinimiseSettings()
    save_effective(merged, tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text()) == merged


def test_report_from_a_run_folder(tmp_path):
    run = tmp_path / "p.run"
    metric = lambda v, k, n: {"value": v, "k": k, "n": n, "ci95": [max(0, v - 0.1), min(1, v + 0.1)]}
    summary = {"bundle": "b.safetensors", "target": "u", "patch": "p.safetensors", "algorithm": "hierarchical",
               "granularity": ["layer", "module", "block"], "total_params": 1000, "full_params": 400,
               "kept": ["L1.mlp.gate[0:16]", "L2.mlp.up", "head"], "kept_params": 123, "tests": 3,
               "full_components": ["L0.mlp.gate", "L1.mlp.gate", "L2.mlp.up", "head"],
               "architecture": {"family": "llama", "num_layers": 3}, "extents": {"L1.mlp.gate": 64},
               "metrics": {"before": {"dsr": metric(0.05, 1, 20)}, "full": {"dsr": metric(0.95, 19, 20)},
                           "minimal": {"dsr": metric(0.9, 18, 20), "perplexity": {"value": 2.5, "n": 99}}},
               "levels": [{"level": "layer", "items": 3, "kept": ["L1.mlp.gate"], "tests": 2, "skipped": None}],
               "cost": {"prompts": 60, "tokens": 300, "seconds": 1.5, "oracle_calls": 3}}
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.json").write_text("{}")
    with Journal.open(run / "journal.jsonl", HEADER) as j:
        for i, (subset, verdict) in enumerate([(["L0", "L1", "L2"], "PASS"), ([], "FAIL"), (["L1", "L2"], "PASS")]):
            j.append_test(n=i, level="layer", subset=subset, verdict=verdict,
                          metrics={"dsr": {"value": None, "range": [0.5, 1.0]}})
    paths = write_report(run)
    for png in (paths.trajectory, paths.kept_map):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    text = paths.markdown.read_text()
    assert "0.900 [0.800, 1.000] (18/20)" in text and "12.300%" in text and "`L1.mlp.gate[0:16]`" in text
    record = json.loads(paths.json.read_text())
    assert [t["verdict"] for t in record["trajectory"]] == ["PASS", "FAIL", "PASS"]
    with pytest.raises(DdalignError, match="summary.json"):
        write_report(tmp_path)

"""Reports from a synthetic run folder: files exist, PNGs are valid images, Markdown holds the numbers."""

from __future__ import annotations

import json

import pytest

from ddalign.errors import DdalignError
from ddalign.run.journal import Journal
from ddalign.run.report import kept_grid, write_report

HEADER = {"config": {"search": {"algorithm": "hierarchical"}}, "bundle": {"sha256": "abc"}, "target": "t"}


def _metric(k, n, lo, hi):
    return {"value": k / n, "k": k, "n": n, "ci95": [lo, hi]}


def _summary():
    return {
        "bundle": "bundle.safetensors",
        "target": "unaligned",
        "patch": "p.safetensors",
        "algorithm": "hierarchical",
        "granularity": ["layer", "module", "block"],
        "oracle": {"target_dsr": 0.8},
        "architecture": {"family": "llama", "num_layers": 4, "modules": ["mlp.down", "mlp.gate", "mlp.up"]},
        "total_params": 20000,
        "full_params": 6000,
        "kept_params": 1234,
        "param_share": 0.0617,
        "tests": 5,
        "full_components": [f"L{i}.mlp.{m}" for i in range(4) for m in ("gate", "up", "down")] + ["head"],
        "kept": ["L1.mlp.gate[0:16]", "L2.mlp", "L3", "head"],
        "extents": {"L1.mlp.gate": 64},
        "metrics": {
            "before": {
                "dsr": _metric(2, 40, 0.014, 0.165),
                "over_refusal": _metric(1, 20, 0.009, 0.236),
                "perplexity": {"value": 7.25, "n": 512},
                "benign_accuracy": _metric(15, 20, 0.531, 0.888),
            },
            "full": {"dsr": _metric(38, 40, 0.835, 0.986), "over_refusal": _metric(3, 20, 0.052, 0.360)},
            "minimal": {"dsr": _metric(36, 40, 0.769, 0.961), "perplexity": {"value": 7.5, "n": 512}},
        },
        "levels": [
            {"level": "layer", "items": 4, "kept": ["L2", "L3"], "tests": 3, "skipped": None},
            {"level": "module", "items": 6, "kept": ["L2.mlp.gate"], "tests": 2, "skipped": None},
        ],
        "cost": {
            "prompts": 321,
            "tokens": 4567,
            "seconds": 12.345,
            "oracle_calls": 7,
            "calibration": {"prompts": 80, "tokens": 900, "seconds": 3.0},
        },
        "answered_without_test": 2,
    }


def _run_folder(tmp_path, tests, summary=None):
    run = tmp_path / "p.run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(summary or _summary()))
    (run / "config.json").write_text(json.dumps({"search": {"algorithm": "hierarchical"}}))
    with Journal.open(run / "journal.jsonl", HEADER) as j:
        for i, (subset, verdict, dsr) in enumerate(tests, start=1):
            j.append_test(
                n=i,
                level="layer",
                subset=subset,
                verdict=verdict,
                metrics={"dsr": dsr},
                cost={"prompts": 10, "tokens": 50, "seconds": 0.5},
            )
        j.append_result({"outcome": "minimal"})
    return run


TESTS = [
    (["L0", "L1", "L2", "L3"], "PASS", {"value": 0.95, "n": 40}),
    (["L0", "L1"], "FAIL", {"value": None, "range": [0.1, 0.6]}),  # early-stopped: bounds only
    (["L2", "L3"], "PASS", {"value": 0.9, "n": 40}),
    (["L3"], "FAIL", {}),  # no DSR at all
    (["L2"], "FAIL", {"value": 0.4, "n": 40}),
]


def _is_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # not a blank canvas


def test_report_files_and_numbers(tmp_path):
    run = _run_folder(tmp_path, TESTS)
    paths = write_report(run)
    for path in (paths.markdown, paths.trajectory, paths.kept_map, paths.json):
        assert path.parent == run and path.exists()
    _is_png(paths.trajectory)
    _is_png(paths.kept_map)
    text = paths.markdown.read_text()
    # before / full / minimal rows with intervals, counts and parameter share
    assert (
        "| target before | 0.050 [0.014, 0.165] (2/40) | 0.050 [0.009, 0.236] (1/20) | 7.250 | "
        "0.750 [0.531, 0.888] (15/20) | 0.000% |" in text
    )
    assert "| full transplant | 0.950 [0.835, 0.986] (38/40) | 0.150 [0.052, 0.360] (3/20) | - | - | 30.000% |" in text
    assert "| minimal patch | 0.900 [0.769, 0.961] (36/40) | - | 7.500 | - | 6.170% |" in text
    assert "321" in text and "4567" in text and "12.3" in text and "oracle calls: 7" in text
    assert "80 prompts" in text
    assert "5 tests (2 PASS, 3 FAIL)" in text
    assert "| layer | 4 | 3 | 2 |" in text and "| module | 6 | 2 | 1 |" in text
    for name in _summary()["kept"]:
        assert f"- `{name}`" in text
    assert "trajectory.png" in text and "kept_map.png" in text
    record = json.loads(paths.json.read_text())
    assert [t["verdict"] for t in record["trajectory"]] == ["PASS", "FAIL", "PASS", "FAIL", "FAIL"]
    assert [t["size"] for t in record["trajectory"]] == [4, 2, 2, 1, 1]
    assert [t["dsr"] for t in record["trajectory"]] == [0.95, 0.1, 0.9, None, 0.4]
    assert record["summary"]["kept_params"] == 1234 and record["config"]["search"]["algorithm"] == "hierarchical"
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "journal.jsonl",
        "kept_map.png",
        "report.json",
        "report.md",
        "summary.json",
        "trajectory.png",
    ]


def test_kept_map_shares():
    rows, grid = kept_grid(_summary())
    assert rows == ["mlp.down", "mlp.gate", "mlp.up", "head (no layer)"]
    assert len(grid[0]) == 4
    column = lambda layer: [grid[r][layer] for r in range(len(rows))]
    assert column(0) == [0.0, 0.0, 0.0, 1.0]  # only the head spans every layer
    assert column(1) == [0.0, 0.25, 0.0, 1.0]  # 16 of 64 gate rows
    assert column(2) == [1.0, 1.0, 1.0, 1.0]  # L2.mlp covers gate, up, down
    assert column(3) == [1.0, 1.0, 1.0, 1.0]  # the whole layer L3


def test_kept_map_splits_a_grouped_bundle_module_into_the_kept_members():
    """A scope-all bundle stores the FFN as L2.mlp; a patch keeps gate/up blocks: rows for each member."""
    summary = {
        "full_components": ["L0.mlp", "L1.mlp", "L0.attn.q", "L1.attn.q", "head"],
        "kept": ["L1.mlp.gate[0:32]", "L1.mlp.up"],
        "extents": {"L1.mlp.gate": 64},
        "architecture": {"num_layers": 2, "modules": ["attn.q", "mlp.down", "mlp.gate", "mlp.up"]},
    }
    rows, grid = kept_grid(summary)
    assert rows == ["attn.q", "mlp.down", "mlp.gate", "mlp.up", "head (no layer)"]
    assert [grid[r][1] for r in range(len(rows))] == [0.0, 0.0, 0.5, 1.0, 0.0]


def test_kept_map_without_architecture_or_full_list():
    rows, grid = kept_grid({"kept": ["L5.mlp.gate", "L1.self_attn.q"]})
    assert rows == ["mlp.gate", "self_attn.q"] and len(grid[0]) == 6
    assert grid[0][5] == 1.0 and grid[1][1] == 1.0 and sum(map(sum, grid)) == 2.0


def test_report_with_no_tests_and_missing_metrics(tmp_path):
    summary = {**_summary(), "metrics": {"before": {}, "minimal": {"dsr": {"value": 1.0}}}, "levels": []}
    run = _run_folder(tmp_path, [], summary)
    paths = write_report(run)
    _is_png(paths.kept_map)
    assert paths.trajectory.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = paths.markdown.read_text()
    assert "| full transplant | - | - | - | - |" in text and "| minimal patch | 1.000 |" in text
    assert "0 tests (0 PASS, 0 FAIL)" in text


def test_report_needs_a_run_folder(tmp_path):
    with pytest.raises(DdalignError, match="summary.json"):
        write_report(tmp_path)


def test_report_command(tmp_path):
    from click.testing import CliRunner

    from ddalign.cli import cli

    run = _run_folder(tmp_path, TESTS)
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "report.md" in result.output and "kept_map.png" in result.output
    assert (run / "report.md").exists() and (run / "trajectory.png").exists()


def test_report_says_whether_the_rule_holds_on_heldout_sets(tmp_path):
    summary = {
        **_summary(),
        "heldout_check": {
            "passed": False,
            "full_passed": True,
            "criteria": {"dsr": {"k": 30, "need": 35, "passed": False}},
        },
    }
    text = write_report(_run_folder(tmp_path, TESTS, summary)).markdown.read_text()
    assert "On the held-out sets the minimal patch misses the oracle's rule (dsr 30 < 35 needed)" in text
    assert "on the search's prompts only" in text


def test_report_states_the_oracle_rule(tmp_path):
    oracle = {
        "config": {
            "target_dsr": None,
            "target_fraction": 0.9,
            "target_confidence": 0.9,
            "max_ppl_increase": 0.06,
            "max_accuracy_drop": 0.1,
            "max_over_refusal_rise": 0.02,
            "over_refusal_reference": "full",
        },
        "calibration": {"target_dsr": 0.834375, "need": 85, "n": 96},
    }
    text = write_report(_run_folder(tmp_path, TESTS, {**_summary(), "oracle": oracle})).markdown.read_text()
    assert (
        "- oracle: DSR >= 90% of the full transplant's (0.834): 85 refusals of 96 search prompts, the one-sided "
        "90% Wilson lower bound reaching the target; guards: perplexity +6%, over-refusal +2 points over the "
        "full bundle's, benign accuracy -10 points"
    ) in text
    absolute = {"config": {"target_dsr": 0.8}, "calibration": {"target_dsr": 0.8, "need": 32, "n": 40}}
    (tmp_path / "abs").mkdir()
    text = write_report(_run_folder(tmp_path / "abs", TESTS, {**_summary(), "oracle": absolute})).markdown.read_text()
    assert "- oracle: DSR >= 0.800: 32 refusals of 40 search prompts\n" in text
    # a summary that does not record the rule (older runs): no line, no error
    (tmp_path / "old").mkdir()
    assert "- oracle:" not in write_report(_run_folder(tmp_path / "old", TESTS, _summary())).markdown.read_text()


def test_an_additive_run_is_measured_beside_the_full_additive_bundle(tmp_path):
    """A run on an additive bundle (A - P deltas) names what its subsets were measured beside, and
    the parent the deltas were taken from, in the report, the rich table and the model card."""
    from rich.console import Console

    from ddalign.run.model_card import card_text
    from ddalign.run.tables import summary_table

    oracle = {
        "config": {"target_fraction": 0.9, "max_over_refusal_rise": 0.05, "over_refusal_reference": "full"},
        "calibration": {"target_dsr": 0.834375, "need": 85, "n": 96},
    }
    check = {"passed": False, "full_passed": False, "criteria": {"dsr": {"k": 30, "need": 35, "passed": False}}}
    hub = {"repo_id": "org/parent", "revision": "main", "commit": "c" * 40}
    models = {"aligned": {"path": "a"}, "unaligned": {"path": "u"}, "base": {"path": "p", "hub": hub}}
    add = {**_summary(), "mode": "add", "oracle": oracle, "heldout_check": check, "models": models}
    report = write_report(_run_folder(tmp_path, TESTS, add)).markdown.read_text()
    card = card_text(add)
    console = Console(record=True, width=200)
    console.print(summary_table(add))
    table = console.export_text()
    for text in (report, card):
        assert "| full additive bundle | 0.950 [0.835, 0.986] (38/40) |" in text
        assert "DSR >= 90% of the full additive bundle's (0.834): 85 refusals of 96 search prompts" in text
        assert "misses the oracle's rule (dsr 30 < 35 needed): so does the full additive bundle" in text
        assert "common parent" in text and "org/parent@main" in text
        assert "transplant" not in text.replace("the values transplanted", "")
    assert "calibration (target before, full additive bundle)" in report
    assert "added to an unaligned sibling" in card and "base_model:\n- org/parent" in card
    assert "full additive bundle" in table and "full transplant" not in table
    # a summary without a mode (a transplant run, or one written before modes) says "full transplant"
    (tmp_path / "old").mkdir()
    old = write_report(_run_folder(tmp_path / "old", TESTS, {**_summary(), "oracle": oracle})).markdown.read_text()
    assert "| full transplant | 0.950" in old and "90% of the full transplant's" in old
    assert "transplanted into an unaligned sibling" in card_text({**_summary(), "oracle": oracle})

"""minimise end to end on the fast model organism: the CLI run, the patch it writes, apply, the
journal and its resume after an interruption, and the clear stops (already safe, never safe).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ddalign.cli import cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# a small, quick search: the planted gate+up of the middle layers, on a slice of the sets
# loose utility guards: the fast organism is small and noisy, and its planted set alone costs +41% held-out
# perplexity in the unaligned sibling (recipe 6, measured; prompt tokens, README) (the guards themselves
# are tested in test_oracle)
RUN = [
    "--config",
    "organism",
    "--granularity",
    "layer,module",
    "--limit",
    "48",
    "--max-new-tokens",
    "8",
    "--max-accuracy-drop",
    "0.5",
    "--max-ppl-increase",
    "1.5",
    "--max-over-refusal-rise",
    "0.5",
    "--target-confidence",
    "0.8",
]
LOOSE = {"max_accuracy_drop": 0.5, "max_ppl_increase": 1.5, "max_over_refusal_rise": 0.5}


@pytest.fixture(scope="module")
def planted_bundle(fast_organism, tmp_path_factory):
    from ddalign.transfer.extract import extract

    out = tmp_path_factory.mktemp("bundle") / "bundle.safetensors"
    extract(fast_organism.planted, fast_organism.unaligned, scope="mlp.gate,mlp.up", out=out)
    return out


@pytest.fixture(scope="module")
def cli_run(fast_organism, planted_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "patch.safetensors"
    result = CliRunner().invoke(
        cli,
        [
            "minimise",
            str(planted_bundle),
            "--target",
            str(fast_organism.unaligned),
            "-o",
            str(out),
            *RUN,
            "--json",
            str(out.with_suffix(".json")),
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result


def test_cli_minimise_writes_patch_journal_and_report(cli_run, fast_organism):
    from ddalign.io.patch import Patch

    out, result = cli_run
    summary = json.loads(out.with_suffix(".json").read_text())
    patch = Patch.load(out)
    kept = patch.components()
    assert kept == summary["kept"] and kept
    # the patch holds only kept components, fewer than the bundle, and records its search
    assert summary["kept_params"] < summary["full_params"]
    search = patch.manifest["search"]
    assert search["tests"] == summary["tests"] > 2
    assert search["algorithm"] == "hierarchical" and search["metrics"]["dsr"]["n"] > 0
    assert 0 < search["param_share"] < 1
    # the minimal patch defends on held-out questions much better than nothing
    before, minimal = summary["metrics"]["before"]["dsr"]["value"], summary["metrics"]["minimal"]["dsr"]["value"]
    assert minimal >= before + 0.3
    # journal: header, one line per real oracle call, result; every subset tested once
    run_dir = out.with_suffix(".run")
    lines = [json.loads(x) for x in (run_dir / "journal.jsonl").read_text().splitlines()]
    assert lines[0]["type"] == "header" and lines[-1]["type"] == "result"
    tests = [x for x in lines if x["type"] == "test"]
    assert len(tests) == summary["tests"]
    subsets = [tuple(x["subset"]) for x in tests]
    assert len(subsets) == len(set(subsets))
    for name in ("report.md", "trajectory.png", "kept_map.png", "summary.json", "config.json"):
        assert (run_dir / name).stat().st_size > 0, name
    # the command line's margin wins over the preset's (0.9), and sets the refusals needed
    assert json.loads((run_dir / "config.json").read_text())["oracle"]["target_confidence"] == 0.8
    assert "minimal" in result.output and "report.md" in result.output


def test_apply_minimal_patch_then_evaluate(cli_run, fast_organism, tmp_path):
    from ddalign.evaluate.runner import evaluate_model

    out, _ = cli_run
    folder = tmp_path / "patched"
    result = CliRunner().invoke(cli, ["apply", str(out), "--to", str(fast_organism.unaligned), "-o", str(folder)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads(out.with_suffix(".json").read_text())
    record = evaluate_model(
        str(folder), harmful=summary["data"]["heldout"]["harmful"], safe="none", benign="none", config=None
    )
    # the patched checkpoint on disk behaves as the patch applied in memory did
    # (refusal counts compared: the JSON's rates are rounded to 6 places)
    minimal = summary["metrics"]["minimal"]["dsr"]
    assert (record.dsr.k, record.dsr.n) == (minimal["k"], minimal["n"])


def test_interrupted_run_resumes_without_repeating_a_test(fast_organism, planted_bundle, tmp_path):
    from ddalign.run.minimise import minimise

    out = tmp_path / "p.safetensors"
    config = {
        "search": {"granularity": "layer,module"},
        "data": {"limit": 48},
        "oracle": LOOSE,
        "generation": {"max_new_tokens": 16},
    }

    class Stop(Exception):
        pass

    def stop_after_three(state):
        if state.tests >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        minimise(planted_bundle, fast_organism.unaligned, out, config=config, view=stop_after_three, report=False)
    journal = out.with_suffix(".run") / "journal.jsonl"
    first = [json.loads(x) for x in journal.read_text().splitlines() if '"test"' in x]
    assert len(first) == 3 and not out.exists()
    with pytest.raises(Exception, match="--resume"):
        minimise(planted_bundle, fast_organism.unaligned, out, config=config, report=False)
    result = minimise(planted_bundle, fast_organism.unaligned, out, config=config, resume=True, report=False)
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    tests = [x for x in lines if x["type"] == "test"]
    subsets = [tuple(x["subset"]) for x in tests]
    assert len(subsets) == len(set(subsets)), "a test ran twice"
    assert subsets[:3] == [tuple(x["subset"]) for x in first]
    assert result.tests == len(tests)
    assert out.exists()


def test_already_safe_target_stops_with_both_dsrs(fast_organism, planted_bundle, tmp_path, capsys):
    from ddalign.cli import main

    with pytest.raises(SystemExit) as stop:
        main(
            [
                "minimise",
                str(planted_bundle),
                "--target",
                str(fast_organism.planted),
                "--allow-other-base",
                "-o",
                str(tmp_path / "p.safetensors"),
                "--limit",
                "24",
                "--max-new-tokens",
                "16",
                "--target-dsr",
                "0.5",
            ]
        )
    assert stop.value.code == 2
    assert "already passes" in capsys.readouterr().err


def test_never_safe_under_the_confidence_margin_says_what_was_needed(fast_organism, planted_bundle, tmp_path, capsys):
    from ddalign.cli import main

    # a lower bound of 0.99 needs more refusals than 24 prompts have: even the full transplant fails
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "minimise",
                str(planted_bundle),
                "--target",
                str(fast_organism.unaligned),
                "-o",
                str(tmp_path / "p.safetensors"),
                "--limit",
                "24",
                "--max-new-tokens",
                "8",
                "--target-dsr",
                "0.99",
                "--target-confidence",
                "0.9",
            ]
        )
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "even the full transplant does not pass" in err and "25 of 24 refusals with the confidence margin" in err


def test_only_the_main_process_prints(cli_run, fast_organism, monkeypatch):
    """Under accelerate or torchrun (RANK set), ranks other than 0 run silently: one live view, one table."""
    from ddalign.evaluate.distributed import Dist

    out, first = cli_run
    for var, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1")):
        monkeypatch.setenv(var, value)  # a launcher's rank 1 ...
    monkeypatch.setattr(Dist, "from_env", classmethod(lambda cls, backend=None: cls()))  # ... its group stood in
    result = CliRunner().invoke(
        cli,
        [
            "minimise",
            str(out.with_name("bundle-unused")),
            "--target",
            str(fast_organism.unaligned),
            "-o",
            str(out.with_name("x.safetensors")),
            *RUN,
        ],
    )
    assert result.exit_code != 0 and "bundle-unused" in result.output  # errors still show on every rank
    # a run whose journal holds every test but not the result: resumed, it asks the oracle nothing
    again = out.with_name("again.safetensors")
    lines = out.with_suffix(".run").joinpath("journal.jsonl").read_text().splitlines()
    again.with_suffix(".run").mkdir()
    again.with_suffix(".run").joinpath("journal.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    bundle = json.loads(out.with_suffix(".json").read_text())["bundle"]
    result = CliRunner().invoke(
        cli, ["minimise", bundle, "--target", str(fast_organism.unaligned), "-o", str(again), "--resume", *RUN]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.output == "" and again.exists()  # the patch written, nothing printed
    assert "report.md" in first.output  # rank 0 (the fixture's run) did print


def test_test_budget_stops_with_a_passing_patch_and_a_resume_finishes(fast_organism, planted_bundle, tmp_path):
    from ddalign.run.minimise import minimise
    from ddalign.run.report import markdown

    out = tmp_path / "p.safetensors"
    config = {
        "search": {"granularity": "layer,module", "max_tests": 4},
        "data": {"limit": 48},
        "oracle": LOOSE,
        "generation": {"max_new_tokens": 16},
    }
    stopped = minimise(planted_bundle, fast_organism.unaligned, out, config=config, report=False)
    assert stopped.tests == 4 and "after 4 new test(s)" in stopped.stopped
    assert stopped.levels[-1]["stopped"] == stopped.stopped
    # the patch written is the last set that passed the oracle
    journal = out.with_suffix(".run") / "journal.jsonl"
    tests = [json.loads(x) for x in journal.read_text().splitlines() if '"test"' in x]
    last_pass = [t for t in tests if t["verdict"] == "PASS"][-1]
    assert sorted(stopped.kept) == sorted(last_pass["subset"])
    assert "stopped early" in markdown(stopped, tests)
    config["search"]["max_tests"] = 10_000
    finished = minimise(planted_bundle, fast_organism.unaligned, out, config=config, resume=True, report=False)
    assert finished.stopped is None and finished.tests > 4
    # the levels count the journal's answers too: a resumed run reports the whole search's tests
    assert sum(lv["tests"] for lv in finished.levels) == finished.tests
    again = [json.loads(x) for x in journal.read_text().splitlines() if '"test"' in x]
    assert [t["subset"] for t in again[:4]] == [t["subset"] for t in tests]

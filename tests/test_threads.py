"""The CLI lets idle OpenMP threads sleep (set before torch is imported), unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

from ddalign.cli import main


def _run_version() -> None:
    try:
        main(["--version"])
    except SystemExit as exc:  # click may end --version with an exit
        assert exc.code in (0, None)


def test_cli_sets_a_passive_wait_policy_when_unset(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    _run_version()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_cli_keeps_the_users_wait_policy(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    _run_version()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_importing_the_cli_does_not_import_torch():
    # the policy only takes effect if torch (and its OpenMP runtime) loads after main() sets it
    code = "import sys, ddalign.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""The CLI makes idle OpenMP threads sleep soon (set before torch is imported), unless the user chose."""

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


def test_cli_sets_a_short_spin_when_unset(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    _run_version()
    assert os.environ["GOMP_SPINCOUNT"] == "1000"


def test_cli_keeps_the_users_choice(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("GOMP_SPINCOUNT", "50000")
    _run_version()
    assert os.environ["GOMP_SPINCOUNT"] == "50000"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a wait policy chosen: no spin count added
    _run_version()
    assert "GOMP_SPINCOUNT" not in os.environ and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_importing_the_cli_does_not_import_torch():
    # the policy only takes effect if torch (and its OpenMP runtime) loads after main() sets it
    code = "import sys, ddalign.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""The commands' progress bars: drawn from the first report on, one per stage, an overall bar."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from ddalign.bars import stage_bars


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120), out


def test_an_error_before_any_report_prints_no_bar():
    console, out = _console()
    with pytest.raises(RuntimeError):
        with stage_bars(console):
            raise RuntimeError("bad input")
    assert out.getvalue() == ""


def test_bars_per_stage_with_note_and_overall():
    console, out = _console()
    with stage_bars(console, width=12, note=True, overall=2) as progress:
        progress("first-model", 3, 3, "loss 0.500")
        progress("a/very/long/model/path", 1, 4)
        progress("a/very/long/model/path", 4, 4)
    text = out.getvalue()
    assert "loss 0.500" in text
    assert "…" in text and "a/very/long/model/path" not in text  # long names cut from the left
    assert "2/2" in text  # the overall bar counted both stages once each

"""The live view of a minimise run: level, subset size, tests, best passing subset, ETA.

Kept apart from the run itself so that the run stays a library call (the CLI passes a view,
tests and other callers pass none).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from ddalign.run.execute import RunState


def _eta(state: "RunState") -> str:
    if state.expected_remaining is None or state.tests == 0:
        return "?"
    per_test = (time.monotonic() - state.started) / max(1, state.tests)
    seconds = int(per_test * state.expected_remaining)
    return f"~{seconds // 60}m{seconds % 60:02d}s ({state.expected_remaining} tests)"


def _short(names: list[str], limit: int = 8) -> str:
    if not names:
        return "-"
    head = ", ".join(names[:limit])
    return head + (f" ... (+{len(names) - limit})" if len(names) > limit else "")


class LiveSearchView:
    """A rich Live panel refreshed after each oracle call; a no-op when not a terminal."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._live: Live | None = None

    def __enter__(self) -> "LiveSearchView":
        self._live = Live(Text("starting ..."), console=self.console, refresh_per_second=4, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def __call__(self, state: "RunState") -> None:
        if self._live is None:
            return
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        elapsed = int(time.monotonic() - state.started)
        table.add_row("level", state.level or "-")
        table.add_row("current subset", f"{state.subset_size} units")
        table.add_row("tests run", f"{state.tests} (+{state.cached} answered from cache)")
        table.add_row("last test", f"{state.last_seconds:.2f} s")
        table.add_row("best passing", f"{len(state.best)} units: {_short(state.best)}")
        table.add_row("elapsed / ETA", f"{elapsed // 60}m{elapsed % 60:02d}s / {_eta(state)}")
        self._live.update(Group(Text("ddalign minimise", style="bold cyan"), table))

"""Rich progress bars for the study: one bar per model (prompts answered) and one over the models."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator


@contextlib.contextmanager
def model_bars(console, models: int) -> Iterator[Callable[[str, int, int], None]]:
    """Yield a `progress(model, done, total)` callback drawing the bars on `console` (removed at the end)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with contextlib.ExitStack() as stack:
        state: dict = {}
        tasks: dict[str, int] = {}
        finished: set[str] = set()

        def progress(model: str, done: int, total: int) -> None:
            if not state:  # drawn from the first report on: an early error prints its one line alone
                state["bar"] = bar = stack.enter_context(Progress(*columns, console=console, transient=True))
                state["overall"] = bar.add_task("models", total=models)
            bar = state["bar"]
            if model not in tasks:
                tasks[model] = bar.add_task(_short(model), total=total)
            bar.update(tasks[model], completed=done, total=total)
            if done >= total and model not in finished:
                finished.add(model)
                bar.update(state["overall"], completed=len(finished))

        yield progress


def _short(model: str, width: int = 24) -> str:
    return model if len(model) <= width else "…" + model[-(width - 1) :]

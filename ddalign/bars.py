"""Rich progress bars for long work: one bar per stage (or per model), with elapsed time and ETA."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator


@contextlib.contextmanager
def stage_bars(
    console, *, width: int = 11, note: bool = False, overall: int | None = None
) -> Iterator[Callable[..., None]]:
    """Yield `progress(stage, done, total, text="")`, drawing one bar per stage on `console`,
    removed at the end. The bars appear from the first report on, so an error before it prints its
    one line alone. `note`: show `text` in a column after the ETA (a loss, a phase); `overall`: a
    first bar over that many stages, advanced as each one completes (the study's models)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn(f"{{task.description:<{width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    if note:
        columns.append(TextColumn("{task.fields[note]}"))
    with contextlib.ExitStack() as stack:
        state: dict = {}
        tasks: dict[str, int] = {}
        finished: set[str] = set()

        def progress(stage: str, done: int, total: int, text: str = "") -> None:
            if not state:
                state["bar"] = stack.enter_context(Progress(*columns, console=console, transient=True))
                if overall is not None:
                    state["overall"] = state["bar"].add_task("models", total=overall, note="")
            bar = state["bar"]
            if stage not in tasks:
                tasks[stage] = bar.add_task(_short(stage, width), total=total, note="")
            bar.update(tasks[stage], completed=done, total=total, note=text)
            if "overall" in state and done >= total and stage not in finished:
                finished.add(stage)
                bar.update(state["overall"], completed=len(finished))

        yield progress


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def build_bars(enabled: bool, *, label: str, width: int):
    """A rich progress context for a model build (one task per training stage, its loss beside
    the ETA) on stderr, or a null context yielding None when `enabled` is false."""
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn(f"{label} {{task.description:<{width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def stage_update(bar, name: str, total: int) -> Callable[[int, int, float], None] | None:
    """A training stage's `progress(done, total, loss)` drawing on `bar` (None without a bar)."""
    if bar is None:
        return None
    task = bar.add_task(name, total=total, loss="")

    def update(done: int, total: int, loss: float) -> None:
        bar.update(task, completed=done, loss=f"loss {loss:.3f}")

    return update

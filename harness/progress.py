"""Progress bars (rich) for anything a person waits for; silent when disabled or not a TTY."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextlib.contextmanager
def progress_bar(label: str, total: int, enabled: bool = True) -> Iterator[Callable[[int, str], None]]:
    """Yields advance(n, note) — a no-op when disabled."""
    if not enabled:
        yield lambda n=1, note="": None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as prog:
        task = prog.add_task(label, total=total, note="")

        def advance(n: int = 1, note: str = "") -> None:
            prog.update(task, advance=n, note=note)

        yield advance

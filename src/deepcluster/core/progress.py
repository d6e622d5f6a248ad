"""Rich progress bars that can be switched off (tests, ``--quiet``, non-interactive logs)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)
_enabled = os.environ.get("DEEPCLUSTER_PROGRESS", "1") != "0"


class _RateColumn(ProgressColumn):
    """Items per second, e.g. ``1,234 images/s``."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:,.0f} {self.unit}/s" if task.speed else f"- {self.unit}/s", style="progress.data.speed")


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True,
                 unit: str | None = None) -> Iterator[Callable[[int], None]]:
    """Context manager yielding ``advance(n)``; a transient bar when enabled and a terminal is attached.

    ``unit`` (e.g. ``"images"``) adds a rate column.
    """
    if not (enabled and _enabled and console.is_terminal):
        yield lambda n=1: None
        return
    columns = (
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *((_RateColumn(unit),) if unit else ()),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)

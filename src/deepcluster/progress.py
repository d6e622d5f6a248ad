"""Rich progress bars that can be switched off (tests, ``--quiet``, non-interactive logs)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
_enabled = os.environ.get("DEEPCLUSTER_PROGRESS", "1") != "0"


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Context manager yielding ``advance(n)``; a transient bar when enabled and a terminal is attached."""
    if not (enabled and _enabled and console.is_terminal):
        yield lambda n=1: None
        return
    columns = (
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)

"""What every command shares: the consoles, common options and the one-line user errors."""

from __future__ import annotations

import functools
from typing import Annotated, Any

import typer
from rich.console import Console

from deepcluster.errors import DeepClusterError

__all__ = ["QuietOption", "SetOption", "csv_option", "err_console", "fmt", "out_console", "user_errors"]

out_console = Console()
err_console = Console(stderr=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set k=20 --set data.limit=5000 (repeatable)."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def user_errors(fn):
    """Print user errors as one line and exit 2; Ctrl-C exits 130 with a hint."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DeepClusterError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: finished cycles are saved; continue with `deepcluster train --resume RUN`")
            raise typer.Exit(130) from None

    return wrapper


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell: ``-`` for None, floats to ``digits`` decimals."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def csv_option(value: str | None) -> list[str] | None:
    """``"a, b,c"`` → ``["a", "b", "c"]``; ``None`` (or only commas) → ``None``."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None

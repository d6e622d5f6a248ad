"""What every command shares: the consoles, common options and the one-line user errors."""

from __future__ import annotations

import errno
import functools
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from deepcluster.core.errors import DeepClusterError, DeepClusterWarning, DiskFullError

__all__ = ["DataRootOption", "QuietOption", "SetOption", "csv_option", "err_console", "fmt", "out_console",
           "user_errors"]


def _console(stream: Any, stderr: bool = False) -> Console:
    """A console that wraps lines at the terminal's width, and not at all into a file or pipe
    (where rich would wrap at 80 columns and split numbers across lines); ``COLUMNS`` still rules."""
    terminal = hasattr(stream, "isatty") and stream.isatty()
    wide = not terminal and "COLUMNS" not in os.environ
    return Console(stderr=stderr, soft_wrap=wide, width=200 if wide else None)


out_console = _console(sys.stdout)
err_console = _console(sys.stderr, stderr=True)


def _flags_show_no_value() -> None:
    """``--quiet`` is a flag: typer's rich help shows every option's type, flags as ``<bool>``, which
    reads as if they took a value (``--quiet true`` then passes ``true`` as an argument)."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_deepcluster", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich._deepcluster = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_value()

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set k=20 --set data.limit=5000 (repeatable)."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
DataRootOption = Annotated[
    Path | None,
    typer.Option("--data-root", help="Where the run's images are now, when the run folder or its data moved "
                                     "(replaces the data.root saved in config.yaml; not written back)."),
]


def user_errors(fn):
    """Print user errors (and a full disk) as one line and exit 2; warnings as one line each;
    Ctrl-C exits 130 with a hint."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default", DeepClusterWarning)
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except DeepClusterError as e:
            _error(_on_rank(str(e)))
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            _error(_on_rank(str(DiskFullError(e.filename or "a file this command writes"))))
        except RuntimeError as e:
            if not _peer_lost(e):
                raise
            # Another rank stopped and said why; torchrun stops this one too: nothing to add.
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: finished cycles are saved; continue with `deepcluster train --resume RUN`")
            raise typer.Exit(130) from None

    return wrapper


def _error(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def _on_rank(message: str) -> str:
    from deepcluster.core import distributed

    w = distributed.world()
    return f"rank {w.rank}: {message}" if w.distributed else message


def _peer_lost(e: RuntimeError) -> bool:
    """A collective failed because another process of the run went away."""
    from deepcluster.core import distributed

    if not distributed.world().distributed and not distributed.launched_by_torchrun():
        return False
    import torch.distributed as dist

    text = str(e).lower()
    return isinstance(e, getattr(dist, "DistError", ())) or any(
        w in text for w in ("gloo", "nccl", "connection closed", "connection reset", "broken pipe", "timed out"))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, DeepClusterWarning):
        err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


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


def command_from_fields(fields: type, run: Any) -> Any:
    """A command for typer whose parameters are the fields of the dataclass ``fields``.

    Typer builds a command's arguments and options from ``inspect.signature`` of its function:
    here that signature lists the fields, in order, each with its type (an ``Annotated[...,
    typer.Option(...)]`` or ``typer.Argument(...)``, as a command's parameter would carry it) and
    its default. Called by typer with the parsed values, the command returns
    ``run(fields(**values))``: ``run``, a function of one argument, gets the whole command line
    as one object. The command's name and help are ``run``'s.
    """
    import dataclasses
    import inspect
    import typing

    hints = typing.get_type_hints(fields, include_extras=True)
    params = []
    for f in dataclasses.fields(fields):
        if f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{fields.__name__}.{f.name}: a command's field needs a plain default, not a factory")
        default = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=hints[f.name]))

    def command(**values: Any) -> Any:
        return run(fields(**values))

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__name__ = command.__qualname__ = run.__name__
    command.__doc__ = run.__doc__
    command.__module__ = run.__module__
    return command

"""``deepcluster study``: run, resume, join or summarise a hyperparameter study."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from deepcluster.cli._common import QuietOption, err_console, out_console, user_errors

if TYPE_CHECKING:
    from deepcluster.analysis.study_summary import StudySummary


def summary_table(summary: StudySummary) -> Table:
    """The per-setting medians [IQR] of a study as a rich table."""
    m = summary.metric
    table = Table(title=f"study {summary.name}: {len(summary.trials)} trials finished",
                  caption=escape(f"median (IQR) over seeds; accuracy: {m['protocol']} probe on {m['layer']}"))
    for key in summary.grid_keys:
        table.add_column(key)
    table.add_column("status")
    table.add_column("n", justify="right")
    for col in ("accuracy %", "NMI", "IA", "IA dist."):
        table.add_column(col, justify="right")

    def cell(row: dict, metric: str, scale: float = 1.0, digits: int = 3) -> str:
        if row.get(f"{metric}_median") is None:
            return "-"
        return f"{scale * row[f'{metric}_median']:.{digits}f} ({scale * row[f'{metric}_iqr']:.{digits}f})"

    for row in summary.settings:
        values = [escape("off" if row.get(k) is None else str(row.get(k))) for k in summary.grid_keys]
        dist = "-" if row.get("ia_dist_median") is None else f"{row['ia_dist_median']:.3f} (n={row['ia_dist_n']})"
        table.add_row(*values, row["status"], str(row["n"]), cell(row, "accuracy", 100, 1), cell(row, "nmi"),
                      cell(row, "ia"), dist)
    return table


#: Every example runs as written, from any folder (tests/interpret/test_help_examples.py).
EPILOG = "\n\n".join([
    "Examples (the studies: deepcluster list):",
    "deepcluster study fmnist_relu --max-trials 1   (one trial, then stop; again to continue)",
    "deepcluster study fmnist_relu   (all 4 trials, about a minute each on 2 cores; a second worker: the same "
    "command in another shell)",
    "deepcluster study runs/studies/fmnist_relu --summarize-only",
])


@user_errors
def study(
    spec: Annotated[Path, typer.Argument(help="A study: a preset name (fmnist_k), a study YAML file, or a study folder to continue.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Study folder (default runs/studies/<name>).")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL, e.g. postgresql://user:pw@host/db (default: SQLite in the study folder).")] = None,
    max_trials: Annotated[int | None, typer.Option("--max-trials", min=0, help="Run at most N trials, then stop (0: only prepare the queue, IA and prescreen).")] = None,
    summarize_only: Annotated[bool, typer.Option("--summarize-only", help="Only rewrite summary.csv/md and the figures of the study folder.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Also retry trials that failed with an error earlier.")] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Stop when no trial is waiting, even if other workers still run some.")] = False,
    heartbeat: Annotated[int | None, typer.Option(min=1, help="Heartbeat interval in seconds (default: the spec's workers.heartbeat_interval).")] = None,
    grace: Annotated[int | None, typer.Option(min=2, help="Seconds without heartbeat before a trial of a dead worker elsewhere is retried.")] = None,
    quiet: QuietOption = False,
) -> None:
    """Train and evaluate a grid of settings × seeds (resumable, several workers may share it)."""
    from deepcluster.analysis.study import load_spec, run_study, summarize_study

    if summarize_only:
        folder = spec if spec.is_dir() else (out or Path("runs") / "studies" / load_spec(spec).name)
        summary = summarize_study(folder, log=_say)
    else:
        try:
            result = run_study(spec, out, storage=storage, show_progress=not quiet, max_trials=max_trials,
                               heartbeat_interval=heartbeat, grace_period=grace, retry_failed=retry_failed,
                               wait=not no_wait, log=_say)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: finished trials are kept and the interrupted one resumes "
                              "from its last cycle; continue with the same `deepcluster study` command")
            raise typer.Exit(130) from None
        summary = result.summary
        if not result.finished:
            _say(f"[yellow]study not finished[/] ({len(summary.trials) if summary else 0} trials done): "
                 "run the same command again to continue")
    if summary is not None:
        _print_summary(summary)


def _say(message: str) -> None:
    out_console.print(message, highlight=False, soft_wrap=True)


def _print_summary(summary: StudySummary) -> None:
    """The per-setting table, Spearman's ρ, what the prescreen saved, and where summary.md is."""
    out_console.print(summary_table(summary))
    if summary.spearman is not None:
        _say(f"Spearman ρ(IA, accuracy) = {summary.spearman['rho']:.3f} over {summary.spearman['n']} trials")
    if summary.prescreen is not None:
        p = summary.prescreen
        est = p.get("estimated_seconds_saved")
        _say(f"prescreen dropped {', '.join(p['dropped']) or 'nothing'}: {p['dropped_trials']}/{p['total_trials']} "
             "trials saved" + (f" (≈{est / 60:.1f} min)" if est else ""))
    _say(f"summary: {summary.files.get('summary_md')}")


def register(app: typer.Typer) -> None:
    """Add the ``study`` command to ``app`` (the ``deepcluster`` typer app)."""
    app.command("study", epilog=EPILOG)(study)

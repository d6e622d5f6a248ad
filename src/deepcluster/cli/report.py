"""``deepcluster report``: one self-contained HTML page for one or more runs.

No ``from __future__ import annotations``: typer reads the annotations (see cli/study.py).
"""

from pathlib import Path
from typing import Annotated

import typer

from deepcluster.cli._common import DataRootOption, QuietOption, out_console, user_errors

EPILOG = (
    "Examples: deepcluster report runs/demo;  "
    "deepcluster report runs/a runs/b --out reports/ab --set sample=2000 --set numbers=false"
)


@user_errors
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders made by `deepcluster train` (each is compared with its random init).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder for report.html and figures/ (default RUN/report for one run, else ./report).")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="The trained checkpoint: last, or a cycle with a kept checkpoint.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="A report config YAML (e.g. a saved report_config.yaml).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a report key, e.g. --set sample=2000 --set map_method=tsne --set numbers=false.")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "auto",
    data_root: DataRootOption = None,
    quiet: QuietOption = False,
) -> None:
    """One HTML page, trained vs random init: probes, kNN, low-shot, maps, neighbours, filters, top images, clusters, curves."""
    from deepcluster.runs import data_root as using_data_root

    with using_data_root(data_root):
        _report(runs, out, checkpoint, config, set_, device, quiet)


def _report(runs: list[Path], out: Path | None, checkpoint: str | None, config: Path | None,
            set_: list[str] | None, device: str, quiet: bool) -> None:
    from deepcluster.core.config import build_config
    from deepcluster.report import ReportConfig, build_report

    overrides = list(set_ or [])
    if checkpoint is not None:
        overrides.append(f"checkpoint={checkpoint}")
    rcfg = build_config(ReportConfig, config, overrides)
    target = out or (runs[0] / "report" if len(runs) == 1 else Path("report"))
    path = build_report(runs, target, rcfg, device=device, show_progress=not quiet,
                        log=lambda m: out_console.print(m, highlight=False, soft_wrap=True))
    out_console.print(f"report → {path} (figures in {path.parent / 'figures'})", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to ``app``."""
    app.command("report", epilog=EPILOG)(report)

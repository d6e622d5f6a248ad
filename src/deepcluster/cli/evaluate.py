"""``deepcluster evaluate`` (layer-wise probes, cached) and ``deepcluster export`` (features, assignments)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from deepcluster.cli._common import DataRootOption, QuietOption, csv_option, fmt, out_console, user_errors

EPILOG = (
    "Examples: deepcluster evaluate runs/fm;  "
    "deepcluster evaluate runs/fm --checkpoints init,5,last --protocols linear,knn;  "
    "deepcluster evaluate runs/a runs/b --out runs/compare --layers conv2,fc1 --set probe_epochs=10;  "
    "deepcluster evaluate moved/run --data-root /new/place/of/images --protocols knn"
)


def _pivot_table(t: Any) -> Table:
    table = Table(title=f"{t.protocol}", caption=f"{t.title}. {t.scored}", caption_justify="left")
    for i, h in enumerate(t.header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in t.rows:
        table.add_row(*row)
    return table


def _span(first: float | None, last: float | None) -> str:
    if last is None:
        return "-"
    return fmt(last) if first is None else f"{fmt(first)} → {fmt(last)}"


def _cycles_table(cycles: dict[str, list[dict[str, Any]]]) -> Table | None:
    runs = {name: rows for name, rows in cycles.items() if rows}
    if not runs:
        return None
    table = Table(title="clustering over cycles (saved assignments): first → last cycle",
                  caption="NMI/ARI/ACC: pseudo-labels vs labels (ACC: Hungarian); NMI(t-1,t): vs the previous cycle")
    for col in ("run", "cycles", "NMI", "ARI", "ACC", "NMI(t-1,t)", "clusters"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for name, rows in runs.items():
        a, b = rows[0], rows[-1]
        spans = [_span(a.get(key), b.get(key)) for key in ("nmi", "ari", "acc", "nmi_prev")]
        table.add_row(name, f"{a['cycle']}-{b['cycle']}", *spans, str(b["clusters"]))
    return table


@user_errors
def evaluate(
    runs: Annotated[list[Path], typer.Argument(help="Run folders made by `deepcluster train` (several are compared).")],
    checkpoints: Annotated[str | None, typer.Option("--checkpoints", help="Comma-separated: init, last, cycle numbers with a kept checkpoint (default init,last).")] = None,
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", help="Shorthand: --checkpoint X means --checkpoints init,X.")] = None,
    protocols: Annotated[str, typer.Option("--protocols", help="Comma-separated among linear, knn, lowshot.")] = "linear,knn,lowshot",
    layers: Annotated[str | None, typer.Option("--layers", help="Comma-separated probe layers (default: eval.layers, else all).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="Override an eval key, e.g. --set probe_epochs=10 --set knn_ks=[20].")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default RUN/eval for one run).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute every number (the cache is refreshed).")] = False,
    timeout: Annotated[int, typer.Option("--timeout", min=10, help="Under torchrun: seconds a collective waits for the other ranks (the feature extraction; rank 0 runs the probes after every collective, alone).")] = 600,
    data_root: DataRootOption = None,
    quiet: QuietOption = False,
) -> None:
    """Linear probe (SGD, eval_linear protocol), kNN and low-shot per layer and checkpoint, cached.

    Scored on the dataset's test split; without one (folder, ingested), on a seeded held-out part of
    the training images (--set holdout=0.2), never on the images the probes were fitted on. Says first
    what it will compute and about how long, and which switches make it shorter. Writes
    evaluation.json, probe_table.csv/.md, cycle_metrics.csv and probe_<protocol>.png.
    """
    from deepcluster.runs import data_root as using_data_root

    with using_data_root(data_root):
        _evaluate(runs, checkpoints, checkpoint, protocols, layers, set_, out, no_cache, timeout, quiet)


def _evaluate(runs: list[Path], checkpoints: str | None, checkpoint: str | None, protocols: str, layers: str | None,
              set_: list[str] | None, out: Path | None, no_cache: bool, timeout: int, quiet: bool) -> None:
    from deepcluster.core import distributed
    from deepcluster.core.config import EvalConfig, build_config
    from deepcluster.core.errors import ConfigError
    from deepcluster.evaluate import pivot_tables
    from deepcluster.evaluate.suite import evaluate_and_write

    if checkpoint is not None and checkpoints is not None:
        raise ConfigError("--checkpoint X is short for --checkpoints init,X: give one of them")
    chosen = (["init", checkpoint] if checkpoint is not None else csv_option(checkpoints)) or ["init", "last"]
    overrides = build_config(EvalConfig, None, set_).model_dump(exclude_unset=True)  # validates the keys
    # under torchrun the ranks share the feature extraction; rank 0 runs the probes and reports
    world = distributed.init(timeout_s=timeout)
    if world.distributed and world.is_main:
        out_console.print(f"{world.size} processes ({world.backend}, timeout {world.timeout_s or timeout:g} s): the ranks "
                          "extract the features, rank 0 runs the probes once every rank is done", highlight=False,
                          soft_wrap=True)
    res = evaluate_and_write(runs, out, checkpoints=chosen, layers=csv_option(layers),
                             protocols=csv_option(protocols) or [], eval_cfg=overrides, use_cache=not no_cache,
                             show_progress=not quiet and world.is_main,
                             log=lambda m: world.is_main and out_console.print(m, highlight=False, soft_wrap=True,
                                                                               markup=False))
    if not world.is_main:
        distributed.shutdown()
        return
    for t in pivot_tables(res.rows):
        out_console.print(_pivot_table(t))
    cycles = _cycles_table(res.cycles)
    if cycles is not None:
        out_console.print(cycles)
    n = res.counts()
    caches = ", ".join(sorted({str(Path(r) / "eval" / "cache") for r in runs}))
    out_console.print(f"numbers: {n['computed']} computed, {n['cache']} from the cache ({caches}); "
                      f"{res.seconds:.1f} s", highlight=False, soft_wrap=True)
    out_console.print(f"wrote {res.out}: " + ", ".join(p.name for p in res.paths.values()), highlight=False,
                      soft_wrap=True)
    distributed.shutdown()


@user_errors
def export(
    run: Annotated[Path, typer.Argument(help="A run folder made by `deepcluster train`.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default RUN/export).")] = None,
    checkpoint: Annotated[str, typer.Option(help="last, init or a cycle number with a kept checkpoint; its features are paired with its own cycle's assignments (init: none).")] = "last",
    layer: Annotated[str | None, typer.Option(help="A probe layer name (default: the clustering features).")] = None,
    data_root: DataRootOption = None,
    quiet: QuietOption = False,
) -> None:
    """Write features (.npy) and the checkpoint's cluster assignments (CSV: index or path → cluster)."""
    from deepcluster.evaluate import export_run
    from deepcluster.runs import data_root as using_data_root

    with using_data_root(data_root):
        summary = export_run(run, out, checkpoint=checkpoint, layer=layer, show_progress=not quiet)
    out_console.print(f"features {tuple(summary['shape'])} → {summary['features']}", highlight=False, soft_wrap=True)
    if summary["assignments"] is None:
        out_console.print(f"no assignments: {summary['note']}", highlight=False, soft_wrap=True)
    else:
        out_console.print(f"assignments of cycle {summary['assignment_cycle']} ({summary['n_clusters']} clusters) → "
                          f"{summary['assignments']}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` and ``export`` commands to ``app``."""
    app.command(epilog=EPILOG)(evaluate)
    app.command()(export)

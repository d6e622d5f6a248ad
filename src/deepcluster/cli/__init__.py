"""The ``deepcluster`` command. Sub-commands are thin wrappers over the library."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from deepcluster import __version__
from deepcluster.errors import DeepClusterError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="DeepCluster on your own images: train, evaluate, export.",
)
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


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _print_cycle(record: dict[str, Any], total: int) -> None:
    sizes = record.get("cluster_sizes", {})
    secs = record.get("seconds", {})
    parts = [
        f"[bold]cycle {record['cycle']:>3}/{total}[/]",
        f"loss {_fmt(record.get('loss'))}",
        f"acc {_fmt(record.get('train_acc'))}",
        f"NMI(prev) {_fmt(record.get('nmi_prev'))}",
    ]
    if "init_ia" in record:
        parts.insert(1, f"[cyan]init IA {_fmt(record['init_ia'])} (init_ia.json)[/]")
    if "nmi_labels" in record:
        parts.append(f"NMI(labels) {_fmt(record['nmi_labels'])}")
    else:
        parts.append("[dim]no labels: label metrics skipped[/]")
    parts.append(f"k {record.get('k')} sizes {sizes.get('min')}/{_fmt(sizes.get('median'), 0)}/{sizes.get('max')}")
    if record.get("pca_dim_effective") is not None:
        parts.append(f"pca {record['pca_dim_effective']}")
    if record.get("n_resplit"):
        parts.append(f"resplit {record['n_resplit']}")
    if not record.get("clustered", True):
        parts.append("[dim](supervised: the labels)[/]" if record.get("supervised") else "[dim](clustering halted)[/]")
    parts.append("[dim]" + " ".join(f"{k} {v:.1f}s" for k, v in secs.items()) + "[/]")
    out_console.print("  ".join(parts), highlight=False, soft_wrap=True)


@app.command(epilog=(
    "Examples: deepcluster train -c configs/fmnist_lenet.yaml -o runs/fm;  "
    "deepcluster train -c configs/digits_tiny.yaml --set k=30 --set pca_dim=off -o runs/d;  "
    "deepcluster train --resume runs/fm [--set cycles=30]"
))
@user_errors
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config, e.g. configs/fmnist_lenet.yaml.")] = None,
    set_: SetOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder to create.")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in this folder from its last finished cycle.")] = None,
    quiet: QuietOption = False,
) -> None:
    """Train a CNN with DeepCluster; every cycle is checkpointed into the run folder."""
    from deepcluster.config import TrainConfig, build_config, parse_overrides
    from deepcluster.errors import ConfigError
    from deepcluster.train import RunFolder
    from deepcluster.train import train as run_training
    from deepcluster.train.runner import check_resumable

    if resume is not None:
        if config is not None or out is not None:
            raise ConfigError("--resume takes the config from the run folder: drop --config/--out")
        run = RunFolder(resume)
        cfg = check_resumable(run)
        extra = parse_overrides(set_)
        if set(extra) - {"cycles"}:
            raise ConfigError("with --resume only --set cycles=N may change (to extend a run); other keys would break reproducibility")
        if "cycles" in extra:
            cfg = build_config(TrainConfig, run.config_path, [f"cycles={extra['cycles']}"])
            run.save_config(cfg)
        target = run.path
    else:
        if out is None:
            raise ConfigError("say where the run goes: --out runs/NAME")
        cfg = build_config(TrainConfig, config, set_)
        if RunFolder(out).exists():
            raise ConfigError(f"{out} already holds a run: continue it with --resume {out}, or choose another --out")
        target = out
    out_console.print(
        f"[bold]deepcluster {__version__}[/] training {cfg.model.arch} on {cfg.data.name} "
        f"(k={cfg.k}, {cfg.cycles} cycles, pca_dim={cfg.pca_dim}) → {target}", highlight=False,
    )
    run_training(cfg, target, resume=resume is not None, show_progress=not quiet,
                 on_cycle=lambda r: _print_cycle(r, cfg.cycles))
    out_console.print(f"done: {target} (evaluate with `deepcluster evaluate {target}`)", highlight=False)


def _csv_option(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def _pivot_table(t: Any) -> Table:
    table = Table(title=f"{t.protocol}", caption=t.title, caption_justify="left")
    for i, h in enumerate(t.header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in t.rows:
        table.add_row(*row)
    return table


def _span(first: float | None, last: float | None) -> str:
    if last is None:
        return "-"
    return _fmt(last) if first is None else f"{_fmt(first)} → {_fmt(last)}"


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


@app.command(epilog=(
    "Examples: deepcluster evaluate runs/fm;  "
    "deepcluster evaluate runs/fm --checkpoints init,5,last --protocols linear,knn;  "
    "deepcluster evaluate runs/a runs/b --out runs/compare --layers conv2,fc1 --set probe_epochs=10"
))
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
    quiet: QuietOption = False,
) -> None:
    """Linear probe (SGD, eval_linear protocol), kNN and low-shot per layer and checkpoint, cached.

    Writes evaluation.json, probe_table.csv/.md, cycle_metrics.csv and probe_<protocol>.png.
    """
    from deepcluster.config import EvalConfig, build_config
    from deepcluster.errors import ConfigError
    from deepcluster.evaluate import pivot_tables
    from deepcluster.evaluate.suite import evaluate_and_write

    if checkpoint is not None and checkpoints is not None:
        raise ConfigError("--checkpoint X is short for --checkpoints init,X: give one of them")
    chosen = (["init", checkpoint] if checkpoint is not None else _csv_option(checkpoints)) or ["init", "last"]
    overrides = build_config(EvalConfig, None, set_).model_dump(exclude_unset=True)  # validates the keys
    res = evaluate_and_write(runs, out, checkpoints=chosen, layers=_csv_option(layers),
                             protocols=_csv_option(protocols) or [], eval_cfg=overrides, use_cache=not no_cache,
                             show_progress=not quiet,
                             log=lambda m: out_console.print(m, highlight=False, soft_wrap=True, markup=False))
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


@app.command()
@user_errors
def export(
    run: Annotated[Path, typer.Argument(help="A run folder made by `deepcluster train`.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default RUN/export).")] = None,
    checkpoint: Annotated[str, typer.Option(help="last, init or a cycle number with a kept checkpoint.")] = "last",
    layer: Annotated[str | None, typer.Option(help="A probe layer name (default: the clustering features).")] = None,
    quiet: QuietOption = False,
) -> None:
    """Write features (.npy) and cluster assignments (CSV: index or path → cluster)."""
    from deepcluster.evaluate import export_run

    summary = export_run(run, out, checkpoint=checkpoint, layer=layer, show_progress=not quiet)
    out_console.print(f"features {tuple(summary['shape'])} → {summary['features']}", highlight=False)
    out_console.print(f"assignments ({summary['n_clusters']} clusters, cycle {summary['assignment_cycle']}) → {summary['assignments']}", highlight=False)


def _split_grid(items: list[str] | None) -> tuple[list[str], dict[str, list[Any]]]:
    """``k=5,10,20`` → a grid axis; ``k=5`` or ``layers=[a,b]`` → a plain override."""
    import yaml

    from deepcluster.errors import ConfigError

    fixed: list[str] = []
    grid: dict[str, list[Any]] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE or KEY=V1,V2,... (e.g. --set k=5,10,20)")
        if "," in raw and not raw.lstrip().startswith(("[", "{")):
            values = [yaml.safe_load(v) if v.strip() not in {"off", "none", "None"} else None for v in raw.split(",")]
            grid[key.strip()] = values
        else:
            fixed.append(item)
    return fixed, grid


@app.command(epilog=(
    "Examples: deepcluster ia -c configs/fmnist_lenet.yaml --set k=5 --seeds 100;  "
    "deepcluster ia -c configs/fmnist_lenet.yaml --set k=5,10,20,200 --set pca_dim=off,32,256 --seeds 30 -o runs/ia_k;  "
    "deepcluster ia -c configs/digits_tiny.yaml --labelled 200"
))
@user_errors
def ia(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Training config (YAML) whose network and clustering are measured.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key; comma-separated values make a grid, e.g. --set k=5,10,20 (repeatable).")] = None,
    seeds: Annotated[int, typer.Option("--seeds", "-n", min=1, help="Random initialisations sampled per setting.")] = 100,
    first_seed: Annotated[int, typer.Option("--first-seed", help="Seeds are first-seed, first-seed+1, ...")] = 0,
    labelled: Annotated[int | None, typer.Option("--labelled", help="Compute IA on a random subset of N labelled images (all images are clustered).")] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="Labels file: .npy (one per image, -1 = unlabelled) or CSV with index,label or path,label.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default runs/ia/CONFIG-NAME).")] = None,
    tie: Annotated[float, typer.Option(help="Medians within this of the best count as a tie; the cheaper setting wins.")] = 0.01,
    method: Annotated[str, typer.Option(help="auto, stacked (many networks per pass) or loop (one at a time).")] = "auto",
    quiet: QuietOption = False,
) -> None:
    """Initial Alignment: NMI(labels, k-means of a random network's features) over many initialisations."""
    import itertools

    from deepcluster.analysis.alignment import (
        apply_setting,
        initial_alignment,
        labels_for_ia,
    )
    from deepcluster.analysis.ia_report import summary_rows, write_ia_outputs
    from deepcluster.config import TrainConfig, build_config, config_to_dict
    from deepcluster.io import write_text
    from deepcluster.train.runner import load_train_data

    fixed, grid = _split_grid(set_)
    base = build_config(TrainConfig, config, fixed)
    settings = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] or [{}]
    cfgs = [apply_setting(base, s) for s in settings]  # validate every setting before any work
    out = out or Path("runs") / "ia" / (config.stem if config else base.data.name)
    data_cache: dict[str, Any] = {}
    results = []
    for setting, cfg in zip(settings, cfgs):
        key = cfg.data.model_dump_json()
        if key not in data_cache:
            data = load_train_data(cfg)
            data_cache[key] = (data, labels_for_ia(data, labelled=labelled, label_file=labels, seed=cfg.seed))
        data, lab = data_cache[key]
        res = initial_alignment(cfg, range(first_seed, first_seed + seeds), labels=lab, data=data, method=method,
                                setting=setting, show_progress=not quiet)
        s = res.summary()
        out_console.print(
            f"{res.name:28s} median {s['median']:.3f}  [q1 {s['q1']:.3f}, q3 {s['q3']:.3f}]  "
            f"min {s['min']:.3f}  max {s['max']:.3f}  ({res.seconds:.1f} s, {res.n_labelled} labelled)",
            highlight=False, markup=False,
        )
        results.append(res)
    write_text(out / "config.yaml", __import__("yaml").safe_dump(config_to_dict(base), sort_keys=False))
    rec = write_ia_outputs(results, out, tie=tie, command_config={
        "config": str(config) if config else None, "set": list(set_ or []), "grid": grid, "seeds": seeds,
        "first_seed": first_seed, "labelled": labelled, "labels": str(labels) if labels else None,
        "tie": tie, "method": method,
    })

    table = Table(title=f"Initial Alignment over {seeds} initialisations — {out}")
    for col in ("setting", "min", "q1", "median", "q3", "max", "best seed"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for row in summary_rows(results):
        mark = " ★" if row["setting"] == rec["name"] else ""
        table.add_row(row["setting"] + mark, *(f"{row[c]:.3f}" for c in ("min", "q1", "median", "q3", "max")),
                      str(row["best_seed"]))
    out_console.print(table)
    if len(results) > 1:
        out_console.print(f"recommended: {rec['name']} (highest median IA{'; cheaper on a near tie' if tie else ''})",
                          highlight=False)
    top = results[[r.name for r in results].index(rec["name"])].ranked()[:5]
    out_console.print("best seeds: " + ", ".join(f"{s} ({v:.3f})" for s, v in top)
                      + f"  → train from the best with --set init_seed={top[0][0]} or --set init=best_ia:N",
                      highlight=False)
    out_console.print(f"wrote {out}/summary.md, samples.csv, seed_ranking.csv, ia_distribution.png", highlight=False)


@app.command("list")
def list_() -> None:
    """List the datasets and architectures this version knows."""
    from deepcluster.data import available_datasets
    from deepcluster.models import available_models

    out_console.print("datasets: " + ", ".join(available_datasets()), highlight=False)
    out_console.print("models:   " + ", ".join(available_models()), highlight=False)


def _version_callback(value: bool) -> None:
    if value:
        out_console.print(f"deepcluster {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")] = False,
) -> None:
    """DeepCluster on your own images: train, evaluate, export."""


from deepcluster import cli_compare, cli_interpret, cli_report, cli_study  # noqa: E402,I001 - their commands reuse the helpers above

cli_study.register(app)
cli_report.register(app)
cli_interpret.register(app)
cli_compare.register(app)


def main() -> None:
    app(prog_name="deepcluster")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

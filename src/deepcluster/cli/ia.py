"""``deepcluster ia``: Initial Alignment of random networks, for one setting or a grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from deepcluster.cli._common import QuietOption, err_console, out_console, user_errors

if TYPE_CHECKING:
    from deepcluster.analysis.alignment import IAResult

#: Every example runs as written, from any folder (tests/interpret/test_help_examples.py).
EPILOG = "\n\n".join([
    "Examples:",
    "deepcluster ia -c digits_tiny --seeds 20",
    "deepcluster ia -c digits_tiny --set k=10,20,50 --set pca_dim=off,16 --seeds 10 -o runs/ia_digits",
    "deepcluster ia -c fmnist_lenet --set k=5 --set data.limit=10000 --seeds 30 --labelled 2000",
])


@user_errors
def ia(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Training config whose network and clustering are measured: a YAML file or a preset name (deepcluster list).")] = None,
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
    import yaml

    from deepcluster.analysis.ia_grid import ia_grid, split_grid
    from deepcluster.analysis.ia_report import write_ia_outputs
    from deepcluster.core import distributed
    from deepcluster.core.config import TrainConfig, build_config, config_to_dict
    from deepcluster.core.files import write_text

    fixed, grid = split_grid(set_)
    base = build_config(TrainConfig, config, fixed)
    world = distributed.init(base.distributed.backend, base.device, base.distributed.timeout)
    out = out or Path("runs") / "ia" / (config.stem if config else base.data.name)

    def show(res) -> None:
        if not world.is_main:
            return
        s = res.summary()
        out_console.print(
            f"{res.name:28s} median {s['median']:.3f}  [q1 {s['q1']:.3f}, q3 {s['q3']:.3f}]  "
            f"min {s['min']:.3f}  max {s['max']:.3f}  ({res.seconds:.1f} s, {res.n_labelled} labelled)",
            highlight=False, markup=False,
        )

    def note(message: str) -> None:  # progress on stderr: stdout keeps the results
        err_console.print(message, highlight=False, markup=False, soft_wrap=True)

    results = ia_grid(base, grid, range(first_seed, first_seed + seeds), labelled=labelled, label_file=labels,
                      method=method, show_progress=not quiet, on_result=show,
                      log=note if world.is_main and not quiet else None)
    if not world.is_main:  # under torchrun the seeds were shared out; rank 0 writes and prints
        distributed.shutdown()
        return
    write_text(out / "config.yaml", yaml.safe_dump(config_to_dict(base), sort_keys=False))
    rec = write_ia_outputs(results, out, tie=tie, command_config={
        "config": str(config) if config else None, "set": list(set_ or []), "grid": grid, "seeds": seeds,
        "first_seed": first_seed, "labelled": labelled, "labels": str(labels) if labels else None,
        "tie": tie, "method": method,
    })

    _print_outcome(results, rec, seeds=seeds, out=out, tie=tie)
    distributed.shutdown()


def _print_outcome(results: Sequence[IAResult], rec: dict[str, Any], *, seeds: int, out: Path, tie: float) -> None:
    """The per-setting table (recommended setting starred), the recommendation, the best seeds."""
    from deepcluster.analysis.ia_report import summary_rows

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


def register(app: typer.Typer) -> None:
    """Add the ``ia`` command to ``app``."""
    app.command(epilog=EPILOG)(ia)

"""``deepcluster assign``: put new images in a run's learned clusters (a CSV and a short summary).

No ``from __future__ import annotations``: typer reads the annotations (see cli/study.py).
"""

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from deepcluster.cli._common import QuietOption, fmt, out_console, user_errors

EPILOG = (
    "Examples: deepcluster train -c digits_tiny -o runs/digits;  "
    "deepcluster assign runs/digits --dataset digits --split test;  "
    "deepcluster assign runs/digits my_scans/ --checkpoint 5 --out scans.csv"
)

#: Clusters listed in the summary (the CSV has every image).
SHOWN = 20


@user_errors
def assign(
    run: Annotated[Path, typer.Argument(help="A run folder made by `deepcluster train`.")],
    images: Annotated[Path | None, typer.Argument(help="A folder of images (one subfolder per class gives labels) or an ingested pool; with --dataset, that dataset's folder (optional where it has a default location).")] = None,
    checkpoint: Annotated[str, typer.Option(help="last, or a cycle number with a kept checkpoint: whose clusters.")] = "last",
    dataset: Annotated[str | None, typer.Option(help="Read IMAGES as this dataset (`deepcluster list`), e.g. digits, cifar10, ingested.")] = None,
    split: Annotated[str, typer.Option(help="The split of --dataset: train or test.")] = "train",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The CSV to write (default RUN/assign/<images>.csv).")] = None,
    quiet: QuietOption = False,
) -> None:
    """Assign images to the clusters of a run, exactly as its cycle assigned its own images.

    Writes a CSV path,cluster,distance (index instead of path when the images have no files) and prints how many images went to each cluster, against its size in training, and the purity of each cluster's majority label where the images have labels.
    """
    from deepcluster.evaluate.assign import assign_images

    res = assign_images(run, images, dataset=dataset, split=split, checkpoint=checkpoint, show_progress=not quiet)
    target = out if out is not None else run / "assign" / f"{_stem(images, dataset, split)}.csv"
    res.write_csv(target)
    _summary(res)
    out_console.print(f"wrote {target}", highlight=False, soft_wrap=True)


def _stem(images: Path | None, dataset: str | None, split: str) -> str:
    if dataset is not None:
        return f"{dataset.strip().lower()}_{split}"
    return images.expanduser().resolve().name or "images"


def _summary(res) -> None:
    which = f"cycle {res.cycle}" + (f" (checkpoint of cycle {res.checkpoint_cycle}: clustering halted after "
                                    f"{res.cycle})" if res.cycle != res.checkpoint_cycle else "")
    out_console.print(f"{res.n} images → {res.k} clusters of {which} ({res.method}); "
                      f"{int((res.counts > 0).sum())} clusters got images", highlight=False, soft_wrap=True)
    for note in res.notes:
        out_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    purity, majority = res.purity(), res.majority()
    counts, train_total = res.counts, max(int(res.train_sizes.sum()), 1)
    order = [c for c in sorted(range(res.k), key=lambda c: (-int(counts[c]), c)) if counts[c] > 0]
    table = Table(title="clusters by images assigned" + (f" (the {SHOWN} largest of {len(order)}; every image is in "
                                                         "the CSV)" if len(order) > SHOWN else ""))
    for col in ("cluster", "images", "share", "training size", "training share"):
        table.add_column(col, justify="right")
    if purity is not None:
        table.add_column("majority label", justify="left")
        table.add_column("purity", justify="right")
    for c in order[:SHOWN]:
        row = [str(c), str(int(counts[c])), f"{counts[c] / max(res.n, 1):.1%}", str(int(res.train_sizes[c])),
               f"{res.train_sizes[c] / train_total:.1%}"]
        if purity is not None:
            label = int(majority[c])
            name = "-" if label < 0 else (res.classes[label] if res.classes and label < len(res.classes) else str(label))
            row += [escape(name), fmt(float(purity[c]))]
        table.add_row(*row)
    out_console.print(table)
    overall = res.overall_purity()
    if overall is not None:
        out_console.print(f"purity (images carrying their cluster's majority label): {overall:.3f}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``assign`` command to ``app``."""
    app.command("assign", epilog=EPILOG)(assign)

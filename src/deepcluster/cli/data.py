"""``deepcluster data``: ingest a pool of images into one random-access dataset, and verify one.

No ``from __future__ import annotations``: typer reads the annotations of the commands.
"""

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from deepcluster.cli._common import QuietOption, err_console, out_console, user_errors

#: Every example runs as written, in order, where the README's Fashion-MNIST is installed
#: (tests/interpret/test_help_examples.py).
INGEST_EPILOG = "\n\n".join([
    "Examples:",
    "deepcluster data ingest /usr/share/datasets/fashion-mnist pools/fmnist",
    "deepcluster data verify pools/fmnist",
    "deepcluster train -c fmnist_lenet --set data.name=ingested --set data.root=pools/fmnist --set cycles=2 "
    "-o runs/fmnist_pool",
    "SOURCE may also be a folder of images (class sub-folders or flat; --size 64 to store them at 64 px) or of "
    "img2dataset .tar shards.",
])


@user_errors
def ingest(
    source: Annotated[Path, typer.Argument(help="An image folder (class sub-folders or flat), a folder of WebDataset .tar shards (or one shard), or a Fashion-MNIST / CIFAR-10 / SVHN folder.")],
    out: Annotated[Path, typer.Argument(help="The dataset folder to write (re-run the same command to continue an interrupted ingest).")],
    size: Annotated[int | None, typer.Option(help="Side the images are stored at, in pixels (default 32 for image files, the native size for known datasets).")] = None,
    channels: Annotated[int | None, typer.Option(help="1 (grey) or 3 (RGB); default 3 for image files, native for known datasets.")] = None,
    split: Annotated[str, typer.Option(help="For known datasets: train or test.")] = "train",
    workers: Annotated[int, typer.Option(min=0, help="Decoding processes (0: in this process).")] = 2,
    quiet: QuietOption = False,
) -> None:
    """Decode, resize and store every image of SOURCE in OUT: pixels in one file read at random
    by any number of processes, an index, a checksum, and the list of images that could not be read."""
    from deepcluster.data.pool_reader import SKIPPED
    from deepcluster.data.pool_writer import ingest as run_ingest

    def log(message: str) -> None:
        err_console.print(escape(message), highlight=False, soft_wrap=True)

    m = run_ingest(source, out, size=size, channels=channels, split=split, workers=workers,
                   show_progress=not quiet, log=log)
    skipped = f", {m['skipped']} skipped (listed in {out / SKIPPED})" if m["skipped"] else ""
    out_console.print(escape(f"{out}: {m['n']} images, {m['channels']}×{m['size']}×{m['size']}{skipped}"),
                      highlight=False, soft_wrap=True)
    out_console.print(escape(f"use it with --set data.name=ingested --set data.root={out}"), highlight=False, soft_wrap=True)


@user_errors
def verify(
    root: Annotated[Path, typer.Argument(help="An ingested dataset folder.")],
) -> None:
    """Recompute the checksums of an ingested dataset (exit 2 if a file was changed or damaged)."""
    from deepcluster.data.pool_writer import verify as run_verify

    m = run_verify(root)
    out_console.print(escape(f"{root}: ok, {m['n']} images, {m['channels']}×{m['size']}×{m['size']}"),
                      highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group (``ingest``, ``verify``) to ``app``."""
    data_app = typer.Typer(no_args_is_help=True, help="Prepare pools of images larger than RAM: ingest, verify.")
    app.add_typer(data_app, name="data")
    data_app.command("ingest", epilog=INGEST_EPILOG)(ingest)
    data_app.command("verify", epilog="Example: deepcluster data verify pools/fmnist (made by: deepcluster data ingest "
                     "/usr/share/datasets/fashion-mnist pools/fmnist)")(verify)

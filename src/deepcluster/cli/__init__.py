"""The ``deepcluster`` command: one module per command group, each a thin layer over the library.

``_common`` holds what they share (consoles, options, the one-line user errors); the modules
here only parse options, call ``deepcluster.<area>`` and print.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from deepcluster import __version__
from deepcluster.cli import assign, compare, data, evaluate, ia, interpret, report, study, train
from deepcluster.cli._common import out_console

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="DeepCluster on your own images: train, evaluate, export.",
)


def list_() -> None:
    """List the presets, datasets and architectures this version knows."""
    from deepcluster.core.config import PRESETS_DIR, available_presets, read_yaml
    from deepcluster.data import available_datasets
    from deepcluster.models import available_models

    out_console.print("presets (deepcluster train -c NAME):", highlight=False)
    for name in available_presets("train"):
        cfg = read_yaml(PRESETS_DIR / f"{name}.yaml")
        data, model = cfg.get("data", {}), cfg.get("model", {})
        out_console.print(f"  {name:<22} {data.get('name', 'fashion-mnist')}, {model.get('arch', 'lenet5')}, "
                          f"k={cfg.get('k', 10)}, {cfg.get('cycles', 15)} cycles", highlight=False)
    out_console.print("studies (deepcluster study NAME): " + ", ".join(available_presets("study")), highlight=False)
    out_console.print(f"  (the files: {PRESETS_DIR}; copy one to change it)", highlight=False)
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


# The order of registration is the order of `deepcluster --help`.
train.register(app)
evaluate.register(app)
assign.register(app)
ia.register(app)
app.command("list")(list_)
data.register(app)
study.register(app)
report.register(app)
interpret.register(app)
compare.register(app)


def main() -> None:
    app(prog_name="deepcluster")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

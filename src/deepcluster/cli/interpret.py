"""``deepcluster dissect`` (network dissection) and ``deepcluster concepts make`` (the probe).

The commands are module-level functions; :func:`register` attaches them. ``dissect``'s command
line is the dataclass :class:`DissectArgs`, one field per argument and option, which
:func:`~deepcluster.cli._common.command_from_fields` turns into the signature typer reads.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from deepcluster.cli._common import (
    DataRootOption,
    QuietOption,
    command_from_fields,
    err_console,
    out_console,
    user_errors,
)


def summary_table(summary: dict) -> Table:
    """Units and concepts per category of a dissection's summary.json, as a rich table."""
    table = Table(
        title=escape(f"{summary['model']} / {summary['layer']}: {summary['n_labelled']} of {summary['n_units']} units "
                     f"labelled (IoU ≥ {summary['iou_threshold']})"),
        caption=escape(f"probe: {summary['n_images']} images, {summary['n_concepts']} concepts; "
                       f"quantile {summary['quantile']} ({summary['quantile_method']})"),
    )
    table.add_column("category")
    table.add_column("units", justify="right")
    table.add_column("concepts", justify="right")
    table.add_column("top concepts (units)")
    by_cat: dict[str, list[str]] = {}
    for d in summary["top_concepts"]:
        by_cat.setdefault(d["category"], []).append(f"{d['concept']} ({d['units']})")
    for cat, n in summary["units_per_category"].items():
        table.add_row(escape(cat), str(n), str(summary["unique_concepts_per_category"][cat]),
                      escape(", ".join(by_cat.get(cat, [])[:5]) or "-"))
    table.add_row("all", str(summary["n_labelled"]), str(summary["unique_concepts"]), "", style="bold")
    return table


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


def _per_model(values: list | None, n: int, option: str, *, once_ok: bool = True) -> list:
    """``values`` for ``n`` models: one value for all (when ``once_ok``) or one per model."""
    values = list(values or [])
    if len(values) == n:
        return values
    if len(values) == 1 and once_ok:
        return values * n
    from deepcluster.core.errors import ConfigError

    raise ConfigError(f"{len(values)} {option} for {n} MODELs: give one {option} per MODEL, in order"
                      + (" (or one for all)" if once_ok else " (- for a model without)"))


def _default_names(infos: list, weights: list[Path | None]) -> list[str]:
    """Model names: a run folder's name; otherwise the model's, with its weights file's stem when
    several models are dissected."""
    names = []
    for info, w in zip(infos, weights):
        stem = w.name.split(".")[0] if w is not None and len(infos) > 1 else ""
        names.append(_slug(info.name if info.run_dir is not None or not stem else f"{info.name}-{stem}"))
    return names


def _out_folder(out: Path | None, info, layer: str, name: str, *, several: bool) -> Path:
    """Where a model's dissection goes (see --out)."""
    if out is not None and not several:
        return out
    if out is not None:
        return out / _slug(f"{name}_{layer}")
    if info.run_dir is not None:
        return info.run_dir / "dissect" / _slug(layer)
    return Path("dissect") / _slug(f"{name}_{layer}")


_MODELS, _PROBE, _OUTPUT, _SPEED = "Models", "Probe and scoring", "Output", "Speed"


@dataclass(frozen=True)
class DissectArgs:
    """The command line of ``deepcluster dissect``: its argument and options, in ``--help`` order.

    The help is one line per option; docs/interpretation.md has the detail (weights layouts, the
    union rules, thresholds, decoding)."""

    models: Annotated[list[str], typer.Argument(metavar="MODEL", show_default=False, help="A run folder, a torchvision name (resnet18) or module:attr / file.py:attr. Several: dissected together, the probe read once.")]
    layer: Annotated[list[str], typer.Option("--layer", "-l", metavar="LAYER", rich_help_panel=_MODELS, help="A probe layer of our nets (conv2), a module name (layer4, features.8) or last-conv. Once, or once per MODEL.")]
    checkpoint: Annotated[str, typer.Option(metavar="WHICH", rich_help_panel=_MODELS, help="Run folders: last, init or a kept cycle number.")] = "last"
    weights: Annotated[list[str] | None, typer.Option("--weights", metavar="FILE", rich_help_panel=_MODELS, help="Local weights of a torchvision or module:attr model: a state dict or a MoCo, SwAV, DINO, solo-learn, VISSL, BYOL or Lightning checkpoint. Once per MODEL (- for none).")] = None
    weights_prefix: Annotated[list[str] | None, typer.Option("--weights-prefix", metavar="PREFIX", rich_help_panel=_MODELS, help="The backbone's key prefix in --weights when its layout is not recognised (module.encoder.).")] = None
    name: Annotated[list[str] | None, typer.Option("--name", "-n", metavar="NAME", rich_help_panel=_MODELS, help="One per MODEL, for output folders and the LCE (default: the run folder's or model's name).")] = None
    input_size: Annotated[int | None, typer.Option(metavar="PX", rich_help_panel=_MODELS, help="Resize probe images to this side (default: a run's input size, else the probe's).")] = None
    concepts: Annotated[Path | None, typer.Option("--concepts", metavar="DIR", rich_help_panel=_PROBE, help="A Broden-format folder (default: the built-in probe, made once in $DEEPCLUSTER_CACHE or ~/.cache/deepcluster).")] = None
    quantile: Annotated[float, typer.Option(metavar="Q", rich_help_panel=_PROBE, help="Top fraction of a unit's activations that counts as active.")] = 0.005
    iou_threshold: Annotated[float, typer.Option("--iou-threshold", metavar="IOU", rich_help_panel=_PROBE, help="IoU a unit needs to be labelled with a concept.")] = 0.04
    union: Annotated[str, typer.Option("--union", metavar="RULE", rich_help_panel=_PROBE, help="annotated (NetDissect) or lite (NetDissect-Lite's exact arithmetic).")] = "annotated"
    method: Annotated[str, typer.Option(metavar="METHOD", rich_help_panel=_PROBE, help="Thresholds: auto, exact or sketch (histograms, for huge probes).")] = "auto"
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="DIR", rich_help_panel=_OUTPUT, help="Default RUN/dissect/LAYER, else ./dissect/NAME_LAYER; several models: a sub-folder each.")] = None
    lce: Annotated[bool, typer.Option("--lce", rich_help_panel=_OUTPUT, help="Several models: also their Learned Concepts Embedding in OUT/lce.")] = False
    max_units: Annotated[int, typer.Option(metavar="N", rich_help_panel=_OUTPUT, help="Labelled units shown in dissect.html (all are in tally.csv).")] = 64
    batch_size: Annotated[int, typer.Option(metavar="N", rich_help_panel=_SPEED, help="Images per forward pass.")] = 64
    workers: Annotated[int | None, typer.Option(min=0, metavar="N", rich_help_panel=_SPEED, help="Processes decoding the probe (0: none; default: the cores per process, at most 16).")] = None
    threads: Annotated[int | None, typer.Option(min=1, metavar="N", rich_help_panel=_SPEED, help="PyTorch CPU threads (default: PyTorch's choice).")] = None
    device: Annotated[str, typer.Option(metavar="DEVICE", rich_help_panel=_SPEED, help="auto, cpu or cuda.")] = "auto"
    precision: Annotated[str | None, typer.Option(metavar="P", rich_help_panel=_SPEED, help="fp32, bf16 or auto (default: a run folder's own, else auto).")] = None
    feature_cache_mb: Annotated[float, typer.Option("--feature-cache-mb", min=0, metavar="MB", rich_help_panel=_SPEED, help="Keep activations between the two passes up to this size (0: run the models twice).")] = 512
    data_root: DataRootOption = None
    quiet: QuietOption = False


@dataclass
class _PerModel:
    """The per-model options of a ``dissect`` command line, one entry per MODEL."""

    layers: list[str]
    weights: list[Path | None]
    prefixes: list[str | None]
    #: ``None`` when no --name was given.
    names: list[str] | None


def _per_model_options(args: DissectArgs) -> _PerModel:
    """--layer, --weights, --weights-prefix and --name spread over the MODELs (after the checks of
    the single options: --max-units, --union)."""
    from deepcluster.core.errors import ConfigError
    from deepcluster.interpret.dissect import UNIONS

    n = len(args.models)
    if args.max_units < 0:
        raise ConfigError(f"--max-units must be >= 0, got {args.max_units}")
    if args.union not in UNIONS:
        raise ConfigError(f"--union must be {' or '.join(UNIONS)}, got {args.union!r}")
    layers = _per_model(args.layer, n, "--layer")
    weight_files = ([None if w in ("-", "") else Path(w) for w in _per_model(args.weights, n, "--weights", once_ok=False)]
                    if args.weights else [None] * n)
    prefixes = [None if p in (None, "-", "") else p for p in _per_model(args.weights_prefix or [None], n, "--weights-prefix")]
    names = _per_model(args.name, n, "--name") if args.name else None
    if args.lce and n < 2:
        raise ConfigError("--lce compares models: give at least 2 MODELs (or run `deepcluster lce` on dissections made earlier)")
    return _PerModel(layers, weight_files, prefixes, names)


def _load_targets(args: DissectArgs, per: _PerModel) -> tuple[list, list]:
    """Each MODEL loaded (its weights report printed), its precision chosen and its layer checked:
    the :class:`~deepcluster.interpret.dissect.DissectTarget` list and the models' ``ModelInfo``."""
    from deepcluster.core.device import resolve_device
    from deepcluster.core.precision import resolve_precision
    from deepcluster.interpret.dissect import DissectTarget
    from deepcluster.interpret.model_source import load_model_source, resolve_layer
    from deepcluster.runs import RunFolder

    targets, infos = [], []
    for spec, lay, w, prefix in zip(args.models, per.layers, per.weights, per.prefixes):
        net, info = load_model_source(spec, weights=w, checkpoint=args.checkpoint, weights_prefix=prefix)
        if info.weights_report is not None:
            err_console.print(escape(info.weights_report.summary()), highlight=False, soft_wrap=True)
        if args.precision is None and info.run_dir is not None:
            run_cfg = RunFolder(info.run_dir).load_config()
            chosen = resolve_precision(run_cfg.precision, resolve_device(args.device), run_cfg.channels_last)
        else:
            chosen = resolve_precision(args.precision or "auto", resolve_device(args.device))
        resolve_layer(net, lay)  # a bad layer fails before the probe is generated or read
        size = args.input_size if args.input_size is not None else info.input_size
        targets.append(DissectTarget(net, lay, input_size=size, mean=info.mean, std=info.std, grey=info.grey,
                                     precision=chosen, name=info.spec))
        infos.append(info)
    return targets, infos


def _labels_and_folders(args: DissectArgs, per: _PerModel, infos: list) -> tuple[list[str], list[Path]]:
    """The models' names and output folders, each distinct."""
    from deepcluster.core.errors import ConfigError

    n = len(args.models)
    labels = per.names or _default_names(infos, per.weights)
    if len(set(labels)) < n:
        raise ConfigError(f"models {', '.join(sorted({x for x in labels if labels.count(x) > 1}))} share a name: "
                          "give each MODEL a --name")
    outs = [_out_folder(args.out, info, lay, label, several=n > 1) for info, lay, label in zip(infos, per.layers, labels)]
    if len(set(outs)) < n:
        raise ConfigError("two models would write the same folder: give each MODEL a --name, or dissect them apart")
    return labels, outs


def _note(message: str) -> None:
    """A progress line on stderr (stdout keeps the results)."""
    err_console.print(escape(message), highlight=False, soft_wrap=True)


def _probe_root(concepts: Path | None, *, quiet: bool) -> Path:
    """The probe folder: --concepts, else the built-in probe (generated on first use)."""
    from deepcluster.core.errors import DataError
    from deepcluster.interpret.dissect import default_concepts

    if concepts is None:
        return default_concepts(show_progress=not quiet, log=None if quiet else _note)
    if not concepts.is_dir():
        raise DataError(f"concept folder {concepts} does not exist: pass a Broden-format folder (e.g. NetDissect's "
                        "broden1_224), or make one with `deepcluster concepts make DIR`")
    return concepts


def _dissect_options(args: DissectArgs):
    """The :class:`~deepcluster.interpret.dissect.DissectOptions` of the command line."""
    from deepcluster.interpret.dissect import DissectOptions

    workers = {} if args.workers is None else {"num_workers": args.workers}
    return DissectOptions(quantile=args.quantile, iou_threshold=args.iou_threshold, batch_size=args.batch_size,
                          method=args.method, device=args.device, show_progress=not args.quiet,
                          feature_cache_mb=args.feature_cache_mb, union=args.union, **workers)


def _write_results(results: list, outs: list[Path], args: DissectArgs, start: float) -> None:
    """Each model's files and table, then one line of totals."""
    from deepcluster.interpret.dissect_report import write_dissection

    for res, folder in zip(results, outs):
        paths = write_dissection(res, folder, max_units=args.max_units, show_progress=not args.quiet)
        out_console.print(summary_table(res.summary()))
        out_console.print(f"wrote {folder}: " + ", ".join(p.name for p in paths.values()) + ", units/",
                          highlight=False, soft_wrap=True)
    n = len(results)
    t = results[0].timings
    what = f"{results[0].units} units" if n == 1 else f"{n} models ({sum(r.units for r in results)} units)"
    out_console.print(
        f"dissected {what} on {results[0].n_images} images in {time.perf_counter() - start:.1f} s "
        f"(thresholds {t['thresholds']:.1f} s, IoU {t['iou']:.1f} s, {results[0].device}, "
        f"{', '.join(sorted({r.precision for r in results}))})", highlight=False)


@user_errors
def dissect_cmd(args: DissectArgs) -> None:
    """Network dissection (NetDissect-Lite): label each unit of a layer with the concept of a
    Broden-format probe that its top activations overlap best (IoU). Writes tally.csv, summary.json
    and dissect.html (and thresholds.npy, iou.npy, concepts.csv) per model. Details:
    docs/interpretation.md."""
    from deepcluster.interpret.broden import BrodenDataset
    from deepcluster.interpret.dissect import dissect_many
    from deepcluster.runs import data_root

    start = time.perf_counter()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    per = _per_model_options(args)
    with data_root(args.data_root):
        targets, infos = _load_targets(args, per)
    labels, outs = _labels_and_folders(args, per, infos)
    ds = BrodenDataset(_probe_root(args.concepts, quiet=args.quiet))
    results = dissect_many(targets, ds, _dissect_options(args))
    _write_results(results, outs, args, start)
    if args.lce:
        from deepcluster.cli.compare import run_lce

        run_lce(labels, [folder / "tally.csv" for folder in outs], (args.out or Path("dissect")) / "lce",
                threshold=args.iou_threshold)


@user_errors
def concepts_make(
    out: Annotated[Path, typer.Argument(help="Folder to create (or reuse, when it holds the same probe).")],
    n_images: Annotated[int, typer.Option(help="Number of images.")] = 1000,
    size: Annotated[int, typer.Option(help="Image and mask side in pixels (>= 24).")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed: same arguments, same files.")] = 0,
    quiet: QuietOption = False,
) -> None:
    """Generate the built-in synthetic concept probe (Broden layout): shapes, their parts,
    textures, colours and photo scenes, with their masks."""
    from deepcluster.interpret.broden import BrodenDataset
    from deepcluster.interpret.concepts import make_concept_probe

    start = time.perf_counter()
    root = make_concept_probe(out, n_images=n_images, size=size, seed=seed, show_progress=not quiet)
    ds = BrodenDataset(root)
    per_cat = ", ".join(f"{c} {len(cat.labels)}" for c, cat in ds.categories.items())
    out_console.print(f"concept probe → {root}: {len(ds)} images of {size}×{size}, {len(ds.labels)} concepts "
                      f"({per_cat}) in {time.perf_counter() - start:.1f} s", highlight=False, soft_wrap=True)


#: Every example runs as written from an empty folder, in order (tests/interpret/test_help_examples.py).
DISSECT_EPILOG = "\n\n".join([
    "Examples (after deepcluster train -c digits_tiny -o runs/digits):",
    "deepcluster dissect runs/digits --layer conv2",
    "deepcluster dissect runs/digits --layer conv2 --checkpoint init -o runs/digits/dissect/conv2_init",
    "deepcluster dissect torchvision.models:resnet18 --layer layer4",
    "deepcluster dissect runs/digits resnet18 --layer conv2 --layer last-conv -o dissect/two --lce",
    "Published checkpoints (--weights FILE) and every option in detail: docs/interpretation.md",
])


def register(app: typer.Typer) -> None:
    """Add the ``dissect`` command and the ``concepts`` group to ``app``."""
    app.command("dissect", epilog=DISSECT_EPILOG)(command_from_fields(DissectArgs, dissect_cmd))

    concepts_app = typer.Typer(no_args_is_help=True, help="Concept probes for `deepcluster dissect`.")
    app.add_typer(concepts_app, name="concepts")
    concepts_app.command("make", epilog="Example:\n\ndeepcluster concepts make probes/small --n-images 200 --size 48")(
        concepts_make)

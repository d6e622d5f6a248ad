"""``deepcluster train``: train (or resume) a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from deepcluster import __version__
from deepcluster.cli._common import QuietOption, SetOption, fmt, out_console, user_errors

EPILOG = (
    "Examples: deepcluster train -c digits_tiny -o runs/digits;  "
    "deepcluster train -c fmnist_lenet --set k=30 --set pca_dim=off -o runs/fm;  "
    "deepcluster train --resume runs/digits --set cycles=15;  "
    "deepcluster train -c imagenet_alexnet --set init=fair_alexnet.pth.tar --set cycles=0 -o runs/fair "
    "(a published checkpoint as a run: docs/fair_deepcluster.md).  "
    "Presets (deepcluster list): " + ", ".join(sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")))
)


def print_cycle(record: dict[str, Any], total: int) -> None:
    """One console line per finished cycle."""
    sizes = record.get("cluster_sizes", {})
    secs = record.get("seconds", {})
    parts = [
        f"[bold]cycle {record['cycle']:>3}/{total}[/]",
        f"loss {fmt(record.get('loss'))}",
        f"acc {fmt(record.get('train_acc'))}",
        f"NMI(prev) {fmt(record.get('nmi_prev'))}",
    ]
    if "init_ia" in record:
        parts.insert(1, f"[cyan]init IA {fmt(record['init_ia'])} (init_ia.json)[/]")
    if "nmi_labels" in record:
        parts.append(f"NMI(labels) {fmt(record['nmi_labels'])}")
    else:
        parts.append("[dim]no labels: label metrics skipped[/]")
    parts.append(f"k {record.get('k')} sizes {sizes.get('min')}/{fmt(sizes.get('median'), 0)}/{sizes.get('max')}")
    if record.get("pca_dim_effective") is not None:
        parts.append(f"pca {record['pca_dim_effective']}")
    if record.get("n_resplit"):
        parts.append(f"resplit {record['n_resplit']}")
    if record.get("pool_subset"):
        parts.append(f"sample {record['pool_subset']}")
    if not record.get("clustered", True):
        parts.append("[dim](supervised: the labels)[/]" if record.get("supervised") else "[dim](clustering halted)[/]")
    parts.append("[dim]" + " ".join(f"{k} {v:.1f}s" for k, v in secs.items()) + "[/]")
    if record.get("images") and record["cycle"] == 1:  # how the run reads its images: once
        out_console.print(f"[dim]images: {escape(record['images'])}[/]", highlight=False)
    if record["cycle"] == 1 and record.get("precision"):  # and the precision of each phase (precision.json)
        training = record.get("training_precision", record["precision"])
        out_console.print(f"[dim]precision: features {record['precision']}, training {training}[/]", highlight=False)
    out_console.print("  ".join(parts), highlight=False, soft_wrap=True)


@user_errors
def train(
    config: Annotated[str | None, typer.Option("--config", "-c", help="A preset name (e.g. fmnist_lenet, digits_tiny: `deepcluster list`) or a YAML file.")] = None,
    set_: SetOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder to create.")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in this folder from its last finished cycle.")] = None,
    nproc: Annotated[int | None, typer.Option("--nproc", min=1, help="Train with N processes on this machine (torchrun --standalone --nproc_per_node N); the run is the same, batch_size stays the global batch.")] = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="With --resume: where the run's images are now, when they moved (saved into config.yaml).")] = None,
    quiet: QuietOption = False,
) -> None:
    """Train a CNN with DeepCluster; every cycle is checkpointed into the run folder."""
    from deepcluster.analysis.alignment import resolve_init
    from deepcluster.core import distributed
    from deepcluster.core.config import TrainConfig, apply_overrides, build_config, parse_overrides
    from deepcluster.core.device import resolve_device
    from deepcluster.core.errors import ConfigError
    from deepcluster.core.precision import run_precision
    from deepcluster.runs import RunFolder, check_output_folder
    from deepcluster.runs import data_root as use_data_root
    from deepcluster.train import train as run_training
    from deepcluster.train.runner import check_resumable

    if resume is not None and (config is not None or out is not None):
        raise ConfigError("--resume takes the config from the run folder: drop --config/--out")
    if resume is None and out is None:
        raise ConfigError("say where the run goes: --out runs/NAME")
    if resume is None and data_root is not None:
        raise ConfigError("--data-root is for a run folder whose data moved (with --resume): "
                          "for a new run use --set data.root=DIR")
    if nproc is not None and nproc > 1 and not distributed.launched_by_torchrun():
        args = ["--resume", str(resume)] if resume is not None else ["--out", str(out)]
        args += ["--config", str(config)] if config is not None else []
        args += ["--data-root", str(data_root)] if data_root is not None else []
        args += [a for item in set_ or [] for a in ("--set", item)] + (["--quiet"] if quiet else [])
        return launch(nproc, ["train", *args])

    if resume is not None:
        def read_run() -> tuple[TrainConfig, str, str, float]:
            # only rank 0 reads (and later writes) the run folder; the process group is created with the
            # run's own distributed.backend and timeout, which rank 0 hands to the others before it exists
            run = RunFolder(resume)
            with use_data_root(data_root):  # a moved data folder: saved into config.yaml by the trainer
                saved = check_resumable(run)
            extra = parse_overrides(set_)
            if set(extra) - {"cycles"}:
                raise ConfigError("with --resume only --set cycles=N may change (to extend a run); other keys would break reproducibility")
            done = run.load_checkpoint("last")["cycle"] if run.checkpoint_path.is_file() else 0
            if "cycles" in extra:  # saved by the trainer, once the folder is checked and locked
                saved = apply_overrides(TrainConfig, saved, {"cycles": extra["cycles"]}, source="--set")
                if saved.cycles < done:
                    raise ConfigError(f"{resume} has {done} finished cycles: --set cycles={saved.cycles} cannot undo "
                                      f"them; extend it (--set cycles={done + 1} or more), or train a new run")
            if data_root is not None:
                out_console.print(f"data.root → {saved.data.root} (saved in {run.config_path})", highlight=False)
            if "cycles" in extra and done > 0:
                out_console.print(f"extending {resume}: {done} cycles done, {saved.cycles} in all", highlight=False)
            elif "cycles" in extra and done == 0 and saved.cycles > 0 and run.init_path.is_file():
                out_console.print(f"training {resume} from its initial network (checkpoints/init.pt): {saved.cycles} "
                                  "cycles", highlight=False)
            if done >= saved.cycles:  # every rank gets None and stops
                if data_root is not None:
                    run.save_config(saved)
                out_console.print(f"nothing to do: {resume} has finished its {done} cycles "
                                  f"(--set cycles={done + 5} extends it)", highlight=False)
                return None, saved.distributed.backend, saved.device, saved.distributed.timeout
            return saved, saved.distributed.backend, saved.device, saved.distributed.timeout

        world, cfg = distributed.init_from_main(read_run)
        if cfg is None:
            distributed.shutdown()
            return
        target = Path(resume)
    else:
        cfg = build_config(TrainConfig, config, set_)
        if cfg.data.root is not None:  # stored absolute in the run folder: it works from anywhere
            cfg = apply_overrides(TrainConfig, cfg, {"data.root": str(Path(cfg.data.root).expanduser().resolve())})
        if cfg.init_file is not None:  # recorded as given, absolute (the run keeps the network in checkpoints/init.pt)
            cfg = apply_overrides(TrainConfig, cfg, {"init": str(cfg.init_file.resolve())})
        world = distributed.init(cfg.distributed.backend, cfg.device, cfg.distributed.timeout)
        if world.is_main:
            check_output_folder(out)
            if RunFolder(out).exists():
                raise ConfigError(f"{out} already holds a run: continue it with --resume {out}, or choose another --out")
        target = out
    precision = run_precision(cfg, resolve_device(cfg.device))  # a bad device or precision fails here
    say = out_console.print if world.is_main else (lambda *a, **k: None)
    # auto with native bf16: each phase runs in what is measured faster here (train/autoprecision.py)
    precision_label = "precision auto: bf16 or fp32 per phase" if cfg.precision == "auto" and precision.bf16 \
        else precision.label
    processes = ""
    if world.distributed:  # the backend and timeout the process group was created with
        timeout = "" if world.timeout_s is None else f", timeout {world.timeout_s:g} s"
        processes = f", {world.size} processes ({world.backend}{timeout})"
    say(f"[bold]deepcluster {__version__}[/] training {cfg.model.arch} on {cfg.data.name} "
        f"(k={cfg.k}, {cfg.cycles} cycles, pca_dim={cfg.pca_dim}, {precision_label}{processes}) → {target}",
        highlight=False)
    init_ia = None
    if resume is None:
        cfg, init_ia = resolve_init(cfg, show_progress=not quiet and world.is_main)
    run_training(cfg, target, resume=resume is not None, init_ia=init_ia, show_progress=not quiet,
                 on_cycle=lambda r: print_cycle(r, cfg.cycles), log=lambda line: say(escape(line), highlight=False))
    if cfg.cycles == 0:
        say(f"done: {target} holds the initial network only (cycles: 0): evaluate, report, dissect or compare it "
            f"as any run; train it on your images with `deepcluster train --resume {target} --set cycles=N`",
            highlight=False)
        distributed.shutdown()
        return
    say(f"done: {target} (evaluate with `deepcluster evaluate {target}`)", highlight=False)
    distributed.shutdown()


def launch(nproc: int, args: list[str]) -> None:
    """Run ``deepcluster ARGS`` in ``nproc`` processes on this machine, through torchrun."""
    import os

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from deepcluster.cli._common import err_console

    # torchrun's default of 1 thread per process would leave cores idle on a machine with more
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    parsed = get_args_parser().parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "deepcluster", *args])
    try:
        run(parsed)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()  # the first to fail; torchrun then stopped the others
        code = failure.exitcode
        why = " (its error is above)" if code in (1, 2) else (f" (killed by signal {-code})" if code < 0 else "")
        err_console.print(f"[bold red]error:[/] rank {rank} stopped with exit code {code}{why}; the other ranks "
                          "were stopped. Finished cycles are saved: continue with `deepcluster train --resume RUN` "
                          "(with any number of processes)", highlight=False, soft_wrap=True)
        raise typer.Exit(2 if code == 2 else 1) from None


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""
    app.command(epilog=EPILOG)(train)

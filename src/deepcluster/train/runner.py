"""Runs DeepCluster cycles into a run folder: checkpoints, metrics, TensorBoard, resume."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepcluster import __version__
from deepcluster.cluster import ari, cluster_size_summary, clustering_accuracy, nmi
from deepcluster.config import TrainConfig
from deepcluster.data import ImageDataset, dataset_stats, load_dataset
from deepcluster.errors import ClusteringError, DataError, TrainingError
from deepcluster.io import append_jsonl, save_npy, torch_save, write_json, write_text
from deepcluster.train.cycle import (
    cluster_step,
    cycle_seed,
    make_optimizer,
    make_top_optimizer,
    train_epoch,
)
from deepcluster.train.features import resolve_device
from deepcluster.train.run_folder import RunFolder, build_network

CycleCallback = Callable[[dict[str, Any]], None]


def load_split(cfg: TrainConfig, split: str | None = None, limit: int | None = None) -> ImageDataset:
    """A split of the run's dataset (default: the training split with the run's ``data.limit``)."""
    if split is None:
        split, limit = cfg.data.split, cfg.data.limit
    return load_dataset(cfg.data.name, cfg.data.root, split=split, image_size=cfg.data.image_size,
                        limit=limit, seed=cfg.seed)


def load_train_data(cfg: TrainConfig) -> ImageDataset:
    """The images the run trains on."""
    return load_split(cfg)


def normalization(cfg: TrainConfig, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of the run's dataset (0.5/0.5 when the known stats do not fit)."""
    stats = dataset_stats(cfg.data.name)
    return stats if len(stats[0]) == channels else ((0.5,) * channels, (0.5,) * channels)


def _choose_init_by_ia(cfg: TrainConfig, data: ImageDataset, show_progress: bool) -> tuple[TrainConfig, dict[str, Any]]:
    """``init=best_ia:N``: the init seed with the highest Initial Alignment among seed..seed+N-1."""
    from deepcluster.analysis.alignment import (
        initial_alignment,  # analysis builds on train
    )

    n = cfg.best_ia_candidates()
    if data.labels is None:
        raise ClusteringError("init=best_ia:N ranks initialisations by their alignment with labels, and this dataset "
                              "has none: use init=random, or compute IA with `deepcluster ia --labels FILE` and "
                              "set init_seed")
    res = initial_alignment(cfg, range(cfg.seed, cfg.seed + n), data=data, show_progress=show_progress)
    best, value = res.ranked()[0]
    record = {"init": cfg.init, "chosen_seed": best, "ia": value, "k": cfg.k,
              "candidates": {str(s): float(v) for s, v in zip(res.seeds, res.values)}, "seconds": round(res.seconds, 2)}
    return cfg.model_copy(update={"init_seed": best}), record


def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("top_layer.")}


def _label_metrics(labels: np.ndarray | None, assignments: np.ndarray) -> dict[str, float]:
    if labels is None:
        return {}
    return {
        "nmi_labels": nmi(labels, assignments),
        "ari_labels": ari(labels, assignments),
        "acc_labels": clustering_accuracy(labels, assignments),
    }


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    show_progress: bool = True,
    on_cycle: CycleCallback | None = None,
    stop_after: int | None = None,
) -> RunFolder:
    """Train DeepCluster into ``out``; with ``resume`` continue from its last finished cycle.

    ``on_cycle`` receives each cycle's metrics record (the CLI prints it). ``stop_after``
    ends the process after that many cycles of *this call* (used by tests to simulate a kill).
    """
    run = RunFolder(Path(out))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)

    data = load_train_data(cfg)
    if cfg.k > len(data):
        raise ClusteringError(f"k={cfg.k} is larger than the number of images ({len(data)}): lower k or use more data")
    if cfg.supervised and data.labels is None:
        raise DataError(f"supervised=true needs labels, and dataset {cfg.data.name} has none: drop supervised")
    images = data.images_tensor()
    stats = normalization(cfg, int(images.shape[1]))
    in_channels, input_size = int(images.shape[1]), int(images.shape[-1])

    init_ia = None
    if not resume and cfg.best_ia_candidates() and cfg.init_seed is None:
        cfg, init_ia = _choose_init_by_ia(cfg, data, show_progress)
    model = build_network(cfg, in_channels, input_size).to(device)
    start_cycle, assignments = 1, None
    top_state = None
    optimizer_state = None
    if resume:
        if run.checkpoint_path.exists():
            ckpt = run.load_checkpoint("last")
            model.load_state_dict(ckpt["model"])
            optimizer_state = ckpt["optimizer"]
            top_state = ckpt.get("top_layer")
            start_cycle = ckpt["cycle"] + 1
            assignments = ckpt["assignments"]
            _truncate_metrics(run, ckpt["cycle"])
        else:  # killed during cycle 1: start again from the (seeded, identical) initialisation
            _truncate_metrics(run, 0)
    else:
        run.path.mkdir(parents=True, exist_ok=True)
        run.save_config(cfg)
        if init_ia is not None:
            write_json(run.path / "init_ia.json", init_ia)
        torch_save(run.init_path, {"model": _model_state(model), "cycle": 0, "in_channels": in_channels,
                                   "input_size": input_size, "version": __version__})
        write_text(run.metrics_path, "")

    # The network's optimiser (and its momentum) lives across cycles; the top layer gets its own.
    optimizer = make_optimizer(model, cfg)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)

    writer = _tensorboard(run, purge_step=start_cycle)
    labels = data.labels
    cycles_done = 0
    try:
        for cycle in range(start_cycle, cfg.cycles + 1):
            seed = cycle_seed(cfg.seed, cycle)
            generator = _seed_everything(seed)
            record: dict[str, Any] = {"cycle": cycle}
            if cycle == 1 and init_ia is not None:
                record["init_ia"] = init_ia["ia"]
            halted = cfg.halt_clustering_after is not None and cycle > cfg.halt_clustering_after
            previous = assignments

            if cfg.supervised:
                # The supervised baseline: the labels are the targets, one classifier throughout.
                times = {}
                result, assignments = None, np.asarray(labels, dtype=np.int64)
                k_eff = int(assignments.max()) + 1
                if model.top_layer is None:
                    model.reset_top_layer(k_eff, generator=generator)
                    if top_state is not None and top_state["weight"].shape[0] == k_eff:
                        model.top_layer.load_state_dict(top_state)
                    model.top_layer.to(device)
            elif halted and assignments is not None:
                # Deep Dive §4.2: keep the last pseudo-labels (and their classifier), only train.
                times: dict[str, float] = {}
                k_eff = int(assignments.max()) + 1
                result = None
                if model.top_layer is None:
                    model.reset_top_layer(k_eff, generator=generator)
                    if top_state is not None and top_state["weight"].shape[0] == k_eff:
                        model.top_layer.load_state_dict(top_state)
                    model.top_layer.to(device)
            else:
                step = cluster_step(model, images, cfg, stats, device=device, seed=seed, show_progress=show_progress)
                result, times = step.result, step.seconds
                if cfg.pca_dim is not None:
                    record["pca_dim_effective"] = step.pca_dim
                assignments = result.assignments
                k_eff = result.k
                model.reset_top_layer(k_eff, generator=generator)
                model.top_layer.to(device)

            top_optimizer = make_top_optimizer(model, cfg)
            t = time.perf_counter()
            for epoch in range(cfg.epochs_per_cycle):
                ep = train_epoch(
                    model, images, assignments, optimizer, top_optimizer, cfg, stats,
                    device=device, generator=generator, sampler_seed=seed + epoch, show_progress=show_progress,
                )
            times["training"] = time.perf_counter() - t

            record.update(ep)
            record["clustered"] = not (halted or cfg.supervised)
            if cfg.supervised:
                record["supervised"] = True
            record["k"] = k_eff
            record["nmi_prev"] = nmi(previous, assignments) if previous is not None else None
            record.update(_label_metrics(labels, assignments))
            sizes = np.bincount(assignments, minlength=k_eff)
            record["cluster_sizes"] = cluster_size_summary(sizes)
            record["n_resplit"] = int(result.n_resplit) if result is not None else 0
            record["seconds"] = {k: round(v, 3) for k, v in times.items()}

            _save_cycle(run, cfg, model, optimizer, cycle, assignments, record, in_channels, input_size)
            _log_tensorboard(writer, record)
            if on_cycle is not None:
                on_cycle(record)
            cycles_done += 1
            if stop_after is not None and cycles_done >= stop_after:
                break
    finally:
        if writer is not None:
            writer.close()
    return run


def _save_cycle(run: RunFolder, cfg: TrainConfig, model, optimizer, cycle: int, assignments: np.ndarray,
                record: dict[str, Any], in_channels: int, input_size: int) -> None:
    # Order matters for kill-safety: assignments and metrics first, the checkpoint (which marks
    # the cycle as finished) last; on resume, anything logged past the checkpoint is dropped.
    save_npy(run.assignments_path(cycle), assignments.astype(np.int64))
    append_jsonl(run.metrics_path, record)
    ckpt = {
        "model": _model_state(model),
        "top_layer": {k: v.detach().cpu() for k, v in model.top_layer.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "cycle": cycle,
        "assignments": assignments,
        "in_channels": in_channels,
        "input_size": input_size,
        "version": __version__,
    }
    torch_save(run.checkpoint_path, ckpt)
    if cycle % cfg.checkpoint_every == 0 or cycle == cfg.cycles:
        torch_save(run.cycle_checkpoint_path(cycle), {k: v for k, v in ckpt.items() if k != "optimizer"})


def _truncate_metrics(run: RunFolder, last_cycle: int) -> None:
    kept = [r for r in run.metrics() if r.get("cycle", 0) <= last_cycle]
    write_text(run.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))


def _tensorboard(run: RunFolder, purge_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a declared dependency
        return None
    return SummaryWriter(log_dir=str(run.tensorboard_dir), purge_step=purge_step)


def _log_tensorboard(writer, record: dict[str, Any]) -> None:
    if writer is None:
        return
    step = record["cycle"]
    for key in ("loss", "train_acc", "nmi_prev", "nmi_labels", "ari_labels", "acc_labels", "n_resplit", "k"):
        value = record.get(key)
        if value is not None:
            writer.add_scalar(f"train/{key}", value, step)
    for key, value in record.get("cluster_sizes", {}).items():
        writer.add_scalar(f"clusters/{key}", value, step)
    for key, value in record.get("seconds", {}).items():
        writer.add_scalar(f"seconds/{key}", value, step)
    writer.flush()


def check_resumable(run: RunFolder) -> TrainConfig:
    """The saved config of a run to resume, with a clear error when there is none."""
    if not run.path.exists():
        raise TrainingError(f"cannot resume: {run.path} does not exist; start it with `deepcluster train --config ... --out {run.path}`")
    return run.load_config()

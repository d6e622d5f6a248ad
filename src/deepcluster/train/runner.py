"""Runs DeepCluster cycles into a run folder: checkpoints, metrics, TensorBoard, resume.

:func:`train` validates and prepares the run (:func:`prepare_run`, new or resumed), then, for each
cycle, seeds everything from ``(seed, cycle)``, runs the cycle itself
(:func:`deepcluster.train.cycle.run_cycle`, Caron's Algorithm 1) on fresh clusters -- or on the
kept pseudo-labels once clustering is halted, or the labels of the supervised baseline
(:func:`kept_targets`) -- and records it: ``metrics.jsonl``, assignments, checkpoints, TensorBoard.
Processes, DDP and BatchNorm statistics under torchrun are handled here too, around the cycle.

Every checkpoint keeps, under ``clusters``, the clustering of its cycle -- or of the last cycle
that clustered, once clustering is halted; ``None`` for a run that never clustered (supervised)
-- so that ``deepcluster assign`` can put new images in its clusters exactly as the cycle put its
own (:func:`clusters_record`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepcluster import __version__
from deepcluster.cluster import ari, cluster_size_summary, clustering_accuracy, nmi
from deepcluster.core import distributed
from deepcluster.core.blas import numpy_blas_threads
from deepcluster.core.config import TrainConfig
from deepcluster.core.errors import ClusteringError, ConfigError, DataError, TrainingError
from deepcluster.core.files import append_jsonl, save_npy, torch_save, write_json, write_text
from deepcluster.data import ImageDataset
from deepcluster.data.source import ImageSource
from deepcluster.data.splits import load_train_data
from deepcluster.environment import RunEnv
from deepcluster.features import FeatureOptions
from deepcluster.models import DeepClusterNet
from deepcluster.models.sync_batchnorm import convert_sync_batchnorm
from deepcluster.runs import RunFolder, build_network, check_output_folder
from deepcluster.train.autoprecision import PhasePrecision, choose_precisions, load_precisions, save_precisions
from deepcluster.train.cycle import CycleTargets, cycle_seed, make_optimizer, run_cycle
from deepcluster.train.imported import import_network

__all__ = ["CLUSTERS_FORMAT", "RunState", "check_resumable", "clusters_record", "kept_targets", "prepare_run",
           "train"]

CycleCallback = Callable[[dict[str, Any]], None]


@dataclass
class RunState:
    """What the loop of :func:`train` works with, new or resumed."""

    run: RunFolder
    cfg: TrainConfig
    data: ImageDataset
    source: ImageSource  # the pool's images: in memory, or streamed through DataLoader workers
    env: RunEnv  # threads, this rank's device, precision
    reader: FeatureOptions  # how the network reads the images: normalisation, device, precision
    trainer: FeatureOptions  # the same for the training epochs (precision: auto picks per phase)
    precisions: PhasePrecision  # the precision of each phase, and how it was decided
    model: DeepClusterNet
    optimizer: torch.optim.Optimizer
    start_cycle: int
    assignments: np.ndarray | None  # of the last finished cycle
    top_state: dict[str, torch.Tensor] | None  # its classifier (restored once clustering is halted)
    init_ia: dict[str, Any] | None  # how init=best_ia:N chose the initialisation
    imported: dict[str, Any] | None  # what init=FILE loaded (init_weights.json)
    kept_metrics: list[dict[str, Any]]  # resumed: the metrics.jsonl records of the finished cycles
    ddp_bytes: list[int]  # bytes this rank gave to DDP's gradient all-reduces (a one-element counter)
    clusters: dict[str, Any] | None = None  # the last clustering, as checkpoints keep it (clusters_record)
    save_precisions: bool = True  # write precision.json (not for cycles: 0, whose precisions are not chosen yet)

    @property
    def in_channels(self) -> int:
        return self.source.channels

    @property
    def input_size(self) -> int:
        return self.source.size


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    init_ia: dict[str, Any] | None = None,
    show_progress: bool = True,
    on_cycle: CycleCallback | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
) -> RunFolder:
    """Train DeepCluster into ``out``; with ``resume`` continue from its last finished cycle.

    Parameters
    ----------
    cfg : TrainConfig
        The run's configuration. ``init=best_ia:N`` must be resolved first (``init_seed`` set):
        :func:`deepcluster.analysis.alignment.resolve_init` does it and returns ``init_ia``.
    out : path
        The run folder.
    resume : bool
        Continue the run in ``out`` from its last finished cycle.
    init_ia : dict, optional
        The record of the best-IA choice, written to ``init_ia.json`` and into cycle 1.
    on_cycle : callable, optional
        Receives each cycle's metrics record (the CLI prints it).
    stop_after : int, optional
        End after that many cycles of *this call* (tests use it to simulate a kill).
    log : callable, optional
        Receives one line saying what ``init=FILE`` loaded (the CLI prints it).

    Returns
    -------
    RunFolder
    """
    world = distributed.init(cfg.distributed.backend, cfg.device, cfg.distributed.timeout)
    run = RunFolder(out)
    if world.is_main:
        check_output_folder(out)
    # One trainer per folder, and one writer per run: rank 0 locks and writes, the other ranks
    # never touch the folder. Everything below is validated before the first write.
    with run.lock() if world.is_main else contextlib.nullcontext():
        state = prepare_run(cfg, out, resume=resume, init_ia=init_ia, show_progress=show_progress and world.is_main)
        if world.is_main and state.imported is not None and log is not None:
            log(state.imported["summary"] + (f"; {state.imported['normalisation']}" if "normalisation" in state.imported else ""))
        if world.is_main:
            if resume:
                _restore(state)
            else:
                _create(state)
        _train_cycles(state, on_cycle=on_cycle, stop_after=stop_after)
    return run


def _train_cycles(state: RunState, *, on_cycle: CycleCallback | None, stop_after: int | None) -> None:
    cfg, model, world = state.cfg, state.model, distributed.world()
    wrap = functools.partial(_wrap, state=state) if world.distributed else None  # the new top layer is wrapped afresh
    # numpy's BLAS spinning between its small products would slow torch's passes (core/blas.py)
    with contextlib.closing(_TensorBoard(state.run, purge_step=state.start_cycle)) as board, numpy_blas_threads(1):
        for done, cycle in enumerate(range(state.start_cycle, cfg.cycles + 1), start=1):
            generator = _seed_everything(cycle_seed(cfg.seed, cycle))
            previous, sent = state.assignments, distributed.bytes_sent() + state.ddp_bytes[0]
            outcome = run_cycle(model, state.source, state.optimizer, cfg, state.reader, cycle=cycle,
                                generator=generator, kept=kept_targets(state, cycle, generator), wrap=wrap,
                                trainer=state.trainer)
            if world.distributed and not cfg.distributed.sync_batchnorm:
                _broadcast_buffers(model)  # rank 0's BatchNorm statistics: what it checkpoints
            state.assignments = outcome.targets.assignments
            if world.is_main and outcome.targets.clustered:  # halted or supervised: the last clustering stays
                state.clusters = clusters_record(state, cycle, outcome.targets)
            record = cycle_record(state, cycle, outcome.targets, previous, outcome.epoch, outcome.seconds)
            if world.distributed:
                record["world_size"] = world.size
                record["bytes_sent"] = distributed.bytes_sent() + state.ddp_bytes[0] - sent
            if world.is_main:
                _save_cycle(state, cycle, record)
                board.log(record)
                if on_cycle is not None:
                    on_cycle(record)
            if stop_after is not None and done >= stop_after:
                break


def _wrap(model: torch.nn.Module, state: RunState) -> torch.nn.Module:
    """The model under DistributedDataParallel, counting the bytes of its gradient all-reduces."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    dev = state.env.device
    sync = not state.cfg.distributed.sync_batchnorm  # BatchNorm statistics of rank 0 at each forward
    sync_kw = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
    ddp = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None,
                                  **{sync_kw: sync})
    counter = state.ddp_bytes

    def counting_allreduce(process_group, bucket):
        buffer = bucket.buffer()
        counter[0] += buffer.numel() * buffer.element_size()
        return allreduce_hook(process_group, bucket)

    ddp.register_comm_hook(None, counting_allreduce)
    return ddp


def _broadcast_buffers(model: torch.nn.Module) -> None:
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer.data, 0)


def prepare_run(cfg: TrainConfig, out: str | Path, *, resume: bool = False,
                init_ia: dict[str, Any] | None = None, show_progress: bool = True) -> RunState:
    """Everything the loop needs, new or resumed (the checkpoint and metrics of a resumed run are
    read first), validated before anything is written: :func:`train` then writes the folder."""
    if cfg.best_ia_candidates() and cfg.init_seed is None and not resume:
        raise ValueError("init=best_ia:N must be resolved before training: "
                         "cfg, init_ia = deepcluster.analysis.alignment.resolve_init(cfg)")
    run = RunFolder(Path(out))
    world = distributed.world()
    checkpoint, kept_metrics = None, []
    if resume and world.is_main:
        checkpoint = run.load_checkpoint("last") if run.checkpoint_path.exists() else None
        done = checkpoint["cycle"] if checkpoint is not None else 0
        kept_metrics = [r for r in run.metrics() if r.get("cycle", 0) <= done]
    if resume and world.distributed:  # only rank 0 reads the folder: the others get the checkpoint
        checkpoint = distributed.broadcast_object(checkpoint)
    env = RunEnv.from_config(cfg, show_progress=show_progress)
    data = load_train_data(cfg)
    source = env.source(data)
    model = build_network(cfg, source.channels, source.size)
    if world.distributed:
        _check_world(cfg, world, len(data))
    if world.is_main:  # the same verdict for every rank: rank 0 says it once, torchrun stops the others
        _check_run(cfg, data, model)
    imported = None  # checked first: a published file is read only for a run that can start
    if cfg.init_file is not None and not resume:  # a published network (init: FILE), read by rank 0 only
        if world.is_main:
            cfg, imported = import_network(cfg, model, source.channels)
        if world.distributed:
            cfg, imported, weights = distributed.broadcast_object((cfg, imported, model.state_dict()))
            model.load_state_dict(weights)
        env = dataclasses.replace(env, cfg=cfg)  # the normalisation a FAIR network was trained with
    model = model.to(env.device)
    if cfg.distributed.sync_batchnorm:
        model = convert_sync_batchnorm(model)
    # The network's optimiser (and its momentum) lives across cycles; the top layer gets its own.
    optimizer = make_optimizer(model, cfg)
    reader = env.features(source.channels)
    kept = load_precisions(run.path, env.device) if resume and world.is_main else None
    if resume and world.distributed:
        kept = distributed.broadcast_object(kept)
    if kept is None and resume and checkpoint is not None:  # a run folder from before 0.4 kept none: it ran
        kept = PhasePrecision(env.precision, env.precision)  # both phases in one precision
    deferred = kept is None and cfg.cycles == 0  # nothing is trained now: chosen when cycles are added (--resume)
    precisions = PhasePrecision(env.precision, env.precision) if deferred else \
        kept or choose_precisions(cfg, model, source, reader)
    state = RunState(run=run, cfg=cfg, data=data, source=source, env=env, save_precisions=not deferred,
                     reader=reader.replace(precision=precisions.features),
                     trainer=reader.replace(precision=precisions.training), precisions=precisions,
                     model=model, optimizer=optimizer, start_cycle=1, assignments=None, top_state=None,
                     init_ia=init_ia, imported=imported, kept_metrics=kept_metrics, ddp_bytes=[0])
    if checkpoint is None and resume:  # no cycle finished: the run's initial network, as it was saved
        initial = run.load_checkpoint("init") if world.is_main and run.init_path.is_file() else None
        if world.distributed:
            initial = distributed.broadcast_object(initial)
        if initial is not None:
            model.load_state_dict(initial["model"])
    if checkpoint is not None:
        if len(checkpoint["assignments"]) != len(data):
            raise TrainingError(f"{run.checkpoint_path} holds {len(checkpoint['assignments'])} assignments but the "
                                f"run's data has {len(data)} images: resume with the data the run was trained on")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state.top_state = checkpoint.get("top_layer")
        state.start_cycle = checkpoint["cycle"] + 1
        state.assignments = checkpoint["assignments"]
        state.clusters = checkpoint.get("clusters")  # absent from checkpoints of deepcluster 0.2.0 and before
    return state


def _check_run(cfg: TrainConfig, data: ImageDataset, model: DeepClusterNet) -> None:
    """What the config asks of the data and the network, checked before anything is written."""
    if cfg.k > len(data):
        raise ClusteringError(f"k={cfg.k} is larger than the number of images ({len(data)}): lower k or use more data")
    if cfg.pool_subset is not None and cfg.pool_subset > len(data):
        raise ConfigError(f"pool_subset={cfg.pool_subset} is larger than the pool ({len(data)} images): "
                          f"lower pool_subset to at most {len(data)}, or set pool_subset=off")
    clustered = len(data) if cfg.pool_subset is None else cfg.pool_subset
    if cfg.supervised and data.labels is None:
        raise DataError(f"supervised=true needs labels, and dataset {cfg.data.name} has none: drop supervised")
    if cfg.pca_dim is not None and cfg.cluster_layer is None and cfg.pca_dim > min(clustered, model.feature_dim):
        raise ClusteringError(f"pca_dim={cfg.pca_dim} is larger than the {model.feature_dim} dimensions of "
                              f"{cfg.model.arch}'s clustering features ({clustered} images): lower pca_dim to at "
                              f"most {min(clustered, model.feature_dim)}, or set pca_dim=off")


def _check_world(cfg: TrainConfig, world: distributed.World, n_images: int) -> None:
    """Every rank must train the same run, and each needs at least one image."""
    mine = json.dumps(cfg.model_dump(mode="json", exclude={"device", "threads"}), sort_keys=True)
    configs = distributed.all_gather_objects(mine)
    if not world.is_main:
        return
    if world.size > n_images:
        raise ConfigError(f"{world.size} processes for {n_images} images: start at most {n_images} processes")
    bad = [r for r, text in enumerate(configs) if text != configs[0]]
    if bad:
        raise ConfigError(f"ranks {bad} were started with a different config than rank 0: start every rank with the "
                          "same --config and --set values")


def _create(state: RunState) -> None:
    run = state.run
    run.path.mkdir(parents=True, exist_ok=True)
    run.save_config(state.cfg)
    if state.save_precisions:
        save_precisions(state.precisions, run.path)
    if state.init_ia is not None:
        write_json(run.path / "init_ia.json", state.init_ia)
    if state.imported is not None:
        write_json(run.path / "init_weights.json", state.imported)
    torch_save(run.init_path, {"model": _model_state(state.model), "cycle": 0, "in_channels": state.in_channels,
                               "input_size": state.input_size, "version": __version__})
    write_text(run.metrics_path, "")


def _restore(state: RunState) -> None:
    if state.cfg != state.run.load_config():  # extended: --resume --set cycles=N
        state.run.save_config(state.cfg)
    if not (state.run.path / "precision.json").exists() and state.save_precisions:  # chosen now (from cycles: 0)
        save_precisions(state.precisions, state.run.path)
    # Anything logged past the last checkpoint (a cycle that did not finish) is dropped: it is redone.
    write_text(state.run.metrics_path, "".join(json.dumps(r) + "\n" for r in state.kept_metrics))


def kept_targets(state: RunState, cycle: int, generator: torch.Generator) -> CycleTargets | None:
    """The fixed targets of ``cycle`` -- the labels (``supervised``), or the kept pseudo-labels once
    clustering is halted (Deep Dive §4.2) -- or None: the cycle clusters afresh (Caron).

    Fixed targets are trained with one classifier throughout: built (and restored from the
    checkpoint on the first cycle of a resumed run) when the model has none.
    """
    cfg = state.cfg
    if cfg.supervised:
        assignments = np.asarray(state.data.labels, dtype=np.int64)
    elif cfg.halt_clustering_after is not None and cycle > cfg.halt_clustering_after and state.assignments is not None:
        assignments = state.assignments
    else:
        return None
    k = int(assignments.max()) + 1
    sampled = assignments >= 0  # halted after an Algorithm 2 cycle: the same sample again
    model = state.model
    if model.top_layer is None:
        model.reset_top_layer(k, generator=generator)
        if state.top_state is not None and state.top_state["weight"].shape[0] == k:
            model.top_layer.load_state_dict(state.top_state)
    return CycleTargets(assignments=assignments, k=k, clustered=False,
                        positions=None if sampled.all() else np.flatnonzero(sampled))


def cycle_record(state: RunState, cycle: int, targets: CycleTargets, previous: np.ndarray | None,
                 epoch_stats: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    """The metrics.jsonl record of a finished cycle."""
    cfg, labels, assignments = state.cfg, state.data.labels, targets.assignments
    record: dict[str, Any] = {"cycle": cycle}
    if cycle == 1 and state.init_ia is not None:
        record["init_ia"] = state.init_ia["ia"]
    if targets.pca_dim is not None:
        record["pca_dim_effective"] = targets.pca_dim
    record.update(epoch_stats)
    record["clustered"] = targets.clustered
    if cfg.supervised:
        record["supervised"] = True
    record["k"] = targets.k
    mask = assignments >= 0  # Algorithm 2: the cycle's sample
    if targets.positions is not None:
        record["pool_subset"] = int(mask.sum())
    record["nmi_prev"] = None
    if previous is not None:  # on the images both cycles clustered
        shared = mask & (previous >= 0)
        record["nmi_prev"] = nmi(previous[shared], assignments[shared]) if shared.sum() > 1 else None
    if labels is not None:
        lab, got = labels[mask], assignments[mask]
        record.update({"nmi_labels": nmi(lab, got), "ari_labels": ari(lab, got),
                       "acc_labels": clustering_accuracy(lab, got)})
    record["cluster_sizes"] = cluster_size_summary(np.bincount(assignments[mask], minlength=targets.k))
    record["n_resplit"] = int(targets.result.n_resplit) if targets.result is not None else 0
    record["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    record["precision"] = state.reader.precision.label  # of the feature pass
    if state.trainer.precision != state.reader.precision:
        record["training_precision"] = state.trainer.precision.label
    record["images"] = state.source.label
    return record


#: Version of the ``clusters`` entry of the checkpoints (:func:`clusters_record`).
CLUSTERS_FORMAT = 1


def clusters_record(state: RunState, cycle: int, targets: CycleTargets) -> dict[str, Any] | None:
    """The ``clusters`` entry of the checkpoints from ``cycle`` on: what assigns new images to its
    clusters exactly as the cycle assigned its own (``deepcluster assign``).

    Tensors, numbers, strings, lists, dicts and None only (``weights_only``-safe):

    ``format``, ``cycle``
        This layout's version; the cycle that clustered.
    ``backbone``
        The network's weights and buffers (no top layer) *when it computed the clustered
        features*: at the start of the cycle, before its epoch. The checkpoint's ``model`` is the
        network after the epoch, whose features were never clustered.
    ``layer``, ``mean``, ``std``, ``batch_size``, ``precision``, ``device``, ``processes``
        How the features were read: the layer (None: the trunk output), the normalisation, the
        images per forward pass, the precision's label, the kind of device (``cpu``, ``cuda``),
        and the processes that shared the images (each read its contiguous share in batches from
        its first image).
    ``assigner``
        :meth:`ClusterAssigner.state_dict`: PCA (mean, whitened components), L2, centroids,
        re-split rules, sizes.
    ``images``
        How many images the cycle clustered (Algorithm 2: its sample of the pool).

    None when the cycle kept no assigner or no backbone (another rank than 0).
    """
    if targets.assigner is None or targets.backbone is None:
        return None
    reader = state.reader
    return {"format": CLUSTERS_FORMAT, "cycle": int(cycle), "backbone": targets.backbone,
            "layer": state.cfg.cluster_layer, "mean": [float(m) for m in reader.mean],
            "std": [float(v) for v in reader.std], "batch_size": int(reader.batch_size),
            "precision": reader.precision.label, "device": reader.device.type,
            "processes": int(distributed.world().size),
            "assigner": targets.assigner.state_dict(),
            "images": int((targets.assignments >= 0).sum())}


def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("top_layer.")}


def _save_cycle(state: RunState, cycle: int, record: dict[str, Any]) -> None:
    # Order matters for kill-safety: assignments and metrics first, the checkpoint (which marks
    # the cycle as finished) last; on resume, anything logged past the checkpoint is dropped.
    run, model, assignments = state.run, state.model, state.assignments
    save_npy(run.assignments_path(cycle), np.asarray(assignments, dtype=np.int64))
    append_jsonl(run.metrics_path, record)
    ckpt = {
        "model": _model_state(model),
        "top_layer": {k: v.detach().cpu() for k, v in model.top_layer.state_dict().items()},
        "optimizer": state.optimizer.state_dict(),
        "cycle": cycle,
        "assignments": torch.from_numpy(np.ascontiguousarray(assignments, dtype=np.int64)),  # weights_only-safe
        "in_channels": state.in_channels,
        "input_size": state.input_size,
        "version": __version__,
        "clusters": state.clusters,  # None: the run has not clustered (supervised)
    }
    torch_save(run.checkpoint_path, ckpt)
    if cycle % state.cfg.checkpoint_every == 0 or cycle == state.cfg.cycles:
        torch_save(run.cycle_checkpoint_path(cycle), {k: v for k, v in ckpt.items() if k != "optimizer"})


class _TensorBoard:
    """The curves for TensorBoard; the event file is created at the first record, so a run that
    fails before finishing a cycle leaves its folder as it was."""

    def __init__(self, run: RunFolder, purge_step: int) -> None:
        self.run, self.purge_step, self.writer = run, purge_step, None

    def log(self, record: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self.writer is None:
            self.writer = SummaryWriter(log_dir=str(self.run.tensorboard_dir), purge_step=self.purge_step)
        step = record["cycle"]
        for key in ("loss", "train_acc", "nmi_prev", "nmi_labels", "ari_labels", "acc_labels", "n_resplit", "k"):
            value = record.get(key)
            if value is not None:
                self.writer.add_scalar(f"train/{key}", value, step)
        for key, value in record.get("cluster_sizes", {}).items():
            self.writer.add_scalar(f"clusters/{key}", value, step)
        for key, value in record.get("seconds", {}).items():
            self.writer.add_scalar(f"seconds/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def check_resumable(run: RunFolder) -> TrainConfig:
    """The saved config of a run to resume, with a clear error when there is none."""
    if not run.path.exists():
        raise TrainingError(f"cannot resume: {run.path} does not exist; start it with `deepcluster train --config ... --out {run.path}`")
    return run.load_config()

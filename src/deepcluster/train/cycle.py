"""One DeepCluster cycle, as in Caron et al.'s Algorithm 1: :func:`run_cycle`.

    for each cycle:
        features  <- f_theta(x) for every image            (eval mode, no augmentation)
        features  <- L2(PCA_whiten(features))
        pseudo    <- k-means(features, k)                    (no empty cluster)
        top layer <- new random linear layer with k outputs
        train f_theta + top layer for one epoch on (x, pseudo),
              sampling uniformly over clusters, with augmentation

With ``pool_subset`` each cycle clusters and trains on a fresh sample of the pool (Algorithm 2).

A cycle that clusters keeps what assigns new images to its clusters: the
:class:`~deepcluster.cluster.ClusterAssigner` (PCA, centroids, re-split rules) and, on the rank
that writes the run folder, a copy of the network's weights that computed the clustered features
(:attr:`CycleTargets.backbone`, taken before the epoch changes them). The runner keeps both in
the checkpoints (``deepcluster assign``).
Everything around the cycle (seeding, processes, checkpoints, logging, resuming) lives in
:mod:`deepcluster.train.runner`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepcluster.cluster import ClusterAssigner, ClusterResult, ClusterStep, preprocess_and_cluster
from deepcluster.core import distributed
from deepcluster.core.config import TrainConfig
from deepcluster.core.device import to_device
from deepcluster.core.errors import TrainingError
from deepcluster.core.progress import progress_bar
from deepcluster.data.source import ImageSource, as_source, memory_budget
from deepcluster.features import FeatureOptions, iter_features
from deepcluster.models import DeepClusterNet
from deepcluster.train.augment import apply_crop_flip, crop_flip_params
from deepcluster.train.sampler import UniformClusterSampler

__all__ = ["CycleTargets", "backbone_state", "cluster_step", "cluster_targets", "cycle_seed", "make_optimizer",
           "make_top_optimizer", "pool_sample", "run_cycle", "train_epoch"]


@dataclass
class CycleTargets:
    """What one cycle trains on: one target per image, and how they were obtained."""

    assignments: np.ndarray  # one per image of the pool; -1 for those outside the cycle's sample
    k: int
    clustered: bool  # False: halted clustering (kept pseudo-labels) or the supervised labels
    result: ClusterResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    pca_dim: int | None = None
    positions: np.ndarray | None = None  # Algorithm 2: the images of the cycle's sample (None: all)
    assigner: ClusterAssigner | None = None  # assigns new features to the clusters (None: not clustered)
    backbone: dict[str, torch.Tensor] | None = None  # the weights whose features were clustered (rank 0, CPU)


@dataclass
class CycleOutcome:
    """What :func:`run_cycle` gives the runner to record: the targets and the epoch's loss and accuracy."""

    targets: CycleTargets
    epoch: dict[str, Any]  # loss, train_acc of the cycle's last epoch

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds per phase: features, pca, clustering (when clustered), training."""
        return self.targets.seconds


def run_cycle(
    model: DeepClusterNet,
    source: ImageSource,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    reader: FeatureOptions,
    *,
    cycle: int,
    generator: torch.Generator,
    kept: CycleTargets | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    trainer: FeatureOptions | None = None,
) -> CycleOutcome:
    """One cycle of DeepCluster: cluster, a new top layer and its optimiser, one sampled epoch.

    ``kept`` trains on fixed targets instead of clustering (halted clustering, the supervised
    baseline): their top layer is the model's own. ``wrap`` puts the network under
    DistributedDataParallel once its new top layer exists. ``trainer`` says how the epoch reads
    the images when it differs from the feature pass (``precision: auto`` picks per phase).
    """
    seed = cycle_seed(cfg.seed, cycle)
    if kept is None:
        targets = cluster_targets(model, source, cfg, reader, seed)  # features → PCA/L2 → k-means
        if distributed.world().is_main:  # the network that computed the clustered features, kept with them
            targets.backbone = backbone_state(model)
        model.reset_top_layer(targets.k, generator=generator)  # a new top layer ...
    else:
        targets = kept
    model.top_layer.to(reader.device)
    top_optimizer = make_top_optimizer(model, cfg)  # ... with its own fresh SGD
    net = model if wrap is None else wrap(model)
    t = time.perf_counter()
    for epoch in range(cfg.epochs_per_cycle):  # uniform over clusters, augmented
        stats = train_epoch(net, source, targets.assignments, optimizer, top_optimizer, cfg, trainer or reader,
                            generator=generator, sampler_seed=seed + epoch, positions=targets.positions)
    targets.seconds["training"] = time.perf_counter() - t
    return CycleOutcome(targets=targets, epoch=stats)


def cluster_targets(model: nn.Module, source: ImageSource, cfg: TrainConfig, reader: FeatureOptions,
                    seed: int) -> CycleTargets:
    """The clusters of a cycle's images (all of them, or Algorithm 2's sample drawn by ``seed``),
    as one assignment per image of the pool (-1 outside the sample)."""
    positions = pool_sample(len(source), cfg.pool_subset, seed)
    step = cluster_step(model, source if positions is None else source.subset(positions), cfg, reader, seed=seed)
    assignments = step.result.assignments
    if positions is not None:
        assignments = np.full(len(source), -1, dtype=np.int64)
        assignments[positions] = step.result.assignments
    return CycleTargets(assignments=assignments, k=step.result.k, clustered=True, result=step.result,
                        seconds=step.seconds, pca_dim=step.pca_dim if cfg.pca_dim is not None else None,
                        positions=positions, assigner=step.assigner)


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy, on the CPU, of ``model``'s weights and buffers without its top layer."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if not k.startswith("top_layer.")}


def pool_sample(n: int, size: int | None, seed: int) -> np.ndarray | None:
    """Caron's Algorithm 2: the sorted positions of the ``size`` images a cycle clusters and trains
    on, drawn from the pool of ``n`` by ``seed`` (the cycle's seed, so a resumed run draws the same);
    None for every image."""
    if size is None or size >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def cluster_step(
    model: nn.Module,
    images: torch.Tensor | ImageSource,
    cfg: TrainConfig,
    reader: FeatureOptions,
    *,
    seed: int,
) -> ClusterStep:
    """Features of the whole dataset → PCA-whitening + L2 → clusters.

    Each process extracts the features of its own contiguous share of the images; the PCA and
    k-means of :func:`~deepcluster.cluster.preprocess_and_cluster` then work on the shares
    together, and every process gets the assignments of all the images. The features are reduced
    to ``pca_dim`` a chunk at a time: when their full width would exceed the memory budget
    (``data.memory_budget_mb``), the network makes a second pass (the first fits the PCA) and only
    N × pca_dim floats are ever held.
    """
    world = distributed.world()
    source = as_source(images)
    mine = distributed.shard(len(source), world)
    layers = None if cfg.cluster_layer is None else [cfg.cluster_layer]
    spent = [0.0]  # seconds in the network's forward passes

    def chunks():
        parts = iter_features(model, source.view(mine.start, mine.stop), reader, layers=layers,
                              description="features")
        while True:
            t0 = time.perf_counter()
            part = next(parts, None)
            spent[0] += time.perf_counter() - t0
            if part is None:
                return
            yield next(iter(part.values()))

    hold = max(0, memory_budget(cfg.data.memory_budget_mb) - source.held_nbytes)  # what the pixels leave of it
    step = preprocess_and_cluster(chunks, cfg, seed=seed, sharded=world.distributed,
                                  hold_bytes=hold, device=reader.device)
    step.seconds["pca"] -= spent[0]
    step.seconds = {"features": spent[0], **step.seconds}
    return step


def train_epoch(
    model: nn.Module,
    images: torch.Tensor | ImageSource,
    pseudo_labels: np.ndarray,
    optimizer: torch.optim.Optimizer,
    top_optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    reader: FeatureOptions,
    *,
    generator: torch.Generator,
    sampler_seed: int,
    positions: np.ndarray | None = None,
) -> dict[str, Any]:
    """One epoch on the pseudo-labels, sampling uniformly over clusters; returns loss and accuracy.

    ``pseudo_labels`` holds one target per image of ``images``; with ``positions`` (a cycle's
    sample of the pool, Caron's Algorithm 2) only those images are trained on. Images are
    normalised, placed and cast as ``reader`` says.

    The forward (and the loss) run under ``reader.precision.autocast()``; weights, gradients and
    the optimisers' state stay fp32. No step waits for the device: the epoch's targets and
    augmentation maps are drawn up front and copied once, loss and accuracy are summed on the
    device, and the loss is checked for finiteness every :data:`FINITE_CHECK_EVERY` steps and at
    the end of the epoch.
    """
    model.train()
    world = distributed.world()
    pseudo_labels = np.asarray(pseudo_labels, dtype=np.int64)
    trained = pseudo_labels if positions is None else pseudo_labels[positions]  # Algorithm 2: the sample
    sampler = UniformClusterSampler(trained, len(trained), seed=sampler_seed)
    source = as_source(images)
    batches = list(sampler.batches(cfg.batch_size))
    if positions is not None:  # a cycle's sample of the pool: the sampler's indices are positions in it
        batches = [torch.from_numpy(positions[idx.numpy()]) for idx in batches]
    if len(batches) > 1 and len(batches[-1]) < 2 * world.size:  # BatchNorm cannot normalise a one-row share:
        batches[-2:] = [torch.cat(batches[-2:])]  # the short last batch joins the one before
    # Every process draws the whole batch's augmentation and takes its own share of the rows:
    # together they take exactly the steps of a single process.
    shares = [idx[distributed.shard(len(idx), world)] for idx in batches]
    device, precision = reader.device, reader.precision
    steps = _epoch_plan(batches, shares, pseudo_labels, cfg, generator, device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    with progress_bar("training", total=len(sampler), enabled=reader.show_progress) as advance:
        for step, (idx, raw) in enumerate(zip(batches, source.batches(shares))):
            x = reader.prepare(raw)
            y, theta = steps.targets(step), steps.theta(step)
            if theta is not None:
                x = apply_crop_flip(x, theta)
            with precision.autocast():
                logits = model(x)
                if world.distributed:  # DDP averages over ranks: scale so that the sum is the batch mean
                    loss = F.cross_entropy(logits, y, reduction="sum") * (world.size / len(idx))
                else:
                    loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            top_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            top_optimizer.step()
            loss_sum += loss.detach().double() * (len(idx) / world.size if world.distributed else len(idx))
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y) if world.distributed else len(idx)
            if (step + 1) % FINITE_CHECK_EVERY == 0:
                _check_finite(loss_sum, cfg)
            advance(len(idx))
    _check_finite(loss_sum, cfg)
    total = np.array([loss_sum.item(), correct.item(), seen], dtype=np.float64)
    if world.distributed:
        total = distributed.all_reduce_sum(total)
    total_loss, n_correct, n_seen = (float(v) for v in total)
    return {"loss": total_loss / max(n_seen, 1), "train_acc": n_correct / max(n_seen, 1)}


#: Training steps between two finiteness checks of the loss (each waits for the device).
FINITE_CHECK_EVERY = 50


def _check_finite(loss_sum: torch.Tensor, cfg: TrainConfig) -> None:
    if not bool(torch.isfinite(loss_sum)):
        raise TrainingError(f"the training loss became non-finite ({loss_sum.item()} summed over the epoch): lower lr "
                            f"(now {cfg.lr}) or weight_decay, then resume or restart the run")


@dataclass
class _EpochPlan:
    """An epoch's targets and augmentation maps, drawn up front and copied to the device at once;
    step ``s`` takes rows ``bounds[s]:bounds[s + 1]``."""

    y: torch.Tensor
    thetas: torch.Tensor | None
    bounds: list[int]

    def targets(self, step: int) -> torch.Tensor:
        return self.y[self.bounds[step] : self.bounds[step + 1]]

    def theta(self, step: int) -> torch.Tensor | None:
        return None if self.thetas is None else self.thetas[self.bounds[step] : self.bounds[step + 1]]


def _epoch_plan(batches: list[torch.Tensor], shares: list[torch.Tensor], pseudo_labels: np.ndarray, cfg: TrainConfig,
                generator: torch.Generator, device: torch.device) -> _EpochPlan:
    """This rank's targets and crop/flip maps of every step, in the order the steps draw them
    (the generator's draws are those of one draw per step)."""
    targets = torch.from_numpy(pseudo_labels)
    world = distributed.world()
    aug = cfg.data.augment
    thetas = []
    if aug.random_resized_crop or aug.hflip:
        for idx in batches:
            theta = crop_flip_params(len(idx), crop=aug.random_resized_crop, scale=(aug.crop_scale_min, 1.0),
                                     hflip=aug.hflip, generator=generator)
            thetas.append(theta[distributed.shard(len(idx), world)])
    bounds = np.concatenate([[0], np.cumsum([len(s) for s in shares])]).astype(int).tolist()
    y = targets[torch.cat(shares)] if shares else torch.zeros(0, dtype=torch.int64)
    return _EpochPlan(y=to_device(y, device), thetas=to_device(torch.cat(thetas), device) if thetas else None,
                      bounds=bounds)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD over the whole network except the top layer, which is rebuilt every cycle."""
    top = {id(p) for p in model.top_layer.parameters()} if model.top_layer is not None else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in top]
    if cfg.decay_norm_and_bias:
        groups = [{"params": params}]
    else:
        # 1-d parameters are BatchNorm scales/shifts and biases; decaying BN scales towards 0
        # is what kills units (and the rank of the clustered features) at a high learning rate.
        groups = [{"params": [p for p in params if p.ndim > 1]},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_top_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # As the official code: a fresh SGD (no momentum) for the new top layer of each cycle.
    return torch.optim.SGD(model.top_layer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def cycle_seed(seed: int, cycle: int) -> int:
    """All randomness of a cycle derives from (seed, cycle): resuming at a cycle boundary is exact."""
    return (seed * 1_000_003 + cycle * 7919) % (2**31 - 1)

"""One DeepCluster cycle, as in Caron et al.'s Algorithm 1.

    for each cycle:
        features  <- f_theta(x) for every image            (eval mode, no augmentation)
        features  <- L2(PCA_whiten(features))
        pseudo    <- k-means(features, k)                    (no empty cluster)
        top layer <- new random linear layer with k outputs
        train f_theta + top layer for one epoch on (x, pseudo),
              sampling uniformly over clusters, with augmentation

Everything around it (checkpoints, logging, resuming) lives in :mod:`deepcluster.train.runner`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepcluster.cluster import ClusterStep, preprocess_and_cluster
from deepcluster.core import distributed
from deepcluster.core.config import TrainConfig
from deepcluster.core.device import to_device
from deepcluster.core.errors import TrainingError
from deepcluster.core.precision import FP32, Precision
from deepcluster.core.progress import progress_bar
from deepcluster.data.base import TensorImageDataset
from deepcluster.data.source import ImageSource, default_memory_budget
from deepcluster.data.transforms import normalize
from deepcluster.features import iter_features
from deepcluster.train.augment import apply_crop_flip, crop_flip_params
from deepcluster.train.sampler import UniformClusterSampler


def cluster_step(
    model: nn.Module,
    images: torch.Tensor | ImageSource,
    cfg: TrainConfig,
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    *,
    device: torch.device,
    seed: int,
    show_progress: bool = True,
    precision: Precision = FP32,
) -> ClusterStep:
    """Features of the whole dataset → PCA-whitening + L2 → clusters.

    Each process extracts the features of its own contiguous share of the images; the PCA and
    k-means of :func:`~deepcluster.cluster.preprocess_and_cluster` then work on the shares
    together, and every process gets the assignments of all the images. The features are reduced
    to ``pca_dim`` a chunk at a time: when their full width would exceed the memory budget
    (``data.memory_budget_mb``), the network makes a second pass (the first fits the PCA) and only
    N × pca_dim floats are ever held.
    """
    times: dict[str, float] = {}
    world = distributed.world()
    source = images if isinstance(images, ImageSource) else ImageSource(TensorImageDataset("images", images))
    mine = distributed.shard(len(source), world)
    layers = None if cfg.cluster_layer is None else [cfg.cluster_layer]

    spent = [0.0]  # seconds in the network's forward passes

    def chunks():
        parts = iter_features(model, source.view(mine.start, mine.stop), *stats, layers=layers,
                              batch_size=cfg.feature_batch_size, device=device, description="features",
                              show_progress=show_progress, precision=precision)
        while True:
            t0 = time.perf_counter()
            part = next(parts, None)
            spent[0] += time.perf_counter() - t0
            if part is None:
                return
            yield next(iter(part.values()))

    budget = cfg.data.memory_budget_mb * 2**20 if cfg.data.memory_budget_mb is not None else default_memory_budget()
    step = preprocess_and_cluster(chunks, cfg, seed=seed, sharded=world.distributed, hold_bytes=budget)
    step.seconds["pca"] -= spent[0]
    times["features"] = spent[0]
    step.seconds = {**times, **step.seconds}
    return step


def train_epoch(
    model: nn.Module,
    images: torch.Tensor | ImageSource,
    pseudo_labels: np.ndarray,
    optimizer: torch.optim.Optimizer,
    top_optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    *,
    device: torch.device,
    generator: torch.Generator,
    sampler_seed: int,
    show_progress: bool = True,
    precision: Precision = FP32,
    positions: np.ndarray | None = None,
) -> dict[str, Any]:
    """One epoch on the pseudo-labels, sampling uniformly over clusters; returns loss and accuracy.

    ``pseudo_labels`` holds one target per image of ``images``; with ``positions`` (a cycle's
    sample of the pool, Caron's Algorithm 2) only those images are trained on.

    The forward (and the loss) run under ``precision.autocast()``; weights, gradients and the
    optimisers' state stay fp32.
    """
    model.train()
    world = distributed.world()
    pseudo_labels = np.asarray(pseudo_labels, dtype=np.int64)
    targets = torch.from_numpy(pseudo_labels)
    trained = pseudo_labels if positions is None else pseudo_labels[positions]  # Algorithm 2: the sample
    sampler = UniformClusterSampler(trained, len(trained), seed=sampler_seed)
    criterion = nn.CrossEntropyLoss()
    aug = cfg.data.augment
    augment = aug.random_resized_crop or aug.hflip
    total_loss, correct, seen = 0.0, 0, 0
    source = images if isinstance(images, ImageSource) else ImageSource(TensorImageDataset("images", images))
    batches = list(sampler.batches(cfg.batch_size))
    if positions is not None:  # a cycle's sample of the pool: the sampler's indices are positions in it
        batches = [torch.from_numpy(positions[idx.numpy()]) for idx in batches]
    # Every process draws the whole batch's augmentation and takes its own share of the rows:
    # together they take exactly the steps of a single process.
    shares = [idx[distributed.shard(len(idx), world)] for idx in batches]
    with progress_bar("training", total=len(sampler), enabled=show_progress) as advance:
        for idx, share, raw in zip(batches, shares, source.batches(shares)):
            mine = distributed.shard(len(idx), world)
            x = normalize(to_device(raw, device), *stats)
            if augment:
                theta = crop_flip_params(len(idx), crop=aug.random_resized_crop, scale=(aug.crop_scale_min, 1.0),
                                         hflip=aug.hflip, generator=generator)
                x = apply_crop_flip(x, theta[mine])
            y = targets[share].to(device)
            with precision.autocast():
                logits = model(x)
                if world.distributed:  # DDP averages over ranks: scale so that the sum is the batch mean
                    loss = F.cross_entropy(logits, y, reduction="sum") * (world.size / len(idx))
                else:
                    loss = criterion(logits, y)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the training loss became {loss.item()} (non-finite): lower lr "
                    f"(now {cfg.lr}) or weight_decay, then resume or restart the run"
                )
            optimizer.zero_grad(set_to_none=True)
            top_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            top_optimizer.step()
            total_loss += loss.item() * (len(idx) / world.size if world.distributed else len(idx))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y) if world.distributed else len(idx)
            advance(len(idx))
    if world.distributed:
        total_loss, correct, seen = distributed.all_reduce_sum(np.array([total_loss, correct, seen], dtype=np.float64))
    return {"loss": float(total_loss) / max(seen, 1), "train_acc": float(correct) / max(seen, 1)}


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

"""Initial Alignment: how well the clusters of a *random* network already match the labels.

Deep Dive into DeepCluster (§4.1.1) defines, for random weights θ and k clusters,

    IA(θ, k) = NMI(L, P)

where L are the class labels and P the k-means assignments of the features of the randomly
initialised network, with the preprocessing training uses (PCA-whitening, L2). Sampling θ over
many seeds gives the IA distribution of a setting; its median guides the choice of k, PCA
dimensions or initialisation (§4.3, appendix B).

Here sample ``s`` is exactly what cycle 1 of a training run with ``seed = s`` clusters: the
network built from seed ``s`` and k-means seeded with ``cycle_seed(s, 1)``. Networks are
evaluated many at a time (:mod:`deepcluster.analysis.stacked`); clustering goes through the
training code (:func:`deepcluster.cluster.preprocess_and_cluster`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepcluster.analysis.progress_log import ProgressLog
from deepcluster.analysis.stacked import NotStackable, StackedNet, stacked_embed
from deepcluster.cluster import nmi
from deepcluster.cluster.pipeline import preprocess_and_cluster_many
from deepcluster.core import distributed
from deepcluster.core.blas import numpy_blas_threads
from deepcluster.core.config import TrainConfig, apply_overrides
from deepcluster.core.errors import ClusteringError, ConfigError, DataError
from deepcluster.core.progress import progress_bar
from deepcluster.data import ImageDataset
from deepcluster.data.splits import load_train_data
from deepcluster.environment import RunEnv
from deepcluster.features import extract_features
from deepcluster.runs import build_network
from deepcluster.train.cycle import cycle_seed

__all__ = [
    "IAResult",
    "apply_setting",
    "initial_alignment",
    "labels_for_ia",
    "recommend",
    "resolve_init",
    "setting_name",
]

# Stacked features of one pass are kept in RAM (models × images × dims float32): stay under this.
_FEATURE_BYTES = 1_500_000_000
_MAX_MODELS_PER_PASS = 25


@dataclass
class IAResult:
    """IA samples of one setting: ``values[i]`` is IA for initialisation seed ``seeds[i]``."""

    seeds: np.ndarray
    values: np.ndarray
    k: int
    setting: dict[str, Any] = field(default_factory=dict)
    n_images: int = 0
    n_labelled: int = 0
    seconds: float = 0.0
    method: str = "stacked"
    phases: dict[str, float] = field(default_factory=dict)  # seconds in features / pca / clustering
    precision: str = "fp32"  # of the networks' forward passes

    @property
    def name(self) -> str:
        return setting_name(self.setting)

    def summary(self) -> dict[str, float]:
        """min, quartiles, median, max, mean and count of the samples."""
        v = np.asarray(self.values, dtype=float)
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        return {"n": int(v.size), "min": float(v.min()), "q1": float(q1), "median": float(med),
                "q3": float(q3), "max": float(v.max()), "mean": float(v.mean())}

    def ranked(self) -> list[tuple[int, float]]:
        """(seed, IA) pairs, best first."""
        order = np.argsort(-np.asarray(self.values), kind="stable")
        return [(int(self.seeds[i]), float(self.values[i])) for i in order]

    @property
    def best_seed(self) -> int:
        return self.ranked()[0][0]


def setting_name(setting: Mapping[str, Any]) -> str:
    """``k=20,pca_dim=off`` (``default`` for no overrides)."""
    if not setting:
        return "default"
    return ",".join(f"{k}={'off' if v is None else v}" for k, v in setting.items())


def apply_setting(cfg: TrainConfig, setting: Mapping[str, Any]) -> TrainConfig:
    """``cfg`` with dotted-key overrides (``{"k": 20, "model.arch": "tiny_cnn"}``) applied and validated."""
    return apply_overrides(TrainConfig, cfg, setting, source=f"setting {setting_name(setting)}")


def labels_for_ia(
    data: ImageDataset,
    *,
    labelled: int | None = None,
    label_file: str | Path | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Labels IA is computed on: one int per image, ``-1`` where the image counts as unlabelled.

    Parameters
    ----------
    data : ImageDataset
        The training images (all of them are clustered, labelled or not).
    labelled : int or None
        Keep only this many labels, drawn at random (``seed``), as in a semi-supervised setting.
    label_file : path or None
        Labels from a file instead of the dataset: ``.npy`` with one label per image (-1 =
        unlabelled), or a CSV with a header ``index,label`` or ``path,label``.
    """
    n = len(data)
    if label_file is not None:
        labels = _read_label_file(Path(label_file), data)
    elif data.labels is None:
        raise DataError("Initial Alignment needs labels for at least part of the images: this dataset has none; "
                        "pass a label file (--labels FILE)")
    else:
        labels = np.asarray(data.labels, dtype=np.int64).copy()
    if labelled is not None:
        have = np.flatnonzero(labels >= 0)
        if labelled < 2 or labelled > have.size:
            raise ConfigError(f"--labelled {labelled}: choose between 2 and {have.size} (the labelled images)")
        keep = np.random.default_rng(seed).choice(have, size=labelled, replace=False)
        masked = np.full(n, -1, dtype=np.int64)
        masked[keep] = labels[keep]
        labels = masked
    if int((labels >= 0).sum()) < 2:
        raise DataError("fewer than 2 labelled images: Initial Alignment needs labels to compare clusters with")
    return labels


def _read_label_file(path: Path, data: ImageDataset) -> np.ndarray:
    n = len(data)
    if not path.exists():
        raise DataError(f"label file {path} does not exist")
    if path.suffix == ".npy":
        try:
            labels = np.load(path, allow_pickle=False).astype(np.int64).reshape(-1)
        except (OSError, ValueError) as e:
            raise DataError(f"label file {path} is not a readable .npy array ({e})") from None
        if labels.size != n:
            raise DataError(f"label file {path} has {labels.size} labels for {n} images: one per image, -1 = unlabelled")
        return labels
    import csv

    labels = np.full(n, -1, dtype=np.int64)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        if "label" not in cols or not ({"index", "path"} & cols):
            raise DataError(f"label file {path}: expected a CSV header 'index,label' or 'path,label', got {sorted(cols)}")
        by_path = None
        if "index" not in cols:
            if data.paths is None:
                raise DataError(f"label file {path} names images by path but dataset has no paths: use 'index,label'")
            by_path = {str(p): i for i, p in enumerate(data.paths)}
            by_name = {Path(p).name: i for i, p in enumerate(data.paths)}
        classes: dict[str, int] = {}
        for row_no, row in enumerate(reader, start=2):
            try:
                i = int(row["index"]) if by_path is None else by_path.get(row["path"], by_name.get(Path(row["path"]).name))
            except ValueError:
                raise DataError(f"label file {path}, line {row_no}: index {row['index']!r} is not an integer") from None
            if i is None or not 0 <= i < n:
                raise DataError(f"label file {path}, line {row_no}: no image {row.get('index') or row.get('path')!r}")
            raw = row["label"].strip()
            labels[i] = int(raw) if raw.lstrip("-").isdigit() else classes.setdefault(raw, len(classes))
    return labels


def _models_per_pass(n_images: int, feature_dim: int, requested: int | None) -> int:
    if requested is not None:
        return max(1, requested)
    return int(max(1, min(_MAX_MODELS_PER_PASS, _FEATURE_BYTES // max(1, n_images * feature_dim * 4))))


def initial_alignment(
    cfg: TrainConfig,
    seeds: Sequence[int],
    *,
    labelled: int | None = None,
    labels: np.ndarray | None = None,
    data: ImageDataset | None = None,
    method: str = "auto",
    models_per_pass: int | None = None,
    setting: Mapping[str, Any] | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> IAResult:
    """Sample IA(θ, k) for the initialisations ``seeds`` of ``cfg``'s network.

    Parameters
    ----------
    cfg : TrainConfig
        The run configuration: dataset, architecture, k, PCA, clustering — all as in training.
    seeds : sequence of int
        Initialisation seeds; seed ``s`` gives the network a run with ``seed: s`` starts from.
    labelled : int or None
        Compute IA on a random subset of this many labelled images (all images are clustered).
    labels : ndarray or None
        Labels to use instead of the dataset's (one per image, -1 = unlabelled); see
        :func:`labels_for_ia`.
    data : ImageDataset or None
        The training images, when already loaded (default: load ``cfg``'s training split).
    method : {"auto", "stacked", "loop"}
        ``stacked`` evaluates several networks per pass over the data; ``loop`` one at a time
        through the training code; ``auto`` stacks when the architecture allows it.
    models_per_pass : int or None
        Networks per stacked pass (default: as many as fit in about 1.5 GB of features, ≤ 25).
    setting : mapping or None
        The overrides that define this setting, kept in the result for reports.
    show_progress : bool
        A progress bar (on a terminal).
    log : callable or None
        Receives a line ``IA <setting>: i/n networks, t s, about r s left`` at most every 10 s
        while the networks are measured (on the main rank): progress that also shows in a log file.

    Returns
    -------
    IAResult
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("no seeds to sample IA over: pass at least one")
    if method not in {"auto", "stacked", "loop"}:
        raise ConfigError(f"method must be auto, stacked or loop, got {method!r}")
    env = RunEnv.from_config(cfg, show_progress=False)
    t0 = time.perf_counter()
    data = data if data is not None else load_train_data(cfg)
    if cfg.k > len(data):
        raise ConfigError(f"k={cfg.k} is larger than the number of images ({len(data)}): lower k")
    if labels is None:
        labels = labels_for_ia(data, labelled=labelled, seed=cfg.seed)
    labels = np.asarray(labels)
    if labels.shape != (len(data),):
        raise DataError(f"{labels.size} labels for {len(data)} images: give one label per image (-1 = unlabelled)")
    mask = labels >= 0
    images = data.images_tensor()
    in_ch, size = int(images.shape[1]), int(images.shape[-1])
    reader = env.features(in_ch)
    stats, device, precision = reader.stats, env.device, env.precision

    probe = build_network(cfg, in_ch, size, seed=seeds[0])
    stack = method != "loop" and cfg.cluster_layer is None
    if stack:
        try:
            StackedNet([probe])
        except NotStackable as e:
            if method == "stacked":
                raise ConfigError(f"architecture {cfg.model.arch} cannot be stacked ({e}): use method 'loop'") from None
            stack = False
    per_pass = _models_per_pass(len(images), probe.feature_dim, models_per_pass) if stack else 1

    values: list[float] = []
    phases = {"features": 0.0, "pca": 0.0, "clustering": 0.0}
    # Under torchrun each rank takes its share of the passes: a network is computed in the same
    # pass (with the same neighbours) as in a single process, so every value is the same.
    world = distributed.world()
    groups = [seeds[start : start + per_pass] for start in range(0, len(seeds), per_pass)]
    mine = groups[distributed.shard(len(groups), world)]
    show_progress = show_progress and world.is_main
    total = sum(map(len, mine))
    ticker = ProgressLog(log if world.is_main else None, f"IA {setting_name(setting or {})}", total, unit="networks")
    scored = labels[mask]
    with (progress_bar(f"IA {setting_name(setting or {})}", total=total, enabled=show_progress) as advance,
          numpy_blas_threads(1),  # no spinning BLAS threads beside torch's (core/blas.py)
          ThreadPoolExecutor(torch.get_num_threads()) as scorer):
        for group in mine:
            models = [build_network(cfg, in_ch, size, seed=s).to(device) for s in group]
            t = time.perf_counter()
            if stack:
                feats = stacked_embed(models, images, *stats, device=device, show_progress=False, precision=precision)
            else:
                layers = None if cfg.cluster_layer is None else [cfg.cluster_layer]
                feats = [next(iter(extract_features(m, images, reader, layers=layers).values())) for m in models]
            del models
            phases["features"] += time.perf_counter() - t
            t = time.perf_counter()
            steps = preprocess_and_cluster_many([np.ascontiguousarray(x) for x in feats], cfg,
                                                seeds=[cycle_seed(s, 1) for s in group], workers=torch.get_num_threads(),
                                                device=device)
            del feats
            wall = time.perf_counter() - t  # the phases overlap across workers: split the wall time
            cpu = {phase: sum(step.seconds[phase] for step in steps) for phase in ("pca", "clustering")}
            for phase in cpu:
                phases[phase] += wall * cpu[phase] / max(sum(cpu.values()), 1e-12)
            # scikit-learn's NMI takes ~15 ms of 60,000 labels, much of it without the GIL
            for value in scorer.map(lambda step: nmi(scored, step.result.assignments[mask]), steps):
                values.append(value)
                advance(1)
            ticker.update(len(values))
    if world.distributed:
        values = [v for part in distributed.all_gather_objects(values) for v in part]
        every = distributed.all_gather_objects(phases)
        phases = {k: sum(p[k] for p in every) for k in phases}  # summed over the ranks
    return IAResult(
        seeds=np.asarray(seeds, dtype=np.int64), values=np.asarray(values, dtype=np.float64), k=cfg.k,
        setting=dict(setting or {}), n_images=len(images), n_labelled=int(mask.sum()),
        seconds=time.perf_counter() - t0, method="stacked" if stack else "loop",
        phases={k: round(v, 3) for k, v in phases.items()}, precision=precision.label,
    )


def resolve_init(cfg: TrainConfig, *, data: ImageDataset | None = None,
                 show_progress: bool = True) -> tuple[TrainConfig, dict[str, Any] | None]:
    """Resolve ``init=best_ia:N`` before training: the init seed with the highest Initial
    Alignment among ``seed .. seed+N-1``.

    Returns ``cfg`` with ``init_seed`` set and the record of the choice (what ``train`` writes to
    ``init_ia.json``); ``cfg`` and ``None`` when there is nothing to resolve (``init=random``, or
    ``init_seed`` already given).
    """
    n = cfg.best_ia_candidates()
    if n is None or cfg.init_seed is not None:
        return cfg, None
    data = data if data is not None else load_train_data(cfg)
    if data.labels is None:
        raise ClusteringError("init=best_ia:N ranks initialisations by their alignment with labels, and this dataset "
                              "has none: use init=random, or compute IA with `deepcluster ia --labels FILE` and "
                              "set init_seed")
    res = initial_alignment(cfg, range(cfg.seed, cfg.seed + n), data=data, show_progress=show_progress)
    best, value = res.ranked()[0]
    record = {"init": cfg.init, "chosen_seed": best, "ia": value, "k": cfg.k,
              "candidates": {str(s): float(v) for s, v in zip(res.seeds, res.values)}, "seconds": round(res.seconds, 2)}
    return cfg.model_copy(update={"init_seed": best}), record


def _cost(value: Any) -> float:
    # "cheaper" = fewer clusters, fewer PCA dims, fewer iterations...; off/None = no reduction
    if value is None:
        return float("inf")
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return 0.0


def recommend(results: Sequence[IAResult], tie: float = 0.01) -> IAResult:
    """The setting with the highest median IA; within ``tie`` of it, the cheapest one.

    Cheaper means smaller values of the varied keys (k, PCA dimensions, iterations); ``off``
    counts as the most expensive.
    """
    if not results:
        raise ConfigError("no IA results to choose from")
    best = max(r.summary()["median"] for r in results)
    close = [r for r in results if r.summary()["median"] >= best - tie]
    return min(close, key=lambda r: (tuple(_cost(v) for v in r.setting.values()), -r.summary()["median"]))

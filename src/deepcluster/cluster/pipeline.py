"""Training's clustering of a feature matrix: PCA-whitening + L2, then k-means or PIC.

Training (each cycle) and Initial Alignment (cycle 1 of many random networks) both call
:func:`preprocess_and_cluster`, so IA sees exactly what the first cycle of a run clusters.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import faiss
import numpy as np

from deepcluster.cluster.dispatch import cluster_features
from deepcluster.cluster.preprocess import Preprocessor
from deepcluster.cluster.result import ClusterResult
from deepcluster.config import TrainConfig

__all__ = ["ClusterStep", "preprocess_and_cluster", "preprocess_and_cluster_many"]


@dataclass
class ClusterStep:
    """Clusters of one cycle, the seconds of each phase, and the PCA dimensions kept."""

    result: ClusterResult
    seconds: dict[str, float] = field(default_factory=dict)
    pca_dim: int | None = None  # dimensions actually kept (fewer than asked when features are rank-deficient)


def preprocess_and_cluster(x: np.ndarray, cfg: TrainConfig, *, seed: int, k: int | None = None,
                           sharded: bool = False) -> ClusterStep:
    """Training's clustering of features ``x``: PCA-whitening + L2, then ``cfg.clustering``.

    Parameters
    ----------
    x : np.ndarray
        Features, shape (N, d): with ``sharded``, this process's rows (contiguous, rank order).
    cfg : TrainConfig
        ``pca_dim``, ``whiten``, ``clustering``, ``k``, ``kmeans_iters`` and ``fit_fraction``.
    seed : int
        Seed of the clustering (training uses the cycle's seed).
    k : int, optional
        Number of clusters instead of ``cfg.k``.
    sharded : bool
        Cluster the rows of all the processes of a distributed run together: the PCA from
        all-reduced moments, k-means fitted on rank 0 from the gathered reduced rows (see
        :func:`deepcluster.cluster.kmeans`). The result holds every row's assignment.

    Returns
    -------
    ClusterStep
    """
    times: dict[str, float] = {}
    t = time.perf_counter()
    pre = Preprocessor(pca_dim=cfg.pca_dim, eigen_power=-0.5 if cfg.whiten else 0.0, on_degenerate="truncate")
    x = pre.fit_transform(x, sharded=sharded)
    times["pca"] = time.perf_counter() - t

    t = time.perf_counter()
    result = cluster_features(
        x, cfg.clustering, k or cfg.k, niter=cfg.kmeans_iters, seed=seed, fit_fraction=cfg.fit_fraction,
        sharded=sharded, device=_kmeans_device(cfg),
    )
    times["clustering"] = time.perf_counter() - t
    return ClusterStep(result=result, seconds=times, pca_dim=pre.effective_dim)


def _kmeans_device(cfg: TrainConfig) -> str | None:
    """The GPU k-means runs on (this rank's), or None for faiss on the CPU."""
    import torch

    if cfg.device == "cpu" or not torch.cuda.is_available():
        return None
    return f"cuda:{torch.cuda.current_device()}"


def preprocess_and_cluster_many(xs: Sequence[np.ndarray], cfg: TrainConfig, *, seeds: Sequence[int],
                                workers: int = 1) -> list[ClusterStep]:
    """:func:`preprocess_and_cluster` of several feature matrices, ``workers`` at a time.

    Each worker runs faiss single-threaded: PCA and k-means of one matrix are too small to keep
    several threads busy, and their results do not depend on the thread count (so each step is
    exactly the one :func:`preprocess_and_cluster` returns alone).
    """
    if len(xs) != len(seeds):
        raise ValueError(f"{len(xs)} feature matrices but {len(seeds)} seeds")
    workers = max(1, min(workers, len(xs)))
    if workers == 1:
        return [preprocess_and_cluster(x, cfg, seed=s) for x, s in zip(xs, seeds)]
    with _faiss_threads(1), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda item: preprocess_and_cluster(item[0], cfg, seed=item[1]), zip(xs, seeds)))


@contextlib.contextmanager
def _faiss_threads(n: int) -> Iterator[None]:
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)

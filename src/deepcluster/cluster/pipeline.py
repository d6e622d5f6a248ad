"""Training's clustering of a feature matrix: PCA-whitening + L2, then k-means or PIC.

Training (each cycle) and Initial Alignment (cycle 1 of many random networks) both call
:func:`preprocess_and_cluster`, so IA sees exactly what the first cycle of a run clusters. Its
``n_init`` restarts k-means from several seeds on the one fitted PCA and keeps the lowest loss.
Its :class:`ClusterStep` keeps, with the clusters, the :class:`~deepcluster.cluster.assigner.ClusterAssigner`
that assigns new features to them as the clustering assigned its own (the run checkpoints keep it).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch

from deepcluster.cluster._checks import check_int
from deepcluster.cluster.assigner import ClusterAssigner
from deepcluster.cluster.dispatch import cluster_features
from deepcluster.cluster.preprocess import Preprocessor
from deepcluster.cluster.result import ClusterResult
from deepcluster.core.blas import numpy_blas_threads
from deepcluster.core.config import TrainConfig
from deepcluster.core.device import rank_device

__all__ = ["ClusterStep", "preprocess_and_cluster", "preprocess_and_cluster_many"]


@dataclass
class ClusterStep:
    """Clusters of one cycle, the seconds of each phase, the PCA dimensions kept, and what assigns
    new features to the clusters."""

    result: ClusterResult
    seconds: dict[str, float] = field(default_factory=dict)
    pca_dim: int | None = None  # dimensions actually kept (fewer than asked when features are rank-deficient)
    assigner: ClusterAssigner | None = None  # None: the result keeps no centroids to assign to


def preprocess_and_cluster(x: np.ndarray | Callable[[], Iterable[np.ndarray]], cfg: TrainConfig, *, seed: int,
                           k: int | None = None, sharded: bool = False, hold_bytes: int | None = None,
                           n_init: int = 1, device: torch.device | str | None = None) -> ClusterStep:
    """Training's clustering of features ``x``: PCA-whitening + L2, then ``cfg.clustering``.

    Parameters
    ----------
    x : np.ndarray or callable
        Features, shape (N, d): with ``sharded``, this process's rows (contiguous, rank order).
        Or a callable returning the rows a chunk at a time: the PCA is fitted from the chunks'
        moments and each chunk is then reduced to ``pca_dim``, so the features never exist at
        full width all at once -- the result is the same as from the whole array.
    cfg : TrainConfig
        ``pca_dim``, ``whiten``, ``clustering``, ``k``, ``kmeans_iters`` and ``fit_fraction``.
    seed : int
        Seed of the clustering (of its first run, with ``n_init``).
    k : int, optional
        Number of clusters (default ``cfg.k``).
    sharded : bool
        The processes of a distributed run each pass their own rows; every one gets the
        assignments of all the rows.
    hold_bytes : int, optional
        With a callable ``x``: the full-width chunks of the first pass are kept (and reduced
        without a second pass) while they take at most this many bytes; beyond, the first pass
        only fits the PCA and the callable is called again for the rows to reduce. None: no limit.
    n_init : int
        k-means restarts: the PCA is fitted once, then k-means runs with the seeds ``seed``,
        ``seed + 1``, ..., ``seed + n_init - 1`` and the result of lowest ``loss`` is kept (on a
        tie, the first). 1 (the default) is training's single run. PIC, deterministic and
        without a loss, runs once whatever ``n_init``.
    device : torch.device or str, optional
        Where the PCA's moments and k-means compute: a GPU (k-means with faiss's GPU index when
        faiss has one, else in torch) or the CPU. None: ``cfg.device`` for this rank
        (:func:`~deepcluster.core.device.rank_device`: its own GPU under torchrun).
    """
    n_init = check_int(n_init, "n_init", 1)
    times: dict[str, float] = {}
    t = time.perf_counter()
    if cfg.cluster_relu:  # the ablation of clustering after the last ReLU
        x = _relu_chunks(x) if callable(x) else np.maximum(x, 0)
    device = rank_device(cfg.device) if device is None else torch.device(device)
    pre = Preprocessor(pca_dim=cfg.pca_dim, eigen_power=-0.5 if cfg.whiten else 0.0, on_degenerate="truncate",
                       device=device)
    if callable(x):
        x = _reduce_chunks(pre, x, sharded=sharded, hold_bytes=hold_bytes)
    else:
        x = pre.fit_transform(x, sharded=sharded)
    times["pca"] = time.perf_counter() - t

    t = time.perf_counter()
    runs = n_init if cfg.clustering == "kmeans" else 1
    result = _lowest_loss(x, cfg, k or cfg.k, seeds=range(seed, seed + runs), sharded=sharded, device=device)
    times["clustering"] = time.perf_counter() - t
    assigner = ClusterAssigner.from_clustering(pre, result, x, method=cfg.clustering, relu=cfg.cluster_relu,
                                               sharded=sharded)
    return ClusterStep(result=result, seconds=times, pca_dim=pre.effective_dim, assigner=assigner)


def _lowest_loss(x: np.ndarray, cfg: TrainConfig, k: int, *, seeds: range, sharded: bool,
                 device: torch.device) -> ClusterResult:
    """The clustering of ``x`` of lowest loss among one run per seed (on a tie, the first)."""
    gpu = str(device) if device.type == "cuda" else None
    runs = (cluster_features(x, cfg.clustering, k, niter=cfg.kmeans_iters, seed=seed, fit_fraction=cfg.fit_fraction,
                             sharded=sharded, device=gpu, deterministic=cfg.deterministic,
                             algorithm=cfg.kmeans_algorithm)
            for seed in seeds)
    return min(runs, key=lambda r: r.loss)  # holds only the best run so far


def _relu_chunks(chunks: Callable[[], Iterable[np.ndarray]]) -> Callable[[], Iterator[np.ndarray]]:
    return lambda: (np.maximum(chunk, 0) for chunk in chunks())


def _reduce_chunks(pre: Preprocessor, chunks: Callable[[], Iterable[np.ndarray]], *, sharded: bool,
                   hold_bytes: int | None) -> np.ndarray:
    """Fit ``pre`` on the rows ``chunks()`` yields and return them reduced (N × pca_dim float32).

    Only the reduced rows are held, plus the full-width chunks of the first pass while they fit
    ``hold_bytes`` (then no second pass is needed).
    """
    kept: list[np.ndarray] | None = []
    held = n = 0
    for chunk in chunks():
        pre.partial_fit(chunk, allow_empty=True)
        n += len(chunk)
        if kept is not None:
            held += chunk.nbytes
            if hold_bytes is None or held <= hold_bytes:
                kept.append(chunk)
            else:
                kept = None  # too large to keep: the rows are read again
    pre.finalize(sharded=sharded)
    out = np.empty((n, pre.effective_dim or 1), dtype=np.float32)
    row = 0
    for chunk in kept if kept is not None else chunks():
        out[row : row + len(chunk)] = pre.transform(chunk)
        row += len(chunk)
    if row != n:
        raise ValueError(f"the second pass over the features gave {row} rows, the first {n}")
    return out


def preprocess_and_cluster_many(xs: Sequence[np.ndarray], cfg: TrainConfig, *, seeds: Sequence[int],
                                workers: int = 1, device: torch.device | str | None = None) -> list[ClusterStep]:
    """:func:`preprocess_and_cluster` of several feature matrices, ``workers`` at a time.

    Each worker runs faiss single-threaded: PCA and k-means of one matrix are too small to keep
    several threads busy, and their results do not depend on the thread count (so each step is
    exactly the one :func:`preprocess_and_cluster` returns alone).
    """
    if len(xs) != len(seeds):
        raise ValueError(f"{len(xs)} feature matrices but {len(seeds)} seeds")
    workers = max(1, min(workers, len(xs)))
    if workers == 1:
        return [preprocess_and_cluster(x, cfg, seed=s, device=device) for x, s in zip(xs, seeds)]

    def one(item: tuple[np.ndarray, int]) -> ClusterStep:
        # OpenMP's thread count belongs to the calling thread: set in the pool's thread, not
        # the caller's (set there, each worker's faiss ran on all cores: 1.4x slower on 2 cores).
        faiss.omp_set_num_threads(1)
        return preprocess_and_cluster(item[0], cfg, seed=item[1], device=device)

    with _one_thread_each(), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, zip(xs, seeds)))


@contextlib.contextmanager
def _one_thread_each() -> Iterator[None]:
    """Inside: torch and numpy's BLAS on one thread, so that the workers' own parallel code
    (:mod:`.nearest` shares its blocks among ``torch.get_num_threads()`` threads) runs inline
    instead of each worker starting threads of its own, and no worker changes torch's thread
    count while another reads it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with numpy_blas_threads(1):
            yield
    finally:
        torch.set_num_threads(before)

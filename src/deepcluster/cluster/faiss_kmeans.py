"""k-means with faiss, as ``run_kmeans`` of the official DeepCluster code."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy as np

from deepcluster.cluster._checks import as_features, check_int
from deepcluster.cluster.empty import resplit_empty
from deepcluster.cluster.nearest import nearest
from deepcluster.cluster.result import ClusterResult
from deepcluster.core import distributed
from deepcluster.core.errors import ClusteringError

_NO_GPU_FAISS = (
    "use_gpu=True but this faiss has no GPU support (or sees no GPU): "
    "install faiss-gpu, or set use_gpu to false/None"
)


def _gpu_available() -> bool:
    get = getattr(faiss, "get_num_gpus", None)
    return bool(get is not None and get() > 0 and hasattr(faiss, "GpuIndexFlatL2"))


@functools.cache
def _gpu_resources(gpu: int) -> object:
    """One set of faiss GPU resources (streams, scratch memory) per GPU, made once per process."""
    return faiss.StandardGpuResources()


def _make_index(d: int, use_gpu: bool | None, gpu: int = 0) -> tuple[faiss.Index, object]:
    """Return the flat L2 index (on GPU ``gpu`` when on a GPU) and the GPU resources it needs kept
    alive (or None)."""
    if use_gpu is None:
        use_gpu = _gpu_available()
    if not use_gpu:
        return faiss.IndexFlatL2(d), None
    if not _gpu_available():
        raise ValueError(_NO_GPU_FAISS)
    res = _gpu_resources(gpu)
    config = faiss.GpuIndexFlatConfig()
    config.useFloat16 = False  # as official: fp16 distances change the assignments
    config.device = gpu  # this rank's GPU, not GPU 0
    return faiss.GpuIndexFlatL2(res, d, config), res


def _sq_error(x: np.ndarray, centroids: np.ndarray, assignments: np.ndarray) -> float:
    """Sum of squared distances to the assigned centroids, in float64, by chunks."""
    total = 0.0
    # Cache-sized blocks into one reused buffer: full-size float64 temporaries (30 MB at
    # 60,000 x 64) cost ten times the arithmetic in fresh pages (0.12-0.18 s in a training cycle).
    step = max(1, (1 << 21) // max(1, 8 * x.shape[1]))
    buf = np.empty((min(step, x.shape[0]), x.shape[1]), dtype=np.float64)
    for start in range(0, x.shape[0], step):
        sl = slice(start, start + step)
        diff = buf[: len(x[sl])]
        np.subtract(x[sl], centroids[assignments[sl]], out=diff)  # float32 - float64: exact in float64
        total += float(np.einsum("ij,ij->", diff, diff))
    return total


@dataclass(frozen=True)
class _Backend:
    """Where one k-means call computes, chosen once by :func:`_choose_backend`.

    ``torch_device`` set: :func:`~deepcluster.cluster.torch_kmeans.torch_kmeans` fits and torch
    assigns on that GPU. Otherwise faiss fits, with its GPU index when ``fit_gpu``; on the CPU from
    :func:`_fit_by_lloyd` problems :func:`~deepcluster.cluster.lloyd.lloyd_kmeans` (faiss's
    algorithm by GEMM blocks) fits instead. The rows are assigned with faiss's GPU index when
    ``assign_gpu``, else by GEMM blocks on the CPU (:func:`~deepcluster.cluster.nearest.nearest`).
    """

    fit_gpu: bool
    assign_gpu: bool
    torch_device: str | None
    verbose: bool
    gpu: int = 0  # faiss's GPU (this rank's)


def _choose_backend(use_gpu: bool | None, device: str | None, verbose: bool,
                    deterministic: bool = False) -> _Backend:
    """The backend of :func:`kmeans`'s ``use_gpu``, ``device`` and ``deterministic`` (see there)."""
    on_gpu = device is not None and str(device).startswith("cuda")
    gpu = _gpu_index(device) if on_gpu else 0
    if on_gpu and (deterministic or not _gpu_available()):
        return _Backend(fit_gpu=False, assign_gpu=False, torch_device=f"cuda:{gpu}", verbose=verbose, gpu=gpu)
    if on_gpu:
        use_gpu = True
    if use_gpu and not _gpu_available():
        raise ValueError(_NO_GPU_FAISS)
    # use_gpu=None: faiss's GPU index for the fit when faiss sees a GPU; the assignment on the CPU.
    fit_gpu = _gpu_available() if use_gpu is None else bool(use_gpu)
    return _Backend(fit_gpu=fit_gpu, assign_gpu=bool(use_gpu), torch_device=None, verbose=verbose, gpu=gpu)


def _gpu_index(device: str) -> int:
    """The GPU number of ``cuda`` or ``cuda:N`` (``cuda``: the current one, this rank's)."""
    import torch

    dev = torch.device(device)
    return dev.index if dev.index is not None else torch.cuda.current_device()


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    niter: int = 20,
    seed: int = 0,
    fit_fraction: float = 1.0,
    use_gpu: bool | None = None,
    verbose: bool = False,
    sharded: bool = False,
    device: str | None = None,
    deterministic: bool = False,
    algorithm: str = "faiss",
) -> ClusterResult:
    """Cluster ``x`` into ``k`` non-empty clusters with faiss's k-means algorithm.

    On the CPU, :func:`~deepcluster.cluster.lloyd.lloyd_kmeans`, the same algorithm with its
    distances as GEMM blocks (bf16 with an exact fp32 re-check where the CPU has bf16), fits the
    large problems, where faiss is slower (k >= 256 and N k d >= 2^32, see :func:`_fit_by_lloyd`:
    ImageNet-size clusterings); faiss fits the others, as the official DeepCluster, searching by
    direct distances below k = :data:`FAISS_DIRECT_BELOW_K` (faster there) and by BLAS products
    from it (:func:`_faiss_search_path`).

    This function validates its inputs and chooses the backend; the private functions below it
    compute: draw the fit rows (:func:`_fit_rows`), fit the centroids on them
    (:func:`_fit_centroids`), assign every row to its nearest centroid (:func:`assign_nearest`),
    re-split the empty clusters and total the loss (:func:`_resplit_and_gather`).

    With ``sharded``, ``x`` holds this process's rows of the features (contiguous, in rank order)
    and the processes of the distributed run cluster them together without any of them holding
    all the rows: the fit rows (all of them, or the ``fit_fraction`` sample, drawn from the global
    row numbers) are gathered on rank 0, which fits faiss k-means; the centroids are broadcast;
    every rank assigns its own rows; empty clusters are re-split with the same decisions on every
    rank (:func:`resplit_empty`); the assignments are all-gathered. One process is the same
    computation, and gives the same result.

    Parameters
    ----------
    x : np.ndarray
        Features, shape (N, d), usually from :func:`preprocess_features` (this rank's rows when
        ``sharded``).
    k : int
        Number of clusters, 1 <= k <= N.
    niter : int
        k-means iterations.
    seed : int
        Seed of faiss's centroid initialisation, of the fit subset and of empty-cluster
        re-splits.
    fit_fraction : float
        In (0, 1]. Below 1, centroids are fitted on a random subset of
        ``round(fit_fraction * N)`` samples, then all N samples are assigned to their
        nearest centroid (Caron's thesis, §4.6.2).
    use_gpu : bool or None
        faiss GPU index; ``None`` fits with one if faiss sees a GPU (and assigns on the CPU).
    verbose : bool
        Let faiss print its progress.
    sharded : bool
        Cluster the rows of all processes together (see above).
    device : str or None
        ``cuda[:N]``: fit (and assign) on that GPU, with faiss's GPU index when faiss has one,
        else with :func:`~deepcluster.cluster.torch_kmeans.torch_kmeans` (faiss's algorithm in
        torch: the same assignments up to ties). ``cuda`` alone is the current GPU (this rank's
        under torchrun). ``None`` or ``cpu``: faiss on the CPU.
    deterministic : bool
        On a GPU, fit and assign with the torch k-means (fixed blocks, PyTorch's deterministic
        algorithms) rather than faiss's GPU index, whose results vary from run to run.
    algorithm : {"faiss", "sklearn"}
        ``"sklearn"`` fits the centroids with scikit-learn's ``KMeans(n_clusters=k, n_init=1,
        max_iter=niter, random_state=seed)`` on the CPU (k-means++ seeding, its own convergence
        test), as the Deep Dive authors computed Initial Alignment; the assignment, re-splits and
        loss are then this function's, as for faiss.

    Returns
    -------
    ClusterResult
        ``assignments`` of all N samples (of every rank, when sharded); every one of the ``k``
        clusters is non-empty (see :func:`resplit_empty`); ``loss`` is the sum of squared
        distances of all N samples to their centroid.

    Raises
    ------
    ClusteringError
        On NaN/inf features, ``k`` larger than N, or a ``fit_fraction`` leaving fewer fit
        samples than ``k``.
    ValueError
        ``fit_fraction`` outside (0, 1], ``use_gpu=True`` without GPU faiss (a caller's bug).
    """
    x = as_features(x, allow_empty=sharded)
    k = check_int(k, "k", 1)
    niter = check_int(niter, "niter", 1)
    seed = check_int(seed, "seed", 0)
    n, offset = _row_span(len(x), sharded)
    if k > n:
        raise ClusteringError(
            f"k={k} is larger than the number of samples ({n}): lower k or use more data"
        )
    n_fit = _fit_count(fit_fraction, n, k)
    if algorithm not in ("faiss", "sklearn"):
        raise ValueError(f"algorithm must be 'faiss' or 'sklearn', not {algorithm!r}")
    backend = _choose_backend(use_gpu, device, verbose, deterministic)

    rng = np.random.default_rng(seed)  # draws the fit rows, then the empty-cluster re-splits
    x_fit = _fit_rows(x, n, offset, n_fit, rng, sharded=sharded)
    centroids, faiss_splits = _fit_centroids(x_fit, k, niter=niter, seed=seed, backend=backend, sharded=sharded,
                                             algorithm=algorithm)
    # Every sample goes to its nearest centroid, fit subset or not; each rank assigns its own.
    local = assign_nearest(x, centroids, use_gpu=backend.assign_gpu, device=backend.torch_device, offset=offset,
                           gpu=backend.gpu)
    return _resplit_and_gather(local, x, k, centroids, rng, sharded=sharded, faiss_splits=faiss_splits)


def _row_span(n_local: int, sharded: bool) -> tuple[int, int]:
    """The number of rows of all ranks, and the global number of this rank's first row."""
    counts = [int(c) for c in distributed.all_gather_objects(n_local)] if sharded else [n_local]
    me = distributed.world().rank if sharded else 0
    return sum(counts), sum(counts[:me])


def _fit_count(fit_fraction: object, n: int, k: int) -> int | None:
    """The number of rows k-means is fitted on, or None for all ``n`` (``fit_fraction`` 1).

    Raises ValueError for a ``fit_fraction`` outside (0, 1], ClusteringError when it leaves fewer
    than ``k`` rows.
    """
    try:
        frac = float(fit_fraction)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        frac = float("nan")
    if not 0.0 < frac <= 1.0:
        raise ValueError(
            f"fit_fraction={fit_fraction!r} must be in (0, 1]: use 1.0 to fit on all samples"
        )
    if frac == 1.0:
        return None
    n_fit = int(round(frac * n))
    if n_fit < k:
        raise ClusteringError(
            f"fit_fraction={frac} keeps {n_fit} of {n} samples to fit, fewer "
            f"than k={k}: raise fit_fraction or lower k"
        )
    return n_fit


def _fit_rows(x: np.ndarray, n: int, offset: int, n_fit: int | None, rng: np.random.Generator, *,
              sharded: bool) -> np.ndarray | None:
    """The rows k-means is fitted on: all of ``x``, or the ``n_fit`` rows drawn by ``rng`` among
    the ``n`` global row numbers. Sharded: those of every rank, in order, on rank 0 (None elsewhere)."""
    if n_fit is None:
        x_fit = x
    else:
        chosen = np.sort(rng.choice(n, n_fit, replace=False))
        mine = chosen[(chosen >= offset) & (chosen < offset + len(x))] - offset
        x_fit = np.ascontiguousarray(x[mine])
    if sharded:
        x_fit = distributed.gather_rows(x_fit)  # on rank 0 only: the fit rows of every rank, in order
    return x_fit


def _fit_centroids(x_fit: np.ndarray | None, k: int, *, niter: int, seed: int, backend: _Backend,
                   sharded: bool, algorithm: str = "faiss") -> tuple[np.ndarray, int]:
    """Centroids (k × d float32) fitted on ``x_fit`` and the empty-cluster splits made on the way;
    sharded: fitted on rank 0 (the one holding ``x_fit``) and broadcast."""
    centroids, faiss_splits = None, 0
    if x_fit is not None and algorithm == "sklearn":
        from sklearn.cluster import KMeans

        fitted = KMeans(n_clusters=k, n_init=1, max_iter=niter, random_state=seed & 0x7FFFFFFF).fit(x_fit)
        centroids = np.ascontiguousarray(fitted.cluster_centers_, dtype=np.float32)
    elif x_fit is not None and backend.torch_device is not None:
        from deepcluster.cluster.torch_kmeans import torch_kmeans

        centroids, faiss_splits = torch_kmeans(x_fit, k, niter=niter, seed=seed, device=backend.torch_device)
    elif x_fit is not None and not backend.fit_gpu and _fit_by_lloyd(len(x_fit), k, x_fit.shape[1]):
        from deepcluster.cluster.lloyd import lloyd_kmeans

        centroids, faiss_splits = lloyd_kmeans(x_fit, k, niter=niter, seed=seed)
    elif x_fit is not None:
        centroids, faiss_splits = _fit_faiss(x_fit, k, niter=niter, seed=seed, backend=backend)
    if sharded:
        centroids = distributed.broadcast_array(centroids)
        faiss_splits = int(distributed.broadcast_object(faiss_splits))
    return centroids, faiss_splits


#: The CPU fits with :func:`~deepcluster.cluster.lloyd.lloyd_kmeans` (faiss's algorithm, its
#: assignment by GEMM blocks, bf16 with an exact re-check where the CPU has it) from
#: ``k >= LLOYD_MIN_K`` and ``n_fit * k * d >= LLOYD_MIN_WORK``: there the products are the work
#: and faiss's own search runs below the BLAS roof (1.28M x 256, k = 10,000: 1.75-1.9x faster).
#: Below it faiss, the official DeepCluster's k-means, fits as before: at small k its fit is as
#: fast as plain BLAS Lloyd or faster (60,000 x 56, k = 10 and 100, measured on a quiet box;
#: docs/performance.md, "k-means at ImageNet size").
LLOYD_MIN_K = 256
LLOYD_MIN_WORK = 1 << 32


def _fit_by_lloyd(n_fit: int, k: int, d: int) -> bool:
    """Whether the CPU fit of ``n_fit`` rows, ``k`` centroids of ``d`` dims is
    :func:`~deepcluster.cluster.lloyd.lloyd_kmeans`'s (else faiss's). By size only, so that a
    problem gets the same backend, and the same result, on every CPU."""
    return k >= LLOYD_MIN_K and n_fit * k * d >= LLOYD_MIN_WORK


def _fit_faiss(x_fit: np.ndarray, k: int, *, niter: int, seed: int, backend: _Backend) -> tuple[np.ndarray, int]:
    """faiss k-means on ``x_fit``, set up as the official DeepCluster's ``run_kmeans``."""
    d = x_fit.shape[1]
    clus = faiss.Clustering(d, k)
    # faiss takes a 32-bit seed; mask so any Python int is accepted deterministically.
    clus.seed = seed & 0x7FFFFFFF
    clus.niter = niter
    # As official: never let faiss subsample the fit points silently (it would above
    # 256 points per centroid), and do not warn about few points per centroid.
    clus.max_points_per_centroid = 10**7
    clus.min_points_per_centroid = 1
    clus.verbose = bool(backend.verbose)
    index, _gpu_res = _make_index(d, backend.fit_gpu, backend.gpu)  # _gpu_res: must outlive the index
    with _faiss_search_path(k):
        clus.train(x_fit, index)
    stats = clus.iteration_stats
    faiss_splits = sum(int(stats.at(i).nsplit) for i in range(stats.size()))
    return faiss.vector_to_array(clus.centroids).reshape(k, d).astype(np.float32), faiss_splits


def _resplit_and_gather(local: np.ndarray, x: np.ndarray, k: int, centroids: np.ndarray, rng: np.random.Generator,
                        *, sharded: bool, faiss_splits: int) -> ClusterResult:
    """Re-split the empty clusters of the assignments ``local`` of the rows ``x``, total the loss,
    and (sharded) gather the assignments of every rank."""
    fitted, splits = centroids, []
    local, centroids, ours = resplit_empty(local, x, k, centroids, rng, sharded=sharded, record=splits)
    loss = _sq_error(x, centroids.astype(np.float64), local)
    if sharded:
        loss = float(distributed.all_reduce_sum(np.array([loss]))[0])
    assignments = (distributed.all_gather_rows(local.astype(np.int32)).astype(np.int64) if sharded else local)
    return ClusterResult(
        assignments=assignments,
        k=k,
        centroids=centroids,
        n_resplit=faiss_splits + ours,
        loss=loss,
        sizes=np.bincount(assignments, minlength=k).astype(np.int64),
        search_centroids=np.asarray(fitted, dtype=np.float32),
        splits=splits,
    )


def assign_nearest(x: np.ndarray, centroids: np.ndarray, *, use_gpu: bool | None = None,
                   device: str | None = None, offset: int = 0, gpu: int = 0, bf16: bool | None = None) -> np.ndarray:
    """The nearest centroid (L2) of every row of ``x``, int64; the same for a row whatever rows
    are searched with it. ``offset``: the global number of ``x``'s first row (a rank's shard).
    ``device``: compute it in torch there (GPUs without faiss-gpu); ``use_gpu``: faiss-gpu on
    GPU ``gpu``.

    On the CPU this is :func:`~deepcluster.cluster.nearest.nearest`: ``argmin ||c||^2 - 2 x.c`` by
    fp32 BLAS products in globally aligned blocks, or from bf16 products with an exact fp32
    re-check of the near ties where the CPU computes bf16 natively (``bf16``: None = where it
    pays); the two give the same assignments. faiss 1.15's flat search takes a path without BLAS
    below 128,000 query rows, about 4x slower here.
    """
    if device is not None:
        import torch

        from deepcluster.cluster.torch_kmeans import nearest_centroids

        return nearest_centroids(torch.from_numpy(np.ascontiguousarray(x)).to(device),
                                 torch.from_numpy(centroids).to(device)).cpu().numpy()
    if use_gpu:
        index, _gpu_res = _make_index(centroids.shape[1], use_gpu, gpu)
        index.add(np.ascontiguousarray(centroids, dtype=np.float32))
        return index.search(np.ascontiguousarray(x, dtype=np.float32), 1)[1][:, 0].astype(np.int64)
    return nearest(np.ascontiguousarray(x, dtype=np.float32), centroids, offset=offset, bf16=bf16)


#: Below this many centroids faiss's k-means searches by direct distances (its SIMD loop over
#: ``||x - c||^2``), from it by BLAS products (``||x||^2 + ||c||^2 - 2 x.c``). Measured on one
#: core, 60,000 rows of 64 and 256 dims: direct 2.5-3.5x faster at k = 5, 1.6-2x at k = 10,
#: even at k = 20, 1.7-3x slower from k = 50 (docs/performance.md, "k-means at ImageNet size",
#: last paragraph).
FAISS_DIRECT_BELOW_K = 16


_PATH = threading.Condition()  # guards faiss's process-wide threshold and the fits using it
_fitting = {"direct": 0, "blas": 0}  # fits in progress on each path
_saved_threshold: list[int] = []  # faiss's threshold before the running fits began (one at most)


@contextlib.contextmanager
def _faiss_search_path(k: int) -> Iterator[None]:
    """faiss's searches by direct distances for fewer than :data:`FAISS_DIRECT_BELOW_K`
    centroids, else by BLAS matrix products from 20 query rows (faiss 1.15's default threshold
    is 128,000 rows, below which the direct path is taken whatever k); restored when the last fit
    ends. By k only, so that a problem takes the same path, and gives the same result, whatever
    its rows. The threshold is one process-wide variable: fits in threads (Initial Alignment's
    workers) share it, and a fit waits while others run on the other path."""
    path = "direct" if k < FAISS_DIRECT_BELOW_K else "blas"
    other = "blas" if path == "direct" else "direct"
    with _PATH:
        _PATH.wait_for(lambda: _fitting[other] == 0)
        if not _fitting[path]:
            _saved_threshold.append(faiss.cvar.distance_compute_blas_threshold)
            faiss.cvar.distance_compute_blas_threshold = 2**31 - 1 if path == "direct" else 20
        _fitting[path] += 1
    try:
        yield
    finally:
        with _PATH:
            _fitting[path] -= 1
            if not _fitting[path]:
                faiss.cvar.distance_compute_blas_threshold = _saved_threshold.pop()
                _PATH.notify_all()

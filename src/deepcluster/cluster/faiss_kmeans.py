"""k-means with faiss, as ``run_kmeans`` of the official DeepCluster code."""

from __future__ import annotations

import faiss
import numpy as np

from deepcluster.cluster._checks import as_features, check_int
from deepcluster.cluster.empty import resplit_empty
from deepcluster.cluster.result import ClusterResult
from deepcluster.errors import ClusteringError


def _gpu_available() -> bool:
    get = getattr(faiss, "get_num_gpus", None)
    return bool(get is not None and get() > 0 and hasattr(faiss, "GpuIndexFlatL2"))


def _make_index(d: int, use_gpu: bool | None) -> tuple[faiss.Index, object]:
    """Return the flat L2 index and the GPU resources it needs kept alive (or None)."""
    if use_gpu is None:
        use_gpu = _gpu_available()
    if not use_gpu:
        return faiss.IndexFlatL2(d), None
    if not _gpu_available():
        raise ValueError(
            "use_gpu=True but this faiss has no GPU support (or sees no GPU): "
            "install faiss-gpu, or set use_gpu to false/None"
        )
    res = faiss.StandardGpuResources()
    config = faiss.GpuIndexFlatConfig()
    config.useFloat16 = False  # as official: fp16 distances change the assignments
    config.device = 0
    return faiss.GpuIndexFlatL2(res, d, config), res


def _sq_error(x: np.ndarray, centroids: np.ndarray, assignments: np.ndarray) -> float:
    """Sum of squared distances to the assigned centroids, in float64, by chunks."""
    total = 0.0
    step = 1 << 16  # bounds the float64 temporary to a few hundred MB at d=4096
    for start in range(0, x.shape[0], step):
        sl = slice(start, start + step)
        diff = x[sl].astype(np.float64) - centroids[assignments[sl]]
        total += float(np.einsum("ij,ij->", diff, diff))
    return total


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    niter: int = 20,
    seed: int = 0,
    fit_fraction: float = 1.0,
    use_gpu: bool | None = None,
    verbose: bool = False,
) -> ClusterResult:
    """Cluster ``x`` into ``k`` non-empty clusters with faiss k-means.

    Parameters
    ----------
    x : np.ndarray
        Features, shape (N, d), usually from :func:`preprocess_features`.
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
        faiss GPU index; ``None`` uses one if faiss sees a GPU.
    verbose : bool
        Let faiss print its progress.

    Returns
    -------
    ClusterResult
        Every one of the ``k`` clusters is non-empty (see :func:`resplit_empty`);
        ``loss`` is the sum of squared distances of all N samples to their centroid.

    Raises
    ------
    ClusteringError
        On NaN/inf features, ``k`` outside [1, N], ``fit_fraction`` outside (0, 1] or leaving
        fewer fit samples than ``k``, or ``use_gpu=True`` without GPU faiss.
    """
    x = as_features(x)
    n, d = x.shape
    k = check_int(k, "k", 1)
    niter = check_int(niter, "niter", 1)
    seed = check_int(seed, "seed", 0)
    if k > n:
        raise ClusteringError(
            f"k={k} is larger than the number of samples ({n}): lower k or use more data"
        )
    try:
        frac = float(fit_fraction)
    except (TypeError, ValueError):
        frac = float("nan")
    if not 0.0 < frac <= 1.0:
        raise ValueError(
            f"fit_fraction={fit_fraction!r} must be in (0, 1]: use 1.0 to fit on all samples"
        )
    fit_fraction = frac
    rng = np.random.default_rng(seed)
    if fit_fraction < 1.0:
        n_fit = int(round(fit_fraction * n))
        if n_fit < k:
            raise ClusteringError(
                f"fit_fraction={fit_fraction} keeps {n_fit} of {n} samples to fit, fewer "
                f"than k={k}: raise fit_fraction or lower k"
            )
        x_fit = np.ascontiguousarray(x[np.sort(rng.choice(n, n_fit, replace=False))])
    else:
        x_fit = x

    clus = faiss.Clustering(d, k)
    # faiss takes a 32-bit seed; mask so any Python int is accepted deterministically.
    clus.seed = seed & 0x7FFFFFFF
    clus.niter = niter
    # As official: never let faiss subsample the fit points silently (it would above
    # 256 points per centroid), and do not warn about few points per centroid.
    clus.max_points_per_centroid = 10**7
    clus.min_points_per_centroid = 1
    clus.verbose = bool(verbose)
    index, _gpu_res = _make_index(d, use_gpu)  # _gpu_res: must outlive the index
    clus.train(x_fit, index)

    stats = clus.iteration_stats
    faiss_splits = sum(int(stats.at(i).nsplit) for i in range(stats.size()))
    centroids = faiss.vector_to_array(clus.centroids).reshape(k, d).astype(np.float32)

    # The index holds the trained centroids: assign all N samples, fit subset or not.
    _, nearest = index.search(x, 1)
    assignments = nearest[:, 0].astype(np.int64)
    assignments, centroids, ours = resplit_empty(assignments, x, k, centroids, rng)

    loss = _sq_error(x, centroids.astype(np.float64), assignments)
    return ClusterResult(
        assignments=assignments,
        k=k,
        centroids=centroids,
        n_resplit=faiss_splits + ours,
        loss=loss,
        sizes=np.bincount(assignments, minlength=k).astype(np.int64),
    )

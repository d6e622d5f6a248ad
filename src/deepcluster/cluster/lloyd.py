"""faiss's k-means, step for step, with the assignment by GEMM blocks (:mod:`.nearest`).

The initial centroids are faiss's own random sample (``faiss.Clustering`` with zero iterations);
then each iteration assigns every point to its nearest centroid (:func:`~.nearest.nearest`:
fp32 BLAS blocks, or bf16 products with an exact fp32 re-check of near ties, the same
assignments), moves every centroid to the mean of its points, and splits the clusters that
emptied as faiss splits them (a donor drawn with probability proportional to its size less one,
the centroid copied with a ±1/1024 perturbation; numpy's random numbers, not faiss's private
generator), as :mod:`.torch_kmeans` does on GPUs.

Why not faiss itself for large problems: on 2 cores faiss 1.15's search runs below the BLAS
roof (its top-1 reduction and its products of 1,024 centroids at a time), and it has no bf16
path. Same algorithm, so the same assignments up to ties (points at float-rounding distance from
two centroids) and to empty-cluster splits. Deterministic: fixed blocks, sums in a fixed order.
"""

from __future__ import annotations

import faiss
import numpy as np

from deepcluster.cluster.nearest import nearest

__all__ = ["faiss_init", "lloyd_kmeans"]

_EPS = 1.0 / 1024  # faiss's split perturbation


def faiss_init(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """faiss's initial centroids for ``x``, ``k`` and ``seed``: its random sample of ``k`` rows."""
    d = x.shape[1]
    init = faiss.Clustering(d, k)
    init.niter = 0  # only faiss's initial random sample
    init.seed = seed & 0x7FFFFFFF
    init.max_points_per_centroid = 10**7
    init.min_points_per_centroid = 1
    init.train(np.ascontiguousarray(x, dtype=np.float32), faiss.IndexFlatL2(d))
    return faiss.vector_to_array(init.centroids).reshape(k, d).copy()


def cluster_sums(x: np.ndarray, assign: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums (float32, k × d) and sizes (int64) of each cluster's rows: each sum accumulated in
    float32 in row order, as faiss does (a sparse k × N indicator times ``x``)."""
    import scipy.sparse

    counts = np.bincount(assign, minlength=k)
    order = np.argsort(assign, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(counts)])
    member = scipy.sparse.csr_matrix((np.ones(len(x), dtype=np.float32), order, indptr), shape=(k, len(x)))
    return np.asarray(member @ x, dtype=np.float32), counts


def lloyd_kmeans(x: np.ndarray, k: int, *, niter: int, seed: int, bf16: bool | None = None
                 ) -> tuple[np.ndarray, int]:
    """Centroids (k × d, float32) of ``niter`` faiss-style k-means iterations on ``x`` and the
    number of empty-cluster splits made on the way. ``bf16``: see :func:`~.nearest.nearest`
    (``None``: where it pays; the assignments are the same either way)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    d = x.shape[1]
    centroids = faiss_init(x, k, seed)
    rng = np.random.default_rng(seed)
    sign = np.where(np.arange(d) % 2 == 0, 1.0, -1.0).astype(np.float32)
    splits = 0
    for _ in range(niter):
        assign = nearest(x, centroids, bf16=bf16)
        sums, counts = cluster_sums(x, assign, k)
        filled = counts > 0
        centroids[filled] = sums[filled] * (np.float32(1.0) / counts[filled, None].astype(np.float32))
        sizes = counts.astype(np.float64)
        for empty in np.flatnonzero(counts == 0):
            weights = (sizes - 1).clip(min=0)
            donor = int(rng.choice(k, p=weights / weights.sum()))
            centroids[empty] = centroids[donor] * (1 + sign * _EPS)
            centroids[donor] = centroids[donor] * (1 - sign * _EPS)
            sizes[empty] = sizes[donor] // 2
            sizes[donor] -= sizes[empty]
            splits += 1
    return centroids, splits

"""k-means in torch, for GPUs where faiss has no GPU build: faiss's algorithm, step for step.

The initial centroids are faiss's own (its random sample, from ``faiss.Clustering`` with zero
iterations on the CPU); then each iteration assigns every point to its nearest centroid and
moves every centroid to the mean of its points, as faiss does. Clusters that empty during the
iterations are split as faiss splits them (a donor drawn with probability proportional to its
size less one, the centroid copied with a ±1/1024 perturbation), but with numpy's random numbers
rather than faiss's private generator. So on the same data the assignments equal faiss's up to
ties (points at float-rounding distance from two centroids) and to such splits.

The distance blocks are always :data:`_ROWS` rows and the sums are ``index_add_``, which PyTorch
computes deterministically on a GPU under ``torch.use_deterministic_algorithms(True)`` (the
``deterministic`` config key): then two runs give the same centroids bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

from deepcluster.cluster.lloyd import faiss_init

__all__ = ["nearest_centroids", "torch_kmeans"]

_EPS = 1.0 / 1024  # faiss's split perturbation
_ROWS = 65536  # rows per distance block


def nearest_centroids(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (squared L2) of every row of ``x``, computed by blocks."""
    c_sq = (centroids * centroids).sum(1)
    out = torch.empty(len(x), dtype=torch.int64, device=x.device)
    for start in range(0, len(x), _ROWS):
        block = x[start : start + _ROWS]
        dist = c_sq[None, :] - 2.0 * block @ centroids.T  # |x|² is the same for every centroid
        out[start : start + len(block)] = dist.argmin(1)
    return out


def torch_kmeans(x: np.ndarray, k: int, *, niter: int, seed: int,
                 device: torch.device | str = "cpu") -> tuple[np.ndarray, int]:
    """Centroids (k × d, float32) of ``niter`` faiss-style k-means iterations on ``device``, and the
    number of empty-cluster splits made on the way."""
    n, d = x.shape
    centroids = torch.from_numpy(faiss_init(x, k, seed)).to(device)  # faiss's initial sample
    points = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    rng = np.random.default_rng(seed)
    splits = 0
    for _ in range(niter):
        assign = nearest_centroids(points, centroids)
        counts = torch.zeros(k, dtype=torch.int64, device=points.device).index_add_(0, assign, torch.ones_like(assign))
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        filled = counts > 0
        centroids = torch.where(filled[:, None], sums / counts.clamp(min=1)[:, None].to(sums.dtype), centroids)
        sizes = counts.cpu().numpy().astype(np.float64)
        for empty in np.flatnonzero(sizes == 0):
            weights = (sizes - 1).clip(min=0)
            donor = int(rng.choice(k, p=weights / weights.sum()))
            sign = torch.where(torch.arange(d, device=device) % 2 == 0, 1.0, -1.0)
            centroids[empty] = centroids[donor] * (1 + sign * _EPS)
            centroids[donor] = centroids[donor] * (1 - sign * _EPS)
            sizes[empty] = sizes[donor] // 2
            sizes[donor] -= sizes[empty]
            splits += 1
    return centroids.float().cpu().numpy(), splits

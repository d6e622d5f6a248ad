"""The result of one clustering run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ClusterResult:
    """Output of :func:`~deepcluster.cluster.kmeans` or :func:`~deepcluster.cluster.pic`.

    Attributes
    ----------
    assignments : np.ndarray
        int64, shape (N,), cluster of each sample, values in [0, k).
    k : int
        Number of clusters produced (PIC decides its own).
    centroids : np.ndarray or None
        float32, shape (k, d) for k-means; ``None`` for PIC.
    n_resplit : int
        Empty clusters re-split: faiss's own splits during training plus ours after the
        final assignment.
    loss : float
        Final k-means objective (sum of squared distances of all N samples to their
        centroid); ``nan`` for PIC.
    sizes : np.ndarray
        int64, shape (k,), number of samples in each cluster.
    """

    assignments: np.ndarray
    k: int
    centroids: np.ndarray | None
    n_resplit: int
    loss: float
    sizes: np.ndarray

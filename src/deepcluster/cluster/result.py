"""The result of one clustering run."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    search_centroids : np.ndarray or None
        k-means: the fitted centroids every sample was assigned to (nearest) before the empty
        clusters were re-split; ``centroids`` are those after. ``None`` for PIC.
    splits : list of dict
        k-means: the re-splits after the final assignment, in order, as rules on the samples
        (see ``record`` of :func:`~deepcluster.cluster.resplit_empty`). Nearest of
        ``search_centroids``, then these rules, gives ``assignments``.
    """

    assignments: np.ndarray
    k: int
    centroids: np.ndarray | None
    n_resplit: int
    loss: float
    sizes: np.ndarray
    search_centroids: np.ndarray | None = None
    splits: list[dict] = field(default_factory=list)

"""Choose the clustering method by name."""

from __future__ import annotations

import numpy as np

from deepcluster.cluster.faiss_kmeans import kmeans
from deepcluster.cluster.pic_graph import pic
from deepcluster.cluster.result import ClusterResult

METHODS = ("kmeans", "pic")

# Options of one method that the other does not take. The trainer passes one set of
# options whatever the method; those meant for the other method are dropped, anything
# else unknown still fails loudly (TypeError) so typos are not ignored.
_KMEANS_ONLY = frozenset({"niter", "fit_fraction", "use_gpu", "verbose"})
_PIC_ONLY = frozenset({"n_neighbors", "sigma", "alpha", "n_iter"})


def cluster_features(x: np.ndarray, method: str, k: int, **kw: object) -> ClusterResult:
    """Cluster features with ``method`` ("kmeans" or "pic").

    Parameters
    ----------
    x : np.ndarray
        Preprocessed features, shape (N, d).
    method : str
        ``"kmeans"`` or ``"pic"``.
    k : int
        Number of clusters for k-means; ignored by PIC, which finds its own.
    **kw
        Keyword options of :func:`kmeans` or :func:`pic`; options that belong only to the
        other method are ignored.

    Returns
    -------
    ClusterResult
    """
    if method == "kmeans":
        return kmeans(x, k, **{key: v for key, v in kw.items() if key not in _PIC_ONLY})
    if method == "pic":
        return pic(x, **{key: v for key, v in kw.items() if key not in _KMEANS_ONLY})
    raise ValueError(
        f"unknown clustering method {method!r}: use one of {', '.join(METHODS)}"
    )

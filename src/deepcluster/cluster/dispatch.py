"""Choose the clustering method by name."""

from __future__ import annotations

import numpy as np

from deepcluster.cluster.faiss_kmeans import kmeans
from deepcluster.cluster.pic_graph import pic
from deepcluster.cluster.result import ClusterResult
from deepcluster.core import distributed

METHODS = ("kmeans", "pic")

# Options of one method that the other does not take. The trainer passes one set of
# options whatever the method; those meant for the other method are dropped, anything
# else unknown still fails loudly (TypeError) so typos are not ignored.
_KMEANS_ONLY = frozenset({"niter", "fit_fraction", "use_gpu", "verbose", "device", "deterministic", "algorithm"})
_PIC_ONLY = frozenset({"n_neighbors", "sigma", "alpha", "n_iter"})


def cluster_features(x: np.ndarray, method: str, k: int, *, sharded: bool = False, **kw: object) -> ClusterResult:
    """Cluster features with ``method`` ("kmeans" or "pic").

    Parameters
    ----------
    x : np.ndarray
        Preprocessed features, shape (N, d); this process's rows when ``sharded``.
    method : str
        ``"kmeans"`` or ``"pic"``.
    k : int
        Number of clusters for k-means; ignored by PIC, which finds its own.
    sharded : bool
        The rows of all processes of a distributed run are clustered together and every rank
        gets all the assignments (k-means: see :func:`kmeans`; PIC builds its graph on rank 0
        from the gathered rows).
    **kw
        Keyword options of :func:`kmeans` or :func:`pic`; options that belong only to the
        other method are ignored.

    Returns
    -------
    ClusterResult
    """
    if method == "kmeans":
        return kmeans(x, k, sharded=sharded, **{key: v for key, v in kw.items() if key not in _PIC_ONLY})
    if method == "pic":
        options = {key: v for key, v in kw.items() if key not in _KMEANS_ONLY}
        if not sharded:
            return pic(x, **options)
        rows = distributed.gather_rows(x)
        result = pic(rows, **options) if rows is not None else None
        return distributed.broadcast_object(result)
    raise ValueError(
        f"unknown clustering method {method!r}: use one of {', '.join(METHODS)}"
    )

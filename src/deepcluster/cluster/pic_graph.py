"""Power Iteration Clustering on a k-NN graph, as ``PIC`` of the official DeepCluster code.

Caron et al. (2018), appendix, and Caron's thesis §2.4/§4.6: build the ``n_neighbors``-NN
graph with Gaussian weights, run a power iteration with restart, and take as clusters the
basins of attraction of the local maxima of the resulting vector; singletons then join the
cluster of their nearest non-singleton neighbour. The number of clusters is not chosen.
"""

from __future__ import annotations

import faiss
import numpy as np
import scipy.sparse as sp

from deepcluster.cluster._checks import as_features, check_int, l2_normalize_rows
from deepcluster.cluster.result import ClusterResult
from deepcluster.core.errors import ClusteringError


def make_graph(x: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``n_neighbors`` nearest neighbours of every row of ``x``, itself excluded.

    Parameters
    ----------
    x : np.ndarray
        float32 features, shape (N, d), N > n_neighbors.
    n_neighbors : int
        Neighbours per point.

    Returns
    -------
    ids : np.ndarray
        int64, shape (N, n_neighbors), neighbours by increasing distance.
    sq_dists : np.ndarray
        float32, shape (N, n_neighbors), their squared L2 distances.
    """
    n, d = x.shape
    index = faiss.IndexFlatL2(d)
    index.add(x)
    dist, ids = index.search(x, n_neighbors + 1)
    # The official code drops column 0 assuming it is the point itself; with duplicated
    # points faiss may rank a twin first, so drop the point wherever it is (else the last).
    is_self = ids == np.arange(n)[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    keep = ~is_self
    ids = ids[keep].reshape(n, n_neighbors).astype(np.int64)
    dist = np.maximum(dist[keep].reshape(n, n_neighbors), 0.0)  # float rounding can go < 0
    return ids, dist


def make_adjacency(ids: np.ndarray, sq_dists: np.ndarray, sigma: float) -> sp.csr_matrix:
    """Symmetric affinity ``W = A + Aᵀ`` with ``A[i, j] = exp(-‖xi - xj‖² / sigma²)``.

    Not row-normalised, as in the official ``run_pic``.
    """
    n, nn = ids.shape
    rows = np.repeat(np.arange(n), nn)
    weights = np.exp(-sq_dists.astype(np.float64).ravel() / sigma**2)
    a = sp.csr_matrix((weights, (rows, ids.ravel())), shape=(n, n))
    w = (a + a.T).tocsr()
    w.sum_duplicates()
    return w


def power_iteration(w: sp.csr_matrix, alpha: float, n_iter: int) -> np.ndarray:
    """Run ``v ← alpha·Wᵀv + (1-alpha)/N`` then L1-normalise, ``n_iter`` times, from uniform.

    As the official ``run_pic`` (there in float32; float64 here, since ``v`` departs from
    uniform by only ~alpha and that difference is all that matters).
    """
    n = w.shape[0]
    wt = w.T.tocsr()
    v = np.full(n, 1.0 / n)
    for _ in range(n_iter):
        v = alpha * (wt @ v) + (1.0 - alpha) / n
        v /= v.sum()
    return v


def find_maxima_cluster(w: sp.csr_matrix, v: np.ndarray) -> np.ndarray:
    """Cluster the graph by following, from each node, the steepest ascent of ``v``.

    Each node points to the neighbour ``j`` maximising ``W[i, j]·(v[j] - v[i])`` when that is
    positive (else to itself); clusters are the basins of the self-pointing nodes. Ties
    keep the first neighbour in CSR order, as the official loop does.

    Returns
    -------
    np.ndarray
        int64 cluster ids in [0, number of local maxima), numbered by the maxima's index.
    """
    n = w.shape[0]
    rows = np.repeat(np.arange(n), np.diff(w.indptr))
    gain = w.data * (v[w.indices] - v[rows])
    # Sort each row's entries by decreasing gain (stable, so ties keep CSR order).
    order = np.lexsort((-gain, rows))
    pointers = np.arange(n)
    has_edges = np.diff(w.indptr) > 0
    first = order[w.indptr[:-1][has_edges]]
    up = gain[first] > 0
    pointers[np.flatnonzero(has_edges)[up]] = w.indices[first[up]]
    # Pointers strictly increase v, so they form a forest: jump until every node points at
    # its root (log-depth steps instead of the official per-node walk).
    while True:
        nxt = pointers[pointers]
        if np.array_equal(nxt, pointers):
            break
        pointers = nxt
    roots = np.flatnonzero(pointers == np.arange(n))
    root_id = np.full(n, -1, dtype=np.int64)
    root_id[roots] = np.arange(len(roots))
    return root_id[pointers]


def distribute_singletons(assign: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Move each singleton to the cluster of its nearest neighbour not in a singleton.

    Thesis §4.6.2 "Singletons", and the official ``distribute_singletons``: only the
    ``n_neighbors`` graph neighbours are looked at, so a singleton whose neighbours are all
    singletons stays one. Cluster sizes are those before any move.
    """
    sizes = np.bincount(assign)
    singles = np.flatnonzero(sizes[assign] == 1)
    if singles.size == 0:
        return assign
    neighbour_ok = sizes[assign[ids[singles]]] > 1
    has_ok = neighbour_ok.any(axis=1)
    first_ok = neighbour_ok.argmax(axis=1)
    targets = ids[singles, first_ok]
    out = assign.copy()
    out[singles[has_ok]] = assign[targets[has_ok]]
    return out


def pic(
    x: np.ndarray,
    *,
    n_neighbors: int = 5,
    sigma: float = 0.2,
    alpha: float = 0.001,
    n_iter: int = 200,
    seed: int = 0,
) -> ClusterResult:
    """Power Iteration Clustering (PIC) of ``x``; the number of clusters comes out of it.

    Parameters
    ----------
    x : np.ndarray
        Features, shape (N, d); rows are L2-normalised here (a no-op after
        :func:`preprocess_features`), which is the scale ``sigma`` refers to.
    n_neighbors : int
        Neighbours per point in the graph (official: 5).
    sigma : float
        Bandwidth of the Gaussian kernel on squared distances (official: 0.2).
    alpha : float
        Weight of the graph walk against the uniform restart (official: 0.001).
    n_iter : int
        Power iterations (official: 200).
    seed : int
        Unused: PIC is deterministic. Accepted so both methods take the same arguments.

    Returns
    -------
    ClusterResult
        ``k`` is the number of clusters found, ``centroids`` is ``None``, ``loss`` is
        ``nan``, ``n_resplit`` is 0 (no cluster is ever empty).

    Raises
    ------
    ClusteringError
        On NaN/inf features, ``N <= n_neighbors``, or non-positive ``sigma``/``alpha``.
    """
    del seed
    x = l2_normalize_rows(as_features(x))
    n = x.shape[0]
    n_neighbors = check_int(n_neighbors, "n_neighbors", 1)
    n_iter = check_int(n_iter, "n_iter", 1)
    if n <= n_neighbors:
        raise ClusteringError(
            f"PIC needs more samples ({n}) than neighbours per point "
            f"(n_neighbors={n_neighbors}): lower n_neighbors or use more data"
        )
    if not sigma > 0:
        raise ValueError(f"sigma={sigma} must be > 0: the official value is 0.2")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} must be in (0, 1): the official value is 0.001")

    ids, sq_dists = make_graph(x, n_neighbors)
    w = make_adjacency(ids, sq_dists, sigma)
    v = power_iteration(w, alpha, n_iter)
    assign = distribute_singletons(find_maxima_cluster(w, v), ids)
    _, assign = np.unique(assign, return_inverse=True)
    assign = assign.astype(np.int64).ravel()
    sizes = np.bincount(assign).astype(np.int64)
    return ClusterResult(
        assignments=assign,
        k=int(sizes.size),
        centroids=None,
        n_resplit=0,
        loss=float("nan"),
        sizes=sizes,
    )

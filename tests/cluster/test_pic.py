"""PIC: graph construction, maxima basins against a plain loop, blobs."""

import numpy as np
import pytest
import scipy.sparse as sp

from deepcluster.cluster import nmi, pic
from deepcluster.cluster.pic_graph import (
    distribute_singletons,
    find_maxima_cluster,
    make_adjacency,
    make_graph,
)
from deepcluster.core.errors import ClusteringError


def blobs_on_sphere(per, k, d=16, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), per)
    x = centres[labels] + spread / np.sqrt(d) * rng.standard_normal((len(labels), d))
    return x.astype(np.float32), labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pic_separates_blobs(seed):
    x, y = blobs_on_sphere(per=30, k=10, seed=seed)
    r = pic(x)
    assert r.assignments.dtype == np.int64 and r.assignments.shape == (300,)
    assert sorted(np.unique(r.assignments)) == list(range(r.k))
    np.testing.assert_array_equal(r.sizes, np.bincount(r.assignments))
    assert np.isnan(r.loss) and r.centroids is None and r.n_resplit == 0
    assert nmi(y, r.assignments) > 0.9
    # No PIC cluster mixes two blobs (PIC may split a blob, never merge two).
    for c in range(r.k):
        assert len(np.unique(y[r.assignments == c])) == 1


def test_pic_finds_exactly_the_blobs_when_each_is_a_full_neighbourhood():
    x, y = blobs_on_sphere(per=6, k=20, seed=0)  # 6 points = each point + its 5 NN
    r = pic(x, n_neighbors=5)
    assert r.k == 20
    assert nmi(y, r.assignments) == pytest.approx(1.0)


def test_make_graph_excludes_self_even_with_duplicates():
    x = np.array([[0, 0], [0, 0], [0, 0], [1, 0], [5, 5]], dtype=np.float32)
    ids, d2 = make_graph(x, 2)
    assert ids.shape == (5, 2) and (ids != np.arange(5)[:, None]).all()
    assert (d2 >= 0).all() and (np.diff(d2, axis=1) >= 0).all()
    assert set(ids[0]) == {1, 2}


def test_adjacency_is_symmetric_gaussian():
    ids = np.array([[1], [0], [1]])
    d2 = np.array([[0.04], [0.04], [0.16]], dtype=np.float32)
    w = make_adjacency(ids, d2, sigma=0.2).toarray()
    np.testing.assert_allclose(w, w.T)
    assert w[0, 1] == pytest.approx(2 * np.exp(-1.0))  # both directions are in the graph
    assert w[1, 2] == pytest.approx(np.exp(-4.0))


def _maxima_loop(w: sp.csr_matrix, v: np.ndarray) -> np.ndarray:
    """Plain per-node version of the steepest-ascent basins."""
    n = w.shape[0]
    pointer = list(range(n))
    for i in range(n):
        best = 0.0
        for pos in range(w.indptr[i], w.indptr[i + 1]):
            j = w.indices[pos]
            gain = w.data[pos] * (v[j] - v[i])
            if gain > best:
                best, pointer[i] = gain, j
    root_ids = {}
    for i in range(n):
        if pointer[i] == i:
            root_ids[i] = len(root_ids)
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        node = i
        while pointer[node] != node:
            node = pointer[node]
        out[i] = root_ids[node]
    return out


@pytest.mark.parametrize("seed", range(5))
def test_find_maxima_matches_the_plain_loop(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    ids, d2 = make_graph(x, 5)
    w = make_adjacency(ids, d2, sigma=1.0)
    v = rng.random(200)
    np.testing.assert_array_equal(find_maxima_cluster(w, v), _maxima_loop(w, v))


def test_singletons_join_their_nearest_non_singleton_neighbour():
    assign = np.array([0, 0, 1, 2, 3])  # clusters 1, 2, 3 are singletons
    ids = np.array([[1, 2], [0, 2], [3, 0], [4, 2], [3, 2]])
    out = distribute_singletons(assign, ids)
    # 2 -> its 2nd neighbour 0 (the 1st, 3, is a singleton); 3 and 4 only see singletons.
    np.testing.assert_array_equal(out, [0, 0, 0, 2, 3])


def test_pic_errors():
    with pytest.raises(ClusteringError, match="more samples"):
        pic(np.random.default_rng(0).standard_normal((5, 3)), n_neighbors=5)
    x = np.ones((20, 3))
    x[0, 0] = np.inf
    with pytest.raises(ClusteringError, match="NaN/inf"):
        pic(x)

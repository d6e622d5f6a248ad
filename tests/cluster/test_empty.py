"""resplit_empty: Caron's rule for empty clusters."""

import numpy as np
import pytest

from deepcluster.cluster import resplit_empty
from deepcluster.core.errors import ClusteringError


def test_every_cluster_becomes_non_empty_with_identical_points():
    x = np.ones((12, 3), dtype=np.float32)  # no direction separates them
    a = np.zeros(12, dtype=np.int64)
    centroids = np.zeros((6, 3), dtype=np.float32)
    out, cents, n = resplit_empty(a, x, 6, centroids, np.random.default_rng(0))
    assert n == 5
    assert (np.bincount(out, minlength=6) > 0).all()
    np.testing.assert_allclose(cents, 1.0)  # each centroid is the mean of its points
    np.testing.assert_array_equal(a, 0)  # input left untouched


def test_k_equal_n_gives_singletons():
    x = np.random.default_rng(0).standard_normal((7, 2))
    out, _, n = resplit_empty(np.full(7, 3), x, 7, None, 0)
    assert n == 6 and sorted(out.tolist()) == list(range(7))


def test_split_halves_the_donor_along_a_direction():
    # Two well separated groups in one cluster: a random-direction median cut keeps
    # each half's size, whichever direction is drawn.
    x = np.array([[0.0, 0.0]] * 5 + [[10.0, 10.0]] * 5)
    out, cents, n = resplit_empty(np.zeros(10, dtype=int), x, 2, np.zeros((2, 2)), 1)
    assert n == 1
    assert np.bincount(out).tolist() == [5, 5]
    for c in (0, 1):
        np.testing.assert_allclose(cents[c], x[out == c].mean(axis=0))


def test_nothing_to_do_when_no_cluster_is_empty():
    a = np.array([0, 1, 2, 0])
    out, cents, n = resplit_empty(a, np.zeros((4, 2)), 3, None, 0)
    assert n == 0 and cents is None
    np.testing.assert_array_equal(out, a)


def test_singletons_are_never_donors():
    # Cluster 0 is a singleton, cluster 1 holds the rest: only cluster 1 can give points.
    a = np.array([0, 1, 1, 1, 1])
    for seed in range(10):
        out, _, _ = resplit_empty(a, np.arange(10.0).reshape(5, 2), 3, None, seed)
        assert out[0] == 0 and np.bincount(out).tolist() == [1, 2, 2]


def test_resplit_errors():
    with pytest.raises(ClusteringError, match="k=5 is larger than the number of samples"):
        resplit_empty(np.zeros(3, dtype=int), np.zeros((3, 2)), 5, None, 0)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        resplit_empty(np.array([0, 2]), np.zeros((2, 2)), 2, None, 0)

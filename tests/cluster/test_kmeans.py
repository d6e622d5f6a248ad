"""kmeans / cluster_features: recovery of blobs, fit_fraction, non-empty clusters, errors."""

import numpy as np
import pytest

from deepcluster.cluster import ClusterResult, cluster_features, kmeans, nmi
from deepcluster.core.errors import ClusteringError


def blobs(n=600, k=5, d=16, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 3
    labels = np.repeat(np.arange(k), n // k)
    x = centres[labels] + spread * rng.standard_normal((len(labels), d))
    return x.astype(np.float32), labels


def _check_result(r: ClusterResult, n: int, k: int):
    assert r.assignments.dtype == np.int64 and r.assignments.shape == (n,)
    assert r.k == k and r.sizes.shape == (k,) and r.sizes.sum() == n
    assert r.assignments.min() >= 0 and r.assignments.max() < k
    np.testing.assert_array_equal(r.sizes, np.bincount(r.assignments, minlength=k))
    assert (r.sizes > 0).all()


def test_kmeans_recovers_separable_blobs():
    x, y = blobs()
    # faiss seeds k-means with random samples, so one run can put two centroids in one
    # blob (a local minimum); the lowest-loss run of a few seeds is the blobs.
    runs = [kmeans(x, 5, seed=s) for s in range(5)]
    r = min(runs, key=lambda run: run.loss)
    _check_result(r, 600, 5)
    assert nmi(y, r.assignments) > 0.99
    assert r.centroids.shape == (5, 16) and r.centroids.dtype == np.float32
    expected = sum(((x[r.assignments == c] - r.centroids[c]) ** 2).sum() for c in range(5))
    assert r.loss == pytest.approx(expected, rel=1e-4)


def test_kmeans_is_reproducible_with_a_seed():
    x, _ = blobs(k=8, spread=1.0)
    a, b = kmeans(x, 8, seed=3, niter=5), kmeans(x, 8, seed=3, niter=5)
    np.testing.assert_array_equal(a.assignments, b.assignments)


def test_fit_fraction_fits_on_subset_and_assigns_all(monkeypatch):
    import faiss

    fitted_sizes = []
    real_train = faiss.Clustering.train

    def spy(self, x, index, *args):
        fitted_sizes.append(len(x))
        return real_train(self, x, index, *args)

    monkeypatch.setattr(faiss.Clustering, "train", spy)
    x, y = blobs(n=1000)
    r = kmeans(x, 5, seed=1, fit_fraction=0.25)
    assert fitted_sizes == [250]
    _check_result(r, 1000, 5)
    # All points, not only the fitted ones, go to their nearest centroid.
    d2 = ((x[:, None, :] - r.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(r.assignments, d2.argmin(axis=1))
    again = kmeans(x, 5, seed=1, fit_fraction=0.25)
    np.testing.assert_array_equal(r.assignments, again.assignments)


def test_kmeans_never_leaves_an_empty_cluster_with_duplicated_points():
    x = np.repeat(np.eye(3, 4, dtype=np.float32), 10, axis=0)  # 3 distinct points, 30 rows
    r = kmeans(x, 8, seed=0)
    _check_result(r, 30, 8)
    assert r.n_resplit > 0
    r = kmeans(x, 30, seed=0)  # k == N
    _check_result(r, 30, 30)


def test_k_equal_one():
    x, _ = blobs(n=50)
    r = kmeans(x, 1)
    _check_result(r, 50, 1)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(k=700), ClusteringError, r"k=700 is larger than the number of samples \(600\)"),
        (dict(k=0), ValueError, "at least 1"),  # parameters the config validates first: a caller's bug
        (dict(k=5, fit_fraction=0.0), ValueError, r"fit_fraction=0.0 must be in \(0, 1\]"),
        (dict(k=5, fit_fraction=1.5), ValueError, r"fit_fraction=1.5"),
        (dict(k=100, fit_fraction=0.1), ClusteringError, r"keeps 60 of 600 .* fewer than k=100"),
    ],
)
def test_kmeans_argument_errors(kwargs, error, match):
    x, _ = blobs()
    with pytest.raises(error, match=match):
        kmeans(x, **kwargs)


def test_kmeans_nan_features_say_lower_lr():
    x, _ = blobs()
    x[0, 0] = np.nan
    with pytest.raises(ClusteringError, match="NaN/inf.*lower lr"):
        kmeans(x, 5)


def test_use_gpu_without_gpu_faiss_is_an_error():
    import faiss

    if faiss.get_num_gpus() > 0:
        pytest.skip("faiss sees a GPU here")
    with pytest.raises(ValueError, match="use_gpu=True"):
        kmeans(blobs()[0], 5, use_gpu=True)


def test_cluster_features_dispatches_and_drops_the_other_methods_options():
    x, y = blobs(n=300, k=10, spread=0.05)
    r = cluster_features(x, "kmeans", 10, seed=0, niter=10, n_neighbors=5)
    assert r.k == 10
    r = cluster_features(x, "pic", 10, seed=0, niter=10, fit_fraction=0.5, n_neighbors=5)
    assert np.isnan(r.loss) and r.centroids is None
    with pytest.raises(ValueError, match="unknown clustering method 'dbscan'"):
        cluster_features(x, "dbscan", 10)


def test_torch_kmeans_gives_faiss_assignments_when_no_cluster_empties():
    """GPUs without faiss-gpu run faiss's algorithm in torch: checked here on the CPU."""
    from deepcluster.cluster.faiss_kmeans import assign_nearest
    from deepcluster.cluster.torch_kmeans import torch_kmeans

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((10, 16)) * 3
    x = (centers[rng.integers(0, 10, 20000)] + rng.standard_normal((20000, 16))).astype(np.float32)
    ref = kmeans(x, 10, niter=20, seed=3)
    centroids, splits = torch_kmeans(x, 10, niter=20, seed=3, device="cpu")
    assert splits == 0 and ref.n_resplit == 0
    np.testing.assert_allclose(centroids, ref.centroids, atol=1e-5)
    np.testing.assert_array_equal(assign_nearest(x, centroids, device="cpu"), ref.assignments)


def _faiss_centroids(x, k, *, threshold, seed=3, niter=20):
    import faiss

    before = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = threshold
    try:
        clus = faiss.Clustering(x.shape[1], k)
        clus.seed, clus.niter = seed, niter
        clus.max_points_per_centroid, clus.min_points_per_centroid = 10**7, 1
        clus.train(x, faiss.IndexFlatL2(x.shape[1]))
    finally:
        faiss.cvar.distance_compute_blas_threshold = before
    return faiss.vector_to_array(clus.centroids).reshape(k, -1)


def test_small_k_searches_by_direct_distances_larger_k_by_blas_even_in_threads():
    """Below FAISS_DIRECT_BELOW_K faiss's direct search (faster there), from it its BLAS search,
    whatever other fits run at the same time in other threads."""
    from concurrent.futures import ThreadPoolExecutor

    import faiss

    from deepcluster.cluster import faiss_kmeans

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((20000, 32)) + 10).astype(np.float32)  # far from 0: the paths round apart
    small, large = 5, faiss_kmeans.FAISS_DIRECT_BELOW_K
    want = {small: _faiss_centroids(x, small, threshold=2**31 - 1), large: _faiss_centroids(x, large, threshold=20)}
    for k, path in want.items():  # the two paths give different centroids here: the test tells them apart
        assert not np.array_equal(path, _faiss_centroids(x, k, threshold=20 if k == small else 2**31 - 1))
    before = faiss.cvar.distance_compute_blas_threshold
    for k in (small, large):
        np.testing.assert_array_equal(kmeans(x, k, seed=3).search_centroids, want[k])
    with ThreadPoolExecutor(2) as pool:
        for k, got in zip([small, large] * 4, pool.map(lambda k: kmeans(x, k, seed=3), [small, large] * 4)):
            np.testing.assert_array_equal(got.search_centroids, want[k])
    assert faiss.cvar.distance_compute_blas_threshold == before

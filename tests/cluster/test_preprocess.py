"""Preprocessor / preprocess_features: PCA-whitening, L2, validation."""

import numpy as np
import pytest

from deepcluster.cluster import Preprocessor, preprocess_features
from deepcluster.core.errors import ClusteringError


def _correlated(n=500, d=32, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) * np.logspace(0, -1.5, d)[:, None]
    return (rng.standard_normal((n, d)) @ mix + 5.0).astype(np.float32)


def test_whitening_gives_identity_covariance_before_l2():
    x = _correlated()
    y = Preprocessor(pca_dim=16, l2=False).fit_transform(x)
    assert y.shape == (500, 16) and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(16), atol=1e-3)


def test_without_whitening_components_keep_decreasing_variance():
    y = preprocess_features(_correlated(), 8, whiten=False, l2=False)
    var = y.var(axis=0)
    assert np.all(np.diff(var) <= 1e-6 * var[0]) and var[0] > 2 * var[-1]


def test_l2_rows_have_unit_norm():
    x = _correlated()
    for pca_dim in (16, None):
        y = preprocess_features(x, pca_dim)
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)


def test_transform_applies_the_fit_to_new_data():
    x = _correlated(seed=0)
    prep = Preprocessor(pca_dim=8).fit(x[:400])
    y = prep.transform(x[400:])
    assert y.shape == (100, 8)
    np.testing.assert_allclose(prep.transform(x[:400]), prep.fit_transform(x[:400]), atol=1e-6)


def test_no_pca_no_l2_is_identity_as_float32():
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    y = preprocess_features(x, None, l2=False)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x.astype(np.float32))


def test_pca_dim_larger_than_samples_or_dims_is_an_error():
    x = _correlated(n=20, d=32)
    with pytest.raises(ClusteringError, match=r"pca_dim=25 .*samples=20.*dim=32"):
        preprocess_features(x, 25)
    with pytest.raises(ClusteringError, match=r"pca_dim=40"):
        preprocess_features(_correlated(n=100, d=32), 40)


@pytest.mark.parametrize("n,d", [(300, 20), (30, 60)])  # more samples than dims, and fewer
def test_rank_deficient_features_are_a_degenerate_pca(n, d):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((n, 5)) @ rng.standard_normal((5, d))).astype(np.float32)
    assert preprocess_features(x, 5).shape == (n, 5)
    with pytest.raises(ClusteringError, match=r"degenerate.*only 5 dimensions.*lower pca_dim"):
        preprocess_features(x, 6)


def test_constant_features_are_a_degenerate_pca():
    with pytest.raises(ClusteringError, match="degenerate"):
        preprocess_features(np.ones((50, 10), dtype=np.float32), 4)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_features_are_an_error(bad):
    x = _correlated()
    x[3, 2] = bad
    with pytest.raises(ClusteringError, match="NaN/inf.*diverged, lower lr"):
        preprocess_features(x, 8)


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="2-D"):
        preprocess_features(np.zeros(10), None)
    prep = Preprocessor(pca_dim=4)
    with pytest.raises(ValueError, match="before fit"):
        prep.transform(_correlated())
    prep.fit(_correlated())
    with pytest.raises(ValueError, match="fitted on 32"):
        prep.transform(np.ones((5, 7), dtype=np.float32))


def test_truncate_keeps_only_non_degenerate_components():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, 5)) @ rng.normal(size=(5, 12))).astype(np.float32)  # rank 5 in 12-d
    with pytest.raises(ClusteringError, match="degenerate"):
        Preprocessor(pca_dim=8).fit(x)
    pre = Preprocessor(pca_dim=8, on_degenerate="truncate", l2=False)
    y = pre.fit_transform(x)
    assert pre.effective_dim == 5 and y.shape == (500, 5)
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(5), atol=1e-2)


def test_cluster_relu_clusters_the_rectified_features_streamed_or_not():
    from deepcluster.cluster.pipeline import preprocess_and_cluster
    from deepcluster.core.config import TrainConfig

    x = np.random.default_rng(0).normal(size=(400, 12)).astype(np.float32)
    plain = TrainConfig(k=5, pca_dim=6)
    relu = TrainConfig(k=5, pca_dim=6, cluster_relu=True)
    want = preprocess_and_cluster(np.maximum(x, 0), plain, seed=1).result.assignments
    assert (preprocess_and_cluster(x, relu, seed=1).result.assignments == want).all()
    chunks = lambda: iter(np.array_split(x, 3))  # noqa: E731
    assert (preprocess_and_cluster(chunks, relu, seed=1).result.assignments == want).all()
    assert not (preprocess_and_cluster(x, plain, seed=1).result.assignments == want).all()


def test_transform_is_the_float64_formula_bit_for_bit_across_blocks():
    x = _correlated(n=2600, d=40)
    prep = Preprocessor(pca_dim=12).fit(x)
    block = (x.astype(np.float64) - prep._mean) @ prep._matrix
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    expected = (block / np.where(norms > 1e-12, norms, 1.0)).astype(np.float32)
    np.testing.assert_array_equal(prep.transform(x), expected)
    np.testing.assert_array_equal(prep.transform(x[1000:1030]), expected[1000:1030])  # rows alone

"""The nearest-centroid search by GEMM blocks: bf16 with an exact fp32 re-check gives the fp32
answer row for row (near ties, exact ties, zero distances, mixed scales), its error bound holds
for every score, and the k-means built on it (lloyd_kmeans) is the same in bf16 and fp32."""

import numpy as np
import pytest
import torch

from deepcluster.cluster import kmeans
from deepcluster.cluster import nearest as nm
from deepcluster.cluster.faiss_kmeans import _choose_backend, _fit_faiss, assign_nearest
from deepcluster.cluster.lloyd import lloyd_kmeans


def _plain_argmin(x, c):
    """The fp32 argmin as the code before the bf16 path computed it (product, x -2, + ||c||^2)."""
    scores = x @ np.ascontiguousarray(c.T)
    scores *= -2.0
    scores += np.einsum("ij,ij->i", c, c)
    return scores.argmin(axis=1)


def _near_ties(seed=0, n_cent=300, d=64):
    """Rows built to sit on or next to the boundary between two centroids, or on a centroid."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((n_cent, d)).astype(np.float32)
    twins = n_cent // 10  # the last tenth: twins of the first, 1e-3 away
    c[-twins:] = c[:twins] + 1e-3 * rng.standard_normal((twins, d)).astype(np.float32)
    i, j = rng.integers(0, n_cent, 2000), rng.integers(0, n_cent, 2000)
    mid = (c[i] + c[j]) / 2
    rows = [
        mid,  # exactly between two centroids (up to fp32)
        mid + rng.standard_normal(mid.shape).astype(np.float32) * 1e-6,  # ulps away from a tie
        mid + rng.standard_normal(mid.shape).astype(np.float32) * 1e-3,
        c[i],  # on a centroid: distance 0
        c[i] * np.float32(1 + 2**-20),
        (c[i] + rng.standard_normal(mid.shape).astype(np.float32)) * rng.uniform(1e-3, 1e3, (2000, 1)).astype(np.float32),
    ]
    return np.ascontiguousarray(np.concatenate(rows), dtype=np.float32), c


def test_bf16_equals_fp32_on_near_ties():
    x, c = _near_ties()
    stats = {}
    got = nm.nearest_bf16(x, c, stats=stats)
    want = nm.nearest_fp32(x, c)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want, _plain_argmin(x, c))
    assert 0 < stats["rechecked"] < len(x)  # the ties went to fp32, not everything


def test_bf16_equals_fp32_with_duplicated_centroids_first_index_wins():
    x, c = _near_ties(seed=1, n_cent=64, d=32)
    c = np.concatenate([c, c[:16], c[::-1]])  # exact ties: the first index, as argmin
    np.testing.assert_array_equal(nm.nearest_bf16(x, c), nm.nearest_fp32(x, c))
    assert (nm.nearest_fp32(x, c) < 64).all()


@pytest.mark.parametrize("seed", range(3))
def test_bf16_equals_fp32_on_mixtures(seed):
    rng = np.random.default_rng(seed)
    d, k = 48 + 40 * seed, 200 + 300 * seed
    centres = rng.standard_normal((k, d)).astype(np.float32)
    x = centres[rng.integers(0, k, 5000)] + rng.uniform(0.2, 3.0) * rng.standard_normal((5000, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for c in (x[rng.choice(5000, k, replace=False)], centres / np.linalg.norm(centres, axis=1, keepdims=True)):
        np.testing.assert_array_equal(nm.nearest_bf16(x, c), nm.nearest_fp32(x, c))


def test_every_bf16_score_is_within_its_bound():
    """The bound itself, score by score: |bf16 - (fp32 score + t_i)| <= 2^-8 |bf16| + beta_i, and
    every bf16 score is positive (what lets the uint16 view order them)."""
    x, c = _near_ties(seed=2, n_cent=256, d=96)
    cen = nm._Centroids(c)
    m = 1024
    xa_bits = np.full((m, cen.d + 6), nm._ONE_BF16, dtype=np.uint16)
    xa = torch.from_numpy(xa_bits.view(np.int16)).view(torch.bfloat16)
    scores = torch.empty((m, cen.k), dtype=torch.bfloat16)
    c_t2 = np.ascontiguousarray(c.T * np.float32(-2.0))
    c_sq = np.einsum("ij,ij->i", c, c)
    worst = 0.0
    for lo in range(0, len(x), m):
        xb = x[lo : lo + m]
        beta = nm._bf16_scores(xb, cen, xa_bits, xa, scores)
        got = scores[: len(xb)].double().numpy()
        t = nm._bf16_value(xa_bits[: len(xb), cen.d : cen.d + 3]).astype(np.float64).sum(axis=1)
        ref = (xb @ c_t2 + c_sq).astype(np.float64) + t[:, None]
        excess = np.abs(got - ref) - (2.0**-8 * np.abs(got) + beta[:, None])
        worst = max(worst, float((excess / beta[:, None]).max()))
        assert (excess <= 0).all()
        assert (got >= 0).all()
    assert worst > -1.0  # the bound is not vacuous: some score uses part of it


def test_fp32_rows_do_not_depend_on_the_block_or_the_shard():
    x, c = _near_ties(seed=3, n_cent=100, d=40)
    want = nm.nearest_fp32(x, c)
    rows = np.random.default_rng(0).permutation(len(x))[:3000]
    np.testing.assert_array_equal(nm.nearest_fp32(x, c, rows=rows), want[rows])
    np.testing.assert_array_equal(nm.nearest_fp32(x[777:], c, offset=777), want[777:])
    np.testing.assert_array_equal(assign_nearest(x, c), want)


def test_lloyd_kmeans_is_the_same_in_bf16_and_fp32():
    rng = np.random.default_rng(0)
    k, d = 300, 64
    centres = rng.standard_normal((k, d)).astype(np.float32)
    x = centres[rng.integers(0, k, 12000)] + 0.9 * rng.standard_normal((12000, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a, splits_a = lloyd_kmeans(x, k, niter=8, seed=1, bf16=True)
    b, splits_b = lloyd_kmeans(x, k, niter=8, seed=1, bf16=False)
    np.testing.assert_array_equal(a, b)
    assert splits_a == splits_b


def test_lloyd_kmeans_follows_faiss_when_no_cluster_empties():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((10, 16)) * 3
    x = (centers[rng.integers(0, 10, 20000)] + rng.standard_normal((20000, 16))).astype(np.float32)
    ours, splits = lloyd_kmeans(x, 10, niter=20, seed=3)
    theirs, faiss_splits = _fit_faiss(x, 10, niter=20, seed=3, backend=_choose_backend(False, None, False))
    assert splits == faiss_splits == 0
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_array_equal(nm.nearest_fp32(x, ours), nm.nearest_fp32(x, theirs))


def test_kmeans_fits_with_lloyd_for_large_problems_only(monkeypatch):
    from deepcluster.cluster import faiss_kmeans, lloyd

    assert faiss_kmeans._fit_by_lloyd(128_117, 10_000, 256)  # ImageNet size, fit_fraction 0.1
    assert not faiss_kmeans._fit_by_lloyd(60_000, 100, 56)  # a Fashion-MNIST cycle: faiss
    assert not faiss_kmeans._fit_by_lloyd(1_500, 20, 16)  # the golden run: faiss
    calls = []
    real = lloyd.lloyd_kmeans
    monkeypatch.setattr(lloyd, "lloyd_kmeans", lambda *a, **kw: calls.append(len(a[0])) or real(*a, **kw))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 8)).astype(np.float32)
    kmeans(x, 5, niter=3)
    assert calls == []
    monkeypatch.setattr(faiss_kmeans, "LLOYD_MIN_K", 5)
    monkeypatch.setattr(faiss_kmeans, "LLOYD_MIN_WORK", 1000)
    r = kmeans(x, 5, niter=3, fit_fraction=0.5)
    assert calls == [1500] and (r.sizes > 0).all()
    np.testing.assert_array_equal(r.assignments, kmeans(x, 5, niter=3, fit_fraction=0.5).assignments)

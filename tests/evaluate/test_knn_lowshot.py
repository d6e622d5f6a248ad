import numpy as np
import pytest

from deepcluster.core.errors import ConfigError, DataError
from deepcluster.evaluate import knn_accuracies, knn_accuracy, lowshot_accuracy
from deepcluster.evaluate.lowshot import feasible_shots, sample_per_class

from .conftest import blobs


def test_knn_several_k_known_answers():
    x, y = blobs(1000, 16, 4, 0.3, 4)
    assert knn_accuracies(x[:800], y[:800], x[800:], y[800:]) == {10: 1.0, 20: 1.0, 200: 1.0}
    # 3 training points of class 0 close to the query, 5 of class 1 farther: k=3 → 0, k=8 → 1
    xtr = np.array([[1, 0.05], [1, -0.05], [1, 0.1]] + [[0.7, 0.7]] * 5, dtype=np.float32)
    ytr = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    q = np.array([[1, 0]], dtype=np.float32)
    assert knn_accuracies(xtr, ytr, q, np.array([0]), ks=[8, 3, 3]) == {3: 1.0, 8: 0.0}
    assert knn_accuracies(xtr, ytr, q, np.array([1]), ks=(3, 8, 500)) == {3: 0.0, 8: 1.0, 500: 1.0}


def test_knn_several_k_agree_with_single_k():
    x, y = blobs(600, 8, 5, 4.0, 5)
    multi = knn_accuracies(x[:400], y[:400], x[400:], y[400:], ks=(1, 7, 50))
    for k, acc in multi.items():
        assert acc == knn_accuracy(x[:400], y[:400], x[400:], y[400:], k=k)


def test_knn_errors():
    x, y = blobs(50, 4, 2, 1.0, 6)
    with pytest.raises(ConfigError):
        knn_accuracies(x, y, x, y, ks=[0])
    with pytest.raises(DataError):
        knn_accuracies(x, y, x[:, :2], y)


def test_lowshot_separable_is_perfect_with_the_expected_shape():
    x, y = blobs(2000, 12, 4, 0.3, 7)
    for classifier in ("logreg", "ncm"):
        res = lowshot_accuracy(x[:1500], y[:1500], x[1500:], y[1500:], shots=(1, 5, 10), repeats=3,
                               classifier=classifier)
        assert list(res) == [1, 5, 10]
        for n, r in res.items():
            assert r.n == n and len(r.accs) == 3 and r.mean == 1.0 and r.std == 0.0


def test_lowshot_is_seeded_and_skips_impossible_n():
    x, y = blobs(400, 6, 3, 4.0, 8)
    ytr = np.repeat([0, 1, 2], [150, 110, 40])  # the smallest class has 40 training images
    a = lowshot_accuracy(x[:300], ytr, x[300:], y[300:], shots=(1, 5, 50), repeats=2, seed=1)
    b = lowshot_accuracy(x[:300], ytr, x[300:], y[300:], shots=(1, 5, 50), repeats=2, seed=1)
    c = lowshot_accuracy(x[:300], ytr, x[300:], y[300:], shots=(1, 5, 50), repeats=2, seed=2)
    assert a == b and list(a) == [1, 5] and a != c
    assert feasible_shots(np.array([0, 0, 1, 1, 1]), [1, 2, 3]) == [1, 2]


def test_sample_per_class():
    y = np.array([0] * 10 + [1] * 3 + [2] * 7)
    idx = sample_per_class(y, 3, np.random.default_rng(0))
    assert len(idx) == 9 and all((y[idx] == c).sum() == 3 for c in (0, 1, 2))
    with pytest.raises(DataError):
        sample_per_class(y, 4, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        lowshot_accuracy(np.zeros((20, 2)), y, np.zeros((20, 2)), y, repeats=0)

import numpy as np

from deepcluster.evaluate import knn_accuracy, linear_probe


def blobs(n, d, classes, spread, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d)) * 5
    y = rng.integers(0, classes, n)
    return (centers[y] + rng.normal(size=(n, d)) * spread).astype(np.float32), y


def test_linear_probe_separable_reaches_100():
    x, y = blobs(2000, 20, 5, 0.5, 0)
    r = linear_probe(x[:1500], y[:1500], x[1500:], y[1500:])
    assert r.test_acc > 0.99 and r.train_acc > 0.99 and r.dim == 20


def test_linear_probe_random_labels_is_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 10)).astype(np.float32)
    y = rng.integers(0, 4, 3000)
    r = linear_probe(x[:2000], y[:2000], x[2000:], y[2000:])
    assert 0.18 < r.test_acc < 0.33


def test_linear_probe_is_deterministic():
    x, y = blobs(600, 8, 3, 3.0, 2)
    a = linear_probe(x[:400], y[:400], x[400:], y[400:], seed=3)
    b = linear_probe(x[:400], y[:400], x[400:], y[400:], seed=3)
    assert a == b


def test_knn_known_answers():
    x, y = blobs(1000, 16, 4, 0.3, 4)
    assert knn_accuracy(x[:800], y[:800], x[800:], y[800:], k=20) == 1.0
    # a query identical to a training point with k=1 takes that point's label
    xtr = np.eye(3, dtype=np.float32)
    assert knn_accuracy(xtr, np.array([0, 1, 2]), xtr[[2, 0]], np.array([2, 0]), k=1) == 1.0
    assert knn_accuracy(xtr, np.array([0, 1, 2]), xtr[[2, 0]], np.array([1, 1]), k=1) == 0.0

import numpy as np
import pytest

from deepcluster.core.errors import DataError
from deepcluster.evaluate import sgd_linear_probe

from .conftest import blobs


def test_separable_blobs_reach_100_percent():
    x, y = blobs(3000, 20, 5, 0.5, 0)
    r = sgd_linear_probe((x[:2000], y[:2000]), (x[2000:], y[2000:]), epochs=5)
    assert r.last_acc > 0.99 and r.train_acc > 0.99
    assert r.dim == 20 and r.epochs == 5 and len(r.curve) == 5 and len(r.train_loss) == 5


def test_random_labels_are_at_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 10)).astype(np.float32)
    y = rng.integers(0, 4, 4000)
    r = sgd_linear_probe((x[:3000], y[:3000]), (x[3000:], y[3000:]), epochs=5)
    assert 0.18 < r.last_acc < 0.33


def test_best_is_the_maximum_of_the_curve_and_at_least_last():
    x, y = blobs(1500, 30, 6, 6.0, 2)  # overlapping: the curve moves between epochs
    r = sgd_linear_probe((x[:1000], y[:1000]), (x[1000:], y[1000:]), epochs=8, lr=0.1)
    assert r.best_acc >= r.last_acc
    assert r.best_acc == max(r.curve) and r.curve[r.best_epoch - 1] == r.best_acc
    assert r.curve.index(r.best_acc) == r.best_epoch - 1  # earliest epoch on a tie
    assert r.last_acc == r.curve[-1]


def test_deterministic_given_seed_and_inputs_untouched():
    x, y = blobs(800, 8, 3, 3.0, 3)
    before = x.copy()
    a = sgd_linear_probe((x[:600], y[:600]), (x[600:], y[600:]), epochs=3, seed=4)
    b = sgd_linear_probe((x[:600], y[:600]), (x[600:], y[600:]), epochs=3, seed=4)
    c = sgd_linear_probe((x[:600], y[:600]), (x[600:], y[600:]), epochs=3, seed=5)
    assert a == b and a.train_loss != c.train_loss
    assert np.array_equal(x, before)


def test_constant_dimension_does_not_blow_up():
    x, y = blobs(1000, 5, 3, 0.5, 5)
    x = np.hstack([x, np.zeros((1000, 1), np.float32)])
    x[800:, -1] = 1e3  # constant (0) on train, large on test: must be ignored, not divided by ~0
    r = sgd_linear_probe((x[:800], y[:800]), (x[800:], y[800:]), epochs=3)
    assert r.last_acc > 0.95


def test_bad_shapes_are_user_errors():
    x, y = blobs(100, 4, 2, 1.0, 6)
    with pytest.raises(DataError):
        sgd_linear_probe((x, y[:50]), (x, y))
    with pytest.raises(DataError):
        sgd_linear_probe((x, y), (x[:, :3], y))

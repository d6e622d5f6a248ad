import numpy as np
import torch

from deepcluster.data import dataset_stats, load_dataset


def test_digits_splits_and_shape():
    train = load_dataset("digits", root="/ignored")
    test = load_dataset("digits", split="test")
    assert (len(train), len(test)) == (1500, 297)
    x = train.images_tensor()
    assert x.dtype == torch.uint8 and x.shape == (1500, 1, 28, 28)
    assert int(x.max()) == 255 and int(x.min()) == 0
    assert train.labels.dtype == np.int64 and sorted(set(train.labels.tolist())) == list(range(10))
    assert train.classes == [str(d) for d in range(10)] and train.channels == 1
    # The split is fixed: reloading gives the same order, and the stats constant matches it.
    assert np.array_equal(load_dataset("digits").labels, train.labels)
    mean, std = dataset_stats("digits")
    assert abs(x.float().div(255).mean().item() - mean[0]) < 1e-3
    assert abs(x.float().div(255).std().item() - std[0]) < 1e-3


def test_digits_native_size_and_limit():
    from sklearn.datasets import load_digits

    native = load_dataset("digits", image_size=8, split="test")
    assert native[0].shape == (1, 8, 8)
    raw = {bytes(np.rint(im * 255 / 16).astype(np.uint8)) for im in load_digits().images}
    assert all(bytes(native[i][0].numpy()) in raw for i in range(len(native)))
    small = load_dataset("digits", limit=50, seed=2)
    assert len(small) == 50 and small[0].shape == (1, 28, 28)

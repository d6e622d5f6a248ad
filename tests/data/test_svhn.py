import numpy as np
import pytest
import scipy.io
import torch

from deepcluster.core.errors import DataError
from deepcluster.data import load_dataset

from .formats import make_svhn_file


def test_svhn_loads_and_maps_ten_to_zero(tmp_path):
    x, y = make_svhn_file(tmp_path, "train", n=12)
    make_svhn_file(tmp_path, "test", n=3, seed=1)
    ds = load_dataset("svhn", tmp_path)
    assert len(ds) == 12 and ds.channels == 3 and ds.classes == [str(d) for d in range(10)]
    imgs = ds.images_tensor()
    assert imgs.dtype == torch.uint8 and imgs.shape == (12, 3, 32, 32)
    # X is (H, W, C, N): sample 5, green channel.
    assert np.array_equal(imgs[5, 1].numpy(), x[:, :, 1, 5])
    expected = y.reshape(-1).astype(np.int64)
    expected[expected == 10] = 0
    assert ds.labels.tolist() == expected.tolist() and 0 in ds.labels.tolist() and ds.labels.max() <= 9
    assert len(load_dataset("svhn", tmp_path, split="test")) == 3
    small = load_dataset("svhn", tmp_path, image_size=8, limit=4)
    assert small.images_tensor().shape == (4, 3, 8, 8)


def test_svhn_missing_file(tmp_path):
    make_svhn_file(tmp_path, "train")
    with pytest.raises(DataError, match=f"test_32x32.mat is missing from {tmp_path}"):
        load_dataset("svhn", tmp_path, split="test")


def test_svhn_unreadable_mat(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"garbage" * 50)
    with pytest.raises(DataError, match="train_32x32.mat in .* not a readable .mat file"):
        load_dataset("svhn", tmp_path)


def test_svhn_truncated_mat(tmp_path):
    make_svhn_file(tmp_path, "train", n=20)
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(DataError, match="train_32x32.mat"):
        load_dataset("svhn", tmp_path)


def test_svhn_missing_key(tmp_path):
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(DataError, match="train_32x32.mat in .* no variable y"):
        load_dataset("svhn", tmp_path)


def test_svhn_count_and_shape_mismatch(tmp_path):
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))})
    with pytest.raises(DataError, match="2 images but 3 labels"):
        load_dataset("svhn", tmp_path)
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((28, 28, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(DataError, match=r"expected \(32, 32, 3, N\)"):
        load_dataset("svhn", tmp_path)

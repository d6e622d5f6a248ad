import os
import pickle

import numpy as np
import pytest
import torch

from deepcluster.core.errors import DataError
from deepcluster.data import load_dataset

from .formats import CIFAR_NAMES, make_cifar_dataset


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_from_parent_and_folder(tmp_path, protocol):
    folder, written = make_cifar_dataset(tmp_path, per_batch=4, protocol=protocol)
    for root in (tmp_path, folder):
        train = load_dataset("cifar10", root)
        assert len(train) == 20 and train.channels == 3 and train.classes == CIFAR_NAMES
        x = train.images_tensor()
        assert x.dtype == torch.uint8 and x.shape == (20, 3, 32, 32)
        data, labels = written["data_batch_1"]
        # Rows are 1024 red, then 1024 green, then 1024 blue values, each row-major 32×32.
        assert np.array_equal(x[0, 1].numpy().reshape(-1), data[0, 1024:2048])
        assert train.labels[:4].tolist() == labels
        assert train.labels.dtype == np.int64
    test = load_dataset("cifar10", tmp_path, split="test")
    assert len(test) == 4 and test.labels.tolist() == written["test_batch"][1]


def test_cifar_str_keys_and_limit_resize(tmp_path):
    make_cifar_dataset(tmp_path, bytes_keys=False)
    ds = load_dataset("cifar10", tmp_path, limit=5, image_size=16, seed=1)
    assert ds.images_tensor().shape == (5, 3, 16, 16) and ds.classes == CIFAR_NAMES


def test_cifar_meta_optional(tmp_path):
    folder, _ = make_cifar_dataset(tmp_path)
    (folder / "batches.meta").unlink()
    assert load_dataset("cifar10", tmp_path).classes == CIFAR_NAMES


def test_cifar_missing_batch(tmp_path):
    folder, _ = make_cifar_dataset(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=f"data_batch_3 is missing from {folder}"):
        load_dataset("cifar10", tmp_path)


def test_cifar_empty_root(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 batches in"):
        load_dataset("cifar10", tmp_path)


def test_cifar_archive_not_extracted(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"x")
    with pytest.raises(DataError, match="tar xzf"):
        load_dataset("cifar10", tmp_path)


def test_cifar_truncated_pickle(tmp_path):
    folder, _ = make_cifar_dataset(tmp_path, per_batch=50)
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="test_batch in .* corrupt or truncated"):
        load_dataset("cifar10", tmp_path, split="test")


def test_cifar_garbage_pickle(tmp_path):
    folder, _ = make_cifar_dataset(tmp_path)
    (folder / "data_batch_2").write_bytes(os.urandom(64))
    with pytest.raises(DataError, match="data_batch_2 in .* corrupt or truncated"):
        load_dataset("cifar10", tmp_path)


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_cifar_refuses_foreign_objects(tmp_path):
    folder, _ = make_cifar_dataset(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(tmp_path / "pwned"), b"labels": []}, f)
    with pytest.raises(DataError, match="test_batch .*unexpected object"):
        load_dataset("cifar10", tmp_path, split="test")
    assert not (tmp_path / "pwned").exists()  # its code never ran


def test_cifar_bad_contents(tmp_path):
    folder, _ = make_cifar_dataset(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"test_batch .*expected uint8 \(N, 3072\)"):
        load_dataset("cifar10", tmp_path, split="test")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, f)
    with pytest.raises(DataError, match="test_batch .*2 images but 1 labels"):
        load_dataset("cifar10", tmp_path, split="test")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"labels": [0]}, f)
    with pytest.raises(DataError, match="test_batch .*no data entry"):
        load_dataset("cifar10", tmp_path, split="test")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(DataError, match="test_batch .*not a CIFAR-10 dict"):
        load_dataset("cifar10", tmp_path, split="test")

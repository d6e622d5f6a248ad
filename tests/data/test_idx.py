import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster.core.errors import DataError
from deepcluster.data import DEFAULT_ROOTS, TensorImageDataset, load_dataset, registry

from .formats import idx_bytes, make_idx_dataset, write_idx_split


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_idx_loads_both_splits(tmp_path, gz, name):
    written = make_idx_dataset(tmp_path, n_train=20, n_test=8, gz=gz)
    train = load_dataset(name, tmp_path)
    test = load_dataset(name, tmp_path, split="test")
    assert isinstance(train, TensorImageDataset)
    assert (len(train), len(test)) == (20, 8)
    assert train.name == name and train.channels == 1 and train.paths is None
    assert len(train.classes) == 10
    x = train.images_tensor()
    assert x.dtype == torch.uint8 and x.shape == (20, 1, 28, 28)
    assert np.array_equal(x[:, 0].numpy(), written["train"][0])
    assert train.labels.dtype == np.int64 and np.array_equal(train.labels, written["train"][1])
    assert torch.equal(train[3], x[3]) and train[3].shape == (1, 28, 28)
    assert np.array_equal(test.images_tensor()[:, 0].numpy(), written["t10k"][0])


def test_idx_prefers_gz_but_accepts_raw_mix(tmp_path):
    images = np.full((3, 28, 28), 7, np.uint8)
    labels = np.array([1, 2, 3], np.uint8)
    write_idx_split(tmp_path, "train", images, labels, gz=False)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(idx_bytes(images, 0x803))
    ds = load_dataset("mnist", tmp_path)
    assert ds.labels.tolist() == [1, 2, 3] and int(ds[0].max()) == 7


def test_idx_limit_image_size_subset(tmp_path):
    make_idx_dataset(tmp_path, n_train=30)
    full = load_dataset("fashion-mnist", tmp_path)
    a = load_dataset("fashion-mnist", tmp_path, limit=10, seed=3, image_size=16)
    b = load_dataset("fashion-mnist", tmp_path, limit=10, seed=3, image_size=16)
    assert len(a) == 10 and a.images_tensor().shape == (10, 1, 16, 16)
    assert a.images_tensor().dtype == torch.uint8
    assert torch.equal(a.images_tensor(), b.images_tensor()) and np.array_equal(a.labels, b.labels)
    c = load_dataset("fashion-mnist", tmp_path, limit=10, seed=4)
    assert c[0].shape == (1, 28, 28)
    # The limited subset must be made of real samples of the full set.
    full_rows = {bytes(full[i].numpy()) for i in range(len(full))}
    assert all(bytes(c[i].numpy()) in full_rows for i in range(len(c)))
    sub = full.subset([4, 1])
    assert len(sub) == 2 and torch.equal(sub[0], full[4]) and sub.labels.tolist() == [full.labels[4], full.labels[1]]
    assert sub.classes == full.classes and sub.name == full.name
    mask = np.zeros(len(full), bool)
    mask[[0, 2]] = True
    assert full.subset(mask).labels.tolist() == full.labels[[0, 2]].tolist()
    assert len(load_dataset("mnist", tmp_path, limit=1000)) == 30


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        load_dataset("mnist", tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)


def test_default_root_missing_mentions_apt(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.DEFAULT_ROOTS, "fashion-mnist", str(tmp_path / "absent"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as e:
        load_dataset("fashion-mnist")
    assert "data.root" in str(e.value)


def test_no_default_root(tmp_path):
    with pytest.raises(DataError, match="data.root"):
        load_dataset("mnist")


@pytest.mark.parametrize("victim", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"])
def test_missing_file_is_named(tmp_path, victim):
    make_idx_dataset(tmp_path)
    (tmp_path / f"{victim}.gz").unlink()
    with pytest.raises(DataError, match=victim) as e:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path) in str(e.value)
    # The other split is untouched.
    assert len(load_dataset("mnist", tmp_path, split="test")) == 8


def test_truncated_gz(tmp_path):
    make_idx_dataset(tmp_path, n_train=200)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz .*(truncated|gzip)"):
        load_dataset("mnist", tmp_path)


def test_not_gzip(tmp_path):
    make_idx_dataset(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz .*not a valid gzip"):
        load_dataset("mnist", tmp_path)


def test_corrupt_deflate_stream(tmp_path):
    make_idx_dataset(tmp_path, n_train=50)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[20:60] = b"\xff" * 40
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz"):
        load_dataset("mnist", tmp_path)


def test_bad_magic(tmp_path):
    make_idx_dataset(tmp_path, gz=False)
    # Swap images and labels: each now has the other's magic number.
    img, lab = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    a, b = img.read_bytes(), lab.read_bytes()
    img.write_bytes(b)
    lab.write_bytes(a)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte in .* magic number 0x00000801, expected 0x00000803"):
        load_dataset("mnist", tmp_path)


def test_truncated_raw_pixels(tmp_path):
    make_idx_dataset(tmp_path, n_train=20, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[: 16 + 1000])
    with pytest.raises(DataError, match=r"truncated \(expected 15680 bytes of pixels, found 1000\)") as e:
        load_dataset("fashion-mnist", tmp_path)
    assert "train-images-idx3-ubyte" in str(e.value) and "Fashion-MNIST" in str(e.value)


def test_count_mismatch(tmp_path):
    make_idx_dataset(tmp_path, n_train=20)
    write_idx_split(tmp_path / "other", "train", np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.uint8))
    (tmp_path / "other" / "train-labels-idx1-ubyte.gz").replace(tmp_path / "train-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="20 images but train-labels-idx1-ubyte.gz holds 5 labels"):
        load_dataset("mnist", tmp_path)


def test_label_out_of_range(tmp_path):
    write_idx_split(tmp_path, "train", np.zeros((2, 28, 28), np.uint8), np.array([0, 12], np.uint8))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz .* label 12"):
        load_dataset("mnist", tmp_path)


def test_real_fashion_mnist():
    root = Path(DEFAULT_ROOTS["fashion-mnist"])
    if not (root / "train-images-idx3-ubyte.gz").exists() and not (root / "train-images-idx3-ubyte").exists():
        pytest.skip(f"Fashion-MNIST not installed in {root}")
    train = load_dataset("fashion-mnist")
    test = load_dataset("fashion-mnist", split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train[0].shape == (1, 28, 28) and train[0].dtype == torch.uint8
    assert len(train.classes) == 10 and sorted(np.unique(train.labels).tolist()) == list(range(10))
    assert np.bincount(test.labels).tolist() == [1000] * 10

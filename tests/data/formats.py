"""Writers of tiny datasets in the real on-disk formats, for the loader tests."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """IDX encoding of a uint8 array: big-endian magic, one big-endian int32 per dimension."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_split(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    """Write ``{prefix}-images-idx3-ubyte[.gz]`` and ``{prefix}-labels-idx1-ubyte[.gz]``."""
    root.mkdir(parents=True, exist_ok=True)
    for stem, data in (
        (f"{prefix}-images-idx3-ubyte", idx_bytes(images, 0x00000803)),
        (f"{prefix}-labels-idx1-ubyte", idx_bytes(labels, 0x00000801)),
    ):
        if gz:
            with gzip.open(root / f"{stem}.gz", "wb") as f:
                f.write(data)
        else:
            (root / stem).write_bytes(data)


def make_idx_dataset(root: Path, n_train: int = 20, n_test: int = 8, gz: bool = True, seed: int = 0):
    """Random 28×28 IDX train/test splits in ``root``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx_split(root, prefix, images, labels, gz=gz)
        out[prefix] = (images, labels)
    return out


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar_dataset(parent: Path, per_batch: int = 4, bytes_keys: bool = True, protocol: int = 2, seed: int = 0):
    """Write ``parent/cifar-10-batches-py`` like the official archive; returns {batch: (data, labels)}."""
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def key(k: str):
        return k.encode() if bytes_keys else k

    written = {}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({key("batch_label"): key(name), key("labels"): labels, key("data"): data}, f, protocol=protocol)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        names = [n.encode() for n in CIFAR_NAMES] if bytes_keys else CIFAR_NAMES
        pickle.dump({key("label_names"): names, key("num_cases_per_batch"): per_batch}, f, protocol=protocol)
    return folder, written


def make_svhn_file(root: Path, split: str = "train", n: int = 6, seed: int = 0):
    """Write ``{split}_32x32.mat`` with X (32, 32, 3, N) uint8 and y (N, 1) in 1..10."""
    import scipy.io

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = ((np.arange(n) % 10) + 1).astype(np.uint8).reshape(n, 1)
    scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
    return x, y


def write_png(path: Path, size=(10, 12), mode: str = "RGB", value: int = 128) -> Path:
    """A solid-colour PNG of ``size`` (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, value // 2, 255 - value)
    Image.new(mode, size, colour).save(path)
    return path


def make_image_folder(root: Path, per_class: dict[str, int] | None = None) -> Path:
    """ImageFolder tree ``root/<class>/<k>.png``; class ``b`` is grayscale to test RGB conversion."""
    per_class = per_class or {"cat": 3, "dog": 2, "b_gray": 2}
    for cls, n in per_class.items():
        for k in range(n):
            write_png(root / cls / f"{k}.png", mode="L" if "gray" in cls else "RGB", value=20 * k + 10)
    return root

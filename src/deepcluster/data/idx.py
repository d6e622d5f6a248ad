"""MNIST and Fashion-MNIST in the IDX format (``.gz`` or raw)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from deepcluster.core.errors import DataError
from deepcluster.data.base import TensorImageDataset

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MNIST_CLASSES = [str(d) for d in range(10)]

_PRETTY = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST"}
_PREFIX = {"train": "train", "test": "t10k"}


def _refetch_hint(name: str) -> str:
    return (
        f"re-download the four IDX files of {_PRETTY[name]} "
        "or point --set data.root=DIR at a good copy"
    )


def find_idx_file(root: Path, stem: str, name: str) -> Path:
    """Return ``root/stem.gz`` or else ``root/stem``; DataError naming both when neither exists."""
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{stem}.gz (or uncompressed {stem}) is missing from {root}: "
        f"put the {_PRETTY[name]} IDX files there or {_refetch_hint(name)}"
    )


def read_idx(path: Path, expected_magic: int, name: str = "mnist") -> np.ndarray:
    """Read one uint8 IDX file (gzip-compressed when its name ends in ``.gz``).

    Parameters
    ----------
    path : Path
        The file.
    expected_magic : int
        ``0x00000803`` for image files, ``0x00000801`` for label files.
    name : str
        Dataset name, used in error messages.

    Returns
    -------
    numpy.ndarray
        uint8 array with the shape stored in the header.

    Raises
    ------
    DataError
        If the file is unreadable, corrupt, truncated or has the wrong magic number.
    """
    where = f"{path.name} in {path.parent}"
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            return _read_idx_body(f, path, where, expected_magic, name)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(
            f"{where} is not a valid gzip file or is truncated ({exc}): {_refetch_hint(name)}"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read {where} ({exc.strerror or exc}): check its permissions or {_refetch_hint(name)}") from None


#: Bytes decompressed (or read) at a time into the array (bounds the temporary buffer).
_READ_CHUNK = 1 << 20
#: No deflate stream inflates more than about 1,032 times: a header that asks for more than this
#: many times the file's size is a damaged one (caught before allocating what it asks for).
_MAX_INFLATION = 1100


def _read_idx_body(f, path: Path, where: str, expected_magic: int, name: str) -> np.ndarray:
    """The array of an open IDX file, read straight into it a chunk at a time (the file's bytes
    are never held all at once next to the array)."""
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{where} is truncated ({len(head)} bytes, no IDX header): {_refetch_hint(name)}")
    magic = int.from_bytes(head, "big")
    if magic != expected_magic:
        kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
        raise DataError(
            f"{where} has magic number 0x{magic:08x}, expected 0x{expected_magic:08x} for IDX {kind} "
            f"(wrong or corrupt file): {_refetch_hint(name)}"
        )
    ndim = head[3]
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{where} is truncated (header cut after {4 + len(dims)} bytes): {_refetch_hint(name)}")
    shape = tuple(int.from_bytes(dims[4 * k : 4 + 4 * k], "big") for k in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    limit = path.stat().st_size * (_MAX_INFLATION if path.suffix == ".gz" else 1)
    out = np.empty(min(expected, limit), dtype=np.uint8)
    view = memoryview(out)
    found = 0
    while found < len(out):
        got = f.readinto(view[found : found + _READ_CHUNK])
        if not got:
            break
        found += got
    while chunk := f.read(_READ_CHUNK):  # anything past the pixels (or past what fitted): counted only
        found += len(chunk)
    if found != expected:
        what = "pixels" if expected_magic == IMAGES_MAGIC else "labels"
        state = "truncated" if found < expected else "longer than its header says"
        raise DataError(
            f"{where} is {state} (expected {expected} bytes of {what}, found {found}): {_refetch_hint(name)}"
        )
    return out.reshape(shape)


def load_idx(name: str, root: Path, split: str) -> TensorImageDataset:
    """Load the ``split`` of MNIST or Fashion-MNIST from IDX files in ``root``."""
    prefix = _PREFIX[split]
    images_path = find_idx_file(root, f"{prefix}-images-idx3-ubyte", name)
    labels_path = find_idx_file(root, f"{prefix}-labels-idx1-ubyte", name)
    images = read_idx(images_path, IMAGES_MAGIC, name)
    labels = read_idx(labels_path, LABELS_MAGIC, name)
    if images.ndim != 3:
        raise DataError(
            f"{images_path.name} in {root} holds an array of shape {images.shape}, expected N×H×W: "
            f"{_refetch_hint(name)}"
        )
    if labels.ndim != 1:
        raise DataError(
            f"{labels_path.name} in {root} holds an array of shape {labels.shape}, expected N labels: "
            f"{_refetch_hint(name)}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path.name} holds {len(images)} images but {labels_path.name} holds {len(labels)} labels "
            f"(in {root}; files from different splits or versions?): {_refetch_hint(name)}"
        )
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
    if len(labels) and int(labels.max()) >= len(classes):
        raise DataError(
            f"{labels_path.name} in {root} contains label {int(labels.max())}, but {_PRETTY[name]} has "
            f"{len(classes)} classes (0..{len(classes) - 1}): {_refetch_hint(name)}"
        )
    return TensorImageDataset(
        name,
        torch.from_numpy(images).unsqueeze(1),
        labels.astype(np.int64),
        classes,
    )

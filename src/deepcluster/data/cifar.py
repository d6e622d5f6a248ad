"""CIFAR-10 in its python-pickle layout (``cifar-10-batches-py``)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from deepcluster.core.errors import DataError
from deepcluster.data.base import TensorImageDataset

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{k}" for k in range(1, 6)]
TEST_BATCHES = ["test_batch"]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]
_HINT = (
    "re-download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
    "extract it, and point --set data.root=DIR at the cifar-10-batches-py folder"
)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that only builds the numpy arrays and bytes a CIFAR batch contains.

    A pickle can run arbitrary code when loaded; refusing every other global makes a
    tampered file fail with a clear error instead.
    """

    def find_class(self, module: str, name: str):
        if module == "_codecs" and name == "encode":
            import codecs

            return codecs.encode
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                      "numpy._core.numeric"):
            if module == "numpy" and name in ("ndarray", "dtype"):
                return getattr(np, name)
            if name in ("_reconstruct", "scalar"):
                return _numpy_core("multiarray", name)
            if name == "_frombuffer":
                return _numpy_core("numeric", name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} (not a CIFAR-10 batch)")


def _numpy_core(submodule: str, name: str):
    # numpy 2 moved numpy.core to numpy._core; old pickles (like CIFAR's) name the former.
    import importlib

    try:
        mod = importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy < 2
        mod = importlib.import_module(f"numpy.core.{submodule}")
    return getattr(mod, name)


def resolve_cifar_dir(root: Path) -> Path:
    """Accept ``root`` being the batches folder itself or its parent."""
    if (root / FOLDER).is_dir():
        return root / FOLDER
    if any((root / f).exists() for f in (*TRAIN_BATCHES, *TEST_BATCHES, "batches.meta")):
        return root
    if (root / "cifar-10-python.tar.gz").is_file():
        raise DataError(
            f"{root} holds cifar-10-python.tar.gz but not its contents: extract it with "
            f"`tar xzf {root / 'cifar-10-python.tar.gz'} -C {root}`"
        )
    raise DataError(
        f"no CIFAR-10 batches in {root} (neither {FOLDER}/ nor data_batch_1 found): {_HINT}"
    )


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path.name} is missing from {path.parent}: {_HINT}")
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}): check its permissions or {_HINT}") from None
    # Truncated or garbled pickles raise anything from EOFError to UnpicklingError, ValueError,
    # KeyError or MemoryError, so everything is translated into one message.
    except Exception as exc:  # noqa: BLE001 - see above
        raise DataError(
            f"{path.name} in {path.parent} is corrupt or truncated ({exc.__class__.__name__}: {exc}): {_HINT}"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path.name} in {path.parent} holds a {type(obj).__name__}, not a CIFAR-10 dict: {_HINT}")
    # Pickles written by Python 3 with str keys are as valid as the original bytes keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise DataError(f"{path.name} in {path.parent} has no {' or '.join(missing)} entry: {_HINT}")
    try:
        data = np.asarray(batch["data"])
        labels = np.asarray(batch["labels"], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path.name} in {path.parent} has malformed data or labels ({exc}): {_HINT}") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path.name} in {path.parent} holds data of dtype {data.dtype} and shape {data.shape}, "
            f"expected uint8 (N, 3072): {_HINT}"
        )
    if len(data) != len(labels):
        raise DataError(
            f"{path.name} in {path.parent} holds {len(data)} images but {len(labels)} labels: {_HINT}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= 10):
        raise DataError(
            f"{path.name} in {path.parent} contains label {int(labels.max())}, outside 0..9: {_HINT}"
        )
    return data, labels


def _read_classes(folder: Path) -> list[str]:
    meta_path = folder / "batches.meta"
    if not meta_path.is_file():
        # Only the class names come from this file, and they are fixed for CIFAR-10.
        return list(CIFAR10_CLASSES)
    meta = _unpickle(meta_path)
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != 10:
        raise DataError(f"batches.meta in {folder} has no list of 10 label_names: {_HINT}")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


def load_cifar10(root: Path, split: str) -> TensorImageDataset:
    """Load the ``split`` of CIFAR-10 from ``root`` (the batches folder or its parent)."""
    folder = resolve_cifar_dir(root)
    parts = [_read_batch(folder / b) for b in (TRAIN_BATCHES if split == "train" else TEST_BATCHES)]
    data = np.concatenate([p[0] for p in parts])  # a new array: its reshape is a view, not one more copy
    labels = np.concatenate([p[1] for p in parts])
    del parts
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32))
    return TensorImageDataset("cifar10", images, labels, _read_classes(folder))

"""SVHN cropped digits (``train_32x32.mat`` / ``test_32x32.mat``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from deepcluster.core.errors import DataError
from deepcluster.data.base import TensorImageDataset

SVHN_CLASSES = [str(d) for d in range(10)]
_HINT = (
    "re-download it from http://ufldl.stanford.edu/housenumbers/ (format 2, cropped digits) "
    "and point --set data.root=DIR at its folder"
)


def load_svhn(root: Path, split: str) -> TensorImageDataset:
    """Load the ``split`` of SVHN; label 10 (the digit 0) is mapped to 0."""
    path = root / f"{split}_32x32.mat"
    if not path.is_file():
        raise DataError(f"{path.name} is missing from {root}: {_HINT}")
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except NotImplementedError:
        raise DataError(
            f"{path.name} in {root} is a MATLAB v7.3 (HDF5) file, which scipy cannot read: "
            "save it again with `save(..., '-v7')` or " + _HINT
        ) from None
    # loadmat reports truncated or foreign files as ValueError, MatReadError, OSError, TypeError...
    except Exception as exc:  # noqa: BLE001 - see above
        raise DataError(
            f"{path.name} in {root} is not a readable .mat file ({exc.__class__.__name__}: {exc}): {_HINT}"
        ) from None
    missing = [k for k in ("X", "y") if k not in mat]
    if missing:
        raise DataError(f"{path.name} in {root} has no variable {' or '.join(missing)}: {_HINT}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path.name} in {root}: X has shape {x.shape}, expected (32, 32, 3, N): {_HINT}")
    if x.shape[3] != len(y):
        raise DataError(f"{path.name} in {root} holds {x.shape[3]} images but {len(y)} labels: {_HINT}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.number) or x.min() < 0 or x.max() > 255:
            raise DataError(f"{path.name} in {root}: X is {x.dtype} outside 0..255, expected uint8: {_HINT}")
        x = x.astype(np.uint8)
    try:
        labels = y.astype(np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path.name} in {root}: y of dtype {y.dtype} is not integer labels: {_HINT}") from None
    labels[labels == 10] = 0
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path.name} in {root} contains labels outside 1..10: {_HINT}")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))
    return TensorImageDataset("svhn", images, labels, SVHN_CLASSES)

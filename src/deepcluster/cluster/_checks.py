"""Input validation shared by the clustering modules."""

from __future__ import annotations

import numpy as np

from deepcluster.core.errors import ClusteringError


def as_features(x: object, name: str = "features", *, allow_empty: bool = False) -> np.ndarray:
    """Validate a feature matrix and return it as C-contiguous float32.

    Parameters
    ----------
    x : array-like
        Feature matrix, shape (N, d), real-valued.
    name : str
        Name used in error messages.
    allow_empty : bool
        Accept zero rows (a process's share of a distributed run may be empty).

    Returns
    -------
    np.ndarray
        float32, C-contiguous, shape (N, d).

    Raises
    ------
    ClusteringError
        If ``x`` contains NaN/inf (a diverged network).
    ValueError, TypeError
        If ``x`` is not a non-empty 2-D real matrix (a caller's bug).
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array (N samples, d dims), got shape {arr.shape}: "
            "flatten each sample's features into one row"
        )
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(
            f"{name} must be real numbers, got dtype {arr.dtype}: convert them to float32"
        )
    if (arr.shape[0] == 0 and not allow_empty) or arr.shape[1] == 0:
        raise ValueError(
            f"{name} are empty (shape {arr.shape}): the dataset or the feature extractor "
            "produced no samples or no dimensions"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr).all(axis=1)).sum())
        raise ClusteringError(
            f"{name} contain NaN/inf ({n_bad} of {arr.shape[0]} rows): "
            "the network diverged, lower lr"
        )
    return arr


def l2_normalize_rows(x: np.ndarray) -> np.ndarray:
    """Scale each row to unit L2 norm, in float32.

    Rows of (near-)zero norm are left as they are rather than divided by ~0, so they do
    not turn into NaN; they can only arise from an all-zero feature vector.
    """
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms = np.where(norms > 1e-12, norms, 1.0)
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def check_int(value: object, name: str, minimum: int) -> int:
    """Return ``value`` as an int; TypeError if it is not an int, ValueError if it is below ``minimum``.

    The parameters it checks are validated with the config first: failing here is a caller's bug.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}={value} is too small: it must be at least {minimum}")
    return int(value)

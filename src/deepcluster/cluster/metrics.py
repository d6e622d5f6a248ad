"""Agreement between two labellings, and summaries of cluster sizes."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def _labels_pair(a: object, b: object) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ValueError(
            f"the two labellings have different lengths ({a.size} and {b.size}): "
            "compare labels of the same samples, in the same order"
        )
    if a.size == 0:
        raise ValueError("the labellings are empty: there is nothing to compare")
    return a, b


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information of two labellings, in [0, 1].

    scikit-learn's ``normalized_mutual_info_score`` (arithmetic-mean normalisation);
    symmetric, invariant to renaming the labels. The paper measures cluster stability across
    epochs with it.
    """
    a, b = _labels_pair(a, b)
    return float(normalized_mutual_info_score(a, b))


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labellings (1 = identical partitions, ~0 = chance)."""
    a, b = _labels_pair(a, b)
    return float(adjusted_rand_score(a, b))


def clustering_accuracy(labels: np.ndarray, assignments: np.ndarray) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes.

    The matching maximises the number of correctly matched samples on the contingency
    matrix (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``). It works for any
    numbers of clusters and classes: when they differ, the unmatched clusters' samples count
    as wrong.

    Parameters
    ----------
    labels : np.ndarray
        True class of each sample, shape (N,), any hashable values.
    assignments : np.ndarray
        Cluster of each sample, shape (N,), any hashable values.

    Returns
    -------
    float
        Fraction of samples in [0, 1].
    """
    labels, assignments = _labels_pair(labels, assignments)
    _, cls = np.unique(labels, return_inverse=True)
    _, clu = np.unique(assignments, return_inverse=True)
    counts = np.zeros((clu.max() + 1, cls.max() + 1), dtype=np.int64)
    np.add.at(counts, (clu.ravel(), cls.ravel()), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / labels.size)


def cluster_size_summary(sizes: np.ndarray) -> dict:
    """Summarise cluster sizes for logging.

    Parameters
    ----------
    sizes : np.ndarray
        Number of samples in each cluster, shape (k,).

    Returns
    -------
    dict
        ``{"min": int, "median": float, "max": int, "empty": int}``; all 0 when ``k == 0``.
    """
    s = np.asarray(sizes).ravel()
    if s.size == 0:
        return {"min": 0, "median": 0.0, "max": 0, "empty": 0}
    return {
        "min": int(s.min()),
        "median": float(np.median(s)),
        "max": int(s.max()),
        "empty": int((s == 0).sum()),
    }

"""k-nearest-neighbour classification with cosine similarity (faiss inner product on unit vectors).

Each of the k nearest training samples votes for its label with a weight equal to its cosine
similarity to the query (negative similarities count as 0, plus 1e-6 so that a vote is never
empty). One faiss search with the largest k serves every k: the neighbours of a smaller k are
the first ones of the larger search.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from deepcluster.core.errors import ConfigError, DataError
from deepcluster.core.progress import progress_bar

#: Queries per faiss search (the progress bar advances between them).
_QUERY_CHUNK = 4096

#: The ks reported by default (Wu et al. 2018 use 200; 10 and 20 are common in small-data papers).
DEFAULT_KS: tuple[int, ...] = (10, 20, 200)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(x)
    return x


def knn_accuracies(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    description: str = "kNN",
    show_progress: bool = False,
) -> dict[int, float]:
    """Accuracy of the similarity-weighted k-NN vote for several k, from one search.

    Parameters
    ----------
    train_x, test_x : np.ndarray
        Features (N, D) and (M, D); compared by cosine similarity.
    train_y, test_y : np.ndarray
        Integer labels (non-negative).
    ks : Sequence[int]
        Numbers of neighbours. A k larger than the training set uses every training sample.
    description, show_progress
        Label of the progress bar over the queries, and whether to show it.

    Returns
    -------
    dict[int, float]
        k → accuracy in [0, 1], for each requested k (in increasing order).

    Raises
    ------
    ConfigError
        If ``ks`` is empty or holds a k < 1.
    DataError
        If the features are malformed.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"kNN needs k >= 1, got ks={list(ks)}")
    train_y = np.asarray(train_y, dtype=np.int64)
    test_y = np.asarray(test_y, dtype=np.int64)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise DataError(f"kNN features must be 2-D with the same width, got {train_x.shape} and {test_x.shape}")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y) or len(train_x) == 0:
        raise DataError(f"kNN: {len(train_x)} train features for {len(train_y)} labels, "
                        f"{len(test_x)} test features for {len(test_y)} labels")
    kmax = min(ks[-1], len(train_x))
    xtr, xte = _unit(train_x), _unit(test_x)
    index = faiss.IndexFlatIP(xtr.shape[1])
    index.add(xtr)
    sims = np.empty((len(xte), kmax), dtype=np.float32)
    nbrs = np.empty((len(xte), kmax), dtype=np.int64)
    with progress_bar(description, total=len(xte), enabled=show_progress, unit="queries") as advance:
        for start in range(0, len(xte), _QUERY_CHUNK):
            stop = min(start + _QUERY_CHUNK, len(xte))
            sims[start:stop], nbrs[start:stop] = index.search(xte[start:stop], kmax)
            advance(stop - start)
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    weights = np.maximum(sims, 0).astype(np.float64) + 1e-6
    labels = train_y[nbrs]
    rows = np.arange(len(xte))
    votes = np.zeros((len(xte), n_classes), dtype=np.float64)
    out: dict[int, float] = {}
    done = 0
    for k in ks:
        upto = min(k, kmax)
        # Votes accumulate: neighbours done..upto are added to those of the previous k.
        for j in range(done, upto):
            votes[rows, labels[:, j]] += weights[:, j]  # one neighbour per row: no repeated index
        done = upto
        out[k] = float((votes.argmax(1) == test_y).mean())
    return out


def knn_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *, k: int = 20
) -> float:
    """Accuracy of a k-NN vote (each neighbour weighted by its cosine similarity).

    Parameters
    ----------
    train_x, train_y, test_x, test_y
        See :func:`knn_accuracies`.
    k : int
        Number of neighbours.

    Returns
    -------
    float
    """
    return knn_accuracies(train_x, train_y, test_x, test_y, ks=(k,))[k]

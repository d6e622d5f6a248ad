"""k-nearest-neighbour classification with cosine similarity (faiss inner product on unit vectors)."""

from __future__ import annotations

import faiss
import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32).copy()
    faiss.normalize_L2(x)
    return x


def knn_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *, k: int = 20
) -> float:
    """Accuracy of a k-NN vote (each neighbour weighted by its cosine similarity)."""
    train_y = np.asarray(train_y, dtype=np.int64)
    test_y = np.asarray(test_y, dtype=np.int64)
    k = min(k, len(train_x))
    xtr, xte = _unit(train_x), _unit(test_x)
    index = faiss.IndexFlatIP(xtr.shape[1])
    index.add(xtr)
    sims, nbrs = index.search(xte, k)
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    votes = np.zeros((len(xte), n_classes), dtype=np.float64)
    np.add.at(votes, (np.repeat(np.arange(len(xte)), k), train_y[nbrs].ravel()), np.maximum(sims, 0).ravel() + 1e-6)
    return float((votes.argmax(1) == test_y).mean())

"""Nearest-neighbour queries in a feature space (Caron et al., Figure 5.3)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from deepcluster.core.errors import ConfigError, DataError
from deepcluster.core.plot import (
    DIFFERENT,
    QUERY,
    SAME,
    as_labels,
    as_numpy,
    image_batch,
    image_grid,
    new_figure,
    save_png,
    to_display,
)


def _as_queries(queries: np.ndarray, n: int) -> np.ndarray:
    q = as_numpy(queries)
    if q.ndim != 1 or (len(q) and q.dtype.kind not in "iu"):
        raise DataError(f"queries must be a 1-D array of integer image indices, got shape {tuple(q.shape)} "
                        f"and dtype {q.dtype}")
    q = q.astype(np.int64)
    if len(q) and (q.min() < 0 or q.max() >= n):
        raise DataError(f"query indices must lie in [0, {n}), got values from {int(q.min())} to {int(q.max())}")
    return q


def nearest_neighbors(features: np.ndarray, queries: np.ndarray, k: int = 8) -> np.ndarray:
    """The ``k`` nearest neighbours (cosine similarity) of some rows of ``features``, themselves excluded.

    Parameters
    ----------
    features : numpy.ndarray
        n×d features; rows are L2-normalised (on a float32 copy) and searched exactly with faiss
        ``IndexFlatIP``.
    queries : numpy.ndarray
        q row indices of the query images.
    k : int
        Neighbours per query; needs n ≥ k + 1.

    Returns
    -------
    numpy.ndarray
        q×k int64 row indices, most similar first; a query never appears in its own row.

    Raises
    ------
    DataError
        When ``features`` is not 2-D and finite or a query index is out of range.
    ConfigError
        When ``k`` < 1 or there are fewer than k + 1 images.
    """
    import faiss

    x = as_numpy(features)
    if x.ndim != 2:
        raise DataError(f"features must be a 2-D array (n images × d dims), got shape {tuple(x.shape)}")
    n = len(x)
    q = _as_queries(queries, n)
    if k < 1:
        raise ConfigError(f"the number of neighbours k must be at least 1, got {k}")
    if n < k + 1:
        raise ConfigError(f"{k} neighbours per query need at least {k + 1} images, got {n}: lower k or sample more")
    x = np.ascontiguousarray(x, dtype=np.float32).copy()
    if not np.all(np.isfinite(x)):
        raise DataError("features contain NaN or infinite values: the network diverged or the checkpoint is corrupt")
    if len(q) == 0:
        return np.zeros((0, k), dtype=np.int64)
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, found = index.search(np.ascontiguousarray(x[q]), k + 1)
    out = np.empty((len(q), k), dtype=np.int64)
    for i, (query, row) in enumerate(zip(q, found)):
        # with exact duplicates the query may tie with its copies, so drop it wherever it is
        others = row[(row != query) & (row >= 0)]
        out[i] = others[:k]
    return out


def plot_neighbor_queries(
    images: np.ndarray,
    queries: np.ndarray,
    neighbors: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    labels: np.ndarray | None = None,
) -> Path:
    """Rows of query images and their nearest neighbours, one row per query per model.

    Each row shows the query (dark-blue frame) then its k neighbours; with labels, a neighbour is
    framed green when it has the query's label, red otherwise, and the row ends with the count of
    same-label neighbours. Rows are titled by model name, as Caron et al.'s Figure 5.3.

    Parameters
    ----------
    images : array-like
        uint8 N×C×H×W images (C = 1 or 3), numpy array or torch tensor.
    queries : numpy.ndarray
        q indices into ``images``.
    neighbors : mapping of str to numpy.ndarray
        Model name → q×k neighbour indices (from :func:`nearest_neighbors`), e.g.
        ``{"random": nn0, "trained": nn1}``.
    path : str or Path
        Output PNG.
    labels : numpy.ndarray, optional
        N integer labels of ``images``.

    Returns
    -------
    Path
        ``path``, written atomically.

    Raises
    ------
    DataError
        When shapes disagree or an index is out of range.
    """
    imgs = image_batch(images)
    n = len(imgs)
    q = _as_queries(queries, n)
    y = as_labels(labels, n)
    if not neighbors:
        raise DataError("no neighbours to draw: give at least one model's neighbour indices")
    if len(q) == 0:
        raise DataError("no query to draw: give at least one query index")
    nbrs: dict[str, np.ndarray] = {}
    for name, nb in neighbors.items():
        nb = as_numpy(nb)
        if nb.ndim != 2 or len(nb) != len(q) or nb.shape[1] < 1:
            raise DataError(f"neighbours of {name!r} must be a q×k array with q = {len(q)} queries, "
                            f"got shape {tuple(nb.shape)}")
        if nb.dtype.kind not in "iu" or nb.min() < 0 or nb.max() >= n:
            raise DataError(f"neighbours of {name!r} must be integer indices in [0, {n})")
        nbrs[name] = nb.astype(np.int64)
    k = max(nb.shape[1] for nb in nbrs.values())

    models = list(nbrs)
    gap = 0.3 if len(models) > 1 else 0.0  # blank row between the queries when several models are shown
    ratios: list[float] = []
    slots: list[tuple[int, str]] = []  # (query number, model) of each grid row, blanks excluded
    for qi in range(len(q)):
        if qi and gap:
            ratios.append(gap)
        for name in models:
            slots.append((qi, name))
            ratios.append(1.0)
    cell = 0.7 if k <= 10 else 0.5
    fig = new_figure(cell * (k + 1) + 2.0, cell * 1.1 * sum(ratios) + 0.4, layout=None)
    grid = fig.add_gridspec(len(ratios), 2, width_ratios=[1, k], height_ratios=ratios, wspace=0.08, hspace=0.1)
    row_of = [r for r, h in enumerate(ratios) if h == 1.0]
    for r, (qi, name) in zip(row_of, slots):
        query = q[qi]
        nb = nbrs[name][qi]
        ax_q = fig.add_subplot(grid[r, 0])
        image_grid(ax_q, to_display(imgs[[query]]), 1, frames=[QUERY], frame_width=2.5)
        ax_q.set_anchor("E")
        ax_q.text(-0.12, 0.5, name, transform=ax_q.transAxes, ha="right", va="center", fontsize=9)
        ax_n = fig.add_subplot(grid[r, 1])
        ax_n.set_anchor("W")
        frames = None
        if y is not None:
            frames = [SAME if y[j] == y[query] else DIFFERENT for j in nb]
        shown = to_display(imgs[nb])
        if len(nb) < k:  # models with fewer neighbours: pad with blanks
            shown = np.concatenate([shown, np.ones((k - len(nb), *shown.shape[1:]), dtype=np.float32)])
            frames = None if frames is None else frames + [None] * (k - len(nb))
        canvas = image_grid(ax_n, shown, k, frames=frames, frame_width=1.5)
        if y is not None:
            same = int(np.sum(y[nb] == y[query]))
            ax_n.text(canvas.shape[1] + 0.03 * canvas.shape[0] * k, canvas.shape[0] / 2, f"{same}/{len(nb)}",
                      ha="left", va="center", fontsize=8)
        if r == 0:
            ax_q.set_title("query", fontsize=9)
            ax_n.set_title(f"{k} nearest neighbours (cosine)", fontsize=9, loc="left")
    return save_png(fig, path)

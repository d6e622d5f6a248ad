"""What the clusters look like: galleries of sampled members, purity, and the distribution of sizes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from deepcluster.core.errors import ConfigError, DataError
from deepcluster.core.plot import (
    DIFFERENT,
    SAME,
    as_labels,
    as_numpy,
    class_name,
    image_batch,
    image_grid,
    label_colors,
    new_figure,
    save_png,
    to_display,
)


def _as_assignments(assignments: np.ndarray, what: str = "assignments") -> np.ndarray:
    a = as_numpy(assignments)
    if a.ndim != 1:
        raise DataError(f"{what} must be a 1-D array of cluster indices, got shape {tuple(a.shape)}")
    if len(a) and a.dtype.kind not in "iu":
        raise DataError(f"{what} must be integer cluster indices, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if len(a) and a.min() < 0:
        raise DataError(f"{what} must be non-negative cluster indices, got minimum {int(a.min())}")
    return a


def cluster_purity(assignments: np.ndarray, labels: np.ndarray) -> dict[int, tuple[int, float, int]]:
    """Majority label, purity and size of every non-empty cluster.

    Parameters
    ----------
    assignments : numpy.ndarray
        n cluster indices (non-negative integers).
    labels : numpy.ndarray
        n integer labels.

    Returns
    -------
    dict of int to (int, float, int)
        Cluster → (majority label, share of the cluster with that label, cluster size), for the
        clusters that occur in ``assignments``, in increasing cluster order. Ties go to the
        smallest label.

    Raises
    ------
    DataError
        When the two arrays differ in length or are not non-negative integers.
    """
    a = _as_assignments(assignments)
    y = as_labels(labels, len(a), what="assigned image")
    assert y is not None
    if len(a) == 0:
        return {}
    n_labels = int(y.max()) + 1
    counts = np.zeros((int(a.max()) + 1, n_labels), dtype=np.int64)
    np.add.at(counts, (a, y), 1)
    out: dict[int, tuple[int, float, int]] = {}
    for c in np.flatnonzero(counts.sum(1)):
        row = counts[c]
        size = int(row.sum())
        major = int(row.argmax())
        out[int(c)] = (major, float(row[major]) / size, size)
    return out


def plot_cluster_gallery(
    images: np.ndarray,
    assignments: np.ndarray,
    path: str | Path,
    *,
    labels: np.ndarray | None = None,
    n_clusters: int = 12,
    per_cluster: int = 8,
    seed: int = 0,
    order: Literal["size", "purity"] = "size",
    class_names: Sequence[str] | None = None,
) -> Path:
    """One row per cluster (largest or purest first) showing a random sample of its images.

    Row titles read ``cluster c · n=… · purity 0.87 (majority: Trouser)``; without labels the
    purity is left out. With labels, images of the majority label are framed green, others red.

    Parameters
    ----------
    images : array-like
        uint8 N×C×H×W images (C = 1 or 3), numpy array or torch tensor.
    assignments : numpy.ndarray
        N cluster indices of ``images``.
    path : str or Path
        Output PNG.
    labels : numpy.ndarray, optional
        N integer labels.
    n_clusters : int
        Clusters shown (at most the number of non-empty clusters).
    per_cluster : int
        Images sampled per cluster (fewer for smaller clusters).
    seed : int
        Seeds the sampling.
    order : {"size", "purity"}
        Largest clusters first, or purest first (ties: larger first); ``purity`` needs labels.
    class_names : sequence of str, optional
        Names of the labels in the titles.

    Returns
    -------
    Path
        ``path``, written atomically.

    Raises
    ------
    DataError
        When shapes disagree or there are no images.
    ConfigError
        For non-positive counts, an unknown ``order``, or ``order="purity"`` without labels.
    """
    imgs = image_batch(images)
    a = _as_assignments(assignments)
    if len(a) != len(imgs):
        raise DataError(f"assignments has {len(a)} entries for {len(imgs)} images: give one cluster per image")
    if len(a) == 0:
        raise DataError("no image to draw: the cluster gallery needs at least one image")
    y = as_labels(labels, len(a))
    if n_clusters < 1 or per_cluster < 1:
        raise ConfigError(f"n_clusters and per_cluster must be at least 1, got {n_clusters} and {per_cluster}")
    if order not in ("size", "purity"):
        raise ConfigError(f"unknown cluster order {order!r}: use 'size' or 'purity'")
    if order == "purity" and y is None:
        raise ConfigError("ordering clusters by purity needs labels: use order='size' for unlabelled data")

    sizes = np.bincount(a)
    purity = cluster_purity(a, y) if y is not None else {}
    present = np.flatnonzero(sizes)
    if order == "size":
        ranked = sorted(present, key=lambda c: (-sizes[c], c))
    else:
        ranked = sorted(present, key=lambda c: (-purity[int(c)][1], -sizes[c], c))
    shown = [int(c) for c in ranked[:n_clusters]]

    rng = np.random.default_rng(seed)
    cell = 0.7 if per_cluster <= 12 else 0.5
    fig = new_figure(cell * per_cluster + 0.3, (cell + 0.28) * len(shown) + 0.2, layout=None)
    grid = fig.add_gridspec(len(shown), 1, hspace=0.45)
    for r, c in enumerate(shown):
        members = np.flatnonzero(a == c)
        pick = np.sort(rng.choice(members, size=min(per_cluster, len(members)), replace=False))
        title = f"cluster {c} · n={len(members)}"
        frames = None
        if y is not None:
            major, pur, _ = purity[c]
            title += f" · purity {pur:.2f} (majority: {class_name(major, class_names)})"
            frames = [SAME if y[i] == major else DIFFERENT for i in pick]
        row = to_display(imgs[pick])
        if len(pick) < per_cluster:  # keep every row on the same scale
            row = np.concatenate([row, np.ones((per_cluster - len(pick), *row.shape[1:]), dtype=np.float32)])
            frames = None if frames is None else frames + [None] * (per_cluster - len(pick))
        ax = fig.add_subplot(grid[r, 0])
        image_grid(ax, row, per_cluster, frames=frames, frame_width=1.2)
        ax.set_title(title, fontsize=8, loc="left", pad=2)
    return save_png(fig, path)


def plot_cluster_sizes(
    assignments: Mapping[str, np.ndarray] | np.ndarray,
    path: str | Path,
    *,
    k: int | None = None,
) -> Path:
    """Cluster sizes sorted in decreasing order, one overlaid series per assignment.

    Parameters
    ----------
    assignments : mapping of str to numpy.ndarray, or numpy.ndarray
        One assignment (cluster index per image), or several by name, e.g.
        ``{"cycle 1": a1, "cycle 30": a30}``.
    path : str or Path
        Output PNG.
    k : int, optional
        Number of clusters; empty clusters then count as size 0 (and are reported in the legend).

    Returns
    -------
    Path
        ``path``, written atomically.

    Raises
    ------
    DataError
        When an assignment is not 1-D non-negative integers or uses a cluster index ≥ k.
    ConfigError
        When ``k`` < 1.
    """
    series = dict(assignments) if isinstance(assignments, Mapping) else {"clusters": assignments}
    if not series:
        raise DataError("no assignment to draw: give at least one array of cluster indices")
    if k is not None and k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    counts = {}
    for name, arr in series.items():
        a = _as_assignments(arr, what=f"assignments {name!r}")
        if k is not None and len(a) and a.max() >= k:
            raise DataError(f"assignments {name!r} use cluster {int(a.max())} but k = {k}: pass the run's k")
        sizes = np.bincount(a, minlength=k or 0)
        counts[name] = np.sort(sizes)[::-1] if k is not None else np.sort(sizes[sizes > 0])[::-1]

    fig = new_figure(6.4, 3.4)
    ax = fig.add_subplot()
    colours = label_colors(len(counts))
    for colour, (name, sizes) in zip(colours, counts.items()):
        empty = int(np.sum(sizes == 0))
        text = f"{name}: {int(np.sum(sizes > 0))} clusters"
        text += f", {empty} empty" if k is not None else ""
        text += f", largest {int(sizes.max()) if len(sizes) else 0}"
        if len(sizes):
            ax.stairs(sizes, np.arange(len(sizes) + 1) + 0.5, fill=True, alpha=0.45, color=colour, label=text)
            ax.stairs(sizes, np.arange(len(sizes) + 1) + 0.5, color=colour, linewidth=1.0)
    total = max(int(s.sum()) for s in counts.values())
    n_clusters = k if k is not None else max(len(s) for s in counts.values())
    if total and n_clusters:
        ax.axhline(total / n_clusters, color="0.3", linestyle="--", linewidth=0.8, label="uniform size")
    ax.set_xlabel("clusters, largest first")
    ax.set_ylabel("images")
    ax.set_xlim(0.5, max(n_clusters, 1) + 0.5)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("Cluster sizes", fontsize=10)
    return save_png(fig, path)

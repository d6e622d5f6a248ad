"""2-D maps of a feature space (t-SNE, or UMAP when installed), coloured by label."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.lines import Line2D

from deepcluster.core.errors import ConfigError, DataError
from deepcluster.core.plot import (
    as_labels,
    as_numpy,
    class_name,
    label_colors,
    new_figure,
    save_png,
)


def embed_2d(
    features: np.ndarray,
    *,
    method: Literal["tsne", "umap"] = "tsne",
    seed: int = 0,
    max_points: int = 3000,
    pca_dims: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed features in 2-D: seeded subsample, PCA to ``pca_dims``, then t-SNE (or UMAP).

    Parameters
    ----------
    features : numpy.ndarray
        n×d features (any float dtype), finite.
    method : {"tsne", "umap"}
        ``tsne``: scikit-learn's TSNE with PCA initialisation; ``umap`` needs ``umap-learn``.
    seed : int
        Seeds the subsample, the PCA and the embedding: the same call gives the same map.
    max_points : int
        At most this many points are embedded, drawn without replacement.
    pca_dims : int
        Features are first reduced to this many principal components (skipped when d is smaller).

    Returns
    -------
    xy : numpy.ndarray
        m×2 float32 coordinates, m = min(n, max_points).
    indices : numpy.ndarray
        The m sorted row indices of ``features`` that were embedded (``labels[indices]`` colours them).
        When all m feature vectors are identical (a collapsed network), ``xy`` is all zeros.

    Raises
    ------
    DataError
        When ``features`` is not a finite 2-D array of at least 3 rows.
    ConfigError
        For an unknown method, ``umap`` without umap-learn, or non-positive sizes.
    """
    x = as_numpy(features)
    if x.ndim != 2:
        raise DataError(f"features must be a 2-D array (n images × d dims), got shape {tuple(x.shape)}")
    if len(x) < 3:
        raise DataError(f"a 2-D map needs at least 3 feature vectors, got {len(x)}: sample more images")
    if method not in ("tsne", "umap"):
        raise ConfigError(f"unknown map method {method!r}: use 'tsne' or 'umap'")
    if max_points < 3:
        raise ConfigError(f"max_points must be at least 3, got {max_points}")
    if pca_dims < 2:
        raise ConfigError(f"pca_dims must be at least 2, got {pca_dims}")
    umap = None
    if method == "umap":
        try:
            import umap  # type: ignore[import-not-found,no-redef]
        except ImportError:
            raise ConfigError("UMAP maps need the umap-learn package: install umap-learn or use --map tsne") from None

    n = len(x)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=max_points, replace=False)) if n > max_points else np.arange(n)
    x = np.asarray(x[idx], dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise DataError("features contain NaN or infinite values: the network diverged or the checkpoint is corrupt")

    if np.ptp(x, axis=0).max() <= 1e-12 * max(1.0, float(np.abs(x).max())):
        # every image has the same features (a collapsed network): the honest map is a single dot
        return np.zeros((len(x), 2), dtype=np.float32), idx

    from sklearn.decomposition import PCA

    dims = min(pca_dims, x.shape[0], x.shape[1])
    if x.shape[1] > pca_dims:
        x = PCA(n_components=dims, svd_solver="full", random_state=seed).fit_transform(x)

    if method == "umap":
        assert umap is not None
        xy = umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    else:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                  random_state=seed).fit_transform(x)
    return np.asarray(xy, dtype=np.float32), idx


def plot_feature_maps(
    panels: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Side-by-side scatter plots of 2-D maps, coloured by label (one colour without labels).

    Parameters
    ----------
    panels : mapping of str to numpy.ndarray
        Panel title → m×2 coordinates, e.g. ``{"random init": xy0, "trained": xy1}``; every panel
        shows the same m points.
    labels : numpy.ndarray or None
        m integer labels of the points, or None.
    path : str or Path
        Output PNG.
    class_names : sequence of str, optional
        Legend names of the labels (label ``i`` → ``class_names[i]``).
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``, written atomically.

    Raises
    ------
    DataError
        When there is no panel, a panel is not m×2, or the labels do not match the points.
    """
    if not panels:
        raise DataError("no feature map to draw: give at least one panel")
    xys = {}
    m = None
    for name, xy in panels.items():
        xy = as_numpy(xy)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise DataError(f"map {name!r} must be an m×2 array of coordinates, got shape {tuple(xy.shape)}")
        if m is not None and len(xy) != m:
            raise DataError(f"map {name!r} has {len(xy)} points but the previous maps have {m}: "
                            "embed the same images in every panel")
        m = len(xy)
        xys[name] = xy
    assert m is not None
    y = as_labels(labels, m, what="map point")

    k = len(xys)
    fig = new_figure(4.0 * k + (1.6 if y is not None else 0.0), 4.2)
    axes = fig.subplots(1, k, squeeze=False)[0]
    size = float(np.clip(3000.0 / max(m, 1), 2.0, 25.0))
    if y is not None:
        n_colours = max(int(y.max()) + 1 if len(y) else 1, len(class_names) if class_names else 0)
        palette = label_colors(n_colours)
        colours = palette[y]
    for ax, (name, xy) in zip(axes, xys.items()):
        if y is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=size, color="#1f77b4", alpha=0.7, linewidths=0)
        else:
            order = np.random.default_rng(0).permutation(m)  # no class systematically drawn on top
            ax.scatter(xy[order, 0], xy[order, 1], s=size, c=colours[order], alpha=0.8, linewidths=0)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    if y is not None and len(np.unique(y)) > 40:  # a legend of hundreds of classes says nothing
        axes[-1].text(1.02, 0.5, f"{len(np.unique(y))} classes", transform=axes[-1].transAxes, fontsize=8,
                      va="center")
    elif y is not None:
        present = np.unique(y)
        handles = [Line2D([], [], marker="o", linestyle="", markersize=6, markerfacecolor=palette[c],
                          markeredgewidth=0, label=class_name(int(c), class_names)) for c in present]
        ncol = 1 if len(present) <= 20 else 2
        fig.legend(handles=handles, loc="outside right center", fontsize=8 if len(present) <= 20 else 6,
                   ncol=ncol, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_png(fig, path)

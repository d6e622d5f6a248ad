"""Report figures, data side: feature maps, neighbours, cluster galleries and sizes, training curves."""

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from deepcluster.core.errors import ConfigError, DataError
from deepcluster.core.plot import label_colors, new_figure, save_png, to_display
from deepcluster.report.clusters import (
    cluster_purity,
    plot_cluster_gallery,
    plot_cluster_sizes,
)
from deepcluster.report.curves import plot_cycle_metrics, plot_training_curves
from deepcluster.report.feature_map import embed_2d, plot_feature_maps
from deepcluster.report.neighbors import nearest_neighbors, plot_neighbor_queries

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, max_kb: int = 400) -> np.ndarray:
    """A complete PNG of sensible size that matplotlib reads back; returns the pixels."""
    path = Path(path)
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert 1_000 < len(data) < max_kb * 1024, f"{path.name}: {len(data)} bytes"
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels.std() > 0.01  # not a blank canvas
    assert not list(path.parent.glob(f".{path.name}.*.tmp"))  # atomic write left nothing behind
    return pixels


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8×8 digits: 300 images as uint8 N×1×8×8, their pixel features and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    n = 300
    images = (d.images[:n] * 16).clip(0, 255).astype(np.uint8)[:, None]
    return images, d.data[:n].astype(np.float32), d.target[:n].astype(np.int64)


@pytest.fixture(scope="module")
def rgb():
    """40 random colour images with 4 labels, 5 feature dims."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 3, 12, 12), dtype=np.uint8)
    return images, rng.normal(size=(40, 5)).astype(np.float32), np.arange(40) % 4


# --- shared helpers ----------------------------------------------------------------------------


def test_to_display_grey_and_rgb():
    grey = to_display(np.full((2, 1, 4, 5), 255, dtype=np.uint8))
    assert grey.shape == (2, 4, 5, 3) and grey.dtype == np.float32 and np.allclose(grey, 1.0)
    colour = to_display(torch.zeros(3, 4, 4, dtype=torch.uint8))  # one C×H×W tensor
    assert colour.shape == (4, 4, 3) and colour.max() == 0.0
    with pytest.raises(DataError, match="C = 1 or 3"):
        to_display(np.zeros((2, 2, 4, 4), dtype=np.uint8))


def test_label_colors_are_distinct():
    for n in (1, 10, 20, 45, 100):
        colours = label_colors(n)
        assert colours.shape == (n, 4)
        assert len({tuple(np.round(c, 4)) for c in colours}) == n


def test_save_png_is_atomic_and_small(tmp_path):
    fig = new_figure(3, 2)
    fig.add_subplot().plot([0, 1], [1, 0])
    path = save_png(fig, tmp_path / "sub" / "line.png")
    assert path == tmp_path / "sub" / "line.png"
    assert_png(path, max_kb=50)


def test_save_png_palette_shrinks_photos(tmp_path):
    def photo_figure():
        yy, xx = np.mgrid[0:200, 0:200] / 200.0
        noise = np.random.default_rng(0).normal(scale=0.08, size=(200, 200, 3))
        fig = new_figure(4, 4)
        fig.add_subplot().imshow(np.clip(np.dstack([xx, yy, xx * yy]) + noise, 0, 1))
        return fig

    full = save_png(photo_figure(), tmp_path / "full.png", max_bytes=10**9).stat().st_size
    small = save_png(photo_figure(), tmp_path / "small.png", max_bytes=20_000).stat().st_size
    assert small < 0.7 * full
    assert matplotlib.image.imread(tmp_path / "small.png").shape[:2] == matplotlib.image.imread(
        tmp_path / "full.png").shape[:2]


# --- feature maps --------------------------------------------------------------------------------


def test_embed_2d_deterministic_and_subsampled(digits):
    _, feats, _ = digits
    xy, idx = embed_2d(feats, seed=3, max_points=100, pca_dims=10)
    assert xy.shape == (100, 2) and idx.shape == (100,)
    assert len(np.unique(idx)) == 100 and np.all(np.diff(idx) > 0) and idx.max() < len(feats)
    xy2, idx2 = embed_2d(feats, seed=3, max_points=100, pca_dims=10)
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_allclose(xy, xy2)
    _, idx3 = embed_2d(feats[:30], seed=3, max_points=120)
    np.testing.assert_array_equal(idx3, np.arange(30))  # fewer points than max_points: all of them


def test_embed_2d_collapsed_features_give_one_dot():
    xy, idx = embed_2d(np.ones((40, 8), dtype=np.float32), max_points=30)
    assert xy.shape == (30, 2) and len(idx) == 30 and not np.any(xy)


def test_embed_2d_errors(digits):
    _, feats, _ = digits
    with pytest.raises(ConfigError, match="install umap-learn or use --map tsne"):
        embed_2d(feats, method="umap")
    with pytest.raises(ConfigError, match="unknown map method"):
        embed_2d(feats, method="pca")
    with pytest.raises(DataError, match="2-D array"):
        embed_2d(feats[0])
    bad = feats.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        embed_2d(bad)


def test_plot_feature_maps(digits, tmp_path):
    _, feats, labels = digits
    xy, idx = embed_2d(feats, max_points=150, pca_dims=16)
    rand = np.random.default_rng(0).normal(size=xy.shape)
    names = [f"digit {i}" for i in range(10)]
    a = assert_png(plot_feature_maps({"random init": rand, "trained": xy}, labels[idx], tmp_path / "map.png",
                                     class_names=names, title="digits"))
    b = assert_png(plot_feature_maps({"trained": xy}, None, tmp_path / "map_plain.png"))
    assert a.shape[1] > b.shape[1]  # two panels and a legend are wider than one panel
    with pytest.raises(DataError, match="one entry per map point"):
        plot_feature_maps({"trained": xy}, labels, tmp_path / "bad.png")
    with pytest.raises(DataError, match="m×2"):
        plot_feature_maps({"trained": feats}, None, tmp_path / "bad.png")
    with pytest.raises(DataError, match="same images"):
        plot_feature_maps({"a": xy, "b": xy[:10]}, None, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


# --- nearest neighbours --------------------------------------------------------------------------


def test_nearest_neighbors_known_answer():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(10, 6)).astype(np.float32)
    feats = np.concatenate([base, base * 3.0])  # i and i + 10 point the same way: cosine 1
    queries = np.arange(20)
    nn = nearest_neighbors(feats, queries, k=1)
    assert nn.shape == (20, 1) and nn.dtype == np.int64
    np.testing.assert_array_equal(nn[:, 0], (queries + 10) % 20)
    nn = nearest_neighbors(feats, queries, k=5)
    assert not np.any(nn == queries[:, None])  # a query is never its own neighbour
    np.testing.assert_array_equal(nn[:, 0], (queries + 10) % 20)
    assert all(len(set(row)) == 5 for row in nn)


def test_nearest_neighbors_excludes_query_among_ties():
    feats = np.ones((6, 3), dtype=np.float32)  # all identical: the query ties with everything
    nn = nearest_neighbors(feats, np.array([0, 5]), k=5)
    assert sorted(nn[0]) == [1, 2, 3, 4, 5] and sorted(nn[1]) == [0, 1, 2, 3, 4]


def test_nearest_neighbors_errors():
    feats = np.random.default_rng(0).normal(size=(5, 3))
    with pytest.raises(ConfigError, match="at least 6 images"):
        nearest_neighbors(feats, np.array([0]), k=5)
    with pytest.raises(DataError, match=r"in \[0, 5\)"):
        nearest_neighbors(feats, np.array([7]), k=2)
    with pytest.raises(DataError, match="integer image indices"):
        nearest_neighbors(feats, np.array([0.5]), k=2)


def test_plot_neighbor_queries(digits, rgb, tmp_path):
    images, feats, labels = digits
    queries = np.array([0, 7, 42])
    nbrs = {"random": nearest_neighbors(np.random.default_rng(1).normal(size=feats.shape), queries, k=6),
            "trained": nearest_neighbors(feats, queries, k=6)}
    assert_png(plot_neighbor_queries(images, queries, nbrs, tmp_path / "nn.png", labels=labels))
    assert_png(plot_neighbor_queries(torch.from_numpy(images), queries, nbrs, tmp_path / "nn_plain.png"))
    images, feats, _ = rgb
    nbrs = {"trained": nearest_neighbors(feats, np.array([1, 2]), k=4)}
    assert_png(plot_neighbor_queries(images, np.array([1, 2]), nbrs, tmp_path / "nn_rgb.png"))
    with pytest.raises(DataError, match="q×k array with q = 3"):
        plot_neighbor_queries(images, np.array([1, 2, 3]), nbrs, tmp_path / "bad.png")
    with pytest.raises(DataError, match="one entry per images"):
        plot_neighbor_queries(images, np.array([1, 2]), nbrs, tmp_path / "bad.png", labels=labels)


# --- clusters ------------------------------------------------------------------------------------


def test_cluster_purity_known_answer():
    assignments = np.array([0, 0, 0, 0, 2, 2, 5])
    labels = np.array([1, 1, 1, 3, 0, 4, 2])
    purity = cluster_purity(assignments, labels)
    assert list(purity) == [0, 2, 5]  # empty clusters 1, 3, 4 are absent
    assert purity[0] == (1, 0.75, 4)
    assert purity[2] == (0, 0.5, 2)  # tie: smallest label
    assert purity[5] == (2, 1.0, 1)
    with pytest.raises(DataError, match="one entry per assigned image"):
        cluster_purity(assignments, labels[:-1])
    with pytest.raises(DataError, match="non-negative"):
        cluster_purity(np.array([0, -1]), np.array([0, 0]))


def test_plot_cluster_gallery(digits, rgb, tmp_path):
    images, _, labels = digits
    assignments = (labels + (np.arange(len(labels)) % 7 == 0)) % 10  # mostly pure, some noise
    assignments[:3] = 11  # a tiny cluster (fewer images than per_cluster); cluster 10 empty
    names = [f"digit {i}" for i in range(10)]
    assert_png(plot_cluster_gallery(images, assignments, tmp_path / "gallery.png", labels=labels, n_clusters=12,
                                    per_cluster=6, class_names=names))
    assert_png(plot_cluster_gallery(images, assignments, tmp_path / "gallery_purity.png", labels=labels,
                                    order="purity", n_clusters=4))
    assert_png(plot_cluster_gallery(images, assignments, tmp_path / "gallery_plain.png", n_clusters=5))
    images, _, _ = rgb
    assert_png(plot_cluster_gallery(torch.from_numpy(images), np.arange(40) % 3, tmp_path / "gallery_rgb.png"))
    with pytest.raises(ConfigError, match="needs labels"):
        plot_cluster_gallery(images, np.arange(40) % 3, tmp_path / "bad.png", order="purity")
    with pytest.raises(DataError, match="39 entries for 40 images"):
        plot_cluster_gallery(images, np.arange(39) % 3, tmp_path / "bad.png")


def test_plot_cluster_sizes(tmp_path):
    rng = np.random.default_rng(0)
    first = rng.integers(0, 20, size=500)
    last = np.minimum(rng.geometric(0.2, size=500) - 1, 24)
    assert_png(plot_cluster_sizes({"cycle 1": first, "cycle 30": last}, tmp_path / "sizes.png", k=30))
    assert_png(plot_cluster_sizes(last, tmp_path / "sizes_one.png"))
    with pytest.raises(DataError, match="but k = 10"):
        plot_cluster_sizes(first, tmp_path / "bad.png", k=10)
    with pytest.raises(DataError, match="1-D array"):
        plot_cluster_sizes(first.reshape(20, 25), tmp_path / "bad.png")


# --- curves --------------------------------------------------------------------------------------


def _records(n: int, labels: bool = True) -> list[dict]:
    out = []
    for c in range(1, n + 1):
        rec = {"cycle": c, "loss": 2.0 / c, "train_acc": 1 - 1 / (c + 1), "clustered": True, "k": 10,
               "nmi_prev": None if c == 1 else 0.5 + 0.05 * c,
               "seconds": {"features": 1.5, "pca": 0.1, "clustering": 0.2, "training": 4.0 + c}}
        if labels:
            rec |= {"nmi_labels": 0.4 + 0.02 * c, "ari_labels": 0.3, "acc_labels": 0.5}
        out.append(rec)
    return out


def test_plot_training_curves(tmp_path):
    assert_png(plot_training_curves({"fmnist": _records(5)}, tmp_path / "curves.png"))
    assert_png(plot_training_curves({"folder": _records(5, labels=False)}, tmp_path / "nolab.png"))
    assert_png(plot_training_curves({"a": _records(4), "b": _records(6, labels=False)}, tmp_path / "two.png"))
    sparse = [{"cycle": 1, "loss": 1.0}, {"cycle": 2, "loss": float("nan")}, {"cycle": 3}]
    assert_png(plot_training_curves({"sparse": sparse}, tmp_path / "sparse.png"))
    with pytest.raises(DataError, match="no training metrics"):
        plot_training_curves({}, tmp_path / "bad.png")
    with pytest.raises(DataError, match="list of per-cycle records"):
        plot_training_curves({"a": {"loss": 1.0}}, tmp_path / "bad.png")


def test_plot_cycle_metrics(tmp_path):
    rows = [{"cycle": c, "nmi": 0.3 + 0.05 * c, "ari": 0.2 + 0.03 * c, "acc": 0.4 + 0.04 * c,
             "nmi_prev": None if c == 1 else 0.8} for c in range(1, 6)]
    unlabelled = [{"cycle": c, "nmi": None, "ari": None, "acc": None, "nmi_prev": 0.7 + 0.01 * c} for c in range(2, 6)]
    assert_png(plot_cycle_metrics({"labelled": rows, "unlabelled": unlabelled}, tmp_path / "cycles.png"))
    assert_png(plot_cycle_metrics({"unlabelled": unlabelled}, tmp_path / "cycles_nolab.png"))
    assert_png(plot_cycle_metrics({"one": [{"cycle": 1}]}, tmp_path / "cycles_empty.png"))
    with pytest.raises(DataError, match="no cycle metrics"):
        plot_cycle_metrics({}, tmp_path / "bad.png")

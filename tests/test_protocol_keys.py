"""Config keys of the Deep Dive authors' protocol, usable everywhere: resize-then-centre-crop,
explicit normalisation, scikit-learn's k-means (configs/papers/deep_dive_fmnist.yaml)."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from deepcluster.cluster import kmeans
from deepcluster.core.config import TrainConfig, build_config
from deepcluster.core.errors import ConfigError, DataError
from deepcluster.data.base import resize_center_crop
from deepcluster.data.registry import load_dataset
from deepcluster.data.splits import normalization

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "papers" / "deep_dive_fmnist.yaml"


def test_resize_then_centre_crop_is_torchvisions(fmnist_dir):
    raw = load_dataset("fashion-mnist", fmnist_dir, limit=50, seed=3)
    got = load_dataset("fashion-mnist", fmnist_dir, image_size=32, resize=44, limit=50, seed=3)
    assert tuple(got.images.shape) == (50, 1, 32, 32) and got.images.dtype == torch.uint8
    want = TF.center_crop(TF.resize(raw.images, 44, antialias=True), [32, 32])
    assert torch.equal(got.images, want)
    assert (got.labels == raw.labels).all()


def test_resize_is_refused_where_it_cannot_apply(tmp_path):
    with pytest.raises(DataError, match="in-memory datasets"):
        load_dataset("digits", resize=12, image_size=8)
    with pytest.raises(DataError, match="data.resize to at least 32"):
        resize_center_crop(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), 20, 32)


def test_explicit_normalisation():
    cfg = build_config(TrainConfig, "digits_tiny", ["data.mean=[0.25]", "data.std=[0.5]"])
    assert normalization(cfg, 1) == ((0.25,), (0.5,))
    with pytest.raises(ConfigError, match="1 values but the images have 3 channels"):
        normalization(cfg, 3)
    with pytest.raises(ConfigError, match="together"):
        build_config(TrainConfig, "digits_tiny", ["data.mean=[0.25]"])
    with pytest.raises(ConfigError, match="one value per channel"):
        build_config(TrainConfig, "digits_tiny", ["data.mean=[0.1, 0.2]", "data.std=[0.1, 0.2]"])


def test_sklearn_kmeans_gives_scikit_learns_labels():
    from sklearn.cluster import KMeans

    x = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
    ours = kmeans(x, 5, niter=20, seed=7, algorithm="sklearn")
    theirs = KMeans(n_clusters=5, n_init=1, max_iter=20, random_state=7).fit(x)
    assert (ours.assignments == theirs.labels_).all()
    assert ours.loss == pytest.approx(theirs.inertia_, rel=1e-4)
    with pytest.raises(ValueError, match="'faiss' or 'sklearn'"):
        kmeans(x, 5, algorithm="elkan")


def test_the_papers_config_is_the_protocol():
    cfg = build_config(TrainConfig, str(PAPER))
    assert (cfg.model.arch, cfg.k, cfg.pca_dim, cfg.cycles, cfg.seed) == ("lenet5", 5, None, 50, 61)
    assert (cfg.data.resize, cfg.data.image_size, cfg.data.mean, cfg.data.std) == (44, 32, [0.286], [0.3205])
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size) == (0.1, 0.1, 1e-3, 128)
    assert cfg.data.augment.crop_scale_min == 0.08 and not cfg.data.augment.hflip
    from deepcluster.runs import build_network

    net = build_network(cfg, 1, 32)
    assert net.features[0].padding == (0, 0)  # LeNet at 32 px: no padding, as theirs
    x = torch.zeros(2, 1, 32, 32)
    assert net.layer_outputs(x, ["conv2"], flatten=False)["conv2"].shape == (2, 16, 5, 5)


def test_conv2_before_its_pooling_is_a_probe_by_name_only():
    from deepcluster.models.registry import build_model

    net = build_model("lenet5", in_channels=1, input_size=32).eval()
    assert "conv2_prepool" not in net.probe_layers() and "conv2_prepool" in net.probe_layers(extra=True)
    out = net.layer_outputs(torch.zeros(2, 1, 32, 32), ["conv2_prepool", "conv2"], flatten=False)
    assert out["conv2_prepool"].shape == (2, 16, 10, 10) and out["conv2"].shape == (2, 16, 5, 5)
    assert torch.equal(torch.nn.functional.max_pool2d(out["conv2_prepool"], 2), out["conv2"])

"""A tiny trained run (digits, 400 images, 2 cycles: under a second) shared by the evaluation tests."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from deepcluster.core.config import TrainConfig, build_config
from deepcluster.train import train

CONFIG = Path(__file__).parents[2] / "configs" / "digits_tiny.yaml"


def blobs(n, d, classes, spread, seed):
    """Gaussian clusters around well separated centres: linearly separable for a small spread."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d)) * 5
    y = rng.integers(0, classes, n)
    return (centers[y] + rng.normal(size=(n, d)) * spread).astype(np.float32), y


@pytest.fixture(scope="session")
def _tiny_run_master(tmp_path_factory):
    cfg = build_config(TrainConfig, CONFIG, ["threads=1", "epochs_per_cycle=1", "cycles=2", "data.limit=400", "k=10", "checkpoint_every=1"])
    return train(cfg, tmp_path_factory.mktemp("evaluate") / "tiny", show_progress=False).path


@pytest.fixture
def tiny_run(_tiny_run_master, tmp_path):
    """A fresh copy of the tiny run per test (tests write caches and tamper with files)."""
    return Path(shutil.copytree(_tiny_run_master, tmp_path / "tiny"))

"""Data beyond RAM: in memory, streamed through DataLoader workers, or ingested, a run is the same
run; Caron's Algorithm 2 (``pool_subset``) clusters a fresh seeded sample of the pool each cycle."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.formats import make_idx_dataset  # tests/data, on the path as the package "data"
from deepcluster.core.config import TrainConfig, build_config
from deepcluster.core.errors import ConfigError
from deepcluster.data.pool_writer import ingest
from deepcluster.evaluate.cycles import cycle_metrics
from deepcluster.runs import RunFolder
from deepcluster.train import train
from deepcluster.train.cycle import cycle_seed, pool_sample

CONFIG = Path(__file__).parents[2] / "configs" / "digits_tiny.yaml"


def _cfg(*overrides):
    return build_config(TrainConfig, CONFIG, ["threads=1", "epochs_per_cycle=1", "cycles=2", "k=5", "pca_dim=8", "batch_size=32",
                                              *overrides])


def _weights(run):
    return RunFolder(run.path).load_checkpoint("last")["model"]


def _same_run(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    for cycle in a.assignment_cycles():
        assert np.array_equal(a.load_assignments(cycle), b.load_assignments(cycle))
    assert [r["loss"] for r in a.metrics()] == [r["loss"] for r in b.metrics()]


def test_idx_in_memory_and_ingested_streamed_train_the_same(tmp_path):
    make_idx_dataset(tmp_path / "idx", n_train=240, n_test=8)
    ingest(tmp_path / "idx", tmp_path / "pool", show_progress=False)
    memory = train(_cfg("data.name=fashion-mnist", f"data.root={tmp_path / 'idx'}"), tmp_path / "a",
                   show_progress=False)
    streamed = train(_cfg("data.name=ingested", f"data.root={tmp_path / 'pool'}", "data.memory_budget_mb=1"), tmp_path / "b", show_progress=False)
    # 240 × 784 bytes do fit 1 MB: the ingested pool is read into memory
    assert streamed.metrics()[0]["images"].startswith("in memory")
    _same_run(memory, streamed)


def _grey_folder(root, n=160, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30, 26), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i:03d}.png")
    return root


def test_folder_in_memory_streamed_and_ingested_train_the_same(tmp_path):
    src = _grey_folder(tmp_path / "src")
    ingest(src, tmp_path / "pool", size=28, show_progress=False)
    common = ["model.arch=tiny_cnn", "data.image_size=28"]
    memory = train(_cfg("data.name=folder", f"data.root={src}", *common), tmp_path / "a", show_progress=False)
    # a budget of 0 streams everything: images through 2 workers, features computed twice (the
    # first pass fits the PCA, the second reduces) instead of kept at full width
    streamed = train(_cfg("data.name=folder", f"data.root={src}", "data.workers=2", "data.memory_budget_mb=0",
                          *common), tmp_path / "b", show_progress=False)
    ingested = train(_cfg("data.name=ingested", f"data.root={tmp_path / 'pool'}", "data.image_size=28",
                          "data.workers=2", "data.memory_budget_mb=0"), tmp_path / "c", show_progress=False)
    assert memory.metrics()[0]["images"].startswith("in memory")
    assert streamed.metrics()[0]["images"].startswith("streamed (2 workers")
    _same_run(memory, streamed)
    _same_run(memory, ingested)


def test_pool_subset_clusters_a_seeded_sample_each_cycle(tmp_path):
    cfg = _cfg("cycles=3", "pool_subset=600")
    run = train(cfg, tmp_path / "run", show_progress=False)
    a1, a2, a3 = (run.load_assignments(c) for c in (1, 2, 3))
    for a in (a1, a2, a3):
        assert a.shape == (1500,) and (a >= 0).sum() == 600 and a.max() < 5
    assert not np.array_equal(a1 >= 0, a2 >= 0)  # a fresh sample each cycle
    assert np.array_equal(np.flatnonzero(a2 >= 0), pool_sample(1500, 600, cycle_seed(cfg.seed, 2)))
    recs = run.metrics()
    assert [r["pool_subset"] for r in recs] == [600, 600, 600]
    assert recs[0]["nmi_prev"] is None and 0 <= recs[1]["nmi_prev"] <= 1
    assert recs[0]["cluster_sizes"]["empty"] == 0
    rows = cycle_metrics(run.path)
    assert [r["n"] for r in rows] == [600, 600, 600] and all(0 <= r["nmi"] <= 1 for r in rows)

    # killed after cycle 1 and resumed: the same samples, the same weights
    train(cfg, tmp_path / "part", show_progress=False, stop_after=1)
    resumed = train(cfg, tmp_path / "part", resume=True, show_progress=False)
    _same_run(run, resumed)


def test_halting_after_a_sampled_cycle_keeps_its_sample(tmp_path):
    run = train(_cfg("cycles=3", "pool_subset=500", "halt_clustering_after=1"), tmp_path / "run",
                show_progress=False)
    a1, a3 = run.load_assignments(1), run.load_assignments(3)
    assert np.array_equal(a1, a3) and (a1 >= 0).sum() == 500


def test_pool_subset_is_validated_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="pool_subset=2000 is larger than the pool"):
        train(_cfg("pool_subset=2000"), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="k=5 is larger than pool_subset=3"):
        _cfg("pool_subset=3")


def test_evaluation_features_stream_the_same(tmp_path):
    from deepcluster.data import load_dataset
    from deepcluster.data.source import ImageSource
    from deepcluster.evaluate.pooling import extract_pooled_features, pixel_features
    from deepcluster.features import FeatureOptions
    from deepcluster.models import build_model

    make_idx_dataset(tmp_path / "idx", n_train=70, n_test=8)
    ingest(tmp_path / "idx", tmp_path / "pool", show_progress=False)
    in_memory = load_dataset("fashion-mnist", tmp_path / "idx").images_tensor()
    streamed = ImageSource(load_dataset("ingested", tmp_path / "pool"), streamed=True, workers=2)
    model = build_model("lenet5", in_channels=1, input_size=28, num_classes=None, seed=0)
    layers = list(model.probe_layers())
    reader = FeatureOptions((0.5,), (0.5,), batch_size=16, show_progress=False)
    a = extract_pooled_features(model, in_memory, reader, layers=layers)
    b = extract_pooled_features(model, streamed, reader, layers=layers)
    assert all(np.array_equal(a[name], b[name]) for name in layers)
    assert np.array_equal(pixel_features(in_memory), pixel_features(streamed))

"""run_cycle alone (Caron's Algorithm 1, one cycle) and the two optimisers of a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster.core.config import TrainConfig, build_config
from deepcluster.core.errors import TrainingError
from deepcluster.data.source import as_source
from deepcluster.data.splits import load_train_data, normalization
from deepcluster.features import FeatureOptions
from deepcluster.runs import build_network
from deepcluster.train.cycle import CycleTargets, make_optimizer, make_top_optimizer, run_cycle

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "digits_tiny.yaml"


@pytest.fixture(scope="module")
def setup():
    cfg = build_config(TrainConfig, CONFIG, ["data.limit=300", "k=8", "pca_dim=8", "precision=fp32"])
    images = load_train_data(cfg).images_tensor()
    reader = FeatureOptions(*normalization(cfg, 1), batch_size=cfg.feature_batch_size, show_progress=False)
    return cfg, images, reader


def _cycle(cfg, images, reader, *, kept=None, seed=0):
    model = build_network(cfg, 1, int(images.shape[-1]))
    if kept is not None:
        model.reset_top_layer(kept.k, generator=torch.Generator().manual_seed(1))
    optimizer = make_optimizer(model, cfg)
    out = run_cycle(model, as_source(images), optimizer, cfg, reader, cycle=1,
                    generator=torch.Generator().manual_seed(seed), kept=kept)
    return model, out


def test_run_cycle_clusters_then_trains_a_new_top_layer(setup):
    cfg, images, reader = setup
    model, out = _cycle(cfg, images, reader)
    t = out.targets
    assert t.clustered and t.k == 8 and t.positions is None
    assert t.assignments.shape == (300,) and set(np.unique(t.assignments)) == set(range(8))  # no empty cluster
    assert model.top_layer.out_features == 8
    assert list(out.seconds) == ["features", "pca", "clustering", "training"]
    assert set(out.epoch) == {"loss", "train_acc"} and np.isfinite(out.epoch["loss"])


def test_run_cycle_is_a_function_of_its_inputs(setup):
    cfg, images, reader = setup
    a, out_a = _cycle(cfg, images, reader)
    b, out_b = _cycle(cfg, images, reader)
    assert np.array_equal(out_a.targets.assignments, out_b.targets.assignments)
    assert out_a.epoch == out_b.epoch
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_run_cycle_on_kept_targets_skips_clustering_and_keeps_the_top_layer(setup):
    cfg, images, reader = setup
    labels = np.arange(300) % 5
    kept = CycleTargets(assignments=labels, k=5, clustered=False)
    model = build_network(cfg, 1, int(images.shape[-1]))
    model.reset_top_layer(5, generator=torch.Generator().manual_seed(1))
    top = model.top_layer
    out = run_cycle(model, as_source(images), make_optimizer(model, cfg), cfg, reader, cycle=3,
                    generator=torch.Generator().manual_seed(0), kept=kept)
    assert model.top_layer is top  # trained on, not replaced
    assert out.targets is kept and list(out.seconds) == ["training"]


def test_run_cycle_with_a_pool_sample_trains_on_the_sample_only(setup):
    cfg, images, reader = setup
    cfg = cfg.model_copy(update={"pool_subset": 120})
    _, out = _cycle(cfg, images, reader)
    t = out.targets
    assert t.positions is not None and len(t.positions) == 120
    assert (t.assignments >= 0).sum() == 120 and np.array_equal(np.flatnonzero(t.assignments >= 0), t.positions)


def test_make_optimizer_decays_everything_by_default_and_leaves_out_the_top_layer(setup):
    cfg, images, _ = setup
    model = build_network(cfg, 1, int(images.shape[-1]))
    model.reset_top_layer(4)
    opt = make_optimizer(model, cfg)
    assert len(opt.param_groups) == 1
    ids = {id(p) for p in opt.param_groups[0]["params"]}
    assert not ids & {id(p) for p in model.top_layer.parameters()}
    assert ids == {id(p) for n, p in model.named_parameters() if not n.startswith("top_layer.")}
    assert opt.param_groups[0]["weight_decay"] == cfg.weight_decay and opt.param_groups[0]["momentum"] == cfg.momentum


def test_make_optimizer_without_decay_of_norms_and_biases(setup):
    cfg, images, _ = setup
    cfg = cfg.model_copy(update={"decay_norm_and_bias": False})
    model = build_network(cfg, 1, int(images.shape[-1]))
    opt = make_optimizer(model, cfg)
    decayed, free = opt.param_groups
    assert all(p.ndim > 1 for p in decayed["params"]) and decayed["weight_decay"] == cfg.weight_decay
    assert all(p.ndim <= 1 for p in free["params"]) and free["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(free["params"]) == len(list(model.parameters()))


def test_the_top_layer_gets_a_fresh_sgd_without_momentum(setup):
    cfg, images, _ = setup
    model = build_network(cfg, 1, int(images.shape[-1]))
    model.reset_top_layer(4)
    top = make_top_optimizer(model, cfg)
    assert [id(p) for p in top.param_groups[0]["params"]] == [id(p) for p in model.top_layer.parameters()]
    assert top.param_groups[0]["momentum"] == 0 and top.param_groups[0]["lr"] == cfg.lr


def test_a_diverging_loss_stops_the_epoch_with_one_clear_error(setup):
    cfg, images, reader = setup
    cfg = cfg.model_copy(update={"lr": 1e30})
    with pytest.raises(TrainingError, match="non-finite.*lower lr"):
        _cycle(cfg, images, reader)


def test_a_last_batch_of_one_image_joins_the_one_before(setup):
    cfg, images, reader = setup  # 300 images in batches of 13: the last has 1 (BatchNorm cannot train on it)
    cfg = cfg.model_copy(update={"batch_size": 13})
    _, out = _cycle(cfg, images, reader)
    assert np.isfinite(out.epoch["loss"])

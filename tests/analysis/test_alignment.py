"""Initial Alignment: definition, stacked vs one-at-a-time, labels, outputs, init=best_ia."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepcluster.analysis.alignment import (
    IAResult,
    apply_setting,
    initial_alignment,
    labels_for_ia,
    recommend,
    resolve_init,
)
from deepcluster.analysis.ia_report import write_ia_outputs
from deepcluster.analysis.stacked import can_stack, stacked_embed
from deepcluster.cluster import Preprocessor, kmeans, nmi
from deepcluster.core.config import TrainConfig, build_config
from deepcluster.core.errors import ConfigError, DataError
from deepcluster.core.precision import Precision, run_precision
from deepcluster.data.splits import load_train_data, normalization
from deepcluster.features import FeatureOptions, extract_features
from deepcluster.models import build_model
from deepcluster.models.base import DeepClusterNet
from deepcluster.runs import build_network
from deepcluster.train import train
from deepcluster.train.cycle import cycle_seed


@pytest.fixture(scope="module")
def cfg():
    return build_config(TrainConfig, "configs/digits_tiny.yaml", ["k=10"])


@pytest.fixture(scope="module")
def data(cfg):
    return load_train_data(cfg)


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_ia_is_nmi_of_kmeans_on_random_features(cfg, data, precision):
    """IA(θ_s, k) computed by hand: seeded network, training's preprocessing, seeded k-means, NMI."""
    cfg = apply_setting(cfg, {"precision": precision})
    seed = 7
    model = build_network(cfg, 1, 28, seed=seed)
    x = extract_features(model, data.images_tensor(), FeatureOptions(*normalization(cfg, 1), show_progress=False,
                                                                     precision=run_precision(cfg, "cpu")))["embed"]
    x = Preprocessor(pca_dim=cfg.pca_dim, eigen_power=-0.5, on_degenerate="truncate").fit_transform(x)
    expected = nmi(data.labels, kmeans(x, cfg.k, niter=cfg.kmeans_iters, seed=cycle_seed(seed, 1)).assignments)
    loop = initial_alignment(cfg, [seed], data=data, method="loop", show_progress=False)
    assert loop.values[0] == pytest.approx(expected, abs=1e-12)
    assert loop.precision == run_precision(cfg, "cpu").label
    if precision == "fp32":  # bf16's rounding moves k-means more than the stacked sums' reordering
        stacked = initial_alignment(cfg, [seed], data=data, method="stacked", show_progress=False)
        assert stacked.values[0] == pytest.approx(expected, abs=2e-3)


def test_ia_equals_cycle_one_nmi_of_training(cfg, data, tmp_path):
    """Sample s is what cycle 1 of a run with seed s clusters."""
    run_cfg = apply_setting(cfg, {"seed": 3, "cycles": 1})
    train(run_cfg, tmp_path / "run", show_progress=False)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    ia = initial_alignment(run_cfg, [3], data=data, method="loop", show_progress=False).values[0]
    assert ia == pytest.approx(record["nmi_labels"], abs=1e-9)


@pytest.mark.parametrize("arch,sobel", [("tiny_cnn", False), ("lenet5", False), ("lenet5", True)])
def test_stacked_and_loop_give_the_same_ia(cfg, data, arch, sobel):
    c = apply_setting(cfg, {"model.arch": arch, "model.sobel": sobel, "precision": "fp32"})
    seeds = range(4)
    a = initial_alignment(c, seeds, data=data, method="stacked", models_per_pass=3, show_progress=False)
    b = initial_alignment(c, seeds, data=data, method="loop", show_progress=False)
    assert a.method == "stacked" and b.method == "loop"
    np.testing.assert_array_equal(a.seeds, b.seeds)
    # float rounding (folded BatchNorm) can move a border point between clusters: NMI moves by ~1e-4
    np.testing.assert_allclose(a.values, b.values, atol=2e-3)


@pytest.mark.parametrize("arch,size,sobel", [("lenet5", 28, True), ("small_alexnet", 32, True), ("alexnet", 64, False),
                                             ("tiny_cnn", 28, False)])
def test_stacked_features_equal_single_network_features(arch, size, sobel):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3 if arch == "alexnet" else 1, size, size), dtype=torch.uint8, generator=g)
    ch = images.shape[1]
    models = [build_model(arch, in_channels=ch, input_size=size, sobel=sobel, num_classes=None, seed=s) for s in range(3)]
    mean, std = (0.5,) * ch, (0.25,) * ch
    stacked = stacked_embed(models, images, mean, std, batch_size=16, show_progress=False)
    single = np.stack([extract_features(m, images, FeatureOptions(mean, std, show_progress=False))["embed"]
                       for m in models])
    np.testing.assert_allclose(stacked, single, rtol=1e-4, atol=1e-5 * np.abs(single).max())
    # bf16 (with the fused first conv + pool GEMM for LeNet-like bodies): within bf16's rounding
    bf16 = stacked_embed(models, images, mean, std, batch_size=16, show_progress=False,
                         precision=Precision("bf16", channels_last=True))
    assert np.abs(bf16 - single).max() <= 0.02 * np.abs(single).max()


def test_unsupported_layers_fall_back_to_the_loop(cfg, data):
    odd = DeepClusterNet(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU()), nn.Sequential(nn.Linear(4 * 26 * 26, 8)), 8,
                         probe_layers={"conv1": "features.1"}, default_probe_layer="conv1")
    assert not can_stack(odd)
    assert can_stack(build_model("lenet5", in_channels=1, input_size=28, sobel=False, num_classes=None, seed=0))
    res = initial_alignment(apply_setting(cfg, {"cluster_layer": "conv2"}), [0], data=data, show_progress=False)
    assert res.method == "loop"  # a probe layer is clustered: the loop handles it


def test_labelled_subset_scores_only_those_images(cfg, data):
    labels = labels_for_ia(data, labelled=200, seed=0)
    assert (labels >= 0).sum() == 200 and set(np.unique(labels[labels >= 0])) <= set(np.unique(data.labels))
    sub = initial_alignment(cfg, [1], data=data, labels=labels, method="loop", show_progress=False)
    full = initial_alignment(cfg, [1], data=data, method="loop", show_progress=False)
    assert sub.n_labelled == 200 and full.n_labelled == len(data)
    assert sub.values[0] != full.values[0]
    with pytest.raises(ConfigError, match="labelled"):
        labels_for_ia(data, labelled=10**6)


def test_label_files(cfg, data, tmp_path):
    arr = np.full(len(data), -1)
    arr[:50] = data.labels[:50]
    np.save(tmp_path / "l.npy", arr)
    assert (labels_for_ia(data, label_file=tmp_path / "l.npy") >= 0).sum() == 50
    (tmp_path / "l.csv").write_text("index,label\n" + "".join(f"{i},{data.labels[i]}\n" for i in range(30)))
    got = labels_for_ia(data, label_file=tmp_path / "l.csv")
    assert (got >= 0).sum() == 30 and (got[:30] == data.labels[:30]).all()
    (tmp_path / "bad.csv").write_text("img,cls\n1,2\n")
    with pytest.raises(DataError, match="index,label"):
        labels_for_ia(data, label_file=tmp_path / "bad.csv")
    np.save(tmp_path / "short.npy", arr[:10])
    with pytest.raises(DataError, match="one per image"):
        labels_for_ia(data, label_file=tmp_path / "short.npy")


def _res(setting, values):
    return IAResult(seeds=np.arange(len(values)), values=np.asarray(values, float), k=setting.get("k", 10),
                    setting=setting)


def test_recommend_prefers_the_cheaper_setting_on_a_near_tie():
    a, b, c = _res({"k": 10}, [0.40, 0.41, 0.42]), _res({"k": 200}, [0.405, 0.415, 0.43]), _res({"k": 5}, [0.2, 0.3, 0.3])
    assert recommend([a, b, c], tie=0.01).setting == {"k": 10}
    assert recommend([a, b, c], tie=0.0).setting == {"k": 200}
    assert recommend([_res({"pca_dim": None}, [0.5]), _res({"pca_dim": 32}, [0.5])]).setting == {"pca_dim": 32}


def test_outputs_and_figure(tmp_path):
    results = [_res({"k": 5}, [0.3, 0.35, 0.32, 0.31]), _res({"k": 20}, [0.5, 0.52, 0.49, 0.55])]
    rec = write_ia_outputs(results, tmp_path)
    assert rec["setting"] == {"k": 20} and rec["best_seed"] == 3
    for name in ("samples.csv", "samples.json", "summary.csv", "summary.md", "seed_ranking.csv", "ia_distribution.png",
                 "figures/ia_k=5.png", "figures/ia_k=20.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "ia_distribution.png").read_bytes()[:4] == b"\x89PNG"
    assert "**(recommended)**" in (tmp_path / "summary.md").read_text()
    assert len((tmp_path / "samples.csv").read_text().splitlines()) == 9


def test_bad_setting_is_a_config_error(cfg):
    with pytest.raises(ConfigError, match="kk"):
        apply_setting(cfg, {"kk": 3})


def test_train_from_the_best_ia_initialisation(cfg, tmp_path):
    run_cfg = apply_setting(cfg, {"init": "best_ia:3", "cycles": 1})
    with pytest.raises(ValueError, match="resolve_init"):  # training never calls up into analysis
        train(run_cfg, tmp_path / "unresolved", show_progress=False)
    assert not (tmp_path / "unresolved").exists()
    run_cfg, init_ia = resolve_init(run_cfg, show_progress=False)
    train(run_cfg, tmp_path / "run", init_ia=init_ia, show_progress=False)
    rec = json.loads((tmp_path / "run" / "init_ia.json").read_text())
    best = max(rec["candidates"], key=rec["candidates"].get)
    assert rec["chosen_seed"] == int(best) and rec["ia"] == rec["candidates"][best]
    saved = build_config(TrainConfig, tmp_path / "run" / "config.yaml")
    assert saved.init_seed == int(best) and saved.network_seed == int(best)
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["init_ia"] == rec["ia"]
    with pytest.raises(Exception, match="best_ia"):
        apply_setting(cfg, {"init": "best_ia:x"})


def test_fused_first_conv_relu_pool_is_conv_relu_pool_in_bf16():
    from concurrent.futures import ThreadPoolExecutor

    from deepcluster.analysis.stacked import _first_conv_relu_pool

    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(12, 3, 5, 5, generator=g), torch.randn(12, generator=g)
    op = _first_conv_relu_pool(w.bfloat16(), b.bfloat16(), (2, 2))
    for n in (5, 3, 5):  # the buffers follow the batch size
        x = torch.randn(n, 3, 16, 16, generator=g).bfloat16().contiguous(memory_format=torch.channels_last)
        ref = F.max_pool2d(F.relu(F.conv2d(x.float(), w.bfloat16().float(), b.bfloat16().float(), padding=2)), 2)
        got = op(x)
        assert got.shape == ref.shape and got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())
        with ThreadPoolExecutor(1) as pool:  # another thread gets buffers of its own, and the same answer
            assert torch.equal(pool.submit(op, x).result(), got)


def test_relu_max_of_bf16_from_int16_bits_is_the_bf16_answer():
    from deepcluster.analysis.stacked import _relu_max_bf16, _relu_pool2x2_bf16

    g = torch.Generator().manual_seed(2)
    parts = [torch.randn(300, 7, generator=g).bfloat16() for _ in range(4)]
    parts[0][:5] = torch.tensor([float("inf"), -float("inf"), 0.0, 1e-40, -1e-40]).bfloat16()[:, None]
    parts[1][:3] = -1.0  # with rows all negative below
    for p in parts[2:]:
        p[:3] = -2.0
    parts[0][1:3] = -3.0
    want = torch.stack([p.float() for p in parts]).amax(0).relu().bfloat16()
    assert torch.equal(_relu_max_bf16(*parts).view(torch.int16), want.view(torch.int16))
    x = torch.randn(3, 6, 8, 10, generator=g).bfloat16().contiguous(memory_format=torch.channels_last)
    got = _relu_pool2x2_bf16(x)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.float(), F.max_pool2d(x.float(), 2).relu())

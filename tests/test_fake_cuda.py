"""Every path that places tensors, run as if on a GPU (fake CUDA tensors, see tests/fake_cuda.py).

No GPU exists here or in CI; these tests catch a CPU tensor meeting a CUDA one (the crash every
first GPU run would hit), not numbers or speed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.fake_cuda import CUDA, devices, fake_cuda

from deepcluster.core.config import TrainConfig, build_config
from deepcluster.core.precision import FP32
from deepcluster.data.source import as_source
from deepcluster.data.splits import load_train_data, normalization
from deepcluster.features import FeatureOptions, extract_features
from deepcluster.runs import build_network
from deepcluster.train.cycle import make_optimizer, make_top_optimizer, train_epoch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def digits():
    cfg = build_config(TrainConfig, CONFIGS / "digits_tiny.yaml",
                       ["data.limit=64", "k=4", "pca_dim=8", "precision=fp32", "batch_size=16",
                        "data.augment.random_resized_crop=true", "data.augment.hflip=true"])
    images = load_train_data(cfg).images_tensor()
    return cfg, images


def _reader(cfg, channels=1, device=CUDA):
    return FeatureOptions(*normalization(cfg, channels), device=device, precision=FP32, batch_size=32,
                          show_progress=False)


def test_model_building_and_top_layer_reset_stay_on_the_gpu(digits):
    cfg, images = digits
    with fake_cuda():
        model = build_network(cfg, 1, int(images.shape[-1])).to(CUDA)
        model.reset_top_layer(4, generator=torch.Generator().manual_seed(0))
        model.top_layer.to(CUDA)
        assert devices(model) == {CUDA}
        out = model(torch.zeros(2, 1, images.shape[-1], images.shape[-1], device=CUDA))
        assert out.device == CUDA and out.shape == (2, 4)


def test_a_training_epoch_on_the_gpu(digits):
    cfg, images = digits
    pseudo = np.arange(len(images)) % 4
    with fake_cuda():
        model = build_network(cfg, 1, int(images.shape[-1])).to(CUDA)
        model.reset_top_layer(4, generator=torch.Generator().manual_seed(0))
        model.top_layer.to(CUDA)
        # (a pinned source's read-ahead thread is tested in tests/data: fake tensors cannot cross threads)
        stats = train_epoch(model, as_source(images), pseudo, make_optimizer(model, cfg),
                            make_top_optimizer(model, cfg), cfg, _reader(cfg),
                            generator=torch.Generator().manual_seed(0), sampler_seed=0)
        assert set(stats) == {"loss", "train_acc"}
        assert devices(model) == {CUDA}


def test_feature_extraction_from_the_gpu(digits):
    cfg, images = digits
    with fake_cuda():
        model = build_network(cfg, 1, int(images.shape[-1])).to(CUDA)
        feats = extract_features(model, images, _reader(cfg))
        assert feats["embed"].shape == (len(images), model.feature_dim)
        probes = extract_features(model, images, _reader(cfg), layers=list(model.probe_layers())[:2])
        assert len(probes) == 2


# ---------------------------------------------------------------------------------------------
# Whole commands' library calls, on a run trained for real on the CPU: its config says
# ``device: auto``, which inside fake_cuda() resolves to the GPU, as on a machine with one.


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from deepcluster.train import train

    cfg = build_config(TrainConfig, CONFIGS / "digits_tiny.yaml",
                       ["data.limit=120", "k=4", "pca_dim=8", "cycles=1", "precision=fp32", "threads=1", "epochs_per_cycle=1"])
    out = tmp_path_factory.mktemp("fake_cuda") / "run"
    train(cfg, out, show_progress=False)
    return out


def test_evaluation_sizes_its_layers_and_pools_on_the_gpu(tiny_run, tmp_path):
    from deepcluster.evaluate.suite import evaluate_suite

    with fake_cuda():
        rows = evaluate_suite([tiny_run], checkpoints=["last"], layers=["conv1", "conv2"], protocols=["knn"],
                              eval_cfg={"train_limit": 60, "test_limit": 30}, use_cache=False, show_progress=False)
    assert {r["layer"] for r in rows} >= {"conv1", "conv2"}


def test_initial_alignment_stacked_and_looped_on_the_gpu(tiny_run):
    from deepcluster.analysis.alignment import initial_alignment
    from deepcluster.runs import RunFolder

    cfg = RunFolder(tiny_run).load_config()
    with fake_cuda():
        for method in ("stacked", "loop"):
            res = initial_alignment(cfg, [0, 1], method=method, show_progress=False)
            assert len(res.values) == 2


def test_torch_kmeans_and_assignment_on_the_gpu():
    from deepcluster.cluster.faiss_kmeans import assign_nearest
    from deepcluster.cluster.torch_kmeans import torch_kmeans

    x = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    with fake_cuda():
        centroids, _ = torch_kmeans(x, 5, niter=3, seed=0, device=CUDA)
        assert centroids.shape == (5, 8)
        assert assign_nearest(x, centroids, device="cuda:0").shape == (200,)


def test_pca_moments_on_the_gpu():
    from deepcluster.cluster.preprocess import Preprocessor

    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    with fake_cuda():
        pre = Preprocessor(pca_dim=4, eigen_power=0.0, device=CUDA)  # fake eigenvalues have no sign to whiten by
        pre.partial_fit(x[:150]).partial_fit(x[150:])
        pre.finalize()
        assert pre.transform(x).shape == (300, 4)


def test_similarity_and_ensembles_on_the_gpu(tiny_run):
    from deepcluster.interpret.cka import similarity_for_runs
    from deepcluster.interpret.ensemble import ensembles_for_runs

    with fake_cuda():
        sim = similarity_for_runs([tiny_run, tiny_run], names=["a", "b"], layers=["conv1", "conv2"], sample=50)
        assert sim is not None
        ens = ensembles_for_runs([tiny_run, tiny_run], names=["a", "b"], train_limit=60, test_limit=30)
        assert ens is not None


def test_dissection_reads_its_probe_onto_the_gpu(tiny_run, tmp_path):
    """Pass 1 (probe reader, forward to the layer, quantiles, top images) and pass 2's reading and
    tallies of the concepts run on the GPU up to the first operator whose output shape depends on
    the activations' values (``nonzero`` of the units above threshold), where fake tensors stop:
    a device mismatch before it would raise a different error."""
    from torch._subclasses.fake_tensor import DynamicOutputShapeException

    from deepcluster.interpret.concepts import make_concept_probe
    from deepcluster.interpret.dissect import DissectOptions, dissect
    from deepcluster.runs import RunFolder, build_network

    probe = make_concept_probe(tmp_path / "probe", n_images=12, size=28, show_progress=False)
    cfg = RunFolder(tiny_run).load_config()
    model = build_network(cfg, 1, 8)
    # feature_cache_mb=0: the cache is addressed by the probe's row numbers, which fake tensors do not hold
    options = DissectOptions(device="cuda", num_workers=0, batch_size=4, feature_cache_mb=0, show_progress=False)
    with fake_cuda(), pytest.raises(DynamicOutputShapeException, match="nonzero"):
        dissect(model, "conv2", probe, options, input_size=8, mean=(0.5,), std=(0.5,), grey=True)


def test_clustering_stays_on_the_gpu_it_is_given(digits):
    """``device: cuda:1`` (or a rank's own GPU): PCA moments and k-means there, nothing on cuda:0."""
    from unittest import mock

    from deepcluster.cluster import preprocess_and_cluster

    cfg, _ = digits
    x = np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32)
    with fake_cuda(), mock.patch("torch.cuda.device_count", lambda: 2):
        step = preprocess_and_cluster(x, cfg.model_copy(update={"whiten": False}), seed=0, device="cuda:1")
        assert step.result.assignments.shape == (200,)

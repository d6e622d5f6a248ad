"""precision: fp32 / bf16 / auto for every forward pass; fp32 weights and optimiser either way."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import deepcluster.core.precision as prec
from deepcluster.cli import app
from deepcluster.core.config import TrainConfig, build_config
from deepcluster.core.errors import ConfigError
from deepcluster.core.precision import FP32, Precision, resolve_precision
from deepcluster.runs import RunFolder
from deepcluster.train import train

CONFIG = Path(__file__).parents[1] / "configs" / "digits_tiny.yaml"


def test_auto_follows_the_hardware_and_bf16_where_unsupported_is_refused(monkeypatch):
    monkeypatch.setattr(prec, "bf16_supported", lambda device: False)
    assert resolve_precision("auto", "cpu") == FP32
    with pytest.raises(ConfigError, match="precision=fp32 or precision=auto"):
        resolve_precision("bf16", "cpu")
    monkeypatch.setattr(prec, "bf16_supported", lambda device: True)
    assert resolve_precision("auto", "cpu") == Precision("bf16", "cpu", channels_last=True)
    assert resolve_precision("fp32", "cpu", channels_last=True).label == "fp32+channels_last"
    assert resolve_precision("bf16", "cpu", channels_last=False).label == "bf16"
    with pytest.raises(ConfigError, match="precision 'fp16'"):
        resolve_precision("fp16", "cpu")


def test_bf16_on_hardware_without_it_is_one_line_and_exit_2(monkeypatch, tmp_path):
    monkeypatch.setattr(prec, "bf16_supported", lambda device: False)
    res = CliRunner().invoke(app, ["train", "-c", str(CONFIG), "--set", "precision=bf16", "-o", str(tmp_path / "r")])
    assert res.exit_code == 2 and "use precision=fp32 or precision=auto" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_inference_restores_the_model_layout_and_returns_fp32():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())
    p = Precision("bf16", channels_last=True)
    with p.inference(model):
        assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
        out = model(p.input(torch.randn(2, 1, 8, 8)))
    assert out.dtype == torch.bfloat16
    assert model[0].weight.is_contiguous() and model[0].weight.dtype == torch.float32


@pytest.mark.skipif(not prec.bf16_supported("cpu"), reason="this CPU has no native bf16")
def test_a_bf16_run_keeps_fp32_weights_records_its_precision_and_resumes_exactly(tmp_path):
    cfg = build_config(TrainConfig, CONFIG, ["cycles=3", "threads=1", "epochs_per_cycle=1", "precision=bf16"])
    whole = train(cfg, tmp_path / "whole", show_progress=False)
    part = tmp_path / "part"
    train(cfg, part, show_progress=False, stop_after=1)
    train(RunFolder(part).load_config(), part, resume=True, show_progress=False)
    a, b = whole.load_checkpoint("last"), RunFolder(part).load_checkpoint("last")
    assert all(v.dtype == torch.float32 for v in a["model"].values() if v.is_floating_point())
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["precision"] for r in whole.metrics()] == ["bf16+channels_last"] * 3
    for x, y in zip(whole.metrics(), RunFolder(part).metrics()):
        x.pop("seconds"), y.pop("seconds")
        assert x == y


def test_fp32_differs_from_bf16_and_a_folder_without_the_key_is_fp32(tmp_path):
    cfg = build_config(TrainConfig, CONFIG, ["cycles=1", "threads=1", "epochs_per_cycle=1", "precision=fp32"])
    run = train(cfg, tmp_path / "fp32", show_progress=False)
    assert run.metrics()[0]["precision"] == "fp32"
    raw = yaml.safe_load(run.config_path.read_text())
    raw.pop("precision")  # written by 0.1, which trained in fp32
    run.config_path.write_text(yaml.safe_dump(raw))
    assert run.load_config().precision == "fp32"
    assert json.loads(run.metrics_path.read_text().splitlines()[0])["precision"] == "fp32"
    if prec.bf16_supported("cpu"):
        other = train(build_config(TrainConfig, CONFIG, ["cycles=1", "threads=1", "epochs_per_cycle=1", "precision=bf16"]), tmp_path / "bf16",
                      show_progress=False)
        a, b = run.load_checkpoint("last")["model"], other.load_checkpoint("last")["model"]
        assert any(not torch.equal(a[k], b[k]) for k in a)  # bf16 really ran
        assert np.isclose(run.metrics()[0]["loss"], other.metrics()[0]["loss"], rtol=0.05)


def test_fp32_turns_tf32_off_for_convolutions_and_matrix_products():
    from deepcluster.core.precision import resolve_precision

    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for cuDNN convolutions
    assert resolve_precision("fp32", "cpu").name == "fp32"
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert "tf32" not in (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    with torch.backends.cudnn.flags(enabled=True):  # PyTorch's own readers of the flags still work
        pass


def test_the_deterministic_key_sets_deterministic_algorithms_for_the_run():
    from deepcluster.core.config import TrainConfig
    from deepcluster.core.precision import set_deterministic
    from deepcluster.environment import RunEnv

    try:
        RunEnv.from_config(TrainConfig(deterministic=True, device="cpu"))
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        RunEnv.from_config(TrainConfig(device="cpu"))
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        set_deterministic(False)


def test_deterministic_clustering_on_a_gpu_uses_the_torch_kmeans():
    from deepcluster.cluster.faiss_kmeans import _choose_backend

    backend = _choose_backend(None, "cuda:1", False, deterministic=True)
    assert backend.torch_device == "cuda:1" and not backend.fit_gpu and backend.gpu == 1


def test_a_deterministic_run_trains_and_repeats_itself(tmp_path):
    from deepcluster.core.precision import set_deterministic

    cfg = build_config(TrainConfig, Path(__file__).parents[1] / "configs" / "digits_tiny.yaml",
                       ["data.limit=150", "k=5", "pca_dim=8", "cycles=1", "precision=fp32", "deterministic=true"])
    try:
        a = train(cfg, tmp_path / "a", show_progress=False)
        b = train(cfg, tmp_path / "b", show_progress=False)
    finally:
        set_deterministic(False)
    assert np.array_equal(a.load_assignments(1), b.load_assignments(1))
    assert RunFolder(tmp_path / "a").load_config().deterministic

import pytest

from deepcluster.core.config import TrainConfig, build_config, parse_overrides
from deepcluster.core.errors import ConfigError


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("k: 20\ndata:\n  name: digits\n")
    cfg = build_config(TrainConfig, p, ["lr=0.01", "data.limit=500", "pca_dim=off", "model.sobel=true"])
    assert cfg.k == 20 and cfg.lr == 0.01 and cfg.data.limit == 500
    assert cfg.pca_dim is None and cfg.model.sobel is True


def test_parse_overrides_nested():
    assert parse_overrides(["a.b.c=3", "x=[1, 2]"]) == {"a": {"b": {"c": 3}}, "x": [1, 2]}


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["kk=3"], "kk: unknown key"),
        (["data.nme=x"], "data.nme: unknown key"),
        (["lr=-1"], "lr"),
        (["k=abc"], "k"),
        (["fit_fraction=1.5"], "fit_fraction"),
        (["clustering=spectral"], "clustering"),
        (["device=tpu"], "device"),
        (["novalue"], "expected key=value"),
    ],
)
def test_invalid_configs_are_rejected_with_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        build_config(TrainConfig, None, overrides)
    assert fragment in str(e.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_config(TrainConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("k: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(TrainConfig, bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(TrainConfig, lst)


def test_k_larger_than_limit():
    with pytest.raises(ConfigError, match="larger than data.limit"):
        build_config(TrainConfig, None, ["k=100", "data.limit=50"])


def test_presets_are_valid():
    from pathlib import Path

    presets = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))
    assert len(presets) >= 5
    for p in presets:
        build_config(TrainConfig, p)


def test_apply_overrides_is_the_one_mechanism():
    from deepcluster.core.config import EvalConfig, TrainConfig, apply_overrides

    base = TrainConfig()
    cfg = apply_overrides(TrainConfig, base, {"k": 20, "model.arch": "tiny_cnn", "data": {"limit": 50}})
    assert (cfg.k, cfg.model.arch, cfg.data.limit, cfg.data.name) == (20, "tiny_cnn", 50, base.data.name)
    assert apply_overrides(TrainConfig, base, ["k=30", "data.limit=40"]).data.limit == 40
    ecfg = apply_overrides(EvalConfig, base.eval, {"knn_ks": [5, 1]})
    assert ecfg.knn_ks == [1, 5] and ecfg.probe == base.eval.probe
    with pytest.raises(ConfigError, match=r"invalid config \(my source\): kk: unknown key"):
        apply_overrides(TrainConfig, base, {"kk": 1}, source="my source")
    with pytest.raises(ConfigError, match="k is not a section"):
        apply_overrides(TrainConfig, base, ["k=3", "k.x=1"])


def test_resolve_device():
    import torch

    from deepcluster.core.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda:0")

"""precision: auto per phase: measured once per machine and network, kept in the run folder, used by
a resumed run; fp32 and bf16 are used as written."""

import json

import pytest
import torch

from deepcluster.core.config import TrainConfig, build_config
from deepcluster.core.precision import bf16_supported
from deepcluster.data.splits import load_train_data
from deepcluster.environment import RunEnv
from deepcluster.runs import RunFolder, build_network
from deepcluster.train import train
from deepcluster.train.autoprecision import PhasePrecision, cache_dir, choose_precisions

CONFIG = "digits_tiny"
SETS = ["cycles=2", "threads=1", "epochs_per_cycle=1", "data.limit=300", "k=10", "pca_dim=8"]


def _parts(sets):
    cfg = build_config(TrainConfig, CONFIG, [*SETS, *sets])
    env = RunEnv.from_config(cfg, show_progress=False)
    source = env.source(load_train_data(cfg))
    model = build_network(cfg, source.channels, source.size)
    return cfg, model, source, env.features(source.channels)


def test_fp32_and_bf16_as_written_nothing_measured():
    cfg, model, source, reader = _parts(["precision=fp32"])
    choice = choose_precisions(cfg, model, source, reader)
    assert (choice.features.label, choice.training.label, choice.how, choice.ms) == ("fp32", "fp32", "config", {})


@pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16: auto is fp32, nothing to measure")
def test_auto_measures_each_phase_once_per_machine_and_leaves_the_network_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPCLUSTER_CACHE_DIR", str(tmp_path / "cache"))
    cfg, model, source, reader = _parts([])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = choose_precisions(cfg, model, source, reader)
    assert first.how == "measured" and set(first.ms) == {"features", "training"}
    assert all(set(ms) == {"fp32", "bf16"} and min(ms.values()) > 0 for ms in first.ms.values())
    for phase in ("features", "training"):  # bf16 only where measured at least 1.1x faster
        ms = first.ms[phase]
        assert getattr(first, phase).bf16 == (ms["fp32"] >= 1.1 * ms["bf16"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # measured on a copy
    assert model.top_layer is None
    again = choose_precisions(cfg, model, source, reader)
    assert again.how == "cached" and (again.features, again.training) == (first.features, first.training)
    table = json.loads((cache_dir() / "precision.json").read_text())
    assert len(table) == 1 and next(iter(table.values()))["arch"] == "tiny_cnn"


@pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16")
def test_the_run_folder_keeps_the_choice_and_a_resumed_run_uses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPCLUSTER_CACHE_DIR", str(tmp_path / "cache"))
    cfg, model, source, reader = _parts([])
    # A machine where training measured faster in fp32 and the feature pass in bf16:
    measured = choose_precisions(cfg, model, source, reader)
    path = cache_dir() / "precision.json"
    table = json.loads(path.read_text())
    key = next(iter(table))
    table[key].update(features="bf16+channels_last", training="fp32")
    path.write_text(json.dumps(table))
    assert measured.how == "measured"
    run = train(cfg, tmp_path / "run", show_progress=False, stop_after=1)
    kept = json.loads((run.path / "precision.json").read_text())
    assert (kept["features"], kept["training"], kept["how"]) == ("bf16+channels_last", "fp32", "cached")
    rec = run.metrics()[0]
    assert (rec["precision"], rec["training_precision"]) == ("bf16+channels_last", "fp32")
    # The cache changes (another measurement): the resumed run still computes as the folder says.
    table[key].update(features="fp32", training="bf16+channels_last")
    path.write_text(json.dumps(table))
    train(cfg, tmp_path / "run", resume=True, show_progress=False)
    records = RunFolder(tmp_path / "run").metrics()
    assert [(r["precision"], r.get("training_precision")) for r in records] == [("bf16+channels_last", "fp32")] * 2
    whole = train(cfg.model_copy(update={"precision": "bf16"}), tmp_path / "bf16", show_progress=False)
    assert "training_precision" not in whole.metrics()[0]
    assert json.loads((whole.path / "precision.json").read_text())["how"] == "config"


def test_labels():
    cfg, model, source, reader = _parts(["precision=fp32"])
    p = choose_precisions(cfg, model, source, reader)
    assert p.label == "fp32"
    mixed = PhasePrecision.from_json({"features": "fp32", "training": "fp32"}, torch.device("cpu"), "run folder")
    assert mixed.label == "fp32" and mixed.how == "run folder"


def test_a_corrupt_precision_json_is_one_clear_error(tmp_path):
    from deepcluster.core.errors import TrainingError
    from deepcluster.train.autoprecision import load_precisions

    (tmp_path / "precision.json").write_text('{"features": "fp32"')
    with pytest.raises(TrainingError, match="precision.json is unreadable .*delete it to resume"):
        load_precisions(tmp_path, torch.device("cpu"))
    assert load_precisions(tmp_path / "none", torch.device("cpu")) is None

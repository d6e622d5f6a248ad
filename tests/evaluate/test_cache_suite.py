import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from deepcluster.core.errors import ConfigError, TrainingError
from deepcluster.evaluate import EvalCache, evaluate_suite, suite, write_suite_outputs
from deepcluster.evaluate.tables import pivot_tables

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# Small and fast: two layers, a few SGD epochs, two low-shot n, two draws.
FAST = {"probe_epochs": 2, "knn_ks": [5, 20], "lowshot_n": [1, 5], "lowshot_repeats": 2}


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = suite.run_protocol

    def wrapper(protocol, params, *args, **kwargs):
        calls.append((protocol, params["layer"], params["checkpoint"]["file"] if params["checkpoint"] else None))
        return real(protocol, params, *args, **kwargs)

    monkeypatch.setattr(suite, "run_protocol", wrapper)
    return calls


def run_suite(run, **kw):
    kw.setdefault("eval_cfg", FAST)
    return evaluate_suite([run], ["init", "last"], ["conv2", "fc2"], show_progress=False, **kw)


def test_cache_entry_roundtrip(tmp_path):
    cache = EvalCache(tmp_path / "c")
    params = {"a": 1, "b": [1, 2]}
    assert cache.get("last", "conv1", "knn", params) is None
    path = cache.put("last", "conv1", "knn", params, {"accs": {"5": 0.5}}, seconds=1.0)
    assert path.parent == tmp_path / "c" / "last" / "conv1" and path.name.startswith("knn-")
    assert cache.get("last", "conv1", "knn", {"b": [1, 2], "a": 1})["result"] == {"accs": {"5": 0.5}}
    assert cache.get("last", "conv1", "knn", {"a": 2, "b": [1, 2]}) is None
    path.write_text("{not json")
    assert cache.get("last", "conv1", "knn", params) is None  # unreadable: a miss, recomputed
    cache.put("last", "conv1", "knn", params, {"x": 1})
    assert cache.get("last", "conv1", "knn", params)["result"] == {"x": 1}


def test_second_call_reads_everything_from_the_cache(tiny_run, counted):
    first = run_suite(tiny_run)
    n_first = len(counted)
    assert n_first == 2 * 2 * 3 + 3  # (init, last) × 2 layers × 3 protocols + the pixel baseline
    assert {r["source"] for r in first} == {"computed"}
    second = run_suite(tiny_run)
    assert len(counted) == n_first  # nothing recomputed
    assert {r["source"] for r in second} == {"cache"}
    strip = [{k: v for k, v in r.items() if k not in ("source", "seconds")} for r in first]
    assert strip == [{k: v for k, v in r.items() if k not in ("source", "seconds")} for r in second]
    assert list((tiny_run / "eval" / "cache" / "last" / "conv2").glob("linear-*.json"))


def test_changed_checkpoint_or_parameters_invalidate_only_their_numbers(tiny_run, counted):
    run_suite(tiny_run)
    counted.clear()
    ckpt = tiny_run / "checkpoint.pt"
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as if resumed/retrained
    rows = run_suite(tiny_run)
    assert counted and {c[2] for c in counted} == {"checkpoint.pt"}  # init and pixels stay cached
    assert {r["source"] for r in rows if r["checkpoint"] == "last"} == {"computed"}
    assert {r["source"] for r in rows if r["checkpoint"] != "last"} == {"cache"}
    counted.clear()
    run_suite(tiny_run, eval_cfg={**FAST, "knn_ks": [5]})
    assert {c[0] for c in counted} == {"knn"} and len(counted) == 5
    counted.clear()
    run_suite(tiny_run, use_cache=False)
    assert len(counted) == 15


def test_rows_tables_and_files(tiny_run, tmp_path):
    ecfg = {**FAST, "probe_epochs": 10, "probe_lr": 0.1}
    rows = evaluate_suite([tiny_run], ["init", "2"], None, ["linear", "knn"], eval_cfg=ecfg, pixel_baseline=False,
                          show_progress=False)
    layers = ["conv1", "conv2", "fc1", "fc2"]
    assert [r["layer"] for r in rows if r["metric"] == "k=5"] == layers * 2
    lin = {(r["checkpoint"], r["layer"], r["metric"]): r for r in rows if r["protocol"] == "linear"}
    for ck in ("init", "2"):
        for layer in layers:
            assert lin[(ck, layer, "best_acc")]["value"] >= lin[(ck, layer, "last_acc")]["value"]
            assert 0.6 < lin[(ck, layer, "last_acc")]["value"] <= 1  # digits: far above chance (0.1)
    assert {r["cycle"] for r in rows if r["checkpoint"] == "2"} == {2}
    assert rows[0].keys() >= {"run", "run_name", "checkpoint", "label", "layer", "dim", "protocol", "metric",
                              "value", "std", "source"}

    tables = pivot_tables(rows)
    assert [t.protocol for t in tables] == ["linear", "knn"]
    assert tables[0].header == ["layer", "dim", "random (init)", "cycle 2"]
    assert [r[0] for r in tables[0].rows] == layers and tables[0].rows[0][1] == str(16 * 14 * 14)

    paths = write_suite_outputs(rows, tmp_path / "out", cycles={"tiny": [{"cycle": 1, "nmi": 0.5}]})
    assert {p.name for p in paths.values()} == {"evaluation.json", "probe_table.csv", "probe_table.md",
                                               "cycle_metrics.csv", "probe_linear.png", "probe_knn.png"}
    with open(paths["csv"]) as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert "| conv1 | 3136 |" in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["rows"] == json.loads(json.dumps(rows))
    assert paths["chart_knn"].stat().st_size > 1000


def test_user_errors(tiny_run):
    with pytest.raises(ConfigError, match="unknown probe layer"):
        evaluate_suite([tiny_run], ["last"], ["conv9"], show_progress=False)
    with pytest.raises(ConfigError, match="unknown protocol"):
        evaluate_suite([tiny_run], ["last"], protocols=["svm"], show_progress=False)
    with pytest.raises(TrainingError, match="available are last, init, 1, 2"):
        evaluate_suite([tiny_run], ["7"], show_progress=False)
    with pytest.raises(ConfigError, match="cycle number"):
        evaluate_suite([tiny_run], ["best"], show_progress=False)
    with pytest.raises(ConfigError, match="--out"):
        suite.evaluate_and_write([tiny_run, tiny_run])


def test_lbfgs_probe_option(tiny_run):
    rows = evaluate_suite([tiny_run], ["last"], ["fc2"], ["linear"], eval_cfg={"probe": "lbfgs", "probe_max_iter": 20},
                          pixel_baseline=False, show_progress=False)
    assert [r["metric"] for r in rows] == ["test_acc", "train_acc"]
    assert pivot_tables(rows)[0].rows[0][2].replace(".", "").isdigit()


def test_evaluation_clusters_with_training_pipeline_fit_fraction_included(tmp_path):
    """run_eval's clustering is training's: with fit_fraction 0.1, the random network's clusters
    equal cycle 1's assignments of the run (fp32, the cycle's seed)."""
    from deepcluster.core.config import TrainConfig, build_config
    from deepcluster.data.splits import load_train_data
    from deepcluster.environment import RunEnv
    from deepcluster.evaluate.run_eval import model_clusters
    from deepcluster.train import train
    from deepcluster.train.cycle import cycle_seed

    cfg = build_config(TrainConfig, CONFIGS / "digits_tiny.yaml",
                       ["cycles=1", "fit_fraction=0.1", "precision=fp32", "data.limit=600", "k=10"])
    run = train(cfg, tmp_path / "run", show_progress=False)
    images = load_train_data(cfg).images_tensor()
    reader = RunEnv.from_config(cfg, show_progress=False).features(1)
    got = model_clusters(run.build_model("init", cfg), images, cfg, reader, seed=cycle_seed(cfg.seed, 1))
    assert np.array_equal(got, run.load_assignments(1))
    full = model_clusters(run.build_model("init", cfg), images, cfg.model_copy(update={"fit_fraction": 1.0}), reader,
                          seed=cycle_seed(cfg.seed, 1))
    assert not np.array_equal(full, got)  # the fraction matters, so the test would see it dropped

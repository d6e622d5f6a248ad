"""End-to-end DeepCluster runs on scikit-learn's digits (seconds each)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster.core.config import TrainConfig, build_config
from deepcluster.data.splits import load_split
from deepcluster.runs import RunFolder
from deepcluster.train import train

CONFIG = Path(__file__).parents[2] / "configs" / "digits_tiny.yaml"


def digits_cfg(*overrides):
    return build_config(TrainConfig, CONFIG, ["threads=1", "epochs_per_cycle=1", *overrides])


def weights(run_dir):
    return RunFolder(run_dir).load_checkpoint("last")["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_end_to_end_run_folder(tmp_path):
    cfg = digits_cfg("cycles=3", "checkpoint_every=2")
    seen = []
    run = train(cfg, tmp_path / "run", show_progress=False, on_cycle=seen.append)
    assert [r["cycle"] for r in seen] == [1, 2, 3]
    files = {p.relative_to(run.path).as_posix() for p in run.path.rglob("*") if p.is_file()}
    for f in ["config.yaml", "checkpoint.pt", "checkpoints/init.pt", "checkpoints/cycle_002.pt",
              "checkpoints/cycle_003.pt", "assignments/cycle_001.npy", "assignments/cycle_003.npy", "metrics.jsonl"]:
        assert f in files
    assert any(f.startswith("tensorboard/") for f in files)
    records = run.metrics()
    assert len(records) == 3
    r = records[-1]
    for key in ["loss", "train_acc", "nmi_prev", "nmi_labels", "ari_labels", "acc_labels", "cluster_sizes",
                "n_resplit", "seconds"]:
        assert key in r
    assert set(r["seconds"]) == {"features", "pca", "clustering", "training"}
    assert records[0]["nmi_prev"] is None and 0 <= r["nmi_prev"] <= 1
    assert r["cluster_sizes"]["min"] >= 1  # never an empty cluster
    a = run.load_assignments()
    assert a.shape == (1500,) and a.min() >= 0 and a.max() < cfg.k
    # the folder alone rebuilds the model
    model = RunFolder(run.path).build_model()
    assert model.embed(torch.zeros(2, 1, 28, 28)).shape[0] == 2
    # no temporary files left behind by atomic writes
    assert not [f for f in files if f.endswith(".tmp")]


def test_halting_keeps_assignments(tmp_path):
    cfg = digits_cfg("cycles=4", "halt_clustering_after=2")
    run = train(cfg, tmp_path / "run", show_progress=False)
    recs = run.metrics()
    assert [r["clustered"] for r in recs] == [True, True, False, False]
    a2, a3, a4 = (run.load_assignments(c) for c in (2, 3, 4))
    assert (a2 == a3).all() and (a3 == a4).all()
    assert recs[2]["seconds"].keys() == {"training"}


def test_resume_in_process_gives_identical_weights(tmp_path):
    cfg = digits_cfg("cycles=3")
    full = train(cfg, tmp_path / "full", show_progress=False)
    train(cfg, tmp_path / "part", show_progress=False, stop_after=1)
    assert RunFolder(tmp_path / "part").load_checkpoint()["cycle"] == 1
    resumed = train(cfg, tmp_path / "part", resume=True, show_progress=False)
    assert same_weights(weights(full.path), weights(resumed.path))
    assert (full.load_assignments() == resumed.load_assignments()).all()
    assert [r["cycle"] for r in resumed.metrics()] == [1, 2, 3]


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "deepcluster", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "DEEPCLUSTER_PROGRESS": "0"}, **kw)


@pytest.mark.slow
def test_kill_and_resume_ends_with_the_same_weights(tmp_path):
    common = ["--config", CONFIG, "--set", "cycles=5", "--set", "threads=1", "--set", "epochs_per_cycle=1", "--quiet"]
    ref = _cli("train", *common, "--out", tmp_path / "ref")
    assert ref.wait(300) == 0, ref.stderr.read()

    run_dir = tmp_path / "killed"
    proc = _cli("train", *common, "--out", run_dir)
    deadline = time.time() + 300
    # kill -9 in the middle of cycle 3: after cycle 2's checkpoint landed
    while time.time() < deadline:
        ck = run_dir / "checkpoint.pt"
        if ck.exists() and RunFolder(run_dir).load_checkpoint()["cycle"] >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert RunFolder(run_dir).load_checkpoint()["cycle"] < 5

    res = _cli("train", "--resume", run_dir, "--quiet")
    assert res.wait(300) == 0, res.stderr.read()
    assert same_weights(weights(tmp_path / "ref"), weights(run_dir))
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["cycle"] for r in recs] == [1, 2, 3, 4, 5]


def test_resume_extends_cycles(tmp_path):
    run_dir = tmp_path / "r"
    p = _cli("train", "--config", CONFIG, "--set", "cycles=1", "--set", "threads=1", "--set", "epochs_per_cycle=1", "--out", run_dir, "-q")
    assert p.wait(300) == 0, p.stderr.read()
    p = _cli("train", "--resume", run_dir, "--set", "cycles=2", "-q")
    assert p.wait(300) == 0, p.stderr.read()
    assert RunFolder(run_dir).load_checkpoint()["cycle"] == 2


def test_pic_clustering_trains(tmp_path):
    cfg = digits_cfg("cycles=2", "clustering=pic")
    run = train(cfg, tmp_path / "run", show_progress=False)
    rec = run.metrics()[-1]
    assert rec["k"] >= 2 and rec["cluster_sizes"]["min"] >= 1


def test_fit_fraction_and_cluster_layer(tmp_path):
    cfg = digits_cfg("cycles=1", "fit_fraction=0.3", "cluster_layer=conv2", "pca_dim=8")
    run = train(cfg, tmp_path / "run", show_progress=False)
    assert np.bincount(run.load_assignments()).min() >= 1


def test_supervised_baseline_trains_on_the_labels(tmp_path):
    cfg = digits_cfg("cycles=3", "supervised=true")
    run = train(cfg, tmp_path / "sup", show_progress=False)
    records = run.metrics()
    assert [r["clustered"] for r in records] == [False] * 3
    assert records[-1]["k"] == 10 and records[-1]["nmi_labels"] == pytest.approx(1.0)
    assert records[-1]["loss"] < records[0]["loss"] and records[-1]["train_acc"] > records[0]["train_acc"]
    assert np.array_equal(run.load_assignments(), load_split(cfg).labels)
    # the classifier is kept across epochs (not reset like DeepCluster's top layer)
    top = run.load_checkpoint("last")["top_layer"]["weight"]
    assert top.shape[0] == 10
    run.build_model("last")  # offline tools rebuild it like any run

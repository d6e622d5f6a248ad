"""Weighted soft-voting ensembles (thesis §3.5.4): weights, gains, groups, the probe, the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from deepcluster.cli import compare as cli_compare
from deepcluster.core.errors import DataError
from deepcluster.evaluate.lbfgs_probe import linear_probe
from deepcluster.interpret.ensemble import (
    aggregate_by_group,
    ensemble_weights,
    pairwise_ensembles,
    probe_probabilities,
    soft_vote,
)

Y = np.array([0, 1, 2, 1])
# Model a: argmax 0, 0, 2, 1 -> 3 of 4 right (0.75). Model b: argmax 1, 1, 2, 0 -> 2 of 4 (0.5).
PA = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7], [0.2, 0.7, 0.1]])
PB = np.array([[0.2, 0.5, 0.3], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]])


def test_weights_follow_the_thesis_rule():
    # a > b: (0.5 + |a - b|) for the better model, (0.5 - |a - b|) for the other.
    assert ensemble_weights(0.75, 0.5) == pytest.approx((0.75, 0.25))
    assert ensemble_weights(0.6, 0.8) == pytest.approx((0.3, 0.7))
    assert ensemble_weights(0.7, 0.7) == (0.5, 0.5)
    assert ensemble_weights(0.9, 0.2) == (1.0, 0.0)  # clipped: never a negative weight
    with pytest.raises(DataError, match="fractions"):
        ensemble_weights(75.0, 50.0)


def test_hand_checked_ensemble():
    # 0.75 * PA + 0.25 * PB, by hand:
    expected = np.array([[0.50, 0.35, 0.15], [0.40, 0.50, 0.10], [0.15, 0.225, 0.625], [0.30, 0.60, 0.10]])
    assert np.allclose(soft_vote(PA, PB, 0.75, 0.5), expected)
    assert np.allclose(soft_vote(PB, PA, 0.5, 0.75), expected)  # order does not matter
    (row,) = pairwise_ensembles({"a": PA, "b": PB}, Y)
    assert row["acc_a"] == 0.75 and row["acc_b"] == 0.5
    assert (row["weight_a"], row["weight_b"]) == pytest.approx((0.75, 0.25))
    assert row["ensemble_acc"] == 1.0  # argmax 0, 1, 2, 1: all right
    assert row["best_single"] == 0.75 and row["gain"] == pytest.approx(0.25)
    # Given accuracies set the weights: b "better" -> 0.25 * PA + 0.75 * PB =
    # [.3 .45 .25], [.2 .7 .1], [.25 .275 .475], [.5 .4 .1] -> argmax 1, 1, 2, 0: 2 of 4 right.
    (row,) = pairwise_ensembles({"a": PA, "b": PB}, Y, {"a": 0.5, "b": 0.75})
    assert (row["weight_a"], row["weight_b"]) == pytest.approx((0.25, 0.75))
    assert row["ensemble_acc"] == 0.5 and row["best_single"] == 0.75 and row["gain"] == pytest.approx(-0.25)


def test_aggregate_by_group():
    rows = [{"model_a": "m1", "model_b": "m2", "gain": 0.02, "ensemble_acc": 0.8},
            {"model_a": "m1", "model_b": "m3", "gain": -0.01, "ensemble_acc": 0.7},
            {"model_a": "m2", "model_b": "m3", "gain": 0.05, "ensemble_acc": 0.9}]
    out = aggregate_by_group(rows, {"m1": "A", "m2": "A", "m3": "B"})
    assert [(r["group_a"], r["group_b"], r["n_pairs"]) for r in out] == [("A", "A", 1), ("A", "B", 2)]
    assert out[0]["mean_gain"] == pytest.approx(0.02)
    assert out[1]["mean_gain"] == pytest.approx(0.02) and out[1]["min_gain"] == -0.01 and out[1]["max_gain"] == 0.05
    with pytest.raises(DataError, match="m3"):
        aggregate_by_group(rows, {"m1": "A", "m2": "A"})


def test_probe_probabilities_is_the_linear_probe():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 2
    ytr, yte = rng.integers(0, 3, 150), rng.integers(0, 3, 60)
    xtr = centres[ytr] + rng.normal(size=(150, 8))
    xte = centres[yte] + rng.normal(size=(60, 8))
    res = probe_probabilities(xtr, ytr, xte, yte, n_classes=4, weight_decay=1e-3, max_iter=50)
    ref = linear_probe(xtr, ytr, xte, yte, weight_decay=1e-3, max_iter=50)
    assert res.probabilities.shape == (60, 4)
    assert np.allclose(res.probabilities.sum(1), 1.0)
    assert res.test_acc == pytest.approx(ref.test_acc, abs=2 / 60) and res.test_acc > 0.7


# ---------------------------------------------------------------------------------------------
# CLI on two tiny digits runs


def invoke(*args):
    app = typer.Typer(pretty_exceptions_enable=False)
    cli_compare.register(app)
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def two_runs(digits_runs):
    return digits_runs


def test_ensemble_cli(two_runs, tmp_path):
    lce = tmp_path / "lce.csv"
    lce.write_text("model,PC1,PC2,group\nrun_a,0.1,0.2,A\nrun_b,0.3,-0.1,A\nrun_c,-0.5,0.0,B\nother,0,0,C\n")
    out = tmp_path / "ens"
    res = invoke("ensemble", *two_runs, "--layer", "conv2", "--lce", lce, "--train-limit", "300",
                 "--test-limit", "150", "--out", out, "-q")
    assert res.exit_code == 0, res.output
    with open(out / "ensemble.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for r in rows:
        a, b, ens = float(r["acc_a"]), float(r["acc_b"]), float(r["ensemble_acc"])
        assert float(r["gain"]) == pytest.approx(ens - max(a, b), abs=1e-5)
        assert float(r["weight_a"]) == pytest.approx(0.5 + (a - b), abs=1e-5)  # |a - b| < 0.5 here
        assert r["layer_a"] == "conv2"
    with open(out / "ensemble_groups.csv", newline="") as f:
        groups = list(csv.DictReader(f))
    assert [(g["group_a"], g["group_b"], g["n_pairs"]) for g in groups] == [("A", "A", "1"), ("A", "B", "2")]
    info = json.loads((out / "ensemble.json").read_text())
    assert info["n_test"] == 150 and info["groups"] == {"run_a": "A", "run_b": "A", "run_c": "B"}
    assert (out / "ensemble_gain.png").is_file() and (out / "ensemble_groups.png").is_file()
    assert "A-B" in res.output and "A-A" in res.output


def test_ensemble_cli_errors(two_runs, tmp_path):
    lce = tmp_path / "lce.csv"
    lce.write_text("model,PC1,group\nrun_a,0.1,A\n")
    res = invoke("ensemble", *two_runs[:2], "--lce", lce, "--out", tmp_path / "e", "-q")
    assert res.exit_code == 2 and "run_b" in res.output and "Traceback" not in res.output
    res = invoke("ensemble", *two_runs[:2], "--name", "x", "--out", tmp_path / "e", "-q")
    assert res.exit_code == 2 and "one --name per run" in res.output
    res = invoke("ensemble", two_runs[0], tmp_path / "missing", "--out", tmp_path / "e", "-q")
    assert res.exit_code == 2 and "does not exist" in res.output

"""export pairs a checkpoint with its own cycle's assignments; evaluation without a test split scores
a seeded held-out part of the training images, never the images the probes were fitted on."""

import csv
import json

import numpy as np
import pytest
import torch

from deepcluster.core.config import EvalConfig, TrainConfig
from deepcluster.core.errors import DataError
from deepcluster.data.splits import eval_splits, has_test_split, holdout_identity, holdout_indices, load_split
from deepcluster.evaluate import export_run
from deepcluster.evaluate.lowshot import _predict, sample_span
from deepcluster.evaluate.plan import RunPlan, about, plan_message
from deepcluster.evaluate.tables import pivot_tables, table_markdown
from deepcluster.runs import RunFolder


def _clusters(path):
    return [int(r["cluster"]) for r in csv.DictReader(path.open())]


def test_export_pairs_each_checkpoint_with_its_own_cycle(tiny_run, tmp_path):
    run = RunFolder(tiny_run)
    one = export_run(tiny_run, tmp_path / "c1", checkpoint="1", show_progress=False)
    assert one["assignment_cycle"] == 1
    assert _clusters(tmp_path / "c1" / "assignments.csv") == run.load_assignments(1).tolist()
    last = export_run(tiny_run, tmp_path / "c1", checkpoint="last", show_progress=False)  # same folder, rewritten
    assert last["assignment_cycle"] == 2
    assert _clusters(tmp_path / "c1" / "assignments.csv") == run.load_assignments(2).tolist()
    assert run.load_assignments(1).tolist() != run.load_assignments(2).tolist()  # the test tells them apart


def test_export_init_writes_features_without_assignments(tiny_run, tmp_path):
    out = tmp_path / "exp"
    export_run(tiny_run, out, checkpoint="last", show_progress=False)
    summary = export_run(tiny_run, out, checkpoint="init", show_progress=False)
    assert summary["assignments"] is None and summary["assignment_cycle"] is None and "random" in summary["note"]
    assert not (out / "assignments.csv").exists()  # the last checkpoint's, left from before, is not passed off as init's
    assert np.load(out / "features.npy").shape[0] == 400
    assert json.loads((out / "export.json").read_text())["assignments"] is None


def test_holdout_indices_are_seeded_disjoint_and_cover_everything():
    fit, held = holdout_indices(100, 0.2, seed=3)
    assert len(held) == 20 and len(fit) == 80
    assert not set(fit) & set(held) and sorted([*fit, *held]) == list(range(100))
    assert np.array_equal(held, holdout_indices(100, 0.2, seed=3)[1])
    assert not np.array_equal(held, holdout_indices(100, 0.2, seed=4)[1])
    assert len(holdout_indices(100, 30, seed=0)[1]) == 30  # a count
    with pytest.raises(DataError, match="holdout"):
        holdout_indices(30, 30, seed=0)


def test_which_datasets_have_a_test_split():
    assert has_test_split(TrainConfig.model_validate({"data": {"name": "digits"}}))
    for data in ({"name": "folder", "root": "x"}, {"name": "ingested", "root": "x"},
                 {"name": "digits", "test_split": None}, {"name": "digits", "test_split": "train"}):
        cfg = TrainConfig.model_validate({"data": data})
        assert not has_test_split(cfg), data
        assert holdout_identity(cfg, EvalConfig())["holdout"] == 0.2


def test_eval_splits_without_a_test_split_hold_out_training_images():
    cfg = TrainConfig.model_validate({"data": {"name": "digits", "test_split": None, "limit": 500}})
    s = eval_splits(cfg)
    assert s.held_out and len(s.test) == 100 and len(s.train) == 400
    assert not set(s.train_index.tolist()) & set(s.test_index.tolist())
    assert s.scored == "held-out 20 % of the training images (100 of 500, seed 0)"
    assert s.fitted == "the other 400 training images"
    full = load_split(cfg)  # the held-out images are the run's training images at those positions
    assert torch.equal(s.test.images_tensor(), full.images_tensor()[torch.from_numpy(s.test_index)])

    limited = eval_splits(cfg, EvalConfig(holdout=50, test_limit=20, train_limit=100))  # a count, then the limits
    assert len(limited.test) == 20 and len(limited.train) == 100
    assert limited.scored == "held-out training images (50 of 500, seed 0), 20 of them scored (eval.test_limit)"
    assert limited.fitted == "100 of the other training images (eval.train_limit)"

    test = eval_splits(TrainConfig.model_validate({"data": {"name": "digits"}}))
    assert not test.held_out and test.scored == "test split (297 images)"
    assert test.fitted == "train split (1,500 images)"


def test_lowshot_span_fit_reaches_the_same_optimum():
    g = torch.Generator().manual_seed(0)
    xs, xq = torch.randn(20, 300, generator=g), torch.randn(200, 300, generator=g)
    ys = torch.arange(20) % 4
    basis = sample_span(xs)
    assert basis.shape == (300, 20)
    assert torch.allclose(basis.T @ basis, torch.eye(20), atol=1e-4)
    assert sample_span(torch.randn(200, 300, generator=g)) is None  # no gain: fitted as it is
    from deepcluster.evaluate import lbfgs_probe

    w, b = lbfgs_probe.fit_logistic_regression(xs, ys, 4, weight_decay=1e-2, max_iter=500)
    primal = (xq @ w + b).argmax(1)
    span = _predict(xs, ys, xq, 4, "logreg", 1e-2, 500, 0)
    assert (primal == span).float().mean() > 0.98


def test_plan_message_says_how_long_and_how_to_shorten():
    plan = RunPlan("r", numbers=27, cached=0, checkpoints=["random (init)", "trained (last)"],
                   layers=["conv1", "fc1"], protocols=["linear", "knn", "lowshot"], pixels=True,
                   seconds={"lowshot": 200.0, "linear": 30.0, "features": 5.0})
    lines = plan_message(plan, EvalConfig())
    assert "27 numbers to compute (random (init), trained (last) × conv1, fc1 + raw pixels; linear, knn, lowshot)" \
        in lines[0]
    assert "about 4 min" in lines[0] and "lowshot about 3 min" in lines[0]
    assert lines[1].startswith("  shorter: --protocols linear,knn")
    assert "lowshot_repeats=1" in lines[1]
    assert plan_message(RunPlan("r", cached=5), EvalConfig()) == ["r: all 5 numbers are in the cache"]
    assert [about(s) for s in (0.2, 4, 42, 600, 7200)] == ["under a second", "about 4 s", "about 40 s",
                                                             "about 10 min", "about 2.0 h"]


def test_tables_name_the_scored_images():
    row = {"run": "r", "run_name": "r", "checkpoint": "last", "label": "trained (last)", "layer": "conv1",
           "dim": 8, "protocol": "knn", "metric": "k=10", "value": 0.5, "std": None}
    held = [{**row, "scored": "held-out 20 % of the training images (12 of 60, seed 0)"}]
    t = pivot_tables(held)[0]
    assert "held-out accuracy" in t.title and "test" not in t.title
    assert t.scored == "Scored on the held-out 20 % of the training images (12 of 60, seed 0)."
    assert "test" not in table_markdown(held)
    test = pivot_tables([{**row, "scored": "test split (297 images)"}])[0]
    assert "test accuracy" in test.title and test.scored == "Scored on the test split (297 images)."
    mixed = pivot_tables([held[0], {**row, "run_name": "s", "scored": "test split (297 images)"}])[0]
    assert "scored images" in mixed.title and "r: the held-out" in mixed.scored and "s: the test split" in mixed.scored


def test_suite_logs_its_plan_before_computing(tiny_run):
    from deepcluster.evaluate import evaluate_suite

    lines = []
    evaluate_suite([tiny_run], ["init", "last"], ["fc2"], ["knn", "lowshot"], show_progress=False, log=lines.append,
                   eval_cfg={"lowshot_n": [1], "lowshot_repeats": 1})
    plan = next(i for i, line in enumerate(lines) if "numbers to compute" in line)
    first = next(i for i, line in enumerate(lines) if " knn " in line)
    assert plan < first and "6 numbers to compute" in lines[plan]
    assert "about" in lines[plan] or "under a second" in lines[plan]
    assert any("scored on the test split (297 images)" in line for line in lines[:plan])
    lines.clear()
    evaluate_suite([tiny_run], ["init", "last"], ["fc2"], ["knn"], show_progress=False, log=lines.append,
                   eval_cfg={"lowshot_n": [1], "lowshot_repeats": 1})
    assert any("all 3 numbers are in the cache" in line for line in lines)

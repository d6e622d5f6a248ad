"""The command line: thin commands, one-line errors, non-zero exits, nothing lost."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deepcluster.cli import app

CONFIG = str(Path(__file__).parents[1] / "configs" / "digits_tiny.yaml")
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    res = invoke("train", "--config", CONFIG, "--set", "cycles=2", "--set", "threads=1", "--set", "epochs_per_cycle=1", "--out", out, "-q")
    assert res.exit_code == 0, res.output
    assert "cycle   2/2" in res.output
    return out


def assert_user_error(res, fragment):
    assert res.exit_code == 2, res.output
    assert fragment in res.output
    assert "Traceback" not in res.output


def test_help_lists_commands():
    res = invoke("--help")
    assert res.exit_code == 0
    for cmd in ["train", "evaluate", "export", "list"]:
        assert cmd in res.output


def test_list():
    res = invoke("list")
    assert res.exit_code == 0 and "lenet5" in res.output and "fashion-mnist" in res.output


def test_bad_config_key(tmp_path):
    assert_user_error(invoke("train", "--config", CONFIG, "--set", "kk=3", "--out", tmp_path / "r"), "kk: unknown key")


def test_missing_config_file(tmp_path):
    assert_user_error(invoke("train", "--config", tmp_path / "none.yaml", "--out", tmp_path / "r"), "not found")


def test_missing_out(tmp_path):
    assert_user_error(invoke("train", "--config", CONFIG), "--out")


def test_missing_dataset_dir(tmp_path):
    res = invoke("train", "--set", "data.name=mnist", "--set", f"data.root={tmp_path / 'nowhere'}",
                 "--out", tmp_path / "r")
    assert_user_error(res, "nowhere")


def test_k_larger_than_data(tmp_path):
    res = invoke("train", "--config", CONFIG, "--set", "k=5000", "--out", tmp_path / "r", "-q")
    assert_user_error(res, "k=5000")


def test_existing_run_is_not_overwritten(digits_run):
    before = (digits_run / "checkpoint.pt").read_bytes()
    res = invoke("train", "--config", CONFIG, "--out", digits_run)
    assert_user_error(res, "--resume")
    assert (digits_run / "checkpoint.pt").read_bytes() == before


def test_resume_rejects_other_overrides(digits_run):
    assert_user_error(invoke("train", "--resume", digits_run, "--set", "lr=1"), "only --set cycles")


def test_resume_missing_folder(tmp_path):
    assert_user_error(invoke("train", "--resume", tmp_path / "nope"), "does not exist")


FAST_EVAL = ["--set", "probe_epochs=3", "--set", "lowshot_n=[1,5]", "--set", "lowshot_repeats=2"]


def test_evaluate_and_export(digits_run, tmp_path):
    res = invoke("evaluate", digits_run, "-q", *FAST_EVAL)
    assert res.exit_code == 0, res.output
    data = json.loads((digits_run / "eval" / "evaluation.json").read_text())
    rows = data["rows"]
    assert {r["checkpoint"] for r in rows} == {"init", "last", "pixels"}
    assert {r["layer"] for r in rows} == {"conv1", "conv2", "fc1", "fc2", "pixels"}
    assert {r["protocol"] for r in rows} == {"linear", "knn", "lowshot"}
    for r in rows:
        if r["metric"] in ("last_acc", "k=20"):
            assert 0.5 < r["value"] <= 1
    assert {r["metric"] for r in rows if r["protocol"] == "lowshot"} == {"n=1", "n=5"}
    assert [c["cycle"] for c in data["cycles"][digits_run.name]] == [1, 2]
    for name in ("probe_table.csv", "probe_table.md", "cycle_metrics.csv", "probe_linear.png", "probe_knn.png",
                 "probe_lowshot.png"):
        assert (digits_run / "eval" / name).is_file(), name
    md = (digits_run / "eval" / "probe_table.md").read_text()
    assert "random (init)" in md and "trained (last)" in md and "raw pixels" in md
    assert "random (init)" in res.output and "raw pixels" in res.output and "computed" in res.output

    # the same numbers again: all from the cache; --checkpoint X is --checkpoints init,X
    res = invoke("evaluate", digits_run, "-q", *FAST_EVAL, "--checkpoint", "last", "--protocols", "knn")
    assert res.exit_code == 0, res.output
    assert "0 computed" in res.output

    out = tmp_path / "exp"
    res = invoke("export", digits_run, "--out", out, "-q")
    assert res.exit_code == 0, res.output
    feats = np.load(out / "features.npy")
    assert feats.shape == (1500, 32)
    rows = list(csv.reader((out / "assignments.csv").open()))
    assert rows[0] == ["index", "cluster"] and len(rows) == 1501

    res = invoke("export", digits_run, "--out", tmp_path / "exp2", "--layer", "conv2", "-q")
    assert res.exit_code == 0 and np.load(tmp_path / "exp2" / "features.npy").shape[0] == 1500


def test_evaluate_not_a_run(tmp_path):
    assert_user_error(invoke("evaluate", tmp_path), "not a deepcluster run folder")


def test_evaluate_bad_eval_key(digits_run):
    assert_user_error(invoke("evaluate", digits_run, "--set", "foo=1"), "foo: unknown key")


def test_evaluate_user_errors(digits_run, tmp_path):
    assert_user_error(invoke("evaluate", digits_run, "--protocols", "svm"), "unknown protocol")
    assert_user_error(invoke("evaluate", digits_run, "--checkpoints", "init,9"), "available are")
    assert_user_error(invoke("evaluate", digits_run, "--checkpoint", "last", "--checkpoints", "init"), "--checkpoint")
    assert_user_error(invoke("evaluate", digits_run, digits_run), "--out")


def test_evaluate_compares_runs_into_one_table(digits_run, tmp_path):
    other = tmp_path / "other"
    res = invoke("train", "--config", CONFIG, "--set", "cycles=1", "--set", "threads=1", "--set", "epochs_per_cycle=1", "--set", "data.limit=300",
                 "--out", other, "-q")
    assert res.exit_code == 0, res.output
    out = tmp_path / "cmp"
    res = invoke("evaluate", digits_run, other, "--out", out, "--checkpoints", "last", "--protocols", "knn",
                 "--layers", "conv2,fc2", "-q")
    assert res.exit_code == 0, res.output
    md = (out / "probe_table.md").read_text()
    assert f"{digits_run.name}: trained (last)" in md and "other: trained (last)" in md
    assert "| conv2 |" in md and "| fc1 |" not in md
    assert (other / "eval" / "cache").is_dir()


def test_unlabeled_image_folder_trains_and_exports(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"im{i:02d}.png")
    out = tmp_path / "run"
    res = invoke("train", "--set", "data.name=folder", "--set", f"data.root={folder}", "--set", "data.image_size=16",
                 "--set", "data.test_split=null", "--set", "model.arch=tiny_cnn", "--set", "k=4", "--set", "cycles=2",
                 "--set", "pca_dim=off", "--set", "batch_size=8", "--out", out, "-q")
    assert res.exit_code == 0, res.output
    assert "no labels" in res.output
    assert "nmi_labels" not in json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    res = invoke("export", out, "--out", tmp_path / "exp", "-q")
    assert res.exit_code == 0, res.output
    rows = list(csv.reader((tmp_path / "exp" / "assignments.csv").open()))
    assert rows[0] == ["path", "cluster"] and rows[1][0].endswith("im00.png") and len(rows) == 41
    assert_user_error(invoke("evaluate", out), "test split")


def test_corrupt_idx_file_is_one_line_error(tmp_path):
    import gzip

    d = tmp_path / "fm"
    d.mkdir()
    for name in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]:
        (d / name).write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 10)[:-5])
    res = invoke("train", "--set", "data.name=fashion-mnist", "--set", f"data.root={d}", "--out", tmp_path / "r")
    assert_user_error(res, "train-images-idx3-ubyte.gz")
    assert not (tmp_path / "r").exists()


def test_diverging_training_stops_with_a_clear_error_and_keeps_finished_cycles(tmp_path):
    out = tmp_path / "run"
    res = invoke("train", "--config", CONFIG, "--set", "cycles=1", "--set", "threads=1", "--set", "epochs_per_cycle=1", "--out", out, "-q")
    assert res.exit_code == 0, res.output
    before = (out / "checkpoint.pt").read_bytes()
    # extend the run with an absurd learning rate by editing its saved config (as a user might)
    cfg = (out / "config.yaml").read_text().replace("lr: 0.05", "lr: 1.0e+12")
    (out / "config.yaml").write_text(cfg)
    res = invoke("train", "--resume", out, "--set", "cycles=3", "-q")
    assert res.exit_code == 2, res.output
    assert "lower lr" in res.output and "Traceback" not in res.output
    assert (out / "checkpoint.pt").read_bytes() == before


def test_ia_grid_writes_its_outputs_and_recommends(tmp_path):
    out = tmp_path / "ia"
    res = invoke("ia", "--config", CONFIG, "--set", "k=5,20", "--set", "threads=1", "--set", "epochs_per_cycle=1", "--seeds", 4, "-o", out, "-q")
    assert res.exit_code == 0, res.output
    assert "recommended:" in res.output and "best seeds:" in res.output
    rec = json.loads((out / "recommendation.json").read_text())
    assert rec["setting"]["k"] in (5, 20)
    rows = list(csv.DictReader(open(out / "samples.csv")))
    assert len(rows) == 8 and {r["setting"] for r in rows} == {"k=5", "k=20"}
    assert (out / "ia_distribution.png").stat().st_size > 0 and (out / "config.yaml").exists()
    assert json.loads((out / "ia_config.json").read_text())["grid"] == {"k": [5, 20]}


def test_ia_user_errors_are_one_line(tmp_path):
    assert_user_error(invoke("ia", "--config", CONFIG, "--set", "kk=5,20", "--seeds", 2, "-o", tmp_path / "a"), "kk")
    assert_user_error(invoke("ia", "--config", CONFIG, "--labelled", 1, "--seeds", 2, "-o", tmp_path / "b"),
                      "--labelled 1")
    assert_user_error(invoke("ia", "--config", CONFIG, "--labels", tmp_path / "none.csv", "--seeds", 2,
                             "-o", tmp_path / "c"), "does not exist")
    assert_user_error(invoke("ia", "--config", CONFIG, "--set", "k=2000", "--seeds", 2, "-o", tmp_path / "d"),
                      "k=2000")

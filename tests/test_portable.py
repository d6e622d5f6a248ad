"""Run folders that travel: train on an image folder, move the run and its images, and every offline
command finds them again with --data-root (and without it says so in one line)."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from deepcluster.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _write_folder(root: Path) -> Path:
    """60 PNGs in 3 class subfolders: dark, mid-grey and bright noise (easy to tell apart)."""
    rng = np.random.default_rng(0)
    for name, base in [("dark", 40), ("grey", 128), ("bright", 215)]:
        (root / name).mkdir(parents=True)
        for i in range(20):
            img = np.clip(base + rng.normal(0, 25, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{name}{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """A folder run trained in one place, then moved with its images somewhere else."""
    before = tmp_path_factory.mktemp("before")
    images = _write_folder(before / "images")
    res = invoke("train", "--set", "data.name=folder", "--set", f"data.root={images}", "--set", "data.image_size=16",
                 "--set", "model.arch=tiny_cnn", "--set", "k=3", "--set", "cycles=2", "--set", "pca_dim=off",
                 "--set", "batch_size=8", "--set", "threads=1", "--set", "epochs_per_cycle=1", "--set", "checkpoint_every=1",
                 "--out", before / "run", "-q")
    assert res.exit_code == 0, res.output
    after = tmp_path_factory.mktemp("after")
    shutil.move(str(before / "run"), after / "run")
    shutil.move(str(images), after / "pictures")
    return after / "run", after / "pictures"


def _one_line_error(res):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and res.output.rstrip().endswith(errors[0]), res.output  # the last line, one line
    assert "--data-root" in errors[0] and "does not exist" in errors[0]


@pytest.mark.parametrize("command", [
    ["evaluate", "--protocols", "knn"],
    ["export"],
    ["report", "--set", "numbers=false"],
])
def test_moved_run_without_data_root_is_one_line_naming_it(moved, command, tmp_path):
    run, _ = moved
    _one_line_error(invoke(command[0], run, *command[1:], "--out", tmp_path / "out", "-q"))


def test_evaluate_with_data_root_scores_held_out_images(moved, tmp_path):
    run, pictures = moved
    res = invoke("evaluate", run, "--protocols", "knn", "--set", "knn_ks=[3]", "--data-root", pictures,
                 "--out", tmp_path / "eval", "-q")
    assert res.exit_code == 0, res.output
    assert "held-out 20 % of the training images (12 of 60, seed 0)" in res.output
    assert "test accuracy" not in res.output and "test split" not in res.output
    data = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert {r["scored"] for r in data["rows"]} == {"held-out 20 % of the training images (12 of 60, seed 0)"}
    assert {r["n_scored"] for r in data["rows"]} == {12} and {r["n_fitted"] for r in data["rows"]} == {48}
    assert data["runs"]["run"]["held_out"] is True
    md = (tmp_path / "eval" / "probe_table.md").read_text()
    assert "held-out accuracy" in md and "test" not in md
    assert (run / "config.yaml").read_text().count(str(pictures)) == 0  # --data-root is not written back


def test_export_with_data_root(moved, tmp_path):
    run, pictures = moved
    res = invoke("export", run, "--data-root", pictures, "--out", tmp_path / "exp", "-q")
    assert res.exit_code == 0, res.output
    rows = list(csv.reader((tmp_path / "exp" / "assignments.csv").open()))
    assert rows[0] == ["path", "cluster"] and len(rows) == 61
    assert all(r[0].startswith(str(pictures)) for r in rows[1:])
    assert np.load(tmp_path / "exp" / "features.npy").shape[0] == 60


def test_report_with_data_root(moved, tmp_path):
    run, pictures = moved
    res = invoke("report", run, "--data-root", pictures, "--out", tmp_path / "rep", "-q",
                 *[a for s in ("sample=60", "map_points=30", "ascent_steps=2", "ascent_channels=2", "units=2",
                               "queries=2", "neighbors=3", "gallery_clusters=2", "per_cluster=3",
                               "protocols=[knn]") for a in ("--set", s)])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "all 60 training images" in html
    assert "held-out 20 % of the training images (12 of 60, seed 0)" in html


def test_data_root_that_does_not_exist(moved, tmp_path):
    run, _ = moved
    res = invoke("export", run, "--data-root", tmp_path / "nowhere", "--out", tmp_path / "exp", "-q")
    assert res.exit_code == 2 and "--data-root" in res.output and "Traceback" not in res.output

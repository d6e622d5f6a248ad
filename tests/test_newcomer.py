"""A newcomer's first hour: presets by name from any directory, run folders that keep working when
moved, resume that says what it does, a lock that goes away, help and errors that read right."""

import fcntl
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from deepcluster.cli import app
from deepcluster.core.config import TrainConfig, available_presets, build_config, resolve_config_file
from deepcluster.core.errors import ConfigError
from deepcluster.runs import RunFolder, data_root, portable_root

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(res, fragment):
    assert res.exit_code == 2, res.output
    assert fragment in res.output, res.output
    assert "Traceback" not in res.output


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """digits_tiny by name, 1 cycle, from a directory outside the repository."""
    home = tmp_path_factory.mktemp("elsewhere")
    cwd = os.getcwd()
    os.chdir(home)
    try:
        res = invoke("train", "-c", "digits_tiny", "--set", "cycles=1", "--set", "threads=1", "--set", "epochs_per_cycle=1",
                     "--set", "precision=fp32", "-o", "runs/d", "-q")
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    return home / "runs" / "d"


def test_presets_resolve_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"digits_tiny", "fmnist_lenet"} <= set(available_presets())
    assert {"fmnist_k", "fmnist_halting"} <= set(available_presets("study"))
    cfg = build_config(TrainConfig, "digits_tiny", ["cycles=2"])
    assert cfg.data.name == "digits" and cfg.cycles == 2
    assert resolve_config_file("fmnist_lenet.yaml").is_file()
    # a file in the working directory wins over the preset of the same name
    (tmp_path / "digits_tiny.yaml").write_text("k: 7\n")
    assert build_config(TrainConfig, "digits_tiny.yaml").k == 7
    # the repository's path from elsewhere: one line naming the preset
    with pytest.raises(ConfigError, match="-c fmnist_lenet"):
        resolve_config_file("configs/fmnist_lenet.yaml")
    with pytest.raises(ConfigError, match="digits_tiny, fmnist_lenet"):
        resolve_config_file("no_such_preset")


def test_list_shows_the_presets():
    res = invoke("list")
    assert res.exit_code == 0
    assert "digits_tiny" in res.output and "fmnist_k" in res.output and "lenet5" in res.output


def test_a_bad_key_is_blamed_on_where_it_came_from(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kk: 3\n")
    res = invoke("train", "-c", "digits_tiny", "--set", "lrr=0.1", "-o", tmp_path / "r")
    assert_user_error(res, "--set lrr: unknown key")
    assert "digits_tiny.yaml" not in res.output
    res = invoke("train", "-c", bad, "--set", "lr=-1", "-o", tmp_path / "r")
    assert_user_error(res, f"invalid config ({bad})")
    assert "kk: unknown key" in res.output and "--set lr:" in res.output


def test_flags_take_no_value_in_help():
    for command in ("evaluate", "train", "report", "dissect"):
        res = invoke(command, "--help")
        assert res.exit_code == 0
        assert "<bool>" not in res.output, command


def test_errors_do_not_wrap_into_a_file(tmp_path):
    long = tmp_path / ("x" * 120)
    res = invoke("evaluate", long)
    assert res.exit_code == 2
    line = next(x for x in res.output.splitlines() if x.startswith("error:"))
    assert str(long) in line  # one line, the path whole


def test_run_folder_stores_data_root_so_it_travels(tmp_path, monkeypatch):
    images = tmp_path / "pngs"
    rng = np.random.default_rng(0)
    for c in range(3):
        (images / f"c{c}").mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images / f"c{c}" / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    res = invoke("train", "-c", "digits_tiny", "--set", "data.name=folder", "--set", "data.root=pngs",
                 "--set", "data.image_size=16", "--set", "k=3", "--set", "cycles=1", "--set", "threads=1", "--set", "epochs_per_cycle=1",
                 "--set", "pca_dim=off", "--set", "data.test_split=off", "-o", "runs/f", "-q")
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((tmp_path / "runs/f/config.yaml").read_text())
    assert saved["data"]["root"] == str(images.resolve())  # not "pngs", relative to where train ran
    # moved, run folder and data both: --data-root points the folder at its data, one line otherwise
    moved = tmp_path / "far" / "away"
    moved.mkdir(parents=True)
    (tmp_path / "runs/f").rename(moved / "f")
    images.rename(moved / "pngs")
    run = RunFolder(moved / "f")
    res = invoke("train", "--resume", moved / "f", "--set", "cycles=2", "-q")
    assert_user_error(res, "--data-root DIR")
    with data_root(moved / "pngs"):
        assert run.load_config().data.root == str((moved / "pngs").resolve())
    res = invoke("train", "--resume", moved / "f", "--set", "cycles=2", "--data-root", moved / "pngs", "-q")
    assert res.exit_code == 0, res.output
    assert run.load_config().data.root == str((moved / "pngs").resolve())  # saved by the resume
    # data inside the run folder is stored relative to it, and moves with it
    assert portable_root(str(moved / "f" / "data"), moved / "f") == "data"


def test_resume_of_a_finished_run_says_nothing_to_do(finished_run):
    res = invoke("train", "--resume", finished_run)
    assert res.exit_code == 0, res.output
    assert "nothing to do" in res.output and "training" not in res.output
    assert "--set cycles=" in res.output


def test_resume_cannot_shrink_the_finished_cycles(finished_run, tmp_path):
    cfg_before = (finished_run / "config.yaml").read_text()
    res = invoke("train", "--resume", finished_run, "--set", "cycles=1")
    assert res.exit_code == 0 and "nothing to do" in res.output  # cycles=1 with 1 done: nothing to do
    extended = tmp_path / "ext"
    import shutil

    shutil.copytree(finished_run, extended)
    res = invoke("train", "--resume", extended, "--set", "cycles=2", "-q")
    assert res.exit_code == 0, res.output
    res = invoke("train", "--resume", extended, "--set", "cycles=1")
    assert_user_error(res, "has 2 finished cycles")
    assert "cycles: 2" in (extended / "config.yaml").read_text()  # untouched
    assert (finished_run / "config.yaml").read_text() == cfg_before


def test_the_lock_goes_away_on_a_normal_finish(finished_run, tmp_path):
    assert not (finished_run / ".lock").exists()
    run = RunFolder(tmp_path / "r")
    with run.lock():
        held = (tmp_path / "r" / ".lock").read_text()
        assert str(os.getpid()) in held
    assert not (tmp_path / "r" / ".lock").exists()


def test_a_lock_removed_while_opening_is_taken_on_the_file_on_disk(tmp_path):
    run = RunFolder(tmp_path / "r")
    (tmp_path / "r").mkdir()
    stale = os.open(tmp_path / "r" / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        with run.lock():
            fd = os.open(tmp_path / "r" / ".lock", os.O_RDWR)
            with pytest.raises(BlockingIOError):  # the lock held is the one of the file on disk
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.close(fd)
    finally:
        os.close(stale)


def test_readme_python_snippet_runs_from_any_directory(tmp_path, monkeypatch):
    """The first lines of the README's Python API snippet, as written, from outside the repository."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    snippet = readme.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    first = snippet.split("\n\n")[0] + "\n" + snippet.split("\n\n")[1].splitlines()[0]
    assert 'build_config(TrainConfig, "digits_tiny"' in first
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(first, "README.md", "exec"), namespace)  # imports and cfg = build_config(...)
    assert namespace["cfg"].cycles == 3

"""Safe run folders: reading one never runs code from it, one trainer per folder, and every
failure is one line, exit 2, with the folder unchanged."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from deepcluster.cli import app

CONFIG = str(Path(__file__).parents[1] / "configs" / "digits_tiny.yaml")
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(res, fragment: str) -> None:
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], res.output
    assert "Traceback" not in res.output


def folder_hash(path: Path) -> dict[str, str]:
    """Every file of a folder and its content hash (the lock file, rewritten by each trainer, aside)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


class Planted:
    """Unpickling this creates a folder: the side effect that proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("safety") / "run"
    res = invoke("train", "-c", CONFIG, "--set", "cycles=2", "--set", "threads=1", "--set", "epochs_per_cycle=1", "--set", "checkpoint_every=1",
                 "-o", out, "-q")
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


# ---------------------------------------------------------------------------- nothing runs from a folder


def test_checkpoints_hold_only_safe_types(trained):
    for name in ("checkpoint.pt", "checkpoints/init.pt", "checkpoints/cycle_001.pt"):
        ckpt = torch.load(trained / name, weights_only=True)  # would raise on anything else
        assert isinstance(ckpt["model"], dict)
    assert isinstance(torch.load(trained / "checkpoint.pt", weights_only=True)["assignments"], torch.Tensor)


@pytest.mark.parametrize("command", ["evaluate", "export", "resume", "report"])
def test_a_planted_pickle_in_a_checkpoint_is_refused_and_never_runs(run, tmp_path, command):
    marker = tmp_path / "pwned"
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save({**ckpt, "extra": Planted(marker)}, run / "checkpoint.pt")
    before = folder_hash(run)
    args = {"evaluate": ["evaluate", run, "--protocols", "knn", "-q"], "export": ["export", run, "-q"],
            "resume": ["train", "--resume", run, "--set", "cycles=3", "-q"], "report": ["report", run, "-q"]}[command]
    res = invoke(*args)
    assert_one_line_error(res, "checkpoint.pt holds objects other than tensors")
    assert not marker.exists()
    assert folder_hash(run) == before


def test_a_planted_pickle_in_init_or_a_kept_checkpoint_is_refused(run, tmp_path):
    marker = tmp_path / "pwned"
    for name in ("checkpoints/init.pt", "checkpoints/cycle_001.pt"):
        torch.save({"model": {}, "x": Planted(marker)}, run / name)
    assert_one_line_error(invoke("evaluate", run, "--protocols", "knn", "-q"), "init.pt holds objects")
    assert_one_line_error(invoke("export", run, "--checkpoint", "1", "-q"), "cycle_001.pt holds objects")
    assert not marker.exists()


def test_a_pickled_assignments_file_is_refused(run, tmp_path):
    marker = tmp_path / "pwned"
    np.save(run / "assignments" / "cycle_002.npy", np.array([Planted(marker)], dtype=object), allow_pickle=True)
    before = folder_hash(run)
    assert_one_line_error(invoke("export", run, "-q"), "cycle_002.npy is unreadable or holds pickled objects")
    assert not marker.exists()
    assert folder_hash(run) == before  # refused before the features were written


def test_a_yaml_config_with_python_tags_is_refused(run, tmp_path):
    marker = tmp_path / "pwned"
    (run / "config.yaml").write_text(f"k: 10\nseed: !!python/object/apply:os.mkdir [{str(marker)!r}]\n")
    assert_one_line_error(invoke("evaluate", run, "-q"), "is not valid YAML")
    assert not marker.exists()


def test_a_pickled_label_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    labels = tmp_path / "labels.npy"
    np.save(labels, np.array([Planted(marker)], dtype=object), allow_pickle=True)
    res = invoke("ia", "-c", CONFIG, "--seeds", "1", "--labels", labels, "-o", tmp_path / "ia", "-q")
    assert_one_line_error(res, "is not a readable .npy array")
    assert not marker.exists()


def test_a_planted_pickle_in_weights_for_dissect_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    weights = tmp_path / "w.pth"
    torch.save({"conv1.weight": Planted(marker)}, weights)
    res = invoke("dissect", "resnet18", "--weights", weights, "--layer", "layer4", "-q")
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert not marker.exists()


# ---------------------------------------------------------------------------- one trainer per folder


def _trainer(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deepcluster", "train", *args, "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "DEEPCLUSTER_PROGRESS": "0"})


@pytest.mark.slow
def test_a_second_trainer_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    first = _trainer("-c", CONFIG, "--set", "cycles=40", "--set", "threads=1", "--set", "epochs_per_cycle=1", "-o", str(out))
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoint.pt").exists():
        assert first.poll() is None, first.stdout.read()
        time.sleep(0.05)
    res = invoke("train", "--resume", out, "-q")
    assert_one_line_error(res, f"process {first.pid}")
    assert "is training in it" in res.output
    first.send_signal(signal.SIGKILL)
    first.wait()
    res = invoke("train", "--resume", out, "--set", "cycles=3", "-q")  # the killed holder's lock is taken over
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------------------- one line, exit 2, nothing changed


def test_out_below_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(invoke("train", "-c", CONFIG, "-o", tmp_path / "file" / "run", "-q"), "is a file, not a folder")
    assert (tmp_path / "file").read_text() == "x"


def test_a_torn_last_metrics_line_is_dropped_on_resume_with_a_warning(run):
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines) + lines[-1][: len(lines[-1]) // 2])  # a torn copy
    res = invoke("train", "--resume", run, "--set", "cycles=3", "-q")
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "last line is incomplete" in res.output
    cycles = [__import__("json").loads(x)["cycle"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert cycles == [1, 2, 3]


def test_a_damaged_metrics_line_in_the_middle_is_one_line_and_changes_nothing(run):
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("{oops\n" + "".join(lines[1:]))
    before = folder_hash(run)
    assert_one_line_error(invoke("train", "--resume", run, "--set", "cycles=3", "-q"), "line 1, is not valid JSON")
    assert folder_hash(run) == before


def test_an_unreadable_checkpoint_is_detected_before_any_computation(run):
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # truncated
    before = folder_hash(run)
    t0 = time.perf_counter()
    res = invoke("evaluate", run, "-q")
    assert_one_line_error(res, "checkpoint.pt is unreadable")
    assert time.perf_counter() - t0 < 20  # the random network was not evaluated first
    assert folder_hash(run) == before and not (run / "eval").exists()


def test_a_checkpoint_of_another_architecture_is_one_line(run):
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["model"] = {k: v[:1] if v.ndim else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, run / "checkpoint.pt")
    assert_one_line_error(invoke("export", run, "-q"), "does not fit the run's tiny_cnn")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs to fill needs root")
def test_a_full_disk_is_one_line_nothing_is_lost_and_the_run_resumes(trained, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        run = mnt / "run"
        shutil.copytree(trained, run)
        (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("cycles: 2\n", "cycles: 4\n"))
        free = shutil.disk_usage(mnt).free
        (mnt / "filler").write_bytes(b"\0" * max(0, free - 8192))  # leave a few KB: the next cycle cannot fit
        before = folder_hash(run)
        res = invoke("train", "--resume", run, "-q")
        assert_one_line_error(res, "the disk is full at")
        assert "free space and resume" in res.output
        assert folder_hash(run) == before
        (mnt / "filler").unlink()
        res = invoke("train", "--resume", run, "-q")
        assert res.exit_code == 0, res.output
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)

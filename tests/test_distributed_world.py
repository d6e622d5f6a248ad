"""What a first multi-GPU run relies on, checked with gloo processes on CPUs: rows gathered on rank 0
only, a resumed run's own backend and timeout, evaluation ranks released before rank 0's probes, and
ranks whose share of a batch or split is empty."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.formats import make_idx_dataset  # tests/data, on the path as the package "data"
from deepcluster.data.base import TensorImageDataset
from deepcluster.data.source import ImageSource
from deepcluster.evaluate.pooling import extract_pooled_features, pixel_features
from deepcluster.features import FeatureOptions, extract_features
from deepcluster.models import build_model

ROOT = Path(__file__).parents[1]
CONFIG = str(ROOT / "configs" / "digits_tiny.yaml")
ENV = {**os.environ, "DEEPCLUSTER_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
# LeNet-5 has no dropout; fp32 to compare tables between world sizes
SETS = ["--set", "model.arch=lenet5", "--set", "precision=fp32", "--set", "k=10"]


def deepcluster(*args: str, nproc: int = 1, entry: Path | None = None, timeout: int = 300,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    program = [str(entry)] if entry is not None else ["-m", "deepcluster"]
    return subprocess.run([*launcher, *program, *args], capture_output=True, text=True, env=env or ENV,
                          timeout=timeout, cwd=ROOT)


def ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def table(run: Path) -> list[str]:
    """The probe table without the timings."""
    return [line.split("(")[0] for line in (run / "eval" / "probe_table.md").read_text().splitlines()]


def grey_folder(root: Path, n: int) -> Path:
    """An ImageFolder of ``n`` random 28×28 images in two classes (read lazily: it can be streamed)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i:03d}.png")
    return root


# ------------------------------------------------------------------ one process: empty shares


def test_an_empty_share_of_a_streamed_source_reads_and_extracts_with_the_right_shape():
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    model = build_model("lenet5", in_channels=1, input_size=28)
    options = FeatureOptions(mean=(0.5,), std=(0.5,), show_progress=False)
    for streamed in (False, True):
        source = ImageSource(TensorImageDataset("t", images), streamed=streamed, workers=0)
        empty = source.view(3, 3)
        assert source.take([]).shape == (0, 1, 28, 28) and source.take([]).dtype == torch.uint8
        assert [tuple(b.shape) for b in source.batches([np.arange(0), np.arange(2)])] == [(0, 1, 28, 28),
                                                                                         (2, 1, 28, 28)]
        assert options.prepare(source.take([])).shape == (0, 1, 28, 28)  # normalize took a 1-D tensor before
        full = extract_pooled_features(model, source, options, layers=["conv2", "fc1"])
        none = extract_pooled_features(model, empty, options, layers=["conv2", "fc1"])
        assert {k: v.shape for k, v in none.items()} == {k: (0, v.shape[1]) for k, v in full.items()}
        assert extract_features(model, empty, options)["embed"].shape == (0, 84)
        assert pixel_features(empty).shape == (0, 784)


# ------------------------------------------------------------------ torchrun (gloo)


@pytest.mark.slow
def test_init_from_main_shares_rank0s_settings_and_gather_rows_reaches_rank0_only(tmp_path):
    script = str(ROOT / "tests" / "dist_gather_init.py")
    ok(subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", script,
                       str(tmp_path)], capture_output=True, text=True, env=ENV, timeout=120, cwd=ROOT))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    # rank 0 alone read the settings; every rank got its payload and a group with its timeout
    assert [r["reads"] for r in ranks] == [1, 0, 0]
    assert all(r["payload"] == {"secret": 42} and r["timeout"] == 37.0 and r["backend"] == "gloo" for r in ranks)
    # only rank 0 received rows (it sends nothing but its row count); rank 1, with no rows, sends its padded share
    assert [r["gathered_is_none"] for r in ranks] == [False, True, True]
    assert [r["sent"] for r in ranks] == [8, 8 + 7 * 5 * 4, 8 + 7 * 5 * 4]

    one = tmp_path / "one"
    one.mkdir()
    ok(subprocess.run([sys.executable, script, str(one)], capture_output=True, text=True, env=ENV, timeout=120,
                      cwd=ROOT))
    alone = json.loads((one / "rank0.json").read_text())
    assert alone["reads"] == 1 and alone["payload"] == {"secret": 42} and alone["timeout"] is None


@pytest.mark.slow
def test_resume_under_torchrun_creates_the_group_with_the_runs_backend_and_timeout(tmp_path):
    run = tmp_path / "run"
    ok(deepcluster("train", "-c", CONFIG, *SETS, "--set", "cycles=1", "--set", "data.limit=300",
                   "--set", "distributed.timeout=37", "-o", str(run), "-q"))
    res = ok(deepcluster("train", "--resume", str(run), "--set", "cycles=2", "-q", nproc=2))
    # the timeout the process group holds, as PyTorch reports it (the default would be 600 s)
    assert "2 processes (gloo, timeout 37 s)" in " ".join(res.stdout.split())
    assert [json.loads(x).get("world_size", 1) for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    if torch.cuda.is_available():
        return
    nccl = tmp_path / "nccl"  # one process never creates a group: the run trains, its backend is kept
    ok(deepcluster("train", "-c", CONFIG, *SETS, "--set", "cycles=1", "--set", "data.limit=300",
                   "--set", "distributed.backend=nccl", "-o", str(nccl), "-q"))
    res = deepcluster("train", "--resume", str(nccl), "--set", "cycles=2", "-q", nproc=2)
    assert res.returncode != 0
    errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("error:")]
    assert errors == ["error: distributed.backend=nccl needs CUDA: use backend gloo (or auto) on CPUs"], (
        res.stdout + res.stderr)


@pytest.mark.slow
def test_evaluate_under_torchrun_releases_the_other_ranks_before_rank0_probes(tmp_path):
    run = tmp_path / "run"
    ok(deepcluster("train", "-c", CONFIG, *SETS, "--set", "cycles=1", "--set", "data.limit=300", "-o", str(run),
                   "-q"))
    copy = Path(shutil.copytree(run, tmp_path / "copy"))
    args = ["--checkpoints", "init,last", "--layers", "conv1,fc2", "--protocols", "linear,knn",
            "--set", "probe_epochs=300", "--set", "pixel_baseline=true", "-q"]
    ok(deepcluster("evaluate", str(copy), *args))
    # each rank writes when it ends (an atexit hook around the command: nothing of deepcluster replaced)
    entry = tmp_path / "timed.py"
    entry.write_text("import atexit, os, time\nfrom pathlib import Path\nfrom deepcluster.cli import main\n"
                     "atexit.register(lambda: Path(os.environ['ENDS'], os.environ['RANK']).write_text("
                     "str(time.time_ns())))\nmain()\n")
    ends = tmp_path / "ends"
    ends.mkdir()
    res = ok(deepcluster("evaluate", str(run), *args, "--timeout", "37", nproc=2, entry=entry,
                         env={**ENV, "ENDS": str(ends)}))
    assert "2 processes (gloo, timeout 37 s)" in " ".join(res.stdout.split())
    # rank 1 ended before rank 0 had computed a single number: every collective (both checkpoints'
    # and the pixels' features) came first, the probes after, with no other rank waiting
    computed = min(p.stat().st_mtime_ns for p in (run / "eval" / "cache").rglob("*.json"))
    rank1 = int((ends / "1").read_text())
    assert rank1 < computed, f"rank 1 ended {(rank1 - computed) / 1e9:.2f} s after rank 0's first number"
    assert int((ends / "0").read_text()) > computed
    assert not list((run / "eval").glob("features-*"))  # the spilled features are gone
    assert table(run) == table(copy)


@pytest.mark.slow
def test_empty_shares_streamed_training_with_sync_batchnorm_and_evaluation_under_three_ranks(tmp_path):
    src = grey_folder(tmp_path / "src", 66)
    data = ["--set", "data.name=folder", "--set", f"data.root={src}", "--set", "data.image_size=28",
            "--set", "data.memory_budget_mb=0", "--set", "data.workers=1"]
    # 66 = 64 + 2: the last batch's 2 rows leave rank 0 none (and the others one each, which plain
    # BatchNorm cannot normalise: synchronised, the statistics are the batch's)
    run = tmp_path / "run"
    res = ok(deepcluster("train", "-c", CONFIG, *SETS, *data, "--set", "k=5", "--set", "pca_dim=8",
                         "--set", "cycles=1", "--set", "distributed.sync_batchnorm=true", "-o", str(run), "-q",
                         nproc=3))
    assert "images: streamed" in res.stdout
    copy = Path(shutil.copytree(run, tmp_path / "copy"))
    args = ["--layers", "conv2,fc2", "--protocols", "linear,knn", "--set", "probe_epochs=5",
            "--set", "pixel_baseline=true", "-q"]
    ok(deepcluster("evaluate", str(run), *args, nproc=3))
    ok(deepcluster("evaluate", str(copy), *args))
    assert table(run) == table(copy)

    # a test split of 2 images under 3 ranks: rank 0's share of it is empty
    idx = tmp_path / "idx"
    make_idx_dataset(idx, n_train=60, n_test=2)
    small = tmp_path / "small"
    ok(deepcluster("train", "-c", CONFIG, *SETS, "--set", "data.name=fashion-mnist", "--set", f"data.root={idx}",
                   "--set", "k=5", "--set", "pca_dim=8", "--set", "cycles=1", "-o", str(small), "-q"))
    small_copy = Path(shutil.copytree(small, tmp_path / "small_copy"))
    ok(deepcluster("evaluate", str(small), *args, nproc=3))
    ok(deepcluster("evaluate", str(small_copy), *args))
    assert table(small) == table(small_copy)


@pytest.mark.slow
def test_empty_and_one_row_shares_with_plain_batchnorm_under_three_ranks(tmp_path):
    src = grey_folder(tmp_path / "src", 66)
    ok(deepcluster("train", "-c", CONFIG, *SETS, "--set", "data.name=folder", "--set", f"data.root={src}",
                   "--set", "data.image_size=28", "--set", "data.memory_budget_mb=0", "--set", "data.workers=1",
                   "--set", "k=5", "--set", "pca_dim=8", "--set", "cycles=1", "-o", str(tmp_path / "run"), "-q",
                   nproc=3))

"""--data-root on the commands that read run folders (dissect, similarity, ensemble): a run folder
moved away from its data works again when told where the data is now."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from deepcluster.cli import app

from .conftest import CONFIG

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def moved_runs(tmp_path_factory):
    """Two one-cycle runs on an ingested pool of 36 PNGs (3 classes); then the pool is moved."""
    root = tmp_path_factory.mktemp("data_root")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / "pngs" / f"c{c}").mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) // (c + 1)
            Image.fromarray(pixels).save(root / "pngs" / f"c{c}" / f"{i}.png")
    res = invoke("data", "ingest", root / "pngs", root / "pool", "--size", "16", "--workers", "0", "-q")
    assert res.exit_code == 0, res.output
    runs = []
    for seed in (0, 1):
        run = root / f"run{seed}"
        res = invoke("train", "-c", CONFIG, "--set", "data.name=ingested", "--set", f"data.root={root / 'pool'}",
                     "--set", "k=3", "--set", "cycles=1", "--set", "threads=1", "--set", "epochs_per_cycle=1", "--set", "pca_dim=off",
                     "--set", f"seed={seed}", "--set", "precision=fp32", "-o", run, "-q")
        assert res.exit_code == 0, res.output
        runs.append(run)
    (root / "pool").rename(root / "moved_pool")
    return runs, root / "moved_pool"


def test_dissect_reads_a_moved_run_with_data_root(moved_runs, tmp_path):
    (run, _), pool = moved_runs
    probe = tmp_path / "probe"
    assert invoke("concepts", "make", probe, "--n-images", "12", "--size", "24", "-q").exit_code == 0
    args = ["dissect", run, "--layer", "conv1", "--concepts", probe, "--workers", "0", "-q"]
    res = invoke(*args, "-o", tmp_path / "a")
    assert res.exit_code == 2 and "--data-root DIR" in res.output  # the pool is gone: one line
    res = invoke(*args, "-o", tmp_path / "b", "--data-root", pool)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b" / "tally.csv").is_file()
    assert "moved_pool" not in (run / "config.yaml").read_text()  # not written back


def test_similarity_reads_moved_runs_with_data_root(moved_runs, tmp_path):
    runs, pool = moved_runs
    res = invoke("similarity", *runs, "--sample", "12", "-o", tmp_path / "a", "-q")
    assert res.exit_code == 2 and "--data-root DIR" in res.output
    res = invoke("similarity", *runs, "--sample", "12", "-o", tmp_path / "b", "--data-root", pool, "-q")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b" / "cka.csv").is_file()


def test_ensemble_and_similarity_name_a_missing_data_root(moved_runs, tmp_path):
    runs, _ = moved_runs
    for command in ("ensemble", "similarity"):
        res = invoke(command, *runs, "--data-root", tmp_path / "nowhere", "-o", tmp_path / command, "-q")
        assert res.exit_code == 2, res.output
        assert "--data-root" in res.output and "no such folder" in res.output

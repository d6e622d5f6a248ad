from pathlib import Path

import pytest
from typer.testing import CliRunner

CONFIG = str(Path(__file__).parents[2] / "configs" / "digits_tiny.yaml")


@pytest.fixture(scope="session")
def digits_runs(tmp_path_factory):
    """Three one-cycle digits runs (seeds 0-2, 400 images), trained once for the CKA and ensemble tests."""
    from deepcluster.cli import app

    root = tmp_path_factory.mktemp("digits_runs")
    runs = []
    for name, seed in (("run_a", 0), ("run_b", 1), ("run_c", 2)):
        out = root / name
        res = CliRunner().invoke(app, ["train", "--config", CONFIG, "--set", "cycles=1", "--set", "threads=1", "--set", "epochs_per_cycle=1",
                                       "--set", f"seed={seed}", "--set", "data.limit=400", "--out", str(out), "-q"])
        assert res.exit_code == 0, res.output
        runs.append(out)
    return runs

"""``similarity`` and ``ensemble`` with ``--weights FILE``: a run's architecture with another
network's backbone (any layout ``load_backbone_state`` reads) instead of its checkpoint.

Run B's own backbone, saved as a plain state dict or in the DataParallel layout and loaded into
run A's (identical) architecture, must give exactly run B's numbers.
"""

from __future__ import annotations

import csv

import pytest
import torch
import typer
from typer.testing import CliRunner

from deepcluster.cli import compare as cli_compare
from deepcluster.core.errors import ConfigError, DataError


def invoke(*args):
    app = typer.Typer(pretty_exceptions_enable=False)
    cli_compare.register(app)
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def weights_of_b(digits_runs, tmp_path_factory):
    """Run B's network saved as a plain state dict and as ``{"state_dict": {"module." + k: v}}``."""
    from deepcluster.runs import RunFolder

    folder = tmp_path_factory.mktemp("weights")
    state = RunFolder(digits_runs[1]).build_model("last").state_dict()
    plain, wrapped = folder / "plainB.pth", folder / "dpB.pth.tar"
    torch.save(state, plain)
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, wrapped)
    return {"plain": plain, "dp": wrapped, "state": state}


def _cka(path) -> list[tuple[str, str, float]]:
    with open(path, newline="") as f:
        return [(r["layer_a"], r["layer_b"], float(r["cka"])) for r in csv.DictReader(f) if r["model_a"] != r["model_b"]]


def _error_lines(res) -> list[str]:
    return [line for line in res.output.splitlines() if line.strip()]


@pytest.mark.parametrize("layout", ["plain", "dp"])
def test_similarity_with_weights_is_the_run_they_came_from(digits_runs, weights_of_b, layout, tmp_path):
    run_a, run_b = digits_runs[:2]
    common = ["--layers", "conv1,conv2,fc2", "--sample", "120", "-q"]
    ref = invoke("similarity", run_a, run_b, *common, "--out", tmp_path / "ref")
    assert ref.exit_code == 0, ref.output
    file = weights_of_b[layout]
    res = invoke("similarity", run_a, run_a, "--weights", "-", "--weights", file, *common, "--out", tmp_path / "w")
    assert res.exit_code == 0, res.output
    reports = [line for line in res.output.splitlines() if line.startswith("weights ")]
    layout_name = "torchvision state dict" if layout == "plain" else "DataParallel (state_dict → module.)"
    assert len(reports) == 1 and reports[0].startswith(f"weights {file.name}: {layout_name}"), res.output
    stem = file.name.split(".")[0]
    with open(tmp_path / "w" / "cka.csv", newline="") as f:
        assert {r["model_b"] for r in csv.DictReader(f)} >= {f"run_a+{stem}"}
    got, want = _cka(tmp_path / "w" / "cka.csv"), _cka(tmp_path / "ref" / "cka.csv")
    assert [g[:2] for g in got] == [w[:2] for w in want] and len(got) == 9
    assert [g[2] for g in got] == pytest.approx([w[2] for w in want], abs=2e-6)


def test_ensemble_with_weights_is_the_run_they_came_from(digits_runs, weights_of_b, tmp_path):
    run_a, run_b = digits_runs[:2]
    common = ["--layer", "conv2", "--train-limit", "200", "--test-limit", "80", "-q"]
    ref = invoke("ensemble", run_b, run_a, *common, "--out", tmp_path / "ref")
    assert ref.exit_code == 0, ref.output
    # run B's folder (its config: the probe's seed) with its own backbone read from the DataParallel file
    res = invoke("ensemble", run_b, run_a, "--weights", weights_of_b["dp"], "--weights", "-", *common,
                 "--out", tmp_path / "w")
    assert res.exit_code == 0, res.output
    with open(tmp_path / "ref" / "ensemble.csv", newline="") as f:
        want = next(csv.DictReader(f))
    with open(tmp_path / "w" / "ensemble.csv", newline="") as f:
        got = next(csv.DictReader(f))
    assert (got["model_a"], got["model_b"]) == ("run_b+dpB", "run_a")
    for col in ("acc_a", "acc_b", "weight_a", "weight_b", "ensemble_acc", "gain"):
        assert float(got[col]) == pytest.approx(float(want[col]), abs=1e-6), col


def test_load_runs_puts_the_backbone_in_the_runs_architecture(digits_runs, weights_of_b):
    from deepcluster.interpret.ensemble import load_runs

    lines: list[str] = []
    a, b = load_runs([digits_runs[0], digits_runs[0]], weights=[None, weights_of_b["dp"]], log=lines.append)
    assert (a.name, b.name) == ("run_a", "run_a+dpB") and a.weights is None and b.weights == weights_of_b["dp"]
    assert len(lines) == 1 and lines[0] == b.weights_report.summary()
    got = b.model.state_dict()
    assert got.keys() == weights_of_b["state"].keys()
    assert all(torch.equal(got[k], v) for k, v in weights_of_b["state"].items())
    assert not all(torch.equal(a.model.state_dict()[k], v) for k, v in weights_of_b["state"].items())
    # --weights-prefix once for all goes to the runs given a file; names stay overridable
    a, b = load_runs([digits_runs[0], digits_runs[0]], names=["mine", "theirs"], weights=["-", weights_of_b["dp"]],
                     weights_prefix=["module."])
    assert (a.name, b.name) == ("mine", "theirs") and b.weights_report.prefix == "module."


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"weights": ["-"]}, "1 --weights for 2 runs: give one --weights per run"),
    ({"weights_prefix": ["module."]}, "pass --weights FILE too"),
    ({"weights": ["-", "x.pth"], "weights_prefix": ["a.", "b.", "c."]}, "3 --weights-prefix for 2 runs"),
    ({"weights": ["-", "x.pth"], "weights_prefix": ["a.", "b."]}, "run 1, which has no --weights file"),
    ({"weights": "x.pth"}, "sequences"),
])
def test_load_runs_checks_the_weights_options_first(digits_runs, kwargs, message):
    from deepcluster.interpret.ensemble import load_runs

    with pytest.raises(ConfigError, match=message):
        load_runs(digits_runs[:2], **kwargs)


def test_same_folder_twice_needs_weights_or_names(digits_runs):
    from deepcluster.interpret.ensemble import load_runs

    with pytest.raises(DataError, match=r"run_a appears twice \(give each run a --name\)"):
        load_runs([digits_runs[0], digits_runs[0]])


def test_weights_count_mismatch_is_one_line(digits_runs, weights_of_b, tmp_path):
    for command in ("similarity", "ensemble"):
        res = invoke(command, *digits_runs[:2], "--weights", "-", "--weights", weights_of_b["plain"],
                     "--weights", "-", "--out", tmp_path / command, "-q")
        lines = _error_lines(res)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert lines == ["error: 3 --weights for 2 runs: give one --weights per run, in order (- for a run without)"]
        assert not (tmp_path / command).exists()


def test_weights_prefix_without_weights(digits_runs, tmp_path):
    for command in ("similarity", "ensemble"):
        res = invoke(command, *digits_runs[:2], "--weights-prefix", "module.", "--out", tmp_path / command, "-q")
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert _error_lines(res) == ["error: --weights-prefix names the backbone's prefix in a --weights file: "
                                     "pass --weights FILE too"]


def test_weights_of_another_architecture(digits_runs, tmp_path):
    from deepcluster.models.published import load_backbone_state
    from deepcluster.models.registry import build_model
    from deepcluster.runs import RunFolder

    path = tmp_path / "lenet.pth"
    torch.save(build_model("lenet5", in_channels=1, input_size=28).state_dict(), path)
    with pytest.raises(ConfigError) as exc:  # the message the command must print as it is
        load_backbone_state(path, RunFolder(digits_runs[0]).build_model("last"))
    for command in ("similarity", "ensemble"):
        res = invoke(command, digits_runs[0], digits_runs[0], "--weights", "-", "--weights", path,
                     "--out", tmp_path / command, "-q")
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert _error_lines(res) == [f"error: {exc.value}"], res.output
        assert not (tmp_path / command).exists()


def test_truncated_weights_file(digits_runs, weights_of_b, tmp_path):
    bad = tmp_path / "cut.pth"
    bad.write_bytes(weights_of_b["plain"].read_bytes()[:200])
    res = invoke("similarity", *digits_runs[:2], "--weights", bad, "--weights", "-", "--out", tmp_path / "s", "-q")
    lines = _error_lines(res)
    assert res.exit_code == 2 and "Traceback" not in res.output and len(lines) == 1, res.output
    assert lines[0].startswith("error: weights file") and "cut.pth" in lines[0]

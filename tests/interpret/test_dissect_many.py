"""Several models in one dissection: the same results as one dissection per model."""

from __future__ import annotations

import numpy as np
import pytest
import torchvision
from typer.testing import CliRunner

from deepcluster.cli import app
from deepcluster.interpret.broden import BrodenDataset
from deepcluster.interpret.concepts import make_concept_probe
from deepcluster.interpret.dissect import DissectOptions, DissectTarget, dissect, dissect_many
from deepcluster.interpret.model_source import last_conv_layer, resolve_layer
from deepcluster.models import build_model

runner = CliRunner()


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return make_concept_probe(tmp_path_factory.mktemp("many") / "p", n_images=30, size=32, show_progress=False)


@pytest.fixture
def nets_file(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(
        "from deepcluster.models import build_model\n"
        "lenet = build_model('lenet5', in_channels=1, input_size=28, sobel=False, num_classes=None, seed=0)\n"
        "lenet_b = build_model('lenet5', in_channels=1, input_size=28, sobel=False, num_classes=None, seed=1)\n"
        "alexnet = build_model('small_alexnet', in_channels=3, input_size=32, sobel=False, num_classes=None, seed=0)\n"
    )
    return path


def _nets():
    return (build_model("lenet5", in_channels=1, input_size=28, sobel=False, num_classes=None, seed=0),
            build_model("small_alexnet", in_channels=3, input_size=32, sobel=False, num_classes=None, seed=0))


@pytest.mark.parametrize("union", ["annotated", "lite"])
@pytest.mark.parametrize("cache_mb", [0, 512])
def test_dissect_many_equals_one_dissection_per_model(probe, union, cache_mb):
    lenet, alexnet = _nets()
    ds = BrodenDataset(probe)
    options = DissectOptions(device="cpu", show_progress=False, union=union, feature_cache_mb=cache_mb)
    together = dissect_many([DissectTarget(lenet, "conv2", input_size=28, grey=True),
                             DissectTarget(alexnet, "last-conv", mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))], ds, options)
    alone = [dissect(lenet, "conv2", ds, options, input_size=28, grey=True),
             dissect(alexnet, "last-conv", ds, options, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))]
    for a, b in zip(together, alone):
        for field in ("thresholds", "intersect", "activation", "truth", "iou", "unit_pixels", "top_images", "top_masks"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
        assert a.tally_rows() == b.tally_rows()
        assert a.preprocess == b.preprocess and a.input_shape == b.input_shape
    assert together[0].units == 16 and together[1].module == resolve_layer(alexnet, "conv5")
    assert together[0].timings["models"] == 2


def test_last_conv_layer_of_torchvision_and_our_nets():
    assert last_conv_layer(torchvision.models.resnet18(weights=None)) == "layer4"
    assert last_conv_layer(torchvision.models.alexnet(weights=None)) == "features"
    lenet, alexnet = _nets()
    assert last_conv_layer(lenet) == resolve_layer(lenet, "conv2")
    assert last_conv_layer(alexnet) == resolve_layer(alexnet, "conv5")


def test_cli_several_models_give_the_tallies_of_one_command_each(probe, nets_file, tmp_path):
    specs = [f"{nets_file}:lenet", f"{nets_file}:lenet_b", f"{nets_file}:alexnet"]
    common = ["--concepts", str(probe), "--device", "cpu", "-q"]
    res = runner.invoke(app, ["dissect", *specs, "--layer", "conv2", "--layer", "conv2", "--layer", "last-conv",
                              "--name", "a", "--name", "b", "--name", "alex", "--out", str(tmp_path / "all"), "--lce",
                              *common])
    assert res.exit_code == 0, res.output
    assert "dissected 3 models" in res.output and "Learned Concepts Embedding: 3 models" in res.output
    for spec, layer, folder in zip(specs, ["conv2", "conv2", "last-conv"], ["a_conv2", "b_conv2", "alex_last-conv"]):
        one = tmp_path / f"one_{folder}"
        res = runner.invoke(app, ["dissect", spec, "--layer", layer, "--out", str(one), *common])
        assert res.exit_code == 0, res.output
        assert (tmp_path / "all" / folder / "tally.csv").read_bytes() == (one / "tally.csv").read_bytes()
    assert (tmp_path / "all" / "lce" / "lce.csv").is_file()


@pytest.mark.parametrize("args, message", [
    (["--layer", "conv2", "--layer", "conv2", "--layer", "conv2"], "3 --layer for 2 MODELs"),
    (["--layer", "conv2", "--weights", "w.pth"], "1 --weights for 2 MODELs"),
    (["--layer", "conv2", "--name", "x", "--name", "x"], "share a name"),
])
def test_cli_several_models_bad_pairings_are_one_line(probe, nets_file, args, message):
    specs = [f"{nets_file}:lenet", f"{nets_file}:lenet_b"]
    res = runner.invoke(app, ["dissect", *specs, *args, "--concepts", str(probe), "-q"])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_cli_lce_needs_two_models(probe, nets_file):
    res = runner.invoke(app, ["dissect", f"{nets_file}:lenet", "--layer", "conv2", "--lce", "--concepts", str(probe), "-q"])
    assert res.exit_code == 2 and "at least 2 MODELs" in res.output


def test_cli_workers_decode_the_probe_with_the_same_tally(probe, nets_file, tmp_path):
    common = [f"{nets_file}:lenet", "--layer", "conv2", "--concepts", str(probe), "--device", "cpu", "-q"]
    for workers in ("0", "2"):
        res = runner.invoke(app, ["dissect", *common, "--workers", workers, "--out", str(tmp_path / workers)])
        assert res.exit_code == 0, res.output
    assert (tmp_path / "0" / "tally.csv").read_bytes() == (tmp_path / "2" / "tally.csv").read_bytes()
    res = runner.invoke(app, ["dissect", *common, "--workers", "-1"])
    assert res.exit_code == 2 and "Traceback" not in res.output

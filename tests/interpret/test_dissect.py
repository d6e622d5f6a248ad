"""Network dissection: planted units, thresholds, tally.csv, model sources and the CLI."""

from __future__ import annotations

import csv
import inspect
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from deepcluster.cli.interpret import register
from deepcluster.core.errors import ConfigError, DataError
from deepcluster.interpret.broden import BrodenDataset, BrodenWriter
from deepcluster.interpret.concepts import make_concept_probe
from deepcluster.interpret.dissect import DissectOptions, cache_dir, dissect
from deepcluster.interpret.dissect_report import write_dissection
from deepcluster.interpret.model_source import load_model_source, resolve_layer
from deepcluster.interpret.quantile import HistogramQuantile, TopKQuantile
from deepcluster.interpret.tally import read_tally, tally_fields
from deepcluster.models import build_model

N_IMAGES = 40
SIZE = 32
SQ = 6  # side of the planted square

# NetDissect-Lite's feature_operation.py writes this header for categories color, object, scene.
LITE_HEADER = (
    "unit,category,label,score,"
    "color-label,color-truth,color-activation,color-intersect,color-iou,"
    "object-label,object-truth,object-activation,object-intersect,object-iou,"
    "scene-label,scene-truth,scene-activation,scene-intersect,scene-iou"
)


# ---------------------------------------------------------------------------------------------
# A probe whose images carry their own concepts, and a model reading them back


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Channel 0 of each image IS the 'square' object mask (x255), channel 1 is 255 on 'indoor'
    scenes, channel 2 noise. Masks at image size."""
    root = tmp_path_factory.mktemp("planted") / "probe"
    rng = np.random.default_rng(0)
    w = BrodenWriter(root, pixel_categories=("color", "object"), image_categories=("scene",))
    red, blue = w.add_label("red", "color"), w.add_label("blue", "color")
    square, disk = w.add_label("square", "object"), w.add_label("disk", "object")
    indoor, outdoor = w.add_label("indoor", "scene"), w.add_label("outdoor", "scene")
    squares = []
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(N_IMAGES):
        obj = np.zeros((SIZE, SIZE), np.int32)
        cy, cx = rng.integers(6, SIZE - 6, 2)
        obj[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = disk
        y, x = rng.integers(0, SIZE - SQ, 2)
        sq = np.zeros((SIZE, SIZE), bool)
        sq[y : y + SQ, x : x + SQ] = True
        obj[sq] = square
        color = np.where(xx < rng.integers(4, SIZE - 4), red, blue).astype(np.int32)
        scene = indoor if i % 2 == 0 else outdoor
        img = np.zeros((3, SIZE, SIZE), np.uint8)
        img[0] = 255 * sq
        img[1] = 255 if scene == indoor else 0
        img[2] = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
        w.add_image(img, masks={"color": color, "object": obj}, labels={"scene": [scene]})
        squares.append(sq)
    w.close()
    return root, np.stack(squares)


class Planted(nn.Module):
    """``act`` unit 0 = channel 0 (the square), unit 1 = channel 1 (indoor), unit 2 = constant."""

    def __init__(self, pool: int = 1):
        super().__init__()
        self.act = nn.Conv2d(3, 3, 1)
        self.pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            self.act.weight.zero_()
            self.act.bias.zero_()
            self.act.weight[0, 0] = 1.0
            self.act.weight[1, 1] = 1.0
            self.act.bias[2] = 0.3

    def forward(self, x):
        return self.head(self.pool(self.act(x)).mean((2, 3)))


def test_planted_units_are_labelled_with_their_concepts(planted):
    root, squares = planted
    # binary maps: any quantile above the concepts' coverage puts the threshold on the low value,
    # so "> threshold" is the mask itself (indoor covers half the pixels, the square 3.5 %)
    res = dissect(Planted(), "act", root, DissectOptions(quantile=0.6, show_progress=False, top_images=4))
    col, score = res.best()
    names = [res.label_names[c] for c in col]
    assert names[:2] == ["square", "indoor"]
    assert score[0] == pytest.approx(1.0, abs=1e-6) and score[1] == pytest.approx(1.0, abs=1e-6)
    assert res.unit_category(int(col[0])) == "object" and res.unit_category(int(col[1])) == "scene"
    # the constant unit never exceeds its threshold: no pixel, IoU 0 everywhere, no label
    assert res.unit_pixels[2] == 0 and np.all(res.iou[2] == 0) and np.isfinite(res.iou).all()
    assert res.labelled().tolist() == [True, True, False]
    # exact counts
    sq = res.label_names.index("square")
    assert res.truth[sq] == squares.sum() == res.intersect[0, sq]
    ind = res.label_names.index("indoor")
    assert res.truth[ind] == (N_IMAGES // 2) * SIZE * SIZE
    # category-aware: the best colour of the square unit is a poor match
    cat_col, cat_iou = res.best_per_category()["color"]
    assert res.label_names[cat_col[0]] in ("red", "blue") and cat_iou[0] < 0.2
    # the region kept for the page is the square on that top image
    for slot in range(4):
        img = int(res.top_images[0, slot])
        assert np.array_equal(res.region(0, slot), squares[img])
    assert res.thresholds.dtype == np.float32 and res.iou.dtype == np.float32


def test_default_quantile_on_binary_maps_fires_nowhere(planted):
    # the 0.5 % top quantile of a 0/1 map with > 0.5 % ones is the high value itself: strictly
    # above it there is nothing (NetDissect-Lite's `>` too)
    root, _ = planted
    res = dissect(Planted(), "act", root, DissectOptions(show_progress=False))
    assert not res.labelled().any() and np.all(res.iou == 0)


def test_upsampled_maps_still_find_the_square(planted):
    root, _ = planted
    res = dissect(Planted(pool=2), "pool", root, DissectOptions(quantile=0.035, show_progress=False))
    col, score = res.best()
    assert res.feature_shape == (SIZE // 2, SIZE // 2) and res.mask_shape == (SIZE, SIZE)
    assert res.label_names[col[0]] == "square" and score[0] > 0.8


def test_vector_layers_cover_the_whole_image(planted):
    root, _ = planted

    class Vec(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Identity()

        def forward(self, x):
            return self.fc(x[:, 1].mean((1, 2))[:, None])  # one value per image: indoor or not

    res = dissect(Vec(), "fc", root, DissectOptions(quantile=0.6, show_progress=False))
    col, score = res.best()
    assert res.feature_shape == (1, 1) and res.label_names[col[0]] == "indoor" and score[0] == pytest.approx(1.0)


@pytest.mark.parametrize("field, value, message", [
    ("quantile", 1.0, "quantile must lie in"),
    ("iou_threshold", -0.1, "iou_threshold must lie in"),
    ("batch_size", 0, "batch_size must be >= 1"),
    ("method", "median", "method must be auto, exact or sketch"),
    ("top_images", 0, "top_images must be >= 1"),
    ("union", "all", "union must be annotated or lite"),
    ("num_workers", -1, "num_workers must be >= 0"),
])
def test_options_are_checked_when_a_dissection_starts(planted, field, value, message):
    root, _ = planted
    options = DissectOptions(**{field: value})  # stored as given: checked by validate(), at the start
    with pytest.raises(ConfigError, match=message):
        dissect(Planted(), "act", root, options)
    assert DissectOptions().validate() == DissectOptions()


def test_settings_travel_only_as_options(planted):
    root, _ = planted
    res = dissect(Planted(), "act", root, DissectOptions(quantile=0.6, show_progress=False, top_images=4))
    assert res.top_images.shape[1] == 4
    with pytest.raises(TypeError, match="quantile"):
        dissect(Planted(), "act", root, quantile=0.6)
    with pytest.raises(TypeError, match="DissectOptions"):
        dissect(Planted(), "act", root, {"quantile": 0.6})


def test_the_dissect_module_keeps_its_name():
    import deepcluster.interpret
    import deepcluster.interpret.dissect as module

    assert inspect.ismodule(module) and module.dissect is dissect
    assert inspect.ismodule(deepcluster.interpret.dissect)


# ---------------------------------------------------------------------------------------------
# Reading the probe


@pytest.mark.parametrize("cache_mb", [512, 0])
def test_worker_processes_read_what_this_process_reads(planted, cache_mb):
    """The probe decoded by DataLoader worker processes (5 batches) gives the same dissection,
    bit for bit, as read in this process: pass 1 and pass 2, with and without cached activations."""
    root, _ = planted
    options = DissectOptions(quantile=0.6, batch_size=8, show_progress=False, device="cpu", feature_cache_mb=cache_mb)
    here = dissect(Planted(pool=2), "pool", root, replace(options, num_workers=0))
    workers = dissect(Planted(pool=2), "pool", root, replace(options, num_workers=2))
    assert here.cached_features == workers.cached_features == (cache_mb > 0)
    for name in ("thresholds", "intersect", "activation", "truth", "iou", "unit_pixels", "top_images", "top_values",
                 "top_masks"):
        a, b = getattr(here, name), getattr(workers, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name


def test_the_loader_dataset_is_paths_and_indices(planted):
    """What a worker process receives pickles small (the probe's file names, index arrays, the
    concept table) and reads the same batches after the round trip."""
    import pickle

    from deepcluster.interpret.dissect import _Concepts, _ProbeBatches

    root, _ = planted
    probe = BrodenDataset(root)
    batches = _ProbeBatches(probe, 16, table=_Concepts(probe), mask_pixels=SIZE * SIZE)
    blob = pickle.dumps(batches)
    assert len(blob) < 2 * len(pickle.dumps(probe)) + 20_000
    copy = pickle.loads(blob)
    assert len(copy) == len(batches) == 3
    a, b = batches[2], copy[2]
    assert a.indices.tolist() == list(range(32, N_IMAGES)) and not a.error
    for x, y in zip(a, b):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
    assert a.images.dtype == torch.uint8 and a.pix.dtype == torch.int16 and a.pix.shape[-1] == SIZE * SIZE
    without_images = _ProbeBatches(probe, 16, images=False, table=_Concepts(probe), mask_pixels=SIZE * SIZE)[2]
    assert without_images.images is None and torch.equal(without_images.pix, a.pix)


def test_a_missing_image_read_by_a_worker_fails_in_one_line(planted, tmp_path):
    import shutil

    root, _ = planted
    broken = tmp_path / "probe"
    shutil.copytree(root, broken)
    (broken / "images" / "000017.png").unlink()
    options = DissectOptions(quantile=0.6, batch_size=8, show_progress=False, device="cpu", num_workers=2)
    with pytest.raises(DataError, match=r"^image .*000017.png \(row 19 of index.csv\) does not exist") as err:
        dissect(Planted(), "act", broken, options)
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)


def test_default_workers_are_the_cores_of_this_rank(monkeypatch):
    from deepcluster.interpret.dissect import MAX_NUM_WORKERS, default_num_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(12)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_num_workers() == DissectOptions().num_workers == min(12, MAX_NUM_WORKERS)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_num_workers() == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(256)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_num_workers() == MAX_NUM_WORKERS


# ---------------------------------------------------------------------------------------------
# Thresholds


@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_quantiles_match_numpy(seed):
    rng = np.random.default_rng(seed)
    # drifting batches: the histogram's range must grow up and down
    chunks = [rng.normal(loc=3 * i, scale=1 + abs(i), size=(5, 300)).astype(np.float32) for i in range(-3, 6)]
    chunks.append(np.full((5, 7), 2.0, np.float32))
    data = np.concatenate(chunks, 1)
    for q in (0.005, 0.04, 0.5):
        exact = TopKQuantile(5, data.shape[1], q)
        sketch = HistogramQuantile(5, q)
        for c in chunks:
            exact.add(torch.from_numpy(c))
            sketch.add(torch.from_numpy(c))
        ref = np.percentile(data.astype(np.float64), 100 * (1 - q), axis=1)
        np.testing.assert_allclose(exact.result(), ref, rtol=1e-6, atol=1e-6)
        span = data.max(1) - data.min(1)
        assert np.all(np.abs(sketch.result() - ref) <= 4 * span / 4096 + 1e-6)


def test_exact_and_sketch_dissections_agree(tmp_path):
    root = make_concept_probe(tmp_path / "probe", n_images=N_IMAGES, size=SIZE, show_progress=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1))
    feats = []
    hook = model[2].register_forward_hook(lambda m, i, o: feats.append(o.detach()))
    options = DissectOptions(batch_size=16, show_progress=False)
    kw = {"mean": (0.5,), "std": (0.5,)}
    exact = dissect(model, "2", root, replace(options, method="exact"), **kw)
    hook.remove()
    assert len(feats) == 3  # one pass: pass 2 reused the cached activations
    sketch = dissect(model, "2", root, replace(options, method="sketch", feature_cache_mb=0), **kw)
    acts = torch.cat(feats).transpose(0, 1).reshape(8, -1).double().numpy()
    np.testing.assert_allclose(exact.thresholds, np.percentile(acts, 99.5, axis=1), rtol=1e-5, atol=1e-6)
    span = acts.max(1) - acts.min(1)
    assert np.all(np.abs(sketch.thresholds - exact.thresholds) <= 4 * span / 4096 + 1e-5)
    assert exact.method == "exact" and sketch.method == "sketch"
    assert exact.cached_features and not sketch.cached_features
    assert np.abs(exact.iou - sketch.iou).max() < 0.02


# ---------------------------------------------------------------------------------------------
# Files


def test_tally_has_netdissect_lite_columns_and_round_trips(planted, tmp_path):
    root, _ = planted
    res = dissect(Planted(), "act", root, DissectOptions(quantile=0.6, show_progress=False), model_name="planted")
    paths = write_dissection(res, tmp_path / "out", show_progress=False)
    with open(paths["tally"], newline="") as f:
        header = f.readline().strip()
    assert header == LITE_HEADER == ",".join(tally_fields(("color", "object", "scene")))
    rows = read_tally(paths["tally"])
    assert [r["unit"] for r in rows][:2] in ([1, 2], [2, 1]) and rows[-1]["unit"] == 3  # 1-based, best first
    by_unit = {r["unit"]: r for r in rows}
    assert by_unit[1]["label"] == "square" and by_unit[1]["category"] == "object"
    assert by_unit[1]["score"] == pytest.approx(1.0) and by_unit[1]["object-iou"] == pytest.approx(1.0)
    assert by_unit[2]["label"] == "indoor" and by_unit[2]["scene-truth"] == (N_IMAGES // 2) * SIZE * SIZE
    assert [r["unit"] for r in read_tally(paths["tally"], min_score=0.04)] == [r["unit"] for r in rows[:2]]
    summary = json.loads(paths["summary"].read_text())
    assert summary["n_units"] == 3 and summary["n_labelled"] == 2
    assert summary["units_per_category"] == {"color": 0, "object": 1, "scene": 1}
    assert np.load(paths["thresholds"]).shape == (3,)
    assert np.load(paths["iou"]).shape == (3, len(res.label_names))
    html = paths["html"].read_text()
    assert "data:image/png;base64," in html and "unit 1: square" in html and "http" not in html.split("<body>")[1]
    assert sorted(p.name for p in (tmp_path / "out" / "units").iterdir()) == ["unit_0001.png", "unit_0002.png"]


def test_read_tally_reads_netdissect_lite_files(tmp_path):
    path = tmp_path / "tally.csv"
    path.write_text(
        LITE_HEADER + "\n"
        "7,object,car,0.1234567,red,100.0,50.0,10.0,0.0714,car,200.0,60.0,30.0,0.1234567,street,300.0,40.0,5.0,0.0149\n"
        "3,color,red,0.01,red,100.0,20.0,1.0,0.01,car,200.0,10.0,1.0,0.0048,street,300.0,9.0,0.0,0.0\n"
    )
    rows = read_tally(path)
    assert rows[0]["unit"] == 7 and rows[0]["label"] == "car" and rows[0]["score"] == pytest.approx(0.1234567)
    assert rows[0]["color-truth"] == 100.0 and rows[0]["scene-label"] == "street"
    assert [r["unit"] for r in read_tally(path, min_score=0.04)] == [7]
    bad = tmp_path / "bad.csv"
    bad.write_text("unit,label\n1,car\n")
    with pytest.raises(DataError, match="category"):
        read_tally(bad)
    with pytest.raises(DataError, match="does not exist"):
        read_tally(tmp_path / "missing.csv")


def test_cache_dir_respects_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPCLUSTER_CACHE", str(tmp_path / "dc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "dc"
    monkeypatch.delenv("DEEPCLUSTER_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "deepcluster"


# ---------------------------------------------------------------------------------------------
# Model sources


def test_layers_and_sources(tmp_path):
    lenet = build_model("lenet5", in_channels=1, input_size=28, sobel=False, num_classes=None, seed=0)
    assert resolve_layer(lenet, "conv2") == "features.7" and resolve_layer(lenet, "features.7") == "features.7"
    with pytest.raises(ConfigError, match="unknown layer 'conv9'.*conv1"):
        resolve_layer(lenet, "conv9")

    import torchvision

    ref = torchvision.models.get_model("squeezenet1_0", weights=None)
    torch.save(ref.state_dict(), tmp_path / "sq.pth")
    model, info = load_model_source("squeezenet1_0", weights=tmp_path / "sq.pth")
    assert info.kind == "torchvision" and info.in_channels == 3 and info.mean[0] == pytest.approx(0.485)
    assert torch.equal(model.features[0].weight, ref.features[0].weight) and not model.training
    _, info = load_model_source("tv:squeezenet1_0")
    assert info.name == "squeezenet1_0"
    torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="does not fit"):
        load_model_source("squeezenet1_0", weights=tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="neither a run folder"):
        load_model_source("no_such_model")
    with pytest.raises(ConfigError, match="cannot import"):
        load_model_source("no_such_module_xyz:model")
    with pytest.raises(ConfigError, match="run folder has its checkpoints"):
        load_model_source(tmp_path, weights=tmp_path / "sq.pth")


# ---------------------------------------------------------------------------------------------
# Command line

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    register(app)
    return app


def invoke(*args):
    return runner.invoke(_app(), [str(a) for a in args])


@pytest.fixture(scope="module")
def small_probe(tmp_path_factory):
    return make_concept_probe(tmp_path_factory.mktemp("probe") / "p", n_images=N_IMAGES, size=SIZE, show_progress=False)


@pytest.fixture
def lenet_file(tmp_path):
    path = tmp_path / "mynets.py"
    path.write_text(
        "from deepcluster.models import build_model\n"
        "model = build_model('lenet5', in_channels=1, input_size=28, sobel=False, num_classes=None, seed=0)\n"
        "def make():\n    return model\n"
    )
    return path


def _check_outputs(out: Path, units: int) -> dict:
    for name in ("tally.csv", "summary.json", "dissect.html", "thresholds.npy", "iou.npy", "concepts.csv"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_units"] == units
    assert len(read_tally(out / "tally.csv")) == units
    return summary


def test_cli_dissects_a_module_attribute(lenet_file, small_probe, tmp_path, monkeypatch):
    out = tmp_path / "d1"
    res = invoke("dissect", f"{lenet_file}:model", "--layer", "conv2", "--concepts", small_probe, "--input-size", 28,
                 "--out", out, "-q")
    assert res.exit_code == 0, res.output
    assert "units on 40 images" in res.output and "category" in res.output
    summary = _check_outputs(out, 16)
    assert summary["input_shape"] == [1, 28, 28] and summary["preprocess"]["grey"] is True
    # importable module:callable, default output folder ./dissect/<name>_<layer>
    monkeypatch.syspath_prepend(str(lenet_file.parent))
    monkeypatch.chdir(tmp_path)
    res = invoke("dissect", "mynets:make", "--layer", "fc1", "--concepts", small_probe, "-q", "--method", "sketch",
                 "--input-size", 28)
    assert res.exit_code == 0, res.output
    summary = _check_outputs(tmp_path / "dissect" / "mynets.make_fc1", 120)
    assert summary["quantile_method"] == "sketch" and summary["feature_shape"] == [1, 1]


def test_cli_user_errors_are_one_line(lenet_file, small_probe, tmp_path):
    cases = [
        (("dissect", f"{lenet_file}:model", "--layer", "conv9", "--concepts", small_probe), "unknown layer 'conv9'"),
        (("dissect", f"{lenet_file}:model", "--layer", "conv2", "--concepts", tmp_path / "nope"), "concepts make"),
        (("dissect", "no_such_model", "--layer", "conv2", "--concepts", small_probe), "neither a run folder"),
        (("dissect", f"{lenet_file}:model", "--layer", "conv2", "--concepts", small_probe, "--quantile", 2), "quantile"),
        (("concepts", "make", tmp_path / "c", "--size", 8), "size"),
    ]
    for args, fragment in cases:
        res = invoke(*args)
        assert res.exit_code == 2, res.output
        assert fragment in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1, res.output


def test_cli_concepts_make(tmp_path):
    res = invoke("concepts", "make", tmp_path / "probe", "--n-images", 6, "--size", 24, "--seed", 3, "-q")
    assert res.exit_code == 0, res.output
    assert "6 images of 24×24" in res.output
    assert len(BrodenDataset(tmp_path / "probe")) == 6


@pytest.mark.slow
def test_cli_dissects_a_trained_run(small_probe, tmp_path):
    from deepcluster.cli import app

    config = Path(__file__).parents[2] / "configs" / "digits_tiny.yaml"
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--config", str(config), "--set", "cycles=1", "--set", "threads=1", "--set", "epochs_per_cycle=1",
                              "--out", str(run), "-q"])
    assert res.exit_code == 0, res.output
    res = invoke("dissect", run, "--layer", "conv2", "--concepts", small_probe, "-q")
    assert res.exit_code == 0, res.output
    summary = _check_outputs(run / "dissect" / "conv2", 32)
    assert summary["input_shape"] == [1, 28, 28] and summary["module"] == "features.7"
    with open(run / "dissect" / "conv2" / "tally.csv", newline="") as f:
        assert next(csv.reader(f))[:4] == ["unit", "category", "label", "score"]

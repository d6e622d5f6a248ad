"""FAIR's DeepCluster v1 checkpoints as run folders: ``init: FILE`` with ``cycles: 0``, every
command on the imported network, and DeepCluster continued from it (exactly resumable).

The checkpoints are synthesised in FAIR's exact layout by tests/fair_v1.py (legacy serialisation,
``features.module.N.*`` keys, no ``num_batches_tracked``, optimizer state, a 10,000-way top layer)."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from deepcluster.cli import app
from deepcluster.models.published import strip_module
from deepcluster.runs import RunFolder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fair_v1 import fair_forward, make_fair_checkpoint  # noqa: E402

runner = CliRunner()

# the user's data and k: a small RGB folder, 3 clusters; fp32 (no precision measurement), 1 thread
COMMON = ["-c", "imagenet_alexnet", "--set", "k=3", "--set", "pca_dim=8", "--set", "precision=fp32",
          "--set", "threads=1", "--set", "batch_size=16", "--set", "feature_batch_size=16", "-q"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(res, fragment):
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert fragment in res.output, res.output
    assert "Traceback" not in res.output
    assert sum(line.startswith("error") for line in lines) == 1, res.output


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(3):
        d = root / f"class{c}"
        d.mkdir()
        for i in range(10):
            a = (rng.random((48, 48, 3)) * 80).astype(np.uint8)
            a[:, :, c] += 120
            a[6 * c: 6 * c + 12] += 50
            Image.fromarray(a).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def fair_alexnet(tmp_path_factory):
    path = tmp_path_factory.mktemp("fair") / "checkpoint.pth.tar"
    state = make_fair_checkpoint(path, "alexnet", sobel=True, k=10000, seed=1)
    return path, state


@pytest.fixture(scope="module")
def imported(fair_alexnet, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fair"
    res = invoke("train", *COMMON, "--set", f"data.root={images}", "--set", f"init={fair_alexnet[0]}",
                 "--set", "cycles=0", "-o", out)
    assert res.exit_code == 0, res.output
    assert "DeepCluster v1 (FAIR)" in res.output and "38 tensors loaded" in res.output, res.output
    return out


def test_the_file_is_in_fairs_layout(fair_alexnet):
    path, _ = fair_alexnet
    with open(path, "rb") as f:
        assert f.read(2) != b"PK"  # legacy serialisation, not a zip archive
    content = torch.load(path, weights_only=True)
    assert set(content) == {"epoch", "arch", "state_dict", "optimizer"}
    keys = content["state_dict"]
    assert "features.module.0.weight" in keys and "features.module.15.running_var" in keys
    assert keys["top_layer.weight"].shape == (10000, 4096) and keys["classifier.1.weight"].shape == (4096, 9216)
    assert not any(k.endswith("num_batches_tracked") for k in keys)
    assert len(content["optimizer"]["state"]) > 0


def test_imported_run_holds_the_files_backbone_exactly(imported, fair_alexnet):
    _, state = fair_alexnet
    run = RunFolder(imported)
    assert run.checkpoint_file("last") == run.init_path  # cycles: 0: the imported network is the only checkpoint
    ours = run.load_checkpoint("last")["model"]
    theirs = {strip_module(k): v for k, v in state.items() if not k.startswith("top_layer.")}
    assert set(theirs) == {k for k in ours if not k.endswith("num_batches_tracked")}
    for k, v in theirs.items():
        assert torch.equal(ours[k], v), k
    cfg = run.load_config()
    assert cfg.cycles == 0 and cfg.data.mean == [0.485, 0.456, 0.406] and cfg.data.std == [0.229, 0.224, 0.225]
    assert (imported / "init_weights.json").is_file() and not (imported / "checkpoint.pt").exists()


def test_imported_network_computes_what_fairs_code_computes(imported, fair_alexnet):
    model = RunFolder(imported).build_model("last")
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = torch.relu(model.embed(x))  # FAIR's classifier ends with the ReLU ours leaves to the probes
    theirs = fair_forward(fair_alexnet[0], x)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_every_command_reads_the_imported_run(imported, fair_alexnet, tmp_path):
    res = invoke("evaluate", imported, "--protocols", "knn", "--layers", "conv5,fc2", "-q")
    assert res.exit_code == 0, res.output
    assert "imported (init)" in res.output and "trained (last)" not in res.output
    res = invoke("export", imported, "--layer", "conv1", "-o", tmp_path / "export", "-q")
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "export" / "features.npy").shape[0] == 30
    res = invoke("concepts", "make", tmp_path / "probe", "--n-images", "24", "--size", "64")
    assert res.exit_code == 0, res.output
    res = invoke("dissect", imported, "--layer", "conv5", "--concepts", tmp_path / "probe", "-o", tmp_path / "dissect",
                 "-q")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "dissect" / "tally.csv").is_file()
    res = invoke("similarity", imported, imported, "--name", "a", "--name", "b", "--layers", "conv2,fc1",
                 "--sample", "12", "-o", tmp_path / "sim", "-q")
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "sim" / "cka.csv").read_text().splitlines()
    assert any(line.startswith("a,conv2,b,conv2,1.0") for line in lines), lines
    # --weights: the file in a run of the same architecture (its own normalisation unset) reads the
    # images as the import does, ImageNet's, so it is the same network on the same inputs
    res = invoke("train", *COMMON, "--set", f"data.root={RunFolder(imported).load_config().data.root}",
                 "--set", "cycles=0", "-o", tmp_path / "plain")
    assert res.exit_code == 0, res.output
    res = invoke("similarity", imported, tmp_path / "plain", "--weights", "-", "--weights", fair_alexnet[0],
                 "--layers", "conv2,fc1", "--sample", "12", "-o", tmp_path / "sim2", "-q")
    assert res.exit_code == 0, res.output
    assert "ImageNet's normalisation" in res.output
    lines = (tmp_path / "sim2" / "cka.csv").read_text().splitlines()
    assert any(line.startswith("fair,fc1,plain+checkpoint,fc1,1.0") for line in lines), lines


@pytest.mark.slow
def test_vgg16_file_loads_exactly_and_computes_what_fairs_code_computes(tmp_path):
    from deepcluster.core.config import TrainConfig, build_config
    from deepcluster.runs import build_network
    from deepcluster.train.imported import import_network

    path = tmp_path / "vgg16.pth.tar"
    state = make_fair_checkpoint(path, "vgg16", sobel=True, k=10000, seed=2, momentum=False)
    cfg = build_config(TrainConfig, "imagenet_alexnet", ["model.arch=vgg16", f"init={path}"])
    model = build_network(cfg, 3, 224)
    cfg, record = import_network(cfg, model, 3)
    assert record["fair"] == {"arch": "vgg16", "sobel": True, "k": 10000, "epoch": 500}
    ours = model.state_dict()
    for k, v in state.items():
        if not k.startswith("top_layer."):
            assert torch.equal(ours[strip_module(k)], v), k
    assert "classifier.0.weight" in ours and "classifier.3.weight" in ours
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = torch.relu(model.eval().embed(x))
    torch.testing.assert_close(got, fair_forward(path, x), rtol=1e-4, atol=1e-5)
    # the grey equivalent of ImageNet's normalisation: FAIR's net on r = g = b is ours on the grey image
    cfg_grey, _ = import_network(cfg.model_copy(update={"data": cfg.data.model_copy(update={"mean": None, "std": None})}),
                                 build_network(cfg, 1, 224), 1)
    (m,), (s,) = cfg_grey.data.mean, cfg_grey.data.std
    grey = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(1))
    rgb = (grey.expand(-1, 3, -1, -1) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    grey_model = build_network(cfg, 1, 224)
    import_network(cfg, grey_model, 1)
    with torch.no_grad():
        torch.testing.assert_close(torch.relu(grey_model.eval().embed((grey - m) / s)), fair_forward(path, rgb),
                                   rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("change, fragment", [
    (["--set", "model.arch=vgg16"], "set model.arch=alexnet model.sobel=true"),
    (["--set", "model.sobel=false"], "set model.arch=alexnet model.sobel=true"),
    (["--set", "data.image_size=64"], "data.image_size=224"),
])
def test_a_file_of_another_network_is_one_line(change, fragment, fair_alexnet, images, tmp_path):
    out = tmp_path / "run"
    res = invoke("train", *COMMON, "--set", f"data.root={images}", "--set", f"init={fair_alexnet[0]}",
                 "--set", "cycles=0", *change, "-o", out)
    one_line_error(res, fragment)
    assert not out.exists()


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_truncated_or_foreign_files_are_one_line(fair_alexnet, images, tmp_path):
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(fair_alexnet[0].read_bytes()[: 10 << 20])
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"arch": "alexnet", "state_dict": {}, "x": _Planted(marker)}, f)
    for path, fragment in [(truncated, "truncated.pth.tar"), (evil, "holds objects other than tensors"),
                           (tmp_path / "missing.pth", "no such file")]:
        out = tmp_path / f"run_{path.stem}"
        res = invoke("train", *COMMON, "--set", f"data.root={images}", "--set", f"init={path}", "--set", "cycles=0",
                     "-o", out)
        one_line_error(res, fragment)
        assert not out.exists()
    assert not marker.exists()


def _cli(*args):
    return subprocess.Popen([sys.executable, "-m", "deepcluster", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "DEEPCLUSTER_PROGRESS": "0"})


@pytest.mark.slow
def test_continued_from_the_import_resumes_exactly_after_kill_9(imported, tmp_path):
    import shutil

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    shutil.copytree(imported, ref)
    shutil.copytree(imported, killed)
    proc = _cli("train", "--resume", ref, "--set", "cycles=1", "-q")
    assert proc.wait(600) == 0, proc.stderr.read()
    # kill -9 during cycle 1, before any cycle finished: resume starts again from checkpoints/init.pt
    proc = _cli("train", "--resume", killed, "--set", "cycles=1", "-q")
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "precision.json").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    assert not (killed / "checkpoint.pt").exists()
    proc = _cli("train", "--resume", killed, "-q")
    assert proc.wait(600) == 0, proc.stderr.read()
    a, b = RunFolder(ref).load_checkpoint("last"), RunFolder(killed).load_checkpoint("last")
    assert a["cycle"] == b["cycle"] == 1
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert (a["assignments"] == b["assignments"]).all()
    # the continued run is DeepCluster on the user's images: its own k, its own top layer
    assert b["top_layer"]["weight"].shape == (3, 4096)
    assert [r["cycle"] for r in RunFolder(killed).metrics()] == [1]


def test_the_docs_page_commands_are_the_scripts():
    """docs/fair_deepcluster.md's commands are those experiments/fair_deepcluster.sh runs (and times)."""
    import re

    repo = Path(__file__).resolve().parents[2]
    page = (repo / "docs" / "fair_deepcluster.md").read_text()
    script = (repo / "experiments" / "fair_deepcluster.sh").read_text().replace('"$CKPT"', "checkpoint.pth.tar")
    script = " ".join(script.replace("\\\n", " ").split())
    blocks = re.findall(r"```bash\n(.*?)```", page, re.S)
    commands = [" ".join(c.split("#")[0].split()) for b in blocks for c in b.replace("\\\n", " ").splitlines()]
    commands = [c for c in commands if c.startswith("deepcluster ")]
    assert len(commands) >= 8
    for c in commands:
        assert c in script, c

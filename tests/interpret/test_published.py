"""Published self-supervised checkpoints load into a torchvision ResNet-18 (deepcluster.models.published).

Each layout is synthesised from one random ResNet-18 state dict, with the heads and second
networks its publisher saves beside the backbone; the loaded network must compute what the
original computes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

from deepcluster.core.errors import ConfigError, DataError
from deepcluster.interpret.model_source import load_model_source
from deepcluster.models.published import load_backbone_state


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    """One thread: these forward passes are tiny, and the CI machine's 2 cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ref() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():  # BN statistics other than the defaults, so they must be loaded too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def backbone(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def noise_like(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.randn(v.shape) if v.is_floating_point() else v.clone() for k, v in sd.items()}


def mlp(prefix: str, *dims: int) -> dict[str, torch.Tensor]:
    out = {}
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        out[f"{prefix}{2 * i}.weight"] = torch.randn(b, a)
        out[f"{prefix}{2 * i}.bias"] = torch.randn(b)
    return out


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The penultimate features (everything before ``fc``)."""
    with torch.no_grad():
        return torch.flatten(nn.Sequential(*list(model.children())[:-1])(x), 1)


def layouts(sd: dict[str, torch.Tensor]) -> dict[str, tuple[str, object, bool]]:
    """name -> (file name, content, fc kept) for every layout, from the state dict ``sd``."""
    body = backbone(sd)
    moco_q = {**prefixed("module.encoder_q.", body), **mlp("module.encoder_q.fc.", 512, 512, 128)}
    moco_k = {k.replace("encoder_q", "encoder_k"): torch.randn(v.shape) if v.is_floating_point() else v
              for k, v in moco_q.items()}
    swav = {**prefixed("module.", body), "module.projection_head.0.weight": torch.randn(2048, 512),
            "module.projection_head.0.bias": torch.randn(2048), "module.projection_head.1.weight": torch.ones(2048),
            "module.projection_head.3.weight": torch.randn(128, 2048), "module.prototypes.weight": torch.randn(30, 128)}
    dino_head = {"module.head.mlp.0.weight": torch.randn(64, 512), "module.head.last_layer.weight_g": torch.ones(99, 1)}
    solo = {**prefixed("backbone.", body), **mlp("projector.", 512, 64, 32), "classifier.weight": torch.randn(10, 512),
            "classifier.bias": torch.randn(10), **prefixed("momentum_backbone.", noise_like(body)),
            **mlp("momentum_projector.", 512, 64, 32)}
    vissl_heads = {"0.clf.0.weight": torch.randn(128, 512), "0.clf.0.bias": torch.randn(128)}
    byol = {**prefixed("online_network.encoder.", body), **mlp("online_network.projector.", 512, 64, 32),
            **prefixed("target_network.encoder.", noise_like(body)), **mlp("target_network.projector.", 512, 64, 32),
            **mlp("predictor.", 32, 64, 32)}
    lightning = {"epoch": 9, "global_step": 990, "pytorch-lightning_version": "2.4.0",
                 "state_dict": {**prefixed("model.", body), **mlp("model.projection_head.", 512, 64)},
                 "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
                 "lr_schedulers": [], "callbacks": {}, "hyper_parameters": {"lr": 0.1, "arch": "resnet18"}}
    return {
        "torchvision": ("plain.pth", dict(sd), True),
        "DataParallel": ("dp.pth", prefixed("module.", sd), True),
        "MoCo v1/v2": ("moco_v2.pth.tar", {"epoch": 200, "arch": "resnet18",
                                            "state_dict": {**moco_q, **moco_k, "module.queue": torch.randn(128, 64),
                                                           "module.queue_ptr": torch.zeros(1, dtype=torch.long)},
                                            "optimizer": {"state": {}, "param_groups": [{"lr": 0.03}]}}, False),
        "MoCo v1": ("moco_v1.pth.tar", {"state_dict": {**prefixed("module.encoder_q.", {
            **body, "fc.weight": torch.randn(128, 512), "fc.bias": torch.randn(128)})}}, False),
        "SwAV": ("swav_800ep_pretrain.pth.tar", swav, False),
        "DINO": ("dino_resnet50_full.pth", {
            "teacher": {**prefixed("module.backbone.", body), **dino_head},
            "student": {**prefixed("module.backbone.", noise_like(body)), **dino_head},
            "epoch": 100, "args": argparse.Namespace(arch="resnet18", out_dim=99), "dino_loss": {"center": torch.zeros(1, 99)},
            "optimizer": {"state": {}, "param_groups": []}}, False),
        "solo-learn": ("byol-imagenet100.ckpt", {"pytorch-lightning_version": "1.9.0", "state_dict": solo}, False),
        "VISSL": ("model_final_checkpoint_phase199.torch", {"phase_idx": 199, "classy_state_dict": {"base_model": {
            "model": {"trunk": prefixed("_feature_blocks.", body), "heads": vissl_heads}, "meta": {}}}}, False),
        "BYOL": ("byol.pth", byol, False),
        "Lightning": ("simclr.ckpt", lightning, False),
        "SimCLR-style": ("simclr.pth", {**prefixed("encoder.", body), **mlp("projection.", 512, 64)}, False),
        "safetensors": ("model.safetensors", dict(sd), True),
    }


@pytest.fixture(scope="module")
def published(ref) -> dict[str, tuple[str, object, bool]]:
    return layouts(ref.state_dict())


def save(path: Path, content: object) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in content.items()}, str(path))
    else:
        torch.save(content, path)
    return path


EXPECTED = {  # layout name in the report, tensors loaded (120 backbone + fc when kept), dropped summary fragments
    "torchvision": ("torchvision state dict", 122, []),
    "DataParallel": ("DataParallel", 122, []),
    "MoCo v1/v2": ("MoCo v1/v2", 120, ["fc.0, fc.2 (head)", "module.encoder_k.* (124)", "module.queue,",
                                        "fc left as built"]),
    "MoCo v1": ("MoCo v1/v2", 120, ["dropped fc (head)", "fc left as built"]),
    "SwAV": ("SwAV / DeepCluster-v2 / SeLa-v2", 120, ["projection_head.0, projection_head.1, projection_head.3, prototypes (head)"]),
    "DINO": ("DINO (teacher → module.backbone.)", 120, ["student (122)", "dino_loss (1)", "module.head.* (2)"]),
    "solo-learn": ("solo-learn (state_dict → backbone.)", 120, ["projector.* (4)", "classifier.* (2)",
                                                               "momentum_backbone.* (120)"]),
    "VISSL": ("VISSL (classy_state_dict → base_model → model → trunk → _feature_blocks.)", 120, ["heads (2)"]),
    "BYOL": ("BYOL (online_network.encoder.)", 120, ["online_network.projector.* (4)", "target_network.* (124)",
                                                   "predictor.* (4)"]),
    "Lightning": ("Lightning (state_dict → model.)", 120, ["projection_head.0 (head)"]),
    "SimCLR-style": ("SimCLR-style (encoder.)", 120, ["projection.* (2)"]),
    "safetensors": ("torchvision state dict", 122, []),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_layout_loads_the_backbone_it_holds(name, published, ref, x, tmp_path):
    file, content, fc_kept = published[name]
    path = save(tmp_path / file, content)
    model = torchvision.models.resnet18(weights=None)
    report = load_backbone_state(path, model)
    model.eval()
    assert torch.equal(features(model, x), features(ref, x))
    with torch.no_grad():
        assert torch.equal(model(x), ref(x)) == fc_kept
    layout, loaded, fragments = EXPECTED[name]
    line = report.summary()
    assert line.startswith(f"weights {file}: {layout}") and f", {loaded} tensors loaded" in line, line
    for fragment in fragments:
        assert fragment in line, line
    assert report.kept_as_built == (() if fc_kept else ("fc",)) and "\n" not in line


def test_old_files_without_num_batches_tracked_load(ref, x, tmp_path):
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    model = torchvision.models.resnet18(weights=None)
    report = load_backbone_state(save(tmp_path / "old.pth", {"state_dict": prefixed("module.", sd)}), model)
    assert report.layout == "DataParallel" and report.loaded == 102
    assert torch.equal(features(model.eval(), x), features(ref, x))


def test_a_prefix_names_an_unknown_layout(ref, x, tmp_path):
    path = save(tmp_path / "ema.pth", {"ema": prefixed("net.trunk.", backbone(ref.state_dict())), "step": 5})
    with pytest.raises(ConfigError, match=r"no known checkpoint layout.*top-level keys: ema \(120 tensors\), step.*--weights-prefix PREFIX"):
        load_backbone_state(path, torchvision.models.resnet18(weights=None))
    model = torchvision.models.resnet18(weights=None)
    report = load_backbone_state(path, model, prefix="net.trunk.")
    assert report.summary().startswith("weights ema.pth: --weights-prefix (ema → net.trunk.), 120 tensors loaded")
    assert torch.equal(features(model.eval(), x), features(ref, x))
    with pytest.raises(ConfigError, match="no key starts with 'trunk.'"):
        load_backbone_state(path, model, prefix="trunk.")


def test_missing_misshaped_and_foreign_tensors_are_named(ref, tmp_path):
    model = torchvision.models.resnet18(weights=None)
    sd = ref.state_dict()
    missing = {k: v for k, v in sd.items() if k != "layer4.1.bn2.weight"}
    with pytest.raises(ConfigError, match=r"\(MoCo v1/v2, prefix 'module.encoder_q.'\) does not fit ResNet: "
                                          r"1 tensor missing \(layer4.1.bn2.weight\)"):
        load_backbone_state(save(tmp_path / "m.pth", {"state_dict": prefixed("module.encoder_q.", missing)}), model)
    grey = {**sd, "conv1.weight": torch.randn(64, 1, 7, 7)}
    with pytest.raises(ConfigError, match=r"1 tensor of another shape \(conv1.weight: file 64×1×7×7, model 64×3×7×7\)"):
        load_backbone_state(save(tmp_path / "g.pth", grey), model)
    deeper = torchvision.models.resnet34(weights=None).state_dict()
    with pytest.raises(ConfigError, match=r"unknown to the model \(layer1.2.conv1.weight"):
        load_backbone_state(save(tmp_path / "r34.pth", deeper), model)


def test_a_trunk_without_classifier_loads_every_tensor_strictly(ref, x, tmp_path):
    trunk = torchvision.models.resnet18(weights=None)
    trunk.fc = nn.Identity()
    sd = backbone(ref.state_dict())
    with pytest.raises(ConfigError, match=r"1 tensor missing \(layer4.1.bn2.bias\)"):
        load_backbone_state(save(tmp_path / "m.pth", {k: v for k, v in sd.items() if k != "layer4.1.bn2.bias"}), trunk)
    report = load_backbone_state(save(tmp_path / "w.pth", prefixed("module.encoder_q.", ref.state_dict())), trunk)
    assert report.heads == ("fc",) and report.kept_as_built == ()
    with torch.no_grad():
        assert torch.equal(trunk.eval()(x), features(ref, x))


def test_a_failed_load_leaves_the_model_as_it_was(ref, tmp_path):
    model = torchvision.models.resnet18(weights=None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = {k: v for k, v in ref.state_dict().items() if k != "layer4.1.bn2.weight"}
    with pytest.raises(ConfigError):
        load_backbone_state(save(tmp_path / "m.pth", bad), model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class Planted:
    """Unpickling this creates a folder: the side effect that proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickle_holding_objects_is_refused_without_running_it(ref, tmp_path):
    marker = tmp_path / "pwned"
    path = save(tmp_path / "evil.pth", {"state_dict": backbone(ref.state_dict()), "hparams": Planted(marker)})
    with pytest.raises(DataError, match=r"evil.pth holds objects other than tensors.*\(it refers to \S*mkdir\).*could run code"):
        load_backbone_state(path, torchvision.models.resnet18(weights=None))
    assert not marker.exists()
    with pytest.raises(DataError, match="does not exist"):
        load_backbone_state(tmp_path / "nope.pth", torchvision.models.resnet18(weights=None))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="not a readable safetensors file"):
        load_backbone_state(tmp_path / "junk.safetensors", torchvision.models.resnet18(weights=None))
    with pytest.raises(DataError, match="holds no tensors"):
        load_backbone_state(save(tmp_path / "list.pth", [1, 2]), torchvision.models.resnet18(weights=None))


def test_model_source_passes_the_prefix_and_keeps_the_report(ref, tmp_path):
    path = save(tmp_path / "w.pth", prefixed("trunk.", ref.state_dict()))
    model, info = load_model_source("resnet18", weights=path, weights_prefix="trunk.")
    assert info.weights_report is not None and info.weights_report.loaded == 122 and not model.training
    assert torch.equal(model.fc.weight, ref.fc.weight)
    with pytest.raises(ConfigError, match="pass --weights FILE too"):
        load_model_source("resnet18", weights_prefix="trunk.")


# ---------------------------------------------------------------------------------------------
# Command line


def test_dissect_prints_the_report_in_one_line(published, tmp_path):
    from deepcluster.cli import app
    from deepcluster.interpret.concepts import make_concept_probe

    probe = make_concept_probe(tmp_path / "probe", n_images=4, size=32, show_progress=False)
    file, content, _ = published["MoCo v1/v2"]
    path = save(tmp_path / file, content)
    res = CliRunner().invoke(app, ["dissect", "resnet18", "--weights", str(path), "--layer", "layer1",
                                   "--concepts", str(probe), "--out", str(tmp_path / "out"), "--threads", "1",
                                   "--device", "cpu", "--precision", "fp32", "--max-units", "0", "-q"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("weights ")]
    assert len(lines) == 1 and "MoCo v1/v2 (state_dict → module.encoder_q.), 120 tensors loaded" in lines[0], res.output


@pytest.mark.parametrize("case", ["unknown layout", "missing tensor"])
def test_dissect_refuses_bad_weights_in_one_line_before_any_work(case, ref, tmp_path):
    sd = ref.state_dict()
    if case == "unknown layout":
        path, fragment = save(tmp_path / "w.pth", {"ema": prefixed("net.", sd)}), "--weights-prefix PREFIX"
    else:
        path = save(tmp_path / "w.pth", {k: v for k, v in sd.items() if k != "layer3.0.conv2.weight"})
        fragment = "1 tensor missing (layer3.0.conv2.weight)"
    cache = tmp_path / "cache"
    env = {**os.environ, "DEEPCLUSTER_PROGRESS": "0", "DEEPCLUSTER_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "deepcluster", "dissect", "resnet18", "--weights", str(path),
                           "--layer", "layer4", "--threads", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: weights file") and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not cache.exists() and not (tmp_path / "dissect").exists()  # no probe generated, no output written

"""Checkpoints in the exact layout of FAIR's DeepCluster v1 (facebookresearch/deepcluster), with
random weights: the stand-in for a published file, since nothing is downloaded here.

The networks are written as FAIR's ``models/alexnet.py`` and ``models/vgg16.py`` write them
(``features`` / ``classifier`` / ``top_layer`` / ``sobel``), ``features`` wrapped in DataParallel as
its ``main.py`` does, and the file saved as its ``main.py`` saves it --
``{'epoch', 'arch', 'state_dict', 'optimizer'}`` -- in PyTorch's legacy (pre-1.6, non-zip)
serialisation, with BatchNorm buffers as PyTorch 0.3/0.4 had them (no ``num_batches_tracked``).
:func:`fair_forward` reads such a file back with FAIR's own rule (``util.load_model``): N from
``top_layer.bias``, Sobel from ``sobel.0.weight``, every ``.module`` removed, strict loading.

Usage (docs/fair_deepcluster.md)::

    python tests/fair_v1.py alexnet fair_alexnet.pth.tar          # Sobel front, k = 10,000
    python tests/fair_v1.py vgg16 fair_vgg16.pth.tar --no-momentum
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

ALEXNET_CFG = [(96, 11, 4, 2), "M", (256, 5, 1, 2), "M", (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1), "M"]
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _sobel() -> nn.Sequential:
    grayscale = nn.Conv2d(3, 1, kernel_size=1, stride=1, padding=0)
    grayscale.weight.data.fill_(1.0 / 3.0)
    grayscale.bias.data.zero_()
    sobel_filter = nn.Conv2d(1, 2, kernel_size=3, stride=1, padding=1)
    sobel_filter.weight.data[0, 0].copy_(torch.FloatTensor([[1, 0, -1], [2, 0, -2], [1, 0, -1]]))
    sobel_filter.weight.data[1, 0].copy_(torch.FloatTensor([[1, 2, 1], [0, 0, 0], [-1, -2, -1]]))
    sobel_filter.bias.data.zero_()
    sobel = nn.Sequential(grayscale, sobel_filter)
    for p in sobel.parameters():
        p.requires_grad = False
    return sobel


class FairNet(nn.Module):
    """FAIR's AlexNet / VGG16: ``sobel`` (or None), ``features``, ``classifier``, ``top_layer``."""

    def __init__(self, features: nn.Module, classifier: nn.Sequential, flat: int, num_classes: int, sobel: bool):
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.top_layer = nn.Linear(4096, num_classes)
        self.flat = flat
        self.sobel = _sobel() if sobel else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sobel:
            x = self.sobel(x)
        x = self.features(x)
        x = x.view(x.size(0), self.flat)
        x = self.classifier(x)
        if self.top_layer:
            x = self.top_layer(x)
        return x


def fair_alexnet(sobel: bool = True, out: int = 10000) -> FairNet:
    layers: list[nn.Module] = []
    c = 2 + int(not sobel)
    for v in ALEXNET_CFG:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=3, stride=2)]
        else:
            layers += [nn.Conv2d(c, v[0], kernel_size=v[1], stride=v[2], padding=v[3]), nn.BatchNorm2d(v[0]),
                       nn.ReLU(inplace=True)]
            c = v[0]
    classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
                               nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True))
    return FairNet(nn.Sequential(*layers), classifier, 256 * 6 * 6, out, sobel)


def fair_vgg16(sobel: bool = True, out: int = 10000) -> FairNet:
    layers: list[nn.Module] = []
    c = 2 + int(not sobel)
    for v in VGG16_CFG:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(0.5),
                               nn.Linear(4096, 4096), nn.ReLU(True))
    return FairNet(nn.Sequential(*layers), classifier, 512 * 7 * 7, out, sobel)


BUILDERS = {"alexnet": fair_alexnet, "vgg16": fair_vgg16}


def _randomise(model: FairNet, generator: torch.Generator) -> None:
    """Weights and BatchNorm statistics that differ from any fresh initialisation."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.startswith("sobel."):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=generator) + 0.5)
            elif name.endswith("num_batches_tracked"):
                continue
            else:
                t.copy_(torch.randn(t.shape, generator=generator) * (0.02 if t.dim() > 1 else 0.1))


def make_fair_checkpoint(path: str | Path, arch: str = "alexnet", *, sobel: bool = True, k: int = 10000,
                         seed: int = 0, epoch: int = 500, momentum: bool = True) -> dict[str, torch.Tensor]:
    """Write a checkpoint as FAIR's ``main.py`` saves it; returns its ``state_dict`` (FAIR's keys)."""
    generator = torch.Generator().manual_seed(seed)
    model = BUILDERS[arch](sobel=sobel, out=k)
    _randomise(model, generator)
    model.features = nn.DataParallel(model.features)  # main.py: model.features = DataParallel(model.features)
    state = {name: t.clone() for name, t in model.state_dict().items() if not name.endswith("num_batches_tracked")}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=10**-5)
    opt_state = optimizer.state_dict()
    if momentum:  # after training, SGD holds one momentum buffer per parameter
        opt_state["state"] = {i: {"momentum_buffer": torch.randn(p.shape, generator=generator) * 1e-3}
                              for i, p in enumerate(params)}
    torch.save({"epoch": epoch, "arch": arch, "state_dict": state, "optimizer": opt_state}, str(path),
               _use_new_zipfile_serialization=False)
    return state


def fair_forward(path: str | Path, images: torch.Tensor) -> torch.Tensor:
    """The output of FAIR's network before its top layer (the classifier's ReLU output), read as
    FAIR's ``util.load_model`` reads the file."""
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    n = checkpoint["state_dict"]["top_layer.bias"].size()[0]
    sobel = "sobel.0.weight" in checkpoint["state_dict"]
    model = BUILDERS[checkpoint["arch"]](sobel=sobel, out=n)

    def rename_key(key: str) -> str:
        if "module" not in key:
            return key
        return "".join(key.split(".module"))

    checkpoint["state_dict"] = {rename_key(key): val for key, val in checkpoint["state_dict"].items()}
    model.load_state_dict(checkpoint["state_dict"], strict=False)  # FAIR's checkpoints lack num_batches_tracked
    missing = [k for k in model.state_dict() if k not in checkpoint["state_dict"] and not k.endswith("num_batches_tracked")]
    assert not missing, missing
    model.top_layer = None
    model.eval()
    with torch.no_grad():
        return model(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("arch", choices=sorted(BUILDERS))
    ap.add_argument("out", type=Path)
    ap.add_argument("--no-sobel", action="store_true", help="RGB input instead of the Sobel front")
    ap.add_argument("--k", type=int, default=10000, help="clusters of the top layer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-momentum", action="store_true", help="optimizer state without momentum buffers (smaller)")
    a = ap.parse_args()
    make_fair_checkpoint(a.out, a.arch, sobel=not a.no_sobel, k=a.k, seed=a.seed, momentum=not a.no_momentum)
    print(f"wrote {a.out} ({a.out.stat().st_size / 2**20:.0f} MB): FAIR DeepCluster v1 {a.arch}, "
          f"{'Sobel' if not a.no_sobel else 'RGB'}, top layer {a.k}, random weights")


if __name__ == "__main__":
    main()

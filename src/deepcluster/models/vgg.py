"""VGG16 with BatchNorm, as in the official DeepCluster ``vgg16.py``."""

from __future__ import annotations

from torch import nn

from deepcluster.models.base import DeepClusterNet
from deepcluster.models.blocks import ConvSpec, conv_body, flat_dim
from deepcluster.models.registry import register_model

__all__ = ["VGG16_CFG", "vgg16"]

_WIDTHS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
#: 3×3 convs with padding 1 and 2×2 max-pools: 224 px ends in 512×7×7.
VGG16_CFG: list[ConvSpec] = [w if w == "M" else (w, 3, 1, 1) for w in _WIDTHS]


@register_model("vgg16")
def vgg16(in_channels: int, input_size: int) -> DeepClusterNet:
    """VGG16-BN, classifier 512·7·7 → 4096 → 4096 (224 px).

    Probe layers ``conv1``..``conv5`` are the 5 stages (each ends after its max-pool), then
    ``fc1`` (post-ReLU) and ``fc2`` (pre-ReLU). ``feature_dim`` 4096.
    """
    features, probes = conv_body(VGG16_CFG, in_channels, pool=lambda: nn.MaxPool2d(2, 2), probe_by="stage")
    classifier = nn.Sequential(
        nn.Linear(flat_dim(features, in_channels, input_size), 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
    )
    probes.update(fc1="classifier.1", fc2="classifier.3")
    return DeepClusterNet(features, classifier, 4096, probe_layers=probes, default_probe_layer="conv5")

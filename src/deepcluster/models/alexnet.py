"""AlexNets: Caron's AlexNet with BatchNorm (224 px) and the minimized AlexNet for 32 px images."""

from __future__ import annotations

from torch import nn

from deepcluster.models.base import DeepClusterNet
from deepcluster.models.blocks import ConvSpec, conv_body, flat_dim
from deepcluster.models.registry import register_model

__all__ = ["ALEXNET_CFG", "SMALL_ALEXNET_CFG", "alexnet", "small_alexnet"]

#: Official DeepCluster ``CFG['2012']``: (out, kernel, stride, padding) or "M" (3×3/2 max-pool).
ALEXNET_CFG: list[ConvSpec] = [
    (96, 11, 4, 2), "M", (256, 5, 1, 2), "M", (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1), "M",
]

#: Minimized AlexNet of "A Deep Dive into Deep Cluster" (Mustapha et al., 2022) for 32 px images:
#: 3×3 convs, "M" a 2×2 max-pool, so 32 px ends in 4×4.
SMALL_ALEXNET_CFG: list[ConvSpec] = [
    (48, 3, 1, 1), "M", (126, 3, 1, 1), "M", (192, 3, 1, 1), (192, 3, 1, 1), (128, 3, 1, 1), "M",
]


def _alexnet_classifier(flat: int, hidden: int) -> nn.Sequential:
    # Caron's classifier minus its last ReLU; indices match the official checkpoints.
    return nn.Sequential(
        nn.Dropout(0.5),
        nn.Linear(flat, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(hidden, hidden),
    )


def _build(cfg: list[ConvSpec], pool, hidden: int, in_channels: int, input_size: int) -> DeepClusterNet:
    features, probes = conv_body(cfg, in_channels, pool=pool)
    classifier = _alexnet_classifier(flat_dim(features, in_channels, input_size), hidden)
    probes.update(fc1="classifier.2", fc2="classifier.4")
    return DeepClusterNet(
        features, classifier, hidden, probe_layers=probes, default_probe_layer="conv5"
    )


@register_model("alexnet")
def alexnet(in_channels: int, input_size: int) -> DeepClusterNet:
    """Caron's AlexNet with BatchNorm (224 px → 256×6×6), classifier 4096 → 4096.

    Probe layers ``conv1``..``conv5`` (after the pool where one follows), ``fc1`` (post-ReLU),
    ``fc2`` (pre-ReLU). ``feature_dim`` 4096.
    """
    return _build(ALEXNET_CFG, lambda: nn.MaxPool2d(kernel_size=3, stride=2), 4096, in_channels, input_size)


@register_model("small_alexnet")
def small_alexnet(in_channels: int, input_size: int) -> DeepClusterNet:
    """Minimized AlexNet for 32 px images: convs 48, 126, 192, 192, 128 (3×3), BN, ReLU,
    2×2 max-pools after conv1, conv2, conv5; classifier 128·4·4 → 512 → 512.

    Probe layers ``conv1``..``conv5``, ``fc1`` (post-ReLU), ``fc2`` (pre-ReLU). ``feature_dim`` 512.
    """
    return _build(SMALL_ALEXNET_CFG, lambda: nn.MaxPool2d(2), 512, in_channels, input_size)

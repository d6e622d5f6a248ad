"""Small nets for digits: LeNet-5 with BatchNorm, and a tiny CNN for smoke tests."""

from __future__ import annotations

from torch import nn

from deepcluster.models.base import DeepClusterNet
from deepcluster.models.blocks import conv_body, flat_dim
from deepcluster.models.registry import register_model

__all__ = ["lenet5", "tiny_cnn"]


@register_model("lenet5")
def lenet5(in_channels: int, input_size: int) -> DeepClusterNet:
    """LeNet-5 with BatchNorm: conv 6@5×5 → pool → conv 16@5×5 → pool → 120 → 84.

    The first conv pads by 2 below 32 px, so 28 px (MNIST) and 32 px images both end in 16×5×5.
    Probe layers: ``conv1``, ``conv2`` (after their pools), ``fc1`` (120-d, post-ReLU),
    ``fc2`` (84-d, pre-ReLU); by name only, ``conv2_prepool`` (conv2 after its ReLU, before its
    pool: 16×10×10, the Deep Dive authors' probe). ``feature_dim`` 84.
    """
    pad = 2 if input_size < 32 else 0
    features, probes = conv_body(
        [(6, 5, 1, pad), "M", (16, 5, 1, 0), "M"], in_channels, pool=lambda: nn.MaxPool2d(2)
    )
    classifier = nn.Sequential(
        nn.Linear(flat_dim(features, in_channels, input_size), 120),
        nn.BatchNorm1d(120),
        nn.ReLU(inplace=True),
        nn.Linear(120, 84),
    )
    probes.update(fc1="classifier.2", fc2="classifier.3")
    # conv2 before its pooling (16×10×10): the Deep Dive authors' probe, chosen by name only
    return DeepClusterNet(features, classifier, 84, probe_layers=probes, default_probe_layer="conv2",
                          extra_probe_layers={"conv2_prepool": "features.6"})


@register_model("tiny_cnn")
def tiny_cnn(in_channels: int, input_size: int) -> DeepClusterNet:
    """Very small CNN for digits and smoke tests: conv 16@3×3 → pool → conv 32@3×3 → pool → 64 → 32.

    Probe layers: ``conv1``, ``conv2`` (after their pools), ``fc1`` (64-d, post-ReLU),
    ``fc2`` (32-d, pre-ReLU). ``feature_dim`` 32.
    """
    features, probes = conv_body(
        [(16, 3, 1, 1), "M", (32, 3, 1, 1), "M"], in_channels, pool=lambda: nn.MaxPool2d(2)
    )
    classifier = nn.Sequential(
        nn.Linear(flat_dim(features, in_channels, input_size), 64),
        nn.BatchNorm1d(64),
        nn.ReLU(inplace=True),
        nn.Linear(64, 32),
    )
    probes.update(fc1="classifier.2", fc2="classifier.3")
    return DeepClusterNet(features, classifier, 32, probe_layers=probes, default_probe_layer="conv2")

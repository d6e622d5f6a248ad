"""Builders shared by the conv architectures (Caron's ``make_layers_features`` with BatchNorm)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn

from deepcluster.core.errors import ConfigError
from deepcluster.models.base import feature_output_shape

__all__ = ["ConvSpec", "conv_body", "flat_dim"]

#: ``(out_channels, kernel_size, stride, padding)`` of a conv, or ``"M"`` for a max-pool.
ConvSpec = tuple[int, int, int, int] | str


def conv_body(
    cfg: Sequence[ConvSpec],
    in_channels: int,
    pool: Callable[[], nn.Module],
    probe_by: str = "conv",
) -> tuple[nn.Sequential, dict[str, str]]:
    """Flat ``Sequential`` of conv → BN → ReLU blocks and pools, with its probe layers.

    Parameters
    ----------
    cfg : sequence of ConvSpec
        Layers, in order.
    in_channels : int
        Channels entering the first conv.
    pool : callable
        Factory of the pooling module used for ``"M"``.
    probe_by : {"conv", "stage"}
        ``"conv"``: one probe per conv (``conv1``, ``conv2``...), ending after its ReLU or after the
        pool that follows it. ``"stage"``: one probe per pool (VGG stages), ending after the pool.

    Returns
    -------
    features : nn.Sequential
    probes : dict[str, str]
        Probe name → path ``"features.<index>"``.
    """
    layers: list[nn.Module] = []
    ends: list[int] = []
    for item in cfg:
        if item == "M":
            layers.append(pool())
            if probe_by == "stage":
                ends.append(len(layers) - 1)
            elif ends:
                ends[-1] = len(layers) - 1
        else:
            out, k, stride, pad = item
            layers += [
                nn.Conv2d(in_channels, out, kernel_size=k, stride=stride, padding=pad),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            if probe_by == "conv":
                ends.append(len(layers) - 1)
            in_channels = out
    probes = {f"conv{i + 1}": f"features.{end}" for i, end in enumerate(ends)}
    return nn.Sequential(*layers), probes


def flat_dim(features: nn.Module, in_channels: int, input_size: int) -> int:
    """Size of the flattened output of ``features`` for square images of side ``input_size``.

    Raises
    ------
    InputTooSmallError
        If the images are too small for ``features``.
    """
    shape = feature_output_shape(features, in_channels, input_size)
    if shape is None:  # pragma: no cover - the builtin bodies all run on meta
        raise ConfigError("cannot infer the feature size of this conv body")
    return math.prod(shape[1:])

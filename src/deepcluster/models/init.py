"""Weight initialisation of DeepCluster (Caron et al., 2018, official ``_initialize_weights``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from deepcluster.models.sobel import Sobel

__all__ = ["init_weights", "normal_"]


def normal_(tensor: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``tensor`` in place with N(0, std²) draws taken from ``generator``.

    Parameters
    ----------
    tensor : torch.Tensor
        Tensor to fill, on any device.
    std : float
        Standard deviation.
    generator : torch.Generator or None
        Source of randomness; ``None`` uses torch's global RNG.

    Returns
    -------
    torch.Tensor
        ``tensor``.
    """
    with torch.no_grad():
        if generator is None or generator.device == tensor.device:
            return tensor.normal_(0.0, std, generator=generator)
        # A CPU generator cannot draw on a GPU tensor: draw where the generator lives, then copy,
        # so that a seeded model is identical whatever device it was moved to.
        draw = torch.empty(tensor.shape, dtype=tensor.dtype, device=generator.device)
        return tensor.copy_(draw.normal_(0.0, std, generator=generator))


def init_weights(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """Initialise ``module`` in place as the official DeepCluster code does.

    - convolutions: weight ~ N(0, sqrt(2 / n)) with n = kh * kw * out_channels, bias 0;
    - linear layers: weight ~ N(0, 0.01), bias 0;
    - batch norms: weight 1, bias 0, running statistics reset.

    The fixed Sobel front (:class:`~deepcluster.models.sobel.Sobel`) is left untouched, and so is
    every other module type (LayerNorm, attention...), which keeps its PyTorch default.

    Parameters
    ----------
    module : nn.Module
        Model or sub-module to initialise.
    generator : torch.Generator or None
        Source of every random draw, for reproducible weights; ``None`` uses the global RNG.
    """
    frozen = {id(m) for s in module.modules() if isinstance(s, Sobel) for m in s.modules()}
    with torch.no_grad():
        for m in module.modules():
            if id(m) in frozen:
                continue
            if isinstance(m, nn.modules.conv._ConvNd):
                n = math.prod(m.kernel_size) * m.out_channels
                normal_(m.weight, math.sqrt(2.0 / n), generator)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.affine:
                    m.weight.fill_(1.0)
                    m.bias.zero_()
                if m.track_running_stats:
                    m.reset_running_stats()
            elif isinstance(m, nn.Linear):
                normal_(m.weight, 0.01, generator)
                if m.bias is not None:
                    m.bias.zero_()

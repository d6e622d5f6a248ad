"""Batched augmentation on uint8 image tensors.

torchvision's transforms draw one set of parameters per call, so giving each image its own
random resized crop means a Python loop over images; on a 2-core CPU that loop costs more than
the LeNet forward pass. Here the crop and flip of every image in a batch become one affine grid
and a single ``grid_sample`` call, equivalent to ``RandomResizedCrop`` + ``RandomHorizontalFlip``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def crop_flip_params(
    n: int,
    *,
    crop: bool = True,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The affine maps (n × 2 × 3) of ``n`` random resized crops (area fraction in ``scale``) and
    horizontal flips; drawn on the CPU from ``generator``, so every process of a distributed run
    draws the whole batch's maps and applies its own rows."""
    g = generator
    sx = torch.ones(n)
    sy = torch.ones(n)
    tx = torch.zeros(n)
    ty = torch.zeros(n)
    if crop:
        area = torch.empty(n).uniform_(scale[0], scale[1], generator=g)
        log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
        r = torch.exp(log_r)
        # crop width/height as fractions of the image, clipped to fit (torchvision falls back similarly)
        sx = torch.sqrt(area * r).clamp(max=1.0)
        sy = torch.sqrt(area / r).clamp(max=1.0)
        tx = (torch.rand(n, generator=g) * 2 - 1) * (1 - sx)
        ty = (torch.rand(n, generator=g) * 2 - 1) * (1 - sy)
    if hflip:
        flip = torch.rand(n, generator=g) < 0.5
        sx = torch.where(flip, -sx, sx)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    return theta


def apply_crop_flip(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample a float batch through its affine maps (one ``grid_sample``, reflected borders)."""
    if x.shape[0] == 0:
        return x
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_resized_crop_flip(
    x: torch.Tensor,
    *,
    crop: bool = True,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-image random resized crop (area fraction in ``scale``) and horizontal flip of a float batch."""
    if x.shape[0] == 0 or not (crop or hflip):
        return x
    return apply_crop_flip(x, crop_flip_params(x.shape[0], crop=crop, scale=scale, ratio=ratio, hflip=hflip,
                                               generator=generator))

"""Turn uint8 images into normalised float tensors, with optional augmentation."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torchvision.transforms import v2

from deepcluster.core.errors import ConfigError

#: Keys of the ``augment`` mapping that :func:`build_transforms` reads (others are ignored).
AUGMENT_DEFAULTS = {"random_resized_crop": True, "crop_scale_min": 0.5, "hflip": True}


def build_transforms(
    stats: tuple[Sequence[float], Sequence[float]],
    image_size: int,
    channels: int,
    *,
    train: bool,
    augment: Mapping | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Build the uint8 → normalised float32 pipeline for training or evaluation.

    Parameters
    ----------
    stats : (mean, std)
        Per-channel statistics in [0, 1] units, e.g. from :func:`dataset_stats`. One value is
        repeated over all channels.
    image_size : int
        Output height and width.
    channels : int
        Number of image channels (1 or 3); must match ``stats``.
    train : bool
        Evaluation is deterministic: resize the short side to ``image_size`` and center-crop
        (both no-ops when the size already matches). Training adds augmentation.
    augment : mapping, optional
        ``random_resized_crop`` (default True): RandomResizedCrop with scale
        ``(crop_scale_min, 1)``, ``crop_scale_min`` defaulting to 0.5; otherwise the
        evaluation resize/crop. ``hflip`` (default True): random horizontal flip.

    Returns
    -------
    callable
        Maps a uint8 C×H×W image, or an N×C×H×W batch, to float32 of the same layout with
        ``image_size`` sides. On a batch, the random crop/flip are drawn once for the whole
        batch; apply it per image (e.g. in ``Dataset.__getitem__``) for per-sample augmentation.
    """
    mean, std = (tuple(float(v) for v in s) for s in stats)
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"stats have {len(mean)}/{len(std)} values for {channels}-channel images")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {std}")

    aug = {**AUGMENT_DEFAULTS, **dict(augment or {})}
    steps: list = []
    if train and aug["random_resized_crop"]:
        lo = aug["crop_scale_min"]
        if isinstance(lo, bool) or not isinstance(lo, (int, float)) or not 0 < lo <= 1:
            raise ConfigError(f"augment.crop_scale_min must be in (0, 1], got {lo!r}: set it to e.g. 0.5")
        steps.append(v2.RandomResizedCrop(image_size, scale=(float(lo), 1.0), antialias=True))
    else:
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    if train and aug["hflip"]:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 N×C×H×W → float32, scaled to [0, 1] then standardised per channel."""
    x = images.to(torch.float32).div_(255.0)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)

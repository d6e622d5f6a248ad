"""Feature extraction over a whole dataset, in eval mode and without augmentation.

:class:`FeatureOptions` says how a network reads images (their normalisation, the device and
precision of its forward passes, the batch size, progress bars); training, evaluation, analysis
and interpretation pass that one object instead of its parts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from deepcluster.core.device import to_device
from deepcluster.core.precision import FP32, Precision
from deepcluster.core.progress import progress_bar
from deepcluster.data.source import ImageSource, as_source
from deepcluster.data.transforms import normalize

__all__ = ["FeatureOptions", "extract_features", "iter_features"]


@dataclass(frozen=True)
class FeatureOptions:
    """How a network reads uint8 images.

    Attributes
    ----------
    mean, std : tuple of float
        Per-channel normalisation (``x / 255 - mean) / std``).
    device : torch.device
        Where the network runs.
    precision : Precision
        Arithmetic of the forward passes (features are float32 either way).
    batch_size : int
        Images per forward pass.
    show_progress : bool
        Progress bars.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device = torch.device("cpu")
    precision: Precision = FP32
    batch_size: int = 1024
    show_progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "device", torch.device(self.device))
        if len(self.mean) != len(self.std):
            raise ValueError(f"{len(self.mean)} means but {len(self.std)} standard deviations")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    @property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)``."""
        return self.mean, self.std

    def replace(self, **changes) -> FeatureOptions:
        """A copy with ``changes`` (e.g. ``show_progress=False``)."""
        return dataclasses.replace(self, **changes)

    def prepare(self, raw: torch.Tensor) -> torch.Tensor:
        """A uint8 batch on the device, normalised (float32; the precision casts it for the forward)."""
        return normalize(to_device(raw, self.device), self.mean, self.std)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: torch.Tensor | ImageSource,
    options: FeatureOptions,
    *,
    layers: Sequence[str] | None = None,
    description: str = "features",
) -> dict[str, np.ndarray]:
    """Run ``model`` over uint8 ``images`` (N×C×H×W, or an :class:`ImageSource`) and return float32
    features per layer.

    ``layers=None`` returns ``{"embed": ...}``: the trunk output before its last ReLU, which is
    what DeepCluster clusters. Otherwise the named probe layers of the model, flattened.
    The forward runs as ``options`` say (features are float32 either way); the model's
    train/eval mode (and memory format) is restored afterwards.
    """
    outputs: dict[str, list[np.ndarray]] = {}
    for chunk in iter_features(model, images, options, layers=layers, description=description):
        for name, value in chunk.items():
            outputs.setdefault(name, []).append(value)
    return {name: np.ascontiguousarray(np.concatenate(chunks)) for name, chunks in outputs.items()}


@torch.no_grad()
def iter_features(
    model: nn.Module,
    images: torch.Tensor | ImageSource,
    options: FeatureOptions,
    *,
    layers: Sequence[str] | None = None,
    description: str = "features",
) -> Iterator[dict[str, np.ndarray]]:
    """:func:`extract_features` a batch at a time: float32 features per layer of each batch, in
    order, so that features of a pool that does not fit in memory never exist all at once."""
    source = as_source(images)
    was_training = model.training
    model.eval()
    precision = options.precision
    try:
        with (precision.inference(model),
              progress_bar(description, total=len(source), enabled=options.show_progress) as advance):
            for raw in source.chunks(0, len(source), options.batch_size):
                batch = precision.input(options.prepare(raw))
                if layers is None:
                    res = {"embed": model.embed(batch)}
                else:
                    res = model.layer_outputs(batch, list(layers))
                yield {name: value.flatten(1).float().cpu().numpy() for name, value in res.items()}
                advance(len(batch))
    finally:
        model.train(was_training)

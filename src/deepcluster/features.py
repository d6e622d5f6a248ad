"""Feature extraction over a whole dataset, in eval mode and without augmentation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from deepcluster.core.device import to_device
from deepcluster.core.precision import FP32, Precision
from deepcluster.core.progress import progress_bar
from deepcluster.data.source import ImageSource, as_source
from deepcluster.data.transforms import normalize

__all__ = ["extract_features", "iter_features"]


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: torch.Tensor | ImageSource,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    layers: Sequence[str] | None = None,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    description: str = "features",
    show_progress: bool = True,
    precision: Precision = FP32,
) -> dict[str, np.ndarray]:
    """Run ``model`` over uint8 ``images`` (N×C×H×W, or an :class:`ImageSource`) and return float32
    features per layer.

    ``layers=None`` returns ``{"embed": ...}``: the trunk output before its last ReLU, which is
    what DeepCluster clusters. Otherwise the named probe layers of the model, flattened.
    The forward runs in ``precision`` (features are float32 either way); the model's
    train/eval mode (and memory format) is restored afterwards.
    """
    outputs: dict[str, list[np.ndarray]] = {}
    for chunk in iter_features(model, images, mean, std, layers=layers, batch_size=batch_size, device=device,
                               description=description, show_progress=show_progress, precision=precision):
        for name, value in chunk.items():
            outputs.setdefault(name, []).append(value)
    return {name: np.ascontiguousarray(np.concatenate(chunks)) for name, chunks in outputs.items()}


@torch.no_grad()
def iter_features(
    model: nn.Module,
    images: torch.Tensor | ImageSource,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    layers: Sequence[str] | None = None,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    description: str = "features",
    show_progress: bool = True,
    precision: Precision = FP32,
) -> Iterator[dict[str, np.ndarray]]:
    """:func:`extract_features` a batch at a time: float32 features per layer of each batch, in
    order, so that features of a pool that does not fit in memory never exist all at once."""
    source = as_source(images)
    was_training = model.training
    model.eval()
    device = torch.device(device)
    try:
        with precision.inference(model), progress_bar(description, total=len(source), enabled=show_progress) as advance:
            for raw in source.chunks(0, len(source), batch_size):
                batch = precision.input(normalize(to_device(raw, device), mean, std))
                if layers is None:
                    res = {"embed": model.embed(batch)}
                else:
                    res = model.layer_outputs(batch, list(layers))
                yield {name: value.flatten(1).float().cpu().numpy() for name, value in res.items()}
                advance(len(batch))
    finally:
        model.train(was_training)

"""Feature extraction over a whole dataset, in eval mode and without augmentation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from deepcluster.data.transforms import normalize
from deepcluster.device import to_device
from deepcluster.precision import FP32, Precision
from deepcluster.progress import progress_bar

__all__ = ["extract_features"]


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: torch.Tensor,
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
    """Run ``model`` over uint8 ``images`` (N×C×H×W) and return float32 features per layer.

    ``layers=None`` returns ``{"embed": ...}``: the trunk output before its last ReLU, which is
    what DeepCluster clusters. Otherwise the named probe layers of the model, flattened.
    The forward runs in ``precision`` (features are float32 either way); the model's
    train/eval mode (and memory format) is restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    outputs: dict[str, list[np.ndarray]] = {}
    try:
        with precision.inference(model), progress_bar(description, total=len(images), enabled=show_progress) as advance:
            for start in range(0, len(images), batch_size):
                batch = precision.input(normalize(to_device(images[start : start + batch_size], device), mean, std))
                if layers is None:
                    res = {"embed": model.embed(batch)}
                else:
                    res = model.layer_outputs(batch, list(layers))
                for name, value in res.items():
                    outputs.setdefault(name, []).append(value.flatten(1).float().cpu().numpy())
                advance(len(batch))
    finally:
        model.train(was_training)
    return {name: np.ascontiguousarray(np.concatenate(chunks)) for name, chunks in outputs.items()}

"""Conv feature maps average-pooled to a dimension budget, as the official linear probes do.

DeepCluster's ``eval_linear.py`` average-pools each AlexNet conv layer so that the linear
classifier sees about 9,600 dimensions (conv1 96×10×10, conv2 256×6×6, conv3/4 384×5×5,
conv5 256×6×6). :func:`pooled_side` gives the same sizes from one rule: the largest s×s grid
with C·s·s ≤ budget, and no pooling at all when the natural C·H·W already fits (small networks
such as LeNet-5). Fully connected layers are never pooled. Adaptive average pooling is used
instead of the official hand-tuned kernel/stride/padding triples, so the pooling windows
differ slightly at the borders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepcluster.core.errors import ConfigError
from deepcluster.core.progress import progress_bar
from deepcluster.data.source import ImageSource, as_source
from deepcluster.features import FeatureOptions

#: Default budget: the dimension of the official AlexNet linear probes.
DEFAULT_POOL_BUDGET = 9600


def pooled_side(channels: int, height: int, width: int, budget: int = DEFAULT_POOL_BUDGET) -> tuple[int, int]:
    """Spatial size a (C, H, W) map is pooled to so that it has at most ``budget`` dimensions.

    Parameters
    ----------
    channels, height, width : int
        Shape of one feature map.
    budget : int
        Largest number of dimensions wanted.

    Returns
    -------
    tuple[int, int]
        ``(height, width)`` unchanged when C·H·W ≤ budget; else (s, s) with s the largest side such
        that C·s·s ≤ budget, never larger than the map and at least 1 (so a map with more
        channels than the budget keeps C dimensions: channels are never merged).

    Raises
    ------
    ConfigError
        If ``budget`` or a dimension is not positive.
    """
    if budget < 1 or min(channels, height, width) < 1:
        raise ConfigError(f"pool budget and map shape must be positive, got budget={budget}, "
                          f"shape=({channels}, {height}, {width})")
    if channels * height * width <= budget:
        return height, width
    side = max(1, math.isqrt(budget // channels))
    return min(side, height), min(side, width)


def pooled_dim(shape: Sequence[int], budget: int = DEFAULT_POOL_BUDGET) -> int:
    """Dimension of one sample's features after :func:`pool_to_budget`.

    Parameters
    ----------
    shape : Sequence[int]
        Shape of one sample's layer output: (C, H, W) for conv maps, (D,) for vectors.
    budget : int
        Dimension budget of conv maps.

    Returns
    -------
    int
    """
    if len(shape) != 3:
        return int(np.prod(shape))
    c, h, w = (int(v) for v in shape)
    sh, sw = pooled_side(c, h, w, budget)
    return c * sh * sw


def pool_to_budget(x: torch.Tensor, budget: int = DEFAULT_POOL_BUDGET) -> torch.Tensor:
    """Average-pool a batch of conv maps to at most ``budget`` dimensions each, then flatten.

    Parameters
    ----------
    x : torch.Tensor
        Layer output (B, C, H, W); any other shape (e.g. (B, D) of a fully connected layer) is
        only flattened.
    budget : int
        Dimension budget per sample.

    Returns
    -------
    torch.Tensor
        Shape (B, D) with D = :func:`pooled_dim` of ``x.shape[1:]``.
    """
    if x.dim() != 4:
        return torch.flatten(x, 1)
    size = pooled_side(int(x.shape[1]), int(x.shape[2]), int(x.shape[3]), budget)
    if size != tuple(x.shape[2:]):
        x = F.adaptive_avg_pool2d(x, size)
    return torch.flatten(x, 1)


@torch.no_grad()
def extract_pooled_features(
    model: nn.Module,
    images: torch.Tensor | ImageSource,
    options: FeatureOptions,
    *,
    layers: Sequence[str],
    budget: int = DEFAULT_POOL_BUDGET,
    description: str = "features",
) -> dict[str, np.ndarray]:
    """Run ``model`` over uint8 ``images`` and return each probe layer pooled to ``budget`` dims.

    Parameters
    ----------
    model : nn.Module
        A :class:`~deepcluster.models.DeepClusterNet` (anything with ``layer_outputs(x, names,
        flatten=False)``); put in eval mode for the pass, its mode restored afterwards.
    images : torch.Tensor or ImageSource
        uint8 images N×C×H×W, or a source that streams them (a pool larger than memory: only
        the pooled features, N × D floats per layer, are ever held).
    options : FeatureOptions
        Normalisation, device, precision (pooling and the returned features are float32),
        batch size and progress bar of the pass.
    layers : Sequence[str]
        Probe layer names.
    budget : int
        Dimension budget of conv maps (see :func:`pooled_side`).
    description : str
        Label of the progress bar.

    Returns
    -------
    dict[str, np.ndarray]
        Layer name → float32 (N, D) features, C-contiguous.
    """
    was_training = model.training
    model.eval()
    precision = options.precision
    names = list(dict.fromkeys(layers))
    outputs: dict[str, np.ndarray] = {}
    source = as_source(images)
    start = 0
    try:
        with (precision.inference(model),
              progress_bar(description, total=len(source), enabled=options.show_progress) as advance):
            for raw in source.chunks(0, len(source), options.batch_size):
                batch = precision.input(options.prepare(raw))
                res = model.layer_outputs(batch, names, flatten=False)
                for name, value in res.items():
                    chunk = pool_to_budget(value.float(), budget).cpu().numpy()
                    if name not in outputs:  # preallocate: no concatenation copy of large features
                        outputs[name] = np.empty((len(source), chunk.shape[1]), dtype=np.float32)
                    outputs[name][start : start + len(chunk)] = chunk
                start += len(batch)
                advance(len(batch))
    finally:
        model.train(was_training)
    return outputs


def pixel_features(images: torch.Tensor | ImageSource, budget: int = DEFAULT_POOL_BUDGET) -> np.ndarray:
    """Raw pixels in [0, 1] as features, average-pooled to ``budget`` like a conv map.

    Parameters
    ----------
    images : torch.Tensor or ImageSource
        uint8 images N×C×H×W, or a source that streams them.
    budget : int
        Dimension budget (28×28 grey images, 784 dims, are kept whole by the default).

    Returns
    -------
    np.ndarray
        float32 (N, D).
    """
    source = as_source(images)
    out: np.ndarray | None = None
    start = 0
    for raw in source.chunks(0, len(source), 4096):
        chunk = pool_to_budget(raw.float() / 255.0, budget).numpy()
        if out is None:
            out = np.empty((len(source), chunk.shape[1]), dtype=np.float32)
        out[start : start + len(chunk)] = chunk
        start += len(chunk)
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)

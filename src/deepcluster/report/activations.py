"""Top activating images per unit of a layer (Caron's thesis, Figure 5.4).

The dataset is streamed in batches: for every unit only a running top-n (values and image
indices) is kept, merged with each new batch, so memory does not grow with the dataset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepcluster.core.errors import ConfigError, DataError
from deepcluster.core.plot import (
    as_numpy,
    image_batch,
    image_grid,
    new_figure,
    save_png,
)
from deepcluster.core.precision import FP32, Precision
from deepcluster.core.progress import progress_bar
from deepcluster.data.transforms import normalize

__all__ = ["check_layer", "model_device", "plot_top_activations", "top_activating", "unit_scores"]


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (the CPU for a model without any)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def check_layer(model: nn.Module, layer: str) -> nn.Module:
    """The probe module named ``layer``.

    Raises
    ------
    ConfigError
        If ``layer`` is not a key of ``model.probe_layers()``; the message lists the valid ones.
    """
    layers = model.probe_layers()
    if layer not in layers:
        raise ConfigError(
            f"unknown layer {layer!r} for arch {getattr(model, 'arch', '')!r}; choose among {list(layers)}"
        )
    return layers[layer]


def unit_scores(output: torch.Tensor) -> torch.Tensor:
    """One score per unit and image: the spatial max of a conv map (B, C, H, W), else the value (B, D)."""
    if output.dim() == 4:
        return output.amax(dim=(2, 3))
    return output.flatten(1)


def _check_units(units: Sequence[int] | None, width: int, layer: str) -> list[int]:
    if units is None:
        return list(range(width))
    chosen = [int(u) for u in units]
    bad = [u for u in chosen if not 0 <= u < width]
    if not chosen or bad:
        raise ConfigError(
            f"units must be a non-empty list of unit indices in [0, {width - 1}] for layer {layer!r}"
            + (f"; got {bad}" if bad else "")
        )
    return chosen


@torch.no_grad()
def top_activating(
    model: nn.Module,
    images: Any,
    mean: Sequence[float],
    std: Sequence[float],
    layer: str,
    *,
    units: Sequence[int] | None = None,
    n: int = 9,
    batch_size: int = 512,
    show_progress: bool = False,
    precision: Precision = FP32,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` images with the highest activation of each unit of a probe layer.

    A unit is a channel of a conv layer, scored by its maximum over the spatial positions, or one
    output of a fully connected layer. The images are run in eval mode on the model's device, in
    batches, keeping only a running top-n per unit; ties go to the lower image index. The model's
    train/eval mode is restored afterwards.

    Parameters
    ----------
    model : DeepClusterNet
        The model.
    images : torch.Tensor or numpy.ndarray
        uint8 images N×C×H×W.
    mean, std : sequence of float
        Per-channel normalisation statistics (as in training).
    layer : str
        Probe layer name, a key of ``model.probe_layers()``.
    units : sequence of int, optional
        Units (channels) to rank images for; ``None`` for all units of the layer.
    n : int
        Images per unit (at most N).
    batch_size : int
        Images per forward pass.
    show_progress : bool
        Show a progress bar.
    precision : Precision
        Arithmetic of the forward pass (scores are compared in float32).

    Returns
    -------
    indices : numpy.ndarray
        int64 (U, min(n, N)): image indices per unit, by decreasing activation.
    values : numpy.ndarray
        float32 (U, min(n, N)): the matching activations.

    Raises
    ------
    ConfigError
        Unknown ``layer`` (the valid ones are listed), units out of range, or n, batch_size < 1.
    DataError
        If ``images`` is not a non-empty N×C×H×W batch.
    """
    check_layer(model, layer)
    if n < 1 or batch_size < 1:
        raise ConfigError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    imgs = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if imgs.dim() != 4 or len(imgs) == 0:
        raise DataError(f"images must be a non-empty N×C×H×W batch, got shape {tuple(imgs.shape)}")
    total = len(imgs)
    k = min(n, total)
    device = model_device(model)
    was_training = model.training
    model.eval()
    top_vals: torch.Tensor | None = None
    top_idx: torch.Tensor | None = None
    chosen: torch.Tensor | None = None
    try:
        with precision.inference(model), progress_bar(f"top images {layer}", total=total, enabled=show_progress) as advance:
            for start in range(0, total, batch_size):
                batch = precision.input(normalize(imgs[start : start + batch_size].to(device), mean, std))
                out = model.layer_outputs(batch, [layer], flatten=False)[layer]
                scores = unit_scores(out).float()  # (B, width)
                if chosen is None:
                    chosen = torch.tensor(_check_units(units, scores.shape[1], layer), device=scores.device)
                vals = scores.index_select(1, chosen).t()  # (U, B)
                idx = torch.arange(start, start + len(batch), device=vals.device).expand_as(vals)
                if top_vals is not None:
                    # Running top first: its indices are all lower, so the stable sort breaks ties
                    # towards lower image indices.
                    vals = torch.cat([top_vals, vals], dim=1)
                    idx = torch.cat([top_idx, idx], dim=1)
                order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]
                top_vals = vals.gather(1, order)
                top_idx = idx.gather(1, order)
                advance(len(batch))
    finally:
        model.train(was_training)
    assert top_vals is not None and top_idx is not None
    return top_idx.cpu().numpy().astype(np.int64), top_vals.cpu().numpy().astype(np.float32)


def plot_top_activations(
    images: Any,
    indices: Any,
    path: str | Path,
    *,
    values: Any = None,
    units: Sequence[int] | None = None,
    max_units: int = 16,
    title: str | None = None,
) -> Path:
    """One row per unit with its top images, left to right by decreasing activation (Figure 5.4).

    Parameters
    ----------
    images : torch.Tensor or numpy.ndarray
        uint8 images N×C×H×W (C = 1 or 3) that ``indices`` point into.
    indices : array-like
        (U, n) image indices per unit, e.g. from :func:`top_activating`.
    path : str or Path
        Output PNG, written atomically.
    values : array-like, optional
        (U, n) activations; the range of each row is written on its right.
    units : sequence of int, optional
        Unit number of each row, for the row labels ``"unit u"``; default ``0..U-1``.
    max_units : int
        Only the first ``max_units`` rows are drawn.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    DataError
        Malformed images, indices out of range, or ``values`` / ``units`` not matching ``indices``.
    """
    imgs = image_batch(images)
    idx = as_numpy(indices)
    if idx.ndim != 2 or idx.shape[0] == 0 or idx.shape[1] == 0 or idx.dtype.kind not in "iu":
        raise DataError(f"indices must be a non-empty (units, n) integer array, got shape {tuple(idx.shape)}")
    if idx.min() < 0 or idx.max() >= len(imgs):
        raise DataError(f"indices must lie in [0, {len(imgs) - 1}] (one per image), got [{idx.min()}, {idx.max()}]")
    vals = None if values is None else as_numpy(values)
    if vals is not None and vals.shape != idx.shape:
        raise DataError(f"values must have the shape of indices {tuple(idx.shape)}, got {tuple(vals.shape)}")
    labels = list(range(idx.shape[0])) if units is None else [int(u) for u in units]
    if len(labels) != idx.shape[0]:
        raise DataError(f"units has {len(labels)} entries for {idx.shape[0]} rows of indices")
    if max_units < 1:
        raise DataError(f"max_units must be >= 1, got {max_units}")
    rows, n = min(idx.shape[0], max_units), idx.shape[1]
    fig = new_figure(1.2 + n * 0.55 + (0.9 if vals is not None else 0.0), rows * 0.6 + (0.3 if title else 0.0))
    axes = np.atleast_1d(fig.subplots(rows, 1, squeeze=False)[:, 0])
    for r, ax in enumerate(axes):
        image_grid(ax, imgs[idx[r]], n)
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(f"unit {labels[r]}", rotation=0, ha="right", va="center", fontsize=8)
        if vals is not None:
            ax.yaxis.set_label_position("left")
            ax.text(1.01, 0.5, f"{_fmt(vals[r, 0])}\n… {_fmt(vals[r, -1])}", transform=ax.transAxes,
                    ha="left", va="center", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_png(fig, path)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else str(v)

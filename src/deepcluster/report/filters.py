"""First-layer filters of a model, composed with the fixed Sobel front (Caron's thesis, Figure 5.2).

With a Sobel front the first trained convolution sees 2 gradient channels, not the image. Its
kernels are then shown as the equivalent filters on the raw input: the grey 1×1 conv, the 3×3
Sobel conv and the first conv are linear, so they compose into one convolution with kernels two
pixels larger. ``conv(x, composed)`` equals ``conv1(sobel(x))`` (without conv1's bias) except on
the output border, where the zero padding of the Sobel output and that of the image differ.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepcluster.core.errors import ConfigError, DataError
from deepcluster.core.plot import as_numpy, image_grid, new_figure, save_png

__all__ = ["first_conv", "first_layer_filters", "plot_filters"]


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first ``nn.Conv2d`` of the model's conv body (``model.features``).

    Parameters
    ----------
    model : DeepClusterNet
        The model.

    Returns
    -------
    nn.Conv2d

    Raises
    ------
    ConfigError
        If the body has no 2-D convolution.
    """
    body = getattr(model, "features", model)
    for module in body.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ConfigError(f"{type(model).__name__} has no Conv2d in its conv body: no first-layer filters to show")


def _dilated(weight: torch.Tensor, dilation: tuple[int, int]) -> torch.Tensor:
    # A dilated kernel as a plain one with zeros between its taps.
    dh, dw = dilation
    if dh == dw == 1:
        return weight
    o, c, kh, kw = weight.shape
    out = weight.new_zeros(o, c, dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    out[:, :, ::dh, ::dw] = weight
    return out


def _grey_weights(grey: nn.Module, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Weights of the 1×1 grey conv per input channel; an identity front means one grey channel.
    if isinstance(grey, nn.Identity):
        return torch.ones(1, device=device, dtype=dtype)
    if isinstance(grey, nn.Conv2d) and grey.out_channels == 1 and grey.kernel_size == (1, 1):
        return grey.weight.detach().reshape(-1).to(device, dtype)
    raise ConfigError(f"unsupported grey stage of the Sobel front: {grey!r}")


@torch.no_grad()
def first_layer_filters(model: nn.Module) -> torch.Tensor:
    """Weights of the first convolution, as filters on the model's raw input.

    Without a Sobel front these are the first conv's weights. With one (``model.sobel`` not
    ``None``: a 1×1 grey conv, or an identity for grey images, then a fixed 3×3 conv with 2 Sobel
    outputs), each kernel is composed with the Sobel kernels and the grey weights: the full 2-D
    convolution of the kernel with the Sobel kernels, summed over the 2 Sobel channels, times the
    grey weight of each input channel. A dilated first conv is expanded to its plain kernel first.

    Parameters
    ----------
    model : DeepClusterNet
        The model, on any device.

    Returns
    -------
    torch.Tensor
        float32 CPU tensor (out, C, kh, kw) with C the input channels of the first conv; with a
        Sobel front (out, C_in, kh' + 2, kw' + 2), C_in the image channels (1 or 3) and kh', kw' the
        (dilated) kernel size. ``F.conv2d(x, filters, stride=s, padding=p + 1)`` then equals
        ``conv1(sobel(x)) - bias`` away from the border (``s``, ``p``: conv1's stride and padding).

    Raises
    ------
    ConfigError
        If the model has no first conv, or its Sobel front / first conv cannot be composed
        (grouped conv, non-Sobel front).
    """
    conv = first_conv(model)
    weight = conv.weight.detach()
    sobel = getattr(model, "sobel", None)
    if sobel is None:
        return weight.float().cpu().clone()
    if conv.groups != 1:
        raise ConfigError(f"cannot compose a grouped first conv (groups={conv.groups}) with the Sobel front")
    try:
        grey, edges = sobel[0], sobel[1]
    except (TypeError, IndexError):
        raise ConfigError(f"unsupported Sobel front {type(sobel).__name__}: expected (grey, edges) stages") from None
    if not (isinstance(edges, nn.Conv2d) and edges.in_channels == 1 and edges.stride == (1, 1)
            and edges.dilation == (1, 1) and edges.groups == 1
            and edges.out_channels == weight.shape[1]):
        raise ConfigError(f"unsupported Sobel stage {edges!r} in front of {conv!r}")
    w = _dilated(weight.double(), conv.dilation)  # (out, J, kh, kw), J Sobel channels
    s = edges.weight.detach().to(w.device, w.dtype)  # (J, 1, 3, 3)
    sh, sw = s.shape[-2:]
    # Cross-correlations compose into the full convolution of the kernels: K[t] = Σ_u W[u] S[t - u],
    # i.e. a cross-correlation of the zero-padded W with the flipped S, summed over the J channels.
    padded = F.pad(w, (sw - 1, sw - 1, sh - 1, sh - 1))
    composed = F.conv2d(padded, s.flip(-2, -1).reshape(1, -1, sh, sw))  # (out, 1, kh+2, kw+2)
    g = _grey_weights(grey, w.device, w.dtype)  # (C_in,)
    return (composed * g.view(1, -1, 1, 1)).float().cpu()


def _normalise_each(filters: np.ndarray) -> np.ndarray:
    # Every filter scaled to [0, 1] by its own min and max; a constant filter is mid-grey.
    lo = filters.min(axis=(1, 2, 3), keepdims=True)
    hi = filters.max(axis=(1, 2, 3), keepdims=True)
    span = hi - lo
    out = np.where(span > 0, (filters - lo) / np.where(span > 0, span, 1.0), 0.5)
    return out.astype(np.float32)


def _display_filters(filters: np.ndarray) -> np.ndarray:
    # N×C×h×w in [0, 1] → N×h×w'×3: RGB as colour, one channel as grey, other counts side by side.
    n, c, h, w = filters.shape
    if c == 3:
        return np.transpose(filters, (0, 2, 3, 1))
    if c == 1:
        return np.repeat(np.transpose(filters, (0, 2, 3, 1)), 3, axis=-1)
    strip = np.ones((n, h, c * (w + 1) - 1), dtype=np.float32)
    for j in range(c):
        strip[:, :, j * (w + 1) : j * (w + 1) + w] = filters[:, j]
    return np.repeat(strip[..., None], 3, axis=-1)


def plot_filters(
    filters: Any,
    path: str | Path,
    *,
    title: str | None = None,
    max_filters: int = 96,
) -> Path:
    """Grid of convolution filters, each scaled to its own range (Caron's Figure 5.2).

    Parameters
    ----------
    filters : torch.Tensor or numpy.ndarray
        (out, C, kh, kw) kernels, e.g. from :func:`first_layer_filters`. 3 channels are shown as
        colour, 1 as grey; any other number as its channels in grey side by side.
    path : str or Path
        Output PNG, written atomically.
    title : str, optional
        Figure title.
    max_filters : int
        Only the first ``max_filters`` filters are drawn.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    DataError
        If ``filters`` is not a non-empty 4-D array of finite values.
    """
    f = as_numpy(filters).astype(np.float64, copy=False)
    if f.ndim != 4 or f.shape[0] == 0 or f.shape[1] == 0:
        raise DataError(f"filters must be a non-empty (out, C, kh, kw) array, got shape {tuple(f.shape)}")
    if not np.all(np.isfinite(f)):
        raise DataError("filters contain NaN or infinite values")
    if max_filters < 1:
        raise DataError(f"max_filters must be >= 1, got {max_filters}")
    shown = _display_filters(_normalise_each(f[:max_filters]))
    n, h, w, _ = shown.shape
    ncol = min(n, max(1, math.ceil(math.sqrt(n * 1.5))))
    nrow = math.ceil(n / ncol)
    cell = 0.45 * max(1.0, w / max(h, 1))
    fig = new_figure(max(2.5, ncol * cell), max(1.5, nrow * 0.45 + (0.35 if title else 0.0)))
    ax = fig.add_subplot()
    image_grid(ax, shown, ncol, pad=1)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_png(fig, path)

"""Channel visualisation by gradient ascent on the input (Caron's thesis ch. 5; Yosinski et al. 2015).

Starting from small seeded noise, an image is optimised to maximise the mean activation of one
channel of a layer, regularised by an L2 penalty on the image, periodic Gaussian blur and clipping
to valid pixel values; during the first steps ReLU gradients are redirected as in Lucid, so that
units that are off on the starting noise get a gradient too. All channels are optimised at once,
one image each, in one batch.

Written here rather than taken from a library: torch-lucent (the PyTorch port of Lucid, last
release 0.1.8 in 2021) pins ``kornia<=0.4.1`` and lists ipython, pytest and coveralls as runtime
dependencies, and targets ImageNet torchvision models; the loop below is short and needs nothing
beyond torch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepcluster.core.errors import ConfigError, DataError
from deepcluster.core.plot import as_numpy, new_figure, save_png
from deepcluster.core.progress import progress_bar
from deepcluster.models.hooks import capture_outputs
from deepcluster.report.activations import check_layer, model_device

__all__ = [
    "REDIRECT_STEPS",
    "channel_activation",
    "gaussian_blur",
    "plot_channel_visualizations",
    "visualize_channels",
]


#: Steps during which ReLU gradients are redirected (Lucid's choice): from near-constant noise many
#: units are off, so a plain ReLU would pass no gradient at all to them.
REDIRECT_STEPS = 16


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose gradient, for an image where the plain ReLU gradient is all zero, passes through
    except where it would push a negative input lower (Lucid's ``redirected_relu_grad``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0.0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        negative = x < 0
        relu_grad = grad.masked_fill(negative, 0.0)
        # ``grad`` is that of the loss being minimised: grad > 0 means "lower this input".
        redirected = grad.masked_fill(negative & (grad > 0), 0.0)
        blocked = relu_grad.flatten(1).abs().amax(dim=1) == 0
        return torch.where(blocked.view(-1, *([1] * (grad.dim() - 1))), redirected, relu_grad)


@contextlib.contextmanager
def _redirect_relus(model: nn.Module, active: list[bool]) -> Iterator[None]:
    # While active[0], every nn.ReLU of the model computes _RedirectedReLU on its (not in-place)
    # input; the modules' ``inplace`` flags and hooks are restored on exit.
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    inplace = [m.inplace for m in relus]

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> torch.Tensor | None:
        return _RedirectedReLU.apply(inputs[0]) if active[0] else None

    handles = []
    try:
        for m in relus:
            m.inplace = False  # keep the pre-activation intact for the redirected gradient
            handles.append(m.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(relus, inplace, strict=True):
            m.inplace = flag


def channel_activation(model: nn.Module, x: torch.Tensor, layer: str, channels: Sequence[int]) -> torch.Tensor:
    """Activation of ``channels[i]`` of probe ``layer`` for image ``x[i]``; the forward stops at ``layer``.

    Conv layers give the channel's mean over the spatial positions, fully connected ones the unit's
    value. Differentiable with respect to ``x``.

    Parameters
    ----------
    model : DeepClusterNet
        The model (its mode is left as it is).
    x : torch.Tensor
        Normalised images (K, C, H, W) on the model's device.
    layer : str
        Probe layer name.
    channels : sequence of int
        K channel (unit) indices, one per image.

    Returns
    -------
    torch.Tensor
        Shape (K,).

    Raises
    ------
    ConfigError
        Unknown ``layer`` (the valid ones are listed) or a channel out of range.
    """
    module = check_layer(model, layer)
    # The output as returned (an in-place ReLU returns its input); the forward stops right after,
    # so no later in-place op can change it.
    got = capture_outputs(model.embed, x, {layer: module})
    if layer not in got:  # pragma: no cover - every probe module lies on the embed path
        raise ConfigError(f"layer {layer!r} was not reached by the forward pass")
    out = got[layer]
    width = out.shape[1]
    bad = [c for c in channels if not 0 <= c < width]
    if bad:
        raise ConfigError(f"channels must lie in [0, {width - 1}] for layer {layer!r}, got {bad}")
    picked = out[torch.arange(len(channels), device=out.device), torch.as_tensor(list(channels), device=out.device)]
    return picked.flatten(1).mean(dim=1) if picked.dim() > 1 else picked


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-channel Gaussian blur of a batch (B, C, H, W), kernel radius ⌈2σ⌉, reflected borders."""
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    y = F.pad(x, (radius, radius, radius, radius), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@dataclass(frozen=True)
class Ascent:
    """How the gradient ascent of :func:`visualize_channels` is regularised.

    Attributes
    ----------
    lr : float
        Adam learning rate, in normalised input units.
    l2 : float
        Weight of the L2 penalty on the (normalised) image.
    blur_every : int
        Blur period in steps; 0 disables the blur.
    blur_sigma : float
        Standard deviation of the blur in pixels; 0 disables it.
    """

    lr: float = 0.05
    l2: float = 1e-4
    blur_every: int = 4
    blur_sigma: float = 0.5


def visualize_channels(
    model: nn.Module,
    layer: str,
    channels: list[int],
    *,
    input_shape: tuple[int, int, int],
    mean: Sequence[float],
    std: Sequence[float],
    steps: int = 200,
    seed: int = 0,
    regularisation: Ascent | None = None,
    show_progress: bool = False,
) -> np.ndarray:
    """Images maximising the mean activation of channels of a layer, by gradient ascent on the input.

    Each image starts as small Gaussian noise (std 0.01, drawn from ``seed``) in normalised input
    space and takes ``steps`` Adam steps (learning rate ``lr``) on ``-activation + l2 · ||x||²``;
    every ``blur_every`` steps it is blurred (Gaussian, ``blur_sigma`` px) -- the settings of
    :class:`Ascent` -- and after every step clipped to the range of
    valid pixels. During the first :data:`REDIRECT_STEPS` steps the gradient of every ``nn.ReLU``
    is redirected where it would be all zero (Lucid's redirected ReLU), so that units that are off
    on the starting noise still move. The model runs in eval mode with frozen weights, its mode and the weights'
    ``requires_grad`` flags are restored afterwards; the forward stops at ``layer``. On the CPU
    the result depends only on the arguments (on CUDA, up to cuDNN's non-deterministic kernels).

    Parameters
    ----------
    model : DeepClusterNet
        The model, on any device (the images are optimised there).
    layer : str
        Probe layer name, a key of ``model.probe_layers()``.
    channels : list of int
        Channels (conv) or units (fully connected) to visualise, one image each.
    input_shape : tuple of int
        (C, H, W) of the model's input images.
    mean, std : sequence of float
        Per-channel normalisation statistics of the input (as in training).
    steps : int
        Optimisation steps (0 returns the starting noise).
    seed : int
        Seed of the starting noise.
    regularisation : Ascent, optional
        Learning rate, L2 weight and blur (default :class:`Ascent`'s).
    show_progress : bool
        Show a progress bar.

    Returns
    -------
    numpy.ndarray
        float32 (len(channels), C, H, W) images in [0, 1] (de-normalised pixels).

    Raises
    ------
    ConfigError
        Unknown ``layer`` (the valid ones are listed), channels out of range or empty, or invalid
        shape, statistics or optimisation settings.
    """
    check_layer(model, layer)
    reg = regularisation or Ascent()
    lr, l2, blur_every, blur_sigma = reg.lr, reg.l2, reg.blur_every, reg.blur_sigma
    chans = [int(c) for c in channels]
    if not chans:
        raise ConfigError("channels must name at least one channel to visualise")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
    c = shape[0]
    if len(mean) != c or len(std) != c or any(s <= 0 for s in std):
        raise ConfigError(f"mean and std need {c} values (std > 0), got mean={tuple(mean)}, std={tuple(std)}")
    if steps < 0 or lr <= 0 or l2 < 0 or blur_every < 0 or blur_sigma < 0:
        raise ConfigError(
            f"invalid ascent settings: steps={steps}, lr={lr}, l2={l2}, blur_every={blur_every}, "
            f"blur_sigma={blur_sigma} (need steps, l2, blur_every, blur_sigma >= 0 and lr > 0)"
        )
    device = model_device(model)
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    lo, hi = (0.0 - m) / s, (1.0 - m) / s  # valid pixels [0, 1] in normalised space
    gen = torch.Generator().manual_seed(int(seed))
    x = (0.01 * torch.randn((len(chans), *shape), generator=gen)).to(device)
    x = torch.maximum(torch.minimum(x, hi), lo).requires_grad_(True)

    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            channel_activation(model, x.detach(), layer, chans)  # channel range check before any step
        opt = torch.optim.Adam([x], lr=lr)
        blur = blur_every > 0 and blur_sigma > 0
        redirect = [True]
        with (
            torch.enable_grad(),
            _redirect_relus(model, redirect),
            progress_bar(f"ascent {layer}", total=steps, enabled=show_progress) as advance,
        ):
            for step in range(1, steps + 1):
                redirect[0] = step <= REDIRECT_STEPS
                opt.zero_grad(set_to_none=True)
                act = channel_activation(model, x, layer, chans)
                loss = -act.sum() + l2 * x.pow(2).sum()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    if blur and step % blur_every == 0:
                        x.copy_(gaussian_blur(x, blur_sigma))
                    x.copy_(torch.maximum(torch.minimum(x, hi), lo))
                advance(1)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    out = (x.detach() * s + m).clamp_(0.0, 1.0)
    return out.cpu().numpy().astype(np.float32)


def plot_channel_visualizations(
    images_01: Any,
    path: str | Path,
    *,
    channels: Sequence[int] | None = None,
    title: str | None = None,
) -> Path:
    """Grid of channel visualisations, each labelled ``"ch c"`` and stretched to its own range.

    Parameters
    ----------
    images_01 : numpy.ndarray or torch.Tensor
        Float images (K, C, H, W) in [0, 1], C = 1 or 3, e.g. from :func:`visualize_channels`.
    path : str or Path
        Output PNG, written atomically.
    channels : sequence of int, optional
        Channel of each image, for the labels; default ``0..K-1``.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    DataError
        Malformed images, or ``channels`` not matching them.
    """
    x = as_numpy(images_01)
    if x.ndim != 4 or x.shape[0] == 0 or x.shape[1] not in (1, 3):
        raise DataError(f"images must be a non-empty K×C×H×W array with C = 1 or 3, got shape {tuple(x.shape)}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError("images contain NaN or infinite values")
    labels = list(range(len(x))) if channels is None else [int(ch) for ch in channels]
    if len(labels) != len(x):
        raise DataError(f"channels has {len(labels)} entries for {len(x)} images")
    # Ascent images use a small part of the pixel range: stretch each to its own min..max.
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    span = x.max(axis=(1, 2, 3), keepdims=True) - lo
    x = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.5)
    shown = np.transpose(x, (0, 2, 3, 1))
    if shown.shape[-1] == 1:
        shown = np.repeat(shown, 3, axis=-1)
    k = len(shown)
    ncol = min(k, 8)
    nrow = math.ceil(k / ncol)
    fig = new_figure(max(2.5, ncol * 1.0), nrow * 1.1 + (0.3 if title else 0.0))
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    big = max(shown.shape[1:3]) >= 64
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i < k:
            ax.imshow(shown[i], vmin=0, vmax=1, interpolation="antialiased" if big else "nearest")
            ax.set_title(f"ch {labels[i]}", fontsize=7, pad=2)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_png(fig, path)

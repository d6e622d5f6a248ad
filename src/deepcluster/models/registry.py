"""Registry of architectures and :func:`build_model` (timm style)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from deepcluster.core.errors import ConfigError
from deepcluster.models.base import DeepClusterNet, InputTooSmallError
from deepcluster.models.init import init_weights
from deepcluster.models.sobel import SOBEL_CHANNELS, Sobel

__all__ = ["ModelBuilder", "TORCHVISION_PREFIX", "available_models", "build_model", "register_model"]

#: ``builder(in_channels, input_size) -> DeepClusterNet``; ``in_channels`` is what the conv body
#: receives (2 behind the Sobel front). The builder creates no Sobel front and no top layer and
#: needs not initialise weights; it raises :class:`InputTooSmallError` for too small images.
ModelBuilder = Callable[[int, int], DeepClusterNet]

#: Prefix of the torchvision backbones: ``"tv:resnet18"``.
TORCHVISION_PREFIX = "tv:"
_TORCHVISION_HINT = "tv:<any torchvision classification model>"

_BUILDERS: dict[str, ModelBuilder] = {}

# Largest side tried when looking for the minimum input size of an architecture.
_MAX_SIZE_SCAN = 2048


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering ``builder(in_channels, input_size) -> DeepClusterNet`` under ``name``.

    Parameters
    ----------
    name : str
        Architecture name for :func:`build_model`; must be new and not start with ``"tv:"``.

    Examples
    --------
    >>> @register_model("my_net")  # doctest: +SKIP
    ... def my_net(in_channels: int, input_size: int) -> DeepClusterNet: ...
    """
    if not name or name.startswith(TORCHVISION_PREFIX):
        raise ValueError(f"invalid model name {name!r}")

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return decorator


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`: the builtin ones, then ``"tv:<any torchvision
    classification model>"``.

    Returns
    -------
    list[str]
    """
    return sorted(_BUILDERS) + [_TORCHVISION_HINT]


def _builder_for(arch: str) -> ModelBuilder:
    if arch.startswith(TORCHVISION_PREFIX):
        # Imported here, not under the meta-device context of _construct: tensors created at
        # import time there would land on the meta device.
        from deepcluster.models.torchvision_backbone import build_torchvision_backbone

        name = arch[len(TORCHVISION_PREFIX):]
        return lambda in_channels, input_size: build_torchvision_backbone(name, in_channels, input_size)
    try:
        return _BUILDERS[arch]
    except KeyError:
        raise ConfigError(
            f"unknown model arch {arch!r}; available: {', '.join(available_models())}"
        ) from None


def _minimum_input_size(builder: ModelBuilder, in_channels: int, start: int) -> int | None:
    # On the meta device a build costs no memory nor RNG draws, so trying sizes one by one is cheap.
    with torch.device("meta"):
        for size in range(start + 1, _MAX_SIZE_SCAN + 1):
            try:
                builder(in_channels, size)
            except InputTooSmallError:
                continue
            return size
    return None


# Tensors that init_weights sets, per module type; modules holding any other tensor keep the values
# their constructor gave them.
_INITIALISED = (
    (nn.modules.conv._ConvNd, {"weight", "bias"}),
    (nn.Linear, {"weight", "bias"}),
    (nn.modules.batchnorm._BatchNorm, {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}),
)


def _fully_initialised_by_init_weights(model: nn.Module) -> bool:
    for m in model.modules():
        own = {n for n, _ in m.named_parameters(recurse=False)} | {n for n, _ in m.named_buffers(recurse=False)}
        if own and not any(isinstance(m, cls) and own <= names for cls, names in _INITIALISED):
            return False
    return True


def _construct(builder: ModelBuilder, in_channels: int, input_size: int) -> DeepClusterNet:
    # Default inits of big layers cost seconds (VGG16) and init_weights overwrites them anyway:
    # build on the meta device and only allocate, when init_weights sets every tensor.
    try:
        with torch.device("meta"):
            model = builder(in_channels, input_size)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - some op lacks a meta kernel: build normally below
        model = None
    if model is not None and _fully_initialised_by_init_weights(model):
        return model.to_empty(device="cpu")
    return builder(in_channels, input_size)


@contextlib.contextmanager
def _seeded_global_rng(seed: int | None) -> Iterator[None]:
    # Module constructors draw their default init from the global RNG. Forking it makes those
    # draws (kept for layer types init_weights leaves alone) depend on the seed only, and leaves
    # the caller's RNG state as it was. Only the CPU generator is seeded: CUDA is not involved.
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def build_model(
    arch: str,
    *,
    in_channels: int = 1,
    input_size: int = 28,
    sobel: bool = False,
    num_classes: int | None = None,
    seed: int | None = 0,
) -> DeepClusterNet:
    """Build and initialise a registered architecture.

    Parameters
    ----------
    arch : str
        Name from :func:`available_models`, or ``"tv:<name>"`` for a torchvision model.
    in_channels : int
        Channels of the input images (1 or 3 with ``sobel``).
    input_size : int
        Side of the (square) input images; sizes the first fully connected layer.
    sobel : bool
        Put the fixed Sobel front first; the conv body then receives 2 channels.
    num_classes : int or None
        Outputs of the top layer; ``None`` builds no top layer.
    seed : int or None
        Seed of every initialisation draw: the same seed gives the same weights. The global RNG
        state is left untouched. ``None`` draws from the global RNG.

    Returns
    -------
    DeepClusterNet
        On CPU, in training mode.

    Raises
    ------
    ConfigError
        Unknown ``arch`` (the message lists the available ones), invalid arguments, or
        ``input_size`` below the minimum of the architecture (the message names the minimum).
    """
    if not isinstance(arch, str) or not arch:
        raise ConfigError(f"model arch must be a non-empty string, got {arch!r}")
    if in_channels < 1:
        raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
    if input_size < 1:
        raise ConfigError(f"input_size must be >= 1, got {input_size}")
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1 or null, got {num_classes}")
    if sobel and in_channels not in (1, 3):
        raise ConfigError(
            f"the Sobel front needs 1- or 3-channel images, got in_channels={in_channels}; "
            "set sobel: false"
        )
    builder = _builder_for(arch)
    body_channels = SOBEL_CHANNELS if sobel else in_channels
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    with _seeded_global_rng(seed):
        try:
            model = _construct(builder, body_channels, input_size)
        except InputTooSmallError as exc:
            minimum = _minimum_input_size(builder, body_channels, input_size)
            need = f"at least {minimum} px" if minimum is not None else "larger images"
            raise ConfigError(
                f"input_size {input_size} is too small for model arch {arch!r}: it needs {need} "
                f"({exc})"
            ) from None
        model.arch = arch
        if sobel:
            model.sobel = Sobel(in_channels)
        init_weights(model, generator)
        if num_classes is not None:
            model.reset_top_layer(num_classes, generator)
    return model

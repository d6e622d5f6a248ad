"""The model class every DeepCluster architecture is built as."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from deepcluster.core.errors import ConfigError
from deepcluster.models.hooks import capture_outputs
from deepcluster.models.init import normal_

__all__ = ["DeepClusterNet", "InputTooSmallError", "feature_output_shape"]


class InputTooSmallError(ConfigError):
    """The input images are too small for a conv body (an output size would drop below 1)."""


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


_SHAPE_PRESERVING = (nn.BatchNorm2d, nn.ReLU, nn.Dropout, nn.Identity)


def _sequential_output_shape(module: nn.Module, in_channels: int, input_size: int) -> torch.Size | None:
    # Shape arithmetic for plain conv/pool stacks. The meta-device path gives the same answer but
    # its first use imports PyTorch's decompositions (about a second); ``None`` defers to it.
    if not isinstance(module, nn.Sequential):
        return None
    c, hw = in_channels, (input_size, input_size)
    for i, layer in enumerate(module):
        if isinstance(layer, _SHAPE_PRESERVING):
            continue
        if type(layer) is nn.Conv2d and not isinstance(layer.padding, str) and layer.in_channels == c:
            stride = layer.stride
            c = layer.out_channels
        elif type(layer) is nn.MaxPool2d and not layer.ceil_mode:
            stride = layer.stride if layer.stride is not None else layer.kernel_size
        else:
            return None
        k, st, p, d = map(_pair, (layer.kernel_size, stride, layer.padding, layer.dilation))
        hw = tuple((hw[j] + 2 * p[j] - d[j] * (k[j] - 1) - 1) // st[j] + 1 for j in range(2))
        if min(hw) < 1:
            raise InputTooSmallError(
                f"{in_channels}×{input_size}×{input_size} inputs do not fit: layer {i} "
                f"({type(layer).__name__}) would output {hw[0]}×{hw[1]}"
            )
    return torch.Size((2, c, *hw))


def feature_output_shape(module: nn.Module, in_channels: int, input_size: int) -> torch.Size | None:
    """Output shape of ``module`` for a batch of 2 square images, without running it for real.

    Plain conv/pool ``Sequential`` bodies are sized by arithmetic; anything else runs on the meta
    device (shapes only: no memory, no compute, weights untouched).

    Parameters
    ----------
    module : nn.Module
        Conv body (or whole backbone).
    in_channels, input_size : int
        Channels and side of the input images.

    Returns
    -------
    torch.Size or None
        Shape of the output, batch dimension (2) included; ``None`` when some operation of the
        module has no meta implementation, so the shape cannot be known this way.

    Raises
    ------
    InputTooSmallError
        If the module cannot take such images.
    """
    shape = _sequential_output_shape(module, in_channels, input_size)
    if shape is not None:
        return shape
    tensors = {name: t.to("meta") for name, t in module.named_parameters()}
    tensors.update({name: t.to("meta") for name, t in module.named_buffers()})
    # Batch 2 and eval mode: batch norms refuse a single value per channel in training mode.
    x = torch.zeros(2, in_channels, input_size, input_size, device="meta")
    was_training = module.training
    module.eval()
    try:
        out = functional_call(module, tensors, (x,))
    except NotImplementedError:
        return None
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        raise InputTooSmallError(
            f"{in_channels}×{input_size}×{input_size} inputs do not fit: {exc}"
        ) from None
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"{type(module).__name__} does not return a single tensor")
    return out.shape


class DeepClusterNet(nn.Module):
    """A CNN as DeepCluster trains it: ``sobel → features → flatten → classifier → ReLU → top_layer``.

    ``classifier`` stops *before* its last ReLU: :meth:`embed` returns the features that
    DeepCluster clusters (pre-ReLU, Caron's thesis §4) and :meth:`forward` applies the ReLU.

    Parameters
    ----------
    features : nn.Module
        Conv body; its output is flattened.
    classifier : nn.Sequential
        Trunk MLP up to the penultimate layer, without its final ReLU (may be empty).
    feature_dim : int
        Output size of ``classifier`` (of the flattened ``features`` if it is empty).
    probe_layers : Mapping[str, str]
        Ordered probe name → dotted path of the module (inside this model) whose output is the
        probe's feature, e.g. ``{"conv1": "features.3", "fc2": "classifier.3"}``.
    default_probe_layer : str
        Name of the topmost conv block among ``probe_layers``.
    arch : str
        Registry name of the architecture.
    sobel : nn.Module or None
        Fixed front applied to the images, or ``None``.
    top_layer : nn.Linear or None
        Cluster/class scores layer, or ``None``.

    Attributes
    ----------
    sobel : nn.Module or None
    features : nn.Module
    classifier : nn.Sequential
    top_layer : nn.Linear or None
    feature_dim : int
    arch : str
    default_probe_layer : str
    """

    sobel: nn.Module | None
    features: nn.Module
    classifier: nn.Sequential
    top_layer: nn.Linear | None
    feature_dim: int
    arch: str
    default_probe_layer: str

    def __init__(
        self,
        features: nn.Module,
        classifier: nn.Sequential,
        feature_dim: int,
        *,
        probe_layers: Mapping[str, str],
        default_probe_layer: str,
        arch: str = "",
        sobel: nn.Module | None = None,
        top_layer: nn.Linear | None = None,
        extra_probe_layers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        # Registered in the official order so that state-dict keys read like Caron's checkpoints.
        self.register_module("sobel", sobel)
        self.features = features
        self.classifier = classifier
        self.register_module("top_layer", top_layer)
        self.feature_dim = int(feature_dim)
        self.arch = arch
        # Paths, not module references: they survive deepcopy, pickling and module replacement.
        self._probe_paths = dict(probe_layers)
        # Probes chosen by name only (e.g. conv2_prepool: conv2 before its pooling), not by default
        self._extra_probe_paths = dict(extra_probe_layers or {})
        for name, path in {**self._probe_paths, **self._extra_probe_paths}.items():
            try:
                self.get_submodule(path)
            except AttributeError:
                raise ValueError(f"probe layer {name!r}: no sub-module at {path!r}") from None
        if default_probe_layer not in self._probe_paths:
            raise ValueError(f"default_probe_layer {default_probe_layer!r} is not a probe layer")
        self.default_probe_layer = default_probe_layer

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features DeepCluster clusters: ``sobel → features → flatten → classifier`` (pre-ReLU).

        Parameters
        ----------
        x : torch.Tensor
            Images, shape (B, C, H, W).

        Returns
        -------
        torch.Tensor
            Shape (B, feature_dim).
        """
        if self.sobel is not None:
            x = self.sobel(x)
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of the top layer, or the post-ReLU features when ``top_layer`` is ``None``.

        Parameters
        ----------
        x : torch.Tensor
            Images, shape (B, C, H, W).

        Returns
        -------
        torch.Tensor
            Shape (B, k) with a top layer of k outputs, else (B, feature_dim).
        """
        x = F.relu(self.embed(x))
        return x if self.top_layer is None else self.top_layer(x)

    def reset_top_layer(self, k: int, generator: torch.Generator | None = None) -> nn.Linear:
        """Replace ``top_layer`` by a fresh ``Linear(feature_dim, k)``: weight ~ N(0, 0.01), bias 0.

        Parameters
        ----------
        k : int
            Number of outputs (clusters or classes).
        generator : torch.Generator or None
            Source of the weight draws; ``None`` uses the global RNG.

        Returns
        -------
        nn.Linear
            The new top layer, on the device and dtype of the model's parameters.
        """
        if k < 1:
            raise ConfigError(f"the top layer needs at least 1 output, got k={k}")
        ref = next(self.parameters(), None)
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        # Built on meta then materialised: nn.Linear's own init would draw from the global RNG.
        layer = nn.Linear(self.feature_dim, k, device="meta", dtype=dtype).to_empty(device=device)
        normal_(layer.weight, 0.01, generator)
        with torch.no_grad():
            layer.bias.zero_()
        self.top_layer = layer
        return layer

    def probe_layers(self, *, extra: bool = False) -> dict[str, nn.Module]:
        """Ordered probe name → module whose output is that probe's feature.

        Conv blocks (``conv1``...) end after their ReLU, or after their max-pool when one follows.
        Fully connected probes: every one but the last is post-ReLU; the last (e.g. ``fc2``) is the
        pre-ReLU output that :meth:`embed` returns. With ``extra``, also the probes chosen by name
        only (``conv2_prepool`` of LeNet-5: conv2 after its ReLU, before its pooling).

        Returns
        -------
        dict[str, nn.Module]
        """
        paths = {**self._probe_paths, **self._extra_probe_paths} if extra else self._probe_paths
        return {name: self.get_submodule(path) for name, path in paths.items()}

    def probe_path(self, name: str) -> str:
        """The module path of probe ``name`` (default or extra), e.g. ``features.7``."""
        return {**self._probe_paths, **self._extra_probe_paths}[name]

    def layer_outputs(self, x: torch.Tensor, names: list[str], *, flatten: bool = True) -> dict[str, torch.Tensor]:
        """Outputs of the named probe layers for ``x``, each flattened to (B, D) by default.

        The forward stops as soon as all the named layers have been reached.

        Parameters
        ----------
        x : torch.Tensor
            Images, shape (B, C, H, W).
        names : list[str]
            Probe layer names, keys of :meth:`probe_layers`.
        flatten : bool
            ``False`` keeps each output's own shape: (B, C, H, W) for conv blocks, (B, D) for
            fully connected layers (what budget pooling of conv maps needs).

        Returns
        -------
        dict[str, torch.Tensor]
            Name → (B, D) tensor (or the unflattened output), in the order of ``names``.

        Raises
        ------
        ConfigError
            If a name is not a probe layer of this model.
        """
        layers = self.probe_layers(extra=True)
        unknown = [n for n in names if n not in layers]
        if unknown:
            raise ConfigError(
                f"unknown probe layer(s) {unknown} for arch {self.arch!r}; choose among {list(layers)}"
            )
        wanted = {n: layers[n] for n in dict.fromkeys(names)}
        # A copy: a later in-place op (e.g. ReLU(inplace=True)) would change the tensor.
        keep = (lambda out: torch.flatten(out, 1).clone()) if flatten else (lambda out: out.clone())
        outputs = capture_outputs(self.embed, x, wanted, transform=keep)
        return {n: outputs[n] for n in names}

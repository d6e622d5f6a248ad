"""Any torchvision classification model as a DeepCluster backbone (``arch: "tv:<name>"``)."""

from __future__ import annotations

import torchvision
from torch import nn

from deepcluster.core.errors import ConfigError
from deepcluster.models.base import DeepClusterNet, InputTooSmallError, feature_output_shape

__all__ = ["build_torchvision_backbone"]

# Attributes holding the final classification layer in torchvision models, tried in this order.
_HEAD_ATTRS = ("fc", "classifier", "head", "heads")
# Their auxiliary heads change the output type in training mode; their own init needs scipy.
_EXTRA_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
}


def _drop_head(net: nn.Module, arch: str) -> int:
    """Replace the final Linear by an identity; return its ``in_features``."""
    for attr in _HEAD_ATTRS:
        head = getattr(net, attr, None)
        if isinstance(head, nn.Linear):
            setattr(net, attr, nn.Identity())
            return head.in_features
        if isinstance(head, nn.Sequential) and len(head) and isinstance(head[-1], nn.Linear):
            last = head[-1]
            head[-1] = nn.Identity()
            return last.in_features
    raise ConfigError(
        f"model arch {arch!r}: no final Linear layer found in .{', .'.join(_HEAD_ATTRS)}, so the "
        "backbone cannot be separated from its classifier; choose another torchvision model"
    )


def _adapt_first_conv(net: nn.Module, in_channels: int, arch: str) -> None:
    """Replace the first Conv2d by one of the same config taking ``in_channels`` channels."""
    for path, conv in net.named_modules():  # noqa: B007 - path is used after the loop
        if isinstance(conv, nn.Conv2d):
            break
    else:
        raise ConfigError(f"model arch {arch!r} has no Conv2d to adapt to {in_channels} input channels")
    if conv.in_channels == in_channels:
        return
    if conv.groups != 1:
        raise ConfigError(f"model arch {arch!r}: its first conv is grouped and cannot be adapted")
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    parent_path, _, attr = path.rpartition(".")
    setattr(net.get_submodule(parent_path) if parent_path else net, attr, new)


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())


def build_torchvision_backbone(name: str, in_channels: int, input_size: int) -> DeepClusterNet:
    """Wrap ``torchvision.models.get_model(name, weights=None)`` as a :class:`DeepClusterNet`.

    ``features`` is the whole torchvision model with its final Linear replaced by an identity;
    ``classifier`` is empty and ``feature_dim`` is the ``in_features`` of the removed Linear. The
    first Conv2d is rebuilt for ``in_channels``. Probe layers: ``layer1``..``layer4`` and ``pool``
    for ResNet-like models, otherwise the top-level children of the model; the default is the
    last one containing a convolution. No pretrained weights are ever loaded.

    Raises
    ------
    ConfigError
        Unknown model name, no removable final Linear, or images the model cannot take.
    """
    arch = f"tv:{name}"
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ConfigError(
            f"unknown torchvision classification model {name!r} in arch {arch!r}; "
            f"available: {', '.join(known)}"
        )
    net = torchvision.models.get_model(name, weights=None, **_EXTRA_KWARGS.get(name, {}))
    feature_dim = _drop_head(net, arch)
    _adapt_first_conv(net, in_channels, arch)

    if all(hasattr(net, a) for a in ("layer1", "layer2", "layer3", "layer4", "avgpool")):
        probes = {f"layer{i}": f"features.layer{i}" for i in range(1, 5)}
        probes["pool"] = "features.avgpool"
        default = "layer4"
    else:
        children = [(n, c) for n, c in net.named_children() if not isinstance(c, nn.Identity)]
        probes = {n: f"features.{n}" for n, _ in children}
        conv_children = [n for n, c in children if _has_conv(c)]
        default = conv_children[-1] if conv_children else children[-1][0]

    try:
        shape = feature_output_shape(net, in_channels, input_size)
    except InputTooSmallError as exc:
        raise ConfigError(
            f"model arch {arch!r} cannot take {input_size} px images: {exc}; change input_size"
        ) from None
    if shape is not None and tuple(shape[1:]) != (feature_dim,):
        raise ConfigError(
            f"model arch {arch!r} outputs shape {tuple(shape[1:])} once its final Linear is "
            f"removed, not ({feature_dim},); choose another torchvision model"
        )
    return DeepClusterNet(
        net, nn.Sequential(), feature_dim, probe_layers=probes, default_probe_layer=default, arch=arch
    )

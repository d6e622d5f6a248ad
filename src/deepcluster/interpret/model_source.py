"""The network to dissect, from a run folder, a torchvision name or a ``module:attribute``.

:func:`load_model_source` turns the ``MODEL`` argument of ``deepcluster dissect`` into an
``nn.Module`` (in eval mode) and the preprocessing its inputs need (:class:`ModelInfo`):

* a run folder of ours (``config.yaml`` present): the network of the chosen checkpoint; input
  channels and size from the checkpoint, normalisation from the run's dataset
  (:func:`deepcluster.data.splits.normalization`). Grey nets get the probe's RGB images
  converted to grey (ITU-R 601 luma, as PIL's ``"L"``), and images are resized to the run's size;
* a torchvision model name (``resnet18``, or ``tv:resnet18``): built with
  ``torchvision.models.get_model(name, weights=None)`` -- nothing is ever downloaded -- then the
  backbone of ``weights`` (a local file: a state dict or a published self-supervised checkpoint,
  see :mod:`deepcluster.models.published`) is loaded strictly; ImageNet normalisation;
* ``module:attribute`` (or ``path/to/file.py:attribute``): the attribute is an ``nn.Module`` or
  a callable returning one; ``weights`` is loaded into it when given. Input channels are those
  of its first ``Conv2d`` (3 when it has none); normalisation is ImageNet's for 3 channels and
  0.5/0.5 otherwise.

:func:`resolve_layer` maps a layer name to a module path: any name of
``dict(model.named_modules())``, for our nets a probe name such as ``conv2``, or ``last-conv``
for any model's top convolutional block (:func:`last_conv_layer`).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from deepcluster.core.errors import ConfigError, DataError
from deepcluster.models.published import LoadReport, load_backbone_state

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LAST_CONV", "ModelInfo", "last_conv_layer", "layer_names", "load_model_source",
           "resolve_layer"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelInfo:
    """Where a model came from and how its inputs are prepared."""

    #: Short name (run folder name, torchvision name, attribute name): default output folders.
    name: str
    #: ``"run"``, ``"torchvision"`` or ``"module"``.
    kind: str
    #: The MODEL argument as given.
    spec: str
    #: Input channels: 1 means the probe's RGB images are converted to grey.
    in_channels: int = 3
    #: Side of the square input the images are resized to; ``None`` keeps the probe's size.
    input_size: int | None = None
    #: Per-channel normalisation, in [0, 1] pixel units.
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    #: The run folder (kind ``"run"``).
    run_dir: Path | None = None
    #: Checkpoint (run folders) or weights file, for the record.
    weights: str | None = None
    #: Probe name -> module path (our nets), e.g. ``{"conv2": "features.7"}``.
    layer_aliases: Mapping[str, str] = field(default_factory=dict)
    #: What loading ``weights`` did (layout, tensors loaded, heads dropped); its ``summary()`` is one line.
    weights_report: LoadReport | None = None

    @property
    def grey(self) -> bool:
        return self.in_channels == 1


# --------------------------------------------------------------------------------------------
# Layers


def layer_names(model: nn.Module) -> list[str]:
    """Module paths of ``model`` (``dict(model.named_modules())`` without the root ``""``)."""
    return [n for n, _ in model.named_modules() if n]


def _aliases(model: nn.Module) -> dict[str, str]:
    probe = getattr(model, "probe_layers", None)
    if not callable(probe):
        return {}
    try:
        layers = probe()
    except Exception:  # noqa: BLE001 - a foreign model's method of the same name
        return {}
    if not isinstance(layers, Mapping):
        return {}
    paths = {id(m): n for n, m in model.named_modules()}
    return {name: paths[id(m)] for name, m in layers.items() if isinstance(m, nn.Module) and id(m) in paths}


#: Layer alias for the top convolutional block of any model (:func:`last_conv_layer`).
LAST_CONV = "last-conv"


def last_conv_layer(model: nn.Module) -> str:
    """Module path of ``model``'s top convolutional block, the layer dissections usually read.

    Our nets: their topmost conv probe layer (``conv5`` of AlexNet, ``conv2`` of LeNet-5). Other
    models: the last top-level child holding a ``Conv2d`` -- ``layer4`` of a ResNet, ``features``
    of AlexNet, VGG, DenseNet or MobileNet (the layers NetDissect-Lite's settings name).
    """
    aliases = _aliases(model)
    default = getattr(model, "default_probe_layer", None)
    if isinstance(default, str) and default in aliases:
        return aliases[default]
    for name, child in reversed(list(model.named_children())):
        if any(isinstance(m, nn.Conv2d) for m in child.modules()):
            return name
    raise ConfigError(f"{type(model).__name__} has no Conv2d, so no {LAST_CONV} layer: pass --layer with a module name")


def resolve_layer(model: nn.Module, layer: str) -> str:
    """Module path of ``layer``: a name of ``model.named_modules()``, a probe name of our nets,
    or ``last-conv`` (:func:`last_conv_layer`).

    Raises
    ------
    ConfigError
        If no module has that name; the message lists some valid names.
    """
    modules = dict(model.named_modules())
    if layer and layer in modules:
        return layer
    aliases = _aliases(model)
    if layer in aliases:
        return aliases[layer]
    if layer == LAST_CONV:
        return last_conv_layer(model)
    names = layer_names(model)
    convs = [n for n in names if isinstance(modules[n], nn.Conv2d)]
    shown = list(aliases) + [n for n in names if "." not in n] + convs[-6:]
    shown = list(dict.fromkeys(shown))[:24]
    raise ConfigError(
        f"unknown layer {layer!r} of {type(model).__name__}: pass a module name such as "
        f"{', '.join(shown) or '(the model has no sub-modules)'}"
        + (f" ({len(names)} modules in all)" if len(names) > len(shown) else "")
    )


# --------------------------------------------------------------------------------------------
# Loading


def _first_conv_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return 3


def _default_norm(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * channels, (0.5,) * channels


def _load_weights(model: nn.Module, path: str | Path, prefix: str | None) -> LoadReport:
    """The backbone of ``path`` loaded into ``model`` (see :func:`load_backbone_state`)."""
    return load_backbone_state(path, model, prefix=prefix)


def _check_pool(cfg, path: Path) -> None:
    """An ingested pool's normalisation is read from the pool: one line naming --data-root when the
    run folder's pool is not where config.yaml says (moved with or without the run)."""
    from deepcluster.data.registry import canonical_name

    root = cfg.data.root
    if canonical_name(cfg.data.name) == "ingested" and root is not None and not Path(root).expanduser().is_dir():
        raise DataError(f"run {path}: its ingested pool {root} does not exist (moved?): pass --data-root DIR, "
                        "the folder that holds the pool now")


def _from_run(path: Path, spec: str, checkpoint: str) -> tuple[nn.Module, ModelInfo]:
    from deepcluster.data.splits import normalization
    from deepcluster.runs import RunFolder, build_network

    run = RunFolder(path).require()
    cfg = run.load_config()
    ckpt = run.load_checkpoint(checkpoint)
    in_channels, input_size = int(ckpt["in_channels"]), int(ckpt["input_size"])
    model = build_network(cfg, in_channels, input_size)
    model.load_state_dict(ckpt["model"], strict=True)
    model.eval()
    _check_pool(cfg, path)
    mean, std = normalization(cfg, in_channels)
    info = ModelInfo(
        name=path.resolve().name, kind="run", spec=spec, in_channels=in_channels, input_size=input_size,
        mean=tuple(mean), std=tuple(std), run_dir=path, weights=checkpoint, layer_aliases=_aliases(model),
    )
    return model, info


def _from_torchvision(name: str, spec: str, weights: str | Path | None,
                      prefix: str | None) -> tuple[nn.Module, ModelInfo]:
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None)
    except Exception as exc:  # noqa: BLE001 - torchvision raises ValueError/TypeError by model
        raise ConfigError(f"cannot build torchvision model {name!r} ({exc})") from None
    report = None if weights is None else _load_weights(model, weights, prefix)
    model.eval()
    info = ModelInfo(name=name, kind="torchvision", spec=spec, in_channels=3, input_size=None,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, weights=None if weights is None else str(weights),
                     weights_report=report)
    return model, info


def _import_attribute(spec: str) -> tuple[object, str]:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ConfigError(f"MODEL {spec!r}: write module:attribute, e.g. mypackage.nets:build_model")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise DataError(f"MODEL {spec!r}: file {path} does not exist")
        mod_name = "_deepcluster_model_" + re.sub(r"\W", "_", str(path.resolve()))
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ConfigError(f"MODEL {spec!r}: {path} is not an importable Python file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise ConfigError(f"MODEL {spec!r}: importing {path} failed ({exc.__class__.__name__}: {exc})") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(f"MODEL {spec!r}: cannot import module {target!r} ({exc})") from None
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"MODEL {spec!r}: {target} has no attribute {attr!r}")
        obj = getattr(obj, part)
    stem = Path(target).stem if target.endswith(".py") else target.rpartition(".")[2]
    return obj, f"{stem}.{attr}"


def _from_module(spec: str, weights: str | Path | None, prefix: str | None) -> tuple[nn.Module, ModelInfo]:
    obj, name = _import_attribute(spec)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise ConfigError(f"MODEL {spec!r} is a {type(obj).__name__}: it must be an nn.Module or a callable returning one")
        obj = obj()
        if not isinstance(obj, nn.Module):
            raise ConfigError(f"MODEL {spec!r} returned a {type(obj).__name__}, not an nn.Module")
    model = obj
    report = None if weights is None else _load_weights(model, weights, prefix)
    model.eval()
    channels = _first_conv_channels(model)
    mean, std = _default_norm(channels)
    info = ModelInfo(name=name, kind="module", spec=spec, in_channels=channels, input_size=None, mean=mean,
                     std=std, weights=None if weights is None else str(weights), layer_aliases=_aliases(model),
                     weights_report=report)
    return model, info


def load_model_source(
    spec: str | Path, *, weights: str | Path | None = None, checkpoint: str = "last", weights_prefix: str | None = None
) -> tuple[nn.Module, ModelInfo]:
    """The model named by ``spec`` (see the module docstring), in eval mode, and its preprocessing.

    Parameters
    ----------
    spec : str or Path
        A run folder, a torchvision model name (``resnet18``, ``tv:resnet18``) or
        ``module:attribute`` / ``file.py:attribute``.
    weights : str or Path, optional
        A local weights file (torchvision and ``module:attribute`` models only): a state dict or a
        published checkpoint (MoCo, SwAV, DINO, solo-learn, VISSL, BYOL, Lightning, ``.safetensors``,
        see :mod:`deepcluster.models.published`); its backbone is loaded strictly and
        ``info.weights_report`` says how.
    checkpoint : str
        For run folders: ``last``, ``init`` or a cycle number with a kept checkpoint.
    weights_prefix : str, optional
        The key prefix of the backbone in ``weights``, for a layout that is not recognised.

    Raises
    ------
    ConfigError, DataError, TrainingError
        Unknown names, missing files, weights that do not fit.
    """
    text = str(spec)
    path = Path(text)
    if weights_prefix is not None and weights is None:
        raise ConfigError("--weights-prefix names the backbone's prefix in a --weights file: pass --weights FILE too")
    if path.is_dir():
        if weights is not None:
            raise ConfigError("--weights is for torchvision and module:attribute models; a run folder has its checkpoints (use --checkpoint)")
        return _from_run(path, text, checkpoint)
    for prefix in ("tv:", "torchvision:"):
        if text.startswith(prefix):
            return _from_torchvision(text[len(prefix):], text, weights, weights_prefix)
    if ":" in text:
        return _from_module(text, weights, weights_prefix)
    import torchvision

    if text in torchvision.models.list_models():
        return _from_torchvision(text, text, weights, weights_prefix)
    if path.suffix or "/" in text or "\\" in text:
        raise DataError(f"MODEL {text}: no such run folder")
    raise ConfigError(
        f"MODEL {text!r} is neither a run folder, a torchvision model name (e.g. resnet18, alexnet) "
        "nor module:attribute (e.g. mypackage.nets:build_model or nets.py:model)"
    )

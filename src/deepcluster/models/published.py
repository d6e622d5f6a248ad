"""Backbone weights from published self-supervised checkpoints, loaded strictly and safely.

:func:`load_backbone_state` reads a weights file, recognises the layout its publisher saved it in,
unwraps the wrappers, strips the backbone's key prefix, drops the heads (projection MLPs,
prototypes, predictors, momentum encoders, a classifier of another shape) and loads every tensor
of the model's backbone **strictly**: a tensor missing, of another shape or one the model lacks
is an error naming the first few, never a silently random layer. It returns a
:class:`LoadReport` saying what it did, and prints nothing.

Layouts, tried in this order (the one whose backbone prefix holds most of the model's tensor
names wins, ties going to the earlier); "→" descends into a dict:

* **DeepCluster v1** (facebookresearch/deepcluster, top level ``arch``, ``epoch``, ``state_dict``,
  ``optimizer``): ``state_dict`` with every ``.module`` removed from the keys (``features.module.N.*``
  reads ``features.N.*``, FAIR's own rule); drops ``top_layer`` (the k-way layer of its last
  clustering), and the RGB-to-grey ``sobel.0`` when the model reads grey images;
  :func:`fair_checkpoint` reads its ``arch`` and Sobel setting;
* **MoCo v1/v2**: ``state_dict`` → ``module.encoder_q.*``; drops the ``fc`` / ``fc.0``, ``fc.2``
  MLP head, ``module.encoder_k.*`` (the momentum encoder) and the queue;
* **MoCo v3**: ``state_dict`` → ``module.base_encoder.*``; drops ``module.momentum_encoder.*``,
  ``module.predictor.*`` and the head;
* **DINO**: ``teacher`` (else ``student``) → ``module.backbone.*`` or ``backbone.*``; drops
  ``head.*`` and the other network;
* **VISSL**: ``classy_state_dict`` → ``base_model`` → ``model`` → ``trunk`` → ``_feature_blocks.*``
  (also a bare ``model_state_dict`` or trunk); drops the sibling ``heads``;
* **BYOL**: ``online_network.encoder.*`` (pl_bolts-style exports, optionally in ``state_dict``) or
  ``online_encoder.net.*`` (byol-pytorch); drops ``target_network.*``, the projector, ``predictor.*``;
* **solo-learn**: ``state_dict`` → ``backbone.*`` beside ``projector.*``, ``classifier.*``,
  ``momentum_backbone.*``, ``predictor.*`` or ``prototypes.*``, which are dropped;
* **SwAV / DeepCluster-v2 / SeLa-v2**: ``module.*`` beside ``module.projection_head.*`` or
  ``module.prototypes*``, which are dropped;
* **Lightning** ``.ckpt`` (top level has ``pytorch-lightning_version``): ``state_dict`` →
  ``model.*``, ``backbone.*``, ``encoder.*``, ``net.*``, ``module.*`` or no prefix;
* **SimCLR-style**: ``encoder.*`` (optionally in ``state_dict``); drops ``projection*``/``projector.*``;
* **DataParallel**: ``module.*``;
* **torchvision state dict**: the keys themselves.

Wrappers ``state_dict``, ``model`` and ``model_state_dict`` are unwrapped for the last two as
well. ``prefix=`` names the backbone's prefix by hand (any nested dict of tensors is searched
for keys starting with it) for a layout not in the table.

What counts as the backbone: every entry of ``model.state_dict()``, except the model's own
classifier (its last module holding parameters when that is a ``Linear`` or a 1×1 ``Conv2d``:
``fc`` for a ResNet, see :func:`classifier_name`) when the file has none of that shape -- the classifier is then left as built and the report says so -- and except
``num_batches_tracked`` counters, which files written before PyTorch 0.4.1 lack. Keys under the
backbone's prefix the model does not have are dropped when they belong to a head (``fc``,
``head``, ``heads``, ``classifier``, ``projection_head``, ``projection``, ``projector``,
``prototypes``, ``predictor``, ``top_layer``), and are an error otherwise (a ResNet-34 file does
not load into a ResNet-18).

Reading never runs code from the file: ``.safetensors`` files are read with ``safetensors``;
anything else (``.pth``, ``.pth.tar``, ``.pt``, ``.ckpt``, ``.torch`` ...) with
``torch.load(weights_only=True)`` on the CPU, which refuses every object but tensors, numbers,
strings, lists and dicts -- and ``argparse.Namespace``, which DINO's checkpoints hold and which
only sets attributes.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepcluster.core.errors import ConfigError, DataError, first_line
from deepcluster.core.files import load_torch_file

__all__ = ["FAIR_LAYOUT", "HEAD_NAMES", "LAYOUTS", "FairCheckpoint", "IMAGENET_MEAN", "IMAGENET_STD", "Layout", "LoadReport", "classifier_name",
           "fair_checkpoint", "fair_normalisation",
           "load_backbone_state", "read_weights", "strip_module"]

#: First key components (after the backbone's prefix) of the heads that are dropped.
HEAD_NAMES = frozenset({"fc", "head", "heads", "classifier", "projection_head", "projection", "projector",
                        "prototypes", "predictor", "top_layer"})

#: Objects ``torch.load`` may rebuild besides tensors and containers: they only set attributes.
_SAFE_OBJECTS: tuple[type, ...] = (argparse.Namespace,)

_PLAIN_WRAPPERS: tuple[tuple[str, ...], ...] = ((), ("state_dict",), ("model",), ("model_state_dict",))
_VISSL_TRUNK = ("classy_state_dict", "base_model", "model", "trunk")

#: Wrapper paths in the order they are preferred for ``prefix=`` (other nested dicts come after).
_WRAPPER_PREFERENCE: tuple[tuple[str, ...], ...] = (
    (), ("state_dict",), ("teacher",), ("model",), ("model_state_dict",), _VISSL_TRUNK, ("student",))


@dataclass(frozen=True)
class Layout:
    """How one kind of published checkpoint stores its backbone.

    Attributes
    ----------
    name : str
        Shown in the report, e.g. ``"MoCo v1/v2"``.
    wrappers : tuple of tuple of str
        Key paths from the file's top level to the state dict, tried in order (``()``: the top
        level itself is the state dict).
    prefixes : tuple of str
        Key prefixes of the backbone inside that state dict, tried in order.
    marks : tuple of str
        When given, the state dict must hold a key starting with one of these.
    top_marks : tuple of str
        When given, the file's top level must hold one of these keys.
    """

    name: str
    wrappers: tuple[tuple[str, ...], ...]
    prefixes: tuple[str, ...]
    marks: tuple[str, ...] = ()
    top_marks: tuple[str, ...] = ()
    #: Remove ``.module`` from every key (FAIR's ``util.load_model``: only ``features`` was wrapped
    #: in DataParallel, so its keys read ``features.module.N.*``).
    strip_module: bool = False


#: The recognised layouts, most specific first (see the module docstring).
#: The name of FAIR's DeepCluster v1 layout in :data:`LAYOUTS` and load reports.
FAIR_LAYOUT = "DeepCluster v1 (FAIR)"

LAYOUTS: tuple[Layout, ...] = (
    Layout(FAIR_LAYOUT, (("state_dict",),), ("",), marks=("features.module.", "features.", "top_layer."),
           top_marks=("arch",), strip_module=True),
    Layout("MoCo v1/v2", (("state_dict",), ()), ("module.encoder_q.", "encoder_q.")),
    Layout("MoCo v3", (("state_dict",), ()), ("module.base_encoder.", "base_encoder.")),
    Layout("DINO", (("teacher",), ("student",)), ("module.backbone.", "backbone.")),
    Layout("VISSL", (_VISSL_TRUNK, ("model_state_dict",), ()), ("_feature_blocks.", "module._feature_blocks.")),
    Layout("BYOL", (("state_dict",), ()), ("online_network.encoder.", "module.online_network.encoder.",
                                           "online_encoder.net.", "module.online_encoder.net.")),
    Layout("solo-learn", (("state_dict",),), ("backbone.",),
           marks=("projector.", "momentum_backbone.", "classifier.", "predictor.", "prototypes.")),
    Layout("SwAV / DeepCluster-v2 / SeLa-v2", (("state_dict",), ()), ("module.",),
           marks=("module.projection_head.", "module.prototypes.")),
    Layout("Lightning", (("state_dict",),), ("model.", "backbone.", "encoder.", "net.", "module.", ""),
           top_marks=("pytorch-lightning_version",)),
    Layout("SimCLR-style", (("state_dict",), ()), ("encoder.", "module.encoder.")),
    Layout("DataParallel", _PLAIN_WRAPPERS, ("module.",)),
    Layout("torchvision state dict", _PLAIN_WRAPPERS, ("",)),
)


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_backbone_state` did; :meth:`summary` is the CLI's one line."""

    #: The weights file.
    path: Path
    #: The recognised layout (a name of :data:`LAYOUTS`, or ``"--weights-prefix"``).
    layout: str
    #: Key path from the file's top level to the state dict (``()``: the top level).
    wrapper: tuple[str, ...]
    #: The backbone's key prefix that was stripped.
    prefix: str
    #: Tensors copied into the model.
    loaded: int
    #: Head modules under the prefix that were dropped, e.g. ``("fc.0", "fc.2")``.
    heads: tuple[str, ...] = ()
    #: Other tensors of the state dict that were dropped, by group, and their numbers, e.g.
    #: ``(("module.encoder_k.*", 124), ("module.queue", 1))``.
    dropped: tuple[tuple[str, int], ...] = ()
    #: Dicts of tensors beside the state dict that were not loaded and their sizes, e.g. ``(("student", 122),)``.
    siblings: tuple[tuple[str, int], ...] = ()
    #: Modules of the model left as built because the file has none of their shape (its classifier).
    kept_as_built: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line, e.g. ``weights moco.pth: MoCo v1/v2 (state_dict → module.encoder_q.), 120 tensors
        loaded; dropped fc.0, fc.2 (head), module.encoder_k.* (124), module.queue, module.queue_ptr; fc left
        as built (none of its shape in the file)``."""
        where = " → ".join([*self.wrapper, *([self.prefix] if self.prefix else [])])
        text = f"weights {self.path.name}: {self.layout}" + (f" ({where})" if where else "")
        text += f", {self.loaded} tensors loaded"
        parts = [f"{', '.join(self.heads)} (head)"] if self.heads else []
        parts += [f"{name} ({n})" for name, n in self.siblings]
        parts += [name if n == 1 and not name.endswith("*") else f"{name} ({n})" for name, n in self.dropped]
        if parts:
            text += "; dropped " + ", ".join(parts)
        if self.kept_as_built:
            text += f"; {', '.join(self.kept_as_built)} left as built (none of its shape in the file)"
        return text


# --------------------------------------------------------------------------------------------
# Reading


def read_weights(path: str | Path) -> Any:
    """The content of a weights file, read without running code from it.

    ``.safetensors`` files give their dict of tensors; other files are read with
    ``torch.load(path, map_location="cpu", weights_only=True)`` (``argparse.Namespace`` allowed).

    Raises
    ------
    DataError
        The file is missing, unreadable, or holds other objects (a pickled class is never built).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file {path} does not exist: pass a local checkpoint (.pth, .pt, .ckpt, .safetensors)")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return load_torch_file(
        path, error=DataError, what="weights file ", allowed=_SAFE_OBJECTS, if_unreadable="download or copy it again",
        if_refused="; if you trust the file, save the state dict it holds as a plain dict of tensors "
                   "(torch.save(state_dict, NEW.pth)) and pass that",
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ConfigError(f"reading {path} needs the safetensors package: pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for bad headers
        raise DataError(f"weights file {path} is not a readable safetensors file ({first_line(e)}): "
                        "download or copy it again") from None


# --------------------------------------------------------------------------------------------
# Finding the backbone


def _tensors(obj: object) -> dict[str, torch.Tensor] | None:
    """The tensor entries of a dict with string keys (``None`` when it holds no tensor)."""
    if not isinstance(obj, Mapping):
        return None
    found = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return found or None


def _at(obj: object, path: tuple[str, ...]) -> object:
    for key in path:
        if not isinstance(obj, Mapping) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _nested_dicts(obj: object, path: tuple[str, ...] = (), depth: int = 5) -> Iterator[tuple[str, ...]]:
    """Key paths of every dict holding tensors, depth first (dicts only, ``depth`` levels)."""
    if not isinstance(obj, Mapping):
        return
    if _tensors(obj):
        yield path
    if depth:
        for key, value in obj.items():
            if isinstance(key, str):
                yield from _nested_dicts(value, (*path, key), depth - 1)


@dataclass(frozen=True)
class _Candidate:
    layout: str
    wrapper: tuple[str, ...]
    prefix: str
    state: dict[str, torch.Tensor]
    score: int


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _candidates(content: object, required: set[str]) -> Iterator[_Candidate]:
    for layout in LAYOUTS:
        if layout.top_marks and not (isinstance(content, Mapping) and any(m in content for m in layout.top_marks)):
            continue
        for wrapper in layout.wrappers:
            state = _tensors(_at(content, wrapper))
            if state is None or (layout.marks and not any(k.startswith(layout.marks) for k in state)):
                continue
            if layout.strip_module:
                state = {strip_module(k): v for k, v in state.items()}
            for prefix in layout.prefixes:
                score = len(required & _strip(state, prefix).keys())
                if score:
                    yield _Candidate(layout.name, wrapper, prefix, state, score)


def strip_module(key: str) -> str:
    """FAIR's key rule (``util.load_model`` of facebookresearch/deepcluster): every ``.module``
    removed, so ``features.module.0.weight`` reads ``features.0.weight``."""
    return "".join(key.split(".module")) if "module" in key else key


def _prefix_candidates(content: object, prefix: str, required: set[str]) -> Iterator[_Candidate]:
    paths = list(_nested_dicts(content))
    paths.sort(key=lambda p: _WRAPPER_PREFERENCE.index(p) if p in _WRAPPER_PREFERENCE else len(_WRAPPER_PREFERENCE))
    for wrapper in paths:
        state = _tensors(_at(content, wrapper)) or {}
        if any(k.startswith(prefix) for k in state):
            yield _Candidate("--weights-prefix", wrapper, prefix, state,
                             len(required & _strip(state, prefix).keys()))


def _best(candidates: Iterator[_Candidate]) -> _Candidate | None:
    best = None
    for c in candidates:  # earlier candidates win ties
        if best is None or c.score > best.score:
            best = c
    return best


def _describe_top(content: object) -> str:
    if not isinstance(content, Mapping):
        return f"it holds a {type(content).__name__}, not a dict"
    shown = []
    for key in list(content)[:8]:
        value = content[key]
        n = len(_tensors(value) or {})
        shown.append(f"{key} ({_n(n)})" if n else str(key))
    more = f" ({len(content)} in all)" if len(content) > len(shown) else ""
    return "top-level keys: " + (", ".join(shown) or "none") + more


# --------------------------------------------------------------------------------------------
# Matching the model


def classifier_name(model: nn.Module) -> str | None:
    """The model's classifier: its last module holding parameters of its own when that is a
    ``Linear`` or a 1×1 ``Conv2d`` (``fc`` for a ResNet, ``classifier.1`` for SqueezeNet); ``None``
    otherwise (a trunk whose ``fc`` is ``Identity`` ends with a BatchNorm, which must load)."""
    last: tuple[str, nn.Module] | None = None
    for n, module in model.named_modules():
        if n and any(True for _ in module.parameters(recurse=False)):
            last = (n, module)
    if last is None:
        return None
    name, module = last
    if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)):
        return name
    return None


def _module_of(key: str) -> str:
    return key.rpartition(".")[0] or key


def _group(key: str, prefix: str) -> str:
    """The group a key outside the prefix is reported in: one component deeper than it shares
    with the prefix (``module.encoder_k.*`` beside ``module.encoder_q.``, ``target_network.*``)."""
    parts, ahead = key.split("."), prefix.split(".")[:-1]
    shared = next((i for i, (a, b) in enumerate(zip(parts, ahead)) if a != b), min(len(parts), len(ahead)))
    depth = shared + 1
    return ".".join(parts[:depth]) + ".*" if len(parts) > depth else key


def _shape(t: torch.Tensor) -> str:
    return "×".join(map(str, t.shape)) or "scalar"


def _n(count: int) -> str:
    return f"{count} tensor" + ("" if count == 1 else "s")


def _listed(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def load_backbone_state(path: str | Path, model: nn.Module, *, prefix: str | None = None,
                        content: Any = None) -> LoadReport:
    """Load the backbone of a (published) checkpoint into ``model``, strictly.

    Parameters
    ----------
    path : str or Path
        A weights file: a state dict or a checkpoint of one of :data:`LAYOUTS`, saved with
        ``torch.save`` (any suffix) or as ``.safetensors``.
    model : nn.Module
        The network to fill; its ``state_dict()`` says which tensors the backbone has.
    prefix : str, optional
        The backbone's key prefix (``""`` for none), for a layout not recognised: the nested dict
        of tensors with most of the model's names under that prefix is used.
    content : object, optional
        The file's content when it was already read with :func:`read_weights` (not read again).

    Returns
    -------
    LoadReport
        The layout recognised, the tensors loaded, what was dropped (:meth:`LoadReport.summary`).

    Raises
    ------
    DataError
        The file is missing, unreadable, holds objects other than tensors and containers, or no tensors.
    ConfigError
        No layout holds the model's tensors (the message lists the top-level keys), or the
        backbone does not fit: tensors missing, of another shape, or unknown to the model.
    """
    path = Path(path)
    content = read_weights(path) if content is None else content
    if not any(True for _ in _nested_dicts(content)):
        raise DataError(f"weights file {path} holds no tensors ({_describe_top(content)}): pass a state dict "
                        "or a checkpoint holding one")
    target = model.state_dict()
    clf = classifier_name(model)
    clf_keys = {k for k in target if clf is not None and k.startswith(clf + ".")}
    optional = {k for k in target if k.endswith("num_batches_tracked")}
    required = set(target) - clf_keys - optional
    arch = type(model).__name__

    found = _best(_candidates(content, required) if prefix is None else _prefix_candidates(content, prefix, required))
    if prefix is not None and found is None:
        raise ConfigError(f"weights file {path}: no key starts with {prefix!r} ({_describe_top(content)}): "
                          "pass the prefix the backbone's keys start with")
    if found is None or (prefix is None and 2 * found.score < len(required)):
        raise ConfigError(
            f"weights file {path} does not fit {arch}: no known checkpoint layout holds its tensors "
            f"({_describe_top(content)}); pass --weights-prefix PREFIX (prefix= in Python), the prefix of the "
            "backbone's keys, e.g. module.encoder."
        )
    report = _load(path, model, found, target, clf, clf_keys, required)
    siblings = tuple(_siblings(content, found.wrapper))
    return dataclasses.replace(report, siblings=siblings) if siblings else report


def _load(path: Path, model: nn.Module, found: _Candidate, target: dict[str, torch.Tensor], clf: str | None,
          clf_keys: set[str], required: set[str]) -> LoadReport:
    sub = _strip(found.state, found.prefix)
    keep_clf = bool(clf_keys) and all(k in sub and sub[k].shape == target[k].shape for k in clf_keys)
    wanted = set(target) if keep_clf else set(target) - clf_keys
    heads, unexpected, grey = [], [], []
    # a Sobel front reading grey images has no RGB-to-grey conv (its child 0 is an identity): the
    # file's, fixed at 1/3 per channel, is not needed
    no_grey_conv = "sobel.1.weight" in target and not any(k.startswith("sobel.0.") for k in target)
    for key in sub:
        if key in wanted:
            continue
        if no_grey_conv and key.startswith("sobel.0."):
            grey.append(key)
            continue
        if key.split(".")[0] in HEAD_NAMES or (clf is not None and key.startswith(clf + ".")):
            heads.append(key)
        else:
            unexpected.append(key)
    missing = [k for k in target if k in required and k not in sub]
    shaped = [k for k in target if k in wanted and k in sub and sub[k].shape != target[k].shape]
    if missing or shaped or unexpected:
        problems = []
        if missing:
            problems.append(f"{_n(len(missing))} missing ({_listed(missing)})")
        if shaped:
            problems.append(f"{_n(len(shaped))} of another shape ("
                            + ", ".join(f"{k}: file {_shape(sub[k])}, model {_shape(target[k])}" for k in shaped[:3])
                            + (", ..." if len(shaped) > 3 else "") + ")")
        if unexpected:
            problems.append(f"{_n(len(unexpected))} unknown to the model ({_listed(unexpected)})")
        where = f"{found.layout}, prefix {found.prefix!r}" if found.prefix else found.layout
        raise ConfigError(f"weights file {path} ({where}) does not fit {type(model).__name__}: {'; '.join(problems)}: "
                          "load it into the architecture it was trained with, or pass --weights-prefix PREFIX "
                          "if the backbone lies under another prefix")
    state = {k: v for k, v in sub.items() if k in wanted}
    result = model.load_state_dict(state, strict=False)
    left = set(result.missing_keys) - (set(target) - wanted) - {k for k in target if k.endswith("num_batches_tracked")}
    if left or result.unexpected_keys:  # checked above: a model whose load_state_dict renames keys
        raise ConfigError(f"weights file {path} does not fit {type(model).__name__}: "
                          f"{_listed(sorted(left) or list(result.unexpected_keys))} not loaded")
    return LoadReport(
        path=path, layout=found.layout, wrapper=found.wrapper, prefix=found.prefix, loaded=len(state),
        heads=tuple(dict.fromkeys(_module_of(k) for k in heads)),
        dropped=tuple(_dropped(found)) + ((("sobel.0.* (RGB to grey: the images are grey)", len(grey)),) if grey else ()),
        kept_as_built=() if keep_clf or not clf_keys else (clf,),
    )


def _siblings(content: object, wrapper: tuple[str, ...]) -> list[tuple[str, int]]:
    """Dicts of tensors beside the one loaded (DINO's ``student``, VISSL's ``heads``) and their sizes."""
    parent = _at(content, wrapper[:-1]) if wrapper else None
    if not isinstance(parent, Mapping):
        return []
    sizes = ((key, len(_tensors(value) or {})) for key, value in parent.items() if key != wrapper[-1])
    return [(str(key), n) for key, n in sizes if n]


def _dropped(found: _Candidate) -> list[tuple[str, int]]:
    outside = Counter(_group(k, found.prefix) for k in found.state if not k.startswith(found.prefix))
    return list(outside.items())


# --------------------------------------------------------------------------------------------
# FAIR's DeepCluster v1 checkpoints


@dataclass(frozen=True)
class FairCheckpoint:
    """What a checkpoint of facebookresearch/deepcluster says about its network, read the way its
    ``util.load_model`` reads it."""

    #: ``arch`` of the file: ``"alexnet"`` or ``"vgg16"`` (the same names as ours).
    arch: str
    #: Whether the network has the Sobel front (``sobel.0.weight`` present).
    sobel: bool
    #: Clusters of the top layer (``top_layer.bias``), ``None`` when the file has none.
    k: int | None
    #: Training epochs done (``epoch``), when the file says.
    epoch: int | None

    def config_keys(self) -> str:
        """The config settings of a network this file loads into, e.g. ``model.arch=vgg16 model.sobel=true``."""
        return f"model.arch={self.arch} model.sobel={'true' if self.sobel else 'false'}"


def fair_checkpoint(content: Any) -> FairCheckpoint | None:
    """The network a FAIR DeepCluster v1 checkpoint holds, or ``None`` when ``content`` (read with
    :func:`read_weights`) is not one: a dict with ``arch`` and a ``state_dict`` whose keys include
    ``features.*`` (``features.module.*`` under DataParallel)."""
    if not isinstance(content, Mapping) or not isinstance(content.get("arch"), str):
        return None
    state = _tensors(content.get("state_dict"))
    if state is None or not any(strip_module(k).startswith("features.") for k in state):
        return None
    keys = {strip_module(k): v for k, v in state.items()}
    bias = keys.get("top_layer.bias")
    epoch = content.get("epoch")
    return FairCheckpoint(arch=content["arch"].lower(), sobel="sobel.0.weight" in keys or "sobel.1.weight" in keys,
                          k=None if bias is None else int(bias.shape[0]),
                          epoch=int(epoch) if isinstance(epoch, int) else None)


#: The normalisation FAIR's DeepCluster networks were trained with (ImageNet's).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def fair_normalisation(channels: int) -> tuple[list[float], list[float]]:
    """ImageNet's normalisation for ``channels`` channels. For grey images, the one mean and std
    that give what FAIR's network computes from the same image in RGB (r = g = b): its first step
    averages the normalised channels, (1/3)·Σ (x − m_c)/s_c = (x − m)/s."""
    if channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    inv = sum(1.0 / s for s in IMAGENET_STD) / 3
    shift = sum(m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)) / 3
    return [round(shift / inv, 6)], [round(1.0 / inv, 6)]

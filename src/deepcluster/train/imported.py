"""``init: FILE``: a run's network starts from a published checkpoint.

:func:`import_network` loads the backbone of a weights file into the run's freshly built network
-- FAIR's DeepCluster v1 checkpoints (AlexNet and VGG16, with BatchNorm, on the Sobel front) and
every layout ``--weights`` recognises (:mod:`deepcluster.models.published`) -- strictly, dropping
the file's top layer: the run clusters its own images and makes its own. Nothing is executed from
the file. A FAIR file whose architecture or Sobel setting differs from the config is refused with
the config keys to set; a FAIR network reads images as it was trained to, normalised with
ImageNet's mean and std, unless the config sets ``data.mean``/``data.std``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from deepcluster.core.config import TrainConfig, apply_overrides
from deepcluster.core.errors import ConfigError, DataError
from deepcluster.models.published import fair_checkpoint, fair_normalisation, load_backbone_state, read_weights

__all__ = ["import_network"]


def import_network(cfg: TrainConfig, model: nn.Module, channels: int) -> tuple[TrainConfig, dict[str, Any]]:
    """Load the backbone of ``cfg.init_file`` into ``model`` (strictly; the top layer is dropped).

    Parameters
    ----------
    cfg : TrainConfig
        The run's config, with ``init`` a weights file.
    model : nn.Module
        The run's network as built from ``cfg`` (no top layer).
    channels : int
        Channels of the run's images.

    Returns
    -------
    (TrainConfig, dict)
        The config -- with ``data.mean``/``data.std`` set to ImageNet's for a FAIR checkpoint when
        the config leaves them to the dataset -- and the record written to ``init_weights.json``:
        the file, the layout recognised, the tensors loaded, the one-line summary.

    Raises
    ------
    DataError
        The file is missing, truncated, or holds objects other than tensors and containers.
    ConfigError
        The file's network is not the config's (FAIR: the keys to set), or its tensors do not fit.
    """
    path = cfg.init_file
    if path is None:
        raise ValueError(f"init={cfg.init!r} is not a weights file")
    if not path.is_file():
        raise DataError(f"init={cfg.init}: no such file: pass a local checkpoint (.pth, .pth.tar, .pt, .ckpt, "
                        ".safetensors), or init=random")
    content = read_weights(path)
    fair = fair_checkpoint(content)
    if fair is not None and (fair.arch, fair.sobel) != (cfg.model.arch, cfg.model.sobel):
        front = "with the Sobel front" if fair.sobel else "on RGB (no Sobel front)"
        ours = f"model.arch={cfg.model.arch} model.sobel={'true' if cfg.model.sobel else 'false'}"
        raise ConfigError(f"init={path.name} is FAIR's DeepCluster {fair.arch} {front}, but the config builds {ours}: "
                          f"set {fair.config_keys()}")
    try:
        report = load_backbone_state(path, model, content=content)
    except ConfigError as e:
        if fair is not None and "classifier" in str(e) and "another shape" in str(e):
            raise ConfigError(f"init={path.name}: FAIR's {fair.arch} reads 224-px images (its classifier takes the conv "
                              f"maps of that size), the config's data.image_size={cfg.data.image_size}: set "
                              "data.image_size=224") from None
        text = str(e).replace(", or pass --weights-prefix PREFIX if the backbone lies under another prefix", "")
        raise ConfigError(f"init={path.name}: {text}") from None
    record: dict[str, Any] = {"file": str(path.resolve()), "layout": report.layout, "loaded": report.loaded,
                              "summary": report.summary()}
    if fair is not None:
        record["fair"] = {"arch": fair.arch, "sobel": fair.sobel, "k": fair.k, "epoch": fair.epoch}
        if cfg.data.mean is None:
            mean, std = fair_normalisation(channels)
            cfg = apply_overrides(TrainConfig, cfg, {"data.mean": mean, "data.std": std}, source="init")
            record["normalisation"] = ("data.mean/data.std set to ImageNet's, as FAIR's networks were trained"
                                       + (" (its grey equivalent)" if channels != 3 else ""))
    return cfg, record

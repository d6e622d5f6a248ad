"""The images a run works on: its training split, other splits, and their normalisation."""

from __future__ import annotations

from deepcluster.core.config import TrainConfig
from deepcluster.data.base import ImageDataset
from deepcluster.data.registry import available_datasets, canonical_name, dataset_stats, load_dataset

__all__ = ["load_split", "load_train_data", "normalization"]


def load_split(cfg: TrainConfig, split: str | None = None, limit: int | None = None) -> ImageDataset:
    """A split of the run's dataset (default: the training split with the run's ``data.limit``)."""
    if split is None:
        split, limit = cfg.data.split, cfg.data.limit
    return load_dataset(cfg.data.name, cfg.data.root, split=split, image_size=cfg.data.image_size,
                        limit=limit, seed=cfg.seed)


def load_train_data(cfg: TrainConfig) -> ImageDataset:
    """The images the run trains on."""
    return load_split(cfg)


def normalization(cfg: TrainConfig, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of the run's dataset (0.5/0.5 when the known stats do not fit); an
    ingested pool takes those of the dataset it was ingested from."""
    name = cfg.data.name
    if canonical_name(name) == "ingested" and cfg.data.root is not None:
        from deepcluster.data.pool_reader import read_manifest

        kind = read_manifest(cfg.data.root).get("source_kind")
        name = kind if kind in available_datasets() else name
    stats = dataset_stats(name)
    return stats if len(stats[0]) == channels else ((0.5,) * channels, (0.5,) * channels)

"""The images a run works on: its training split, other splits, and their normalisation."""

from __future__ import annotations

from deepcluster.core.config import TrainConfig
from deepcluster.core.errors import DataError
from deepcluster.data.base import ImageDataset
from deepcluster.data.registry import available_datasets, canonical_name, dataset_stats, load_dataset

__all__ = ["load_eval_splits", "load_split", "load_train_data", "normalization"]


def load_split(cfg: TrainConfig, split: str | None = None, limit: int | None = None) -> ImageDataset:
    """A split of the run's dataset (default: the training split with the run's ``data.limit``)."""
    if split is None:
        split, limit = cfg.data.split, cfg.data.limit
    return load_dataset(cfg.data.name, cfg.data.root, split=split, image_size=cfg.data.image_size,
                        limit=limit, seed=cfg.seed)


def load_train_data(cfg: TrainConfig) -> ImageDataset:
    """The images the run trains on."""
    return load_split(cfg)


def load_eval_splits(cfg: TrainConfig, train_limit: int | None = None,
                     test_limit: int | None = None) -> tuple[ImageDataset, ImageDataset]:
    """The labelled train and test splits an evaluation probes: ``data.split`` (at most
    ``train_limit`` images, default the run's ``data.limit``) and ``data.test_split``.

    Raises
    ------
    DataError
        If the run has no test split, or a split has no labels.
    """
    if cfg.data.test_split is None:
        raise DataError(f"dataset {cfg.data.name} has no test split configured: set data.test_split to evaluate")
    train = load_split(cfg, cfg.data.split, train_limit or cfg.data.limit)
    test = load_split(cfg, cfg.data.test_split, test_limit)
    if train.labels is None or test.labels is None:
        raise DataError(
            f"dataset {cfg.data.name} at {cfg.data.root or 'its default location'} has no labels: "
            "linear probes, kNN and low-shot need labels; use `deepcluster export` for label-free outputs"
        )
    return train, test


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

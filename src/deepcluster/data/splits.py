"""The images a run works on: its training split, other splits, and their normalisation.

Evaluation (:func:`eval_splits`) fits its probes on labelled images and scores them on others:
the dataset's test split when it has one, else a seeded held-out part of the training images
(``eval.holdout``), disjoint from the part the probes learn from. ``folder`` and ``ingested``
datasets have no test split (asking them for one returns the training images again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deepcluster.core.config import EvalConfig, TrainConfig
from deepcluster.core.errors import ConfigError, DataError
from deepcluster.data.base import ImageDataset, random_limit_indices
from deepcluster.data.registry import available_datasets, canonical_name, dataset_stats, load_dataset

__all__ = ["EvalSplits", "describe_test_split", "eval_splits", "has_test_split", "holdout_count", "holdout_identity",
           "holdout_indices", "load_eval_splits", "load_split", "load_train_data", "normalization"]

#: Datasets whose loader has no separate test split: ``split="test"`` returns the training images.
NO_TEST_SPLIT: tuple[str, ...] = ("folder", "ingested")

#: Mixed into the seed of the held-out draw, so that it is not the draw of ``data.limit``.
_HOLDOUT_SALT = 0x401D


def load_split(cfg: TrainConfig, split: str | None = None, limit: int | None = None) -> ImageDataset:
    """A split of the run's dataset (default: the training split with the run's ``data.limit``)."""
    if split is None:
        split, limit = cfg.data.split, cfg.data.limit
    return load_dataset(cfg.data.name, cfg.data.root, split=split, image_size=cfg.data.image_size,
                        limit=limit, seed=cfg.seed, resize=cfg.data.resize)


def load_train_data(cfg: TrainConfig) -> ImageDataset:
    """The images the run trains on."""
    return load_split(cfg)


def has_test_split(cfg: TrainConfig) -> bool:
    """Whether the run's dataset has test images apart from its training images.

    ``False`` when ``data.test_split`` is unset (or names the training split) and for ``folder``
    and ``ingested`` datasets, whose loaders return the training images for any split.
    """
    test = cfg.data.test_split
    return test is not None and test != cfg.data.split and canonical_name(cfg.data.name) not in NO_TEST_SPLIT


def holdout_count(n: int, holdout: float) -> int:
    """How many of ``n`` images ``eval.holdout`` holds out: a fraction in (0, 1) of them (at least 1),
    or a count.

    Raises
    ------
    DataError
        If that leaves no image to fit the probes on.
    """
    k = max(1, round(holdout * n)) if holdout < 1 else int(holdout)
    if k >= n:
        raise DataError(f"eval.holdout={holdout:g} holds out {k:,} of the run's {n:,} training images, leaving none "
                        "to fit the probes on: lower it (e.g. --set holdout=0.2)")
    return k


def holdout_indices(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions (fit, held out) of a seeded split of ``n`` training images; disjoint, covering all."""
    k = holdout_count(n, holdout)
    order = np.random.default_rng([seed, _HOLDOUT_SALT]).permutation(n)
    return np.sort(order[k:]).astype(np.int64), np.sort(order[:k]).astype(np.int64)


def holdout_identity(cfg: TrainConfig, ecfg: EvalConfig) -> dict[str, Any]:
    """What the scored images depend on besides the dataset (part of every cache key): ``{}`` with a
    test split, else the held-out size and its seed."""
    return {} if has_test_split(cfg) else {"scored": "holdout", "holdout": ecfg.holdout, "holdout_seed": cfg.seed}


def _count(n: int, what: str = "images") -> str:
    return f"{n:,} {what if n != 1 else what.rstrip('s')}"


@dataclass
class EvalSplits:
    """The labelled images an evaluation fits its probes on (``train``) and scores them on (``test``).

    Attributes
    ----------
    train, test : ImageDataset
        Fit and scored images; disjoint.
    held_out : bool
        ``True`` when the run has no test split and ``test`` is a held-out part of its training images.
    scored : str
        Which images the numbers are measured on, for tables and the report: ``"test split (10,000
        images)"`` or ``"held-out 20 % of the training images (300 of 1,500, seed 0)"``.
    fitted : str
        Which images the probes learn from: ``"train split (60,000 images)"`` or ``"the other 1,200
        training images"``.
    train_index, test_index : np.ndarray or None
        With ``held_out``: positions of ``train`` and ``test`` in the run's training images (the order
        of its assignments).
    """

    train: ImageDataset
    test: ImageDataset
    held_out: bool
    scored: str
    fitted: str
    train_index: np.ndarray | None = None
    test_index: np.ndarray | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready: ``scored``, ``fitted``, ``held_out``, ``n_train``, ``n_test``."""
        return {"scored": self.scored, "fitted": self.fitted, "held_out": self.held_out,
                "n_train": len(self.train), "n_test": len(self.test)}


def describe_test_split(cfg: TrainConfig, n_test: int, test_limit: int | None = None) -> str:
    """``"test split (297 images)"``: what a run with a test split is scored on."""
    limited = f", a seeded sample (eval.test_limit={test_limit:,})" if test_limit is not None else ""
    return f"{cfg.data.test_split} split ({_count(n_test)}{limited})"


def eval_splits(cfg: TrainConfig, ecfg: EvalConfig | None = None, *, train_limit: int | None = None,
                test_limit: int | None = None) -> EvalSplits:
    """The images an evaluation of the run fits its probes on and scores them on.

    With a test split (:func:`has_test_split`): ``data.split`` (at most ``train_limit`` images,
    default ``eval.train_limit``, else the run's ``data.limit``) and ``data.test_split`` (at most
    ``test_limit``). Without one: the run's training images (``data.limit`` applied) split by a
    seeded draw (the run's seed) into a held-out part of ``eval.holdout`` images, scored, and the
    rest, fitted; ``train_limit``/``test_limit`` then cap each part. Training images are never
    scored as test images.

    Raises
    ------
    DataError
        If a split has no labels, or the held-out part would leave nothing to fit on.
    """
    ecfg = ecfg or cfg.eval
    train_limit = train_limit if train_limit is not None else ecfg.train_limit
    test_limit = test_limit if test_limit is not None else ecfg.test_limit
    if has_test_split(cfg):
        train = load_split(cfg, cfg.data.split, train_limit or cfg.data.limit)
        test = load_split(cfg, cfg.data.test_split, test_limit)
        splits = EvalSplits(train, test, held_out=False, scored=describe_test_split(cfg, len(test), test_limit),
                            fitted=f"{cfg.data.split} split ({_count(len(train))})")
    else:
        pool = load_split(cfg)
        n = len(pool)
        fit, held = holdout_indices(n, ecfg.holdout, cfg.seed)
        share = f"{ecfg.holdout * 100:g} % of the training images" if ecfg.holdout < 1 else "training images"
        scored = f"held-out {share} ({len(held):,} of {n:,}, seed {cfg.seed})"
        if test_limit is not None and test_limit < len(held):
            held = held[random_limit_indices(len(held), test_limit, cfg.seed)]
            scored += f", {len(held):,} of them scored (eval.test_limit)"
        if train_limit is not None and train_limit < len(fit):
            fit = fit[random_limit_indices(len(fit), train_limit, cfg.seed)]
            fitted = f"{len(fit):,} of the other training images (eval.train_limit)"
        else:
            fitted = f"the other {_count(len(fit), 'training images')}"
        splits = EvalSplits(pool.subset(fit), pool.subset(held), held_out=True, scored=scored, fitted=fitted,
                            train_index=fit, test_index=held)
    if splits.train.labels is None or splits.test.labels is None:
        raise DataError(
            f"dataset {cfg.data.name} at {cfg.data.root or 'its default location'} has no labels: "
            "linear probes, kNN and low-shot need labels (on the fitted images and on the scored ones, a test split "
            "or a held-out part); use `deepcluster export` for label-free outputs"
        )
    return splits


def load_eval_splits(cfg: TrainConfig, train_limit: int | None = None,
                     test_limit: int | None = None) -> tuple[ImageDataset, ImageDataset]:
    """The labelled (fit, scored) images of :func:`eval_splits` with the run's ``eval`` settings:
    the train and test splits, or, without a test split, the rest of the training images and a
    seeded held-out part of them (``eval.holdout``).

    Raises
    ------
    DataError
        If a split has no labels.
    """
    splits = eval_splits(cfg, train_limit=train_limit, test_limit=test_limit)
    return splits.train, splits.test


def normalization(cfg: TrainConfig, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of the run's images: ``data.mean``/``data.std`` when set, else the
    dataset's (0.5/0.5 when the known stats do not fit); an ingested pool takes those of the
    dataset it was ingested from."""
    if cfg.data.mean is not None and cfg.data.std is not None:
        if len(cfg.data.mean) != channels:
            raise ConfigError(f"data.mean/data.std have {len(cfg.data.mean)} values but the images have {channels} "
                              f"channel{'s' if channels > 1 else ''}: give {channels} of each, or drop them")
        return tuple(cfg.data.mean), tuple(cfg.data.std)
    name = cfg.data.name
    if canonical_name(name) == "ingested" and cfg.data.root is not None:
        from deepcluster.data.pool_reader import read_manifest

        kind = read_manifest(cfg.data.root).get("source_kind")
        name = kind if kind in available_datasets() else name
    stats = dataset_stats(name)
    return stats if len(stats[0]) == channels else ((0.5,) * channels, (0.5,) * channels)

"""Assign new images to a run's learned clusters: :func:`assign_images` (``deepcluster assign``).

Cycle *t* of a run clusters the features of its images computed by the network *at the start*
of the cycle, then trains that network one epoch on the clusters. So the checkpoint of cycle *t*
holds two networks' worth of meaning: its ``model`` is the network *after* the epoch, whose
features were never clustered (their PCA and centroids would not fit them), and the clusters
belong to the network before it. To assign images exactly as the cycle assigned its own, every
checkpoint keeps under ``clusters`` (:func:`deepcluster.train.runner.clusters_record`):

* ``backbone``: a copy of the network's weights and buffers taken just before the epoch (no top
  layer) -- the network that computed the clustered features;
* how it read them: the layer, the normalisation, the batch size, the precision, the processes;
* the :class:`~deepcluster.cluster.ClusterAssigner`: PCA mean and whitened components (as the
  Preprocessor applies them), ReLU/L2, the fitted centroids, the empty-cluster re-split rules and
  the final centroids.

Why a copy of the weights rather than something smaller: the network of the start of cycle *t* is
the ``model`` of cycle *t - 1*, but that checkpoint is overwritten (``checkpoint.pt``) or not
kept (``checkpoint_every``); and no transformation of the *after* network's features reproduces
the clusters of the *before* network's. The copy costs one network's weights per checkpoint
(a kept cycle checkpoint about doubles; ``checkpoint.pt``, which also holds the optimiser's
momentum, grows by half) and makes every checkpoint self-contained.

Why nearest centroid *plus* rules: k-means assigns every image to its nearest fitted centroid,
then re-splits the clusters left empty by a median cut along a random direction. Those re-split
images are not nearest to their new centroid, so the nearest final centroid alone would not give
the cycle's assignments; replaying the recorded cuts after the nearest-centroid search does.

The guarantee: on the same images read the same way, in fp32 on the same kind of device, the
clusters of the run's own images are the cycle's saved assignments, bit for bit (the tests
check it). bf16 features depend on the kernels (hardware, batch composition): there the
assignments of images near a boundary can differ. PIC has no centroids: an image goes to the
nearest mean of each cluster's reduced features, an approximation that :attr:`AssignResult.exact`
and :attr:`AssignResult.notes` state.

When clustering was halted (kept pseudo-labels), a checkpoint keeps the clusters of the last
cycle that clustered (:attr:`AssignResult.cycle`); a supervised run never clustered and has
none. Loading never runs code from the folder (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepcluster import __version__
from deepcluster.cluster import ClusterAssigner
from deepcluster.core.config import TrainConfig
from deepcluster.core.errors import DataError, TrainingError, first_line
from deepcluster.core.files import write_csv
from deepcluster.data import ImageDataset, TensorImageDataset, load_dataset
from deepcluster.data.base import as_index_array, resize_images
from deepcluster.environment import RunEnv
from deepcluster.features import FeatureOptions, iter_features
from deepcluster.runs import RunFolder, build_network

__all__ = ["AssignResult", "assign_images", "load_images", "reshape_images"]

#: The ``clusters`` layout this version reads (``deepcluster.train.runner.CLUSTERS_FORMAT``).
_CLUSTERS_FORMAT = 1


@dataclass
class AssignResult:
    """The clusters of a set of images under one checkpoint of a run.

    Attributes
    ----------
    clusters : np.ndarray
        int64 (N,): the cluster of each image, in [0, k).
    distances : np.ndarray
        float64 (N,): L2 distance, in the clustering's space (after PCA-whitening and L2), from
        each image to its cluster's final centroid.
    train_sizes : np.ndarray
        int64 (k,): each cluster's size in the cycle that made it (its images, or Algorithm 2's sample).
    paths : list of str or None
        The file of each image (folders, ingested pools), else None.
    labels : np.ndarray or None
        int64 (N,) labels of the images when known.
    classes : list of str or None
        Names of the labels.
    method : str
        ``kmeans`` or ``pic``.
    cycle : int
        The cycle whose clusters these are (earlier than ``checkpoint_cycle`` once clustering halted).
    checkpoint_cycle : int
        The cycle of the checkpoint read.
    exact : bool
        Whether the images are guaranteed to be assigned exactly as the cycle assigned its own (see
        the module docstring): False for PIC, after a re-split of identical images, with bf16
        features, or when the precision or device differs from training's (``notes`` says which).
    notes : list of str
        Why ``exact`` is False, and what was done to the images (channels, size).
    """

    clusters: np.ndarray
    distances: np.ndarray
    train_sizes: np.ndarray
    paths: list[str] | None
    labels: np.ndarray | None
    classes: list[str] | None
    method: str
    cycle: int
    checkpoint_cycle: int
    exact: bool
    notes: list[str] = field(default_factory=list)

    @property
    def k(self) -> int:
        """Number of clusters."""
        return int(len(self.train_sizes))

    @property
    def n(self) -> int:
        """Number of images assigned."""
        return int(len(self.clusters))

    @property
    def counts(self) -> np.ndarray:
        """int64 (k,): images assigned to each cluster."""
        return np.bincount(self.clusters, minlength=self.k).astype(np.int64)

    def majority(self) -> np.ndarray | None:
        """int64 (k,): the most frequent label among each cluster's images (-1 for a cluster that got
        none; the smallest label on a tie); None without labels."""
        table = self._label_table()
        if table is None:
            return None
        return np.where(table.sum(1) > 0, table.argmax(1), -1).astype(np.int64)

    def purity(self) -> np.ndarray | None:
        """float64 (k,): the share of each cluster's images that carry its majority label (NaN for a
        cluster that got none); None without labels."""
        table = self._label_table()
        if table is None:
            return None
        total = table.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, table.max(1, initial=0) / np.maximum(total, 1), np.nan)

    def overall_purity(self) -> float | None:
        """The share of all images that carry their cluster's majority label; None without labels."""
        table = self._label_table()
        if table is None or self.n == 0:
            return None
        return float(table.max(1, initial=0).sum() / self.n)

    def _label_table(self) -> np.ndarray | None:
        if self.labels is None:
            return None
        labels = np.asarray(self.labels, dtype=np.int64)
        known = labels >= 0
        width = int(labels[known].max()) + 1 if known.any() else 1
        table = np.zeros((self.k, width), dtype=np.int64)
        np.add.at(table, (self.clusters[known], labels[known]), 1)
        return table

    def rows(self) -> list[tuple[Any, int, float]]:
        """``(path or index, cluster, distance)`` of each image, in order."""
        names = self.paths if self.paths is not None else range(self.n)
        return list(zip(names, self.clusters.tolist(), self.distances.tolist()))

    def write_csv(self, path: str | Path) -> Path:
        """Write ``path,cluster,distance`` (``index`` when the images have no paths), atomically."""
        key = "path" if self.paths is not None else "index"
        return write_csv(path, self.rows(), [key, "cluster", "distance"], float_format=".6f")


def assign_images(
    run_dir: str | Path,
    images: str | Path | ImageDataset | torch.Tensor | None = None,
    *,
    dataset: str | None = None,
    split: str = "train",
    checkpoint: str = "last",
    show_progress: bool = True,
) -> AssignResult:
    """Assign images to the clusters of a run's checkpoint, as its cycle assigned its own.

    The network that computed the cycle's clustered features is rebuilt from the run folder
    alone; the images are read as the run read its own (resized and given the run's channels
    where they differ), their features extracted as the cycle extracted them (normalisation,
    layer, batch size, precision), reduced by the cycle's PCA-whitening and L2, and each goes to
    its cluster (see the module docstring).

    Parameters
    ----------
    run_dir : path
        A run folder made by ``deepcluster train``.
    images : path, ImageDataset, uint8 tensor N×C×H×W, or None
        A folder of images (``folder`` loader: one subfolder per class gives labels), an ingested
        pool (a folder with ``dataset.json``), a dataset, or the images themselves. With
        ``dataset``: that dataset's root (None: its default location).
    dataset : str, optional
        A dataset name :func:`deepcluster.data.load_dataset` knows (``digits``, ``cifar10``...).
    split : str
        The split of ``dataset`` (``train`` or ``test``).
    checkpoint : str
        ``last`` or a cycle number with a kept checkpoint.
    show_progress : bool
        A progress bar over the feature pass.

    Returns
    -------
    AssignResult

    Raises
    ------
    TrainingError
        Not a run folder, an unknown checkpoint, a run whose checkpoints keep no clusters (older
        deepcluster, supervised), clusters that do not fit the run's network.
    DataError
        Images that cannot be read or made to match the run's (channels, size), or none at all.
    """
    run = RunFolder(Path(run_dir)).require()
    cfg = run.load_config()
    ckpt, clusters, assigner = _load_clusters(run, cfg, checkpoint)  # a run without clusters fails before any work
    channels, size = int(ckpt["in_channels"]), int(ckpt["input_size"])
    data, notes = load_images(images, dataset=dataset, split=split, channels=channels, size=size)
    model = build_network(cfg, channels, size)
    try:
        model.load_state_dict(clusters["backbone"], strict=True)
    except RuntimeError as e:
        raise TrainingError(f"the clusters of {run.checkpoint_file(checkpoint)} do not fit the run's {cfg.model.arch} "
                            f"({first_line(e)}): it was written by another configuration") from None
    env = RunEnv.from_config(cfg, show_progress=show_progress)
    model.to(env.device).eval()
    options = FeatureOptions(mean=tuple(clusters["mean"]), std=tuple(clusters["std"]), device=env.device,
                             precision=env.precision, batch_size=int(clusters["batch_size"]),
                             show_progress=show_progress)
    differs = _feature_notes(clusters, env)
    notes += differs
    reduced = _reduced_features(model, env.source(data), options, assigner, clusters)
    ids, distances = assigner.assign_reduced(reduced, device=env.device, deterministic=cfg.deterministic)
    if assigner.method == "pic":
        notes.insert(0, "PIC keeps no centroids: each image went to the nearest mean of a cluster's reduced features "
                        "(approximate: PIC itself clusters by a nearest-neighbour graph)")
    elif not assigner.exact:
        tied = sum(int(s["tied"]) for s in assigner.splits)
        notes.insert(0, f"an empty-cluster re-split cut {tied} identical images in two: such images go to the donor")
    return AssignResult(clusters=ids, distances=distances, train_sizes=assigner.sizes.copy(), paths=data.paths,
                        labels=None if data.labels is None else np.asarray(data.labels, dtype=np.int64),
                        classes=data.classes, method=assigner.method, cycle=int(clusters["cycle"]),
                        checkpoint_cycle=int(ckpt["cycle"]),
                        exact=assigner.exact and not differs, notes=notes)


def _load_clusters(run: RunFolder, cfg: TrainConfig, checkpoint: str) -> tuple[dict, dict, ClusterAssigner]:
    """The checkpoint, its ``clusters`` entry and their assigner; one line when there are none."""
    which = str(checkpoint).strip()
    if which == "init":
        raise TrainingError("checkpoint init is the network before its first cycle: it has no clusters; use last or "
                            "a cycle number with a kept checkpoint")
    path = run.checkpoint_file(which)
    ckpt = run.load_checkpoint(which)
    if "clusters" not in ckpt:
        raise TrainingError(f"this run was trained by an older deepcluster; its checkpoints keep no clusters: {path} "
                            "has none. Resume it for one more clustering cycle (deepcluster train --resume "
                            f"{run.path} --set cycles=N) or train it again with this deepcluster to assign images")
    clusters = ckpt["clusters"]
    if clusters is None:
        why = ("supervised=true trained it on the labels" if cfg.supervised
               else "its clustering was halted before this deepcluster resumed it")
        raise TrainingError(f"{path} keeps no clusters: the run never clustered its images ({why}), so there are no "
                            "clusters to assign images to")
    if not isinstance(clusters, dict) or clusters.get("format") != _CLUSTERS_FORMAT:
        found = clusters.get("format") if isinstance(clusters, dict) else type(clusters).__name__
        raise TrainingError(f"{path} keeps clusters of format {found!r}; this deepcluster ({__version__}) reads format "
                            f"{_CLUSTERS_FORMAT}: assign with the deepcluster that trained the run")
    missing = [key for key in ("cycle", "backbone", "layer", "mean", "std", "batch_size", "precision", "assigner")
               if key not in clusters]
    if missing:
        raise TrainingError(f"the clusters of {path} lack {', '.join(missing)}: the file is damaged; copy the run again")
    try:
        assigner = ClusterAssigner.from_state(clusters["assigner"])
    except ValueError as e:
        raise TrainingError(f"{path}: {first_line(e)}; the file is damaged or was written by another version") from None
    if len(clusters["mean"]) != int(ckpt["in_channels"]):
        raise TrainingError(f"the clusters of {path} normalise {len(clusters['mean'])} channels but the network reads "
                            f"{ckpt['in_channels']}: the file is damaged; copy the run again")
    return ckpt, clusters, assigner


def _feature_notes(clusters: dict, env: RunEnv) -> list[str]:
    """How the features are computed differently from the cycle's (what makes assignments inexact)."""
    notes = []
    if env.precision.label != clusters["precision"]:
        notes.append(f"features in {env.precision.label} here but {clusters['precision']} in training: images near a "
                     "cluster boundary may be assigned differently")
    elif env.precision.bf16:
        notes.append("bf16 features: exact only on the hardware and with the batches of training")
    trained_on = clusters.get("device")
    if trained_on is not None and trained_on != env.device.type:
        notes.append(f"features computed on {env.device.type} here but {trained_on} in training: last-bit differences "
                     "may move images near a cluster boundary")
    return notes


def _reduced_features(model: torch.nn.Module, source: Any, options: FeatureOptions, assigner: ClusterAssigner,
                      clusters: dict) -> np.ndarray:
    """The images' features reduced to the clustering's space, a batch at a time. The images are
    read in the training's shares (``processes``): each from its first image, in batches."""
    layer = clusters["layer"]
    n = len(source)
    processes = max(1, int(clusters.get("processes", 1)))
    out = np.empty((n, assigner.preprocessor.effective_dim or 1), dtype=np.float32)
    row = 0
    from deepcluster.core.progress import progress_bar

    with progress_bar("assign: features", total=n, enabled=options.show_progress, unit="images") as advance:
        for rank in range(processes):
            start, stop = rank * n // processes, (rank + 1) * n // processes
            if stop <= start:
                continue
            for part in iter_features(model, source.view(start, stop), options.replace(show_progress=False),
                                      layers=None if layer is None else [layer]):
                chunk = assigner.reduce(next(iter(part.values())))
                out[row : row + len(chunk)] = chunk
                row += len(chunk)
                advance(len(chunk))
    return out


def load_images(
    images: str | Path | ImageDataset | torch.Tensor | None,
    *,
    dataset: str | None = None,
    split: str = "train",
    channels: int,
    size: int,
) -> tuple[ImageDataset, list[str]]:
    """The images to assign, as ``channels``×``size``×``size`` uint8 images, and notes on what was
    done to them (see :func:`assign_images` for ``images``, ``dataset`` and ``split``).

    Raises
    ------
    DataError
        Missing folder, unknown dataset, no images, or images that cannot be made to match.
    """
    if dataset is not None:
        if isinstance(images, (ImageDataset, torch.Tensor)):
            raise DataError("dataset= names a dataset to load: pass its root folder as images (or None), not images")
        name = str(dataset).strip().lower()
        native = name in ("ingested",)  # stored at one size: resized below
        data = load_dataset(dataset, images, split=split, image_size=None if native else size)
    elif images is None:
        raise DataError("no images to assign: pass a folder of images, an ingested pool, or a dataset name")
    elif isinstance(images, ImageDataset):
        data = images
    elif isinstance(images, torch.Tensor):
        data = TensorImageDataset("images", _checked_tensor(images))
    else:
        path = Path(images).expanduser()
        if not path.exists():
            raise DataError(f"image folder {path} does not exist: pass a folder of images (or an ingested pool)")
        if not path.is_dir():
            raise DataError(f"{path} is a file, not a folder: put the images in a folder and pass the folder")
        from deepcluster.data.pool_reader import MANIFEST

        if (path / MANIFEST).is_file():
            data = load_dataset("ingested", path)
        else:
            data = load_dataset("folder", path, image_size=size)
    if len(data) == 0:
        raise DataError("there are no images to assign: the folder or dataset is empty")
    return _matched(data, channels, size)


def _checked_tensor(images: torch.Tensor) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3) or 0 in images.shape[2:]:
        raise DataError(f"images must be uint8 N×C×H×W with C 1 or 3, got {images.dtype} {tuple(images.shape)}: "
                        "convert them (e.g. (x * 255).round().to(torch.uint8)) first")
    return images


def _matched(data: ImageDataset, channels: int, size: int) -> tuple[ImageDataset, list[str]]:
    """``data`` with the run's channels and size, and what was changed."""
    if data.channels not in (1, 3):
        raise DataError(f"the images have {data.channels} channels; the run reads {channels}: only 1 (gray) and 3 (RGB) "
                        "can be converted")
    h, w = data.image_size
    notes = []
    if data.channels != channels:
        notes.append("RGB images made gray (luma, as PIL's convert('L'))" if channels == 1
                     else "gray images made RGB (the gray channel repeated)")
    if (h, w) != (size, size):
        notes.append(f"{h}×{w} images resized to {size}×{size} (bilinear, antialiased)")
    if not notes:
        return data, notes
    if isinstance(data, TensorImageDataset):
        return TensorImageDataset(data.name, reshape_images(data.images, channels, size), data.labels,
                                  data.classes), notes
    return _Reshaped(data, channels, size), notes


def reshape_images(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """uint8 N×C×H×W → N×``channels``×``size``×``size``: RGB to gray by PIL's luma (``convert('L')``:
    gray images stay exactly as they were), gray to RGB by repetition, then resized as the datasets
    resize (bilinear, antialiased)."""
    images = _checked_tensor(images) if images.ndim != 4 or images.dtype != torch.uint8 else images
    if images.shape[1] == 3 and channels == 1:
        rgb = images.to(torch.int32)
        luma = rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000
        images = (luma >> 16).clamp(0, 255).to(torch.uint8).unsqueeze(1)
    elif images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    elif images.shape[1] != channels:
        raise DataError(f"images with {images.shape[1]} channels cannot be given {channels}")
    return resize_images(images, size)


class _Reshaped(ImageDataset):
    """An image dataset read with other channels and size (:func:`reshape_images`), lazily."""

    def __init__(self, base: ImageDataset, channels: int, size: int) -> None:
        self.base, self.channels, self.size = base, int(channels), int(size)
        self.name, self.labels, self.paths, self.classes = base.name, base.labels, base.paths, base.classes

    def __len__(self) -> int:
        return len(self.base)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.size, self.size

    def read(self, indices) -> torch.Tensor:
        """The images at ``indices``, reshaped, as one uint8 tensor."""
        idx = as_index_array(indices, len(self))
        if not len(idx):
            return torch.empty((0, self.channels, self.size, self.size), dtype=torch.uint8)
        read = getattr(self.base, "read", None)
        raw = read(idx) if read is not None else torch.stack([self.base[int(i)] for i in idx])
        return reshape_images(raw, self.channels, self.size)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.read([int(i)])[0]

    def images_tensor(self) -> torch.Tensor:
        raw = self.base.images_tensor()
        step = 4096
        parts = [reshape_images(raw[k : k + step], self.channels, self.size) for k in range(0, len(raw), step)]
        return torch.cat(parts) if parts else self.read([])

    def subset(self, indices) -> _Reshaped:
        return _Reshaped(self.base.subset(indices), self.channels, self.size)

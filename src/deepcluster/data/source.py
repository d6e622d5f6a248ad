"""Where a run reads its images from: in memory, or streamed through DataLoader workers.

A dataset whose pixels fit the memory budget (``data.memory_budget_mb``, default a quarter of
the machine's RAM) is read once into one uint8 tensor, the fast path. A larger one -- an image
folder, an ingested pool -- is streamed: worker processes decode or read each batch of images
(at the stored size; the batched augmentation crops them on the device), prefetched in order,
from pinned memory when a GPU computes. No step then needs every image in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from deepcluster.core.config import TrainConfig
from deepcluster.data.base import ImageDataset, TensorImageDataset

__all__ = ["ImageSource", "as_source", "choose_source", "default_memory_budget", "memory_budget", "source_for"]


def default_memory_budget() -> int:
    """A quarter of this machine's RAM, in bytes."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError):  # pragma: no cover - not POSIX
        return 4 << 30


def memory_budget(memory_budget_mb: float | None) -> int:
    """``data.memory_budget_mb`` in bytes; None: :func:`default_memory_budget`."""
    return int(memory_budget_mb * 2**20) if memory_budget_mb is not None else default_memory_budget()


def _nbytes(dataset: ImageDataset) -> int:
    h, w = dataset.image_size
    return len(dataset) * dataset.channels * h * w


class _Batches(Dataset):
    """Batch ``b`` of a list of index arrays, read from the dataset (in a worker)."""

    def __init__(self, dataset: ImageDataset, batches: Sequence[np.ndarray]) -> None:
        self.dataset, self.batches = dataset, list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> torch.Tensor:
        idx = self.batches[b]
        read = getattr(self.dataset, "read", None)
        if read is not None:
            return read(idx)
        return torch.stack([self.dataset[int(i)] for i in idx]) if len(idx) else torch.empty(0)


class ImageSource:
    """The images of a dataset, read by index: ``take`` some, ``batches`` in order, or ``chunks``.

    Parameters
    ----------
    dataset : ImageDataset
        What to read.
    streamed : bool
        Read through DataLoader workers instead of from one tensor in memory.
    workers : int
        Worker processes of the streamed path.
    pin : bool
        Pinned-memory batches (for a GPU).
    """

    def __init__(self, dataset: ImageDataset, *, streamed: bool = False, workers: int = 2, pin: bool = False) -> None:
        self._set(dataset, None if streamed else dataset.images_tensor(), workers=workers, pin=pin)

    def _set(self, dataset: ImageDataset, images: torch.Tensor | None, *, workers: int, pin: bool) -> None:
        """The one constructor behind ``__init__``, :meth:`view` and :meth:`subset`."""
        self.dataset, self.images = dataset, images
        self.streamed = images is None
        self.workers, self.pin = int(workers), bool(pin)
        self.height, self.width = (int(s) for s in dataset.image_size)
        self.channels = int(dataset.channels)
        self.nbytes = _nbytes(dataset)

    @property
    def size(self) -> int:
        """The image height (the side of square images), as models are built with."""
        return self.height

    def _derived(self, dataset: ImageDataset | None = None, images: torch.Tensor | None = None) -> ImageSource:
        """A source over ``images`` (in memory) or ``dataset`` (streamed), read like this one."""
        sub = ImageSource.__new__(ImageSource)
        if images is not None:
            dataset = TensorImageDataset(self.dataset.name, images)
        sub._set(dataset, images, workers=self.workers, pin=self.pin)
        return sub

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def label(self) -> str:
        """How the run reads its images, as recorded in its metrics."""
        mb = self.nbytes / 2**20
        return f"streamed ({self.workers} workers, {mb:,.0f} MB)" if self.streamed else f"in memory ({mb:,.0f} MB)"

    def take(self, indices) -> torch.Tensor:
        """The images at ``indices`` as one uint8 tensor N×C×H×W."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if self.images is not None:
            return self.images[idx]
        return _Batches(self.dataset, [idx.numpy()])[0]

    def batches(self, index_batches: Sequence) -> Iterator[torch.Tensor]:
        """The images of each index batch, in order (prefetched by workers when streamed)."""
        if self.images is not None:
            for idx in index_batches:
                yield self.images[torch.as_tensor(idx)]
            return
        arrays = [np.asarray(idx, dtype=np.int64) for idx in index_batches]
        if self.workers == 0:
            reader = _Batches(self.dataset, arrays)
            for b in range(len(reader)):
                yield reader[b]
            return
        loader = DataLoader(_Batches(self.dataset, arrays), batch_size=None, num_workers=self.workers,
                            pin_memory=self.pin, prefetch_factor=4)
        yield from loader

    def chunks(self, start: int, stop: int, batch_size: int) -> Iterator[torch.Tensor]:
        """Images ``start..stop`` in batches of ``batch_size``, in order."""
        if self.images is not None:
            for lo in range(start, stop, batch_size):
                yield self.images[lo : min(lo + batch_size, stop)]
            return
        yield from self.batches([np.arange(lo, min(lo + batch_size, stop)) for lo in range(start, stop, batch_size)])

    def view(self, start: int, stop: int) -> ImageSource:
        """Images ``start..stop``: a view of the tensor in memory, a subset when streamed."""
        if self.images is None:
            return self.subset(np.arange(start, stop))
        return self._derived(images=self.images[start:stop])

    def subset(self, indices) -> ImageSource:
        """The images at ``indices`` (a cycle's sample of the pool), read the same way."""
        if self.images is None:
            return self._derived(dataset=self.dataset.subset(indices))
        return self._derived(images=self.images[torch.as_tensor(np.asarray(indices, np.int64))])


def choose_source(dataset: ImageDataset, *, memory_budget_mb: int | None = None, workers: int = 2,
                  pin: bool = False) -> ImageSource:
    """In memory when the dataset is in memory already or its pixels fit the budget, else streamed."""
    streamed = not isinstance(dataset, TensorImageDataset) and _nbytes(dataset) > memory_budget(memory_budget_mb)
    return ImageSource(dataset, streamed=streamed, workers=workers, pin=pin)


def source_for(cfg: TrainConfig, dataset: ImageDataset, *, pin: bool = False) -> ImageSource:
    """The source a run reads ``dataset`` from: :func:`choose_source` with the run's
    ``data.memory_budget_mb`` and ``data.workers`` (``pin`` for a GPU)."""
    return choose_source(dataset, memory_budget_mb=cfg.data.memory_budget_mb, workers=cfg.data.workers, pin=pin)


def as_source(images: torch.Tensor | ImageSource) -> ImageSource:
    """``images`` as an :class:`ImageSource` (a uint8 tensor N×C×H×W is read in memory)."""
    return images if isinstance(images, ImageSource) else ImageSource(TensorImageDataset("images", images))

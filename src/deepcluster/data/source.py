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

from deepcluster.data.base import ImageDataset, TensorImageDataset

__all__ = ["ImageSource", "as_source", "choose_source", "default_memory_budget"]


def default_memory_budget() -> int:
    """A quarter of this machine's RAM, in bytes."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError):  # pragma: no cover - not POSIX
        return 4 << 30


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
        self.dataset = dataset
        self.streamed = streamed
        self.workers, self.pin = int(workers), bool(pin)
        self.images = None if streamed else dataset.images_tensor()
        h, w = dataset.image_size
        self.channels, self.size = int(dataset.channels), int(h)
        self.nbytes = _nbytes(dataset)

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
        sub = ImageSource.__new__(ImageSource)
        sub.__dict__.update(self.__dict__)
        sub.images = self.images[start:stop]
        sub.dataset = TensorImageDataset(self.dataset.name, sub.images)
        sub.nbytes = (stop - start) * self.channels * self.size * self.size
        return sub

    def subset(self, indices) -> ImageSource:
        """The images at ``indices`` (a cycle's sample of the pool), read the same way."""
        sub = ImageSource.__new__(ImageSource)
        sub.dataset = self.dataset if self.images is not None else self.dataset.subset(indices)
        sub.streamed, sub.workers, sub.pin = self.streamed, self.workers, self.pin
        sub.images = None if self.images is None else self.images[torch.as_tensor(np.asarray(indices, np.int64))]
        sub.channels, sub.size = self.channels, self.size
        sub.nbytes = len(indices) * self.channels * self.size * self.size
        if sub.images is not None:
            sub.dataset = TensorImageDataset(self.dataset.name, sub.images)
        return sub


def choose_source(dataset: ImageDataset, *, memory_budget_mb: int | None = None, workers: int = 2,
                  pin: bool = False) -> ImageSource:
    """In memory when the dataset is in memory already or its pixels fit the budget, else streamed."""
    budget = memory_budget_mb * 2**20 if memory_budget_mb is not None else default_memory_budget()
    streamed = not isinstance(dataset, TensorImageDataset) and _nbytes(dataset) > budget
    return ImageSource(dataset, streamed=streamed, workers=workers, pin=pin)


def as_source(images: torch.Tensor | ImageSource) -> ImageSource:
    """``images`` as an :class:`ImageSource` (a uint8 tensor N×C×H×W is read in memory)."""
    return images if isinstance(images, ImageSource) else ImageSource(TensorImageDataset("images", images))

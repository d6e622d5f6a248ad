"""Where a run reads its images from: in memory, or streamed through DataLoader workers.

A dataset that fits the memory budget (``data.memory_budget_mb``, default a quarter of the
machine's RAM) is read once into one uint8 tensor, the fast path. A larger one -- an image
folder, an ingested pool -- is streamed: worker processes decode or read each batch of images
(at the stored size; the batched augmentation crops them on the device), prefetched in order,
from pinned memory when a GPU computes. No step then needs every image in memory.

In memory, the pixels are held once: the tensor is read in place (no second copy while reading),
and a subset or view of the source (a cycle's sample of the pool, a rank's share) reads from
that same tensor through its positions, gathering one batch at a time. What decides the path is
what it holds (:func:`in_memory_nbytes`): the pixels, the dataset's per-image arrays (labels,
rows, paths) and, for a run, the arrays of a cycle that grow with the pool (:func:`cycle_nbytes`).
"""

from __future__ import annotations

import copy
import os
import queue
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from deepcluster.core.config import TrainConfig
from deepcluster.data.base import FolderImageDataset, ImageDataset, TensorImageDataset, as_index_array, decode_jpegs

__all__ = ["ImageSource", "as_source", "choose_source", "cycle_nbytes", "default_memory_budget", "default_workers",
           "in_memory_nbytes", "memory_budget", "source_for"]


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
    """The dataset's pixels, in bytes (uint8)."""
    h, w = dataset.image_size
    return len(dataset) * dataset.channels * h * w


def in_memory_nbytes(dataset: ImageDataset, extra: int = 0) -> int:
    """What reading ``dataset`` into memory holds: its pixels once, its own per-image arrays
    (labels, rows, paths: :meth:`~deepcluster.data.base.ImageDataset.index_nbytes`), and ``extra``
    bytes (a run's: :func:`cycle_nbytes`)."""
    return _nbytes(dataset) + dataset.index_nbytes() + int(extra)


def cycle_nbytes(cfg: TrainConfig, n: int) -> int:
    """The bytes a training cycle holds that grow with a pool of ``n`` images, besides the pixels:
    the pseudo-label of every image, this cycle's and the previous one's (int64), and for the
    images it clusters (``pool_subset`` of them, else all) the features reduced to ``pca_dim`` and
    their k-means assignment: (pca_dim + 1) float32 each (without PCA the width is the network's,
    not known here: only the assignment is counted)."""
    clustered = n if cfg.pool_subset is None else min(n, cfg.pool_subset)
    return 2 * 8 * n + clustered * ((cfg.pca_dim or 0) + 1) * 4


class _Batches(Dataset):
    """Batch ``b`` of a list of index arrays, read from the dataset (in a worker): decoded images,
    or with ``encoded`` the files' bytes, for the main process to decode on its device."""

    def __init__(self, dataset: ImageDataset, batches: Sequence[np.ndarray], encoded: bool = False) -> None:
        self.dataset, self.batches, self.encoded = dataset, list(batches), encoded

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> torch.Tensor:
        idx = self.batches[b]
        if self.encoded:
            return self.dataset.read_encoded(idx)
        if not len(idx):  # a rank's empty share of a batch: no rows, but the shape of images
            h, w = self.dataset.image_size
            return torch.empty((0, self.dataset.channels, h, w), dtype=torch.uint8)
        read = getattr(self.dataset, "read", None)
        if read is not None:
            return read(idx)
        return torch.stack([self.dataset[int(i)] for i in idx])


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
    decode_on : torch.device, optional
        Streamed JPEG folders: the workers read the files' bytes and the main process decodes
        each batch there with ``torchvision.io.decode_jpeg`` (nvJPEG on a GPU), so batches arrive
        on that device. None: the workers decode with PIL.
    """

    def __init__(self, dataset: ImageDataset, *, streamed: bool = False, workers: int = 2, pin: bool = False,
                 decode_on: torch.device | str | None = None) -> None:
        self._set(dataset, None if streamed else dataset.images_tensor(), workers=workers, pin=pin,
                  decode_on=decode_on)

    def _set(self, dataset: ImageDataset, images: torch.Tensor | None, *, workers: int, pin: bool,
             decode_on: torch.device | str | None = None, index: np.ndarray | None = None) -> None:
        """The one constructor behind ``__init__``, :meth:`view` and :meth:`subset`.

        In memory, ``index`` (positions in ``images``) makes this source the images at those
        positions, read from the shared tensor without a copy of them; None: all of ``images``.
        """
        self.dataset, self.images = dataset, images
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        self.streamed = images is None
        self.workers, self.pin = int(workers), bool(pin)
        can_decode = self.streamed and isinstance(dataset, FolderImageDataset) and dataset.all_jpeg
        self.decode_on = torch.device(decode_on) if decode_on is not None and can_decode else None
        self.height, self.width = (int(s) for s in dataset.image_size)
        self.channels = int(dataset.channels)
        self.nbytes = len(self) * self.channels * self.height * self.width  # the pixels it reads
        self.hflip = False  # see flipped()

    @property
    def held_nbytes(self) -> int:
        """The pixel bytes this source keeps in memory: the whole tensor it reads from (shared with
        the sources it was derived from or derives), 0 when streamed."""
        return 0 if self.images is None else int(self.images.untyped_storage().nbytes())

    @property
    def size(self) -> int:
        """The image height (the side of square images), as models are built with."""
        return self.height

    def _derived(self, dataset: ImageDataset | None = None, images: torch.Tensor | None = None,
                 index: np.ndarray | None = None) -> ImageSource:
        """A source over ``images`` (in memory; at positions ``index``) or ``dataset`` (streamed),
        read like this one."""
        sub = ImageSource.__new__(ImageSource)
        if images is not None:
            dataset = TensorImageDataset(self.dataset.name, images)
        sub._set(dataset, images, workers=self.workers, pin=self.pin, decode_on=self.decode_on, index=index)
        sub.hflip = self.hflip
        return sub

    def flipped(self) -> ImageSource:
        """The same images mirrored left to right (each batch is flipped as it is read; nothing is
        copied ahead): the test-free half of ``RandomHorizontalFlip``, for a probe's augmentation."""
        sub = copy.copy(self)
        sub.hflip = not self.hflip
        return sub

    def _out(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.flip(-1) if self.hflip else batch

    def __len__(self) -> int:
        if self.index is not None:
            return len(self.index)
        return len(self.dataset)

    def _positions(self, indices) -> torch.Tensor:
        """In memory: the rows of the tensor that hold the images at ``indices`` of this source."""
        if self.index is None:
            return torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return torch.from_numpy(self.index[np.asarray(indices, dtype=np.int64)])

    @property
    def label(self) -> str:
        """How the run reads its images, as recorded in its metrics."""
        mb = self.nbytes / 2**20
        if not self.streamed:
            return f"in memory ({mb:,.0f} MB)"
        decoding = f", JPEG decoded on {self.decode_on}" if self.decode_on is not None else ""
        return f"streamed ({self.workers} workers{decoding}, {mb:,.0f} MB)"

    def take(self, indices) -> torch.Tensor:
        """The images at ``indices`` as one uint8 tensor N×C×H×W."""
        if self.images is not None:
            return self._out(self.images[self._positions(indices)])
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return self._out(self._decoded(_Batches(self.dataset, [idx.numpy()], self.decode_on is not None)[0],
                                       idx.numpy()))

    def batches(self, index_batches: Sequence) -> Iterator[torch.Tensor]:
        """The images of each index batch, in order (prefetched by workers when streamed; for a GPU,
        gathered and pinned by a background thread when in memory)."""
        if self.images is not None:
            gathered = (self._out(self.images[self._positions(idx)]) for idx in index_batches)
            if self.pin:  # the gather and the pinning copy release the GIL: they overlap the step
                yield from _read_ahead((b.pin_memory() for b in gathered), depth=2)
            else:
                yield from gathered
            return
        arrays = [np.asarray(idx, dtype=np.int64) for idx in index_batches]
        reader = _Batches(self.dataset, arrays, encoded=self.decode_on is not None)
        if self.workers == 0:
            read = (reader[b] for b in range(len(reader)))
        else:
            read = iter(DataLoader(reader, batch_size=None, num_workers=self.workers,
                                   pin_memory=self.pin and self.decode_on is None, prefetch_factor=4))
        for item, idx in zip(read, arrays):
            yield self._out(self._decoded(item, idx))

    def _decoded(self, item, idx: np.ndarray) -> torch.Tensor:
        """A batch as read by :class:`_Batches`: decoded already, or files' bytes to decode here."""
        if self.decode_on is None:
            return item
        return decode_jpegs(item, self.height, self.decode_on, [self.dataset.paths[int(i)] for i in idx])

    def chunks(self, start: int, stop: int, batch_size: int) -> Iterator[torch.Tensor]:
        """Images ``start..stop`` in batches of ``batch_size``, in order.

        An empty range (a rank's empty share) is one empty batch (0×C×H×W), so that a pass over it
        still yields features of the right width.
        """
        if stop <= start:
            yield self.take([])
            return
        if self.images is not None:
            for lo in range(start, stop, batch_size):
                hi = min(lo + batch_size, stop)
                yield self._out(self.images[lo:hi] if self.index is None
                                else self.images[torch.from_numpy(self.index[lo:hi])])
            return
        yield from self.batches([np.arange(lo, min(lo + batch_size, stop)) for lo in range(start, stop, batch_size)])

    def view(self, start: int, stop: int) -> ImageSource:
        """Images ``start..stop``: a view of the tensor in memory (no copy), a subset when streamed."""
        if self.images is None:
            return self.subset(np.arange(start, stop))
        if self.index is not None:
            return self._derived(images=self.images, index=self.index[start:stop])
        return self._derived(images=self.images[start:stop])

    def subset(self, indices) -> ImageSource:
        """The images at ``indices`` (a cycle's sample of the pool), read the same way: in memory,
        from the same tensor at those positions (the images are not copied; each batch is
        gathered when read)."""
        if self.images is None:
            return self._derived(dataset=self.dataset.subset(indices))
        idx = as_index_array(indices, len(self))
        return self._derived(images=self.images, index=idx if self.index is None else self.index[idx])


def _read_ahead(items: Iterator[torch.Tensor], depth: int) -> Iterator[torch.Tensor]:
    """``items``, produced ``depth`` ahead by a background thread, in order; an exception there is
    raised here, and stopping early stops the thread."""
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            out.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            out.put(e)

    thread = threading.Thread(target=work, name="deepcluster-batches", daemon=True)
    thread.start()
    try:
        while (item := out.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def default_workers() -> int:
    """Decode workers of a streamed source: the cores this process may use, shared among the
    processes torchrun started on this machine (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_ranks = 1
    return max(1, cores // local_ranks)


def choose_source(dataset: ImageDataset, *, memory_budget_mb: int | None = None, workers: int = 2,
                  pin: bool = False, decode_on: torch.device | str | None = None, extra: int = 0) -> ImageSource:
    """In memory when the dataset is in memory already or what reading it into memory holds
    (:func:`in_memory_nbytes`: pixels, its per-image arrays, ``extra`` bytes) fits the budget,
    else streamed."""
    streamed = (not isinstance(dataset, TensorImageDataset)
                and in_memory_nbytes(dataset, extra) > memory_budget(memory_budget_mb))
    return ImageSource(dataset, streamed=streamed, workers=workers, pin=pin, decode_on=decode_on)


def source_for(cfg: TrainConfig, dataset: ImageDataset, *, device: torch.device | str = "cpu") -> ImageSource:
    """The source a run computing on ``device`` reads ``dataset`` from: :func:`choose_source` with the
    run's ``data.memory_budget_mb`` (counting, besides the pixels, what a cycle of the run holds per
    image: :func:`cycle_nbytes`) and ``data.workers`` (None: :func:`default_workers`), pinned
    batches for a GPU, and ``data.decode`` (``auto``: a streamed JPEG folder is decoded on a GPU)."""
    device = torch.device(device)
    workers = default_workers() if cfg.data.workers is None else cfg.data.workers
    decode = cfg.data.decode
    decode_on = device if decode == "device" or (decode == "auto" and device.type == "cuda") else None
    return choose_source(dataset, memory_budget_mb=cfg.data.memory_budget_mb, workers=workers,
                         pin=device.type == "cuda", decode_on=decode_on, extra=cycle_nbytes(cfg, len(dataset)))


def as_source(images: torch.Tensor | ImageSource) -> ImageSource:
    """``images`` as an :class:`ImageSource` (a uint8 tensor N×C×H×W is read in memory)."""
    return images if isinstance(images, ImageSource) else ImageSource(TensorImageDataset("images", images))

"""The dataset type shared by every loader, and the helpers that shape it (limit, resize)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from deepcluster.core.errors import DataError

# Resizing tens of thousands of images in one call would allocate a float copy of all of them.
_RESIZE_CHUNK = 4096


class ImageDataset(Dataset):
    """Images as uint8 tensors C×H×W, optional integer labels.

    Attributes
    ----------
    name : str
        Registry name of the dataset (``"fashion-mnist"``, ``"folder"``...).
    labels : numpy.ndarray or None
        int64 labels, shape (N,), or None when the dataset is unlabeled.
    paths : list of str or None
        File path of each sample for folder datasets, else None.
    classes : list of str or None
        Class names, indexed by label, when known.
    channels : int
        1 or 3.

    Notes
    -----
    ``__getitem__`` returns the image only: training never reads labels, which stay in
    :attr:`labels` for evaluation.
    """

    name: str
    labels: np.ndarray | None
    paths: list[str] | None
    classes: list[str] | None
    channels: int

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def images_tensor(self) -> torch.Tensor:  # pragma: no cover - abstract
        """Return all images at once as a uint8 tensor N×C×H×W."""
        raise NotImplementedError

    def subset(self, indices) -> ImageDataset:  # pragma: no cover - abstract
        """Return a dataset of the same type holding only ``indices`` (labels/paths too)."""
        raise NotImplementedError

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        raise NotImplementedError  # pragma: no cover - abstract

    def index_nbytes(self) -> int:
        """Bytes this dataset holds per image besides the pixels, summed: its labels and, when it
        keeps them, its paths (a Python string and a list slot each). What a memory budget counts
        with the pixels."""
        total = 0 if self.labels is None else int(np.asarray(self.labels).nbytes)
        paths = self.__dict__.get("paths")
        if paths:
            total += sum(sys.getsizeof(p) for p in paths) + 8 * len(paths)
        return total

    def __repr__(self) -> str:
        h, w = self.image_size
        labelled = "unlabeled" if self.labels is None else f"{len(self.classes or [])} classes"
        return (
            f"{type(self).__name__}(name={self.name!r}, n={len(self)}, "
            f"shape={self.channels}×{h}×{w}, {labelled})"
        )


class TensorImageDataset(ImageDataset):
    """An :class:`ImageDataset` held in memory as one uint8 tensor N×C×H×W.

    Parameters
    ----------
    name : str
        Registry name.
    images : torch.Tensor
        uint8 tensor N×C×H×W, C in (1, 3).
    labels : numpy.ndarray, optional
        int64 labels of shape (N,).
    classes : list of str, optional
        Class names indexed by label.
    """

    def __init__(
        self,
        name: str,
        images: torch.Tensor,
        labels: np.ndarray | None = None,
        classes: list[str] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 N×C×H×W with C in (1, 3), got {images.dtype} {tuple(images.shape)}")
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64).reshape(-1)
            if len(labels) != len(images):
                raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.name = name
        self.images = images
        self.labels = labels
        self.paths = None
        self.classes = list(classes) if classes is not None else None
        self.channels = int(images.shape[1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def images_tensor(self) -> torch.Tensor:
        """Return the held uint8 tensor N×C×H×W (shared, not a copy: do not modify it in place)."""
        return self.images

    def subset(self, indices) -> TensorImageDataset:
        """Return a new in-memory dataset holding the samples at ``indices``."""
        idx = as_index_array(indices, len(self))
        return TensorImageDataset(
            self.name,
            self.images[torch.from_numpy(idx)],
            None if self.labels is None else self.labels[idx],
            self.classes,
        )


class FolderImageDataset(ImageDataset):
    """An :class:`ImageDataset` whose images are read lazily from files with PIL.

    Every image is converted to RGB and resized to ``size``×``size`` (aspect ratio is not
    kept), so that all samples share one shape.

    Parameters
    ----------
    name : str
        Registry name.
    paths : list of str
        One image file per sample.
    size : int
        Output height and width.
    labels : numpy.ndarray, optional
        int64 labels of shape (N,).
    classes : list of str, optional
        Class names indexed by label.
    """

    def __init__(
        self,
        name: str,
        paths: Sequence[str],
        size: int,
        labels: np.ndarray | None = None,
        classes: list[str] | None = None,
    ) -> None:
        self.name = name
        self.paths = [str(p) for p in paths]
        self.size = int(size)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes = list(classes) if classes is not None else None
        self.channels = 3
        # Filled by images_tensor(): once everything has been decoded, reading files again is waste.
        self._cache: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.size, self.size

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._cache is not None:
            return self._cache[i]
        return read_image(self.paths[i], self.size)

    @property
    def all_jpeg(self) -> bool:
        """Whether every file is a JPEG (by its extension): what :func:`decode_jpegs` can decode."""
        return all(p.lower().endswith((".jpg", ".jpeg")) for p in self.paths)

    def read_encoded(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """The undecoded bytes of the files at ``indices``, for :func:`decode_jpegs` to decode a
        batch at once (on a GPU): one uint8 tensor of the files end to end and the N + 1 offsets
        where each starts (one tensor, not one per file, so a worker hands it over in one piece)."""
        blobs = []
        for i in as_index_array(indices, len(self)):
            try:
                with open(self.paths[int(i)], "rb") as f:
                    blobs.append(f.read())
            except OSError as exc:
                raise DataError(f"cannot read image {self.paths[int(i)]} ({exc.strerror or exc}): check the file "
                                "and its permissions") from None
        offsets = torch.tensor(np.cumsum([0] + [len(b) for b in blobs]), dtype=torch.int64)
        data = torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8) if blobs else torch.empty(0, dtype=torch.uint8)
        return data, offsets

    def images_tensor(self) -> torch.Tensor:
        """Decode every image (with a progress bar) and return them as uint8 N×3×S×S.

        The result is kept, so later calls and ``__getitem__`` no longer touch the files.
        """
        if self._cache is None:
            from deepcluster.core.progress import progress_bar

            out = torch.empty((len(self), 3, self.size, self.size), dtype=torch.uint8)
            with progress_bar(f"Loading {len(self)} images", len(self), unit="images") as advance:
                for k, path in enumerate(self.paths):  # a bar on a terminal only: no blank lines in a log
                    out[k] = read_image(path, self.size)
                    advance(1)
            self._cache = out
        return self._cache

    def subset(self, indices) -> FolderImageDataset:
        """Return a new lazy dataset over the files at ``indices``."""
        idx = as_index_array(indices, len(self))
        sub = FolderImageDataset(
            self.name,
            [self.paths[k] for k in idx],
            self.size,
            None if self.labels is None else self.labels[idx],
            self.classes,
        )
        if self._cache is not None:
            sub._cache = self._cache[torch.from_numpy(idx)]
        return sub


def read_image(path: str | Path, size: int) -> torch.Tensor:
    """Read one image file as a uint8 RGB tensor 3×size×size.

    Raises
    ------
    DataError
        If the file cannot be opened or decoded.
    """
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    # PIL signals broken files with many types (OSError, SyntaxError, struct.error, ValueError...),
    # and this block only decodes one file, so any failure here means "this file is bad".
    except Exception as exc:  # noqa: BLE001 - see above
        raise DataError(
            f"cannot read image {path} ({exc.__class__.__name__}: {exc}): "
            "delete or replace this file, or re-export it as PNG/JPEG"
        ) from None
    tensor = TF.pil_to_tensor(img)
    if tensor.shape[1:] != (size, size):
        tensor = TF.resize(tensor, [size, size], antialias=True)
    return tensor


def decode_jpegs(encoded: tuple[torch.Tensor, torch.Tensor], size: int, device: torch.device | str,
                 paths: Sequence[str] = ()) -> torch.Tensor:
    """Decode a batch of JPEG files' bytes (as :meth:`FolderImageDataset.read_encoded` gives them)
    on ``device`` (nvJPEG on a GPU) to uint8 RGB, resized like :func:`read_image` (antialiased
    bilinear): N×3×size×size on ``device``.

    ``paths`` names the files for errors: a file nvJPEG cannot decode is read again with PIL,
    which either decodes it or raises the :class:`DataError` naming it.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    data, offsets = encoded
    bounds = offsets.tolist()
    files = [data[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    if not files:
        return torch.empty((0, 3, size, size), dtype=torch.uint8, device=device)
    try:
        with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec, which has no batched GPU decode here
            warnings.simplefilter("ignore", DeprecationWarning)
            images = decode_jpeg(files, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        images = [read_image(p, size).to(device) for p in paths] if len(paths) == len(files) else None
        if images is None:
            raise DataError("cannot decode a batch of JPEG files: set data.decode=pil, which names the broken "
                            "file, then remove or re-encode it") from None
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=device)
    for k, img in enumerate(images):
        out[k] = img if img.shape[1:] == (size, size) else TF.resize(img, [size, size], antialias=True)
    return out


def as_index_array(indices, n: int) -> np.ndarray:
    """Turn a list/array/tensor of indices or a boolean mask into an int64 array in [0, n)."""
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    idx = np.asarray(indices)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise IndexError(f"boolean mask of shape {idx.shape} for a dataset of {n} samples")
        return np.flatnonzero(idx)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(idx.dtype, np.integer):
        raise IndexError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64).reshape(-1)
    if idx.min() < -n or idx.max() >= n:
        raise IndexError(f"index out of range for a dataset of {n} samples")
    return np.where(idx < 0, idx + n, idx)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 N×C×H×W tensor to N×C×size×size (bilinear, antialiased)."""
    if tuple(images.shape[2:]) == (size, size):
        return images
    parts = [
        TF.resize(images[k : k + _RESIZE_CHUNK], [size, size], antialias=True)
        for k in range(0, len(images), _RESIZE_CHUNK)
    ]
    if not parts:
        return images.new_empty((0, images.shape[1], size, size))
    return torch.cat(parts)


def random_limit_indices(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of a reproducible random subset of ``limit`` out of ``n`` samples."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=limit, replace=False))


def resize_center_crop(images: torch.Tensor, resize: int, size: int) -> torch.Tensor:
    """Resize a uint8 N×C×H×W tensor so that its shorter side is ``resize`` (bilinear,
    antialiased), then keep its central ``size``×``size`` (torchvision's ``Resize(resize)`` then
    ``CenterCrop(size)``, deterministic)."""
    if size > resize:
        raise DataError(f"data.image_size={size} is larger than data.resize={resize}: the centre crop is taken "
                        f"from the resized image, so set data.resize to at least {size}")
    parts = [TF.center_crop(TF.resize(images[k : k + _RESIZE_CHUNK], resize, antialias=True), [size, size])
             for k in range(0, len(images), _RESIZE_CHUNK)]
    if not parts:
        return images.new_empty((0, images.shape[1], size, size))
    return torch.cat(parts)


def finalize(dataset: ImageDataset, image_size: int | None, limit: int | None, seed: int,
             resize: int | None = None) -> ImageDataset:
    """Apply ``limit`` (before resizing, which is the expensive part) then ``image_size`` (with
    ``resize``: resize to that, then centre-crop to ``image_size``, its default the native size)."""
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0:
            raise DataError(f"limit must be a positive integer, got {limit!r}: set data.limit to e.g. 1000 or remove it")
        if limit < len(dataset):
            dataset = dataset.subset(random_limit_indices(len(dataset), int(limit), seed))
    if resize is not None and isinstance(dataset, TensorImageDataset):
        size = image_size if image_size is not None else min(dataset.images.shape[2:])
        return TensorImageDataset(dataset.name, resize_center_crop(dataset.images, resize, int(size)), dataset.labels,
                                  dataset.classes)
    if image_size is not None and isinstance(dataset, TensorImageDataset):
        dataset = TensorImageDataset(
            dataset.name, resize_images(dataset.images, image_size), dataset.labels, dataset.classes
        )
    return dataset


def check_image_size(image_size: int | None) -> None:
    """Reject a non-positive or non-integer ``image_size`` early, with the fix."""
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size <= 0:
        raise DataError(
            f"image_size must be a positive integer, got {image_size!r}: set data.image_size to e.g. 32 or remove it"
        )

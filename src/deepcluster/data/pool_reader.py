"""An ingested dataset: uint8 pixels at one stored size in a flat file, read at random by any process.

    OUT/
      dataset.json    what it holds (n, channels, size, classes, sources, checksum); written last,
                      so a folder without it is not a finished dataset
      images.u8       n × channels × size × size uint8 pixels, row after row
      index.csv       index,path,label,height,width per image (label -1 when unknown; the
                      original height and width)
      skipped.csv     path,reason of every source image that could not be decoded

Images are read with ``os.pread`` (no memory map), so a process only holds what it reads:
DataLoader workers and the ranks of a distributed run read the same file at once.
``deepcluster data ingest`` writes one (:mod:`deepcluster.data.pool_writer`), ``deepcluster data verify``
checks its checksum.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepcluster.core.errors import DataError
from deepcluster.data.base import ImageDataset, as_index_array

__all__ = ["FORMAT", "IngestedDataset", "read_manifest"]

#: Format of dataset.json (bumped when the layout changes).
FORMAT = 1
MANIFEST = "dataset.json"
PIXELS = "images.u8"
INDEX = "index.csv"
SKIPPED = "skipped.csv"


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of a finished ingested dataset, with the files checked for presence and size.

    Raises
    ------
    DataError
        Not an ingested dataset, one still being written, or a truncated pixel file.
    """
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        if (root / ".ingest").is_dir():
            raise DataError(f"{root} is an unfinished ingest: run `deepcluster data ingest` with the same source "
                            "and OUT again to finish it")
        raise DataError(f"{root} is not an ingested dataset (no {MANIFEST}): create one with "
                        "`deepcluster data ingest SOURCE OUT`")
    try:
        manifest = json.loads(path.read_text())
        n, c, s = int(manifest["n"]), int(manifest["channels"]), int(manifest["size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is unreadable ({e.__class__.__name__}): run `deepcluster data verify {root}`") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{root} was ingested in format {manifest.get('format')!r}, this version reads {FORMAT}: "
                        "ingest the source again")
    pixels = root / PIXELS
    expected = n * c * s * s
    actual = pixels.stat().st_size if pixels.is_file() else -1
    if actual != expected:
        raise DataError(f"{pixels} holds {max(actual, 0)} bytes where {n} images of {c}×{s}×{s} need {expected}: "
                        f"the file is truncated or damaged; check it with `deepcluster data verify {root}`")
    return manifest


def _read_index(root: Path, n: int) -> tuple[list[str], np.ndarray]:
    paths, labels = [], []
    try:
        with open(root / INDEX, newline="") as f:
            for row in csv.DictReader(f):
                paths.append(row["path"])
                labels.append(int(row["label"]))
    except (OSError, KeyError, ValueError, csv.Error) as e:
        raise DataError(f"{root / INDEX} is unreadable ({e.__class__.__name__}): run `deepcluster data verify "
                        f"{root}`") from None
    if len(paths) != n:
        raise DataError(f"{root / INDEX} lists {len(paths)} images where {MANIFEST} says {n}: run "
                        f"`deepcluster data verify {root}`")
    return paths, np.asarray(labels, dtype=np.int64)


class IngestedDataset(ImageDataset):
    """The images of an ingested folder (see the module docstring), read on demand.

    Parameters
    ----------
    root : path
        The ingested folder.
    rows : array of int, optional
        Keep only these images (a subset, in this order).
    """

    def __init__(self, root: str | Path, rows: np.ndarray | None = None) -> None:
        self.root = Path(root)
        manifest = read_manifest(self.root)
        self.name = "ingested"
        self.channels = int(manifest["channels"])
        self.size = int(manifest["size"])
        n = int(manifest["n"])
        paths, labels = _read_index(self.root, n)
        self.rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.paths = [paths[i] for i in self.rows]
        self.classes = list(manifest["classes"]) if manifest.get("classes") else None
        labels = labels[self.rows]
        self.labels = labels if (labels >= 0).all() and len(labels) else None
        self._item = self.channels * self.size * self.size
        self._fd: int | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.size, self.size

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # one descriptor per process (workers fork)
            self._fd = os.open(self.root / PIXELS, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fd"] = state["_pid"] = None
        return state

    def _read_rows(self, rows: np.ndarray) -> torch.Tensor:
        out = np.empty((len(rows), self.channels, self.size, self.size), dtype=np.uint8)
        flat = out.reshape(len(rows), self._item)
        fd = self._file()
        order = np.argsort(rows, kind="stable")
        k = 0
        while k < len(order):  # runs of consecutive rows are read with one call
            j = k
            while j + 1 < len(order) and rows[order[j + 1]] == rows[order[j]] + 1:
                j += 1
            data = os.pread(fd, (j - k + 1) * self._item, int(rows[order[k]]) * self._item)
            if len(data) != (j - k + 1) * self._item:
                raise DataError(f"{self.root / PIXELS} ended early: run `deepcluster data verify {self.root}`")
            block = np.frombuffer(data, dtype=np.uint8).reshape(j - k + 1, self._item)
            flat[order[k : j + 1]] = block
            k = j + 1
        return torch.from_numpy(out)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self._read_rows(self.rows[[int(i)]])[0]

    def read(self, indices) -> torch.Tensor:
        """The images at ``indices`` (of this dataset) as one uint8 tensor, in that order."""
        return self._read_rows(self.rows[as_index_array(indices, len(self))])

    def images_tensor(self) -> torch.Tensor:
        """All images in memory as one uint8 tensor (the fast path, when they fit)."""
        return self._read_rows(self.rows)

    def subset(self, indices) -> IngestedDataset:
        return IngestedDataset(self.root, self.rows[as_index_array(indices, len(self))])

    def nbytes(self) -> int:
        return len(self) * self._item

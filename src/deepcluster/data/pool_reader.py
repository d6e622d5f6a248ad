"""An ingested dataset: uint8 pixels at one stored size in a flat file, read at random by any process.

    OUT/
      dataset.json    what it holds (n, channels, size, classes, sources, checksum); written last,
                      so a folder without it is not a finished dataset
      images.u8       n × channels × size × size uint8 pixels, row after row
      index.csv       index,path,label,height,width per image (label -1 when unknown; the
                      original height and width)
      skipped.csv     path,reason of every source image that could not be decoded

Images are read with ``os.preadv``/``os.pread`` (no memory map), straight into the uint8 tensor
returned, so a process only holds what it reads, once: DataLoader workers and the ranks of a
distributed run read the same file at once, and reading the whole pool into memory (the in-memory
path) holds its pixels once, never a second copy of them. The paths of ``index.csv`` are read only
when asked for (:attr:`IngestedDataset.paths`): training never reads them.
``deepcluster data ingest`` writes one (:mod:`deepcluster.data.pool_writer`), ``deepcluster data verify``
checks its checksum.
"""

from __future__ import annotations

import csv
import json
import os
import sys
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


def _read_index(root: Path, n: int, column: str = "label") -> list[str]:
    """One column of ``index.csv``, as strings, checked to list ``n`` images."""
    values = []
    try:
        with open(root / INDEX, newline="") as f:
            for row in csv.DictReader(f):
                values.append(row[column])
    except (OSError, KeyError, ValueError, csv.Error) as e:
        raise DataError(f"{root / INDEX} is unreadable ({e.__class__.__name__}): run `deepcluster data verify "
                        f"{root}`") from None
    if len(values) != n:
        raise DataError(f"{root / INDEX} lists {len(values)} images where {MANIFEST} says {n}: run "
                        f"`deepcluster data verify {root}`")
    return values


def _read_labels(root: Path, n: int) -> np.ndarray:
    try:
        return np.array([int(v) for v in _read_index(root, n, "label")], dtype=np.int64)
    except ValueError:
        raise DataError(f"{root / INDEX} is unreadable (ValueError): run `deepcluster data verify {root}`") from None


#: Images read with one call at most, when they cannot be read straight into place (bounds the
#: temporary buffer of a scattered read).
_PIECE_BYTES = 16 << 20
#: Bytes asked of one ``preadv`` call (Linux transfers at most about 2 GiB per call).
_MAX_CALL = 1 << 30


def _pread_into(fd: int, buf: memoryview, offset: int) -> int:
    """Fill ``buf`` from the file at ``offset`` (several calls when needed); the bytes read."""
    done = 0
    while done < len(buf):
        part = buf[done : done + _MAX_CALL]
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [part], offset + done)
        else:  # pragma: no cover - no preadv (not Linux/BSD/macOS 11+)
            data = os.pread(fd, len(part), offset + done)
            part[: len(data)] = data
            got = len(data)
        if got == 0:
            break
        done += got
    return done


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
        self._n = int(manifest["n"])
        self.rows = np.arange(self._n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.classes = list(manifest["classes"]) if manifest.get("classes") else None
        self._set_labels(_read_labels(self.root, self._n)[self.rows])
        self._paths: list[str] | None = None
        self._item = self.channels * self.size * self.size
        self._fd: int | None = None
        self._pid: int | None = None

    def _set_labels(self, labels: np.ndarray) -> None:
        """``labels`` of the rows (-1: unknown); :attr:`labels` when every one is known."""
        self._row_labels = labels
        self.labels = labels if len(labels) and (labels >= 0).all() else None

    @property
    def paths(self) -> list[str]:  # type: ignore[override]
        """The source path of each image (``index.csv``), read on first use: one Python string per
        image is more memory than a small image's pixels, and training never needs them."""
        if self._paths is None:
            every = _read_index(self.root, self._n, "path")
            self._paths = [every[i] for i in self.rows]
        return self._paths

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
        """The images at file rows ``rows`` (in that order) as one new uint8 tensor.

        Runs of consecutive rows are read with one call, straight into the tensor where their
        places in it are consecutive too (reading the whole pool holds its pixels once); other
        runs are read a piece of at most :data:`_PIECE_BYTES` at a time and scattered.
        """
        n = len(rows)
        out = np.empty((n, self.channels, self.size, self.size), dtype=np.uint8)
        if not n:
            return torch.from_numpy(out)
        flat = out.reshape(n, self._item)
        fd = self._file()
        if int(rows[-1]) - int(rows[0]) == n - 1 and bool((np.diff(rows) == 1).all()):  # a range: the whole pool
            if _pread_into(fd, memoryview(flat).cast("B"), int(rows[0]) * self._item) != n * self._item:
                self._ended_early()
            return torch.from_numpy(out)
        order = np.argsort(rows, kind="stable")
        src = rows[order]
        # where a run of consecutive file rows ends, and where its places in ``out`` stop being consecutive
        run_ends = np.flatnonzero(np.diff(src) != 1) + 1
        place_breaks = np.concatenate([[0], np.cumsum(np.diff(order) != 1)])
        piece = max(1, _PIECE_BYTES // self._item)
        for lo, hi in zip(np.concatenate([[0], run_ends]).tolist(), np.concatenate([run_ends, [n]]).tolist()):
            first = int(src[lo]) * self._item
            if place_breaks[hi - 1] == place_breaks[lo]:  # in place: no copy at all
                a = int(order[lo])
                got = _pread_into(fd, memoryview(flat[a : a + hi - lo]).cast("B"), first)
                if got != (hi - lo) * self._item:
                    self._ended_early()
                continue
            for p in range(lo, hi, piece):
                q = min(p + piece, hi)
                data = os.pread(fd, (q - p) * self._item, first + (p - lo) * self._item)
                if len(data) != (q - p) * self._item:
                    self._ended_early()
                flat[order[p:q]] = np.frombuffer(data, dtype=np.uint8).reshape(q - p, self._item)
        return torch.from_numpy(out)

    def _ended_early(self) -> None:
        raise DataError(f"{self.root / PIXELS} ended early: run `deepcluster data verify {self.root}`")

    def __getitem__(self, i: int) -> torch.Tensor:
        return self._read_rows(self.rows[[int(i)]])[0]

    def read(self, indices) -> torch.Tensor:
        """The images at ``indices`` (of this dataset) as one uint8 tensor, in that order."""
        return self._read_rows(self.rows[as_index_array(indices, len(self))])

    def images_tensor(self) -> torch.Tensor:
        """All images in memory as one uint8 tensor (the fast path, when they fit)."""
        return self._read_rows(self.rows)

    def subset(self, indices) -> IngestedDataset:
        """The images at ``indices``, read from the same file (``index.csv`` is not read again)."""
        idx = as_index_array(indices, len(self))
        sub = IngestedDataset.__new__(IngestedDataset)
        sub.__dict__.update(self.__getstate__())
        sub.rows = self.rows[idx]
        sub._set_labels(self._row_labels[idx])
        sub._paths = None if self._paths is None else [self._paths[i] for i in idx]
        return sub

    def nbytes(self) -> int:
        return len(self) * self._item

    def index_nbytes(self) -> int:
        """Its rows and labels (int64 each), and its paths once they were asked for."""
        total = int(self.rows.nbytes) + int(self._row_labels.nbytes)
        if self._paths is not None:
            total += sum(sys.getsizeof(p) for p in self._paths) + 8 * len(self._paths)
        return total

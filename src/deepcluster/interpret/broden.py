"""Concept data sets in the Broden layout of NetDissect / NetDissect-Lite: reader and writer.

Layout (as read by NetDissect-Lite's ``loader/data_loader.py``, ``SegmentationData``)::

    <root>/index.csv        image,split,ih,iw,sh,sw,<category>,<category>,...
    <root>/label.csv        number,name,category,frequency,coverage,syns
    <root>/category.csv     name,first,last,count,frequency
    <root>/c_<category>.csv code,number,name,frequency,coverage     (one per row of category.csv)
    <root>/images/...       the images and the mask PNGs named in index.csv

* ``index.csv`` -- one row per image. ``image`` is a path relative to ``images/``; ``split`` is
  free text (``train``/``val`` in Broden); ``ih, iw`` is the image size and ``sh, sw`` the size
  of its segmentation masks (Broden stores masks at lower resolution than images). Every
  category column holds ``;``-separated entries (often empty). An entry is either the file name
  of a mask PNG (relative to ``images/``) whose pixels hold label numbers encoded as
  ``R + 256 * G``, or an integer label number. Categories with mask files are *pixel-level*
  (``color, object, part, material`` in Broden); categories holding only numbers are
  *image-level* (``scene, texture``): the label applies to the whole image. As in NetDissect,
  an integer in a pixel-level column is read as a mask filled with that label. Several entries
  in one cell give several mask channels, so a pixel can carry several labels of a category.
* ``label.csv`` -- the label numbers. ``category`` lists the categories of the label with its
  image count in each, e.g. ``object(123);part(4)``; ``frequency`` is the number of images the
  label occurs in; ``coverage`` the sum, over images, of the fraction of the ``sh x sw`` pixels
  it covers (1 per image for image-level labels); ``syns`` ``;``-separated synonyms.
* ``category.csv`` -- ``first``/``last``: smallest/largest label number of the category,
  ``count``: its number of labels, ``frequency``: number of images having one of them.
* ``c_<category>.csv`` -- a dense code (1, 2, ...) for each label number of the category, with
  the per-category ``frequency`` and ``coverage``.

Label number 0 means "no label": mask pixels equal to 0 are unlabelled; it is never a concept.
A ``label.csv`` row 0 (``0,-,,...``) is tolerated but not required (the writer omits it, so the
folders it writes stay readable by NetDissect-Lite, whose parser needs a category on each row).

The formats above are the ones NetDissect-Lite reads; the statistics columns are informative
only -- the reader parses them but relies on none of them.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from deepcluster.core import files as dio
from deepcluster.core.errors import DataError

if TYPE_CHECKING:
    from typing_extensions import Self

INDEX_META = ("image", "split", "ih", "iw", "sh", "sw")
INDEX_FILE = "index.csv"
LABEL_FILE = "label.csv"
CATEGORY_FILE = "category.csv"
LABEL_COLUMNS = ("number", "name", "category", "frequency", "coverage", "syns")
CATEGORY_COLUMNS = ("name", "first", "last", "count", "frequency")
CODE_COLUMNS = ("code", "number", "name", "frequency", "coverage")
#: Pixel-level categories of Broden, used only to classify a category that has no entries at all.
BRODEN_PIXEL_CATEGORIES = ("color", "object", "part", "material")
#: Largest label number a mask PNG can hold (R + 256 * G).
MAX_LABEL = 256 * 256 - 1

_INT = re.compile(r"^\s*\d+\s*$")
_CAT_ENTRY = re.compile(r"^([^()]+?)\s*(?:\((\d*)\))?$")


# --------------------------------------------------------------------------------------------
# Mask encoding


def encode_mask(labels: np.ndarray) -> np.ndarray:
    """Label numbers (H x W, 0..65535) -> H x W x 3 uint8 RGB with ``R + 256 * G`` = label."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H x W), got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise ValueError(f"mask label numbers must lie in 0..{MAX_LABEL}")
    lab = labels.astype(np.int64)
    rgb = np.zeros((*labels.shape, 3), dtype=np.uint8)
    rgb[..., 0] = lab % 256
    rgb[..., 1] = lab // 256
    return rgb


def decode_mask(pixels: np.ndarray) -> np.ndarray:
    """Mask image pixels -> int32 label numbers: ``R + 256 * G`` for RGB(A), the value for gray."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 3:
        return pixels[..., 0].astype(np.int32) + 256 * pixels[..., 1].astype(np.int32)
    return pixels.astype(np.int32)


def read_mask(path: str | Path) -> np.ndarray:
    """Read one mask PNG as int32 label numbers (see :func:`decode_mask`)."""
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "PA", "LA", "1", "CMYK", "YCbCr"):
                im = im.convert("RGB")
            pixels = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"mask file {path} named in index.csv does not exist: restore it or regenerate the folder") from None
    except OSError as exc:
        raise DataError(f"cannot read mask file {path} ({exc}): the file is corrupt; regenerate the folder") from None
    return decode_mask(pixels)


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Label:
    """One row of ``label.csv``."""

    number: int
    name: str
    #: Image count of the label in each of its categories, in ``label.csv`` order.
    categories: Mapping[str, int]
    frequency: int = 0
    coverage: float = 0.0
    syns: tuple[str, ...] = ()

    @property
    def category(self) -> str:
        """Primary category: the one with the largest count (the first listed on ties); '' if none."""
        if not self.categories:
            return ""
        return max(self.categories, key=lambda c: (self.categories[c], -list(self.categories).index(c)))


@dataclass(frozen=True)
class Category:
    """One row of ``category.csv``, with its ``c_<name>.csv`` codes."""

    name: str
    first: int
    last: int
    count: int
    frequency: int
    #: True when the category has mask files (pixel-level), False for image-level categories.
    pixel_level: bool
    #: Label numbers of the category in code order (``codes[k]`` has code ``k + 1``).
    labels: tuple[int, ...] = ()
    #: Per-label ``(frequency, coverage)`` within the category, from ``c_<name>.csv``.
    stats: Mapping[int, tuple[int, float]] = field(default_factory=dict)


def _concept_mask(masks, labels, label: int, shape: tuple[int, ...]) -> np.ndarray:
    if label <= 0:
        raise ValueError("label 0 means 'no label' and is not a concept")
    out = np.zeros(shape, dtype=bool)
    for m in masks.values():
        if m.shape[-3]:
            out |= (m == label).any(axis=-3)
    for lab in labels.values():
        hit = (lab == label).any(axis=-1)
        if hit.ndim == 0:
            out |= bool(hit)
        else:
            out[hit] = True
    return out


@dataclass
class BrodenSample:
    """One image with its concepts."""

    index: int
    #: uint8, 3 x ih x iw (grayscale images are repeated to RGB).
    image: np.ndarray
    #: Pixel-level category -> int32 array K x sh x sw of label numbers (K >= 0 mask channels).
    masks: dict[str, np.ndarray]
    #: Image-level category -> int32 array of the label numbers of the image.
    labels: dict[str, np.ndarray]
    split: str = ""
    filename: str = ""

    @property
    def mask_shape(self) -> tuple[int, int]:
        for m in self.masks.values():
            return m.shape[-2], m.shape[-1]
        return self.image.shape[-2], self.image.shape[-1]

    def concept_mask(self, label: int) -> np.ndarray:
        """Bool sh x sw: where ``label`` occurs in any category (everywhere for image-level labels)."""
        return _concept_mask(self.masks, self.labels, label, self.mask_shape)


@dataclass
class BrodenBatch:
    """Stacked samples; mask channels and image-level labels are zero-padded to the batch maximum."""

    #: int64 indices of the samples in the dataset.
    indices: np.ndarray
    #: uint8 B x 3 x ih x iw; None when the batch was read without its images
    #: (:meth:`BrodenDataset.batch`).
    images: np.ndarray | None
    #: Pixel-level category -> int32 B x K x sh x sw.
    masks: dict[str, np.ndarray]
    #: Image-level category -> int32 B x K.
    labels: dict[str, np.ndarray]
    #: ``sh x sw`` of :meth:`concept_mask` (``ih x iw`` when the probe has no pixel-level
    #: category, as :attr:`BrodenSample.mask_shape`); None: the masks' or the images' size.
    mask_shape: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def concept_mask(self, label: int) -> np.ndarray:
        """Bool B x sh x sw: where ``label`` occurs in any category."""
        shape = self.mask_shape
        if shape is None:
            shape = next(iter(self.masks.values())).shape[-2:] if self.masks else self.images.shape[-2:]
        return _concept_mask(self.masks, self.labels, label, (len(self), *shape))


# --------------------------------------------------------------------------------------------
# Reader


def _read_csv(path: Path, required: Sequence[str], fix: str) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist: {fix}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            # extra cells (key None) are ignored, missing ones read as ""
            rows = [{k.strip(): (v or "") for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} ({exc}): {fix}") from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(
            f"{path} lacks column(s) {', '.join(missing)} (has: {', '.join(columns) or 'none'}): "
            f"the header must be {','.join(required)}"
        )
    return rows


def _int(value: str, path: Path, line: int, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path} line {line}: column {column} must be an integer, got {value!r}") from None


def _float(value: str, path: Path, line: int, column: str) -> float:
    if not value.strip():
        return 0.0
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{path} line {line}: column {column} must be a number, got {value!r}") from None


def _parse_label_categories(value: str, path: Path, line: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for entry in value.split(";"):
        entry = entry.strip()
        if not entry:
            continue
        m = _CAT_ENTRY.match(entry)
        if m is None:
            raise DataError(f"{path} line {line}: category entry {entry!r} is not of the form name(count)")
        out[m.group(1)] = int(m.group(2)) if m.group(2) else 0
    return out


_FIX_ANY = "pass a folder in the Broden layout (index.csv, label.csv, category.csv, c_*.csv, images/)"
#: A category.csv row: its line number and its cells.
_CategoryRow = tuple[int, dict[str, str]]


def _read_category_csv(root: Path, categories: Sequence[str] | None) -> dict[str, _CategoryRow]:
    """``category.csv``: name -> (line, row), restricted to ``categories`` (in their order) when given."""
    path = root / CATEGORY_FILE
    rows = _read_csv(path, CATEGORY_COLUMNS, f"{_FIX_ANY}; category.csv lists the categories, one per row")
    cat_rows = {}
    for line, row in enumerate(rows, start=2):
        name = row["name"].strip()
        if not name:
            raise DataError(f"{path} line {line}: empty category name")
        cat_rows[name] = (line, row)
    if categories is not None:
        unknown = [c for c in categories if c not in cat_rows]
        if unknown:
            raise DataError(
                f"{path} has no category {', '.join(unknown)} (has: {', '.join(cat_rows)}): pick among those"
            )
        cat_rows = {c: cat_rows[c] for c in categories}
    return cat_rows


def _read_label_csv(root: Path) -> dict[int, Label]:
    """``label.csv``: label number -> :class:`Label` (row 0, "no label", skipped)."""
    path = root / LABEL_FILE
    rows = _read_csv(path, LABEL_COLUMNS, f"{_FIX_ANY}; label.csv lists the label numbers and names")
    labels: dict[int, Label] = {}
    for line, row in enumerate(rows, start=2):
        number = _int(row["number"], path, line, "number")
        if number == 0:
            continue  # "no label"
        if number < 0 or number in labels:
            raise DataError(f"{path} line {line}: label number {number} is negative or repeated; numbers must be unique and > 0")
        labels[number] = Label(
            number=number,
            name=row["name"],
            categories=_parse_label_categories(row["category"], path, line),
            frequency=_int(row["frequency"] or "0", path, line, "frequency"),
            coverage=_float(row["coverage"], path, line, "coverage"),
            syns=tuple(s for s in row["syns"].split(";") if s),
        )
    return labels


@dataclass
class _Index:
    """``index.csv`` read: per image its metadata and per category its entries."""

    #: (image, split, ih, iw, sh, sw) per image.
    meta: list[tuple[str, str, int, int, int, int]]
    #: Category -> per image the entries of its cell: mask file names (str) and label numbers (int).
    entries: dict[str, list[tuple[str | int, ...]]]
    #: Category -> whether it is pixel-level: it names mask files, or (no entry at all) Broden's kind.
    pixel_level: dict[str, bool]


def _read_index_csv(root: Path, categories: Sequence[str]) -> _Index:
    """``index.csv``, with a column for each of ``categories``."""
    path = root / INDEX_FILE
    rows = _read_csv(path, INDEX_META, f"{_FIX_ANY}; index.csv lists one image per row")
    if rows:
        missing = [c for c in categories if c not in rows[0]]
        if missing:
            raise DataError(
                f"{path} lacks the column(s) {', '.join(missing)} of categories listed in category.csv: "
                "add the column(s) (entries may be empty) or remove those categories from category.csv"
            )
    meta: list[tuple[str, str, int, int, int, int]] = []
    entries: dict[str, list[tuple[str | int, ...]]] = {c: [] for c in categories}
    has_files = dict.fromkeys(categories, False)
    has_any = dict.fromkeys(categories, False)
    for line, row in enumerate(rows, start=2):
        image = row["image"].strip()
        if not image:
            raise DataError(f"{path} line {line}: empty image path")
        sizes = [_int(row[c], path, line, c) for c in ("ih", "iw", "sh", "sw")]
        meta.append((image, row["split"].strip(), *sizes))
        for cat in categories:
            cell = []
            for v in (row.get(cat) or "").split(";"):
                v = v.strip()
                if not v:
                    continue
                if _INT.match(v):
                    cell.append(int(v))
                else:
                    cell.append(v)
                    has_files[cat] = True
                has_any[cat] = True
            entries[cat].append(tuple(cell))
    pixel_level = {c: has_files[c] if has_any[c] else c in BRODEN_PIXEL_CATEGORIES for c in categories}
    return _Index(meta, entries, pixel_level)


def _read_code_csv(root: Path, cat: str, category_row: _CategoryRow, labels: Mapping[int, Label],
                   pixel_level: bool) -> Category:
    """``c_<cat>.csv``, with the category's ``category.csv`` row: the :class:`Category`."""
    cpath = root / f"c_{cat}.csv"
    crow = _read_csv(
        cpath, CODE_COLUMNS, f"every category of category.csv needs its c_{cat}.csv (code,number,name,frequency,coverage)"
    )
    codes: dict[int, int] = {}
    stats: dict[int, tuple[int, float]] = {}
    for cline, c in enumerate(crow, start=2):
        code = _int(c["code"], cpath, cline, "code")
        number = _int(c["number"], cpath, cline, "number")
        if number == 0:
            continue
        if number not in labels:
            raise DataError(f"{cpath} line {cline}: label number {number} is not in label.csv: add it there")
        codes[code] = number
        stats[number] = (_int(c["frequency"] or "0", cpath, cline, "frequency"), _float(c["coverage"], cpath, cline, "coverage"))
    line, row = category_row
    return Category(
        name=cat,
        first=_int(row["first"] or "0", root / CATEGORY_FILE, line, "first"),
        last=_int(row["last"] or "0", root / CATEGORY_FILE, line, "last"),
        count=_int(row["count"] or "0", root / CATEGORY_FILE, line, "count"),
        frequency=_int(row["frequency"] or "0", root / CATEGORY_FILE, line, "frequency"),
        pixel_level=pixel_level,
        labels=tuple(codes[k] for k in sorted(codes)),
        stats=stats,
    )


class BrodenDataset:
    """A folder in the Broden layout (see the module docstring).

    ``categories`` restricts the categories read (default: all rows of ``category.csv``).
    Indexing gives a :class:`BrodenSample`; :meth:`batch` stacks samples (optionally without
    their images), :meth:`batches` all of them, a batch at a time. An instance holds the file
    names and ``index.csv``'s entries, not the pixels: it pickles small (DataLoader workers).
    """

    def __init__(self, root: str | Path, *, categories: Sequence[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"Broden folder {self.root} does not exist: {_FIX_ANY}, or generate one with make_concept_probe")
        self.images_dir = self.root / "images"
        cat_rows = _read_category_csv(self.root, categories)
        self.labels: dict[int, Label] = _read_label_csv(self.root)
        index = _read_index_csv(self.root, list(cat_rows))
        self._meta: list[tuple[str, str, int, int, int, int]] = index.meta
        self._entries: dict[str, list[tuple[str | int, ...]]] = index.entries
        self.categories: dict[str, Category] = {
            cat: _read_code_csv(self.root, cat, row, self.labels, index.pixel_level[cat]) for cat, row in cat_rows.items()
        }

    # ---- metadata

    def __len__(self) -> int:
        return len(self._meta)

    def __repr__(self) -> str:
        return f"BrodenDataset({str(self.root)!r}, {len(self)} images, categories={list(self.categories)})"

    @property
    def pixel_categories(self) -> tuple[str, ...]:
        return tuple(c for c, v in self.categories.items() if v.pixel_level)

    @property
    def image_categories(self) -> tuple[str, ...]:
        return tuple(c for c, v in self.categories.items() if not v.pixel_level)

    def label_number(self, name: str, category: str | None = None) -> int:
        """Number of the label called ``name`` (in ``category`` when given)."""
        for number, lab in self.labels.items():
            if lab.name == name and (category is None or category in lab.categories):
                return number
        raise KeyError(f"no label {name!r}" + (f" in category {category!r}" if category else ""))

    def filename(self, i: int) -> Path:
        return self.images_dir / self._meta[i][0]

    def split(self, i: int) -> str:
        return self._meta[i][1]

    def image_size(self, i: int) -> tuple[int, int]:
        return self._meta[i][2], self._meta[i][3]

    def mask_size(self, i: int) -> tuple[int, int]:
        return self._meta[i][4], self._meta[i][5]

    # ---- loading

    def load_image(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 3 x ih x iw."""
        path = self.filename(i)
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise DataError(f"image {path} (row {i + 2} of index.csv) does not exist: restore it or regenerate the folder") from None
        except OSError as exc:
            raise DataError(f"cannot read image {path} ({exc}): the file is corrupt; regenerate the folder") from None
        ih, iw = self.image_size(i)
        if arr.shape[:2] != (ih, iw):
            raise DataError(
                f"image {path} is {arr.shape[1]}x{arr.shape[0]} but index.csv row {i + 2} says iw={iw}, ih={ih}: fix index.csv"
            )
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def load_masks(self, i: int) -> dict[str, np.ndarray]:
        """Pixel-level categories -> int32 K x sh x sw label numbers of image ``i``."""
        sh, sw = self.mask_size(i)
        out = {}
        for cat in self.pixel_categories:
            cell = self._entries[cat][i]
            arr = np.empty((len(cell), sh, sw), dtype=np.int32)
            for k, entry in enumerate(cell):
                if isinstance(entry, int):
                    arr[k] = entry
                    continue
                mask = read_mask(self.images_dir / entry)
                if mask.shape != (sh, sw):
                    raise DataError(
                        f"mask {self.images_dir / entry} is {mask.shape[1]}x{mask.shape[0]} but index.csv row {i + 2} "
                        f"says sw={sw}, sh={sh}: fix index.csv or the mask"
                    )
                arr[k] = mask
            out[cat] = arr
        return out

    def load_labels(self, i: int) -> dict[str, np.ndarray]:
        """Image-level categories -> int32 label numbers of image ``i``."""
        return {c: np.asarray(self._entries[c][i], dtype=np.int32) for c in self.image_categories}

    def __getitem__(self, i: int) -> BrodenSample:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        return BrodenSample(
            index=i,
            image=self.load_image(i),
            masks=self.load_masks(i),
            labels=self.load_labels(i),
            split=self.split(i),
            filename=self._meta[i][0],
        )

    def __iter__(self) -> Iterator[BrodenSample]:
        for i in range(len(self)):
            yield self[i]

    def batches(self, batch_size: int = 64, *, indices: Sequence[int] | None = None) -> Iterator[BrodenBatch]:
        """:meth:`batch` of ``batch_size`` samples at a time, in index order (or the order of
        ``indices``), read in this process (a dissection decodes its batches in DataLoader
        worker processes: :func:`deepcluster.interpret.dissect.dissect`)."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        order = list(range(len(self))) if indices is None else [int(i) for i in indices]
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])

    def batch(self, indices: Sequence[int], *, images: bool = True) -> BrodenBatch:
        """The samples at ``indices`` stacked; without ``images`` only their masks and labels are
        read (:attr:`BrodenBatch.images` is then None). All of them must share ``ih, iw`` and
        ``sh, sw``."""
        n = len(self)
        order = []
        for i in indices:
            if not -n <= int(i) < n:
                raise IndexError(i)
            order.append(int(i) % n)
        if not order:
            raise ValueError("a batch needs at least one sample")
        first = order[0]
        for i in order[1:]:
            if self.image_size(i) != self.image_size(first) or self.mask_size(i) != self.mask_size(first):
                raise DataError(
                    f"images {self._meta[first][0]} and {self._meta[i][0]} of {self.root} differ in size "
                    f"({self.image_size(first)} vs {self.image_size(i)} / masks {self.mask_size(first)} vs "
                    f"{self.mask_size(i)}): batch them separately or use batch_size=1"
                )
        sh, sw = self.mask_size(first)
        b = len(order)
        per_image = [self.load_masks(i) for i in order]
        masks = {}
        for cat in self.pixel_categories:
            k = max(m[cat].shape[0] for m in per_image)
            arr = np.zeros((b, k, sh, sw), dtype=np.int32)
            for j, m in enumerate(per_image):
                arr[j, : m[cat].shape[0]] = m[cat]
            masks[cat] = arr
        per_labels = [self.load_labels(i) for i in order]
        labels = {}
        for cat in self.image_categories:
            k = max(len(lab[cat]) for lab in per_labels)
            arr = np.zeros((b, k), dtype=np.int32)
            for j, lab in enumerate(per_labels):
                arr[j, : len(lab[cat])] = lab[cat]
            labels[cat] = arr
        return BrodenBatch(
            indices=np.array(order, dtype=np.int64),
            images=np.stack([self.load_image(i) for i in order]) if images else None,
            masks=masks,
            labels=labels,
            mask_shape=(sh, sw) if self.pixel_categories else self.image_size(first),
        )


# --------------------------------------------------------------------------------------------
# Writer


def _label_hits(chans: Sequence[np.ndarray]) -> Iterator[tuple[int, Callable[[], np.ndarray], int]]:
    """(label, lazy bool mask, pixel count) of each label > 0 in the union of mask channels."""
    if len(chans) == 1:
        ch = chans[0]
        counts = np.bincount(ch.ravel().astype(np.int64))
        for lab in np.flatnonzero(counts[1:]) + 1:
            yield int(lab), (lambda lab=lab: ch == lab), int(counts[lab])
        return
    stack = np.stack(chans)
    for lab in np.unique(stack):
        if lab:
            hit = (stack == lab).any(axis=0)
            yield int(lab), (lambda hit=hit: hit), int(hit.sum())


def _image_hwc(image: np.ndarray) -> np.ndarray:
    """A uint8 3 x H x W, 1 x H x W or H x W image as PIL wants it: H x W x 3 or H x W."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError("images must be uint8")
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img.transpose(1, 2, 0)
        if img.shape[2] == 1:
            img = img[..., 0]
    elif img.ndim != 2:
        raise ValueError(f"image must be 3 x H x W, 1 x H x W or H x W, got {img.shape}")
    return img


def _fmt(x: float) -> str:
    return f"{x:.6f}"


class BrodenWriter:
    """Writes a folder in the Broden layout.

    Register labels with :meth:`add_label` (numbers 1, 2, ... in call order), add images with
    :meth:`add_image`, then :meth:`close` writes the CSV files (atomically, ``index.csv`` last)
    with frequencies and coverages counted from the images added. Usable as a context manager
    (closes only when the block succeeds). Mask channels that are all 0 are not written.
    """

    def __init__(self, root: str | Path, *, pixel_categories: Sequence[str] = (), image_categories: Sequence[str] = ()):
        self.root = Path(root)
        self.pixel_categories = tuple(pixel_categories)
        self.image_categories = tuple(image_categories)
        cats = self.pixel_categories + self.image_categories
        if len(set(cats)) != len(cats) or not cats:
            raise ValueError("categories must be non-empty and distinct")
        for c in cats:
            if not re.match(r"^[A-Za-z0-9_\-]+$", c) or c in INDEX_META:
                raise ValueError(f"bad category name {c!r}")
        self.categories = cats
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        self._names: list[str] = []
        self._label_cats: list[tuple[str, ...]] = []
        self._syns: list[tuple[str, ...]] = []
        self._rows: list[list[object]] = []
        # statistics: per category and label, then per label over all its categories
        self._freq: dict[str, dict[int, int]] = {c: {} for c in cats}
        self._cov: dict[str, dict[int, float]] = {c: {} for c in cats}
        self._lfreq: dict[int, int] = {}
        self._lcov: dict[int, float] = {}
        self._cat_images = dict.fromkeys(cats, 0)
        self._closed = False
        self._dirs: set[Path] = set()
        self._tables: dict[str, np.ndarray] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._closed:
            self.close()

    def add_label(self, name: str, categories: str | Sequence[str], *, syns: Sequence[str] = ()) -> int:
        """Register a label in one or several categories; returns its number (1, 2, ...)."""
        cats = (categories,) if isinstance(categories, str) else tuple(categories)
        unknown = [c for c in cats if c not in self.categories]
        if unknown or not cats:
            raise ValueError(f"label {name!r}: unknown categories {unknown} (writer has {self.categories})")
        if len(self._names) >= MAX_LABEL:
            raise ValueError(f"at most {MAX_LABEL} labels fit in a mask PNG")
        self._names.append(name)
        self._label_cats.append(cats)
        self._syns.append(tuple(syns) or (name,))
        return len(self._names)

    def _check_labels(self, ids: np.ndarray, cat: str) -> None:
        table = self._tables.get(cat)
        if table is None or len(table) != len(self._names) + 1:
            table = np.zeros(len(self._names) + 1, dtype=bool)
            table[0] = True
            table[[n for n, cats in enumerate(self._label_cats, start=1) if cat in cats]] = True
            self._tables[cat] = table
        ids = np.asarray(ids)
        if ids.size == 0:
            return
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"label numbers of {cat!r} must be integers, got {ids.dtype}")
        bad = (ids < 0) | (ids >= len(table))
        if not bad.any():
            bad = ~table[ids]
        if bad.any():
            raise ValueError(f"label {int(ids[bad].flat[0])} is not registered in category {cat!r}")

    def add_image(
        self,
        image: np.ndarray,
        *,
        masks: Mapping[str, np.ndarray | Sequence[np.ndarray]] | None = None,
        labels: Mapping[str, Sequence[int]] | None = None,
        stem: str | None = None,
        split: str = "train",
    ) -> int:
        """Add one image (uint8 3 x H x W, 1 x H x W or H x W); returns its row index.

        ``masks``: pixel-level category -> label numbers, sh x sw or K x sh x sw (or a list of
        sh x sw arrays), all of one size. ``labels``: image-level category -> label numbers.
        Files go to ``images/<stem>.png`` and ``images/<stem>_<category>[_<k>].png``.
        """
        if self._closed:
            raise ValueError("writer is closed")
        masks = dict(masks or {})
        labels = dict(labels or {})
        for c in masks:
            if c not in self.pixel_categories:
                raise ValueError(f"{c!r} is not a pixel-level category of this writer")
        for c in labels:
            if c not in self.image_categories:
                raise ValueError(f"{c!r} is not an image-level category of this writer")
        img = _image_hwc(image)
        ih, iw = img.shape[:2]
        index = len(self._rows)
        stem = f"{index:06d}" if stem is None else stem
        img_rel = f"{stem}.png"
        channels, shape = self._mask_channels(masks)
        sh, sw = shape if shape is not None else (ih, iw)
        image_ids = self._image_label_ids(labels)

        # everything checked: write the files
        Image.fromarray(np.ascontiguousarray(img)).save(self._path(img_rel))
        row: list[object] = [img_rel, split, ih, iw, sh, sw]
        # label -> (lazy pixel union, its pixel count); None = whole image
        present: dict[int, tuple[Callable[[], np.ndarray], int] | None] = {}
        npix = float(sh * sw)
        for c in self.pixel_categories:
            row.append(self._add_masks(stem, c, channels.get(c, []), present, npix))
        for c in self.image_categories:
            row.append(self._add_image_labels(c, image_ids[c], present))
        for lab, hit in present.items():
            self._lfreq[lab] = self._lfreq.get(lab, 0) + 1
            self._lcov[lab] = self._lcov.get(lab, 0.0) + (1.0 if hit is None else hit[1] / npix)
        self._rows.append(row)
        return index

    def _mask_channels(self, masks: Mapping[str, np.ndarray | Sequence[np.ndarray]]
                       ) -> tuple[dict[str, list[np.ndarray]], tuple[int, ...] | None]:
        """:meth:`add_image`'s ``masks`` checked: per category its non-empty sh x sw channels, and
        the one mask size (``None`` without masks)."""
        channels: dict[str, list[np.ndarray]] = {}
        shape = None
        for c, m in masks.items():
            if isinstance(m, (list, tuple)):
                if not m:
                    continue
                arr = np.stack([np.asarray(x) for x in m])
            else:
                arr = np.asarray(m)
            if arr.ndim == 2:
                arr = arr[None]
            if arr.ndim != 3:
                raise ValueError(f"masks[{c!r}] must be sh x sw or K x sh x sw, got {arr.shape}")
            if shape is None:
                shape = arr.shape[1:]
            elif arr.shape[1:] != shape:
                raise ValueError(f"masks of one image must share a size: {arr.shape[1:]} vs {shape}")
            self._check_labels(arr, c)
            channels[c] = [a for a in arr if a.any()]
        return channels, shape

    def _image_label_ids(self, labels: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
        """:meth:`add_image`'s ``labels`` checked: per image-level category its label numbers,
        each once, without 0."""
        image_ids = {}
        for c in self.image_categories:
            ids = [int(x) for x in labels.get(c, ())]
            self._check_labels(np.asarray(ids, dtype=np.int64), c)
            image_ids[c] = list(dict.fromkeys(x for x in ids if x != 0))
        return image_ids

    def _add_masks(self, stem: str, c: str, chans: list[np.ndarray],
                   present: dict[int, tuple[Callable[[], np.ndarray], int] | None], npix: float) -> str:
        """Write the mask PNGs of category ``c`` and count its labels (``present``: the image's
        labels so far, their pixels merged); returns the index.csv cell."""
        files = []
        for k, ch in enumerate(chans, start=1):
            rel = f"{stem}_{c}.png" if len(chans) == 1 else f"{stem}_{c}_{k}.png"
            Image.fromarray(encode_mask(ch)).save(self._path(rel))
            files.append(rel)
        if chans:
            self._cat_images[c] += 1
            for lab, hit, count in _label_hits(chans):
                self._freq[c][lab] = self._freq[c].get(lab, 0) + 1
                self._cov[c][lab] = self._cov[c].get(lab, 0.0) + count / npix
                if lab not in present:
                    present[lab] = (hit, count)
                elif present[lab] is not None:
                    union = present[lab][0]() | hit()
                    present[lab] = (lambda u=union: u, int(union.sum()))
        return ";".join(files)

    def _add_image_labels(self, c: str, ids: list[int],
                          present: dict[int, tuple[Callable[[], np.ndarray], int] | None]) -> str:
        """Count the image-level labels ``ids`` of category ``c`` (each covers the whole image);
        returns the index.csv cell."""
        if ids:
            self._cat_images[c] += 1
        for lab in ids:
            self._freq[c][lab] = self._freq[c].get(lab, 0) + 1
            self._cov[c][lab] = self._cov[c].get(lab, 0.0) + 1.0
            present[lab] = None
        return ";".join(str(x) for x in ids)

    def _path(self, rel: str) -> Path:
        path = self.root / "images" / rel
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        return path

    def close(self) -> Path:
        """Write the CSV files (``index.csv`` last); returns the folder."""
        if self._closed:
            return self.root
        n = len(self._names)
        for c in self.categories:
            members = [lab for lab in range(1, n + 1) if c in self._label_cats[lab - 1]]
            rows = [
                [code, lab, self._names[lab - 1], self._freq[c].get(lab, 0), _fmt(self._cov[c].get(lab, 0.0))]
                for code, lab in enumerate(members, start=1)
            ]
            dio.write_text(self.root / f"c_{c}.csv", dio.csv_text(rows, CODE_COLUMNS))
        cat_rows = []
        for c in self.categories:
            members = [lab for lab in range(1, n + 1) if c in self._label_cats[lab - 1]]
            cat_rows.append([c, min(members, default=0), max(members, default=0), len(members), self._cat_images[c]])
        dio.write_text(self.root / CATEGORY_FILE, dio.csv_text(cat_rows, CATEGORY_COLUMNS))
        label_rows = []
        for lab in range(1, n + 1):
            cats = ";".join(f"{c}({self._freq[c].get(lab, 0)})" for c in self._label_cats[lab - 1])
            label_rows.append(
                [lab, self._names[lab - 1], cats, self._lfreq.get(lab, 0), _fmt(self._lcov.get(lab, 0.0)), ";".join(self._syns[lab - 1])]
            )
        dio.write_text(self.root / LABEL_FILE, dio.csv_text(label_rows, LABEL_COLUMNS))
        dio.write_text(self.root / INDEX_FILE, dio.csv_text(self._rows, INDEX_META + self.categories))
        self._closed = True
        return self.root

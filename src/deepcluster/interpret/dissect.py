"""Network dissection: which concept of a Broden-format probe each unit of a layer detects.

The algorithm is NetDissect-Lite's (Bau, Zhou et al., "Network Dissection", CVPR 2017; the
``CSAILVision/NetDissect-Lite`` code, whose ``tally.csv`` we write), streamed:

**Pass 1 -- thresholds.** Every probe image goes through the model up to ``layer`` (a forward
hook stops the forward there). For each unit ``u`` the threshold ``T_u`` is the top-``quantile``
quantile of its activations over all images and positions -- ``np.percentile(a, 100 * (1 - q))``
with linear interpolation, as NetDissect-Lite's ``quantile_threshold`` computes it from its
memory-mapped features. Two methods, neither keeping the activations
(:mod:`deepcluster.interpret.quantile`):

* ``exact``: a running per-unit top-``k`` (``k = ceil((n - 1) q) + 2`` for ``n = images x h x
  w`` values per unit), which gives numpy's percentile exactly. Memory: ``units x k`` floats.
* ``sketch``: per-unit adaptive-range histograms of ``SKETCH_BINS`` bins, with an error below
  0.1 % of the unit's activation span. Memory: ``units x SKETCH_BINS`` counts, whatever the
  probe's size.
* ``auto`` (default): ``exact`` when its buffer fits ``memory_budget_mb``, else ``sketch``.

The per-unit top ``top_images`` images by maximum activation are kept in the same pass.

**Pass 2 -- IoU.** The images go through the model again with their concept masks (``sh x sw``).
For each image and unit whose map maximum exceeds ``T_u`` (any other pair has an empty mask:
bilinear up-sampling never exceeds the map's maximum), the map is up-sampled bilinearly to
``sh x sw`` (``align_corners=False``, like NetDissect-Lite's ``imresize(..., mode='F')``) and
thresholded (``> T_u``). Counted per unit ``u`` and concept ``c``:

* ``intersect[u, c]``: activated pixels carrying ``c``. Pixel-level categories (``color,
  object, part, material``) use their masks; an image-level label (``scene, texture``) covers
  the whole image, as in NetDissect-Lite. A pixel carrying ``c`` in several mask channels or
  categories counts once.
* ``truth[c]``: pixels carrying ``c`` (``sh x sw`` per image for image-level labels).
* ``activation[u, c]``: activated pixels of ``u`` over the images where one of ``c``'s categories
  is annotated (has an entry in ``index.csv``), as in NetDissect: an image with no scene label
  is not evidence against a scene concept.

``IoU[u, c] = intersect / (activation + truth - intersect)`` (0 when the union is empty). A unit
is *labelled* with its best concept when that IoU reaches ``iou_threshold`` (NetDissect-Lite's
``SCORE_THRESHOLD``, 0.04); the best concept of each category is kept too ("category-aware").
A concept belongs to every category it is listed in (``label.csv``, ``c_<cat>.csv``); the
category reported for a unit is its best concept's primary category (the one listing it in
the most images).

``union="lite"`` reproduces NetDissect-Lite's ``tally`` arithmetic (``feature_operation.py``)
instead, for comparisons with numbers it published:

* each concept belongs to one category, Lite's primary: the one where its ``c_<cat>.csv``
  coverage is largest (:func:`lite_primary_category`);
* ``activation[u, c]`` counts the activated pixels of ``u`` on an image when one of them carries
  a concept of ``c``'s category (in any mask channel) or the image has an image-level label of
  that category -- per labelled pixel, not per annotated image, so an image whose annotation
  misses the unit's region is not counted;
* nothing is de-duplicated: a concept present in two mask channels, or given twice, counts
  twice in ``truth`` and ``intersect``;
* ``IoU = intersect / (activation + truth - intersect + 1e-10)``.

Lite resizes with ``scipy.misc.imresize(mode='F')`` (PIL's bilinear filter); for up-sampling it
equals the bilinear ``align_corners=False`` used here. Lite's result differs from ours on units
scoring 0 only in which (meaningless) label it names.

The settings named above (``quantile``, ``method``, ``memory_budget_mb``, ``top_images``,
``iou_threshold``, ``union``) are fields of :class:`DissectOptions`, passed to :func:`dissect`
(one model) or :func:`dissect_many` (several, the probe read once per pass for all).

**Reading the probe.** Each pass reads the probe through a ``torch.utils.data.DataLoader``
whose ``num_workers`` worker processes (:attr:`DissectOptions.num_workers`) decode the batches
in order while the models compute: pass 1 the images, pass 2 the concept masks too, tabulated
into concept columns in the worker (and the images only when a model has no cached
activations). Batches arrive as CPU tensors, pinned when the device is a GPU, and are copied
to it without blocking. Every tensor the passes compute lives on the dissection's device,
except the activations cached between the passes (on the CPU, pinned for a GPU) and the
units' packed regions for the page (numpy).

Everything is float32 on the model's side and float64 counts; CUDA is used when present.
Output files: :func:`deepcluster.interpret.dissect_report.write_dissection`; ``tally.csv`` is
read back by :func:`deepcluster.interpret.tally.read_tally`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from deepcluster.core.device import resolve_device
from deepcluster.core.errors import ConfigError, DataError, first_line
from deepcluster.core.precision import FP32, Precision
from deepcluster.core.progress import progress_bar
from deepcluster.data.source import default_workers
from deepcluster.interpret.broden import BrodenBatch, BrodenDataset
from deepcluster.interpret.model_source import resolve_layer
from deepcluster.interpret.quantile import HistogramQuantile, TopKQuantile
from deepcluster.models.hooks import capture_outputs

__all__ = [
    "IOU_THRESHOLD",
    "MAX_NUM_WORKERS",
    "QUANTILE",
    "UNIONS",
    "DissectOptions",
    "DissectResult",
    "DissectTarget",
    "cache_dir",
    "default_concepts",
    "default_num_workers",
    "dissect",
    "dissect_many",
    "lite_primary_category",
]

#: Top quantile of each unit's activations that counts as "active" (NetDissect-Lite's QUANTILE).
QUANTILE = 0.005
#: Minimum IoU for a unit to be labelled (NetDissect-Lite's SCORE_THRESHOLD).
IOU_THRESHOLD = 0.04
#: How activated pixels enter a concept's union (:attr:`DissectOptions.union`).
UNIONS = ("annotated", "lite")
#: Top images kept per unit (strips of the HTML page).
TOP_IMAGES = 8
#: Up-sampled maps handled at once in pass 2 (elements: 32 MB of float32), bounding its memory.
_PAIR_CHUNK = 1 << 23
#: Largest default of :attr:`DissectOptions.num_workers` (:func:`default_num_workers`).
MAX_NUM_WORKERS = 16
#: Batches each loader worker decodes ahead.
_PREFETCH = 2
_LUMA = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------------------------
# Cache of the built-in probe


def cache_dir() -> Path:
    """``$DEEPCLUSTER_CACHE``, else ``$XDG_CACHE_HOME/deepcluster``, else ``~/.cache/deepcluster``."""
    env = os.environ.get("DEEPCLUSTER_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "deepcluster"


def default_concepts(*, show_progress: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """The built-in concept probe (1000 images at 64 px), generated once into :func:`cache_dir`.

    ``log`` gets a line before the probe is generated (what, where, about how long) and one when
    it is ready; nothing when the cached probe is reused.
    """
    from deepcluster.interpret.concepts import DEFAULT_N_IMAGES, DEFAULT_SIZE, make_concept_probe, probe_is_made

    root = cache_dir() / "concept_probe"
    made = probe_is_made(root)
    if not made and log is not None:
        log(f"making the built-in concept probe ({DEFAULT_N_IMAGES} images of {DEFAULT_SIZE} px, once; later "
            f"dissections reuse it) in {root}: about 10 s of one core, longer on a busy machine")
    start = time.perf_counter()
    try:
        root = make_concept_probe(root, show_progress=show_progress)
    except OSError:  # another process renamed its copy into place first
        root = make_concept_probe(root, show_progress=False)
    if not made and log is not None:
        log(f"concept probe ready in {time.perf_counter() - start:.1f} s")
    return root


# --------------------------------------------------------------------------------------------
# Result


@dataclass
class DissectResult:
    """Counts and IoUs of one dissection. Row ``u`` of every array is unit ``u + 1`` of tally.csv."""

    model: str
    layer: str
    #: Module path of the layer inside the model.
    module: str
    quantile: float
    iou_threshold: float
    method: str
    concepts_root: str
    n_images: int
    #: Categories of the probe, in ``category.csv`` order.
    categories: tuple[str, ...]
    #: Concepts (IoU columns): label numbers, names, primary category, all (loaded) categories.
    label_numbers: np.ndarray
    label_names: list[str]
    label_primary: list[str]
    label_categories: list[tuple[str, ...]]
    #: (units,) float32.
    thresholds: np.ndarray
    #: (units, concepts) float64 counts and float32 IoU.
    intersect: np.ndarray
    activation: np.ndarray
    truth: np.ndarray
    iou: np.ndarray
    #: (units,) activated pixels over the whole probe.
    unit_pixels: np.ndarray
    #: (units, top) indices of each unit's top images by maximum activation, and those maxima.
    top_images: np.ndarray
    top_values: np.ndarray
    #: (units, top, sh, ceil(sw / 8)) packed bits: the unit's thresholded region on its top images.
    top_masks: np.ndarray
    feature_shape: tuple[int, int]
    mask_shape: tuple[int, int]
    image_shape: tuple[int, int]
    input_shape: tuple[int, ...]
    preprocess: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    precision: str = "fp32"
    #: True when pass 2 reused pass 1's activations instead of running the model again.
    cached_features: bool = False
    #: How activated pixels enter the unions: ``annotated`` or ``lite`` (:attr:`DissectOptions.union`).
    union: str = "annotated"

    @property
    def units(self) -> int:
        return int(self.iou.shape[0])

    def region(self, unit: int, slot: int) -> np.ndarray:
        """Bool ``sh x sw``: where unit ``unit`` (0-based) fires on its ``slot``-th top image."""
        sw = self.mask_shape[1]
        return np.unpackbits(self.top_masks[unit, slot], axis=-1, count=sw).astype(bool)

    def best(self) -> tuple[np.ndarray, np.ndarray]:
        """Per unit: column of its best concept (``-1`` without concepts) and that IoU."""
        if self.iou.shape[1] == 0:
            return np.full(self.units, -1), np.zeros(self.units, np.float32)
        col = self.iou.argmax(1)
        return col, self.iou[np.arange(self.units), col]

    def best_per_category(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Category -> per unit: column of the best concept in that category (``-1`` if none), IoU."""
        out = {}
        for cat in self.categories:
            member = np.array([cat in cats for cats in self.label_categories], dtype=bool)
            if not member.any():
                out[cat] = (np.full(self.units, -1), np.zeros(self.units, np.float32))
                continue
            masked = np.where(member[None], self.iou, -np.inf)
            col = masked.argmax(1)
            out[cat] = (col, self.iou[np.arange(self.units), col])
        return out

    def labelled(self) -> np.ndarray:
        """Bool per unit: best IoU >= ``iou_threshold`` (and > 0)."""
        _, score = self.best()
        return (score >= self.iou_threshold) & (score > 0)

    def unit_category(self, col: int) -> str:
        if col < 0:
            return ""
        primary = self.label_primary[col]
        return primary if primary in self.label_categories[col] else self.label_categories[col][0]

    def tally_rows(self) -> list[dict[str, Any]]:
        """NetDissect-Lite's tally rows: every unit (1-based), best score first."""
        col, score = self.best()
        per_cat = self.best_per_category()
        order = sorted(range(self.units), key=lambda u: (-float(score[u]), u))
        rows = []
        for u in order:
            c = int(col[u])
            row: dict[str, Any] = {
                "unit": u + 1,
                "category": self.unit_category(c),
                "label": self.label_names[c] if c >= 0 else "",
                "score": float(score[u]),
            }
            for cat in self.categories:
                cc, s = per_cat[cat]
                k = int(cc[u])
                row[f"{cat}-label"] = self.label_names[k] if k >= 0 else ""
                row[f"{cat}-truth"] = float(self.truth[k]) if k >= 0 else 0.0
                row[f"{cat}-activation"] = float(self.activation[u, k]) if k >= 0 else 0.0
                row[f"{cat}-intersect"] = float(self.intersect[u, k]) if k >= 0 else 0.0
                row[f"{cat}-iou"] = float(s[u])
            rows.append(row)
        return rows

    def summary(self) -> dict[str, Any]:
        """What summary.json holds: settings, counts per category, top concepts, timings."""
        col, score = self.best()
        lab = self.labelled()
        units_per_cat: Counter[str] = Counter()
        concepts_per_cat: dict[str, set[str]] = {c: set() for c in self.categories}
        concept_units: Counter[tuple[str, str]] = Counter()
        for u in np.flatnonzero(lab):
            cat = self.unit_category(int(col[u]))
            name = self.label_names[int(col[u])]
            units_per_cat[cat] += 1
            concepts_per_cat.setdefault(cat, set()).add(name)
            concept_units[(name, cat)] += 1
        top = [
            {"concept": name, "category": cat, "units": n}
            for (name, cat), n in sorted(concept_units.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        return {
            "model": self.model,
            "layer": self.layer,
            "module": self.module,
            "concepts": self.concepts_root,
            "n_images": self.n_images,
            "quantile": self.quantile,
            "iou_threshold": self.iou_threshold,
            "quantile_method": self.method,
            "n_units": self.units,
            "n_labelled": int(lab.sum()),
            "n_concepts": len(self.label_names),
            "mean_best_iou": float(score.mean()) if self.units else 0.0,
            "units_per_category": {c: int(units_per_cat.get(c, 0)) for c in self.categories},
            "unique_concepts_per_category": {c: len(concepts_per_cat.get(c, ())) for c in self.categories},
            "unique_concepts": len(concept_units),
            "top_concepts": top,
            "feature_shape": list(self.feature_shape),
            "mask_shape": list(self.mask_shape),
            "input_shape": list(self.input_shape),
            "preprocess": self.preprocess,
            "device": self.device,
            "precision": self.precision,
            "cached_features": self.cached_features,
            "union": self.union,
            "units_numbering": "tally.csv units are 1-based (NetDissect-Lite); rows of thresholds.npy and iou.npy are unit - 1",
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


# --------------------------------------------------------------------------------------------
# Model plumbing


def _read_layer(model: nn.Module, path: str, module: nn.Module, x: torch.Tensor,
                precision: Precision = FP32) -> torch.Tensor:
    """Run ``model`` on ``x`` until ``module`` (``path`` inside it) has produced its output, and
    return that output as float (B, C, H, W) maps (a (B, C) output gives (B, C, 1, 1))."""
    try:
        with precision.autocast():
            outputs = capture_outputs(model, precision.input(x), {path: module})
    except (RuntimeError, ValueError, TypeError) as exc:
        if isinstance(exc, torch.OutOfMemoryError):
            raise
        raise ConfigError(
            f"the model fails on inputs of shape {tuple(x.shape)} ({first_line(exc)}): check its input size "
            "(--input-size) and channels"
        ) from None
    out = outputs.get(path)
    if out is None:
        raise ConfigError(f"layer {path!r} is not reached by the model's forward pass: pick another layer")
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"layer {path!r} outputs a {type(out).__name__}, not a tensor: pick another layer")
    if out.ndim == 2:
        out = out[:, :, None, None]  # vectors: one value per image, covering the whole image
    if out.ndim != 4:
        raise ConfigError(
            f"layer {path!r} outputs tensors of shape {tuple(out.shape)}: dissection needs (B, C, H, W) "
            "maps or (B, C) vectors"
        )
    return out.detach().float()


class _Prepare:
    def __init__(self, device: torch.device, grey: bool, size: int | None, mean, std):
        self.device, self.grey, self.size = device, grey, size
        ch = 1 if grey else 3
        mean = tuple(float(m) for m in mean)
        std = tuple(float(s) for s in std)
        if len(mean) == 1:
            mean = mean * ch
        if len(std) == 1:
            std = std * ch
        if len(mean) != ch or len(std) != ch:
            raise ConfigError(f"mean/std need {ch} value(s) for {'grey' if grey else 'RGB'} inputs, got {len(mean)}/{len(std)}")
        if any(s <= 0 for s in std):
            raise ConfigError("std values must be > 0")
        #: Targets whose inputs are prepared alike share them (:class:`_Reader`).
        self.key = (grey, size, mean, std)
        self.mean = torch.tensor(mean, device=device).view(1, ch, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, ch, 1, 1)
        self.luma = torch.tensor(_LUMA, device=device).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, ih, iw) images on the CPU (pinned for a GPU) -> the model's float inputs on the device."""
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        if self.grey:
            x = (x * self.luma).sum(1, keepdim=True)
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            down = self.size < min(x.shape[-2:])
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=down)
        return (x - self.mean) / self.std


# --------------------------------------------------------------------------------------------
# Concept tables


def lite_primary_category(probe: BrodenDataset, number: int) -> str:
    """NetDissect-Lite's category of label ``number``: among the categories listing it, the one
    where its coverage (``c_<category>.csv``) is largest, the later one in ``category.csv`` on
    ties (Lite's ``primary_categories_per_index``)."""
    cats = list(probe.categories)
    scores = [(probe.categories[c].stats.get(number, (0, 0.0))[1] if number in probe.categories[c].labels else 0, i)
              for i, c in enumerate(cats)]
    return cats[max(scores)[1]]


class _Concepts:
    """Label columns of the probe, and the label tensors of a batch that pass 2 counts with.

    With ``lite``, each concept belongs to its NetDissect-Lite category only
    (:func:`lite_primary_category`) and a batch's labels are not de-duplicated: Lite counts a
    concept once per mask channel (and per image-level entry) carrying it.
    """

    def __init__(self, probe: BrodenDataset, *, lite: bool = False):
        cats = tuple(probe.categories)
        members: dict[int, list[str]] = {}
        for num, lab in probe.labels.items():
            in_cats = [c for c in cats if c in lab.categories or num in probe.categories[c].labels]
            if in_cats:
                members[num] = in_cats
        if lite:
            members = {num: [lite_primary_category(probe, num)] for num in members}
        self.lite = lite
        self.numbers = np.array(sorted(members), dtype=np.int64)
        self.names = [probe.labels[int(n)].name for n in self.numbers]
        self.cats = [tuple(members[int(n)]) for n in self.numbers]
        self.primary = [members[int(n)][0] if lite else probe.labels[int(n)].category or members[int(n)][0]
                        for n in self.numbers]
        top = int(self.numbers.max()) if len(self.numbers) else 0
        self.lut = np.zeros(top + 1, dtype=np.int32)
        self.lut[self.numbers] = np.arange(1, len(self.numbers) + 1)  # column + 1; 0 = no concept
        self.categories = cats
        self.index = {c: i for i, c in enumerate(cats)}
        self.sets = sorted(set(self.cats))
        self.set_of = np.array([self.sets.index(c) for c in self.cats], dtype=np.int64)
        self.set_members = np.zeros((len(self.sets), len(cats)), dtype=bool)
        for s, cs in enumerate(self.sets):
            for c in cs:
                self.set_members[s, self.index[c]] = True
        # category pairs sharing a concept: only their channels can repeat a concept on a pixel
        self.shared = {(a, b) for cs in self.cats for a in cs for b in cs}
        self.shared |= {(c, c) for c in cats}
        #: Column + 1 -> index of the concept's (first) category; column 0 (no concept) -> len(cats).
        self.column_category = np.array([len(cats)] + [self.index[c[0]] for c in self.cats], dtype=np.int64)

    def columns(self, raw: np.ndarray) -> np.ndarray:
        """Label numbers -> column + 1 (int32; 0 for no label or a label outside the columns)."""
        raw = np.asarray(raw)
        if raw.size and (raw.min() < 0 or raw.max() >= len(self.lut)):
            inside = (raw >= 0) & (raw < len(self.lut))
            return np.where(inside, self.lut[np.clip(raw, 0, len(self.lut) - 1)], 0).astype(np.int32)
        return self.lut[raw]

    def tabulate(self, batch: BrodenBatch, mask_pixels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel columns (images, K, mask_pixels) and image columns (images, J), int32 (each
        concept once per pixel / image unless ``lite``), and the categories annotated in each
        image ((images, categories) bool). Numpy only: the probe's loader workers run it."""
        batch_len = len(batch)
        annotated = np.zeros((batch_len, len(self.categories)), dtype=bool)
        pix_parts, pix_cats, img_parts, img_cats = [], [], [], []
        for c, m in batch.masks.items():
            if m.shape[1]:
                cols = self.columns(m.reshape(batch_len, m.shape[1], mask_pixels))
                annotated[:, self.index[c]] = (m != 0).reshape(batch_len, -1).any(1)
                pix_parts.append(cols)
                pix_cats += [c] * m.shape[1]
        for c, lab in batch.labels.items():
            if lab.shape[1]:
                annotated[:, self.index[c]] = (lab != 0).any(1)
                img_parts.append(self.columns(lab))
                img_cats += [c] * lab.shape[1]
        pix = np.concatenate(pix_parts, 1) if pix_parts else np.zeros((batch_len, 0, mask_pixels), np.int32)
        img = np.concatenate(img_parts, 1) if img_parts else np.zeros((batch_len, 0), np.int32)
        if self.lite:
            return pix, img, annotated
        for j in range(1, img.shape[1]):
            img[:, j] = np.where((img[:, j : j + 1] == img[:, :j]).any(1), 0, img[:, j])
        for j, cj in enumerate(img_cats):  # a concept given for the whole image covers its pixels
            for k, ck in enumerate(pix_cats):
                if (cj, ck) in self.shared:
                    rows = np.flatnonzero(img[:, j])
                    if len(rows):
                        sub = pix[rows, k]
                        sub[sub == img[rows, j, None]] = 0
                        pix[rows, k] = sub
        for k in range(1, pix.shape[1]):
            earlier = [i for i in range(k) if (pix_cats[i], pix_cats[k]) in self.shared]
            if earlier:
                dup = (pix[:, k : k + 1] == pix[:, earlier]).any(1)
                pix[:, k][dup] = 0
        return pix, img, annotated


# --------------------------------------------------------------------------------------------
# Reading the probe: DataLoader worker processes


def default_num_workers() -> int:
    """:attr:`DissectOptions.num_workers`'s default: training's decode workers
    (:func:`~deepcluster.data.source.default_workers`: the cores this process may run on, shared
    among torchrun's local ranks), at most ``MAX_NUM_WORKERS``."""
    return min(MAX_NUM_WORKERS, default_workers())


class _Batch(NamedTuple):
    """One item of the probe's loader: a batch of probe images, decoded. CPU tensors, pinned
    when the dissection runs on a GPU; a field a pass does not read is None."""

    #: int64 (B,): the images' rows of index.csv.
    indices: torch.Tensor
    #: uint8 (B, 3, ih, iw).
    images: torch.Tensor | None = None
    #: (B, K, sh * sw) and (B, J) int32: the concept columns of the pixels and of the images
    #: (:meth:`_Concepts.tabulate`; pass 2). ``pix`` is int16 when the columns fit, halving what
    #: the workers pass through shared memory.
    pix: torch.Tensor | None = None
    img: torch.Tensor | None = None
    #: bool (B, categories): the categories annotated in each image (pass 2).
    annotated: torch.Tensor | None = None
    #: A :class:`~deepcluster.core.errors.DataError` met while reading (a missing or corrupt
    #: file), raised again as it is by the main process.
    error: str = ""


class _ProbeBatches(Dataset):
    """Item ``b``: batch ``b`` of the probe, decoded -- what a DataLoader worker process computes.

    It holds only what the workers need, cheap to pickle: the probe (its file names and
    index.csv's entries), the batches' indices and, for pass 2, the concept table (label
    numbers to columns) -- no model, activation or count.
    """

    def __init__(self, probe: BrodenDataset, batch_size: int, *, images: bool = True,
                 table: _Concepts | None = None, mask_pixels: int = 0):
        n = len(probe)
        self.probe, self.images, self.table, self.mask_pixels = probe, images, table, mask_pixels
        self.narrow = table is not None and len(table.numbers) < np.iinfo(np.int16).max
        self.batches = [np.arange(lo, min(lo + batch_size, n), dtype=np.int64) for lo in range(0, n, batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> _Batch:
        indices = self.batches[b]
        try:
            if self.table is None:  # pass 1: the images only
                images = np.stack([self.probe.load_image(int(i)) for i in indices])
                return _Batch(torch.from_numpy(indices), torch.from_numpy(images))
            batch = self.probe.batch(indices, images=self.images)
            pix, img, annotated = self.table.tabulate(batch, self.mask_pixels)
            if self.narrow:
                pix = pix.astype(np.int16)
        except DataError as exc:
            return _Batch(torch.from_numpy(indices), error=str(exc))
        return _Batch(torch.from_numpy(indices), None if batch.images is None else torch.from_numpy(batch.images),
                      torch.from_numpy(pix), torch.from_numpy(img), torch.from_numpy(annotated))


def _probe_loader(batches: _ProbeBatches, options: DissectOptions, device: torch.device) -> Iterator[_Batch]:
    """``batches``' items in order, decoded by ``options.num_workers`` worker processes
    (``_PREFETCH`` batches ahead each; in this process for 0, or for a single batch), pinned
    for a GPU."""
    workers = min(options.num_workers, len(batches)) if len(batches) > 1 else 0
    loader = DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", prefetch_factor=_PREFETCH if workers else None,
                        persistent_workers=False)
    items = iter(loader)
    try:
        for batch in items:
            if batch.error:
                raise DataError(batch.error)
            yield batch
    finally:
        del items  # the workers stop now, also when the dissection fails or stops early


# --------------------------------------------------------------------------------------------
# The algorithm


def _check_uniform(probe: BrodenDataset) -> tuple[tuple[int, int], tuple[int, int]]:
    img = {probe.image_size(i) for i in range(len(probe))}
    msk = {probe.mask_size(i) for i in range(len(probe))}
    if len(img) > 1 or len(msk) > 1:
        raise DataError(
            f"the images of {probe.root} differ in size ({len(img)} image sizes, {len(msk)} mask sizes): dissection "
            "needs one image size and one mask size; resample the probe"
        )
    return img.pop(), msk.pop()


@dataclass
class DissectTarget:
    """One network for :func:`dissect_many`: the model, its layer, and how its inputs are made.

    ``input_size``, ``mean``, ``std``, ``grey`` and ``precision`` are :func:`dissect`'s arguments
    of the same names; ``name`` is recorded in the result (default: the model's class name).
    """

    model: nn.Module
    layer: str
    input_size: int | None = None
    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.5,)
    grey: bool = False
    precision: Precision = FP32
    name: str = ""


@dataclass(frozen=True)
class DissectOptions:
    """How one dissection runs: the settings shared by every model of :func:`dissect_many`.

    The fields are stored as given and checked once, by :meth:`validate`, when a dissection
    starts (as scikit-learn checks an estimator's parameters in ``fit``);
    :func:`dissect` and :func:`dissect_many` call it. ``dataclasses.replace(options, ...)``
    derives a variant. The defaults are fixed but ``num_workers``'s, which is this machine's:
    the cores this process may use (:func:`default_num_workers`), read when the options are
    made. ``num_workers`` changes how fast the probe is read, never the result.
    """

    #: Top quantile of each unit's activations that counts as active, in (0, 1)
    #: (NetDissect-Lite's ``QUANTILE``, 0.005).
    quantile: float = QUANTILE
    #: Minimum IoU for a unit to be labelled, in [0, 1] (NetDissect-Lite's ``SCORE_THRESHOLD``, 0.04).
    iou_threshold: float = IOU_THRESHOLD
    #: Images per forward pass (>= 1).
    batch_size: int = 64
    #: How pass 1 computes the thresholds: ``auto``, ``exact`` or ``sketch`` (module docstring).
    method: str = "auto"
    #: ``auto`` (CUDA when present), ``cpu``, ``cuda``... or a ``torch.device``.
    device: str | torch.device = "auto"
    #: Progress bars for the two passes.
    show_progress: bool = True
    #: Top-activating images kept per unit, with the unit's region on them (>= 1).
    top_images: int = TOP_IMAGES
    #: Worker processes of the probe's DataLoader, decoding its PNG files (and tabulating the
    #: concept masks for pass 2) while the models compute, each ``_PREFETCH`` batches ahead;
    #: ``0`` reads in this process, between forward passes. Default: the cores available to
    #: this process, divided among torchrun's local ranks, at most ``MAX_NUM_WORKERS``
    #: (:func:`default_num_workers`). A probe of one batch is always read in this process.
    num_workers: int = field(default_factory=default_num_workers)
    #: Memory the ``exact`` method may use in ``auto`` mode, per model.
    memory_budget_mb: float = 256
    #: When the layers' activations over the whole probe take at most this much (all models
    #: together, first come first cached), pass 1 keeps them (on the CPU) and pass 2 skips its
    #: forward passes; ``0`` always recomputes them.
    feature_cache_mb: float = 512
    #: How a unit's activated pixels enter a concept's union (module docstring): ``annotated``,
    #: over the images where the concept's category is annotated (NetDissect's rule), or
    #: ``lite``, NetDissect-Lite's exact arithmetic.
    union: str = "annotated"

    def validate(self) -> DissectOptions:
        """``self`` when every field is in range, else :class:`~deepcluster.core.errors.ConfigError`."""
        if not 0.0 < self.quantile < 1.0:
            raise ConfigError(f"quantile must lie in (0, 1), got {self.quantile}")
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise ConfigError(f"iou_threshold must lie in [0, 1], got {self.iou_threshold}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.method not in ("auto", "exact", "sketch"):
            raise ConfigError(f"method must be auto, exact or sketch, got {self.method!r}")
        if self.top_images < 1:
            raise ConfigError(f"top_images must be >= 1, got {self.top_images}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.union not in UNIONS:
            raise ConfigError(f"union must be {' or '.join(UNIONS)}, got {self.union!r}")
        return self


def _options(options: DissectOptions | None) -> DissectOptions:
    """``options``, checked (default: :class:`DissectOptions`'s defaults, NetDissect-Lite's settings)."""
    options = DissectOptions() if options is None else options
    if not isinstance(options, DissectOptions):
        raise TypeError(f"options must be a DissectOptions, got {type(options).__name__}")
    return options.validate()


def dissect(
    model: nn.Module,
    layer: str,
    concepts: BrodenDataset | str | Path,
    options: DissectOptions | None = None,
    *,
    input_size: int | None = None,
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
    grey: bool = False,
    precision: Precision = FP32,
    model_name: str = "",
) -> DissectResult:
    """Dissect ``layer`` of ``model`` on the Broden-format probe ``concepts`` (module docstring).

    Parameters
    ----------
    model : nn.Module
        Run in eval mode (moved to the options' ``device``); only the forward up to ``layer`` is
        computed.
    layer : str
        Module name (``dict(model.named_modules())``) or, for our nets, a probe name (``conv2``).
        Its output must be (B, C, H, W) maps or (B, C) vectors (one value per image).
    concepts : BrodenDataset or path
        The probe; all its images must share one size, and so must their masks.
    options : DissectOptions, optional
        Quantile, IoU threshold, union rule, threshold method, batch size, device, decoding
        processes...
        (:class:`DissectOptions`; default: its defaults, NetDissect-Lite's settings).
    input_size : int, optional
        Side the images are resized to (bilinear, anti-aliased when shrinking); default: as stored.
    mean, std : sequence of float
        Normalisation of [0, 1] pixels, one value or one per input channel.
    grey : bool
        Convert the RGB images to one grey channel (ITU-R 601 luma) first.
    precision : Precision
        Arithmetic of the forward passes (activations are compared in float32).
    model_name : str
        Name recorded in the result (default: the model's class name).

    Returns
    -------
    DissectResult
    """
    target = DissectTarget(model, layer, input_size=input_size, mean=mean, std=std, grey=grey, precision=precision,
                           name=model_name)
    return dissect_many([target], concepts, options)[0]


def dissect_many(
    targets: Sequence[DissectTarget],
    concepts: BrodenDataset | str | Path,
    options: DissectOptions | None = None,
) -> list[DissectResult]:
    """Dissect several networks on one probe, reading and decoding it once per pass for all.

    Each batch of probe images is decoded once and fed to every target (prepared once per
    distinct input size and normalisation), and each batch's concept masks are decoded and
    tabulated once; each target keeps its own thresholds and counts, so every result is the
    one :func:`dissect` gives for that target alone. ``memory_budget_mb`` (exact thresholds)
    applies to each target, ``feature_cache_mb`` to all of them together (first come, first
    cached). Timings are those of the shared passes. ``options``: :func:`dissect`.
    """
    t_start = time.perf_counter()
    if not targets:
        raise ConfigError("no model to dissect")
    options = _options(options)
    for t in targets:
        if t.input_size is not None and t.input_size < 1:
            raise ConfigError(f"input_size must be >= 1, got {t.input_size}")
    probe = _open_probe(concepts)
    paths = [resolve_layer(t.model, t.layer) for t in targets]
    dev = resolve_device(options.device)
    readers = _readers(targets, paths, dev)
    table = _Concepts(probe.data, lite=options.union == "lite")
    if not table.categories:
        raise DataError(f"the probe {probe.data.root} has no categories: its category.csv lists none")

    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        for t in targets:  # NHWC weights while inside; each read runs under its own model's autocast
            stack.enter_context(t.precision.layout(t.model))
        firsts = _threshold_pass(probe.data, readers, options, dev)
        t1 = time.perf_counter()
        seconds = _iou_pass(probe.data, table, readers, firsts, probe.mask_shape, options, dev)
    t2 = time.perf_counter()
    results = []
    for t, path, first, second in zip(targets, paths, firsts, seconds):
        timings = {"thresholds": t1 - t0, "iou": t2 - t1, "total": time.perf_counter() - t_start,
                   **({"models": len(targets)} if len(targets) > 1 else {})}
        results.append(_result(t, path, first, second, probe, table, options, dev, timings))
    return results


@dataclass
class _Probe:
    """The probe of a dissection, with the one image size and mask size of its images."""

    data: BrodenDataset
    image_shape: tuple[int, int]
    mask_shape: tuple[int, int]


def _open_probe(concepts: BrodenDataset | str | Path) -> _Probe:
    """``concepts`` read (when a path) and checked: images there, all of one size, masks too."""
    probe = concepts if isinstance(concepts, BrodenDataset) else BrodenDataset(concepts)
    if len(probe) == 0:
        raise DataError(f"the probe {probe.root} has no images: its index.csv lists none")
    image_shape, mask_shape = _check_uniform(probe)
    return _Probe(probe, image_shape, mask_shape)


def _readers(targets: Sequence[DissectTarget], paths: Sequence[str], dev: torch.device) -> list[_Reader]:
    """Each target's model in eval mode on ``dev``, and how it turns probe images into its layer's maps."""
    readers = []
    for t, path in zip(targets, paths):
        t.model.eval()
        t.model.to(dev)
        readers.append(_Reader(
            read=functools.partial(_read_layer, t.model, path, t.model.get_submodule(path), precision=t.precision),
            prepare=_Prepare(dev, t.grey, t.input_size, t.mean, t.std), layer=t.layer,
        ))
    return readers


def _result(t: DissectTarget, path: str, first: _ThresholdPass, second: _IouPass, probe: _Probe,
            table: _Concepts, options: DissectOptions, dev: torch.device, timings: dict[str, float]) -> DissectResult:
    """One target's :class:`DissectResult` from its two passes."""
    return DissectResult(
        model=t.name or type(t.model).__name__,
        layer=t.layer,
        module=path,
        quantile=float(options.quantile),
        iou_threshold=float(options.iou_threshold),
        method=first.method,
        concepts_root=str(probe.data.root),
        n_images=len(probe.data),
        categories=tuple(table.categories),
        label_numbers=table.numbers,
        label_names=table.names,
        label_primary=table.primary,
        label_categories=table.cats,
        thresholds=first.thresholds.cpu().numpy().astype(np.float32),
        intersect=second.intersect,
        activation=second.activation,
        truth=second.truth,
        iou=second.iou,
        unit_pixels=second.unit_pixels,
        top_images=first.top_images.cpu().numpy(),
        top_values=first.top_values.cpu().numpy(),
        top_masks=second.top_masks,
        feature_shape=first.feature_shape,
        mask_shape=probe.mask_shape,
        image_shape=probe.image_shape,
        input_shape=first.input_shape,
        preprocess={"input_size": t.input_size, "grey": bool(t.grey), "mean": [float(m) for m in t.mean],
                    "std": [float(s) for s in t.std]},
        timings=timings,
        device=str(dev),
        precision=t.precision.label,
        cached_features=first.features is not None,
        union=options.union,
    )


@dataclass
class _Reader:
    """How one target turns a batch of probe images into its layer's maps."""

    read: Callable[[torch.Tensor], torch.Tensor]
    prepare: _Prepare
    layer: str

    def __call__(self, images: torch.Tensor, prepared: dict[tuple, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, maps) of uint8 CPU ``images``; ``prepared`` shares the inputs between targets
        preparing them alike."""
        key = self.prepare.key
        if key not in prepared:
            prepared[key] = self.prepare(images)
        inputs = prepared[key]
        return inputs, self.read(inputs)


@dataclass
class _ThresholdPass:
    """What pass 1 found for one target (tensors on the dissection's device unless said otherwise)."""

    #: ``exact`` or ``sketch`` (``auto`` resolved).
    method: str
    #: (units,) float32: each unit's activation threshold.
    thresholds: torch.Tensor
    #: (units, n_top): each unit's largest map maxima, best first, and the images they come from.
    top_values: torch.Tensor
    top_images: torch.Tensor
    #: (images, units, feat_h, feat_w) float32 on the CPU (pinned for a GPU): the layer's
    #: activations, when cached.
    features: torch.Tensor | None
    units: int
    feature_shape: tuple[int, int]
    #: Shape of one model input, (channels, height, width).
    input_shape: tuple[int, ...]


class _Thresholds:
    """Pass 1 of one target: running quantiles, top images and (when it fits) the activations."""

    def __init__(self, layer: str, *, n_images: int, quantile: float, method: str, n_top: int,
                 memory_budget_mb: float, device: torch.device):
        self.layer, self.n_images, self.quantile, self.method, self.n_top = layer, n_images, quantile, method, n_top
        self.memory_budget_mb, self.device = memory_budget_mb, device
        self.quantiles: TopKQuantile | HistogramQuantile | None = None
        self.cache: torch.Tensor | None = None
        self.units = self.feat_h = self.feat_w = 0
        self.input_shape: tuple[int, ...] = ()

    def start(self, inputs: torch.Tensor, feats: torch.Tensor, cache_bytes_left: float) -> float:
        """Size the state from the first batch; returns the cache bytes it took."""
        self.input_shape = tuple(inputs.shape[1:])
        self.units, self.feat_h, self.feat_w = feats.shape[1:]
        total = self.n_images * self.feat_h * self.feat_w
        if self.method == "auto":
            fits = TopKQuantile.nbytes(self.units, total, self.quantile) <= self.memory_budget_mb * 2**20
            self.method = "exact" if fits else "sketch"
        if self.method == "exact":
            self.quantiles = TopKQuantile(self.units, total, self.quantile, self.device)
        else:
            self.quantiles = HistogramQuantile(self.units, self.quantile, device=self.device)
        self.top_values = torch.full((self.units, 0), -math.inf, device=self.device)
        self.top_images = torch.zeros((self.units, 0), dtype=torch.int64, device=self.device)
        need = 4 * total * self.units
        if need <= cache_bytes_left:
            # pinned for a GPU: both copies (here and in pass 2) are asynchronous, ordered on the device's stream
            self.cache = torch.empty((self.n_images, self.units, self.feat_h, self.feat_w), dtype=torch.float32,
                                     pin_memory=self.device.type == "cuda")
            return need
        return 0

    def add(self, indices: torch.Tensor, device_indices: torch.Tensor, feats: torch.Tensor) -> None:
        """One batch: ``feats`` its maps, ``indices`` its probe rows (on the CPU) and
        ``device_indices`` the same on the device."""
        units = self.units
        if tuple(feats.shape[1:]) != (units, self.feat_h, self.feat_w):
            raise DataError(f"layer {self.layer!r} output changed shape between batches "
                            f"({tuple(feats.shape[1:])} vs {(units, self.feat_h, self.feat_w)})")
        if self.cache is not None:
            self.cache[int(indices[0]) : int(indices[-1]) + 1].copy_(feats, non_blocking=True)
        self.quantiles.add(feats.transpose(0, 1).reshape(units, -1))
        batch_max = feats.amax((2, 3)).T  # units x batch
        candidate_values = torch.cat([self.top_values, batch_max], 1)
        candidate_images = torch.cat([self.top_images, device_indices.expand(units, -1)], 1)
        self.top_values, slots = candidate_values.topk(min(self.n_top, candidate_values.shape[1]), dim=1)
        self.top_images = candidate_images.gather(1, slots)

    def result(self) -> _ThresholdPass:
        assert self.quantiles is not None
        return _ThresholdPass(
            method=self.method,
            thresholds=torch.from_numpy(self.quantiles.result()).float().to(self.device),
            top_values=self.top_values,
            top_images=self.top_images,
            features=self.cache,
            units=self.units,
            feature_shape=(int(self.feat_h), int(self.feat_w)),
            input_shape=self.input_shape,
        )


def _threshold_pass(probe: BrodenDataset, readers: Sequence[_Reader], options: DissectOptions,
                    device: torch.device) -> list[_ThresholdPass]:
    """Pass 1: every unit's threshold, its ``options.top_images`` top images by maximum activation
    and, when they fit ``options.feature_cache_mb``, the layer's activations (module docstring),
    per target."""
    n_images = len(probe)
    states = [_Thresholds(r.layer, n_images=n_images, quantile=options.quantile, method=options.method,
                          n_top=min(options.top_images, n_images), memory_budget_mb=options.memory_budget_mb,
                          device=device) for r in readers]
    cache_left = options.feature_cache_mb * 2**20
    with torch.inference_mode(), progress_bar("dissect: thresholds", n_images,
                                              enabled=options.show_progress) as advance:
        for batch in _probe_loader(_ProbeBatches(probe, options.batch_size), options, device):
            device_indices = batch.indices.to(device, non_blocking=True)
            prepared: dict[tuple, torch.Tensor] = {}
            for reader, state in zip(readers, states):
                inputs, feats = reader(batch.images, prepared)
                if state.quantiles is None:  # the first batch sizes the state
                    cache_left -= state.start(inputs, feats, cache_left)
                state.add(batch.indices, device_indices, feats)
            advance(len(batch.indices))
    return [s.result() for s in states]


@dataclass
class _IouPass:
    """What pass 2 counted for one target (numpy arrays; columns are the concept columns of :class:`_Concepts`)."""

    #: (units, concepts) float64: activated pixels carrying the concept.
    intersect: np.ndarray
    #: (units, concepts) float64: activated pixels on the images that enter the concept's union.
    activation: np.ndarray
    #: (concepts,) float64: pixels carrying the concept.
    truth: np.ndarray
    #: (units, concepts) float32.
    iou: np.ndarray
    #: (units,) float64: activated pixels over the whole probe.
    unit_pixels: np.ndarray
    #: (units, n_top, mask_h, ceil(mask_w / 8)) packed bits: the units' regions on their top images.
    top_masks: np.ndarray


class _IouCounts:
    """Pass 2 of one target: intersections and union terms of its units with every concept."""

    def __init__(self, table: _Concepts, first: _ThresholdPass, mask_shape: tuple[int, int], device: torch.device):
        self.table, self.first, self.device = table, first, device
        units = first.units
        self.mask_h, self.mask_w = mask_shape
        self.mask_pixels = self.mask_h * self.mask_w
        n_concepts = len(table.numbers)
        self.n_keys = units * (n_concepts + 1)  # per unit: column 0 (no concept), then the concepts
        self.n_cats = len(table.categories)
        # pixel counts are integers: int64 (one dense bincount per chunk), float64 only at the end
        self.intersect = torch.zeros(self.n_keys, dtype=torch.int64, device=device)
        self.set_activation = torch.zeros(len(table.sets), units, dtype=torch.float64, device=device)
        self.cat_activation = torch.zeros(units, self.n_cats, dtype=torch.float64, device=device)  # Lite's tally_units_cat
        self.unit_pixels = torch.zeros(units, dtype=torch.float64, device=device)
        self.top_masks = np.zeros((units, first.top_images.shape[1], self.mask_h, (self.mask_w + 7) // 8), dtype=np.uint8)
        self.column_category = torch.as_tensor(table.column_category, device=device)
        self.unit_offsets = torch.arange(units, device=device) * (n_concepts + 1)
        self.pairs_per_chunk = max(1, _PAIR_CHUNK // self.mask_pixels)

    def add(self, feats: torch.Tensor, batch_images: torch.Tensor, pix: torch.Tensor, img: torch.Tensor,
            annotated_set: torch.Tensor) -> None:
        """Count one batch: ``feats`` its maps, ``pix`` / ``img`` its concept columns and
        ``annotated_set`` (images x concept sets) from :meth:`_Concepts.batch`."""
        first, table, device = self.first, self.table, self.device
        thresholds, top_images = first.thresholds, first.top_images
        mask_h, mask_w, n_cats = self.mask_h, self.mask_w, self.n_cats
        # only (image, unit) pairs whose map exceeds the threshold somewhere can fire
        pair_image, pair_unit = (feats.amax((2, 3)) > thresholds[None]).nonzero(as_tuple=True)
        for start in range(0, len(pair_image), self.pairs_per_chunk):
            image, unit = pair_image[start : start + self.pairs_per_chunk], pair_unit[start : start + self.pairs_per_chunk]
            maps = feats[image, unit][:, None]
            if first.feature_shape != (mask_h, mask_w):
                maps = F.interpolate(maps, size=(mask_h, mask_w), mode="bilinear", align_corners=False)
            active = maps[:, 0] > thresholds[unit][:, None, None]  # pairs x mask_h x mask_w
            pair, pix_y, pix_x = active.nonzero(as_tuple=True)
            active_pixels = torch.bincount(pair, minlength=len(image)).double()  # per pair
            self.unit_pixels.index_add_(0, unit, active_pixels)
            if len(pair) and pix.shape[1]:
                labels = pix[image[pair], :, pix_y * mask_w + pix_x]  # active pixels x K
                keys = (self.unit_offsets[unit[pair]][:, None] + labels).reshape(-1)
                self.intersect += torch.bincount(keys, minlength=self.n_keys)
            for channel in range(img.shape[1]):  # an image-level label covers the pair's active pixels
                keys = self.unit_offsets[unit] + img[image, channel]
                self.intersect.index_add_(0, keys, active_pixels.long())
            if table.lite:  # an image counts for the categories found under the unit's active pixels
                present = torch.zeros(len(image) * (n_cats + 1), dtype=torch.bool, device=device)
                if len(pair) and pix.shape[1]:
                    present[(pair[:, None] * (n_cats + 1) + self.column_category[labels]).reshape(-1)] = True
                present = present.view(len(image), n_cats + 1)
                for channel in range(img.shape[1]):  # and for those of its image-level labels
                    present[torch.arange(len(image), device=device), self.column_category[img[image, channel]]] = True
                self.cat_activation.index_add_(0, unit, present[:, :n_cats].double() * active_pixels[:, None])
            else:
                self.set_activation.index_add_(1, unit, (annotated_set[image] * active_pixels[:, None]).T.contiguous())
            # the units' regions on their top images, for the page
            hit = top_images[unit] == batch_images[image][:, None]  # pairs x n_top
            rows = hit.any(1).nonzero(as_tuple=True)[0]
            if len(rows):
                slots = hit[rows].float().argmax(1)
                packed = np.packbits(active[rows].cpu().numpy(), axis=-1)
                self.top_masks[unit[rows].cpu().numpy(), slots.cpu().numpy()] = packed

    def result(self, truth: torch.Tensor) -> _IouPass:
        table, units = self.table, self.first.units
        n_concepts = len(table.numbers)
        intersect_np = self.intersect.view(units, n_concepts + 1)[:, 1:].cpu().numpy().astype(np.float64)
        truth_np = truth[1:].cpu().numpy()
        if not n_concepts:
            activation_np = np.zeros((units, 0))
        elif table.lite:
            activation_np = self.cat_activation.cpu().numpy()[:, table.column_category[1:]]
        else:
            activation_np = self.set_activation.T.cpu().numpy()[:, table.set_of]
        union = activation_np + truth_np[None] - intersect_np
        if table.lite:  # Lite's own formula
            iou = (intersect_np / (union + 1e-10)).astype(np.float32)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                iou = np.where(union > 0, intersect_np / union, 0.0).astype(np.float32)
        return _IouPass(intersect=intersect_np, activation=activation_np, truth=truth_np, iou=iou,
                        unit_pixels=self.unit_pixels.cpu().numpy(), top_masks=self.top_masks)


def _iou_pass(probe: BrodenDataset, table: _Concepts, readers: Sequence[_Reader], firsts: Sequence[_ThresholdPass],
              mask_shape: tuple[int, int], options: DissectOptions, device: torch.device) -> list[_IouPass]:
    """Pass 2: intersections and unions of every unit's thresholded maps with the concepts, and
    the units' regions on their top images (module docstring), per target; the concept masks
    of each batch are decoded and tabulated once for all targets."""
    mask_pixels = mask_shape[0] * mask_shape[1]
    n_concepts = len(table.numbers)
    truth = torch.zeros(n_concepts + 1, dtype=torch.float64, device=device)
    set_members = torch.as_tensor(table.set_members, device=device)
    counts = [_IouCounts(table, first, mask_shape, device) for first in firsts]
    # the images are decoded only when a target has no cached activations to count from
    batches = _ProbeBatches(probe, options.batch_size, images=any(f.features is None for f in firsts), table=table,
                            mask_pixels=mask_pixels)
    with torch.inference_mode(), progress_bar("dissect: IoU", len(probe), enabled=options.show_progress) as advance:
        for batch in _probe_loader(batches, options, device):
            pix = batch.pix.to(device, non_blocking=True).int()
            img = batch.img.to(device, non_blocking=True)
            truth += torch.bincount(pix.reshape(-1), minlength=n_concepts + 1).double()
            truth += torch.bincount(img.reshape(-1), minlength=n_concepts + 1).double() * mask_pixels
            # images x concept sets: whether one of the set's categories is annotated in the image
            annotated = batch.annotated.to(device, non_blocking=True)
            annotated_set = (annotated[:, None, :] & set_members[None]).any(2).double()
            batch_images = batch.indices.to(device, non_blocking=True)
            lo, hi = int(batch.indices[0]), int(batch.indices[-1]) + 1
            prepared: dict[tuple, torch.Tensor] = {}
            for reader, first, count in zip(readers, firsts, counts):
                if first.features is not None:
                    feats = first.features[lo:hi].to(device, non_blocking=True)
                else:
                    feats = reader(batch.images, prepared)[1]
                count.add(feats, batch_images, pix, img, annotated_set)
            advance(len(batch.indices))
    return [count.result(truth) for count in counts]

"""Network dissection: which concept of a Broden-format probe each unit of a layer detects.

The algorithm is NetDissect-Lite's (Bau, Zhou et al., "Network Dissection", CVPR 2017; the
``CSAILVision/NetDissect-Lite`` code, whose ``tally.csv`` we write), streamed:

**Pass 1 -- thresholds.** Every probe image goes through the model up to ``layer`` (a forward
hook stops the forward there). For each unit ``u`` the threshold ``T_u`` is the top-``quantile``
quantile of its activations over all images and positions -- ``np.percentile(a, 100 * (1 - q))``
with linear interpolation, as NetDissect-Lite's ``quantile_threshold`` computes it from its
memory-mapped features. Two methods, neither keeping the activations:

* ``exact``: a running per-unit top-``k`` (``torch.topk`` over the kept values and each batch),
  ``k = ceil((n - 1) q) + 2`` for ``n = images x h x w`` values per unit. The interpolated
  percentile only involves the two order statistics around rank ``(n - 1)(1 - q)``, which lie in
  that top ``k``, so the result is exactly numpy's. Memory: ``units x k`` floats.
* ``sketch``: a per-unit histogram of ``SKETCH_BINS`` equal bins over an adaptive range: the
  range starts at the first batch's min..max and doubles (merging bin pairs) whenever a value
  falls outside it (the old range becomes the lower or upper half of the new one). The quantile
  is read by linear interpolation inside its bin, so the error is below one bin width; the range
  ends at most ~4x the unit's activation span, so the error is ``< 4 x (max - min) / SKETCH_BINS``
  (0.1 % of the span; max and min over the probe). Memory: ``units x SKETCH_BINS`` counts,
  whatever the probe's size.
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
  is not evidence against a scene concept. (NetDissect-Lite approximates this with the
  categories found under the activated pixels.)

``IoU[u, c] = intersect / (activation + truth - intersect)`` (0 when the union is empty). A unit
is *labelled* with its best concept when that IoU reaches ``iou_threshold`` (NetDissect-Lite's
``SCORE_THRESHOLD``, 0.04); the best concept of each category is kept too ("category-aware").
A concept belongs to every category it is listed in (``label.csv``, ``c_<cat>.csv``); the
category reported for a unit is its best concept's primary category.

Everything is float32 on the model's side and float64 counts; CUDA is used when present.
Output files: :func:`write_dissection`; ``tally.csv`` is read back by :func:`read_tally`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepcluster import io as dio
from deepcluster.errors import ConfigError, DataError
from deepcluster.interpret.broden import BrodenDataset
from deepcluster.interpret.model_source import resolve_layer
from deepcluster.progress import progress_bar

__all__ = [
    "IOU_THRESHOLD",
    "QUANTILE",
    "SKETCH_BINS",
    "TALLY_FIELDS",
    "DissectResult",
    "HistogramQuantile",
    "TopKQuantile",
    "cache_dir",
    "default_concepts",
    "dissect",
    "read_tally",
    "tally_fields",
    "write_dissection",
    "write_tally",
]

#: Top quantile of each unit's activations that counts as "active" (NetDissect-Lite's QUANTILE).
QUANTILE = 0.005
#: Minimum IoU for a unit to be labelled (NetDissect-Lite's SCORE_THRESHOLD).
IOU_THRESHOLD = 0.04
#: Bins per unit of the ``sketch`` quantile method.
SKETCH_BINS = 4096
#: Top images kept per unit (strips of the HTML page).
TOP_IMAGES = 8
#: Leading columns of NetDissect-Lite's tally.csv; then 5 per category (:func:`tally_fields`).
TALLY_FIELDS = ("unit", "category", "label", "score")
_CAT_FIELDS = ("label", "truth", "activation", "intersect", "iou")
#: Up-sampled maps handled at once in pass 2 (elements), bounding its memory.
_PAIR_CHUNK = 1 << 21
_LUMA = (0.299, 0.587, 0.114)


def tally_fields(categories: Sequence[str]) -> list[str]:
    """NetDissect-Lite's tally.csv header: ``unit,category,label,score`` then, per category,
    ``<cat>-label,<cat>-truth,<cat>-activation,<cat>-intersect,<cat>-iou``."""
    return [*TALLY_FIELDS, *(f"{c}-{f}" for c in categories for f in _CAT_FIELDS)]


# --------------------------------------------------------------------------------------------
# Cache of the built-in probe


def cache_dir() -> Path:
    """``$DEEPCLUSTER_CACHE``, else ``$XDG_CACHE_HOME/deepcluster``, else ``~/.cache/deepcluster``."""
    env = os.environ.get("DEEPCLUSTER_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "deepcluster"


def default_concepts(*, show_progress: bool = True) -> Path:
    """The built-in concept probe (1000 images at 64 px), generated once into :func:`cache_dir`."""
    from deepcluster.interpret.concepts import make_concept_probe

    root = cache_dir() / "concept_probe"
    try:
        return make_concept_probe(root, show_progress=show_progress)
    except OSError:  # another process renamed its copy into place first
        return make_concept_probe(root, show_progress=False)


# --------------------------------------------------------------------------------------------
# Streaming per-unit quantiles


class TopKQuantile:
    """Exact streaming per-unit percentile of the top tail (see the module docstring).

    ``total`` is the number of values each unit will receive; :meth:`add` takes ``units x m``.
    """

    def __init__(self, units: int, total: int, quantile: float, device: torch.device | str = "cpu"):
        if total < 1:
            raise ValueError("total must be >= 1")
        self.units, self.total, self.quantile = units, total, quantile
        self.k = min(total, math.ceil((total - 1) * quantile) + 2)
        self.values = torch.empty(units, 0, device=device)
        self.count = 0

    @staticmethod
    def nbytes(units: int, total: int, quantile: float) -> int:
        """Peak memory of the buffer (kept values and one batch's worth again, roughly)."""
        return 8 * units * min(total, math.ceil((total - 1) * quantile) + 2)

    def add(self, x: torch.Tensor) -> None:
        x = x.to(self.values.device, torch.float32)
        self.count += x.shape[1]
        both = torch.cat([self.values, x], 1)
        self.values = both.topk(self.k, dim=1, sorted=False).values if both.shape[1] > self.k else both

    def result(self) -> np.ndarray:
        if self.count != self.total:
            raise RuntimeError(f"received {self.count} values per unit, expected {self.total}")
        n = self.total
        desc = self.values.sort(dim=1, descending=True).values.double().cpu().numpy()
        pos = (n - 1) * (1.0 - self.quantile)  # ascending rank, as np.percentile
        lo = math.floor(pos)
        frac = pos - lo
        a = desc[:, n - 1 - lo]
        b = desc[:, n - 2 - lo] if lo + 1 <= n - 1 else a
        return a + (b - a) * frac


class HistogramQuantile:
    """Approximate streaming per-unit quantile: adaptive-range histograms (module docstring)."""

    def __init__(self, units: int, quantile: float, bins: int = SKETCH_BINS, device: torch.device | str = "cpu"):
        if bins < 2 or bins % 2:
            raise ValueError("bins must be even and >= 2")
        self.units, self.quantile, self.bins = units, quantile, bins
        self.device = torch.device(device)
        self.hist = torch.zeros(units, bins, dtype=torch.int64, device=self.device)
        self.lo: torch.Tensor | None = None
        self.width: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.to(self.device, torch.float64)
        if x.shape[1] == 0:
            return
        xmin, xmax = x.min(1).values, x.max(1).values
        if self.lo is None:
            span = xmax - xmin
            tiny = torch.clamp(xmax.abs(), min=1.0) * 1e-9
            self.lo = xmin.clone()
            self.width = torch.maximum(span * (1 + 1e-9) / self.bins, tiny / self.bins)
        lo, width, hist, nb = self.lo, self.width, self.hist, self.bins
        while True:
            down = xmin < lo
            up = xmax >= lo + width * nb
            need = up | down
            if not bool(need.any()):
                break
            merged = hist.view(self.units, nb // 2, 2).sum(-1)
            zeros = torch.zeros_like(merged)
            hist = torch.where(
                down[:, None], torch.cat([zeros, merged], 1), torch.where(up[:, None], torch.cat([merged, zeros], 1), hist)
            )
            lo = torch.where(down, lo - width * nb, lo)
            width = torch.where(need, width * 2, width)
        idx = ((x - lo[:, None]) / width[:, None]).floor_().clamp_(0, nb - 1).long()
        idx += torch.arange(self.units, device=self.device)[:, None] * nb
        hist = hist + torch.bincount(idx.reshape(-1), minlength=self.units * nb).view(self.units, nb)
        self.lo, self.width, self.hist = lo, width, hist

    def _order_stat(self, hist: torch.Tensor, cum: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Estimated value of ascending order statistic ``k`` (0-based) of each unit: its bin,
        with the bin's values taken as evenly spread."""
        j = torch.searchsorted(cum, k[:, None], right=True).clamp_(max=self.bins - 1)[:, 0]
        before = torch.where(j > 0, cum.gather(1, (j - 1).clamp(min=0)[:, None])[:, 0], torch.zeros_like(k))
        count = hist.gather(1, j[:, None])[:, 0].clamp(min=1)
        frac = ((k - before + 0.5) / count).clamp(0, 1)
        return self.lo + self.width * (j.double() + frac)

    def result(self) -> np.ndarray:
        if self.lo is None:
            raise RuntimeError("no values added")
        hist = self.hist.double()
        cum = hist.cumsum(1)
        n = cum[:, -1]
        rank = (n - 1) * (1.0 - self.quantile)  # as np.percentile: interpolate two order statistics
        k0 = rank.floor()
        k1 = torch.minimum(k0 + 1, n - 1)
        a, b = self._order_stat(hist, cum, k0), self._order_stat(hist, cum, k1)
        return (a + (b - a) * (rank - k0)).cpu().numpy()


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
    #: True when pass 2 reused pass 1's activations instead of running the model again.
    cached_features: bool = False

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
            "cached_features": self.cached_features,
            "units_numbering": "tally.csv units are 1-based (NetDissect-Lite); rows of thresholds.npy and iou.npy are unit - 1",
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


# --------------------------------------------------------------------------------------------
# Model plumbing


class _Stop(Exception):
    pass


class _LayerReader:
    """Runs ``model`` until ``module`` has produced its output, and returns that output."""

    def __init__(self, model: nn.Module, path: str):
        self.model, self.path = model, path
        self.module = model.get_submodule(path)
        self.out: Any = None

    def _hook(self, module, inputs, output) -> None:
        self.out = output
        raise _Stop

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.out = None
        handle = self.module.register_forward_hook(self._hook)
        try:
            self.model(x)
        except _Stop:
            pass
        except (RuntimeError, ValueError, TypeError) as exc:
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise ConfigError(
                f"the model fails on inputs of shape {tuple(x.shape)} ({first}): check its input size "
                "(--input-size) and channels"
            ) from None
        finally:
            handle.remove()
        out = self.out
        self.out = None
        if out is None:
            raise ConfigError(f"layer {self.path!r} is not reached by the model's forward pass: pick another layer")
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"layer {self.path!r} outputs a {type(out).__name__}, not a tensor: pick another layer")
        if out.ndim == 2:
            out = out[:, :, None, None]  # vectors: one value per image, covering the whole image
        if out.ndim != 4:
            raise ConfigError(
                f"layer {self.path!r} outputs tensors of shape {tuple(out.shape)}: dissection needs (B, C, H, W) "
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
        self.mean = torch.tensor(mean, device=device).view(1, ch, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, ch, 1, 1)
        self.luma = torch.tensor(_LUMA, device=device).view(1, 3, 1, 1)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images).to(self.device).float().div_(255.0)
        if self.grey:
            x = (x * self.luma).sum(1, keepdim=True)
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            down = self.size < min(x.shape[-2:])
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=down)
        return (x - self.mean) / self.std


def _image_batches(ds: BrodenDataset, batch_size: int, pool: ThreadPoolExecutor | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    n = len(ds)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        imgs = list(pool.map(ds.load_image, idx)) if pool else [ds.load_image(i) for i in idx]
        yield np.asarray(idx, dtype=np.int64), np.stack(imgs)


_DONE = object()


def _prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """``items`` produced by a background thread, ``depth`` ahead (decoding overlaps compute)."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for it in items:
                if not put((True, it)):
                    return
            put((True, _DONE))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put((False, exc))

    thread = threading.Thread(target=work, name="dissect-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, it = q.get()
            if not ok:
                raise it
            if it is _DONE:
                return
            yield it
    finally:
        stop.set()
        thread.join(timeout=5)


def _resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu or cuda") from None


# --------------------------------------------------------------------------------------------
# Concept tables


class _Concepts:
    """Label columns of the probe, and the label tensors of a batch that pass 2 counts with."""

    def __init__(self, ds: BrodenDataset):
        cats = tuple(ds.categories)
        members: dict[int, list[str]] = {}
        for num, lab in ds.labels.items():
            in_cats = [c for c in cats if c in lab.categories or num in ds.categories[c].labels]
            if in_cats:
                members[num] = in_cats
        self.numbers = np.array(sorted(members), dtype=np.int64)
        self.names = [ds.labels[int(n)].name for n in self.numbers]
        self.cats = [tuple(members[int(n)]) for n in self.numbers]
        self.primary = [ds.labels[int(n)].category or members[int(n)][0] for n in self.numbers]
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

    def columns(self, raw: np.ndarray) -> np.ndarray:
        """Label numbers -> column + 1 (int32; 0 for no label or a label outside the columns)."""
        raw = np.asarray(raw)
        if raw.size and (raw.min() < 0 or raw.max() >= len(self.lut)):
            inside = (raw >= 0) & (raw < len(self.lut))
            return np.where(inside, self.lut[np.clip(raw, 0, len(self.lut) - 1)], 0).astype(np.int32)
        return self.lut[raw]

    def batch(self, batch, P: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Pixel columns B x K x P, image columns B x J (each concept once per pixel / image) and
        the categories annotated in each image (B x C bool)."""
        B = len(batch)
        annotated = np.zeros((B, len(self.categories)), dtype=bool)
        pix_parts, pix_cats, img_parts, img_cats = [], [], [], []
        for c, m in batch.masks.items():
            if m.shape[1]:
                cols = self.columns(m.reshape(B, m.shape[1], P))
                annotated[:, self.index[c]] = (m != 0).reshape(B, -1).any(1)
                pix_parts.append(cols)
                pix_cats += [c] * m.shape[1]
        for c, lab in batch.labels.items():
            if lab.shape[1]:
                annotated[:, self.index[c]] = (lab != 0).any(1)
                img_parts.append(self.columns(lab))
                img_cats += [c] * lab.shape[1]
        pix = np.concatenate(pix_parts, 1) if pix_parts else np.zeros((B, 0, P), np.int32)
        img = np.concatenate(img_parts, 1) if img_parts else np.zeros((B, 0), np.int32)
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
        return torch.from_numpy(pix).to(device), torch.from_numpy(img).to(device), annotated


# --------------------------------------------------------------------------------------------
# The algorithm


def _check_uniform(ds: BrodenDataset) -> tuple[tuple[int, int], tuple[int, int]]:
    img = {ds.image_size(i) for i in range(len(ds))}
    msk = {ds.mask_size(i) for i in range(len(ds))}
    if len(img) > 1 or len(msk) > 1:
        raise DataError(
            f"the images of {ds.root} differ in size ({len(img)} image sizes, {len(msk)} mask sizes): dissection "
            "needs one image size and one mask size; resample the probe"
        )
    return img.pop(), msk.pop()


def dissect(
    model: nn.Module,
    layer: str,
    concepts: BrodenDataset | str | Path,
    *,
    quantile: float = QUANTILE,
    iou_threshold: float = IOU_THRESHOLD,
    batch_size: int = 64,
    input_size: int | None = None,
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.5,),
    grey: bool = False,
    method: str = "auto",
    device: str | torch.device = "auto",
    show_progress: bool = True,
    top_images: int = TOP_IMAGES,
    num_workers: int = 0,
    memory_budget_mb: float = 256,
    feature_cache_mb: float = 512,
    model_name: str = "",
) -> DissectResult:
    """Dissect ``layer`` of ``model`` on the Broden-format probe ``concepts`` (module docstring).

    Parameters
    ----------
    model : nn.Module
        Run in eval mode (moved to ``device``); only the forward up to ``layer`` is computed.
    layer : str
        Module name (``dict(model.named_modules())``) or, for our nets, a probe name (``conv2``).
        Its output must be (B, C, H, W) maps or (B, C) vectors (one value per image).
    concepts : BrodenDataset or path
        The probe; all its images must share one size, and so must their masks.
    quantile, iou_threshold : float
        NetDissect-Lite's top activation quantile (0.005) and labelling threshold (0.04).
    batch_size : int
        Images per forward.
    input_size : int, optional
        Side the images are resized to (bilinear, anti-aliased when shrinking); default: as stored.
    mean, std : sequence of float
        Normalisation of [0, 1] pixels, one value or one per input channel.
    grey : bool
        Convert the RGB images to one grey channel (ITU-R 601 luma) first.
    method : {"auto", "exact", "sketch"}
        How pass 1 computes the thresholds (module docstring).
    device : str or torch.device
        ``auto`` (CUDA when present), ``cpu``, ``cuda``...
    top_images : int
        Top-activating images kept per unit, with the unit's region on them.
    num_workers : int
        Extra threads decoding the probe's PNG files (one background thread always reads ahead).
    memory_budget_mb : float
        Memory the ``exact`` method may use in ``auto`` mode.
    feature_cache_mb : float
        When the layer's activations over the whole probe take at most this much, pass 1 keeps
        them (on the CPU) and pass 2 skips its forward passes; ``0`` always recomputes them.
    model_name : str
        Name recorded in the result (default: the model's class name).

    Returns
    -------
    DissectResult
    """
    t_start = time.perf_counter()
    if not 0.0 < quantile < 1.0:
        raise ConfigError(f"quantile must lie in (0, 1), got {quantile}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ConfigError(f"iou_threshold must lie in [0, 1], got {iou_threshold}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if method not in ("auto", "exact", "sketch"):
        raise ConfigError(f"method must be auto, exact or sketch, got {method!r}")
    if input_size is not None and input_size < 1:
        raise ConfigError(f"input_size must be >= 1, got {input_size}")
    if top_images < 1:
        raise ConfigError(f"top_images must be >= 1, got {top_images}")
    ds = concepts if isinstance(concepts, BrodenDataset) else BrodenDataset(concepts)
    n = len(ds)
    if n == 0:
        raise DataError(f"the probe {ds.root} has no images: its index.csv lists none")
    (ih, iw), (sh, sw) = _check_uniform(ds)
    path = resolve_layer(model, layer)
    dev = _resolve_device(device)
    model.eval()
    model.to(dev)
    prepare = _Prepare(dev, grey, input_size, mean, std)
    reader = _LayerReader(model, path)
    table = _Concepts(ds)
    if not table.categories:
        raise DataError(f"the probe {ds.root} has no categories: its category.csv lists none")
    L = len(table.numbers)
    P = sh * sw
    T = min(top_images, n)
    pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None

    try:
        # ---- pass 1: thresholds, top images (and the activations, when they fit the cache)
        t0 = time.perf_counter()
        quant: TopKQuantile | HistogramQuantile | None = None
        chosen = method
        top_val = top_idx = None
        cache: torch.Tensor | None = None
        U = h = w = 0
        input_shape: tuple[int, ...] = ()
        with torch.inference_mode(), progress_bar("dissect: thresholds", n, enabled=show_progress) as advance:
            for idx, images in _prefetch(_image_batches(ds, batch_size, pool)):
                x = prepare(images)
                feats = reader(x)
                if quant is None:
                    input_shape = tuple(x.shape[1:])
                    U, h, w = feats.shape[1:]
                    total = n * h * w
                    if chosen == "auto":
                        fits = TopKQuantile.nbytes(U, total, quantile) <= memory_budget_mb * 2**20
                        chosen = "exact" if fits else "sketch"
                    quant = TopKQuantile(U, total, quantile, dev) if chosen == "exact" else HistogramQuantile(U, quantile, device=dev)
                    top_val = torch.full((U, 0), -math.inf, device=dev)
                    top_idx = torch.zeros((U, 0), dtype=torch.int64, device=dev)
                    if 4 * total * U <= feature_cache_mb * 2**20:
                        cache = torch.empty((n, U, h, w), dtype=torch.float32)
                elif tuple(feats.shape[1:]) != (U, h, w):
                    raise DataError(f"layer {layer!r} output changed shape between batches ({tuple(feats.shape[1:])} vs {(U, h, w)})")
                if cache is not None:
                    cache[int(idx[0]) : int(idx[-1]) + 1] = feats.cpu()
                quant.add(feats.transpose(0, 1).reshape(U, -1))
                mx = feats.amax((2, 3)).T  # U x B
                vals = torch.cat([top_val, mx], 1)
                ids = torch.cat([top_idx, torch.from_numpy(idx).to(dev).expand(U, -1)], 1)
                top_val, pos = vals.topk(min(T, vals.shape[1]), dim=1)
                top_idx = ids.gather(1, pos)
                advance(len(idx))
        assert quant is not None and top_val is not None and top_idx is not None
        thresholds = torch.from_numpy(quant.result()).float().to(dev)
        t1 = time.perf_counter()

        # ---- pass 2: intersections and unions
        inter = torch.zeros(U * (L + 1), dtype=torch.float64, device=dev)
        truth = torch.zeros(L + 1, dtype=torch.float64, device=dev)
        act_set = torch.zeros(len(table.sets), U, dtype=torch.float64, device=dev)
        unit_pixels = torch.zeros(U, dtype=torch.float64, device=dev)
        top_masks = np.zeros((U, T, sh, (sw + 7) // 8), dtype=np.uint8)
        set_members = torch.from_numpy(table.set_members).to(dev)
        offsets = torch.arange(U, device=dev) * (L + 1)
        step = max(1, _PAIR_CHUNK // P)
        with torch.inference_mode(), progress_bar("dissect: IoU", n, enabled=show_progress) as advance:
            for batch in _prefetch(ds.batches(batch_size, num_workers=num_workers)):
                B = len(batch)
                if cache is not None:
                    feats = cache[int(batch.indices[0]) : int(batch.indices[-1]) + 1].to(dev)
                else:
                    feats = reader(prepare(batch.images))
                pix, img, annotated = table.batch(batch, P, dev)
                truth += torch.bincount(pix.reshape(-1), minlength=L + 1).double()
                truth += torch.bincount(img.reshape(-1), minlength=L + 1).double() * P
                ann_set = (torch.from_numpy(annotated).to(dev)[:, None, :] & set_members[None]).any(2).double()  # B x S
                batch_idx = torch.from_numpy(batch.indices).to(dev)

                # only (image, unit) pairs whose map exceeds the threshold somewhere can fire
                pb, pu = (feats.amax((2, 3)) > thresholds[None]).nonzero(as_tuple=True)
                for s in range(0, len(pb), step):
                    b, u = pb[s : s + step], pu[s : s + step]
                    maps = feats[b, u][:, None]
                    if (h, w) != (sh, sw):
                        maps = F.interpolate(maps, size=(sh, sw), mode="bilinear", align_corners=False)
                    act = maps[:, 0] > thresholds[u][:, None, None]  # m x sh x sw
                    i, yy, xx = act.nonzero(as_tuple=True)
                    cnt = torch.bincount(i, minlength=len(b)).double()  # activated pixels per pair
                    unit_pixels.index_add_(0, u, cnt)
                    act_set.index_add_(1, u, (ann_set[b] * cnt[:, None]).T.contiguous())
                    if len(i) and pix.shape[1]:
                        lab = pix[b[i], :, yy * sw + xx]  # n x K
                        keys = (offsets[u[i]][:, None] + lab).reshape(-1)
                        inter += torch.bincount(keys, minlength=U * (L + 1)).double()
                    for j in range(img.shape[1]):
                        keys = offsets[u] + img[b, j]
                        inter += torch.bincount(keys, weights=cnt, minlength=U * (L + 1))
                    # the units' regions on their top images, for the page
                    hit = top_idx[u] == batch_idx[b][:, None]  # m x T
                    rows = hit.any(1).nonzero(as_tuple=True)[0]
                    if len(rows):
                        slots = hit[rows].float().argmax(1)
                        packed = np.packbits(act[rows].cpu().numpy(), axis=-1)
                        top_masks[u[rows].cpu().numpy(), slots.cpu().numpy()] = packed
                advance(B)
        t2 = time.perf_counter()
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    inter_m = inter.view(U, L + 1)[:, 1:].cpu().numpy()
    truth_v = truth[1:].cpu().numpy()
    act_m = act_set.T.cpu().numpy()[:, table.set_of] if L else np.zeros((U, 0))
    union = act_m + truth_v[None] - inter_m
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter_m / union, 0.0).astype(np.float32)
    top_val_np = top_val.cpu().numpy()
    top_idx_np = top_idx.cpu().numpy()
    if top_idx_np.shape[1] < T:  # fewer images than slots (cannot happen with T <= n; kept safe)
        T = top_idx_np.shape[1]
        top_masks = top_masks[:, :T]
    return DissectResult(
        model=model_name or type(model).__name__,
        layer=layer,
        module=path,
        quantile=float(quantile),
        iou_threshold=float(iou_threshold),
        method=chosen,
        concepts_root=str(ds.root),
        n_images=n,
        categories=tuple(table.categories),
        label_numbers=table.numbers,
        label_names=table.names,
        label_primary=table.primary,
        label_categories=table.cats,
        thresholds=thresholds.cpu().numpy().astype(np.float32),
        intersect=inter_m,
        activation=act_m,
        truth=truth_v,
        iou=iou,
        unit_pixels=unit_pixels.cpu().numpy(),
        top_images=top_idx_np,
        top_values=top_val_np,
        top_masks=top_masks,
        feature_shape=(int(h), int(w)),
        mask_shape=(sh, sw),
        image_shape=(ih, iw),
        input_shape=input_shape,
        preprocess={"input_size": input_size, "grey": bool(grey), "mean": [float(m) for m in mean],
                    "std": [float(s) for s in std]},
        timings={"thresholds": t1 - t0, "iou": t2 - t1, "total": time.perf_counter() - t_start},
        device=str(dev),
        cached_features=cache is not None,
    )


# --------------------------------------------------------------------------------------------
# Files


def _fmt(x: float) -> str:
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.6g}"


def write_tally(result: DissectResult, path: str | Path) -> Path:
    """NetDissect-Lite's tally.csv (units 1-based, best score first)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, tally_fields(result.categories), lineterminator="\n")
    writer.writeheader()
    for row in result.tally_rows():
        cells = {}
        for k, v in row.items():
            if isinstance(v, float):
                v = f"{v:.6f}" if k == "score" or k.endswith("-iou") else _fmt(v)
            cells[k] = v
        writer.writerow(cells)
    dio.write_text(path, buf.getvalue())
    return Path(path)


def write_dissection(
    result: DissectResult, out: str | Path, *, max_units: int = 64, show_progress: bool = True
) -> dict[str, Path]:
    """Write ``tally.csv``, ``summary.json``, ``thresholds.npy``, ``iou.npy``, ``concepts.csv``
    (the IoU columns) and ``dissect.html`` (with ``units/unit_NNNN.png`` strips) into ``out``."""
    from deepcluster.interpret.dissect_report import write_dissect_html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"tally": write_tally(result, out / "tally.csv")}
    dio.save_npy(out / "thresholds.npy", result.thresholds.astype(np.float32))
    dio.save_npy(out / "iou.npy", result.iou.astype(np.float32))
    paths["thresholds"] = out / "thresholds.npy"
    paths["iou"] = out / "iou.npy"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["column", "number", "name", "category", "categories", "truth"])
    for j, (num, name) in enumerate(zip(result.label_numbers, result.label_names)):
        w.writerow([j, int(num), name, result.label_primary[j], ";".join(result.label_categories[j]), _fmt(float(result.truth[j]))])
    dio.write_text(out / "concepts.csv", buf.getvalue())
    paths["concepts"] = out / "concepts.csv"
    t = time.perf_counter()
    paths["html"] = write_dissect_html(result, out, max_units=max_units, show_progress=show_progress)
    summary = result.summary()
    summary["timings_s"]["report"] = round(time.perf_counter() - t, 3)
    dio.write_json(out / "summary.json", summary)
    paths["summary"] = out / "summary.json"
    return paths


def read_tally(path: str | Path, *, min_score: float | None = None) -> list[dict[str, Any]]:
    """Rows of a tally.csv written by :func:`write_dissection` or by NetDissect-Lite, file order.

    ``unit`` is an int (1-based), ``score`` and the ``<cat>-truth/-activation/-intersect/-iou``
    columns floats, ``category``, ``label`` and ``<cat>-label`` strings; other columns are kept
    as strings. ``min_score`` keeps only the rows scoring at least that much (e.g. 0.04).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tally file {path} does not exist: run `deepcluster dissect` (or NetDissect-Lite) first")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            raw = [{(k or "").strip(): (v or "") for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} ({exc})") from None
    missing = [c for c in TALLY_FIELDS if c not in fields]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}: a tally.csv starts with unit,category,label,score")
    numeric = {f"-{s}" for s in _CAT_FIELDS if s != "label"}
    rows = []
    for line, r in enumerate(raw, start=2):
        row: dict[str, Any] = {}
        for k, v in r.items():
            try:
                if k == "unit":
                    row[k] = int(float(v))
                elif k == "score" or any(k.endswith(s) for s in numeric):
                    row[k] = float(v) if v.strip() else float("nan")
                else:
                    row[k] = v
            except ValueError:
                raise DataError(f"{path} line {line}: column {k} must be a number, got {v!r}") from None
        if min_score is None or row["score"] >= min_score:
            rows.append(row)
    return rows

"""The files of a dissection (:func:`write_dissection`), among them ``dissect.html``, an offline
page (:mod:`deepcluster.report.html`).

For each labelled unit (best IoU first, at most ``max_units``) a strip of its top-activating probe
images: outside the unit's thresholded region the image is dimmed, the region is outlined in
yellow and the unit's concept in cyan (a cyan frame for an image-level concept such as a scene).
Each strip is also written as ``units/unit_NNNN.png`` (NNNN: the 1-based unit of tally.csv).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from deepcluster.core import files as dio
from deepcluster.core.progress import progress_bar
from deepcluster.interpret.broden import BrodenDataset, BrodenSample
from deepcluster.interpret.dissect import DissectResult
from deepcluster.interpret.tally import format_count, write_tally
from deepcluster.report.html import Page

__all__ = ["render_unit_strip", "write_dissect_html", "write_dissection"]

#: Columns of concepts.csv: one row per IoU column of a dissection.
CONCEPT_COLUMNS = ("column", "number", "name", "category", "categories", "truth")

REGION = np.array([255, 214, 0], dtype=np.float32)
CONCEPT = np.array([0, 200, 255], dtype=np.float32)
TILE = 112
GAP = 4


def write_dissection(
    result: DissectResult, out: str | Path, *, max_units: int = 64, show_progress: bool = True
) -> dict[str, Path]:
    """Write ``tally.csv``, ``summary.json``, ``thresholds.npy``, ``iou.npy``, ``concepts.csv``
    (the IoU columns) and ``dissect.html`` (with ``units/unit_NNNN.png`` strips) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"tally": write_tally(result, out / "tally.csv")}
    dio.save_npy(out / "thresholds.npy", result.thresholds.astype(np.float32))
    dio.save_npy(out / "iou.npy", result.iou.astype(np.float32))
    paths["thresholds"] = out / "thresholds.npy"
    paths["iou"] = out / "iou.npy"
    concepts = [
        [j, int(num), name, result.label_primary[j], ";".join(result.label_categories[j]), format_count(float(result.truth[j]))]
        for j, (num, name) in enumerate(zip(result.label_numbers, result.label_names))
    ]
    paths["concepts"] = dio.write_csv(out / "concepts.csv", concepts, CONCEPT_COLUMNS)
    t = time.perf_counter()
    paths["html"] = write_dissect_html(result, out, max_units=max_units, show_progress=show_progress)
    summary = result.summary()
    summary["timings_s"]["report"] = round(time.perf_counter() - t, 3)
    dio.write_json(out / "summary.json", summary)
    paths["summary"] = out / "summary.json"
    return paths


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image border counts as outside)."""
    m = np.pad(mask, 1, constant_values=False)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(im.resize((size[1], size[0]), Image.Resampling.NEAREST)) > 127


def _tile(sample: BrodenSample, region: np.ndarray, concept: np.ndarray | None, whole: bool, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(sample.image.transpose(1, 2, 0)))
    rgb = np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32)
    reg = _resize_mask(region, size)
    out = np.where(reg[..., None], rgb, rgb * 0.35)
    if concept is not None and concept.any():
        out[_outline(_resize_mask(concept, size))] = CONCEPT
    out[_outline(reg)] = REGION
    if whole:
        out[:3], out[-3:], out[:, :3], out[:, -3:] = CONCEPT, CONCEPT, CONCEPT, CONCEPT
    return out.clip(0, 255).astype(np.uint8)


def _tile_size(mask_shape: tuple[int, int]) -> tuple[int, int]:
    sh, sw = mask_shape
    scale = TILE / max(sh, sw)
    return max(8, round(sh * scale)), max(8, round(sw * scale))


def render_unit_strip(
    result: DissectResult, unit: int, ds: BrodenDataset, *, column: int | None = None,
    cache: dict[int, BrodenSample] | None = None,
) -> bytes:
    """PNG bytes of unit ``unit``'s (0-based) top images, with its region and concept ``column``
    (default: its best concept) outlined."""
    cache = {} if cache is None else cache
    size = _tile_size(result.mask_shape)
    if column is None:
        col, _ = result.best()
        column = int(col[unit])
    number = int(result.label_numbers[column]) if column >= 0 else 0
    tiles = []
    for slot, idx in enumerate(result.top_images[unit]):
        idx = int(idx)
        if idx not in cache:
            cache[idx] = ds[idx]
        sample = cache[idx]
        concept = whole = None
        if number:
            whole = any(bool((lab == number).any()) for lab in sample.labels.values())
            concept = None if whole else sample.concept_mask(number)
        tiles.append(_tile(sample, result.region(unit, slot), concept, bool(whole), size))
    h, w = size
    strip = np.full((h, len(tiles) * (w + GAP) - GAP, 3), 255, dtype=np.uint8)
    for i, t in enumerate(tiles):
        strip[:, i * (w + GAP) : i * (w + GAP) + w] = t
    buf = io.BytesIO()
    Image.fromarray(strip).save(buf, format="PNG")
    return buf.getvalue()


def write_dissect_html(result: DissectResult, out: str | Path, *, max_units: int = 64, show_progress: bool = True) -> Path:
    """Write ``out/dissect.html`` and ``out/units/*.png``; returns the page's path."""
    out = Path(out)
    units_dir = out / "units"
    units_dir.mkdir(parents=True, exist_ok=True)
    for old in units_dir.glob("unit_*.png"):  # strips of an earlier dissection into this folder
        old.unlink()
    summary = result.summary()
    col, score = result.best()
    labelled = result.labelled()
    per_cat = result.best_per_category()

    t = summary["timings_s"]
    page = Page(
        title=f"Network dissection: {result.model} / {result.layer}",
        subtitle=[
            (f"layer {result.layer} (module {result.module}): {result.units} units, maps {result.feature_shape[0]}×"
             f"{result.feature_shape[1]}, input {'×'.join(map(str, result.input_shape))}"),
            (f"probe {result.concepts_root}: {result.n_images} images, {len(result.label_names)} concepts in "
             f"{len(result.categories)} categories ({', '.join(result.categories)})"),
            (f"quantile {result.quantile} ({result.method}), IoU threshold {result.iou_threshold}; "
             f"{summary['n_labelled']} of {result.units} units labelled; "
             f"{t.get('total', 0):.1f} s on {result.device}"),
        ],
    )
    sec = page.section("summary", "Summary", "Units whose best concept reaches the IoU threshold, by the category of "
                       "that concept, and the number of distinct concepts they detect (NetDissect's 'unique detectors').")
    sec.table(
        ["category", "labelled units", "unique concepts"],
        [[c, summary["units_per_category"][c], summary["unique_concepts_per_category"][c]] for c in result.categories]
        + [["all", summary["n_labelled"], summary["unique_concepts"]]],
    )
    if summary["top_concepts"]:
        sec.heading("Concepts detected")
        sec.table(["concept", "category", "units"],
                  [[d["concept"], d["category"], d["units"]] for d in summary["top_concepts"][:40]])

    order = sorted(range(result.units), key=lambda u: (-float(score[u]), u))
    shown = [u for u in order if labelled[u]][:max_units]
    intro = ("Best IoU first. Each strip shows the unit's top-activating probe images: outside the unit's thresholded "
             "region the image is dimmed; yellow outlines the region, cyan the unit's concept (a cyan frame when the "
             "concept is image-level, e.g. a scene).")
    units_sec = page.section("units", "Labelled units", intro)
    if max_units <= 0:
        units_sec.note("Unit strips are switched off (max_units=0); every unit is in tally.csv.")
    elif not shown:
        units_sec.note(f"No unit reaches IoU {result.iou_threshold}; the best {min(8, result.units)} units are shown.")
        shown = order[: min(8, result.units, max_units)]
    elif int(labelled.sum()) > len(shown):
        units_sec.note(f"{int(labelled.sum())} units are labelled; the {len(shown)} best are shown (all are in tally.csv).")
    ds = BrodenDataset(result.concepts_root)
    cache: dict[int, BrodenSample] = {}
    with progress_bar("dissect: page", len(shown), enabled=show_progress) as advance:
        for u in shown:
            c = int(col[u])
            name = result.label_names[c] if c >= 0 else "-"
            rel = f"units/unit_{u + 1:04d}.png"
            dio.write_bytes(out / rel, render_unit_strip(result, u, ds, column=c, cache=cache))
            others = ", ".join(
                f"{cat} {result.label_names[int(pc[0][u])]} {float(pc[1][u]):.3f}"
                for cat, pc in per_cat.items() if int(pc[0][u]) >= 0 and cat != result.unit_category(c)
            )
            units_sec.figure(
                out / rel,
                f"unit {u + 1}: {name} ({result.unit_category(c)}), IoU {float(score[u]):.3f}; "
                f"threshold {float(result.thresholds[u]):.4g}. Best in the other categories: {others or '-'}.",
                rel=rel,
            )
            advance(1)
            if len(cache) > 4096:
                cache.clear()

    method = page.section("method", "Method")
    method.text(
        "NetDissect-Lite: the threshold of each unit is the top-quantile of its activations over all probe images and "
        "positions; each map is up-sampled bilinearly to the concept masks and thresholded; IoU = |active ∩ concept| / "
        "|active ∪ concept| summed over the probe, the active pixels counting only on images where the concept's "
        "category is annotated. Image-level concepts (scene, texture) cover their whole image."
    )
    method.text("Files: tally.csv (NetDissect-Lite's columns, units 1-based, best score first), summary.json, "
                "thresholds.npy and iou.npy (row = unit - 1, columns as in concepts.csv), units/*.png.")
    path = out / "dissect.html"
    dio.write_text(path, page.render())
    return path

"""``dissect(..., DissectOptions(union="lite"))`` against a transcription of NetDissect-Lite's tally arithmetic.

``lite_tally`` below follows ``FeatureOperator.tally_job`` and ``FeatureOperator.tally`` of
CSAILVision/NetDissect-Lite (``feature_operation.py``) and ``primary_categories_per_index`` of its
``loader/data_loader.py`` line by line, on the same activations (the model's layer in float32)
and the probe's own files (the c_<category>.csv coverages are read here with the csv module).
Two stand-ins: ``scipy.misc.imresize(mode='F')`` (gone from SciPy) is the bilinear
``align_corners=False`` resize it equals when up-sampling, and an image without pixel labels
starts its category tally at 0 (Lite reuses the previous unit's ``tally_cat`` there).
"""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepcluster.interpret.broden import BrodenDataset, BrodenWriter
from deepcluster.interpret.concepts import make_concept_probe
from deepcluster.interpret.dissect import DissectOptions, dissect

QUANTILE = 0.05
SIZE = 32


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 12, 5, stride=4, padding=2), nn.ReLU(), nn.Conv2d(12, 16, 1))


def _features(model: nn.Module, probe: BrodenDataset) -> np.ndarray:
    """The layer ``1`` activations dissect sees: [0, 1] pixels, mean 0.5, std 0.5, float32."""
    x = torch.from_numpy(np.stack([probe.load_image(i) for i in range(len(probe))])).float().div(255.0)
    with torch.no_grad():
        return model[:3]((x - 0.5) / 0.5).numpy()


def _concept_maps(probe: BrodenDataset) -> list[dict]:
    """What Lite's SegmentationPrefetcher yields per image: per category a list of label numbers
    (the index.csv entries are all numbers) or a K x sh x sw array of full label numbers."""
    maps = []
    for i in range(len(probe)):
        entry = {}
        masks = probe.load_masks(i)
        for cat in probe.categories:
            cell = probe._entries[cat][i]
            entry[cat] = list(cell) if all(isinstance(e, int) for e in cell) else masks[cat].astype(np.int64)
        sh, sw = probe.mask_size(i)
        entry.update(i=i, sh=sh, sw=sw)
        maps.append(entry)
    return maps


def _labelcat(root, categories: list[str], n_labels: int) -> np.ndarray:
    """Lite's ``self.labelcat = self.onehot(self.primary_categories_per_index())``."""
    coverage = {}
    for cat in categories:
        with open(root / f"c_{cat}.csv", newline="") as f:
            coverage[cat] = {int(r["number"]): float(r["coverage"]) for r in csv.DictReader(f)}
    primary = []
    for i in range(n_labels):
        _, maxcat = max((coverage[cat][i] if i in coverage[cat] else 0, ic) for ic, cat in enumerate(categories))
        primary.append(maxcat)
    primary = np.array(primary)
    labelcat = np.zeros((n_labels, np.amax(primary) + 1))
    labelcat[np.arange(n_labels), primary] = 1
    return labelcat


def _imresize_f(feature_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return F.interpolate(torch.from_numpy(feature_map)[None, None], size=size, mode="bilinear",
                         align_corners=False)[0, 0].numpy()


def lite_tally(features, threshold, concept_maps, categories, labelcat, n_labels):
    """NetDissect-Lite's tally_job + the IoU of tally(): (tally_both, tally_units_cat, tally_labels, iou)."""
    units = features.shape[1]
    tally_both = np.zeros((units, n_labels), dtype=np.float64)
    tally_units = np.zeros(units, dtype=np.float64)
    tally_units_cat = np.zeros((units, len(categories)), dtype=np.float64)
    tally_labels = np.zeros(n_labels, dtype=np.float64)
    for concept_map in concept_maps:
        img_index = concept_map["i"]
        scalars, pixels = [], []
        for cat in categories:
            label_group = concept_map[cat]
            shape = np.shape(label_group)
            if len(shape) % 2 == 0:
                label_group = [label_group]
            if len(shape) < 2:
                scalars += label_group
            else:
                pixels.append(label_group)
        for scalar in scalars:
            tally_labels[scalar] += concept_map["sh"] * concept_map["sw"]
        if pixels:
            pixels = np.concatenate(pixels)
            tally_label = np.bincount(pixels.ravel())
            if len(tally_label) > 0:
                tally_label[0] = 0
            tally_labels[: len(tally_label)] += tally_label
        for unit_id in range(units):
            feature_map = features[img_index][unit_id]
            if feature_map.max() > threshold[unit_id]:
                mask = _imresize_f(feature_map, (concept_map["sh"], concept_map["sw"]))
                indexes = np.argwhere(mask > threshold[unit_id])
                tally_units[unit_id] += len(indexes)
                tally_cat = np.zeros(labelcat.shape[1])
                if len(pixels) > 0:
                    tally_bt = np.bincount(pixels[:, indexes[:, 0], indexes[:, 1]].ravel())
                    if len(tally_bt) > 0:
                        tally_bt[0] = 0
                    tally_cat = np.dot(tally_bt[None, :], labelcat[: len(tally_bt), :])[0]
                    tally_both[unit_id, : len(tally_bt)] += tally_bt
                for scalar in scalars:
                    tally_cat += labelcat[scalar]
                    tally_both[unit_id, scalar] += len(indexes)
                tally_units_cat[unit_id] += len(indexes) * (tally_cat > 0)
    tally_units_cat = np.dot(tally_units_cat, labelcat.T)
    iou = tally_both / (tally_units_cat + tally_labels[np.newaxis, :] - tally_both + 1e-10)
    return tally_both, tally_units_cat, tally_labels, iou


def _lite_best(iou, labelcat):
    """Lite's per-category best label and score (pciou), and each unit's best category."""
    primary = labelcat.argmax(1)
    pciou = np.array([iou * (primary[np.arange(iou.shape[1])] == ci)[np.newaxis, :] for ci in range(labelcat.shape[1])])
    label_pciou = pciou.argmax(axis=2)
    score_pciou = pciou[np.arange(pciou.shape[0])[:, np.newaxis], np.arange(pciou.shape[1])[np.newaxis, :], label_pciou]
    bestcat = score_pciou.argsort(axis=0)[::-1][0]
    return label_pciou, score_pciou, bestcat


@pytest.fixture(scope="module")
def shared_probe(tmp_path_factory):
    """A probe where Lite and NetDissect differ: a concept listed in two categories ('stripes',
    texture and material), mask channels repeating a label, an image-level label also drawn in a
    pixel category, images without material or texture annotation."""
    root = tmp_path_factory.mktemp("lite") / "probe"
    rng = np.random.default_rng(1)
    w = BrodenWriter(root, pixel_categories=("color", "object", "material"), image_categories=("scene", "texture"))
    red, blue = w.add_label("red", "color"), w.add_label("blue", "color")
    disk, box = w.add_label("disk", "object"), w.add_label("box", "object")
    stripes = w.add_label("stripes", ("texture", "material"))
    wood = w.add_label("wood", "material")
    indoor, outdoor = w.add_label("indoor", "scene"), w.add_label("outdoor", "scene")
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(36):
        img = rng.integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8)
        color = np.where(xx < rng.integers(4, SIZE - 4), red, blue).astype(np.int32)
        obj = np.zeros((2, SIZE, SIZE), np.int32)
        cy, cx = rng.integers(6, SIZE - 6, 2)
        obj[0][(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = disk
        obj[1][(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = disk  # the same label in a second channel
        obj[1][: SIZE // 3, : SIZE // 3] = box
        masks = {"color": color, "object": obj}
        labels = {"scene": [indoor if i % 2 else outdoor]}
        if i % 3 == 0:
            masks["material"] = np.where(yy > rng.integers(8, SIZE - 8), stripes, wood).astype(np.int32)
            labels["texture"] = [stripes]
            img[0, ::4] = 255
        elif i % 3 == 1:
            labels["scene"] = []  # no scene annotation
        w.add_image(img, masks=masks, labels=labels)
    w.close()
    return root


@pytest.fixture(scope="module")
def builtin_probe(tmp_path_factory):
    return make_concept_probe(tmp_path_factory.mktemp("lite_builtin") / "p", n_images=40, size=SIZE, show_progress=False)


@pytest.mark.parametrize("which", ["shared_probe", "builtin_probe"])
def test_union_lite_equals_netdissect_lite_tally(which, request):
    root = request.getfixturevalue(which)
    probe = BrodenDataset(root)
    model = _net()
    res = dissect(model, "2", probe, DissectOptions(quantile=QUANTILE, device="cpu", show_progress=False, union="lite",
                                                   feature_cache_mb=0))
    features = _features(model, probe)
    threshold = np.percentile(features, 100 * (1 - QUANTILE), axis=[0, 2, 3])  # Lite's quantile_threshold
    np.testing.assert_allclose(res.thresholds, threshold, rtol=1e-6, atol=1e-6)

    categories = list(probe.categories)
    n_labels = max(probe.labels) + 1
    labelcat = _labelcat(probe.root, categories, n_labels)
    both, units_cat, labels, iou = lite_tally(features, res.thresholds.astype(np.float64), _concept_maps(probe),
                                              categories, labelcat, n_labels)
    cols = res.label_numbers
    assert (res.intersect > 0).any() and (res.iou > 0.01).any()
    np.testing.assert_array_equal(res.intersect, both[:, cols])
    np.testing.assert_array_equal(res.truth, labels[cols])
    np.testing.assert_array_equal(res.activation, units_cat[:, cols])
    np.testing.assert_allclose(res.iou, iou[:, cols], rtol=1e-6, atol=1e-9)

    # the tally's categories: Lite's primary category of every concept, and each unit's best
    primary = labelcat.argmax(1)
    assert [categories[primary[n]] for n in cols] == [c for (c,) in res.label_categories]
    label_pciou, score_pciou, bestcat = _lite_best(iou, labelcat)
    rows = {r["unit"]: r for r in res.tally_rows()}
    for u in range(res.units):
        if score_pciou[:, u].max() <= 0:
            continue
        row = rows[u + 1]
        assert row["category"] == categories[bestcat[u]]
        assert row["label"] == probe.labels[int(label_pciou[bestcat[u], u])].name
        assert row["score"] == pytest.approx(score_pciou[bestcat[u], u], rel=1e-6)
        for ci, cat in enumerate(categories):
            if score_pciou[ci, u] > 0:
                assert row[f"{cat}-label"] == probe.labels[int(label_pciou[ci, u])].name
                assert row[f"{cat}-iou"] == pytest.approx(score_pciou[ci, u], rel=1e-6)


def test_union_lite_differs_from_the_default_where_lite_does(shared_probe):
    """The default counts a unit's pixels against a category on every image annotating it; Lite
    only where the unit's pixels land on one of its labels -- so Lite's unions are no larger."""
    probe = BrodenDataset(shared_probe)
    options = DissectOptions(quantile=QUANTILE, device="cpu", show_progress=False)
    ours = dissect(_net(), "2", probe, options)
    lite = dissect(_net(), "2", probe, replace(options, union="lite"))
    assert ours.union == "annotated" and lite.union == "lite" and lite.summary()["union"] == "lite"
    assert not np.allclose(ours.iou, lite.iou)
    stripes = ours.label_names.index("stripes")
    assert set(ours.label_categories[stripes]) == {"material", "texture"}
    assert len(lite.label_categories[stripes]) == 1

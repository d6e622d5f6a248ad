"""Dissect profiles and the Learned Concepts Embedding on synthetic NetDissect-Lite tallies."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from deepcluster.cli import compare as cli_compare
from deepcluster.core.errors import DataError
from deepcluster.interpret.lce import (
    DissectProfile,
    build_profiles,
    default_model_names,
    learned_concepts_embedding,
    profile_matrix,
    read_tally_units,
)

CATEGORIES = ("object", "part", "material", "color")
# NetDissect-Lite's header (feature_operation.py): unit,category,label,score, then 5 columns per category.
HEADER = ["unit", "category", "label", "score"] + [
    f"{c}-{k}" for c in CATEGORIES for k in ("label", "truth", "activation", "intersect", "iou")]


def write_tally(path: Path, units: list[tuple[str, str, float]]) -> Path:
    """One row per unit (category, label, IoU), sorted by decreasing score as NetDissect-Lite does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    order = sorted(range(len(units)), key=lambda i: -units[i][2])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i in order:
            cat, lab, score = units[i]
            extra = []
            for c in CATEGORIES:
                extra += [lab if c == cat else "sky", 1200, 800, 100 if c == cat else 3, score if c == cat else 0.001]
            w.writerow([i + 1, cat, lab, f"{score:.4f}", *extra])
    return path


OBJECTS = ["car", "person", "dog", "tree", "house"]
MATERIALS = ["fur", "skin", "wood", "brick"]


def synthetic_units(kind: str, rng: np.random.Generator, n_units: int = 64) -> list[tuple[str, str, float]]:
    """'obj' models: mostly object units; 'mat' models: mostly material units; some parts and colours."""
    units = []
    for _ in range(n_units):
        u = rng.random()
        main, other = (OBJECTS, MATERIALS) if kind == "obj" else (MATERIALS, OBJECTS)
        cat_main, cat_other = ("object", "material") if kind == "obj" else ("material", "object")
        if u < 0.55:
            units.append((cat_main, str(rng.choice(main)), 0.05 + 0.1 * rng.random()))
        elif u < 0.65:
            units.append((cat_other, str(rng.choice(other)), 0.05 + 0.1 * rng.random()))
        elif u < 0.75:
            units.append(("part", str(rng.choice(["wheel", "leg", "head"])), 0.05 + 0.05 * rng.random()))
        elif u < 0.8:
            units.append(("color", str(rng.choice(["red", "blue"])), 0.05))
        else:
            units.append(("object", "sky", 0.01 + 0.02 * rng.random()))  # below the 0.04 threshold
    return units


@pytest.fixture
def six_tallies(tmp_path):
    rng = np.random.default_rng(0)
    tallies = {}
    for i, kind in enumerate(["obj", "mat", "obj", "mat", "obj", "mat"]):
        name = f"{kind}{i}"
        tallies[name] = write_tally(tmp_path / name / "dissect" / "tally.csv", synthetic_units(kind, rng))
    return tallies


def test_read_tally_netdissect_lite_format(tmp_path):
    path = write_tally(tmp_path / "tally.csv", [("object", "car", 0.12), ("material", "fur", 0.04),
                                                ("part", "wheel", 0.039), ("color", "red", 0.2)])
    assert path.read_text().splitlines()[0].startswith("unit,category,label,score,object-label,object-truth,")
    rows = read_tally_units(path)
    assert [r["unit"] for r in rows] == [4, 1, 2, 3]  # file order: by decreasing score
    by_unit = {r["unit"]: r for r in rows}
    assert by_unit[1] == {"unit": 1, "category": "object", "label": "car", "score": 0.12, "labelled": True}
    assert by_unit[2]["labelled"] and not by_unit[3]["labelled"]  # score >= 0.04 counts
    assert sum(r["labelled"] for r in read_tally_units(path, iou_threshold=0.1)) == 2

    bad = tmp_path / "bad.csv"
    bad.write_text("unit,label,score\n1,car,0.1\n")
    with pytest.raises(DataError, match="category"):
        read_tally_units(bad)
    with pytest.raises(DataError, match="nope.csv does not exist"):
        read_tally_units(tmp_path / "nope.csv")


def test_profiles_follow_the_thesis_normalisation(tmp_path):
    a = DissectProfile("a", {("object", "car"): 3, ("object", "dog"): 1, ("material", "fur"): 2})
    b = DissectProfile("b", {("object", "car"): 1, ("part", "wheel"): 4, ("color", "red"): 1})
    p = profile_matrix([a, b])
    assert p.concepts == [("object", "car"), ("object", "dog"), ("part", "wheel"), ("material", "fur"), ("color", "red")]
    assert p.category_sizes == {"object": 2, "part": 1, "material": 1, "color": 1}
    # D(m, c) / t_cat(c): t_object = 2 concepts in the super-set.
    assert np.allclose(p.values, [[1.5, 0.5, 0, 2, 0], [0.5, 0, 4, 0, 1]])
    assert p.abstracted_columns == ["unique_object", "unique_part", "unique_material", "unique_color",
                                    "units_object", "units_part", "units_material", "units_color"]
    assert np.allclose(p.abstracted, [[2, 0, 1, 0, 4, 0, 2, 0], [1, 1, 0, 1, 1, 4, 0, 1]])
    assert np.allclose(profile_matrix([a, b], normalize="none").values, p.counts)
    with pytest.raises(DataError, match="at least 2"):
        profile_matrix([a])
    with pytest.raises(DataError, match="unique"):
        profile_matrix([a, DissectProfile("a", {})])


def test_empty_tally_warns_and_keeps_a_zero_row(tmp_path, six_tallies):
    empty = write_tally(tmp_path / "empty" / "tally.csv", [("object", "sky", 0.01)] * 3)
    with pytest.warns(UserWarning, match="no unit"):
        p = build_profiles({**six_tallies, "empty": empty})
    assert p.counts[-1].sum() == 0 and p.n_units["empty"] == 3 and len(p.warnings) == 1


def test_lce_separates_two_kinds_of_models(six_tallies, tmp_path):
    p = build_profiles(six_tallies)
    assert p.categories == ["object", "part", "material", "color"]
    res = learned_concepts_embedding(p)
    assert res.coords.shape == (6, 3)
    assert np.all(res.explained_variance_ratio >= 0) and res.explained_variance_ratio.sum() <= 1 + 1e-9
    assert res.explained_variance_ratio[0] > 0.5
    kinds = [m[:3] for m in p.models]
    # Two groups (chosen by silhouette), exactly the two kinds, and PC1 separates them.
    assert len(set(res.groups)) == 2
    assert {g for g, k in zip(res.groups, kinds) if k == "obj"} != {g for g, k in zip(res.groups, kinds) if k == "mat"}
    assert len({g for g, k in zip(res.groups, kinds) if k == "obj"}) == 1
    pc1 = res.coords[:, 0]
    obj, mat = pc1[[k == "obj" for k in kinds]], pc1[[k == "mat" for k in kinds]]
    assert obj.max() < mat.min() or mat.max() < obj.min()
    # 3 axes × 8 abstracted columns; PC1 follows the object/material unit counts.
    assert len(res.correlations) == 3 * 8
    r = {(c["axis"], c["variable"]): c for c in res.correlations}
    assert abs(r[("PC1", "units_material")]["pearson_r"]) > 0.9
    assert np.sign(r[("PC1", "units_material")]["pearson_r"]) == -np.sign(r[("PC1", "units_object")]["pearson_r"])
    assert 0 <= r[("PC1", "units_material")]["pearson_p"] < 0.05
    fixed = learned_concepts_embedding(p, n_groups=3, method="agglomerative")
    assert len(set(fixed.groups)) == 3 and fixed.silhouettes == {}


def test_performance_correlations_and_errors(six_tallies, tmp_path):
    p = build_profiles(six_tallies)
    perf = tmp_path / "results.csv"
    lines = ["model,dataset,cls_acc,det_ap"]
    for i, m in enumerate(p.models):
        lines.append(f"{m},x,{0.9 if m.startswith('obj') else 0.6}{i},{50 + 3 * i}")
    perf.write_text("\n".join(lines + ["unrelated,x,0.1,1"]) + "\n")
    res = learned_concepts_embedding(p, performance=perf)
    assert list(res.performance) == ["cls_acc", "det_ap"]  # the text column is skipped
    rows = [c for c in res.correlations if c["source"] == "performance"]
    assert len(rows) == 3 * 2
    pc1_cls = next(c for c in rows if c["axis"] == "PC1" and c["variable"] == "cls_acc")
    assert abs(pc1_cls["pearson_r"]) > 0.9 and pc1_cls["n"] == 6

    missing = tmp_path / "missing.csv"
    missing.write_text("model,acc\n" + "\n".join(f"{m},0.5" for m in p.models[:-1]) + "\n")
    with pytest.raises(DataError, match=p.models[-1]):
        learned_concepts_embedding(p, performance=missing)
    no_model = tmp_path / "nomodel.csv"
    no_model.write_text("name,acc\na,1\n")
    with pytest.raises(DataError, match="'model' column"):
        learned_concepts_embedding(p, performance=no_model)


def test_default_names_skip_generic_folders(tmp_path):
    assert default_model_names([tmp_path / "runA" / "dissect" / "tally.csv", tmp_path / "runB" / "dissect"]) == ["runA", "runB"]
    names = default_model_names([tmp_path / "x" / "run", tmp_path / "y" / "run"])
    assert names == ["x/run", "y/run"]


# ---------------------------------------------------------------------------------------------
# CLI


def invoke(*args):
    app = typer.Typer(pretty_exceptions_enable=False)
    cli_compare.register(app)
    return CliRunner().invoke(app, [str(a) for a in args])


def test_lce_cli_end_to_end(six_tallies, tmp_path):
    out = tmp_path / "lce"
    perf = tmp_path / "results.csv"
    perf.write_text("model,acc\n" + "\n".join(f"{m},{0.5 + 0.05 * i}" for i, m in enumerate(six_tallies)) + "\n")
    folders = [Path(t).parent.parent for t in six_tallies.values()]  # run folders holding dissect/tally.csv
    res = invoke("lce", *folders, "--performance", perf, "--out", out)
    assert res.exit_code == 0, res.output
    for name in ("profiles.csv", "profile_counts.csv", "abstracted_profile.csv", "lce.csv", "components.csv",
                 "correlations.csv", "lce.json", "lce_pc1_pc2.png", "lce_pc1_pc3.png", "profiles.png",
                 "abstracted_profile.png", "correlations_abstracted.png", "correlations_performance.png"):
        assert (out / name).is_file(), name
    with open(out / "lce.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == list(six_tallies) and set(rows[0]) == {"model", "PC1", "PC2", "PC3", "group"}
    summary = json.loads((out / "lce.json").read_text())
    assert len(summary["explained_variance_ratio"]) == 3 and summary["explained_variance_total"] <= 1 + 1e-9
    with open(out / "correlations.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3 * (8 + 1)

    named = invoke("lce", *six_tallies.values(), *(["--name", "m"] * 6), "--out", tmp_path / "x")
    assert named.exit_code == 2 and "unique" in named.output and "Traceback" not in named.output
    one = invoke("lce", folders[0], "--out", tmp_path / "x")
    assert one.exit_code == 2 and "at least 2" in one.output
    bad = invoke("lce", *folders, "--performance", tmp_path / "none.csv", "--out", tmp_path / "x")
    assert bad.exit_code == 2 and "not found" in bad.output

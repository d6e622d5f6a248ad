"""Dissect profiles and the Learned Concepts Embedding (LCE) of a group of models.

Inter-model interpretation after Fawaz's thesis, ch. 3 ("3.4 Learned Concepts Embedding"):
every model is dissected (NetDissect: each unit of its last layer gets the concept whose
segmentation it overlaps best, and counts as *labelled* when that IoU reaches a threshold,
0.04 in the thesis); its **Dissect profile** counts the labelled units per concept over the
super-set of concepts found in all models, each count divided by the number of concepts of
the concept's category in that super-set,

    P[m, c] = D(m, c) / t_cat(c),

and the **LCE** is the PCA of that models × concepts matrix (three components). Models are
grouped by clustering their LCE coordinates, and each axis is explained by its correlations
with the **abstracted profile** (per category: the number of unique concepts and the total
number of labelled units) and, optionally, with downstream results of the models.

Input: NetDissect-Lite's ``tally.csv`` (columns ``unit,category,label,score`` then
``<cat>-label,<cat>-truth,<cat>-activation,<cat>-intersect,<cat>-iou`` per category; ``score``
is the IoU of the unit's best concept). Only the first four columns are read.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from deepcluster.core.errors import ConfigError, DataError
from deepcluster.core.files import csv_text, write_json, write_text
from deepcluster.interpret.tally import read_tally

#: IoU a unit's best concept must reach for the unit to count as labelled (NetDissect, thesis).
DEFAULT_IOU_THRESHOLD = 0.04
#: Broden's categories, in the order the thesis lists them; any other category follows, sorted.
CATEGORY_ORDER = ("object", "part", "material", "texture", "color", "scene")
TALLY_COLUMNS = ("unit", "category", "label", "score")

__all__ = [
    "DEFAULT_IOU_THRESHOLD",
    "DissectProfile",
    "LCEResult",
    "ProfileMatrix",
    "build_profiles",
    "default_model_names",
    "find_tally",
    "learned_concepts_embedding",
    "profile_matrix",
    "read_lce_groups",
    "read_performance",
    "read_tally_units",
    "write_lce_outputs",
]


# ---------------------------------------------------------------------------------------------
# Reading tallies


def read_tally_units(path: str | Path, *, iou_threshold: float = DEFAULT_IOU_THRESHOLD) -> list[dict[str, Any]]:
    """The units of a NetDissect-Lite ``tally.csv``, each with whether it is labelled.

    The file is parsed by :func:`deepcluster.interpret.tally.read_tally`.

    Parameters
    ----------
    path : str or Path
        The CSV; it needs the columns ``unit, category, label, score`` (``score`` = IoU of the
        unit's best concept); any other column (the per-category ``<cat>-iou`` ...) is ignored.
    iou_threshold : float
        A unit is *labelled* when ``score >= iou_threshold`` (default 0.04, as NetDissect and
        the thesis).

    Returns
    -------
    list[dict]
        ``{"unit": int, "category": str, "label": str, "score": float, "labelled": bool}`` per
        row, in file order (NetDissect-Lite sorts by decreasing score; units are 1-based).

    Raises
    ------
    DataError
        Missing file, missing columns, a non-numeric unit or score, or a unit listed twice.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ConfigError(f"the IoU threshold must lie in [0, 1], got {iou_threshold}")
    rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    for line, rec in enumerate(read_tally(path), start=2):
        unit, score = rec["unit"], rec["score"]
        if unit in seen:
            raise DataError(f"{path}, line {line}: unit {unit} is listed twice; a tally has one row per unit")
        seen.add(unit)
        category, label = rec["category"].strip(), rec["label"].strip()
        labelled = bool(math.isfinite(score) and score >= iou_threshold and category and label)
        rows.append({"unit": unit, "category": category, "label": label, "score": score, "labelled": labelled})
    return rows


_GENERIC_FOLDERS = {"dissect", "dissection", "netdissect", "interpret", "result", "results", "tally", "output"}


def find_tally(path: str | Path, *, layer: str | None = None) -> Path:
    """The ``tally.csv`` that ``path`` names: the file itself, or the one inside the folder.

    A folder is searched recursively; when it holds several tallies (one per layer), ``layer``
    keeps those with a folder of that name on their path.

    Raises
    ------
    DataError
        When no tally, or more than one, is found.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"{path} does not exist: pass a tally.csv or a dissection folder that contains one")
    direct = path / "tally.csv"
    if direct.is_file() and layer is None:
        return direct
    found = sorted(path.rglob("tally.csv"))
    if layer is not None:
        found = [p for p in found if layer in p.relative_to(path).parts[:-1] or (p == direct and path.name == layer)]
    if not found:
        where = f" for layer {layer!r}" if layer else ""
        raise DataError(f"no tally.csv{where} under {path}: dissect the model first, or pass the tally file itself")
    if len(found) > 1:
        listing = ", ".join(str(p) for p in found[:6]) + (" ..." if len(found) > 6 else "")
        raise DataError(f"{path} holds {len(found)} tallies ({listing}): pass one tally.csv"
                        + ("" if layer else ", or choose a layer with --layer"))
    return found[0]


def default_model_names(inputs: Sequence[str | Path]) -> list[str]:
    """Model names for tally inputs: the folder name (a tally file: its folder), skipping generic
    names such as ``dissect``; the shortest unique path suffix when two names collide."""
    parts_list: list[list[str]] = []
    for p in inputs:
        p = Path(p).resolve()
        folder = p.parent if p.suffix.lower() == ".csv" else p
        parts = [x for x in folder.parts if x not in ("/", "")]
        while len(parts) > 1 and parts[-1].lower() in _GENERIC_FOLDERS:
            parts.pop()
        parts_list.append(parts or [p.stem])
    names = [parts[-1] for parts in parts_list]
    depth = 1
    while len(set(names)) < len(names) and depth < max(len(p) for p in parts_list):
        depth += 1
        dup = {n for n in names if names.count(n) > 1}
        names = ["/".join(parts[-depth:]) if n in dup else n for n, parts in zip(names, parts_list)]
    return names


# ---------------------------------------------------------------------------------------------
# Profiles


@dataclass
class DissectProfile:
    """One model's dissection: labelled units per (category, concept).

    Attributes
    ----------
    name : str
    counts : dict[tuple[str, str], int]
        ``(category, label)`` → number of labelled units, D(m, c).
    n_units : int
        Units in the tally (labelled or not).
    source : str
        The tally file.
    """

    name: str
    counts: dict[tuple[str, str], int]
    n_units: int = 0
    source: str = ""

    @property
    def n_labelled(self) -> int:
        return int(sum(self.counts.values()))

    @classmethod
    def from_tally(cls, name: str, path: str | Path, *, iou_threshold: float = DEFAULT_IOU_THRESHOLD) -> DissectProfile:
        rows = read_tally_units(path, iou_threshold=iou_threshold)
        counts: dict[tuple[str, str], int] = {}
        for r in rows:
            if r["labelled"]:
                key = (r["category"], r["label"])
                counts[key] = counts.get(key, 0) + 1
        return cls(name=name, counts=counts, n_units=len(rows), source=str(path))


def _category_sort_key(category: str) -> tuple[int, str]:
    return (CATEGORY_ORDER.index(category), "") if category in CATEGORY_ORDER else (len(CATEGORY_ORDER), category)


@dataclass
class ProfileMatrix:
    """Dissect profiles of several models over the super-set of their concepts.

    Attributes
    ----------
    models : list[str]
        Row names.
    concepts : list[tuple[str, str]]
        Column ``(category, label)`` pairs, grouped by category (Broden order), then by label.
    counts : np.ndarray
        Raw D(m, c): labelled units, shape (models, concepts).
    values : np.ndarray
        The matrix the LCE is computed on: ``counts / t_cat(c)`` (``normalize="superset"``), or
        the raw counts (``normalize="none"``).
    categories : list[str]
        Categories present in the super-set, in column order.
    category_sizes : dict[str, int]
        t_cat: concepts of each category in the super-set.
    abstracted : np.ndarray
        The abstracted profile, shape (models, 2 × categories): columns ``abstracted_columns``.
    abstracted_columns : list[str]
        ``unique_<cat>`` (concepts with at least one unit) then ``units_<cat>`` (labelled units).
    n_units : dict[str, int]
        Units per model's tally.
    normalize : str
    warnings : list[str]
        Problems worth telling the user (e.g. a model without any labelled unit).
    """

    models: list[str]
    concepts: list[tuple[str, str]]
    counts: np.ndarray
    values: np.ndarray
    categories: list[str]
    category_sizes: dict[str, int]
    abstracted: np.ndarray
    abstracted_columns: list[str]
    n_units: dict[str, int] = field(default_factory=dict)
    normalize: str = "superset"
    warnings: list[str] = field(default_factory=list)

    @property
    def concept_names(self) -> list[str]:
        """Column names ``category/label``."""
        return [f"{c}/{lab}" for c, lab in self.concepts]


def profile_matrix(
    profiles: Sequence[DissectProfile],
    *,
    normalize: Literal["superset", "none"] = "superset",
) -> ProfileMatrix:
    """Stack Dissect profiles over the super-set of concepts found in all of them.

    Parameters
    ----------
    profiles : sequence of DissectProfile
        At least two, with unique names.
    normalize : {"superset", "none"}
        ``superset`` (the thesis): divide each count by t_cat(c), the number of concepts of the
        concept's category in the super-set; ``none``: raw unit counts.

    Raises
    ------
    DataError
        Fewer than two models, duplicate names, or no labelled unit in any model.
    """
    if len(profiles) < 2:
        raise DataError(f"an LCE compares models: give at least 2 dissected models, got {len(profiles)}")
    names = [p.name for p in profiles]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"model names must be unique, {', '.join(dup)} appear(s) twice: name the models with --name")
    if normalize not in ("superset", "none"):
        raise ConfigError(f"normalize must be 'superset' or 'none', got {normalize!r}")
    notes: list[str] = []
    for p in profiles:
        if p.n_labelled == 0:
            msg = (f"model {p.name}: no unit of {p.n_units} reaches the IoU threshold ({p.source or 'tally'}); "
                   "it is kept as an all-zero profile")
            notes.append(msg)
            warnings.warn(msg, stacklevel=2)
    superset = sorted({c for p in profiles for c in p.counts}, key=lambda c: (_category_sort_key(c[0]), c[1]))
    if not superset:
        raise DataError("no model has a labelled unit: nothing to compare (lower the IoU threshold, or check the tallies)")
    categories = list(dict.fromkeys(c for c, _ in superset))
    sizes = {cat: sum(1 for c, _ in superset if c == cat) for cat in categories}
    counts = np.array([[p.counts.get(c, 0) for c in superset] for p in profiles], dtype=np.float64)
    if normalize == "superset":
        values = counts / np.array([sizes[c] for c, _ in superset], dtype=np.float64)[None, :]
    else:
        values = counts.copy()
    cat_of = np.array([c for c, _ in superset])
    unique = np.stack([(counts[:, cat_of == cat] > 0).sum(1) for cat in categories], axis=1)
    units = np.stack([counts[:, cat_of == cat].sum(1) for cat in categories], axis=1)
    abstracted = np.concatenate([unique, units], axis=1).astype(np.float64)
    columns = [f"unique_{c}" for c in categories] + [f"units_{c}" for c in categories]
    return ProfileMatrix(models=names, concepts=superset, counts=counts, values=values, categories=categories,
                         category_sizes=sizes, abstracted=abstracted, abstracted_columns=columns,
                         n_units={p.name: p.n_units for p in profiles}, normalize=normalize, warnings=notes)


def build_profiles(
    tallies: Mapping[str, str | Path],
    *,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    normalize: Literal["superset", "none"] = "superset",
) -> ProfileMatrix:
    """Read one tally per model and build their :class:`ProfileMatrix`.

    Parameters
    ----------
    tallies : Mapping[str, str or Path]
        Model name → its ``tally.csv`` (or a folder holding exactly one).
    iou_threshold : float
        See :func:`read_tally_units`.
    normalize : {"superset", "none"}
        See :func:`profile_matrix`.
    """
    profiles = [DissectProfile.from_tally(name, find_tally(path), iou_threshold=iou_threshold)
                for name, path in tallies.items()]
    return profile_matrix(profiles, normalize=normalize)


# ---------------------------------------------------------------------------------------------
# Performance table


def read_performance(path: str | Path, models: Sequence[str] | None = None) -> tuple[list[str], dict[str, np.ndarray]]:
    """Read a downstream-results CSV: a ``model`` column and numeric columns.

    Parameters
    ----------
    path : str or Path
    models : sequence of str, optional
        When given, every one must have a row; values are returned in this order (extra rows are
        ignored).

    Returns
    -------
    tuple[list[str], dict[str, np.ndarray]]
        The model order and column name → float values (empty cells are NaN). Columns with a
        non-numeric cell are skipped.

    Raises
    ------
    DataError
        Missing file or ``model`` column, duplicate or missing models, no numeric column.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"performance table {path} not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        records = list(reader)
    if "model" not in header:
        raise DataError(f"{path} needs a 'model' column naming each model (got columns {', '.join(header) or 'none'})")
    by_model: dict[str, dict[str, str]] = {}
    for rec in records:
        name = (rec.get("model") or "").strip()
        if not name:
            continue
        if name in by_model:
            raise DataError(f"{path}: model {name!r} has two rows; give one row per model")
        by_model[name] = rec
    order = list(by_model) if models is None else list(models)
    missing = [m for m in order if m not in by_model]
    if missing:
        raise DataError(f"{path} has no row for model(s) {', '.join(missing)} "
                        f"(its models: {', '.join(by_model) or 'none'}); the 'model' column must use the LCE's names")
    columns: dict[str, np.ndarray] = {}
    for col in header:
        if col == "model" or not col:
            continue
        vals = []
        for m in order:
            raw = (by_model[m].get(col) or "").strip()
            if raw == "" or raw.lower() in {"nan", "na", "-"}:
                vals.append(np.nan)
                continue
            try:
                vals.append(float(raw.rstrip("%")))
            except ValueError:
                vals = None
                break
        if vals is not None:
            columns[col] = np.array(vals, dtype=np.float64)
    if not columns:
        raise DataError(f"{path} has no numeric column besides 'model': add the models' results (accuracy, AP, ...)")
    return order, columns


# ---------------------------------------------------------------------------------------------
# The embedding


@dataclass
class LCEResult:
    """The Learned Concepts Embedding of a :class:`ProfileMatrix`.

    Attributes
    ----------
    profiles : ProfileMatrix
    coords : np.ndarray
        (models, components) PCA coordinates (PC1, PC2, ...).
    explained_variance_ratio : np.ndarray
        Fraction of the profiles' variance each component explains.
    components : np.ndarray
        (components, concepts) PCA loadings (the thesis' appendix A.0.3).
    groups : list[str]
        Group letter (A, B, ...) of each model.
    group_method : str
        ``kmeans`` or ``agglomerative`` (``single`` when fewer than 3 models and no n_groups).
    silhouettes : dict[int, float]
        Silhouette score of each number of groups tried (automatic choice only).
    correlations : list[dict]
        One row per (axis, variable): ``axis, source, variable, n, pearson_r, pearson_p,
        spearman_r, spearman_p``; ``source`` is ``abstracted`` or ``performance``.
    performance : dict[str, np.ndarray]
        The performance columns used (model order of ``profiles.models``).
    """

    profiles: ProfileMatrix
    coords: np.ndarray
    explained_variance_ratio: np.ndarray
    components: np.ndarray
    groups: list[str]
    group_method: str
    silhouettes: dict[int, float] = field(default_factory=dict)
    correlations: list[dict[str, Any]] = field(default_factory=list)
    performance: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return self.profiles.models

    @property
    def axes(self) -> list[str]:
        return [f"PC{i + 1}" for i in range(self.coords.shape[1])]

    def group_of(self) -> dict[str, str]:
        return dict(zip(self.models, self.groups))


def group_letters(labels: Sequence[int]) -> list[str]:
    """Cluster ids → letters A, B, ... numbered by first appearance (G27, G28 ... after Z)."""
    order: dict[int, int] = {}
    for lab in labels:
        order.setdefault(int(lab), len(order))
    return [chr(ord("A") + order[int(lab)]) if order[int(lab)] < 26 else f"G{order[int(lab)] + 1}" for lab in labels]


def _cluster(x: np.ndarray, k: int, method: str, seed: int) -> np.ndarray:
    if k == 1:
        return np.zeros(len(x), dtype=np.int64)
    if method == "kmeans":
        from sklearn.cluster import KMeans

        with warnings.catch_warnings():  # duplicate models: fewer distinct clusters than k is fine
            warnings.simplefilter("ignore")
            return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x)


def correlation(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlations of ``x`` and ``y`` over their finite pairs, with p-values.

    NaN (no warning) when fewer than 3 finite pairs remain or either side is constant.
    """
    from scipy import stats

    ok = np.isfinite(x) & np.isfinite(y)
    xs, ys = np.asarray(x, dtype=np.float64)[ok], np.asarray(y, dtype=np.float64)[ok]
    out = {"n": int(ok.sum()), "pearson_r": np.nan, "pearson_p": np.nan, "spearman_r": np.nan, "spearman_p": np.nan}
    if len(xs) < 3 or np.ptp(xs) <= 1e-12 * max(1.0, np.abs(xs).max()) or np.ptp(ys) <= 1e-12 * max(1.0, np.abs(ys).max()):
        return out
    pr = stats.pearsonr(xs, ys)
    sr = stats.spearmanr(xs, ys)
    out.update(pearson_r=float(pr[0]), pearson_p=float(pr[1]), spearman_r=float(sr[0]), spearman_p=float(sr[1]))
    return out


def learned_concepts_embedding(
    profiles: ProfileMatrix,
    n_components: int = 3,
    n_groups: int | None = None,
    seed: int = 0,
    *,
    method: Literal["kmeans", "agglomerative"] = "kmeans",
    performance: Mapping[str, Sequence[float]] | str | Path | None = None,
    max_groups: int = 8,
) -> LCEResult:
    """PCA of the Dissect profiles, groups of models, and what the axes correlate with.

    Parameters
    ----------
    profiles : ProfileMatrix
        From :func:`build_profiles` (at least 2 models).
    n_components : int
        Components kept (3 in the thesis); at most (models − 1) and the number of concepts.
    n_groups : int or None
        Groups of models to form on the LCE coordinates; None chooses 2..``max_groups`` by the
        best silhouette when there are at least 3 models (one group otherwise).
    seed : int
        k-means seed.
    method : {"kmeans", "agglomerative"}
        Clustering of the coordinates (agglomerative: Ward linkage).
    performance : mapping, path or None
        Downstream results: column → one value per model (in ``profiles.models`` order), or a
        CSV path read by :func:`read_performance`.
    max_groups : int
        Largest number of groups the automatic choice tries.

    Returns
    -------
    LCEResult

    Raises
    ------
    ConfigError
        Bad ``n_components``, ``n_groups`` or ``method``.
    DataError
        All profiles equal (no variance to embed), or a performance table missing models.
    """
    from sklearn.decomposition import PCA

    n = len(profiles.models)
    if n < 2:
        raise DataError(f"an LCE compares models: give at least 2 dissected models, got {n}")
    if n_components < 1:
        raise ConfigError(f"n_components must be >= 1, got {n_components}")
    if method not in ("kmeans", "agglomerative"):
        raise ConfigError(f"group method must be 'kmeans' or 'agglomerative', got {method!r}")
    if n_groups is not None and not 1 <= n_groups <= n:
        raise ConfigError(f"--groups must lie between 1 and the number of models ({n}), got {n_groups}")
    x = profiles.values
    if np.allclose(x, x[0:1], rtol=0, atol=1e-12):
        raise DataError("all the models have the same Dissect profile: there is no variance to embed")
    k = min(n_components, n - 1, x.shape[1])  # n centred points span at most n - 1 dimensions
    pca = PCA(n_components=k, svd_solver="full", random_state=seed)
    coords = pca.fit_transform(x)
    ratio = np.nan_to_num(pca.explained_variance_ratio_, nan=0.0)

    silhouettes: dict[int, float] = {}
    if n_groups is None and n >= 3:
        from sklearn.metrics import silhouette_score

        best_s, best_labels = -np.inf, np.zeros(n, dtype=np.int64)
        for g in range(2, min(max_groups, n - 1) + 1):
            labels = _cluster(coords, g, method, seed)
            if len(np.unique(labels)) < 2:
                continue
            s = float(silhouette_score(coords, labels))
            silhouettes[g] = s
            if s > best_s + 1e-12:
                best_s, best_labels = s, labels
        labels, used = best_labels, method
    elif n_groups is None:
        labels, used = np.zeros(n, dtype=np.int64), "single"
    else:
        labels, used = _cluster(coords, n_groups, method, seed), method if n_groups > 1 else "single"

    if isinstance(performance, (str, Path)):
        _, perf = read_performance(performance, profiles.models)
    else:
        perf = {}
        for col, vals in (performance or {}).items():
            arr = np.asarray(vals, dtype=np.float64)
            if arr.shape != (n,):
                raise DataError(f"performance column {col!r} has {arr.size} values for {n} models")
            perf[str(col)] = arr

    rows: list[dict[str, Any]] = []
    axes = [f"PC{i + 1}" for i in range(k)]
    sources = [("abstracted", col, profiles.abstracted[:, j]) for j, col in enumerate(profiles.abstracted_columns)]
    sources += [("performance", col, vals) for col, vals in perf.items()]
    for source, var, vals in sources:
        for a, axis in enumerate(axes):
            rows.append({"axis": axis, "source": source, "variable": var, **correlation(coords[:, a], vals)})

    return LCEResult(profiles=profiles, coords=coords, explained_variance_ratio=ratio, components=pca.components_,
                     groups=group_letters(labels), group_method=used, silhouettes=silhouettes, correlations=rows,
                     performance=perf)


# ---------------------------------------------------------------------------------------------
# Writers


def read_lce_groups(path: str | Path) -> dict[str, str]:
    """Model → group of an ``lce.csv`` written by :func:`write_lce_outputs`.

    Raises
    ------
    DataError
        Missing file or missing ``model``/``group`` columns.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "lce.csv"
    if not path.is_file():
        raise DataError(f"{path} not found: pass the lce.csv written by `deepcluster lce`")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        if "model" not in header or "group" not in header:
            raise DataError(f"{path} needs 'model' and 'group' columns (the lce.csv written by `deepcluster lce`)")
        return {r["model"].strip(): r["group"].strip() for r in reader if (r.get("model") or "").strip()}


def write_lce_outputs(result: LCEResult, out: str | Path, *, figures: bool = True) -> dict[str, Path]:
    """Write the LCE's tables and figures into ``out``.

    Files: ``profiles.csv`` (normalised profile matrix), ``profile_counts.csv`` (raw units),
    ``abstracted_profile.csv``, ``lce.csv`` (coordinates + group), ``components.csv`` (PCA
    loadings per concept), ``correlations.csv``, ``lce.json``; figures ``lce_pc1_pc2.png``,
    ``lce_pc1_pc3.png`` (3 components), ``profiles.png``, ``abstracted_profile.png``,
    ``correlations_abstracted.png`` and ``correlations_performance.png`` (with a performance table).

    Returns
    -------
    dict[str, Path]
        Output name → path.
    """
    out = Path(out)
    p = result.profiles
    paths: dict[str, Path] = {}

    def put(name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        # floats as .6g, non-finite ones (a correlation without variance) as empty cells
        write_text(out / name, csv_text(rows, columns, float_format=".6g"))
        paths[name] = out / name

    put("profiles.csv", ["model", *p.concept_names], [[m, *map(float, row)] for m, row in zip(p.models, p.values)])
    put("profile_counts.csv", ["model", "n_units", *p.concept_names],
        [[m, p.n_units.get(m, 0), *map(int, row)] for m, row in zip(p.models, p.counts)])
    put("abstracted_profile.csv", ["model", *p.abstracted_columns],
        [[m, *map(int, row)] for m, row in zip(p.models, p.abstracted)])
    put("lce.csv", ["model", *result.axes, "group"],
        [[m, *map(float, c), g] for m, c, g in zip(p.models, result.coords, result.groups)])
    put("components.csv", ["category", "concept", *result.axes],
        [[c, lab, *map(float, result.components[:, j])] for j, (c, lab) in enumerate(p.concepts)])
    cols = ["axis", "source", "variable", "n", "pearson_r", "pearson_p", "spearman_r", "spearman_p"]
    put("correlations.csv", cols, [[r[c] for c in cols] for r in result.correlations])
    summary = {
        "models": p.models,
        "n_concepts": len(p.concepts),
        "category_sizes": p.category_sizes,
        "normalize": p.normalize,
        "explained_variance_ratio": [float(v) for v in result.explained_variance_ratio],
        "explained_variance_total": float(np.sum(result.explained_variance_ratio)),
        "groups": result.group_of(),
        "group_method": result.group_method,
        "silhouettes": {str(k): v for k, v in result.silhouettes.items()},
        "labelled_units": {m: int(row.sum()) for m, row in zip(p.models, p.counts)},
        "performance_columns": list(result.performance),
        "warnings": p.warnings,
    }
    write_json(out / "lce.json", summary)
    paths["lce.json"] = out / "lce.json"
    if figures:
        paths.update(_lce_figures(result, out))
    return paths


def _lce_figures(result: LCEResult, out: Path) -> dict[str, Path]:
    """The figures of :func:`write_lce_outputs`: the LCE scatter plot(s), the profiles, the
    abstracted profile and the correlation heatmaps."""
    paths: dict[str, Path] = {}
    n_comp = result.coords.shape[1]
    paths.update(_lce_scatter(result, 0, 1 if n_comp > 1 else -1, out))
    if n_comp > 2:
        paths.update(_lce_scatter(result, 0, 2, out))
    paths["profiles.png"] = _profiles_figure(result.profiles, out / "profiles.png")
    paths["abstracted_profile.png"] = _abstracted_figure(result.profiles, out / "abstracted_profile.png")
    for source, title in (("abstracted", "Correlation (Pearson) of the LCE axes with the abstracted profile"),
                          ("performance", "Correlation (Pearson) of the LCE axes with performance")):
        rows = [r for r in result.correlations if r["source"] == source]
        if rows:
            name = f"correlations_{source}.png"
            paths[name] = _correlation_figure(result, rows, title, out / name)
    return paths


def _lce_scatter(result: LCEResult, i: int, j: int, out: Path) -> dict[str, Path]:
    """The models on components ``i`` and ``j`` (on component ``i`` alone when ``j`` < 0),
    coloured by group."""
    from deepcluster.core.plot import label_colors, new_figure, save_png

    p = result.profiles
    letters = sorted(set(result.groups), key=result.groups.index)
    colours = label_colors(len(letters))
    colour_of = {g: colours[k] for k, g in enumerate(letters)}
    ratio = result.explained_variance_ratio
    fig = new_figure(6.5, 5.0)
    ax = fig.add_subplot()
    for g in letters:
        idx = [t for t, gg in enumerate(result.groups) if gg == g]
        ax.scatter(result.coords[idx, i], result.coords[idx, j] if j >= 0 else np.zeros(len(idx)),
                   color=colour_of[g], s=55, label=f"group {g}", edgecolor="black", linewidth=0.5)
    for t, m in enumerate(p.models):
        ax.annotate(m, (result.coords[t, i], result.coords[t, j] if j >= 0 else 0.0), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(f"PC{i + 1} ({100 * ratio[i]:.1f}% of variance)")
    if j >= 0:
        ax.set_ylabel(f"PC{j + 1} ({100 * ratio[j]:.1f}% of variance)")
    else:
        ax.set_yticks([])
    ax.axhline(0, color="0.85", lw=0.8, zorder=0)
    ax.axvline(0, color="0.85", lw=0.8, zorder=0)
    ax.set_title(f"Learned Concepts Embedding ({len(p.models)} models, {len(p.concepts)} concepts)")
    if len(letters) > 1:
        ax.legend(fontsize=8, loc="best")
    name = f"lce_pc{i + 1}_pc{j + 1}.png" if j >= 0 else "lce_pc1.png"
    return {name: save_png(fig, out / name)}


def _profiles_figure(p: ProfileMatrix, path: Path) -> Path:
    """The profile matrix: models x concepts, grouped by category."""
    from deepcluster.core.plot import new_figure, save_png

    n_c = len(p.concepts)
    fig = new_figure(min(40, 3 + 0.14 * n_c), 1.8 + 0.32 * len(p.models))
    ax = fig.add_subplot()
    im = ax.imshow(p.values, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(p.models)), p.models, fontsize=8)
    if n_c <= 250:
        ax.set_xticks(range(n_c), [lab for _, lab in p.concepts], rotation=90, fontsize=6)
    else:
        ax.set_xticks([])
    start = 0
    for cat in p.categories:
        size = p.category_sizes[cat]
        if start:
            ax.axvline(start - 0.5, color="white", lw=1.5)
        ax.text(start + size / 2 - 0.5, -0.7, cat, ha="center", va="bottom", fontsize=8)
        start += size
    fig.colorbar(im, ax=ax, label="units / concepts in category" if p.normalize == "superset" else "units",
                 shrink=0.8)
    ax.set_title("Dissect profiles", pad=16)
    return save_png(fig, path)


def _abstracted_figure(p: ProfileMatrix, path: Path) -> Path:
    """Abstracted profile (thesis Figure 3.4): unique concepts and units per category."""
    from deepcluster.core.plot import label_colors, new_figure, save_png

    n_cat = len(p.categories)
    fig = new_figure(3 + 0.45 * len(p.models), 5.5)
    axs = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(p.models))
    width = 0.8 / n_cat
    cat_colours = label_colors(n_cat)
    for r, (title, offset) in enumerate((("unique concepts", 0), ("labelled units", n_cat))):
        for c, cat in enumerate(p.categories):
            axs[r].bar(x + (c - (n_cat - 1) / 2) * width, p.abstracted[:, offset + c], width, color=cat_colours[c],
                       label=cat)
        axs[r].set_ylabel(title)
    axs[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axs[1].set_xticks(x, p.models, rotation=60, ha="right", fontsize=8)
    axs[0].set_title("Abstracted Dissect profile")
    return save_png(fig, path)


def _correlation_figure(result: LCEResult, rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Heatmap of the Pearson correlations ``rows`` (variables x LCE axes)."""
    from deepcluster.core.plot import new_figure, save_png

    variables = list(dict.fromkeys(r["variable"] for r in rows))
    mat = np.full((len(variables), len(result.axes)), np.nan)
    for r in rows:
        mat[variables.index(r["variable"]), result.axes.index(r["axis"])] = r["pearson_r"]
    fig = new_figure(2.5 + 1.0 * len(result.axes), 1.5 + 0.3 * len(variables))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(mat), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(result.axes)), result.axes)
    ax.set_yticks(range(len(variables)), variables, fontsize=8)
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, "-" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                color="white" if np.isfinite(v) and abs(v) > 0.6 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize=9)
    return save_png(fig, path)


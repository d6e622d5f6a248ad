"""Centered Kernel Alignment (CKA) between layers of networks, linear kernel, debiased by default.

Linear CKA (Kornblith et al., 2019) compares two representations of the same ``n`` inputs,
X (n × d1) and Y (n × d2)::

    CKA(X, Y) = HSIC(X, Y) / sqrt(HSIC(X, X) · HSIC(Y, Y))

with ``HSIC(X, Y) ∝ ‖XᵀY‖²_F`` for column-centred features (= tr(K H L H), K = XXᵀ, L = YYᵀ).
It is invariant to orthogonal transforms and isotropic scaling of either side, not to
arbitrary invertible linear maps. The plain (biased) estimator is pulled up by the feature
dimension when n is small; ``debiased=True`` replaces HSIC by the unbiased U-statistic of
Song et al. (2012) -- the "debiased CKA" of Kornblith et al. (2019, appendix) and Nguyen,
Raghu & Kornblith (2021)::

    HSIC₁(K, L) = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1] / (n(n−3))

where K̃, L̃ are the Gram matrices with their diagonals set to zero. For centred features the
same value follows from d×d products only (:func:`_hsic_features`), so the n × n Gram matrices
are built only when a layer is wider than the number of samples.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from deepcluster.core.errors import ConfigError, DataError
from deepcluster.core.files import write_csv, write_json
from deepcluster.core.precision import FP32, Precision, run_precision

Method = Literal["auto", "features", "gram"]

__all__ = [
    "SimilarityResult",
    "cka_matrix",
    "layer_similarity",
    "linear_cka",
    "similarity_for_runs",
    "write_similarity_outputs",
]


def _as_features(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim < 2:
        raise DataError(f"{what} must be n × d features (one row per input), got shape {a.shape}")
    a = a.reshape(a.shape[0], -1)
    if not np.all(np.isfinite(a)):
        raise DataError(f"{what} holds NaN or infinite values")
    return a


def _centre(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=0, keepdims=True)


def _check_n(n: int, debiased: bool) -> None:
    if n < (4 if debiased else 2):
        raise DataError(f"CKA needs at least {4 if debiased else 2} inputs{' (debiased estimator)' if debiased else ''}, got {n}")


def _debias(xty: float, rows_x: np.ndarray, rows_y: np.ndarray, n: int) -> float:
    """Unbiased HSIC (× n(n−3)) from ⟨K, L⟩_F, diag(K), diag(L) of *centred* linear Grams.

    With K centred, 1ᵀK1 = 0, so 1ᵀK̃1 = −tr K and K̃1 = −diag K in Song et al.'s estimator.
    """
    return float(xty - n / (n - 2) * float(rows_x @ rows_y) + rows_x.sum() * rows_y.sum() / ((n - 1) * (n - 2)))


def _hsic_features(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """HSIC of centred features from the d1 × d2 product ``XᵀY`` (no n × n matrix)."""
    xty = float(np.sum((x.T @ y) ** 2))
    if not debiased:
        return xty
    return _debias(xty, np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y), x.shape[0])


def _hsic_gram(k: np.ndarray, l: np.ndarray, debiased: bool) -> float:
    """HSIC of two Gram matrices: tr(KHLH) (biased) or Song et al.'s U-statistic (debiased)."""
    n = k.shape[0]
    if not debiased:
        kc = k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()
        lc = l - l.mean(0, keepdims=True) - l.mean(1, keepdims=True) + l.mean()
        return float(np.sum(kc * lc))
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    k1, l1 = kt.sum(1), lt.sum(1)
    return float(np.sum(kt * lt) + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(k1 @ l1))


def _ratio(xy: float, xx: float, yy: float) -> float:
    den = xx * yy
    if not np.isfinite(den) or den <= 0:
        return float("nan")
    return float(xy / np.sqrt(den))


def linear_cka(x: Any, y: Any, *, debiased: bool = True, method: Method = "auto") -> float:
    """Linear CKA between two representations of the same inputs.

    Parameters
    ----------
    x, y : array-like
        (n, d1) and (n, d2) features (more dimensions are flattened), rows in the same input
        order; computed in float64 after centring each column.
    debiased : bool
        Use the unbiased HSIC estimator (Song et al. 2012), as "debiased CKA"; the value can be
        slightly negative for unrelated features. ``False``: the original estimator.
    method : {"auto", "features", "gram"}
        ``features`` works with d1 × d2 products (‖XᵀY‖²_F), ``gram`` with n × n Gram matrices;
        ``auto`` takes ``features`` unless a layer is wider than the number of inputs.

    Returns
    -------
    float
        CKA in [0, 1] (debiased: about [−small, 1]); NaN when one side is constant.

    Raises
    ------
    DataError
        Different numbers of rows, too few rows (4 for the debiased estimator), NaNs.
    """
    a, b = _as_features(x, "x"), _as_features(y, "y")
    if a.shape[0] != b.shape[0]:
        raise DataError(f"CKA compares representations of the same inputs: x has {a.shape[0]} rows, y {b.shape[0]}")
    _check_n(a.shape[0], debiased)
    if method not in ("auto", "features", "gram"):
        raise ConfigError(f"method must be auto, features or gram, got {method!r}")
    a, b = _centre(a), _centre(b)
    if method == "gram" or (method == "auto" and max(a.shape[1], b.shape[1]) > a.shape[0]):
        k, l = a @ a.T, b @ b.T
        return _ratio(_hsic_gram(k, l, debiased), _hsic_gram(k, k, debiased), _hsic_gram(l, l, debiased))
    return _ratio(_hsic_features(a, b, debiased), _hsic_features(a, a, debiased), _hsic_features(b, b, debiased))


@dataclass
class _Prepared:
    """One layer ready for many comparisons: centred features, or their Gram when wider than n."""

    mat: np.ndarray
    is_gram: bool
    rows: np.ndarray  # diag of the centred Gram (squared row norms)
    self_hsic: float


def _prepare(x: Any, debiased: bool, what: str) -> _Prepared:
    a = _centre(_as_features(x, what))
    rows = np.einsum("ij,ij->i", a, a)
    if a.shape[1] > a.shape[0]:
        k = a @ a.T
        xx = float(np.sum(k * k))
        return _Prepared(k, True, rows, _debias(xx, rows, rows, a.shape[0]) if debiased else xx)
    return _Prepared(a, False, rows, _hsic_features(a, a, debiased))


def _cross(p: _Prepared, q: _Prepared, debiased: bool) -> float:
    if not p.is_gram and not q.is_gram:
        xty = float(np.sum((p.mat.T @ q.mat) ** 2))
    elif p.is_gram and q.is_gram:
        xty = float(np.sum(p.mat * q.mat))
    else:
        g, f = (p, q) if p.is_gram else (q, p)
        xty = float(np.sum((g.mat @ f.mat) * f.mat))  # ⟨K, YYᵀ⟩ = tr(Yᵀ K Y)
    return _debias(xty, p.rows, q.rows, len(p.rows)) if debiased else xty


def cka_matrix(features_a: Mapping[str, Any], features_b: Mapping[str, Any] | None = None, *,
               debiased: bool = True) -> np.ndarray:
    """CKA of every layer of ``features_a`` against every layer of ``features_b``.

    Parameters
    ----------
    features_a, features_b : Mapping[str, array-like]
        Layer → (n, d) features of the same n inputs; ``features_b=None`` compares
        ``features_a`` with itself (a symmetric matrix with ones on the diagonal).
    debiased : bool
        See :func:`linear_cka`.

    Returns
    -------
    np.ndarray
        (len(features_a), len(features_b)) in the mappings' key order.
    """
    pa = {k: _prepare(v, debiased, f"layer {k}") for k, v in features_a.items()}
    pb = pa if features_b is None else {k: _prepare(v, debiased, f"layer {k}") for k, v in features_b.items()}
    sizes = {len(p.rows) for p in [*pa.values(), *pb.values()]}
    if len(sizes) > 1:
        raise DataError(f"CKA compares representations of the same inputs: got {sorted(sizes)} rows across layers")
    if sizes:
        _check_n(sizes.pop(), debiased)
    return _matrix(list(pa.values()), list(pb.values()), debiased, symmetric=features_b is None)


def _matrix(pa: Sequence[_Prepared], pb: Sequence[_Prepared], debiased: bool, *, symmetric: bool) -> np.ndarray:
    out = np.full((len(pa), len(pb)), np.nan)
    for i, p in enumerate(pa):
        for j, q in enumerate(pb):
            if symmetric and j < i:
                out[i, j] = out[j, i]
                continue
            if symmetric and i == j:
                out[i, j] = 1.0 if p.self_hsic > 0 else np.nan
                continue
            out[i, j] = _ratio(_cross(p, q, debiased), p.self_hsic, q.self_hsic)
    return out


# ---------------------------------------------------------------------------------------------
# Networks


@dataclass
class SimilarityResult:
    """CKA between every pair of (model, layer).

    Attributes
    ----------
    keys : list[tuple[str, str]]
        ``(model, layer)`` of each row/column of ``matrix``.
    matrix : np.ndarray
        Symmetric CKA matrix.
    n_samples : int
    dims : dict[tuple[str, str], int]
        Feature dimension of each layer.
    debiased : bool
    """

    keys: list[tuple[str, str]]
    matrix: np.ndarray
    n_samples: int
    dims: dict[tuple[str, str], int] = field(default_factory=dict)
    debiased: bool = True

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(m for m, _ in self.keys))

    def rows(self, *, cross_only: bool = False) -> list[dict[str, Any]]:
        """One dict per unordered pair ``(model_a, layer_a, model_b, layer_b, cka)``, i < j."""
        out = []
        for i, (ma, la) in enumerate(self.keys):
            for j in range(i + 1, len(self.keys)):
                mb, lb = self.keys[j]
                if cross_only and ma == mb:
                    continue
                out.append({"model_a": ma, "layer_a": la, "model_b": mb, "layer_b": lb, "cka": float(self.matrix[i, j])})
        return out

    def block(self, model_a: str, model_b: str) -> tuple[list[str], list[str], np.ndarray]:
        """Layers of ``model_a`` × layers of ``model_b`` and their CKA sub-matrix."""
        ia = [i for i, (m, _) in enumerate(self.keys) if m == model_a]
        ib = [i for i, (m, _) in enumerate(self.keys) if m == model_b]
        return [self.keys[i][1] for i in ia], [self.keys[i][1] for i in ib], self.matrix[np.ix_(ia, ib)]


def layer_similarity(
    models: Mapping[str, tuple[Any, tuple[Sequence[float], Sequence[float]]]],
    images: Any,
    layers: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    *,
    debiased: bool = True,
    pool_budget: int | None = None,
    batch_size: int = 256,
    device: Any = "cpu",
    show_progress: bool = False,
    precision: Precision | Mapping[str, Precision] = FP32,
) -> SimilarityResult:
    """CKA between the layers of several networks on the same images.

    Parameters
    ----------
    models : Mapping[str, (nn.Module, (mean, std))]
        Name → a :class:`~deepcluster.models.DeepClusterNet` and its input normalisation.
    images : torch.Tensor
        uint8 images N×C×H×W, fed to every model.
    layers : mapping, sequence or None
        Probe layers per model (a mapping), the same for all (a sequence), or every probe layer
        of each model (None).
    debiased : bool
        See :func:`linear_cka`.
    pool_budget : int or None
        Conv maps are average-pooled to at most this many dimensions, as the linear probes do
        (:func:`~deepcluster.evaluate.pooling.extract_pooled_features`); None keeps them whole.
    batch_size, device, show_progress
        Feature extraction settings.
    precision : Precision or mapping of name to Precision
        Arithmetic of each model's forward passes (its run's own, for run folders).

    Returns
    -------
    SimilarityResult
    """
    from deepcluster.evaluate.pooling import extract_pooled_features
    from deepcluster.features import FeatureOptions

    if not models:
        raise DataError("give at least one model to compare")
    n = len(images)
    _check_n(n, debiased)
    prepared: list[_Prepared] = []
    keys: list[tuple[str, str]] = []
    dims: dict[tuple[str, str], int] = {}
    for name, (model, (mean, std)) in models.items():
        if layers is None:
            wanted = list(model.probe_layers())
        elif isinstance(layers, Mapping):
            if name not in layers:
                raise ConfigError(f"no layers given for model {name}")
            wanted = list(layers[name])
        else:
            wanted = list(layers)
        if not wanted:
            raise ConfigError(f"no layer to compare for model {name}")
        model.to(device)
        reader = FeatureOptions(mean, std, device=device, batch_size=batch_size, show_progress=show_progress,
                                precision=precision[name] if isinstance(precision, Mapping) else precision)
        feats = extract_pooled_features(model, images, reader, layers=wanted, description=f"{name}: features",
                                        budget=pool_budget if pool_budget is not None else sys.maxsize)
        for layer in wanted:
            x = feats.pop(layer)
            dims[(name, layer)] = int(x.shape[1])
            prepared.append(_prepare(x, debiased, f"{name}/{layer}"))
            keys.append((name, layer))
            del x
    matrix = _matrix(prepared, prepared, debiased, symmetric=True)
    return SimilarityResult(keys=keys, matrix=matrix, n_samples=n, dims=dims, debiased=debiased)


def similarity_for_runs(
    runs: Sequence[str | Path],
    *,
    names: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    sample: int | None = 2000,
    checkpoint: str = "last",
    debiased: bool = True,
    pool_budget: int | None = None,
    device: str | None = None,
    show_progress: bool = False,
    log: Callable[[str], None] | None = None,
    weights: Sequence[str | Path | None] | None = None,
    weights_prefix: Sequence[str | None] | None = None,
) -> SimilarityResult:
    """CKA between the layers of run folders, on a sample of their (shared) dataset.

    The images are ``sample`` images of the runs' test split (the training split when none is
    configured), drawn with the first run's seed. Runs must use the same dataset.

    Parameters
    ----------
    runs : sequence of run folders
    names : model names (default: the folder names)
    layers : probe layers compared in every run (default: all of each run's probe layers)
    sample : images used (None: the whole split)
    checkpoint : ``last``, ``init`` or a cycle number with a kept checkpoint
    pool_budget : conv-map dimension budget (default: the first run's ``eval.pool_budget``)
    device : ``auto``/``cpu``/``cuda`` (default: the first run's device setting)
    weights : one entry per run: a weights file (a state dict or a published checkpoint) whose
        backbone is loaded strictly into the run's architecture instead of its checkpoint's tensors,
        or ``None`` (``-``) for the checkpoint; the same folder may then appear twice (default
        names ``FOLDER`` and ``FOLDER+STEM``). See :func:`~deepcluster.interpret.ensemble.load_runs`.
    weights_prefix : the backbone's key prefix in the weights files: one for all or one per run
    log : progress lines, and each weights file's one-line load report
    """
    from deepcluster.core.device import resolve_device
    from deepcluster.data.splits import load_split, normalization
    from deepcluster.interpret.ensemble import describe_sources, load_runs

    log = log or (lambda m: None)
    loaded = load_runs(runs, names=names, checkpoint=checkpoint, need_test_split=False, weights=weights,
                       weights_prefix=weights_prefix, log=log)
    cfg = loaded[0].cfg
    split = cfg.data.test_split or cfg.data.split
    if sample is not None and sample < 4:
        raise ConfigError(f"--sample must be at least 4 images, got {sample}")
    data = load_split(cfg, split, sample)
    images = data.images_tensor()
    log(f"CKA on {len(images)} images of {cfg.data.name}/{split}, {describe_sources(loaded, checkpoint)}")
    channels = int(images.shape[1])
    dev = resolve_device(device or cfg.device)
    budget = pool_budget if pool_budget is not None else cfg.eval.pool_budget
    # each network reads the images as it was trained to (data.mean/std: e.g. ImageNet's for an imported FAIR net)
    return layer_similarity({r.name: (r.model, normalization(r.cfg, channels)) for r in loaded}, images, layers,
                            debiased=debiased,
                            pool_budget=budget, batch_size=cfg.feature_batch_size, device=dev,
                            show_progress=show_progress, precision={r.name: run_precision(r.cfg, dev) for r in loaded})


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def write_similarity_outputs(result: SimilarityResult, out: str | Path, *, figures: bool = True,
                             max_pair_figures: int = 15) -> dict[str, Path]:
    """Write ``cka.csv`` (model_a, layer_a, model_b, layer_b, cka; every unordered pair),
    ``cka.json``, ``cka.png`` (all model-layers) and ``cka_<a>__<b>.png`` per pair of models."""
    out = Path(out)
    paths: dict[str, Path] = {}
    write_csv(out / "cka.csv", result.rows(), ["model_a", "layer_a", "model_b", "layer_b", "cka"], float_format=".6f")
    paths["cka.csv"] = out / "cka.csv"
    write_json(out / "cka.json", {
        "debiased": result.debiased, "n_samples": result.n_samples,
        "keys": [list(k) for k in result.keys],
        "dims": {f"{m}/{lay}": d for (m, lay), d in result.dims.items()},
        "matrix": [[None if not np.isfinite(v) else round(float(v), 6) for v in row] for row in result.matrix],
    })
    paths["cka.json"] = out / "cka.json"
    if not figures:
        return paths
    labels = [f"{m}/{lay}" for m, lay in result.keys]
    paths["cka.png"] = _heatmap(result.matrix, labels, labels, out / "cka.png",
                                f"{'debiased ' if result.debiased else ''}linear CKA ({result.n_samples} images)",
                                blocks=[m for m, _ in result.keys])
    models = result.models
    pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]
    for a, b in pairs[:max_pair_figures]:
        la, lb, sub = result.block(a, b)
        name = f"cka_{_safe(a)}__{_safe(b)}.png"
        paths[name] = _heatmap(sub, la, lb, out / name, f"CKA: {a} (rows) vs {b} (columns)", ylabel=a, xlabel=b)
    return paths


def _heatmap(mat: np.ndarray, rows: list[str], cols: list[str], path: Path, title: str, *,
             blocks: list[str] | None = None, xlabel: str = "", ylabel: str = "") -> Path:
    from deepcluster.core.plot import new_figure, save_png

    fig = new_figure(2.5 + 0.45 * len(cols), 1.8 + 0.4 * len(rows))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(mat), cmap="magma", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    if len(rows) * len(cols) <= 400:
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, "-" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if np.isfinite(v) and v > 0.6 else "white")
    if blocks:
        for i in range(1, len(blocks)):
            if blocks[i] != blocks[i - 1]:
                ax.axhline(i - 0.5, color="white", lw=1.5)
                ax.axvline(i - 0.5, color="white", lw=1.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return save_png(fig, path)

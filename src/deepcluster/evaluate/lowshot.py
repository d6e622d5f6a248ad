"""Low-shot classification: a handful of labelled training images per class, scored on the test split.

For each n (labelled images per class) and each of ``repeats`` draws, n training samples of every
class are picked at random (seeded by ``(seed, n, draw)`` only, so every layer, checkpoint and run
sees the same images), a classifier is fitted on them and scored on the whole test split. The
result is the mean ± standard deviation over the draws.

Features are standardised with the mean and std of the *whole* training split: that uses no label,
and statistics of 10 samples would be useless (a dimension constant on them would blow up).
Dimensions constant on the training split are zeroed.

Two classifiers:

``"logreg"`` (default)
    Multinomial logistic regression fitted by L-BFGS with an L2 penalty
    (:func:`~deepcluster.evaluate.lbfgs_probe.fit_logistic_regression`). With fewer samples than
    dimensions the data are separable and the penalty alone sets the scale of the weights, so it is
    stronger than the full linear probe's (``lowshot_weight_decay`` 1e-2 by default).
    With fewer samples m than dimensions D, the penalised optimum lies in the span of the samples
    (the penalty alone acts on any other direction, and drives it to 0), so the regression is fitted
    there, in an orthonormal basis of that span (m × r instead of m × D coordinates, the same
    optimum): 2-3x faster on conv layers (:func:`sample_span`).
``"ncm"``
    Cosine nearest class mean: the query takes the class whose mean standardised feature has the
    highest cosine similarity. No parameter to tune.

Logistic regression is the default because it uses the extra shots: on the Fashion-MNIST LeNet-5
demo (5 draws) NCM is 0-3 points better at n=1, equal or worse at n=5, and 5-10 points worse at
n=50, where it saturates. The penalty matters little on conv layers (1e-4 to 1e-1 within a
point); on the 84-d ``fc2`` 1e-4 loses 2-5 points at n=10-50, hence 1e-2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from deepcluster.core.errors import ConfigError, DataError
from deepcluster.core.progress import progress_bar
from deepcluster.evaluate.lbfgs_probe import fit_logistic_regression
from deepcluster.evaluate.sgd_probe import standardizer

Classifier = Literal["logreg", "ncm"]

#: Labelled images per class evaluated by default.
DEFAULT_SHOTS: tuple[int, ...] = (1, 5, 10, 50)


@dataclass
class LowShotResult:
    """Accuracy with ``n`` labelled training images per class, over several random draws.

    Attributes
    ----------
    n : int
        Labelled images per class.
    mean, std : float
        Mean and (population) standard deviation of the test accuracy over the draws.
    accs : list[float]
        Test accuracy of each draw.
    """

    n: int
    mean: float
    std: float
    accs: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary of every field."""
        return asdict(self)


def sample_per_class(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` samples of every class of ``labels``, drawn without replacement.

    Parameters
    ----------
    labels : np.ndarray
        Integer label of each sample.
    n : int
        Samples per class.
    rng : np.random.Generator
        Source of the draw.

    Returns
    -------
    np.ndarray
        Sorted int64 indices, ``n × number of classes`` of them.

    Raises
    ------
    DataError
        If a class has fewer than ``n`` samples.
    """
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < n:
            raise DataError(f"class {c} has only {len(members)} training samples, fewer than n={n}: "
                            "lower lowshot_n")
        picked.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def feasible_shots(labels: np.ndarray, shots: Sequence[int]) -> list[int]:
    """The values of ``shots`` that every class of ``labels`` has enough samples for."""
    smallest = int(np.unique(np.asarray(labels), return_counts=True)[1].min())
    return [n for n in sorted(set(shots)) if n <= smallest]


def sample_span(xs: torch.Tensor) -> torch.Tensor | None:
    """An orthonormal basis (D × r) of the span of the rows of ``xs`` (m × D), or ``None`` when
    that would not be smaller than D (m ≥ D/2: no gain).

    From the eigendecomposition of the m × m Gram matrix (in float64): V = xsᵀ U S⁻¹ over the
    eigenvalues above 1e-10 of the largest.
    """
    m, d = xs.shape
    if 2 * m >= d:
        return None
    x64 = xs.double()
    values, vectors = torch.linalg.eigh(x64 @ x64.T)
    keep = values > values.max().clamp_min(1e-300) * 1e-10
    if not bool(keep.any()):
        return None
    return (x64.T @ vectors[:, keep] / values[keep].sqrt()).float()


def _predict(xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, n_classes: int, classifier: Classifier,
             weight_decay: float, max_iter: int, seed: int) -> torch.Tensor:
    if classifier == "ncm":
        means = torch.zeros(n_classes, xs.shape[1]).index_add_(0, ys, xs)
        return (F.normalize(xq, dim=1) @ F.normalize(means, dim=1).T).argmax(1)
    basis = sample_span(xs)
    if basis is None:
        w, b = fit_logistic_regression(xs, ys, n_classes, weight_decay=weight_decay, max_iter=max_iter, seed=seed)
    else:  # the same optimum, fitted in the samples' span (see the module's notes)
        w, b = fit_logistic_regression(xs @ basis, ys, n_classes, weight_decay=weight_decay, max_iter=max_iter,
                                       seed=seed)
        w = basis @ w
    return (xq @ w + b).argmax(1)


def lowshot_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    shots: Sequence[int] = DEFAULT_SHOTS,
    repeats: int = 5,
    seed: int = 0,
    classifier: Classifier = "logreg",
    weight_decay: float = 1e-2,
    max_iter: int = 100,
    description: str = "low-shot",
    show_progress: bool = False,
) -> dict[int, LowShotResult]:
    """Test accuracy of a classifier fitted on ``n`` labelled training samples per class.

    Parameters
    ----------
    train_x, test_x : np.ndarray
        Features (N, D) and (M, D).
    train_y, test_y : np.ndarray
        Integer labels.
    shots : Sequence[int]
        Values of n. Those larger than the smallest training class are skipped (absent from the
        result), so a small dataset still gets the others.
    repeats : int
        Random draws per n.
    seed : int
        Seed of the draws, combined with n and the draw number.
    classifier : {"logreg", "ncm"}
        See the module documentation.
    weight_decay : float
        L2 penalty of ``"logreg"``.
    max_iter : int
        L-BFGS iterations of ``"logreg"``.
    description : str
        Label of the progress bar.
    show_progress : bool
        A progress bar over the fits (one per n and draw).

    Returns
    -------
    dict[int, LowShotResult]
        n → result, in increasing n.

    Raises
    ------
    ConfigError
        If ``repeats`` < 1, a shot < 1 or the classifier is unknown.
    DataError
        If the features and labels do not match.
    """
    if repeats < 1 or any(int(n) < 1 for n in shots):
        raise ConfigError(f"low-shot needs repeats >= 1 and n >= 1, got repeats={repeats}, n={list(shots)}")
    if classifier not in ("logreg", "ncm"):
        raise ConfigError(f"unknown low-shot classifier {classifier!r}: use 'logreg' or 'ncm'")
    train_y = np.asarray(train_y, dtype=np.int64)
    test_y = np.asarray(test_y, dtype=np.int64)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y) or train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"low-shot: features {train_x.shape}/{test_x.shape} do not match labels "
                        f"{train_y.shape}/{test_y.shape}")
    mean, scale = standardizer(torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32)))
    xq = (torch.from_numpy(np.ascontiguousarray(test_x, dtype=np.float32)) - mean) * scale
    yq = torch.from_numpy(test_y)
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    out: dict[int, LowShotResult] = {}
    ns = feasible_shots(train_y, shots)
    with progress_bar(description, total=len(ns) * repeats, enabled=show_progress, unit="fits") as advance:
        for n in ns:
            accs = []
            for r in range(repeats):
                idx = sample_per_class(train_y, n, np.random.default_rng([seed, n, r]))
                xs = (torch.from_numpy(np.ascontiguousarray(train_x[idx], dtype=np.float32)) - mean) * scale
                ys = torch.from_numpy(train_y[idx])
                pred = _predict(xs, ys, xq, n_classes, classifier, weight_decay, max_iter, seed + r)
                accs.append(float((pred == yq).float().mean()))
                advance(1)
            out[n] = LowShotResult(n=n, mean=float(np.mean(accs)), std=float(np.std(accs)), accs=accs)
    return out

"""Weighted soft-voting ensembles of two models' linear probes, and their gain by LCE group.

After Fawaz's thesis, §3.5.4 "How components complement each other": for every couple of
models, the probability predictions of their classifiers are averaged with weights set by
their individual performance. With a ≥ b the accuracies of m₁ and m₂::

    E(x) = (0.5 + |a − b|) · m₁(x) + (0.5 − |a − b|) · m₂(x)

The change in accuracy over the better single model (``gain = acc(E) − max(a, b)``) is then
averaged over the pairs of each couple of LCE groups (the thesis' Figure 3.8).

Here each model's classifier is the project's L-BFGS linear probe (multinomial logistic
regression on standardised frozen features, :mod:`deepcluster.evaluate.lbfgs_probe`) on one
layer, fitted on the training split; probabilities and accuracies are those on the test split
(as in the thesis, the weights use the test accuracies). When |a − b| > 0.5 the formula would
give the weaker model a negative weight; weights are clipped to [0, 1] (the better model alone).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from deepcluster.core.errors import ConfigError, DataError
from deepcluster.models.published import FAIR_LAYOUT, fair_normalisation

if TYPE_CHECKING:
    from deepcluster.models.published import LoadReport

__all__ = [
    "EnsembleResult",
    "LoadedRun",
    "ProbeProbabilities",
    "aggregate_by_group",
    "describe_sources",
    "ensemble_weights",
    "ensembles_for_runs",
    "load_runs",
    "pairwise_ensembles",
    "probe_probabilities",
    "soft_vote",
    "write_ensemble_outputs",
]


# ---------------------------------------------------------------------------------------------
# The ensemble rule


def ensemble_weights(acc_a: float, acc_b: float) -> tuple[float, float]:
    """Weights ``(w_a, w_b)`` of the thesis' rule: the better model 0.5 + |a − b|, the other 0.5 − |a − b|.

    Accuracies are fractions in [0, 1]; equal accuracies give 0.5 / 0.5. Weights are clipped
    to [0, 1] (|a − b| > 0.5 would make one negative).

    Raises
    ------
    DataError
        An accuracy outside [0, 1] (e.g. a percentage).
    """
    for v in (acc_a, acc_b):
        if not (0.0 <= v <= 1.0):
            raise DataError(f"ensemble weights need accuracies as fractions in [0, 1], got {v}")
    d = min(abs(acc_a - acc_b), 0.5)
    return (0.5 + d, 0.5 - d) if acc_a >= acc_b else (0.5 - d, 0.5 + d)


def soft_vote(prob_a: np.ndarray, prob_b: np.ndarray, acc_a: float, acc_b: float) -> np.ndarray:
    """Weighted average ``w_a · prob_a + w_b · prob_b`` (weights from :func:`ensemble_weights`)."""
    pa, pb = np.asarray(prob_a, dtype=np.float64), np.asarray(prob_b, dtype=np.float64)
    if pa.shape != pb.shape or pa.ndim != 2:
        raise DataError(f"both models need (n, classes) probabilities of the same inputs, got {pa.shape} and {pb.shape}")
    wa, wb = ensemble_weights(acc_a, acc_b)
    return wa * pa + wb * pb


def _accuracy(prob: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(prob, axis=1) == labels)) if len(labels) else float("nan")


def pairwise_ensembles(
    probabilities: Mapping[str, np.ndarray],
    labels: Any,
    accuracies: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Ensemble every pair of models and compare with the better single model.

    Parameters
    ----------
    probabilities : Mapping[str, np.ndarray]
        Model → (n, classes) class probabilities on the same n test inputs.
    labels : array-like
        The n true classes.
    accuracies : Mapping[str, float], optional
        Model → accuracy used for the weights (default: the accuracy of its probabilities).

    Returns
    -------
    list[dict]
        Per pair (in model order): ``model_a, model_b, acc_a, acc_b, weight_a, weight_b,
        ensemble_acc, best_single, gain`` with ``gain = ensemble_acc − max(acc_a, acc_b)``.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    names = list(probabilities)
    if len(names) < 2:
        raise DataError(f"an ensemble needs at least 2 models, got {len(names)}")
    probs = {m: np.asarray(p, dtype=np.float64) for m, p in probabilities.items()}
    for m, p in probs.items():
        if p.ndim != 2 or p.shape[0] != len(y):
            raise DataError(f"model {m}: probabilities of shape {p.shape} for {len(y)} labels")
    own = {m: _accuracy(p, y) for m, p in probs.items()}
    acc = {m: float(accuracies[m]) if accuracies is not None and m in accuracies else own[m] for m in names}
    rows = []
    for a, b in itertools.combinations(names, 2):
        wa, wb = ensemble_weights(acc[a], acc[b])
        ens = _accuracy(soft_vote(probs[a], probs[b], acc[a], acc[b]), y)
        best = max(acc[a], acc[b])
        rows.append({"model_a": a, "model_b": b, "acc_a": acc[a], "acc_b": acc[b], "weight_a": wa, "weight_b": wb,
                     "ensemble_acc": ens, "best_single": best, "gain": ens - best})
    return rows


def aggregate_by_group(rows: Sequence[Mapping[str, Any]], groups: Mapping[str, str]) -> list[dict[str, Any]]:
    """Mean gain over the ensembles of each (unordered) pair of groups, as the thesis' Figure 3.8.

    Returns
    -------
    list[dict]
        ``group_a, group_b`` (group_a ≤ group_b), ``n_pairs, mean_gain, min_gain, max_gain,
        mean_ensemble_acc``, sorted by group.

    Raises
    ------
    DataError
        A model of ``rows`` without a group.
    """
    missing = sorted({m for r in rows for m in (r["model_a"], r["model_b"]) if m not in groups})
    if missing:
        raise DataError(f"model(s) {', '.join(missing)} have no LCE group (lce.csv lists {', '.join(groups) or 'none'}): "
                        "name the runs as in the LCE")
    cells: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        key = tuple(sorted((groups[r["model_a"]], groups[r["model_b"]])))
        cells.setdefault(key, []).append(r)  # type: ignore[arg-type]
    out = []
    for (ga, gb), rs in sorted(cells.items()):
        gains = np.array([r["gain"] for r in rs], dtype=np.float64)
        out.append({"group_a": ga, "group_b": gb, "n_pairs": len(rs), "mean_gain": float(gains.mean()),
                    "min_gain": float(gains.min()), "max_gain": float(gains.max()),
                    "mean_ensemble_acc": float(np.mean([r["ensemble_acc"] for r in rs]))})
    return out


# ---------------------------------------------------------------------------------------------
# Probe probabilities


@dataclass
class ProbeProbabilities:
    """A linear probe's test-set class probabilities.

    Attributes
    ----------
    probabilities : np.ndarray
        (n_test, n_classes) softmax outputs, float64.
    train_acc, test_acc : float
    dim : int
        Feature dimension.
    """

    probabilities: np.ndarray
    train_acc: float
    test_acc: float
    dim: int


def probe_probabilities(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray | None = None,
    *,
    n_classes: int | None = None,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
    seed: int = 0,
) -> ProbeProbabilities:
    """The L-BFGS linear probe of :func:`~deepcluster.evaluate.lbfgs_probe.linear_probe`,
    returning its softmax probabilities on ``test_x``.

    Same fit: features standardised with the training mean and std, multinomial logistic
    regression by full-batch L-BFGS with an L2 penalty (:func:`~deepcluster.evaluate.lbfgs_probe.fit_logistic_regression`).

    Parameters
    ----------
    n_classes : int, optional
        Number of classes (default: 1 + the largest label seen), so that every model of an
        ensemble outputs the same columns.
    """
    from deepcluster.evaluate.lbfgs_probe import fit_logistic_regression

    xtr = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32))
    xte = torch.from_numpy(np.ascontiguousarray(test_x, dtype=np.float32))
    mean = xtr.mean(0, keepdim=True)
    std = xtr.std(0, keepdim=True).clamp_min(1e-6)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    ytr = torch.from_numpy(np.asarray(train_y, dtype=np.int64))
    seen = int(ytr.max()) + 1
    if test_y is not None and len(test_y):
        seen = max(seen, int(np.max(test_y)) + 1)
    k = n_classes or seen
    if k < seen:
        raise DataError(f"n_classes={k} but labels go up to {seen - 1}")
    w, b = fit_logistic_regression(xtr, ytr, k, weight_decay=weight_decay, max_iter=max_iter, seed=seed)
    train_acc = float(((xtr @ w + b).argmax(1) == ytr).float().mean())
    prob = F.softmax((xte @ w + b).double(), dim=1).numpy()
    test_acc = _accuracy(prob, np.asarray(test_y, dtype=np.int64)) if test_y is not None else float("nan")
    return ProbeProbabilities(probabilities=prob, train_acc=train_acc, test_acc=test_acc, dim=int(xtr.shape[1]))


# ---------------------------------------------------------------------------------------------
# Run folders


@dataclass
class LoadedRun:
    """A run folder's name, config and network (one checkpoint, or the backbone of a weights file)."""

    name: str
    path: Path
    cfg: Any
    model: Any
    #: The weights file loaded instead of the run's checkpoint (``None``: the checkpoint's own tensors).
    weights: Path | None = None
    #: What loading ``weights`` did; its ``summary()`` is one line.
    weights_report: LoadReport | None = None


def _data_identity(cfg: Any) -> dict[str, Any]:
    d = cfg.data
    return {"name": d.name, "root": d.root, "image_size": d.image_size, "resize": d.resize, "split": d.split,
            "test_split": d.test_split}


def _none_if_dash(value: str | Path | None) -> str | Path | None:
    """``-`` or an empty string stands for "none" (the command line's way of skipping a run)."""
    return None if value is None or str(value) in ("-", "") else value


def _per_run_weights(n: int, weights: Sequence[str | Path | None] | None,
                     weights_prefix: Sequence[str | None] | None) -> tuple[list[Path | None], list[str | None]]:
    """``weights`` (one per run, ``None`` or ``-`` for none) and ``weights_prefix`` (one for all, or
    one per run) spread over ``n`` runs, checked as ``deepcluster dissect`` checks its options."""
    if isinstance(weights, (str, Path)) or isinstance(weights_prefix, (str, Path)):
        raise ConfigError("weights and weights_prefix are sequences: one entry per run (None or - for a run without)")
    files = [None] * n if weights is None else [_none_if_dash(w) for w in weights]
    if len(files) != n:
        raise ConfigError(f"{len(files)} --weights for {n} runs: give one --weights per run, in order (- for a run without)")
    # "-" is "none"; "" is a prefix (the backbone's keys have none), as load_backbone_state reads it
    prefixes = [None if p is None or str(p) == "-" else str(p) for p in (weights_prefix or [])]
    if all(f is None for f in files) and any(p is not None for p in prefixes):
        raise ConfigError("--weights-prefix names the backbone's prefix in a --weights file: pass --weights FILE too")
    if len(prefixes) == 1:  # one for all: the runs given a weights file
        prefixes = [prefixes[0] if f is not None else None for f in files]
    elif not prefixes:
        prefixes = [None] * n
    elif len(prefixes) != n:
        raise ConfigError(f"{len(prefixes)} --weights-prefix for {n} runs: give one --weights-prefix per run, "
                          "in order (or one for all)")
    for i, (f, p) in enumerate(zip(files, prefixes)):
        if f is None and p is not None:
            raise ConfigError(f"--weights-prefix {p!r} for run {i + 1}, which has no --weights file: "
                              "give - as its --weights-prefix")
    return [None if f is None else Path(f) for f in files], prefixes


def _weights_stem(path: Path) -> str:
    """The weights file's name without its suffixes (``fair.pth.tar`` → ``fair``), as dissect names models."""
    return path.name.split(".")[0] or path.name


def _default_run_names(runs: Sequence[str | Path], weights: Sequence[Path | None]) -> list[str]:
    """The folder names (shortest unique path suffixes); a run given a weights file: ``FOLDER+STEM``."""
    from deepcluster.interpret.lce import default_model_names

    folders = list(dict.fromkeys(Path(r).resolve() for r in runs))  # the same folder twice has one name
    base = dict(zip(folders, default_model_names(folders)))
    return [base[Path(r).resolve()] + (f"+{_weights_stem(w)}" if w is not None else "") for r, w in zip(runs, weights)]


def _model_with_weights(folder: Any, cfg: Any, checkpoint: str, path: Path,
                        prefix: str | None) -> tuple[Any, LoadReport, int]:
    """The run's network (its config's architecture, its checkpoint's input channels and size) with the
    backbone of the weights file ``path`` loaded strictly instead of the checkpoint's tensors, and
    its input channels."""
    from deepcluster.core.errors import TrainingError
    from deepcluster.models.published import load_backbone_state
    from deepcluster.runs import build_network

    try:
        ckpt = folder.load_checkpoint(checkpoint)
    except TrainingError:
        if checkpoint == "last":
            raise
        ckpt = folder.load_checkpoint("last")  # every checkpoint of a run has the same input shape
    channels = int(ckpt["in_channels"])
    model = build_network(cfg, channels, int(ckpt["input_size"]))
    del ckpt
    report = load_backbone_state(path, model, prefix=prefix)
    model.eval()
    return model, report, channels


def load_runs(runs: Sequence[str | Path], *, names: Sequence[str] | None = None, checkpoint: str = "last",
              need_test_split: bool = True, weights: Sequence[str | Path | None] | None = None,
              weights_prefix: Sequence[str | None] | None = None,
              log: Callable[[str], None] | None = None) -> list[LoadedRun]:
    """Load run folders that share one dataset.

    Parameters
    ----------
    runs : run folders (the same folder may appear twice, e.g. once with a weights file)
    names : model names (default: the folder names; a run given a weights file ``FOLDER+STEM``)
    checkpoint : ``last``, ``init`` or a cycle number with a kept checkpoint
    need_test_split : refuse a dataset without a test split
    weights : one entry per run: a weights file (a state dict or a published checkpoint, any
        layout of :func:`~deepcluster.models.published.load_backbone_state`) whose backbone is
        loaded strictly into the run's architecture instead of the checkpoint's tensors, or
        ``None`` (``-``) for the run's own checkpoint
    weights_prefix : the backbone's key prefix in the weights files, for a layout not recognised:
        one for all (the runs given a file) or one per run (``None`` or ``-`` for none)
    log : receives each weights file's one-line :meth:`~deepcluster.models.published.LoadReport.summary`

    Raises
    ------
    DataError
        Fewer than 2 runs, duplicate names, runs on different datasets, no test split, an
        unreadable weights file.
    ConfigError
        ``names``, ``weights`` or ``weights_prefix`` of the wrong length, a prefix without a
        weights file, a weights file that does not fit the run's architecture.
    """
    from deepcluster.runs import RunFolder

    if len(runs) < 2:
        raise DataError(f"compare at least 2 runs, got {len(runs)}")
    if names is not None and len(names) != len(runs):
        raise ConfigError(f"{len(names)} names for {len(runs)} runs: give one --name per run")
    files, prefixes = _per_run_weights(len(runs), weights, weights_prefix)
    given = names is not None
    names = list(names) if names is not None else _default_run_names(runs, files)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"run names must be unique: {', '.join(dup)} appears twice"
                        + ("" if given else " (give each run a --name)"))
    folders = [RunFolder(Path(r)).require() for r in runs]
    cfgs = [f.load_config() for f in folders]
    ref = _data_identity(cfgs[0])
    for name, cfg in zip(names[1:], cfgs[1:]):
        ident = _data_identity(cfg)
        if ident != ref:
            diff = ", ".join(f"{k} {ref[k]!r} vs {ident[k]!r}" for k in ref if ref[k] != ident[k])
            raise DataError(f"runs {names[0]} and {name} use different data ({diff}): "
                            "models are compared on one dataset, so give runs trained on the same one")
    if need_test_split and cfgs[0].data.test_split is None:
        raise DataError(f"dataset {cfgs[0].data.name} has no test split configured (data.test_split): "
                        "the probes are scored on the test split")
    loaded = []
    for name, folder, cfg, path, prefix in zip(names, folders, cfgs, files, prefixes):
        if path is None:
            loaded.append(LoadedRun(name, folder.path, cfg, folder.build_model(checkpoint, cfg)))
            continue
        model, report, channels = _model_with_weights(folder, cfg, checkpoint, path, prefix)
        summary = report.summary()
        if report.layout == FAIR_LAYOUT and cfg.data.mean is None:  # it reads images as it was trained to
            mean, std = fair_normalisation(channels)
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"mean": mean, "std": std})})
            summary += "; read with ImageNet's normalisation, as FAIR's networks were trained"
        if log is not None:
            log(summary)
        loaded.append(LoadedRun(name, folder.path, cfg, model, weights=path, weights_report=report))
    return loaded


def describe_sources(loaded: Sequence[LoadedRun], checkpoint: str) -> str:
    """``checkpoint last``, or with weights files ``checkpoint last; a+fair: fair.pth``, for progress lines."""
    files = [f"{r.name}: {r.weights.name}" for r in loaded if r.weights is not None]
    if len(files) == len(loaded):
        return "weights " + ", ".join(files)
    return f"checkpoint {checkpoint}" + ("; weights " + ", ".join(files) if files else "")


def default_layer(model: Any) -> str:
    """The last conv probe layer of ``model`` (else its default probe layer)."""
    convs = [n for n in model.probe_layers() if n.startswith("conv")]
    return convs[-1] if convs else model.default_probe_layer


@dataclass
class EnsembleResult:
    """Pairwise ensembles of several runs' probes.

    Attributes
    ----------
    models : list[str]
    layers : dict[str, str]
        Probed layer of each model.
    probes : dict[str, ProbeProbabilities]
    labels : np.ndarray
        Test labels.
    rows : list[dict]
        :func:`pairwise_ensembles` rows.
    groups : dict[str, str]
        Model → LCE group (empty without an LCE).
    group_rows : list[dict]
        :func:`aggregate_by_group` rows (empty without an LCE).
    info : dict
        Dataset, splits, sizes, checkpoint.
    """

    models: list[str]
    layers: dict[str, str]
    probes: dict[str, ProbeProbabilities]
    labels: np.ndarray
    rows: list[dict[str, Any]]
    groups: dict[str, str] = field(default_factory=dict)
    group_rows: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def ensembles_for_runs(
    runs: Sequence[str | Path],
    *,
    names: Sequence[str] | None = None,
    layer: str | None = None,
    checkpoint: str = "last",
    lce: str | Path | Mapping[str, str] | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    device: str | None = None,
    show_progress: bool = False,
    log: Callable[[str], None] | None = None,
    weights: Sequence[str | Path | None] | None = None,
    weights_prefix: Sequence[str | None] | None = None,
) -> EnsembleResult:
    """Probe every run on one layer, then ensemble every pair (and aggregate by LCE group).

    Parameters
    ----------
    runs : run folders trained on the same labelled dataset
    names : model names (default: the folder names; they must match the LCE's names)
    layer : probe layer of every run (default: each run's last conv layer)
    checkpoint : ``last``, ``init`` or a cycle number with a kept checkpoint
    lce : an ``lce.csv`` (or its folder) with a ``group`` column, or a model → group mapping
    train_limit, test_limit : images of each split (default: the first run's eval settings)
    device : ``auto``/``cpu``/``cuda`` (default: the first run's device setting)
    weights, weights_prefix : a weights file per run (``None``/``-``: its checkpoint) whose backbone
        replaces the checkpoint's tensors, and the backbone's key prefix (see :func:`load_runs`);
        each file's one-line load report goes to ``log``
    """
    from deepcluster.core.precision import run_precision
    from deepcluster.data.splits import eval_splits, normalization
    from deepcluster.environment import RunEnv
    from deepcluster.evaluate.pooling import extract_pooled_features
    from deepcluster.interpret.lce import read_lce_groups

    log = log or (lambda m: None)
    loaded = load_runs(runs, names=names, checkpoint=checkpoint, need_test_split=False, weights=weights,
                       weights_prefix=weights_prefix, log=log)
    groups: dict[str, str] = {}
    if lce is not None:
        groups = dict(lce) if isinstance(lce, Mapping) else read_lce_groups(lce)
        missing = [r.name for r in loaded if r.name not in groups]
        if missing:
            raise DataError(f"run(s) {', '.join(missing)} are not in the LCE (its models: {', '.join(groups) or 'none'}): "
                            "name the runs as in lce.csv")
    cfg = loaded[0].cfg
    for lim, opt in ((train_limit, "--train-limit"), (test_limit, "--test-limit")):
        if lim is not None and lim < 2:
            raise ConfigError(f"{opt} must be at least 2 images, got {lim}")
    splits = eval_splits(cfg, train_limit=train_limit, test_limit=test_limit)  # a held-out part without a test split
    train, test = splits.train, splits.test
    log(f"  probes fitted on {splits.fitted}, scored on the {splits.scored}")
    ytr, yte = np.asarray(train.labels, dtype=np.int64), np.asarray(test.labels, dtype=np.int64)
    n_classes = int(max(ytr.max(), yte.max())) + 1
    xtr_img, xte_img = train.images_tensor(), test.images_tensor()
    env = RunEnv.from_config(cfg.model_copy(update={"device": device}) if device else cfg, show_progress=show_progress)
    reader = env.features(int(xtr_img.shape[1]))
    dev = env.device
    log(f"probes on {cfg.data.name}: {len(ytr)} train / {len(yte)} test images, {n_classes} classes, "
        f"{describe_sources(loaded, checkpoint)}")

    probes: dict[str, ProbeProbabilities] = {}
    layers: dict[str, str] = {}
    for r in loaded:
        lay = layer or default_layer(r.model)
        r.model.to(dev)
        mean, std = normalization(r.cfg, int(xtr_img.shape[1]))  # as each network was trained to read images
        reader = reader.replace(precision=run_precision(r.cfg, dev), batch_size=r.cfg.feature_batch_size,
                                mean=mean, std=std)
        kw = {"layers": [lay], "budget": r.cfg.eval.pool_budget}
        ftr = extract_pooled_features(r.model, xtr_img, reader, description=f"{r.name}: train features", **kw)[lay]
        fte = extract_pooled_features(r.model, xte_img, reader, description=f"{r.name}: test features", **kw)[lay]
        probes[r.name] = probe_probabilities(ftr, ytr, fte, yte, n_classes=n_classes,
                                             weight_decay=r.cfg.eval.probe_weight_decay,
                                             max_iter=r.cfg.eval.probe_max_iter, seed=r.cfg.seed)
        layers[r.name] = lay
        log(f"  {r.name}: {lay} ({probes[r.name].dim}-d) probe accuracy {probes[r.name].test_acc:.4f}")
        del ftr, fte

    rows = pairwise_ensembles({m: p.probabilities for m, p in probes.items()}, yte,
                              {m: p.test_acc for m, p in probes.items()})
    group_rows = aggregate_by_group(rows, groups) if groups else []
    info = {"dataset": cfg.data.name, "fitted": splits.fitted, "scored": splits.scored, "held_out": splits.held_out,
            "n_train": len(ytr), "n_test": len(yte), "n_classes": n_classes, "checkpoint": checkpoint,
            "runs": {r.name: str(r.path) for r in loaded}}
    if any(r.weights is not None for r in loaded):
        info["weights"] = {r.name: str(r.weights) for r in loaded if r.weights is not None}
    return EnsembleResult(models=[r.name for r in loaded], layers=layers, probes=probes, labels=yte, rows=rows,
                          groups={m: groups[m] for m in probes} if groups else {}, group_rows=group_rows, info=info)


# ---------------------------------------------------------------------------------------------
# Writers


def write_ensemble_outputs(result: EnsembleResult, out: str | Path, *, figures: bool = True) -> dict[str, Path]:
    """Write ``ensemble.csv`` (one row per pair), ``ensemble_groups.csv`` (with groups),
    ``ensemble.json`` and the heatmaps ``ensemble_gain.png`` (model × model) and
    ``ensemble_groups.png`` (group × group, the thesis' Figure 3.8)."""
    from deepcluster.core.files import write_csv, write_json

    out = Path(out)
    paths: dict[str, Path] = {}
    rows = [{**r, "layer_a": result.layers.get(r["model_a"], ""), "layer_b": result.layers.get(r["model_b"], ""),
             "group_a": result.groups.get(r["model_a"], ""), "group_b": result.groups.get(r["model_b"], "")}
            for r in result.rows]
    cols = ["model_a", "model_b", "layer_a", "layer_b", "acc_a", "acc_b", "weight_a", "weight_b", "ensemble_acc",
            "best_single", "gain"]
    if result.groups:
        cols += ["group_a", "group_b"]
    write_csv(out / "ensemble.csv", rows, cols, float_format=".6f")
    paths["ensemble.csv"] = out / "ensemble.csv"
    if result.group_rows:
        gcols = ["group_a", "group_b", "n_pairs", "mean_gain", "min_gain", "max_gain", "mean_ensemble_acc"]
        write_csv(out / "ensemble_groups.csv", result.group_rows, gcols, float_format=".6f")
        paths["ensemble_groups.csv"] = out / "ensemble_groups.csv"
    write_json(out / "ensemble.json", {
        **result.info, "rule": "(0.5 + |a-b|) * better + (0.5 - |a-b|) * other, weights clipped to [0, 1]",
        "layers": result.layers, "accuracies": {m: p.test_acc for m, p in result.probes.items()},
        "groups": result.groups, "pairs": result.rows, "group_pairs": result.group_rows,
    })
    paths["ensemble.json"] = out / "ensemble.json"
    if not figures:
        return paths
    m = result.models
    mat = np.full((len(m), len(m)), np.nan)
    for r in result.rows:
        i, j = m.index(r["model_a"]), m.index(r["model_b"])
        mat[i, j] = mat[j, i] = r["gain"]
    paths["ensemble_gain.png"] = _gain_heatmap(mat, m, out / "ensemble_gain.png",
                                               "Accuracy gain of the ensemble over the better model")
    if result.group_rows:
        letters = sorted(set(result.groups.values()))
        gm = np.full((len(letters), len(letters)), np.nan)
        for r in result.group_rows:
            i, j = letters.index(r["group_a"]), letters.index(r["group_b"])
            gm[i, j] = gm[j, i] = r["mean_gain"]
        paths["ensemble_groups.png"] = _gain_heatmap(gm, letters, out / "ensemble_groups.png",
                                                     "Mean gain/loss after ensemble, by LCE group")
    return paths


def _gain_heatmap(mat: np.ndarray, labels: list[str], path: Path, title: str) -> Path:
    from deepcluster.core.plot import new_figure, save_png

    finite = mat[np.isfinite(mat)]
    lim = max(float(np.abs(finite).max()) if finite.size else 0.0, 1e-3)
    fig = new_figure(2.5 + 0.55 * len(labels), 2.0 + 0.45 * len(labels))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(100 * mat), cmap="RdBu", vmin=-100 * lim, vmax=100 * lim)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, "-" if not np.isfinite(v) else f"{100 * v:+.1f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8, label="accuracy points")
    ax.set_title(title, fontsize=9)
    return save_png(fig, path)

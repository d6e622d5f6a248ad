"""Evaluate a run: the trained network next to the same network at its random initialisation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepcluster.cluster import Preprocessor, ari, cluster_features, clustering_accuracy, nmi
from deepcluster.core.config import EvalConfig, TrainConfig
from deepcluster.core.device import resolve_device
from deepcluster.core.errors import DataError
from deepcluster.core.files import write_json
from deepcluster.core.precision import run_precision
from deepcluster.core.progress import console
from deepcluster.data.source import ImageSource, choose_source
from deepcluster.data.splits import load_split, normalization
from deepcluster.evaluate.knn import knn_accuracy
from deepcluster.evaluate.linear_probe import linear_probe
from deepcluster.features import extract_features
from deepcluster.runs import RunFolder


def _cluster_metrics(labels: np.ndarray, assignments: np.ndarray) -> dict[str, float]:
    return {"nmi": nmi(labels, assignments), "ari": ari(labels, assignments),
            "acc": clustering_accuracy(labels, assignments)}


def evaluate_run(
    run_dir: str | Path,
    eval_cfg: EvalConfig | None = None,
    *,
    checkpoint: str = "last",
    out: str | Path | None = None,
    show_progress: bool = True,
    compare_random: bool = True,
    log=None,
) -> dict[str, Any]:
    """Linear probe, kNN and clustering metrics of ``checkpoint`` vs the random initialisation.

    The quick, uncached evaluation that studies use (converged L-BFGS probe, one k, k-means of the
    clustering features). ``deepcluster evaluate`` runs the full suite instead
    (:func:`deepcluster.evaluate.suite.evaluate_suite`: SGD probe, several k, low-shot, cached).
    Needs labels (train and test split). Writes ``evaluation.json`` into ``out`` (default
    ``RUN/eval``) and returns the same dictionary.
    """
    log = log or (lambda msg: console.print(msg))
    run = RunFolder(Path(run_dir)).require()
    cfg = run.load_config()
    ecfg = eval_cfg or cfg.eval
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    train = load_split(cfg, cfg.data.split, ecfg.train_limit if ecfg.train_limit else cfg.data.limit)
    if cfg.data.test_split is None:
        raise DataError(f"dataset {cfg.data.name} has no test split configured: set data.test_split to evaluate")
    test = load_split(cfg, cfg.data.test_split, ecfg.test_limit)
    if train.labels is None or test.labels is None:
        raise DataError(
            f"dataset {cfg.data.name} at {cfg.data.root or 'its default location'} has no labels: "
            "linear probes and kNN need labels; use `deepcluster export` for label-free outputs"
        )
    # in memory, or streamed when a split is larger than data.memory_budget_mb
    xtr_img, xte_img = (choose_source(d, memory_budget_mb=cfg.data.memory_budget_mb, workers=cfg.data.workers)
                        for d in (train, test))
    stats = normalization(cfg, xtr_img.channels)

    results: dict[str, Any] = {"run": str(run.path), "checkpoint": checkpoint, "config": ecfg.model_dump(mode="json"),
                               "n_train": len(train), "n_test": len(test), "models": {}}
    models = {"trained": run.build_model(checkpoint, cfg)}
    if compare_random:
        models["random"] = run.build_model("init", cfg)
    for name, model in models.items():
        results["models"][name] = evaluate_model(
            model, cfg, ecfg, (xtr_img, train.labels), (xte_img, test.labels), stats,
            name=name, device=device, show_progress=show_progress, log=log,
        )

    cycles = run.assignment_cycles()
    if cycles and cfg.data.limit is None and ecfg.train_limit is None:
        last = np.asarray(run.load_assignments())
        mask = last >= 0  # an Algorithm 2 cycle clustered a sample of the pool: -1 outside it
        results["last_assignment"] = {"cycle": cycles[-1],
                                      **_cluster_metrics(np.asarray(train.labels)[mask], last[mask])}

    if ecfg.pixel_baseline:
        ptr = xtr_img.take(np.arange(len(xtr_img))).flatten(1).float().numpy() / 255.0
        pte = xte_img.take(np.arange(len(xte_img))).flatten(1).float().numpy() / 255.0
        probe = linear_probe(ptr, train.labels, pte, test.labels, weight_decay=ecfg.probe_weight_decay,
                             max_iter=ecfg.probe_max_iter, seed=cfg.seed)
        knn = knn_accuracy(ptr, train.labels, pte, test.labels, k=ecfg.knn_k)
        results["pixels"] = {"dim": probe.dim, "linear": probe.test_acc, "knn": knn}
        log(f"  pixels           linear {probe.test_acc:.4f}  kNN {knn:.4f}  ({probe.dim}-d)")

    out_dir = Path(out) if out is not None else run.path / "eval"
    write_json(out_dir / f"evaluation_{checkpoint}.json", results)
    results["path"] = str(out_dir / f"evaluation_{checkpoint}.json")
    return results


def evaluate_model(
    model: torch.nn.Module,
    cfg: TrainConfig,
    ecfg: EvalConfig,
    train: tuple[torch.Tensor | ImageSource, np.ndarray],
    test: tuple[torch.Tensor | ImageSource, np.ndarray],
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    *,
    name: str = "model",
    device: torch.device | str = "cpu",
    show_progress: bool = True,
    log=None,
) -> dict[str, Any]:
    """Probe every layer of one network (linear + kNN) and score k-means of its clustering features.

    The clustering features get training's preprocessing (PCA-whitening, L2); k-means is run with
    as many clusters as there are classes, and also with the run's ``k`` when that differs.
    """
    log = log or (lambda msg: None)
    (xtr_img, ytr), (xte_img, yte) = train, test
    model.to(device)
    precision = run_precision(cfg, device)
    t0 = time.perf_counter()
    layers = ecfg.layers or list(model.probe_layers())
    ftr = extract_features(model, xtr_img, *stats, layers=layers, batch_size=cfg.feature_batch_size, device=device,
                           description=f"{name}: train features", show_progress=show_progress, precision=precision)
    fte = extract_features(model, xte_img, *stats, layers=layers, batch_size=cfg.feature_batch_size, device=device,
                           description=f"{name}: test features", show_progress=show_progress, precision=precision)
    per_layer: dict[str, Any] = {}
    for layer in layers:
        probe = linear_probe(ftr[layer], ytr, fte[layer], yte, weight_decay=ecfg.probe_weight_decay,
                             max_iter=ecfg.probe_max_iter, seed=cfg.seed)
        knn = knn_accuracy(ftr[layer], ytr, fte[layer], yte, k=ecfg.knn_k)
        per_layer[layer] = {"dim": probe.dim, "linear": probe.test_acc, "linear_train": probe.train_acc, "knn": knn}
        log(f"  {name:7s} {layer:8s} linear {probe.test_acc:.4f}  kNN {knn:.4f}  ({probe.dim}-d)")
    del ftr, fte

    n_classes = int(np.unique(ytr).size)
    clustering: dict[str, Any] = {"k": n_classes}
    for k in dict.fromkeys([n_classes, cfg.k]):
        metrics = clustering_quality(model, xtr_img, ytr, cfg, stats, k=k, device=device, show_progress=show_progress)
        if k == n_classes:
            clustering.update(metrics)
        else:
            clustering[f"k{k}"] = {"k": k, **metrics}
        log(f"  {name:7s} k-means k={k:<4d} NMI {metrics['nmi']:.4f}  ARI {metrics['ari']:.4f}  acc {metrics['acc']:.4f}")
    return {"layers": per_layer, "clustering": clustering, "seconds": round(time.perf_counter() - t0, 2)}


def clustering_quality(
    model: torch.nn.Module,
    images: torch.Tensor | ImageSource,
    labels: np.ndarray,
    cfg: TrainConfig,
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    *,
    k: int | None = None,
    n_init: int = 5,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
) -> dict[str, float]:
    """NMI, ARI and Hungarian accuracy vs ``labels`` of clustering ``model``'s features.

    Uses exactly training's pipeline (the clustered layer, PCA-whitening, L2, the run's
    clustering method). On a randomly initialised network with ``k`` clusters this is the
    Initial Alignment of the Deep Dive paper. k-means keeps the best (lowest loss) of ``n_init``
    seeded restarts: a single k-means run moves NMI by a few hundredths on its own, which would
    drown the difference between two networks.
    """
    feats = extract_features(model, images, *stats, layers=None if cfg.cluster_layer is None else [cfg.cluster_layer],
                             batch_size=cfg.feature_batch_size, device=device, description="clustering features",
                             show_progress=show_progress, precision=run_precision(cfg, device))
    x = next(iter(feats.values()))
    x = Preprocessor(pca_dim=cfg.pca_dim, eigen_power=-0.5 if cfg.whiten else 0.0,
                     on_degenerate="truncate").fit_transform(np.maximum(x, 0) if cfg.cluster_relu else x)
    runs = [cluster_features(x, cfg.clustering, k or cfg.k, niter=cfg.kmeans_iters, seed=cfg.seed + i)
            for i in range(n_init if cfg.clustering == "kmeans" else 1)]
    best = min(runs, key=lambda r: r.loss)
    return _cluster_metrics(labels, best.assignments)

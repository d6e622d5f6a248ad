"""Evaluate a run: the trained network next to the same network at its random initialisation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepcluster.cluster import ari, clustering_accuracy, nmi, preprocess_and_cluster
from deepcluster.core.config import EvalConfig, TrainConfig
from deepcluster.core.files import write_json
from deepcluster.core.progress import console
from deepcluster.data.source import ImageSource, as_source
from deepcluster.data.splits import eval_splits
from deepcluster.environment import RunEnv
from deepcluster.evaluate.knn import knn_accuracy
from deepcluster.evaluate.lbfgs_probe import linear_probe
from deepcluster.evaluate.protocols import protocol_params, run_protocol
from deepcluster.features import FeatureOptions, extract_features
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

    The quick, uncached evaluation that studies use (one k, k-means of the clustering features,
    and the linear probe ``eval_cfg.probe`` says; without ``eval_cfg``, the run's ``eval`` section
    with the converged L-BFGS probe). ``deepcluster evaluate`` runs the full suite instead
    (:func:`deepcluster.evaluate.suite.evaluate_suite`: SGD probe, several k, low-shot, cached).
    Needs labels. Scored on the test split, or without one on a seeded held-out part of the training
    images (``eval.holdout``; ``scored`` in the result says which). Writes ``evaluation.json`` into
    ``out`` (default ``RUN/eval``) and returns the same dictionary.
    """
    log = log or (lambda msg: console.print(msg))
    run = RunFolder(Path(run_dir)).require()
    cfg = run.load_config()
    ecfg = eval_cfg or cfg.eval.model_copy(update={"probe": "lbfgs", "probe_hflip": False})
    env = RunEnv.from_config(cfg, show_progress=show_progress)
    splits = eval_splits(cfg, ecfg)
    train, test = splits.train, splits.test
    # in memory, or streamed when a split is larger than data.memory_budget_mb
    xtr_img, xte_img = env.source(train), env.source(test)
    reader = env.features(xtr_img.channels)

    results: dict[str, Any] = {"run": str(run.path), "checkpoint": checkpoint, "config": ecfg.model_dump(mode="json"),
                               "n_train": len(train), "n_test": len(test), "scored": splits.scored,
                               "fitted": splits.fitted, "models": {}}
    models = {"trained": run.build_model(checkpoint, cfg)}
    if compare_random:
        models["random"] = run.build_model("init", cfg)
    for name, model in models.items():
        results["models"][name] = evaluate_model(model, cfg, ecfg, (xtr_img, train.labels), (xte_img, test.labels),
                                                 reader, name=name, log=log)

    cycles = run.assignment_cycles()
    if cycles and cfg.data.limit is None and ecfg.train_limit is None:
        last = np.asarray(run.load_assignments())
        labels = np.asarray(train.labels)
        if splits.held_out:  # the fitted part of the training images: their assignments
            last = last[splits.train_index]
        mask = last >= 0  # an Algorithm 2 cycle clustered a sample of the pool: -1 outside it
        results["last_assignment"] = {"cycle": cycles[-1], **_cluster_metrics(labels[mask], last[mask])}

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
    reader: FeatureOptions,
    *,
    name: str = "model",
    log=None,
) -> dict[str, Any]:
    """Probe every layer of one network (linear + kNN) and score k-means of its clustering features.

    The linear probe is ``ecfg.probe``'s: L-BFGS (converged), or SGD for ``probe_epochs`` whose
    accuracy after the last epoch is reported (with ``probe_hflip``, on the flipped training images'
    features for a random half of each batch).

    The clustering features get training's preprocessing and clustering
    (:func:`clustering_quality`); k-means is run with as many clusters as there are classes, and
    also with the run's ``k`` when that differs. ``reader`` says how the network reads the images.
    """
    log = log or (lambda msg: None)
    (xtr_img, ytr), (xte_img, yte) = train, test
    model.to(reader.device)
    t0 = time.perf_counter()
    layers = ecfg.layers or list(model.probe_layers())
    ftr = extract_features(model, xtr_img, reader, layers=layers, description=f"{name}: train features")
    fte = extract_features(model, xte_img, reader, layers=layers, description=f"{name}: test features")
    ffl = (extract_features(model, as_source(xtr_img).flipped(), reader, layers=layers,
                            description=f"{name}: flipped train features") if ecfg.probe_hflip else {})
    params = protocol_params("linear", ecfg, cfg.seed)
    per_layer: dict[str, Any] = {}
    for layer in layers:
        probe = run_protocol("linear", params, (ftr[layer], ytr), (fte[layer], yte), device=reader.device,
                             flipped=ffl.get(layer))
        acc, train_acc = probe.get("last_acc", probe.get("test_acc")), probe["train_acc"]  # SGD: after the last epoch
        knn = knn_accuracy(ftr[layer], ytr, fte[layer], yte, k=ecfg.knn_k)
        per_layer[layer] = {"dim": probe["dim"], "linear": acc, "linear_train": train_acc, "knn": knn,
                            "probe": ecfg.probe}
        log(f"  {name:7s} {layer:8s} linear {acc:.4f}  kNN {knn:.4f}  ({probe['dim']}-d, {ecfg.probe} probe)")
    del ftr, fte, ffl

    n_classes = int(np.unique(ytr).size)
    clustering: dict[str, Any] = {"k": n_classes}
    for k in dict.fromkeys([n_classes, cfg.k]):
        metrics = clustering_quality(model, xtr_img, ytr, cfg, reader, k=k)
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
    reader: FeatureOptions,
    *,
    k: int | None = None,
    n_init: int = 5,
) -> dict[str, float]:
    """NMI, ARI and Hungarian accuracy vs ``labels`` of clustering ``model``'s features.

    Uses training's pipeline itself (:func:`~deepcluster.cluster.preprocess_and_cluster`: the
    clustered layer, PCA-whitening, L2, the run's clustering method, ``fit_fraction``). On a
    randomly initialised network with ``k`` clusters this is the Initial Alignment of the Deep
    Dive paper. k-means keeps the best (lowest loss) of ``n_init`` seeded restarts: a single
    k-means run moves NMI by a few hundredths on its own, which would drown the difference
    between two networks.
    """
    assignments = model_clusters(model, images, cfg, reader, k=k, n_init=n_init)
    return _cluster_metrics(labels, assignments)


def model_clusters(
    model: torch.nn.Module,
    images: torch.Tensor | ImageSource,
    cfg: TrainConfig,
    reader: FeatureOptions,
    *,
    k: int | None = None,
    n_init: int = 1,
    seed: int | None = None,
) -> np.ndarray:
    """The clusters training would give ``images`` with ``model``: its clustering features, then
    :func:`~deepcluster.cluster.preprocess_and_cluster` (``pca_dim``, ``whiten``, ``cluster_relu``,
    ``clustering``, ``kmeans_iters``, ``fit_fraction``) with ``k`` clusters (default ``cfg.k``), seeded
    by ``seed`` (default ``cfg.seed``); k-means keeps the lowest-loss of ``n_init`` restarts."""
    layers = None if cfg.cluster_layer is None else [cfg.cluster_layer]
    feats = extract_features(model, images, reader, layers=layers, description="clustering features")
    step = preprocess_and_cluster(next(iter(feats.values())), cfg, seed=cfg.seed if seed is None else seed, k=k,
                                  n_init=n_init if cfg.clustering == "kmeans" else 1, device=reader.device)
    return step.result.assignments

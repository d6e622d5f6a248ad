"""The evaluation protocols of the suite: their parameters (from EvalConfig), how to run them, their metrics.

``linear``
    Linear probe: the official SGD protocol (:func:`~deepcluster.evaluate.sgd_probe.sgd_linear_probe`,
    metrics ``last_acc``, ``best_acc``, ``best_epoch``, ``train_acc``) or, with ``probe=lbfgs``, the
    converged L-BFGS probe (``test_acc``, ``train_acc``).
``knn``
    Similarity-weighted cosine kNN for every k of ``knn_ks`` (metrics ``k=10``...).
``lowshot``
    n labelled images per class (metrics ``n=1``... with their standard deviation over draws).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from deepcluster.core.config import EvalConfig
from deepcluster.core.errors import ConfigError
from deepcluster.evaluate.knn import knn_accuracies
from deepcluster.evaluate.lbfgs_probe import linear_probe
from deepcluster.evaluate.lowshot import lowshot_accuracy
from deepcluster.evaluate.sgd_probe import sgd_linear_probe

#: Every protocol the suite knows, in display order.
PROTOCOLS: tuple[str, ...] = ("linear", "knn", "lowshot")

#: Iterations of the low-shot L-BFGS logistic regression (few samples: converges fast).
LOWSHOT_MAX_ITER = 100

#: How low-shot fits its regression (a cache key: the span fit changed the numbers by float
#: rounding and L-BFGS's path, not its optimum; see :mod:`deepcluster.evaluate.lowshot`).
LOWSHOT_FIT = "sample-span"

#: A full-batch L-BFGS probe on more feature values than this (rows × dims) uses every CPU thread.
_THREADED_LBFGS = 20_000_000


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Within the block, PyTorch's CPU operators use ``n`` threads (``None``: unchanged).

    The probes' operators are small (a mini-batch of 256 rows, a low-shot fit of at most a few hundred):
    splitting each over threads costs more in synchronisation than it saves, and on a shared or
    loaded machine far more (measured on 2 busy cores: low-shot 10x, the SGD probe 3x slower
    with 2 threads than with 1). Results do not depend on the thread count beyond float rounding.
    """
    import torch

    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def protocol_threads(protocol: str, params: dict[str, Any], n_rows: int, dim: int) -> int | None:
    """CPU threads for one protocol: 1 for the SGD probe and low-shot (small operators), and for an
    L-BFGS probe on few feature values; ``None`` (all) for a large L-BFGS probe and kNN (faiss
    has its own threads)."""
    if protocol == "lowshot" or (protocol == "linear" and params.get("probe") == "sgd"):
        return 1
    if protocol == "linear" and n_rows * dim <= _THREADED_LBFGS:
        return 1
    return None


def check_protocols(protocols: list[str] | tuple[str, ...]) -> list[str]:
    """``protocols`` de-duplicated in display order, or a ConfigError naming the unknown ones."""
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"unknown protocol(s) {unknown}: choose among {', '.join(PROTOCOLS)}")
    if not protocols:
        raise ConfigError(f"no protocol chosen: pass some of {', '.join(PROTOCOLS)}")
    return [p for p in PROTOCOLS if p in protocols]


def protocol_params(protocol: str, ecfg: EvalConfig, seed: int) -> dict[str, Any]:
    """Everything ``protocol``'s numbers depend on besides the features: part of the cache key.

    Parameters
    ----------
    protocol : str
        One of :data:`PROTOCOLS`.
    ecfg : EvalConfig
        Evaluation settings.
    seed : int
        The run's seed (SGD order and init, low-shot draws).

    Returns
    -------
    dict[str, Any]
    """
    if protocol == "linear":
        if ecfg.probe == "sgd":
            params = {"probe": "sgd", "epochs": ecfg.probe_epochs, "lr": ecfg.probe_lr,
                      "batch_size": ecfg.probe_batch_size, "momentum": ecfg.probe_momentum,
                      "weight_decay": ecfg.probe_weight_decay, "schedule": "cosine", "seed": seed}
            return {**params, "hflip": True} if ecfg.probe_hflip else params  # earlier cache keys unchanged
        return {"probe": "lbfgs", "max_iter": ecfg.probe_max_iter, "weight_decay": ecfg.probe_weight_decay,
                "seed": seed}
    if protocol == "knn":
        return {"ks": list(ecfg.knn_ks), "weights": "cosine"}
    if protocol == "lowshot":
        return {"n": list(ecfg.lowshot_n), "repeats": ecfg.lowshot_repeats, "classifier": ecfg.lowshot_classifier,
                "weight_decay": ecfg.lowshot_weight_decay, "max_iter": LOWSHOT_MAX_ITER, "seed": seed,
                "fit": LOWSHOT_FIT}
    check_protocols([protocol])
    raise AssertionError(protocol)  # pragma: no cover


def run_protocol(
    protocol: str,
    params: dict[str, Any],
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    device: torch.device | str = "cpu",
    description: str = "",
    show_progress: bool = False,
    flipped: np.ndarray | None = None,
) -> dict[str, Any]:
    """Run ``protocol`` with ``params`` (from :func:`protocol_params`) on frozen features.

    Parameters
    ----------
    protocol : str
        One of :data:`PROTOCOLS`.
    params : dict
        Its parameters.
    train, test : tuple[np.ndarray, np.ndarray]
        (features, labels) of the fitted and the scored images (the test split, or a held-out part
        of the training images).
    device : torch.device or str
        Where the SGD probe trains.
    description : str
        Progress bar label.
    show_progress : bool
        Show a progress bar (epochs, L-BFGS evaluations, kNN queries, low-shot fits).
    flipped : np.ndarray or None
        Features of the horizontally flipped training images: needed (and only used) by the SGD
        probe with ``params["hflip"]`` (see :func:`~deepcluster.evaluate.sgd_probe.sgd_linear_probe`).

    Returns
    -------
    dict[str, Any]
        JSON-ready result, always with ``dim``.
    """
    n_rows, dim = train[0].shape[0], int(train[0].shape[1])
    on_cpu = torch.device(device).type == "cpu" or protocol != "linear" or params.get("probe") != "sgd"
    threads = protocol_threads(protocol, params, n_rows, dim) if on_cpu else None
    with cpu_threads(threads):
        return _run(protocol, params, train, test, device=device, description=description,
                    show_progress=show_progress, flipped=flipped)


def _run(protocol: str, params: dict[str, Any], train: tuple[np.ndarray, np.ndarray],
         test: tuple[np.ndarray, np.ndarray], *, device: torch.device | str, description: str,
         show_progress: bool, flipped: np.ndarray | None = None) -> dict[str, Any]:
    (xtr, ytr), (xte, yte) = train, test
    dim = int(xtr.shape[1])
    if protocol == "linear" and params["probe"] == "sgd":
        if params.get("hflip") and flipped is None:
            raise ValueError("the SGD probe with hflip needs the flipped training images' features")
        r = sgd_linear_probe(train, test, epochs=params["epochs"], batch_size=params["batch_size"],
                             lr=params["lr"], momentum=params["momentum"], weight_decay=params["weight_decay"],
                             schedule=params["schedule"], seed=params["seed"], device=device,
                             description=description or "linear probe", show_progress=show_progress,
                             flipped=flipped if params.get("hflip") else None)
        return r.to_dict()
    if protocol == "linear":
        p = linear_probe(xtr, ytr, xte, yte, weight_decay=params["weight_decay"], max_iter=params["max_iter"],
                         seed=params["seed"], description=description or "linear probe", show_progress=show_progress)
        return {"test_acc": p.test_acc, "train_acc": p.train_acc, "dim": p.dim}
    if protocol == "knn":
        accs = knn_accuracies(xtr, ytr, xte, yte, ks=params["ks"], description=description or "kNN",
                              show_progress=show_progress)
        return {"accs": {str(k): v for k, v in accs.items()}, "dim": dim}
    if protocol == "lowshot":
        res = lowshot_accuracy(xtr, ytr, xte, yte, shots=params["n"], repeats=params["repeats"], seed=params["seed"],
                               classifier=params["classifier"], weight_decay=params["weight_decay"],
                               max_iter=params["max_iter"], description=description or "low-shot",
                               show_progress=show_progress)
        return {"shots": {str(n): r.to_dict() for n, r in res.items()}, "dim": dim}
    check_protocols([protocol])
    raise AssertionError(protocol)  # pragma: no cover


def result_metrics(protocol: str, result: dict[str, Any]) -> list[tuple[str, float, float | None]]:
    """The (metric, value, std) triples of one protocol result, headline first.

    Parameters
    ----------
    protocol : str
        One of :data:`PROTOCOLS`.
    result : dict
        What :func:`run_protocol` returned.

    Returns
    -------
    list[tuple[str, float, float | None]]
        ``std`` is the spread over draws (low-shot), else ``None``.
    """
    if protocol == "linear":
        keys = ("last_acc", "best_acc", "best_epoch", "train_acc") if "last_acc" in result else ("test_acc", "train_acc")
        return [(k, float(result[k]), None) for k in keys]
    if protocol == "knn":
        return [(f"k={k}", float(v), None) for k, v in sorted(result["accs"].items(), key=lambda kv: int(kv[0]))]
    if protocol == "lowshot":
        return [(f"n={n}", float(r["mean"]), float(r["std"]))
                for n, r in sorted(result["shots"].items(), key=lambda kv: int(kv[0]))]
    check_protocols([protocol])
    raise AssertionError(protocol)  # pragma: no cover

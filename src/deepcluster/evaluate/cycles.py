"""Clustering metrics of every saved cycle of a run, recomputed from ``assignments/cycle_NNN.npy``.

Per cycle: agreement of the pseudo-labels with the true labels (NMI, ARI, Hungarian accuracy) when
the dataset has labels, their stability (NMI with the previous saved cycle, the paper's NMI(t-1, t))
and cluster-size statistics. No network is run, so this is cheap for any run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from deepcluster.cluster import ari, clustering_accuracy, nmi
from deepcluster.core.errors import DataError
from deepcluster.data.splits import load_split
from deepcluster.runs import RunFolder


def run_train_labels(run_dir: str | Path) -> np.ndarray | None:
    """Labels of the images a run clustered, in the order of its assignments.

    The run's own training split with its ``data.limit`` and ``seed`` (so the same subset).

    Parameters
    ----------
    run_dir : str or Path
        A run folder.

    Returns
    -------
    np.ndarray or None
        int64 labels, or ``None`` when the dataset has none.

    Raises
    ------
    DataError
        If the dataset cannot be loaded.
    """
    run = RunFolder(Path(run_dir)).require()
    data = load_split(run.load_config())
    return None if data.labels is None else np.asarray(data.labels, dtype=np.int64)


def _size_stats(assignments: np.ndarray) -> dict[str, Any]:
    sizes = np.unique(assignments[assignments >= 0], return_counts=True)[1]
    return {"clusters": int(sizes.size), "size_min": int(sizes.min()), "size_median": float(np.median(sizes)),
            "size_max": int(sizes.max())}


def cycle_metrics(
    run_dir: str | Path,
    *,
    labels: np.ndarray | None | Literal["auto"] = "auto",
) -> list[dict[str, Any]]:
    """One row of clustering metrics per saved cycle of a run.

    Parameters
    ----------
    run_dir : str or Path
        A run folder with ``assignments/cycle_NNN.npy`` files.
    labels : np.ndarray, None or "auto"
        True labels of the clustered images, in their order. ``"auto"`` loads them from the run's
        dataset (see :func:`run_train_labels`), and goes on without labels when the dataset has
        none or cannot be loaded; ``None`` computes the label-free metrics only.

    Returns
    -------
    list[dict[str, Any]]
        In cycle order, each with ``cycle``, ``n`` (images), ``clusters`` (non-empty),
        ``size_min``, ``size_median``, ``size_max``, ``prev_cycle`` and ``nmi_prev`` (NMI with the
        previous saved cycle; ``None`` for the first one), and with labels ``nmi``, ``ari``,
        ``acc`` (Hungarian accuracy) vs the labels (``None`` without labels). Empty when no
        cycle is saved. A cycle that clustered a sample of the pool (``pool_subset``, Caron's
        Algorithm 2) has -1 for the images outside it: ``n`` counts the sample, the label metrics
        are on the sample, and ``nmi_prev`` on the images both cycles clustered.

    Raises
    ------
    DataError
        If explicit ``labels`` (or those of the dataset) do not match the assignments' length.
    """
    run = RunFolder(Path(run_dir)).require()
    cycles = run.assignment_cycles()
    if labels is not None and isinstance(labels, str):
        try:
            labels = run_train_labels(run.path) if cycles else None
        except DataError:
            labels = None
        auto = True
    else:
        auto = False
    rows: list[dict[str, Any]] = []
    previous: tuple[int, np.ndarray] | None = None
    for cycle in cycles:
        a = np.asarray(run.load_assignments(cycle)).ravel()
        if labels is not None and len(labels) != len(a):
            where = "the run's training split (data.limit and seed of its config.yaml)" if auto else "the labels given"
            raise DataError(f"{run.assignments_path(cycle)} holds {len(a)} assignments but {where} has {len(labels)} "
                            "images: the labels must be those of the clustered images, in the same order")
        mask = a >= 0  # all True but for an Algorithm 2 cycle
        row: dict[str, Any] = {"cycle": cycle, "n": int(mask.sum()), **_size_stats(a),
                               "prev_cycle": None, "nmi_prev": None, "nmi": None, "ari": None, "acc": None}
        if previous is not None and len(previous[1]) == len(a):
            shared = mask & (previous[1] >= 0)
            if shared.sum() > 1:
                row["prev_cycle"], row["nmi_prev"] = previous[0], nmi(previous[1][shared], a[shared])
        if labels is not None:
            lab, got = labels[mask], a[mask]
            row.update(nmi=nmi(lab, got), ari=ari(lab, got), acc=clustering_accuracy(lab, got))
        rows.append(row)
        previous = (cycle, a)
    return rows

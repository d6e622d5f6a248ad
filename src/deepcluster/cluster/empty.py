"""Guarantee that every cluster is non-empty (Caron et al., 2018, §3.3 "Empty clusters").

An empty cluster gets half of the points of a non-empty one. Which one: drawn at random with
probability proportional to its size (as faiss does during training, and as in the paper);
clusters of a single point cannot be split and are never drawn. How the points are halved:
they are projected on a random direction through the donor's centroid and cut at the median,
so both halves are non-empty even when all the donor's points are identical (a perturbed
second centroid, as in the paper, would leave one side empty for duplicated points).

Each split can be recorded (``record``) as a rule on the points: those of the donor whose
projection on the direction (through the donor's mean) lies above the cut move to the empty
cluster. :class:`~deepcluster.cluster.assigner.ClusterAssigner` replays these rules after the
nearest-centroid search, so that new points are assigned exactly as the clustering assigned its own.
"""

from __future__ import annotations

import numpy as np

from deepcluster.core import distributed
from deepcluster.core.errors import ClusteringError


def resplit_empty(
    assignments: np.ndarray,
    x: np.ndarray,
    k: int,
    centroids: np.ndarray | None,
    rng: np.random.Generator | int | None,
    *,
    sharded: bool = False,
    record: list[dict] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Re-split non-empty clusters until none of the ``k`` clusters is empty.

    Parameters
    ----------
    assignments : np.ndarray
        Cluster of each point, ints in [0, k), shape (N,).
    x : np.ndarray
        The points, shape (N, d).
    k : int
        Number of clusters.
    centroids : np.ndarray or None
        Centroids, shape (k, d); the two clusters of each split get the means of their
        halves. ``None`` to not track centroids.
    rng : np.random.Generator, int or None
        Randomness (or a seed) for choosing donors and split directions.
    sharded : bool
        ``assignments`` and ``x`` are this process's rows of a distributed run: cluster sizes are
        all-reduced and a donor's points gathered, so that every rank takes the same decisions
        (with the same ``rng``) and the result is the one of a single process holding all rows.
    record : list, optional
        Each split is appended to it, in order, as the rule that replays it on any point: a dict
        with ``donor``, ``empty`` (ints), ``mean`` and ``direction`` (float64, shape (d,)), ``cut``
        (float) and ``tied`` (int). A point of the donor moves to ``empty`` when
        ``(x - mean) @ direction > cut``; ``cut`` lies halfway between the projections of the last
        point that stayed and the first that moved. ``tied`` counts the points that moved although
        their projection equals the cut (identical points cut in two): no rule on the points can
        replay those, and the rule keeps them with the donor.

    Returns
    -------
    assignments : np.ndarray
        New int64 assignments (a copy), every cluster in [0, k) non-empty.
    centroids : np.ndarray or None
        Updated copy of ``centroids`` (float32), or ``None``.
    n_resplit : int
        Number of empty clusters that were filled.

    Raises
    ------
    ClusteringError
        If ``k`` exceeds the number of points.
    ValueError
        If the assignments do not match the points or fall outside [0, k).
    """
    rng = np.random.default_rng(rng)
    a = np.asarray(assignments).astype(np.int64, copy=True).ravel()
    x = np.asarray(x)
    n_local = a.shape[0]
    if x.ndim != 2 or x.shape[0] != n_local:
        raise ValueError(
            f"resplit_empty got {n_local} assignments but features of shape {x.shape}: "
            "pass one assignment per feature row"
        )
    sizes = np.bincount(a, minlength=k)
    if n_local and (a.min() < 0 or a.max() >= k):
        raise ValueError(
            f"assignments must lie in [0, {k}), got values in [{a.min()}, {a.max()}]"
        )
    if sharded:
        sizes = distributed.all_reduce_sum(sizes.astype(np.int64))
    n = int(sizes.sum())
    if k > n:
        raise ClusteringError(
            f"k={k} is larger than the number of samples ({n}): lower k or use more data"
        )
    if centroids is not None:
        centroids = np.array(centroids, dtype=np.float32, copy=True)

    n_resplit = 0
    for empty in np.flatnonzero(sizes == 0):
        # Drawing weights size-1: singletons cannot be halved. Some cluster has >= 2 points
        # because k <= n and at least one cluster is empty.
        weights = (sizes - 1).clip(min=0).astype(np.float64)
        donor = int(rng.choice(k, p=weights / weights.sum()))
        members = np.flatnonzero(a == donor)
        # The donor's points of every rank, in row order (a single process: its own)
        before = sum(int(c) for c in distributed.all_gather_objects(len(members))[: distributed.world().rank]) \
            if sharded else 0
        rows = distributed.all_gather_rows(x[members]) if sharded else x[members]
        pts = rows.astype(np.float64)
        direction = rng.standard_normal(x.shape[1])
        proj = (pts - pts.mean(axis=0)) @ direction
        # Stable sort: ties (duplicated points) are still cut into two equal halves.
        order = np.argsort(proj, kind="stable")
        moved = order[len(rows) // 2 :]  # positions among the donor's points
        if record is not None:
            record.append(_split_rule(donor, int(empty), pts.mean(axis=0), direction, proj[order], len(rows) // 2))
        mine = moved[(moved >= before) & (moved < before + len(members))] - before
        a[members[mine]] = empty
        sizes[donor] -= len(moved)
        sizes[empty] = len(moved)
        if centroids is not None:
            stays = np.ones(len(rows), dtype=bool)
            stays[moved] = False
            centroids[donor] = rows[stays].mean(axis=0)
            centroids[empty] = rows[moved].mean(axis=0)
        n_resplit += 1
    return a, centroids, n_resplit


def _split_rule(donor: int, empty: int, mean: np.ndarray, direction: np.ndarray, sorted_proj: np.ndarray,
                half: int) -> dict:
    """The rule of one split (see ``record`` of :func:`resplit_empty`): the points at sorted
    positions ``half`` and above moved."""
    stay, move = float(sorted_proj[half - 1]), float(sorted_proj[half])
    cut = stay + (move - stay) / 2
    if not cut < move:  # adjacent floats: the midpoint rounds up to the first point that moved
        cut = stay
    tied = int((sorted_proj[half:] <= cut).sum())  # moved, yet not above the cut: identical projections
    return {"donor": int(donor), "empty": int(empty), "mean": np.asarray(mean, dtype=np.float64).copy(),
            "direction": np.asarray(direction, dtype=np.float64).copy(), "cut": cut, "tied": tied}

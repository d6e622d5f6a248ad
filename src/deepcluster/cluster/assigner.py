"""A clustering kept for later: assign new features to its clusters as it assigned its own.

:func:`~deepcluster.cluster.preprocess_and_cluster` returns, with its clusters, a
:class:`ClusterAssigner`: the fitted PCA-whitening (+ L2), and for k-means

* the fitted centroids, to which every sample went (nearest, squared L2), and
* the empty-cluster re-splits made after that assignment, as rules on the samples
  (:func:`~deepcluster.cluster.resplit_empty`'s ``record``).

Nearest fitted centroid, then the rules in order, is exactly how k-means assigned its samples: on
the same features (bit for bit) and the same backend, :meth:`ClusterAssigner.assign` reproduces
the clustering's assignments. The nearest centroid alone would not be: a re-split moves half of a
donor cluster to the empty one by a median cut along a random direction, not by distance, and
moves the donor's centroid. The only samples no rule can replay are identical points that a
re-split cut in two (``tied``): the rule keeps them with the donor, and :attr:`ClusterAssigner.exact`
says so. Distances are to the clusters' final centroids (those of the k-means loss).

PIC has no centroids: its assigner sends a sample to the nearest mean of each cluster's reduced
features (squared L2), an approximation of PIC's graph clustering (``exact`` is False).

:meth:`ClusterAssigner.state_dict` holds only tensors, numbers, strings, lists and dicts, so that
run checkpoints keep it and load it with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from deepcluster.cluster._checks import as_features
from deepcluster.cluster.faiss_kmeans import _choose_backend, assign_nearest
from deepcluster.cluster.preprocess import Preprocessor
from deepcluster.cluster.result import ClusterResult
from deepcluster.core import distributed

__all__ = ["ClusterAssigner", "STATE_FORMAT"]

#: Version of :meth:`ClusterAssigner.state_dict`'s layout.
STATE_FORMAT = 1


@dataclass
class ClusterAssigner:
    """Assigns features (the network's, full width) to the clusters of one clustering.

    Attributes
    ----------
    method : str
        ``kmeans`` or ``pic``.
    relu : bool
        Features went through a ReLU before the PCA (``cluster_relu``).
    preprocessor : Preprocessor
        The fitted PCA-whitening and L2 normalisation.
    search_centroids : np.ndarray
        float32 (k, d'): every sample goes to the nearest of these first.
    centroids : np.ndarray
        float32 (k, d'): the clusters' final centroids (after re-splits; PIC: cluster means).
    sizes : np.ndarray
        int64 (k,): samples of each cluster in the clustering itself.
    splits : list of dict
        Re-split rules replayed after the search, in order (see :func:`resplit_empty`).
    """

    method: str
    relu: bool
    preprocessor: Preprocessor
    search_centroids: np.ndarray
    centroids: np.ndarray
    sizes: np.ndarray
    splits: list[dict] = field(default_factory=list)

    @property
    def k(self) -> int:
        return int(len(self.centroids))

    @property
    def exact(self) -> bool:
        """Whether :meth:`assign` replays the clustering's own assignments exactly (on the same
        features): k-means, unless a re-split cut identical points in two; never PIC."""
        return self.method == "kmeans" and not any(int(s["tied"]) for s in self.splits)

    # building ---------------------------------------------------------------
    @classmethod
    def from_clustering(cls, pre: Preprocessor, result: ClusterResult, x: np.ndarray, *, method: str,
                        relu: bool, sharded: bool = False) -> ClusterAssigner | None:
        """The assigner of ``result``, the clustering of the reduced features ``x`` (this rank's
        rows when ``sharded``) by ``method``; None when the result keeps no centroids to assign to."""
        if method == "kmeans":
            if result.centroids is None or result.search_centroids is None:
                return None
            return cls(method=method, relu=relu, preprocessor=pre,
                       search_centroids=np.asarray(result.search_centroids, dtype=np.float32),
                       centroids=np.asarray(result.centroids, dtype=np.float32),
                       sizes=np.asarray(result.sizes, dtype=np.int64), splits=list(result.splits))
        means = _cluster_means(x, result.assignments, result.k, sharded=sharded)
        return cls(method=method, relu=relu, preprocessor=pre, search_centroids=means, centroids=means,
                   sizes=np.asarray(result.sizes, dtype=np.int64))

    # assigning --------------------------------------------------------------
    def reduce(self, features: np.ndarray) -> np.ndarray:
        """Full-width features → the clustering's space (ReLU if it had one, PCA-whitening, L2)."""
        x = as_features(features, allow_empty=True)
        if self.relu:
            x = np.maximum(x, 0)
        return self.preprocessor.transform(x)

    def assign_reduced(self, x: np.ndarray, *, device: torch.device | str | None = None,
                       deterministic: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The cluster (int64) and the L2 distance to its centroid (float64) of each reduced row.

        ``device`` and ``deterministic`` choose the nearest-centroid search as k-means chose it in
        training (a GPU: faiss's GPU index, or torch; the CPU: BLAS by fixed blocks), so that the
        same rows get the same clusters.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.centroids.shape[1]:
            raise ValueError(f"reduced features of shape {x.shape} for centroids of {self.centroids.shape[1]} dims")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        backend = _choose_backend(None, str(dev) if dev.type == "cuda" else None, False, deterministic)
        ids = assign_nearest(x, self.search_centroids, use_gpu=backend.assign_gpu, device=backend.torch_device,
                             gpu=backend.gpu) if len(x) else np.zeros(0, dtype=np.int64)
        for split in self.splits:  # the re-splits, in the order they were made
            members = np.flatnonzero(ids == int(split["donor"]))
            if len(members):
                proj = (x[members].astype(np.float64) - split["mean"]) @ split["direction"]
                ids[members[proj > float(split["cut"])]] = int(split["empty"])
        diff = x.astype(np.float64) - self.centroids[ids].astype(np.float64)
        return ids, np.sqrt(np.einsum("ij,ij->i", diff, diff))

    def assign(self, features: np.ndarray, *, device: torch.device | str | None = None,
               deterministic: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`reduce` then :meth:`assign_reduced`."""
        return self.assign_reduced(self.reduce(features), device=device, deterministic=deterministic)

    # storing ----------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors, numbers, strings, lists and dicts only (see the module docstring)."""
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).clone()

        return {"format": STATE_FORMAT, "method": self.method, "k": self.k, "relu": bool(self.relu),
                "preprocessor": self.preprocessor.state_dict(),
                "search_centroids": t(self.search_centroids.astype(np.float32)),
                "centroids": t(self.centroids.astype(np.float32)), "sizes": t(self.sizes.astype(np.int64)),
                "splits": [{"donor": int(s["donor"]), "empty": int(s["empty"]), "cut": float(s["cut"]),
                            "tied": int(s["tied"]), "mean": t(np.asarray(s["mean"], np.float64)),
                            "direction": t(np.asarray(s["direction"], np.float64))} for s in self.splits]}

    @classmethod
    def from_state(cls, state: dict) -> ClusterAssigner:
        """The assigner of :meth:`state_dict`; ValueError (one line) when ``state`` is not one or
        does not hold together."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"clusters of format {found!r}, this deepcluster reads format {STATE_FORMAT}")
        try:
            pre = Preprocessor.from_state(state["preprocessor"])
            search = _array(state["search_centroids"], np.float32)
            centroids = _array(state["centroids"], np.float32)
            sizes = _array(state["sizes"], np.int64)
            splits = [{"donor": int(s["donor"]), "empty": int(s["empty"]), "cut": float(s["cut"]),
                       "tied": int(s["tied"]), "mean": _array(s["mean"], np.float64),
                       "direction": _array(s["direction"], np.float64)} for s in state["splits"]]
            assigner = cls(method=str(state["method"]), relu=bool(state["relu"]), preprocessor=pre,
                           search_centroids=search, centroids=centroids, sizes=sizes, splits=splits)
            k = int(state["k"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"the clusters do not hold together ({e.__class__.__name__}: {e})") from None
        d = pre.effective_dim
        problems = []
        if assigner.method not in ("kmeans", "pic"):
            problems.append(f"unknown method {assigner.method!r}")
        if centroids.ndim != 2 or centroids.shape != (k, d) or search.shape != (k, d):
            problems.append(f"k={k} and {d} dimensions, but centroids of shape {centroids.shape} "
                            f"and {search.shape}")
        if sizes.shape != (k,):
            problems.append(f"k={k} but {sizes.shape[0] if sizes.ndim else 0} cluster sizes")
        for s in splits:
            if not (0 <= s["donor"] < k and 0 <= s["empty"] < k) or s["mean"].shape != (d,) \
                    or s["direction"].shape != (d,):
                problems.append("a re-split rule outside the clusters")
                break
        if problems:
            raise ValueError("the clusters do not hold together: " + "; ".join(problems))
        return assigner


def _array(value: object, dtype: type) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(value), dtype=dtype)


def _cluster_means(x: np.ndarray, assignments: np.ndarray, k: int, *, sharded: bool) -> np.ndarray:
    """float32 (k, d): the mean of each cluster's rows of ``x`` (float64 sums; all ranks' rows
    when ``sharded``, where ``assignments`` are those of every rank); a cluster without rows: 0."""
    n_local = len(x)
    offset = 0
    if sharded:
        counts = [int(c) for c in distributed.all_gather_objects(n_local)]
        offset = sum(counts[: distributed.world().rank])
    mine = torch.from_numpy(np.ascontiguousarray(assignments[offset : offset + n_local], dtype=np.int64))
    sums = torch.zeros((k, x.shape[1]), dtype=torch.float64).index_add_(0, mine, torch.from_numpy(x).double())
    counts = np.bincount(mine.numpy(), minlength=k).astype(np.float64)
    sums_np = sums.numpy()
    if sharded:
        sums_np = distributed.all_reduce_sum(sums_np)
        counts = distributed.all_reduce_sum(counts)
    return (sums_np / np.maximum(counts, 1)[:, None]).astype(np.float32)

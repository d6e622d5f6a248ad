"""Sampling uniform over clusters (Caron et al. §3): every non-empty cluster contributes the
same number of samples per epoch, so one giant cluster cannot dominate the pseudo-label task."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class UniformClusterSampler(Sampler[int]):
    """Yield ``n_samples`` indices, an equal share drawn from each non-empty cluster.

    As in the official code, each cluster gets ``n_samples // n_nonempty + 1`` draws (with
    replacement only when the cluster is smaller than its share); the list is shuffled and
    cut to ``n_samples``.
    """

    def __init__(self, assignments: np.ndarray, n_samples: int | None = None, seed: int = 0) -> None:
        self.assignments = np.asarray(assignments, dtype=np.int64)
        self.n_samples = int(n_samples if n_samples is not None else len(self.assignments))
        self.seed = seed
        self.indices = self._draw()

    def _draw(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        order = np.argsort(self.assignments, kind="stable")
        clusters, starts, counts = np.unique(self.assignments[order], return_index=True, return_counts=True)
        if len(clusters) == 0:
            return np.empty(0, dtype=np.int64)
        per_cluster = self.n_samples // len(clusters) + 1
        chunks = []
        for start, count in zip(starts, counts):
            members = order[start : start + count]
            chunks.append(rng.choice(members, per_cluster, replace=count < per_cluster))
        res = np.concatenate(chunks)
        rng.shuffle(res)
        return res[: self.n_samples]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices.tolist())

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The same indices, as index tensors of ``batch_size`` (last one may be smaller)."""
        idx = torch.from_numpy(self.indices)
        yield from idx.split(batch_size)

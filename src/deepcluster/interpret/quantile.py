"""Streaming per-unit quantiles of the top tail, for pass 1 of :func:`deepcluster.interpret.dissect.dissect`.

For each unit ``u`` the threshold ``T_u`` is the top-``quantile`` quantile of its activations over
all images and positions -- ``np.percentile(a, 100 * (1 - q))`` with linear interpolation, as
NetDissect-Lite's ``quantile_threshold`` computes it from its memory-mapped features. Two methods,
neither keeping the activations:

* ``exact`` (:class:`TopKQuantile`): a running per-unit top-``k`` (``torch.topk`` over the kept
  values and each batch), ``k = ceil((n - 1) q) + 2`` for ``n = images x h x w`` values per unit.
  The interpolated percentile only involves the two order statistics around rank
  ``(n - 1)(1 - q)``, which lie in that top ``k``, so the result is exactly numpy's. Memory:
  ``units x k`` floats.
* ``sketch`` (:class:`HistogramQuantile`): a per-unit histogram of ``SKETCH_BINS`` equal bins over
  an adaptive range: the range starts at the first batch's min..max and doubles (merging bin
  pairs) whenever a value falls outside it (the old range becomes the lower or upper half of the
  new one). The quantile is read by linear interpolation inside its bin, so the error is below
  one bin width; the range ends at most ~4x the unit's activation span, so the error is
  ``< 4 x (max - min) / SKETCH_BINS`` (0.1 % of the span; max and min over the probe). Memory:
  ``units x SKETCH_BINS`` counts, whatever the probe's size.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["SKETCH_BINS", "HistogramQuantile", "TopKQuantile"]

#: Bins per unit of the ``sketch`` quantile method.
SKETCH_BINS = 4096

class TopKQuantile:
    """Exact streaming per-unit percentile of the top tail (see the module docstring).

    ``total`` is the number of values each unit will receive; :meth:`add` takes ``units x m``.
    """

    def __init__(self, units: int, total: int, quantile: float, device: torch.device | str = "cpu"):
        if total < 1:
            raise ValueError("total must be >= 1")
        self.units, self.total, self.quantile = units, total, quantile
        self.k = min(total, math.ceil((total - 1) * quantile) + 2)
        self.values = torch.empty(units, 0, device=device)
        self.count = 0

    @staticmethod
    def nbytes(units: int, total: int, quantile: float) -> int:
        """Peak memory of the buffer (kept values and one batch's worth again, roughly)."""
        return 8 * units * min(total, math.ceil((total - 1) * quantile) + 2)

    def add(self, x: torch.Tensor) -> None:
        x = x.to(self.values.device, torch.float32)
        self.count += x.shape[1]
        both = torch.cat([self.values, x], 1)
        self.values = both.topk(self.k, dim=1, sorted=False).values if both.shape[1] > self.k else both

    def result(self) -> np.ndarray:
        if self.count != self.total:
            raise RuntimeError(f"received {self.count} values per unit, expected {self.total}")
        n = self.total
        desc = self.values.sort(dim=1, descending=True).values.double().cpu().numpy()
        pos = (n - 1) * (1.0 - self.quantile)  # ascending rank, as np.percentile
        lo = math.floor(pos)
        frac = pos - lo
        a = desc[:, n - 1 - lo]
        b = desc[:, n - 2 - lo] if lo + 1 <= n - 1 else a
        return a + (b - a) * frac


class HistogramQuantile:
    """Approximate streaming per-unit quantile: adaptive-range histograms (module docstring)."""

    def __init__(self, units: int, quantile: float, bins: int = SKETCH_BINS, device: torch.device | str = "cpu"):
        if bins < 2 or bins % 2:
            raise ValueError("bins must be even and >= 2")
        self.units, self.quantile, self.bins = units, quantile, bins
        self.device = torch.device(device)
        self.hist = torch.zeros(units, bins, dtype=torch.int64, device=self.device)
        self.lo: torch.Tensor | None = None
        self.width: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.to(self.device, torch.float64)
        if x.shape[1] == 0:
            return
        xmin, xmax = x.min(1).values, x.max(1).values
        if self.lo is None:
            span = xmax - xmin
            tiny = torch.clamp(xmax.abs(), min=1.0) * 1e-9
            self.lo = xmin.clone()
            self.width = torch.maximum(span * (1 + 1e-9) / self.bins, tiny / self.bins)
        lo, width, hist, nb = self.lo, self.width, self.hist, self.bins
        while True:
            down = xmin < lo
            up = xmax >= lo + width * nb
            need = up | down
            if not bool(need.any()):
                break
            merged = hist.view(self.units, nb // 2, 2).sum(-1)
            zeros = torch.zeros_like(merged)
            hist = torch.where(
                down[:, None], torch.cat([zeros, merged], 1), torch.where(up[:, None], torch.cat([merged, zeros], 1), hist)
            )
            lo = torch.where(down, lo - width * nb, lo)
            width = torch.where(need, width * 2, width)
        idx = ((x - lo[:, None]) / width[:, None]).floor_().clamp_(0, nb - 1).long()
        idx += torch.arange(self.units, device=self.device)[:, None] * nb
        hist = hist + torch.bincount(idx.reshape(-1), minlength=self.units * nb).view(self.units, nb)
        self.lo, self.width, self.hist = lo, width, hist

    def _order_stat(self, hist: torch.Tensor, cum: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Estimated value of ascending order statistic ``k`` (0-based) of each unit: its bin,
        with the bin's values taken as evenly spread."""
        j = torch.searchsorted(cum, k[:, None], right=True).clamp_(max=self.bins - 1)[:, 0]
        before = torch.where(j > 0, cum.gather(1, (j - 1).clamp(min=0)[:, None])[:, 0], torch.zeros_like(k))
        count = hist.gather(1, j[:, None])[:, 0].clamp(min=1)
        frac = ((k - before + 0.5) / count).clamp(0, 1)
        return self.lo + self.width * (j.double() + frac)

    def result(self) -> np.ndarray:
        if self.lo is None:
            raise RuntimeError("no values added")
        hist = self.hist.double()
        cum = hist.cumsum(1)
        n = cum[:, -1]
        rank = (n - 1) * (1.0 - self.quantile)  # as np.percentile: interpolate two order statistics
        k0 = rank.floor()
        k1 = torch.minimum(k0 + 1, n - 1)
        a, b = self._order_stat(hist, cum, k0), self._order_stat(hist, cum, k1)
        return (a + (b - a) * (rank - k0)).cpu().numpy()

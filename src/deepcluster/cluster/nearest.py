"""Nearest centroid (squared L2) of many rows on the CPU, by GEMM blocks at the BLAS roof.

Two ways, one answer:

* :func:`nearest_fp32`: ``argmin_j ||c_j||^2 - 2 x.c_j`` with float32 matrix products (numpy's
  BLAS) on blocks of :data:`FP32_ROWS` rows. This is the reference: a row's scores come out of the
  same product kernel whatever rows are searched with it, so its answer does not depend on the
  other rows, on the block or on the shard.
* :func:`nearest_bf16`: the same argmin from bf16 matrix products (AVX-512 BF16 / AMX through
  oneDNN), ~2-5x faster, then every row whose two best bf16 scores are closer than a rigorous
  error bound is computed again by :func:`nearest_fp32`. The answer equals the fp32 answer, row
  for row, ties included (see :func:`_row_bounds`).

:func:`nearest` picks bf16 where the CPU computes it natively and the problem is large enough for
it to pay, fp32 elsewhere; both give the same assignments.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

__all__ = ["FP32_ROWS", "nearest", "nearest_bf16", "nearest_fp32", "use_bf16"]

#: Rows per fp32 block. Blocks are aligned to the global row number (``offset``) and always this
#: many rows (zero-padded), so a row's distances come from the same product at the same place
#: in it whether a process assigns 1,000 or 1,000,000 rows.
FP32_ROWS = 2048

#: Rows per bf16 block: its bf16 scores (rows x k x 2 bytes) stay in the cache for the two
#: reductions that follow the product.
BF16_ROWS = 1024

_U_BF16 = 2.0**-8  # unit roundoff of bf16 (8 significant bits, round to nearest even)
_U_FP32 = 2.0**-24
_AUG = 3  # ||c||^2 enters the bf16 product as three bf16 terms (hi, mid, lo) against ones


def nearest_fp32(x: np.ndarray, centroids: np.ndarray, *, offset: int = 0, rows: np.ndarray | None = None
                 ) -> np.ndarray:
    """The nearest centroid (int64) of every row of ``x`` (or of the rows ``rows`` of ``x``), by
    float32 BLAS products on globally aligned blocks of :data:`FP32_ROWS` rows.

    ``offset``: the global number of ``x``'s first row (a rank's shard). With ``rows`` the rows
    are packed into blocks of their own; a row's scores are the same wherever it sits in a block
    (the product's kernel sums each score the same way; the tests check it). The blocks are shared
    among :func:`_workers` threads running one BLAS thread each.
    """
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    c_t2 = np.ascontiguousarray(c.T * np.float32(-2.0))  # exact: x @ (-2c) == -2 (x @ c), bit for bit
    c_sq = np.einsum("ij,ij->i", c, c)
    if rows is not None:
        out = np.empty(len(rows), dtype=np.int64)
        jobs = [(start, min(start + FP32_ROWS, len(rows))) for start in range(0, len(rows), FP32_ROWS)]
    else:
        out = np.empty(len(x), dtype=np.int64)
        first = offset - offset % FP32_ROWS
        jobs = [(start, start + FP32_ROWS) for start in range(first, offset + len(x), FP32_ROWS)]

    def run(part: list[tuple[int, int]]) -> None:
        block = np.zeros((FP32_ROWS, c.shape[1]), dtype=np.float32)
        scores = np.empty((FP32_ROWS, c.shape[0]), dtype=np.float32)
        for start, stop in part:
            if rows is not None:  # packed rows, zero-padded
                m = stop - start
                if m < FP32_ROWS:
                    block.fill(0.0)
                np.take(x, rows[start:stop], axis=0, out=block[:m])
                out[start:stop] = _block_argmin(block, c_t2, c_sq, scores)[:m]
                continue
            lo, hi = max(start, offset), min(stop, offset + len(x))  # a global block, zero-padded
            if lo - start or stop - hi:
                block.fill(0.0)
            block[lo - start : hi - start] = x[lo - offset : hi - offset]
            out[lo - offset : hi - offset] = _block_argmin(block, c_t2, c_sq, scores)[lo - start : hi - start]

    _in_workers(run, jobs, blas=True)
    return out


def _block_argmin(block: np.ndarray, c_t2: np.ndarray, c_sq: np.ndarray, scores: np.ndarray) -> np.ndarray:
    np.matmul(block, c_t2, out=scores)
    scores += c_sq
    return scores.argmin(axis=1)


def _workers() -> int:
    """Threads the blocks are shared among: the process's torch threads (``threads`` of a run)."""
    import torch

    return max(1, torch.get_num_threads())


@functools.cache
def _blas_controller() -> object:
    """threadpoolctl's view of the loaded BLAS libraries (a scan of ~1 ms, made once)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _in_workers(run, jobs: list, *, blas: bool) -> list:
    """``run(part)`` for consecutive parts of ``jobs``, one per worker thread, each with one BLAS
    (``blas``) or torch thread: the products of one block are too small to share two cores well,
    and two threads each on its own block keep both busy, reductions included. Returns the parts'
    results in order. Each row's result does not depend on which worker computes it."""
    n_workers = min(_workers(), len(jobs))
    if n_workers <= 1:
        return [run(jobs)]
    bounds = np.linspace(0, len(jobs), n_workers + 1).round().astype(int)
    parts = [jobs[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    from concurrent.futures import ThreadPoolExecutor

    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with _blas_controller().limit(limits=1, user_api="blas") if blas else contextlib.nullcontext(), \
                ThreadPoolExecutor(n_workers) as pool:
            return list(pool.map(run, parts))
    finally:
        torch.set_num_threads(before)


@functools.cache
def _cpu_bf16() -> bool:
    from deepcluster.core.precision import bf16_supported

    return bf16_supported("cpu")


def use_bf16(n: int, k: int, d: int) -> bool:
    """Whether :func:`nearest` takes the bf16 path for ``n`` rows, ``k`` centroids of ``d`` dims:
    on a CPU with native bf16 and products large enough for it to pay (measured in
    docs/performance.md, "k-means at ImageNet size")."""
    return k >= 256 and d >= 32 and n * k >= 1 << 24 and _cpu_bf16()


def nearest(x: np.ndarray, centroids: np.ndarray, *, offset: int = 0, bf16: bool | None = None) -> np.ndarray:
    """The nearest centroid of every row of ``x``: :func:`nearest_bf16` or :func:`nearest_fp32`
    (``bf16=None``: :func:`use_bf16`), the same assignments either way."""
    k, d = centroids.shape
    if bf16 is None:
        bf16 = use_bf16(len(x), k, d)
    if bf16 and k > 1 and len(x):
        return nearest_bf16(x, centroids, offset=offset)
    return nearest_fp32(x, centroids, offset=offset)


def _to_bf16_bits(v: np.ndarray) -> np.ndarray:
    """The bits (uint16) of finite float32 values rounded to the nearest bf16, ties to even (as
    the CPU's own conversion)."""
    b = np.ascontiguousarray(v, dtype=np.float32).view(np.uint32)
    return ((b + (np.uint32(0x7FFF) + ((b >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)


def _bf16_value(bits: np.ndarray) -> np.ndarray:
    """float32 values of bf16 numbers given by their bits (uint16), exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _bf16_parts(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``v`` (float64, 1-D) as the bits of :data:`_AUG` bf16 numbers per value, whose sum is ``v``
    up to the returned float64 remainder (about 2^-24 of ``v``); and the parts' ``sum |part|``."""
    bits = np.empty((len(v), _AUG), dtype=np.uint16)
    rest, total = np.asarray(v, dtype=np.float64), np.zeros(len(v))
    for i in range(_AUG):
        bits[:, i] = _to_bf16_bits(rest.astype(np.float32))
        p = _bf16_value(bits[:, i]).astype(np.float64)
        total += np.abs(p)
        rest = rest - p
    return bits, rest, total


class _Centroids:
    """The centroids as the bf16 product takes them, and the maxima of their error terms.

    The product's columns are ``[-2 c^, 1, 1, 1, ||c||^2 in three bf16 parts]`` against the rows'
    ``[x^, ||x||^2 + margin in three bf16 parts, 1, 1, 1]``: its accumulator holds
    ``||x||^2 + margin + ||c||^2 - 2 x^.c^``, a squared distance plus a per-row constant.
    """

    def __init__(self, centroids: np.ndarray) -> None:
        import torch

        c = np.ascontiguousarray(centroids, dtype=np.float32)
        k, d = c.shape
        c_sq = np.einsum("ij,ij->i", c, c)  # the fp32 reference's ||c||^2, bit for bit
        c_bits = _to_bf16_bits(c)
        c_hat = _bf16_value(c_bits).astype(np.float64)
        parts, rest, total = _bf16_parts(c_sq.astype(np.float64))
        aug = np.empty((d + 2 * _AUG, k), dtype=np.uint16)
        aug[:d] = _to_bf16_bits(c.T * np.float32(-2.0))  # exact: -2 c^ (a power of two)
        aug[d : d + _AUG] = _ONE_BF16
        aug[d + _AUG :] = parts.T
        self.t = torch.from_numpy(aug.view(np.int16)).view(torch.bfloat16)  # (d + 6, k)
        self.k, self.d = k, d
        slack = 1.0 + 1e-9  # the float64 norms below are themselves rounded (~d 2^-53)
        self.c_hat_max = float(np.sqrt(np.einsum("ij,ij->i", c_hat, c_hat).max())) * slack
        err = c.astype(np.float64) - c_hat
        self.eps_max = float(np.sqrt(np.einsum("ij,ij->i", err, err).max())) * slack
        self.c_max = float(np.sqrt(c_sq.astype(np.float64).max())) * slack
        self.c_sq_max = float(c_sq.max()) * slack
        self.aug_abs_max = float(total.max()) * slack
        self.aug_rest_max = float(np.abs(rest).max()) * slack + 1e-300


_ONE_BF16 = 0x3F80  # 1.0


def _row_bounds(x_norm: np.ndarray, x_err: np.ndarray, x_aug_abs: np.ndarray, cen: _Centroids) -> np.ndarray:
    """Per row ``i``, a bound ``beta_i`` such that, for every centroid ``j``, the bf16 product's
    accumulator before its final rounding, ``A_ij``, and the fp32 reference's score ``s_ij``
    satisfy ``|A_ij - s_ij - t_i| <= beta_i``, ``t_i`` the row's constant (the bf16 sum of its
    augmented terms).

    With ``x^``, ``c^`` the inputs rounded to bf16 (their error vectors' norms ``x_err`` and at most
    ``cen.eps_max``, measured: no worst case of 2^-8 per element is assumed), ``S`` the exact
    ``||c||^2 - 2 x.c`` of the fp32 inputs, and gamma_n = n u / (1 - n u), u = 2^-24:

    * inputs: ``|2 x^.c^ - 2 x.c| <= 2 (|x^ - x| |c^| + |x| |c^ - c|)`` (Cauchy-Schwarz);
    * ``||c||^2`` as three bf16 terms: the float64 remainder (``aug_rest_max``);
    * the bf16 product accumulates its ``d + 6`` terms in fp32: at most
      ``gamma_2(d+6) (2 |x^| |c^| + sum |parts of c| + sum |parts of x|)``, whatever the order or
      pairing of the terms;
    * the fp32 reference: its product ``gamma_d 2 |x| |c|``, then ``+ ||c||^2`` one rounding,
      ``u (||c||^2 + 2 |x| |c|)`` (counted twice);
    * flushed denormals: 1e-30 per term, far above what flushing can move.

    The output rounding to bf16 (``|A - out| <= 2^-8 |out|``) is added by the caller per value.
    """
    d = cen.d
    n_terms = 2 * (d + 2 * _AUG)
    gamma_acc = n_terms * _U_FP32 / (1 - n_terms * _U_FP32)
    gamma_ref = d * _U_FP32 / (1 - d * _U_FP32)
    x_hat = x_norm + x_err
    return (2.0 * (x_err * cen.c_hat_max + x_norm * cen.eps_max)
            + cen.aug_rest_max
            + gamma_acc * (2.0 * x_hat * cen.c_hat_max + cen.aug_abs_max + x_aug_abs)
            + 2.0 * gamma_ref * x_norm * cen.c_max
            + 2.0 * _U_FP32 * (cen.c_sq_max + 2.0 * x_norm * cen.c_max)
            + 1e-30 * n_terms)


def nearest_bf16(x: np.ndarray, centroids: np.ndarray, *, offset: int = 0, stats: dict | None = None) -> np.ndarray:
    """:func:`nearest_fp32`'s answer, from bf16 products and an exact fp32 re-check of near ties.

    The product gives every row ``i`` its squared distances plus a constant ``t_i`` chosen so that
    all of them are positive (``t_i = ||x||^2 + margin``, ``margin > beta_i``), rounded to bf16:
    positive bf16 numbers order as their bits read as uint16, so numpy's vectorised argmin/min on
    that view find the two smallest, ``v1 <= v2`` (``v1`` at centroid ``j1``). The fp32 score of
    any centroid lies within ``2^-8 v + beta_i`` of its bf16 value ``v`` (:func:`_row_bounds`), and
    ``v - 2^-8 v`` grows with ``v``, so when ``v2 (1 - 2^-8) - beta_i > v1 (1 + 2^-8) + beta_i``
    the fp32 score of ``j1`` is strictly below every other one: ``j1`` is the fp32 argmin. Every
    other row is computed in fp32 (:func:`nearest_fp32` with ``rows``). ``offset`` is accepted for
    :func:`nearest`'s signature (no block here depends on it). ``stats``, when given, counts
    ``rechecked`` rows.
    """
    import torch

    del offset
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    cen = _Centroids(centroids)
    d, k = cen.d, cen.k
    out = np.empty(n, dtype=np.int64)
    rows = min(BF16_ROWS, n)

    def run(part: list[int]) -> list[np.ndarray]:
        xa_bits = np.full((rows, d + 2 * _AUG), _ONE_BF16, dtype=np.uint16)
        xa = torch.from_numpy(xa_bits.view(np.int16)).view(torch.bfloat16)
        scores = torch.empty((rows, k), dtype=torch.bfloat16)
        bits = scores.view(torch.int16).numpy().view(np.uint16)
        unsure = []
        for lo in part:
            hi = min(lo + rows, n)
            m = hi - lo
            beta = _bf16_scores(x[lo:hi], cen, xa_bits, xa, scores)
            b = bits[:m]
            j1 = b.argmin(axis=1)
            ar = np.arange(m)
            v1 = _bf16_value(b[ar, j1]).astype(np.float64)
            b[ar, j1] = 0xFFFF
            v2 = _bf16_value(b.min(axis=1)).astype(np.float64)
            sure = v2 * (1 - _U_BF16) - v1 * (1 + _U_BF16) > 2.0 * beta
            out[lo:hi] = j1
            if not sure.all():
                unsure.append(np.flatnonzero(~sure) + lo)
        return unsure

    unsure = [u for part in _in_workers(run, list(range(0, n, rows)), blas=False) for u in part]
    again = np.concatenate(unsure) if unsure else np.zeros(0, dtype=np.int64)
    if len(again):
        out[again] = nearest_fp32(x, centroids, rows=again)
    if stats is not None:
        stats["rechecked"] = stats.get("rechecked", 0) + len(again)
    return out


def _bf16_scores(xb: np.ndarray, cen: _Centroids, xa_bits: np.ndarray, xa: object, scores: object) -> np.ndarray:
    """The bf16 product of the rows ``xb`` (float32) into ``scores[:len(xb)]`` (through the
    buffers ``xa_bits`` and its torch view ``xa``), and each row's bound ``beta``: every score is
    within ``2^-8 |score| + beta_i`` of the fp32 reference's score plus the row's constant ``t_i``,
    the sum of ``xa_bits[i, d:d+3]`` as bf16, and is positive."""
    import torch

    m, d = len(xb), cen.d
    gamma_ref = d * _U_FP32 / (1 - d * _U_FP32)
    x_bits = _to_bf16_bits(xb)
    xa_bits[:m, :d] = x_bits
    x64 = xb.astype(np.float64)
    x_sq = np.einsum("ij,ij->i", x64, x64)
    x_norm = np.sqrt(x_sq) * (1 + 1e-9)  # float64: rounding ~d 2^-53
    err = (xb - _bf16_value(x_bits)).astype(np.float64)  # the difference is exact in fp32
    x_err = np.sqrt(np.einsum("ij,ij->i", err, err)) * (1 + 1e-9)
    # The margin keeps every score positive. A score is >= ||x - c||^2 + margin - 2 beta (the
    # reference's own error is inside beta) less the reference's rounding of ||c||^2 (gamma_d
    # ||c||^2) and the remainder of the row's parts (< 2^-20 of their sum, ||x||^2 + margin);
    # beta is beta0 plus gamma_acc times the parts' absolute sum (< (1 + 2^-7) (||x||^2 + margin)).
    # So margin (1 - g) > 2 beta0 + gamma_d ||c||^2 + g ||x||^2 with g as below; twice that is used.
    beta0 = _row_bounds(x_norm, x_err, np.zeros(m), cen)
    n_terms = 2 * (d + 2 * _AUG)
    g = 2.0 * n_terms * _U_FP32 / (1 - n_terms * _U_FP32) * (1 + 2.0**-6) + 2.0**-20 + 1e-15
    margin = 2.0 * (2.0 * beta0 + gamma_ref * cen.c_sq_max + g * x_sq + 1e-30) / (1.0 - g)
    parts, _, total = _bf16_parts(x_sq + margin)
    xa_bits[:m, d : d + _AUG] = parts
    torch.matmul(xa[:m], cen.t, out=scores[:m])
    return _row_bounds(x_norm, x_err, total * (1 + 1e-9), cen)

"""numpy's BLAS on one thread while torch computes.

A process here has four thread pools: torch's OpenMP, faiss's OpenMP, faiss's OpenBLAS and numpy's
OpenBLAS. numpy's pool is made of pthreads that keep spinning for a while after each matrix product,
so on a machine with few cores the small products of a cycle (the PCA's moments, a block of
distances) leave two threads busy-waiting on the cores torch's next forward pass needs: measured on
2 cores, one LeNet feature pass over Fashion-MNIST took 2.0-3.1 s instead of 1.6-2.1 s, and the PCA
twice its time (``benchmarks/bench_cycle.py`` against a plain script; docs/performance.md).
Those products are small enough for one thread, and the code that parallelises numpy products
itself (``cluster/nearest.py``) already runs one BLAS thread per worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy  # noqa: F401 - loads numpy's BLAS, so that threadpoolctl sees it

__all__ = ["numpy_blas_threads"]


def _numpy_blas() -> list:
    """threadpoolctl's controllers of the BLAS libraries numpy and scipy loaded (not faiss's own)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        return []
    return [lib for lib in ThreadpoolController().lib_controllers
            if lib.user_api == "blas" and any(part in lib.filepath for part in ("numpy", "scipy"))]


@contextlib.contextmanager
def numpy_blas_threads(n: int = 1) -> Iterator[None]:
    """numpy's (and scipy's) BLAS on ``n`` threads inside; put back afterwards. Results do not
    change: OpenBLAS splits a product's output among its threads, not the sums."""
    libs = _numpy_blas()
    before = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(n)
    try:
        yield
    finally:
        for lib, threads in zip(libs, before):
            lib.set_num_threads(threads)

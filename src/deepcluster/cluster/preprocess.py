"""Feature preprocessing before clustering: PCA-whitening then L2 normalisation.

Follows ``preprocess_features`` of the official DeepCluster code: PCA to ``pca_dim`` dims
with whitening (``eigen_power=-0.5``), then each row scaled to unit L2 norm.

The PCA is fitted from float64 moments -- the sum of the rows and the sum of their outer
products, accumulated over blocks of 8,192 rows -- so it can be fitted from features that arrive
a chunk at a time (:meth:`Preprocessor.partial_fit`) and never exist at full width all at once,
with the same numbers as from all of them at once. With ``sharded=True`` each process holds only
its own rows and the sums are all-reduced (:mod:`deepcluster.core.distributed`), so every rank
computes the same whitening and no rank ever holds all the features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from deepcluster.cluster._checks import as_features, check_int, l2_normalize_rows
from deepcluster.core import distributed
from deepcluster.core.errors import ClusteringError

# A component is treated as degenerate (whitening would blow it up to unit variance, noise and
# all) when its variance is below this fraction of the largest one. Exactly rank-deficient
# features give ~1e-16 in float64; units that are dying during training give components far
# below the others, which k-means on whitened features should not see either (measured on the
# Fashion-MNIST preset: keeping components down to 1e-8 cost the trained LeNet 0.04 NMI).
_DEGENERATE_REL_VAR = 1e-6
# Rows per block of the float64 moment products (bounds their temporary memory).
_BLOCK = 8192
# Rows per block of the transform (its float64 temporaries stay in a core's cache).
_TRANSFORM_ROWS = 1024


@dataclass
class Preprocessor:
    """PCA (optionally whitened) followed by L2 row normalisation, fitted once per cycle.

    Parameters
    ----------
    pca_dim : int or None
        Output dimension of the PCA; ``None`` skips PCA (only L2 if ``l2``).
    eigen_power : float
        Each PCA component is multiplied by ``variance ** eigen_power``: -0.5 whitens
        (unit variance per component on the fitted data), 0 is a plain PCA rotation.
    l2 : bool
        Scale each output row to unit L2 norm.
    on_degenerate : {"raise", "truncate"}
        What to do when the features span fewer than ``pca_dim`` dimensions: raise a
        :class:`ClusteringError`, or keep only the non-degenerate components
        (``effective_dim`` tells how many). Training uses ``truncate``, because a network
        whose units die mid-run would otherwise stop at an arbitrary cycle.
    device : torch.device or str, optional
        Where the float64 moments are summed: a GPU computes the outer products there (at
        4,096 dims and 1.28M rows, 43 TFLOP a cycle that one CPU thread takes minutes for);
        None or the CPU: numpy.

    Notes
    -----
    The components are the eigenvectors of the covariance (``numpy.linalg.eigh`` in float64, or
    ``torch.linalg.eigh`` on ``device`` when it is a GPU);
    their variances on the fitted data are its eigenvalues, which both whiten and detect a
    degenerate PCA before anything divides by zero.
    """

    pca_dim: int | None
    eigen_power: float = -0.5
    l2: bool = True
    on_degenerate: str = "raise"
    device: torch.device | str | None = None
    effective_dim: int | None = field(default=None, init=False, compare=False)
    _mean: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    _matrix: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)  # d × kept, scaled
    _d_in: int | None = field(default=None, init=False, repr=False, compare=False)
    _moments: _Moments | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has been called."""
        return self._d_in is not None

    def fit(self, x: np.ndarray, *, sharded: bool = False) -> Preprocessor:
        """Fit the PCA (and whitening scales) on ``x``.

        Parameters
        ----------
        x : np.ndarray
            Features, shape (N, d): with ``sharded``, this process's rows only.
        sharded : bool
            All-reduce the moments over the processes of the distributed run.

        Returns
        -------
        Preprocessor
            ``self``.

        Raises
        ------
        ClusteringError
            On NaN/inf features, ``pca_dim > min(N, d)``, or a degenerate whitened PCA (the
            features span fewer than ``pca_dim`` dimensions, so whitening would divide by ~0;
            with ``on_degenerate="truncate"`` only when they span none).
        """
        self._moments = None
        self.partial_fit(x, allow_empty=sharded)
        return self.finalize(sharded=sharded)

    def partial_fit(self, x: np.ndarray, *, allow_empty: bool = False) -> Preprocessor:
        """Add the rows ``x`` to the moments; :meth:`finalize` fits the PCA from all rows added."""
        x = as_features(x, allow_empty=allow_empty)
        if self._moments is None:
            self._moments = _Moments(x.shape[1], self.device)
        elif x.shape[1] != self._moments.d:
            raise ValueError(f"features have {x.shape[1]} dims but earlier chunks had {self._moments.d}")
        self._moments.add(x)
        return self

    def finalize(self, *, sharded: bool = False) -> Preprocessor:
        """Fit the PCA from the rows given to :meth:`partial_fit` (of every rank when ``sharded``)."""
        if self._moments is None:
            raise ValueError("Preprocessor.finalize was called before partial_fit")
        moments, self._moments = self._moments.flushed(), None
        d = moments.d
        self._mean, self._matrix, self._d_in = None, None, None
        if self.on_degenerate not in ("raise", "truncate"):
            raise ValueError(f"on_degenerate must be 'raise' or 'truncate', not {self.on_degenerate!r}")
        if self.pca_dim is None:
            self._d_in = d
            self.effective_dim = d
            return self
        pca_dim = check_int(self.pca_dim, "pca_dim", 1)
        n = int(round(float(_sum(np.array([float(moments.n)]), sharded)[0])))
        if pca_dim > min(n, d):
            raise ClusteringError(
                f"pca_dim={pca_dim} is larger than min(number of samples={n}, "
                f"feature dim={d}) = {min(n, d)}: lower pca_dim to at most {min(n, d)} "
                "or use more data"
            )
        mean = _sum(moments.total, sharded) / n
        cov = _sum(moments.outer, sharded) / n - np.outer(mean, mean)
        eig, vec = _eigh((cov + cov.T) / 2, self.device, top=pca_dim)  # ascending
        eig, vec = eig[::-1][:pca_dim], vec[:, ::-1][:, :pca_dim]
        keep = eig > _DEGENERATE_REL_VAR * max(float(eig[0]), 0.0) if eig[0] > 0 else np.zeros(pca_dim, bool)
        rank = int(keep.sum())
        if rank < pca_dim and (self.on_degenerate == "raise" or rank == 0) and self.eigen_power < 0:
            raise ClusteringError(
                f"PCA is degenerate: the {n} features span only {rank} dimensions "
                f"but pca_dim={pca_dim}, so whitening would divide by ~0: lower "
                f"pca_dim to at most {max(rank, 1)}, or check the network has not "
                "collapsed (constant features)"
            )
        if rank < pca_dim and self.eigen_power < 0:
            eig, vec = eig[keep], vec[:, keep]
        scale = eig ** self.eigen_power if self.eigen_power != 0 else np.ones_like(eig)
        self._mean = mean
        self._matrix = vec * scale[None, :]
        self._d_in = d
        self.effective_dim = int(self._matrix.shape[1])
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Apply the fitted PCA/whitening, then L2-normalise rows.

        Each row is transformed on its own (float64, then float32): the result of a row does
        not depend on which other rows are transformed with it, or on which process does it.

        Parameters
        ----------
        x : np.ndarray
            Features, shape (M, d) with the same d as at fit time.

        Returns
        -------
        np.ndarray
            float32, C-contiguous, shape (M, effective_dim): ``pca_dim`` (fewer when truncated),
            or d without PCA.
        """
        if not self.is_fitted:
            raise ValueError(
                "Preprocessor.transform was called before fit: call fit(x) or fit_transform(x)"
            )
        x = as_features(x, allow_empty=True)
        if x.shape[1] != self._d_in:
            raise ValueError(
                f"features have {x.shape[1]} dims but the Preprocessor was fitted on "
                f"{self._d_in}: fit it again on features from the same network"
            )
        if self._matrix is None:
            out = x
        else:
            out = np.empty((len(x), self._matrix.shape[1]), dtype=np.float32)
            # Cache-sized blocks through reused float64 buffers (8,192-row blocks and fresh
            # temporaries took 1.1-1.3x the time, 60,000 x 84 -> 64). The same operations as on the whole rows, so the
            # same bits: the exact cast and subtraction, the product, np.linalg.norm's sum of
            # squares.
            rows = max(1, min(_TRANSFORM_ROWS, len(x)))
            centred = np.empty((rows, x.shape[1]), dtype=np.float64)
            reduced = np.empty((rows, self._matrix.shape[1]), dtype=np.float64)
            squares = np.empty_like(reduced)
            for start in range(0, len(x), rows):
                m = min(rows, len(x) - start)
                block = reduced[:m]
                np.subtract(x[start : start + m], self._mean, out=centred[:m])
                np.matmul(centred[:m], self._matrix, out=block)
                if self.l2:
                    np.multiply(block, block, out=squares[:m])
                    norms = np.sqrt(np.add.reduce(squares[:m], axis=1, keepdims=True))
                    block /= np.where(norms > 1e-12, norms, 1.0)
                out[start : start + m] = block
            if not np.isfinite(out).all():
                raise ClusteringError(
                    "PCA-whitening produced NaN/inf (a component has ~0 variance): "
                    f"lower pca_dim (now {self.pca_dim})"
                )
            return out
        if self.l2:
            return l2_normalize_rows(out)
        return np.ascontiguousarray(out, dtype=np.float32)

    def fit_transform(self, x: np.ndarray, *, sharded: bool = False) -> np.ndarray:
        """Fit on ``x`` and return ``transform(x)``."""
        return self.fit(x, sharded=sharded).transform(x)

    def state_dict(self) -> dict:
        """The fitted transform as tensors and numbers (``torch.load(weights_only=True)``-safe):
        ``d_in``, ``l2``, ``pca_dim``, and ``mean`` (float64, d_in) and ``matrix`` (float64,
        d_in × effective_dim: the components with the whitening scales folded in), both ``None``
        without PCA. :meth:`from_state` rebuilds a Preprocessor that transforms bit for bit alike."""
        if not self.is_fitted:
            raise ValueError("Preprocessor.state_dict was called before fit")
        pca = self._matrix is not None
        return {"d_in": int(self._d_in), "l2": bool(self.l2), "pca_dim": self.pca_dim,
                "eigen_power": float(self.eigen_power),
                "mean": torch.from_numpy(np.ascontiguousarray(self._mean, dtype=np.float64)).clone() if pca else None,
                "matrix": torch.from_numpy(np.ascontiguousarray(self._matrix, dtype=np.float64)).clone() if pca else None}

    @classmethod
    def from_state(cls, state: dict) -> Preprocessor:
        """A fitted Preprocessor from :meth:`state_dict`; ValueError when ``state`` is not one."""
        try:
            d_in, l2 = int(state["d_in"]), bool(state["l2"])
            mean, matrix = state["mean"], state["matrix"]
            pre = cls(pca_dim=state["pca_dim"], eigen_power=float(state["eigen_power"]), l2=l2)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a Preprocessor state ({e.__class__.__name__}: {e})") from None
        if (mean is None) != (matrix is None):
            raise ValueError("not a Preprocessor state: a PCA needs both its mean and its matrix")
        if matrix is not None:
            mean = np.ascontiguousarray(torch.as_tensor(mean).numpy(), dtype=np.float64)
            matrix = np.ascontiguousarray(torch.as_tensor(matrix).numpy(), dtype=np.float64)
            if mean.shape != (d_in,) or matrix.ndim != 2 or matrix.shape[0] != d_in:
                raise ValueError(f"not a Preprocessor state: mean {mean.shape} and matrix {matrix.shape} "
                                 f"for {d_in} input dimensions")
            pre._mean, pre._matrix = mean, matrix
        pre._d_in = d_in
        pre.effective_dim = d_in if matrix is None else int(matrix.shape[1])
        return pre


#: From this dimension on, a CPU computes only the ``top`` eigenpairs the PCA keeps: by Lanczos
#: (ARPACK) for at most 1/16 of the dimensions (4,096-d features of 300 images to 32 dims: 1 s
#: instead of 8.5 s), else LAPACK's ``syevr`` (4,096 to 256 dims: 3.9 s instead of 8.6 s on two
#: cores). Below it the full decomposition is as fast, and fp32 runs of small networks keep their
#: numbers.
_SUBSET_EIGH_DIM = 512


def _eigh(sym: np.ndarray, device: torch.device | str | None, top: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric float64 matrix -- with ``top``, at
    least the ``top`` largest: LAPACK on the CPU, cuSOLVER on a GPU (a full 4,096² decomposition
    takes about 9 s on two CPU cores, well under a second on a GPU)."""
    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type == "cpu":
        d = sym.shape[0]
        if top is not None and d >= _SUBSET_EIGH_DIM and 16 * top <= d:
            # a few dims out of thousands: Lanczos (ARPACK) to machine precision, from a fixed start
            import scipy.sparse.linalg

            eig, vec = scipy.sparse.linalg.eigsh(sym, k=top, which="LA", v0=np.ones(d), tol=0)
            order = np.argsort(eig)
            return eig[order], vec[:, order]
        if top is not None and d >= _SUBSET_EIGH_DIM and top < d // 2:
            import scipy.linalg

            return scipy.linalg.eigh(sym, subset_by_index=[d - top, d - 1], driver="evr")
        return np.linalg.eigh(sym)
    eig, vec = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(sym)).to(dev))
    return eig.cpu().numpy(), vec.cpu().numpy()


def _sum(values: np.ndarray, sharded: bool) -> np.ndarray:
    return distributed.all_reduce_sum(np.asarray(values, dtype=np.float64)) if sharded else np.asarray(values)


class _Moments:
    """Float64 row count, sum and sum of outer products, added a block of :data:`_BLOCK` rows at a
    time whatever the chunks they arrive in (so the sums do not depend on the chunking)."""

    def __init__(self, d: int, device: torch.device | str | None = None) -> None:
        self.d, self.n = d, 0
        dev = torch.device(device) if device is not None else None
        self.device = dev if dev is not None and dev.type != "cpu" else None
        if self.device is None:
            self.total, self.outer = np.zeros(d, dtype=np.float64), np.zeros((d, d), dtype=np.float64)
        else:  # summed on the device, in float64 too; brought back once, by flushed()
            self.total = torch.zeros(d, dtype=torch.float64, device=self.device)
            self.outer = torch.zeros((d, d), dtype=torch.float64, device=self.device)
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0

    def add(self, x: np.ndarray) -> None:
        while len(x):
            take = min(len(x), _BLOCK - self._pending_rows)
            self._pending.append(x[:take])
            self._pending_rows += take
            x = x[take:]
            if self._pending_rows == _BLOCK:
                self._block()

    def _block(self) -> None:
        if self.device is not None:
            return self._device_block()
        block = np.concatenate(self._pending).astype(np.float64) if self._pending else np.zeros((0, self.d))
        self._pending, self._pending_rows = [], 0
        self.n += len(block)
        self.total += block.sum(axis=0)
        self.outer += block.T @ block

    def _device_block(self) -> None:
        rows = np.concatenate(self._pending) if self._pending else np.zeros((0, self.d), np.float32)
        self._pending, self._pending_rows = [], 0
        self.n += len(rows)
        block = torch.from_numpy(np.ascontiguousarray(rows)).to(self.device).double()
        self.total += block.sum(0)
        self.outer += block.T @ block

    def flushed(self) -> _Moments:
        if self._pending_rows:
            self._block()
        if self.device is not None:
            self.total, self.outer = self.total.cpu().numpy(), self.outer.cpu().numpy()
            self.device = None
        return self


def preprocess_features(
    x: np.ndarray, pca_dim: int | None, *, whiten: bool = True, l2: bool = True
) -> np.ndarray:
    """One-shot PCA(-whitening) and L2 normalisation, as in the official DeepCluster.

    Parameters
    ----------
    x : np.ndarray
        Features, shape (N, d).
    pca_dim : int or None
        PCA output dimension; ``None`` skips PCA.
    whiten : bool
        Whiten the PCA components (``eigen_power=-0.5``); otherwise plain PCA.
    l2 : bool
        L2-normalise the output rows.

    Returns
    -------
    np.ndarray
        float32, C-contiguous, shape (N, pca_dim or d).
    """
    return Preprocessor(pca_dim, eigen_power=-0.5 if whiten else 0.0, l2=l2).fit_transform(x)

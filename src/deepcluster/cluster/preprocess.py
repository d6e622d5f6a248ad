"""Feature preprocessing before clustering: PCA-whitening then L2 normalisation.

Follows ``preprocess_features`` of the official DeepCluster code: PCA to ``pca_dim`` dims
with whitening (``eigen_power=-0.5``), then each row scaled to unit L2 norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np

from deepcluster.cluster._checks import as_features, check_int, l2_normalize_rows
from deepcluster.errors import ClusteringError

# A component is treated as numerically zero (whitening would blow rounding noise up to unit
# variance) if its variance, measured in float64 on the projected data, is below
# _DEGENERATE_REL_VAR of the largest one, or if faiss's float32 eigenvalue is below
# _DEGENERATE_REL_EIG of the largest one. Exactly rank-deficient features give ~1e-13 on the
# first test and ~1e-7 on the second; both are needed because when N < d faiss derives the
# extra components from the Gram matrix and they come out as unit-norm noise directions
# inside the data span, whose projected variance is not small.
_DEGENERATE_REL_VAR = 1e-8
_DEGENERATE_REL_EIG = 1e-6


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

    Notes
    -----
    The rotation comes from ``faiss.PCAMatrix(d, pca_dim)``; the scaling is applied here from
    the component variances measured on the fitted data, rather than via faiss's own
    ``eigen_power``, because faiss's eigenvalues are not divided by N (its whitened output
    has variance 1/N, not 1) and because measuring the variances lets us detect a degenerate
    PCA before it divides by zero.
    """

    pca_dim: int | None
    eigen_power: float = -0.5
    l2: bool = True
    on_degenerate: str = "raise"
    effective_dim: int | None = field(default=None, init=False, compare=False)
    _keep: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    _pca: faiss.PCAMatrix | None = field(default=None, init=False, repr=False, compare=False)
    _scale: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    _d_in: int | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has been called."""
        return self._d_in is not None

    def fit(self, x: np.ndarray) -> Preprocessor:
        """Fit the PCA (and whitening scales) on ``x``.

        Parameters
        ----------
        x : np.ndarray
            Features, shape (N, d).

        Returns
        -------
        Preprocessor
            ``self``.

        Raises
        ------
        ClusteringError
            On NaN/inf features, ``pca_dim > min(N, d)``, or a degenerate PCA (the features
            span fewer than ``pca_dim`` dimensions, so whitening would divide by ~0).
        """
        self._fit(as_features(x))
        return self

    def _fit(self, x: np.ndarray) -> np.ndarray | None:
        """Fit on validated features; returns their PCA projection when it was computed on the way."""
        projected = None
        n, d = x.shape
        self._pca, self._scale, self._d_in, self._keep = None, None, None, None
        if self.on_degenerate not in ("raise", "truncate"):
            raise ValueError(f"on_degenerate must be 'raise' or 'truncate', not {self.on_degenerate!r}")
        if self.pca_dim is None:
            self._d_in = d
            self.effective_dim = d
            return None
        pca_dim = check_int(self.pca_dim, "pca_dim", 1)
        if pca_dim > min(n, d):
            raise ClusteringError(
                f"pca_dim={pca_dim} is larger than min(number of samples={n}, "
                f"feature dim={d}) = {min(n, d)}: lower pca_dim to at most {min(n, d)} "
                "or use more data"
            )
        # eigen_power=0: faiss only centres and rotates; the scaling is ours (see Notes).
        pca = faiss.PCAMatrix(d, pca_dim, 0.0)
        pca.train(x)
        if self.eigen_power != 0:
            projected = pca.apply_py(x)
            y = projected.astype(np.float64)
            var = y.var(axis=0)
            top = float(var.max())
            if self.eigen_power < 0:
                eig = faiss.vector_to_array(pca.eigenvalues)[:pca_dim].astype(np.float64)
                keep = np.zeros(pca_dim, dtype=bool)
                if top > 0 and eig.max() > 0:
                    keep = (var > _DEGENERATE_REL_VAR * top) & (eig > _DEGENERATE_REL_EIG * eig.max())
                rank = int(keep.sum())
                if rank < pca_dim and self.on_degenerate == "truncate" and rank >= 1:
                    self._keep = np.flatnonzero(keep)
                    var = var[self._keep]
                elif rank < pca_dim:
                    raise ClusteringError(
                        f"PCA is degenerate: the {n} features span only {rank} dimensions "
                        f"but pca_dim={pca_dim}, so whitening would divide by ~0: lower "
                        f"pca_dim to at most {max(rank, 1)}, or check the network has not "
                        "collapsed (constant features)"
                    )
            self._scale = (var**self.eigen_power).astype(np.float32)
        self._pca = pca
        self._d_in = d
        self.effective_dim = pca_dim if self._keep is None else len(self._keep)
        return projected

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Apply the fitted PCA/whitening, then L2-normalise rows.

        Parameters
        ----------
        x : np.ndarray
            Features, shape (M, d) with the same d as at fit time.

        Returns
        -------
        np.ndarray
            float32, C-contiguous, shape (M, pca_dim or d).
        """
        if not self.is_fitted:
            raise ValueError(
                "Preprocessor.transform was called before fit: call fit(x) or fit_transform(x)"
            )
        x = as_features(x)
        if x.shape[1] != self._d_in:
            raise ValueError(
                f"features have {x.shape[1]} dims but the Preprocessor was fitted on "
                f"{self._d_in}: fit it again on features from the same network"
            )
        return self._finish(self._pca.apply_py(x) if self._pca is not None else x)

    def _finish(self, x: np.ndarray) -> np.ndarray:
        """Whitening and L2 of features already projected by the PCA (or of the raw ones without PCA)."""
        if self._pca is not None:
            if self._keep is not None:
                x = x[:, self._keep]
            if self._scale is not None:
                x = x * self._scale
            if not np.isfinite(x).all():
                raise ClusteringError(
                    "PCA-whitening produced NaN/inf (a component has ~0 variance): "
                    f"lower pca_dim (now {self.pca_dim})"
                )
        if self.l2:
            return l2_normalize_rows(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        """Fit on ``x`` and return ``transform(x)`` (the same numbers, the projection computed once)."""
        x = as_features(x)
        projected = self._fit(x)
        if self._pca is not None and projected is None:
            projected = self._pca.apply_py(x)
        return self._finish(x if self._pca is None else projected)


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

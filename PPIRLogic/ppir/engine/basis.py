"""Public bases: the linear maps from per-sample products to the registration's joint term.

The joint term is R = sum_x Phi(x)^T (g(x) * J(x)). Phi depends only on the sample positions on the
fixed grid and on the transform model's structure, so both parties can build it; each applies
``transpose_apply`` to what it holds (in the clear, or to its share of the products).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
import scipy.sparse as sp

from ppir.engine.image import Grid

CHUNK = 1 << 18


class AffineBasis:
    """B(x) = [x - c, 1]: the structure of rigid and affine Jacobians."""

    def __init__(self, points: np.ndarray, center: np.ndarray):
        n, d = points.shape
        self.center = np.asarray(center, dtype=np.float64)
        self.matrix = np.empty((n, d + 1))
        self.matrix[:, :d] = points - center
        self.matrix[:, d] = 1.0
        lo, hi = points.min(axis=0), points.max(axis=0)
        bits = np.array(np.meshgrid(*[[0.0, 1.0]] * d, indexing="ij")).reshape(d, -1).T
        self.box_corners = lo + bits * (hi - lo)
        self._moments: np.ndarray | None = None

    def with_matrix(self, matrix: np.ndarray) -> "AffineBasis":
        """The same samples with other basis values (e.g. as a backend encodes them)."""
        other = object.__new__(AffineBasis)
        other.matrix, other.center, other.box_corners, other._moments = matrix, self.center, self.box_corners, None
        return other

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Column pairs (a <= b) of the basis, in the order of ``second_moments`` columns."""
        q = self.matrix.shape[1]
        return [(a, b) for a in range(q) for b in range(a, q)]

    def second_moments(self) -> np.ndarray:
        """B_a(x) B_b(x) for every sample and pair (a, b), float32 (N, q(q+1)/2); cached."""
        if self._moments is None:
            columns = [np.ascontiguousarray(self.matrix[:, a], dtype=np.float32)
                       for a in range(self.matrix.shape[1])]
            self._moments = np.empty((len(self.matrix), len(self.pairs)), dtype=np.float32)
            for n, (a, b) in enumerate(self.pairs):
                np.multiply(columns[a], columns[b], out=self._moments[:, n])
        return self._moments

    @property
    def n_samples(self) -> int:
        return len(self.matrix)

    def transpose_apply(self, h: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """B^T (h * weights) for h of shape (N, C) and per-sample weights (N,): shape (d+1, C).

        In float64, chunk by chunk, so that no N x C temporary is made.
        """
        out = np.zeros((self.matrix.shape[1], h.shape[1]))
        for lo in range(0, len(h), CHUNK):
            part = h[lo:lo + CHUNK].astype(np.float64)     # a copy: h is the caller's
            if weights is not None:
                part *= weights[lo:lo + CHUNK, None]
            out += self.matrix[lo:lo + CHUNK].T @ part
        return out


def cubic_weights(frac: np.ndarray) -> np.ndarray:
    """Cubic B-spline weights (..., 4) of the four control points around fractional offsets ``frac``."""
    t = frac[..., None]
    t2, t3 = t * t, t * t * t
    return np.concatenate([(1 - t) ** 3, 3 * t3 - 6 * t2 + 4, -3 * t3 + 3 * t2 + 3 * t + 1, t3], axis=-1) / 6.0


@dataclass(frozen=True)
class ControlGrid:
    """An ITK ``BSplineTransform`` control-point grid (its fixed parameters)."""

    grid: Grid

    @property
    def n_points(self) -> int:
        return self.grid.n_voxels

    @property
    def support(self) -> np.ndarray:
        """The 4**d integer offsets (x fastest) of the control points around a sample, (4**d, d)."""
        d = self.grid.dim
        return np.array([o[::-1] for o in product(range(4), repeat=d)])

    def linear(self, index: np.ndarray) -> np.ndarray:
        """Control-point numbers (ITK parameter order: x fastest) of integer indices (..., d)."""
        size = self.grid.size
        stride = np.cumprod((1,) + tuple(size[:-1]))
        return index @ stride

    def locate(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First supporting control point (N, d) and per-axis cubic weights (N, d, 4) of physical points."""
        u = self.grid.point_to_index(points)
        base = np.floor(u)
        start = base.astype(np.int64) - 1
        if np.any(start < 0) or np.any(start + 3 >= np.asarray(self.grid.size)):
            raise ValueError("a sample lies outside the B-spline control grid's valid region")
        return start, cubic_weights(u - base)


class BSplineBasis:
    """Phi(x) = cubic B-spline weights of the control points supporting each sample.

    Phi is held as a sparse matrix (samples x control points, 4**d entries a row).
    """

    def __init__(self, points: np.ndarray, control: ControlGrid):
        self.control = control
        self.start, axis_weights = control.locate(points)
        support = control.support
        n, m = len(points), len(support)
        w = np.ones((n, m))
        for axis in range(control.grid.dim):
            w *= axis_weights[:, axis, support[:, axis]]
        index = control.linear(self.start[:, None, :] + support[None])
        self.phi = sp.csr_matrix((w.ravel(), index.ravel(), np.arange(0, n * m + 1, m)),
                                 shape=(n, control.n_points))

    @property
    def n_samples(self) -> int:
        return self.phi.shape[0]

    def with_weights(self, weights: np.ndarray) -> "BSplineBasis":
        """The same samples and control points with other weights (e.g. as a backend encodes them)."""
        other = object.__new__(BSplineBasis)
        other.control, other.start = self.control, self.start
        other.phi = sp.csr_matrix((weights.ravel(), self.phi.indices, self.phi.indptr), shape=self.phi.shape)
        return other

    @property
    def support_weights(self) -> np.ndarray:
        """Every sample's weights (N, 4**d), in the order of ``ControlGrid.support`` (a view)."""
        return self.phi.data.reshape(self.n_samples, -1)

    def weights(self, rows: np.ndarray) -> np.ndarray:
        """Weights (n, 4**d) of the samples ``rows``, in the order of ``ControlGrid.support``."""
        return self.support_weights[rows]

    def transpose_apply(self, h: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Phi^T (h * weights) for h of shape (N, C) and per-sample weights (N,): shape (n_control_points, C)."""
        h = h.astype(np.float64)
        if weights is not None:
            h *= weights[:, None]
        return np.asarray(self.phi.T @ h)

    def apply(self, coef: np.ndarray) -> np.ndarray:
        """Phi coef for control-point values coef (n_control_points, C): shape (N, C)."""
        return np.asarray(self.phi @ coef)

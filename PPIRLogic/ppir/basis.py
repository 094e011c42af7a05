"""Public bases: the linear maps from per-sample products to the registration's joint term.

The joint term is R = sum_x Phi(x)^T (g(x) * J(x)). Phi depends only on the sample positions on the
fixed grid and on the transform model's structure, so both parties can build it; each applies
``transpose_apply`` to what it holds (in the clear, or to its share of the products).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

from .image import Grid

CHUNK = 1 << 18
CACHE_ENTRIES = 1 << 26


class AffineBasis:
    """B(x) = [x - c, 1]: the structure of rigid and affine Jacobians."""

    def __init__(self, points: np.ndarray, center: np.ndarray):
        n, d = points.shape
        self.matrix = np.empty((n, d + 1))
        self.matrix[:, :d] = points - center
        self.matrix[:, d] = 1.0
        lo, hi = points.min(axis=0), points.max(axis=0)
        bits = np.array(np.meshgrid(*[[0.0, 1.0]] * d, indexing="ij")).reshape(d, -1).T
        self.box_corners = lo + bits * (hi - lo)

    @property
    def n_samples(self) -> int:
        return len(self.matrix)

    def transpose_apply(self, h: np.ndarray) -> np.ndarray:
        """B^T h for h of shape (N, C): shape (d+1, C)."""
        out = np.zeros((self.matrix.shape[1], h.shape[1]))
        for lo in range(0, len(h), CHUNK):
            out += self.matrix[lo:lo + CHUNK].T @ h[lo:lo + CHUNK].astype(np.float64)
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
    """Phi(x) = cubic B-spline weights of the control points supporting each sample."""

    def __init__(self, points: np.ndarray, control: ControlGrid):
        self.control = control
        self.start, self.axis_weights = control.locate(points)
        self._support = control.support
        self._cache = None
        if len(points) * len(self._support) <= CACHE_ENTRIES:
            self._cache = self._compute(slice(None))

    @property
    def n_samples(self) -> int:
        return len(self.start)

    def weights(self, rows: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Full weights (n, 4**d) and control-point numbers (n, 4**d) of the samples ``rows``."""
        if self._cache is not None:
            return self._cache[0][rows], self._cache[1][rows]
        return self._compute(rows)

    def _compute(self, rows: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        aw = self.axis_weights[rows]
        w = np.ones((len(aw), len(self._support)))
        for axis in range(aw.shape[1]):
            w *= aw[:, axis, self._support[:, axis]]
        index = self.control.linear(self.start[rows][:, None, :] + self._support[None])
        return w, index

    def transpose_apply(self, h: np.ndarray) -> np.ndarray:
        """Phi^T h for h of shape (N, C): shape (n_control_points, C)."""
        k = self.control.n_points
        out = np.zeros((k, h.shape[1]))
        for lo in range(0, self.n_samples, CHUNK // 16):
            hi = min(lo + CHUNK // 16, self.n_samples)
            w, index = self.weights(slice(lo, hi))
            flat = index.ravel()
            for c in range(h.shape[1]):
                out[:, c] += np.bincount(flat, weights=(w * h[lo:hi, c, None]).ravel(), minlength=k)
        return out

    def apply(self, coef: np.ndarray) -> np.ndarray:
        """Phi coef for control-point values coef (n_control_points, C): shape (N, C)."""
        out = np.empty((self.n_samples, coef.shape[1]))
        for lo in range(0, self.n_samples, CHUNK // 16):
            hi = min(lo + CHUNK // 16, self.n_samples)
            w, index = self.weights(slice(lo, hi))
            out[lo:hi] = np.einsum("nm,nmc->nc", w, coef[index])
        return out

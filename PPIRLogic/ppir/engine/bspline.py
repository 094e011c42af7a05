"""Cubic B-spline free-form deformation on top of a fixed affine: T(x) = A (x + D(x) - c) + c + t.

D(x) = sum_k w_k(x) c_k is ITK's ``BSplineTransform`` (coefficients in physical mm, parameter order
all x-coefficients, then y, then z; control points x fastest). The exported transform is the
SimpleITK composite [affine, B-spline], which applies the B-spline first.

The Gauss-Newton matrix has d * (number of control points) rows, but each control point meets only
the 7**d neighbours whose supports overlap its own: it is accumulated as a band and solved sparsely.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import SimpleITK as sitk

from ppir.engine.basis import BSplineBasis, ControlGrid
from ppir.engine.image import Grid

FOLD_LATTICE = 4        # points per control-point spacing at which ``jacobian_determinants`` looks for folds


def control_grid_for(fixed: Grid, spacing_mm: float) -> ControlGrid:
    """A control grid covering the fixed image with about ``spacing_mm`` between control points."""
    extent = (np.asarray(fixed.size, float) - 1.0) * fixed.spacing
    mesh = [max(1, int(np.ceil(e / spacing_mm))) for e in extent]
    tfm = sitk.BSplineTransformInitializer(fixed.reference_image(), mesh, 3)
    fp = np.array(tfm.GetFixedParameters())
    d = fixed.dim
    size = tuple(int(round(v)) for v in fp[:d])
    return ControlGrid(Grid(shape=size[::-1], spacing=fp[2 * d:3 * d], origin=fp[d:2 * d],
                            direction=fp[3 * d:].reshape(d, d)))


class BSplineModel:
    """B-spline coefficients as parameters, with the affine part (A, t, c) held fixed."""

    kind = "bspline"

    def __init__(self, control: ControlGrid, affine: np.ndarray, translation: np.ndarray, center: np.ndarray):
        self.control = control
        self.affine = np.asarray(affine, float)
        self.translation = np.asarray(translation, float)
        self.center = np.asarray(center, float)
        self.dim = control.grid.dim
        self.n_params = self.dim * control.n_points
        self.mu = 0.0

    def set_regularization(self, hessian: sp.csr_matrix, weight: float) -> None:
        """Penalty mu |c|^2 with mu = weight * mean diag H (fixed for the level, so the objective is too).

        It pins control points that no sample informs to zero displacement and makes the damped
        system well conditioned; without it those coefficients drift with any perturbation.
        """
        self.mu = weight * float(hessian.diagonal().mean())

    def penalty(self, p: np.ndarray) -> float:
        return self.mu * float(p @ p)

    def penalty_gradient(self, p: np.ndarray) -> np.ndarray:
        return self.mu * p

    def identity(self) -> np.ndarray:
        return np.zeros(self.n_params)

    def basis(self, points: np.ndarray) -> BSplineBasis:
        return BSplineBasis(points, self.control)

    def displacement(self, basis: BSplineBasis, p: np.ndarray) -> np.ndarray:
        """D(x) at the basis' samples, (N, d)."""
        coef = p.reshape(self.dim, -1).T
        return basis.apply(coef)

    def warp(self, points: np.ndarray, p: np.ndarray, basis: BSplineBasis) -> np.ndarray:
        y = points + self.displacement(basis, p)
        return (y - self.center) @ self.affine.T + self.center + self.translation

    def max_change(self, basis: BSplineBasis, p: np.ndarray, q: np.ndarray) -> float:
        """Largest |T_q(x) - T_p(x)| over the samples."""
        change = self.displacement(basis, q - p) @ self.affine.T
        return float(np.linalg.norm(change, axis=1).max())

    def channels(self, moving_gradient: np.ndarray, p: np.ndarray) -> np.ndarray:
        return moving_gradient @ self.affine

    def gradient_vector(self, r: np.ndarray, p: np.ndarray) -> np.ndarray:
        return r.T.ravel()

    def hessian(self, basis: BSplineBasis, g: np.ndarray, p: np.ndarray) -> sp.csr_matrix:
        """Gauss-Newton matrix sum S S^T as a sparse matrix, accumulated cell by cell.

        For the samples of one cell (same supporting control points) the block is
        sum_x w_a w_b g_i g_j: one matrix product W^T [W * (g_i g_j)] over the d(d+1)/2 products.
        """
        d, k = self.dim, self.control.n_points
        support = self.control.support
        m = len(support)
        pairs = [(i, j) for i in range(d) for j in range(i, d)]
        products = np.stack([g[:, i].astype(np.float64) * g[:, j] for i, j in pairs], axis=1)
        delta = support[None, :, :] - support[:, None, :]
        offset = ((delta + 3) * (7 ** np.arange(d))).sum(axis=2).ravel()
        row_of_pair = np.repeat(self.control.linear(support), m)
        band = np.zeros((k * 7 ** d, len(pairs)))
        cells = self.control.linear(basis.start)
        order = np.argsort(cells, kind="stable")
        bounds = np.flatnonzero(np.diff(cells[order])) + 1
        for rows in np.split(order, bounds):
            w = basis.weights(rows)
            weighted = (w[:, :, None] * products[rows][:, None, :]).reshape(len(rows), -1)
            block = (w.T @ weighted).reshape(m * m, len(pairs))
            band[(cells[rows[0]] + row_of_pair) * 7 ** d + offset] += block
        full = np.empty((k * 7 ** d, d, d))
        for n, (i, j) in enumerate(pairs):
            full[:, i, j] = full[:, j, i] = band[:, n]
        return self._band_to_csr(full.reshape(k, 7 ** d, d, d))

    @cached_property
    def _band_layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row, column and band position of every entry the band can fill, in CSR order (per grid, once)."""
        d, k = self.dim, self.control.n_points
        size = np.asarray(self.control.grid.size)
        index = self.control.grid.flat_to_index(np.arange(k))
        deltas = np.array(np.meshgrid(*[np.arange(-3, 4)] * d, indexing="ij")).reshape(d, -1).T[:, ::-1]
        neighbour = index[:, None, :] + deltas[None]
        valid = np.all((neighbour >= 0) & (neighbour < size), axis=2)
        kk, oo = np.nonzero(valid)
        cols_k = self.control.linear(neighbour[kk, oo])
        ii, jj = np.meshgrid(np.arange(d), np.arange(d), indexing="ij")
        rows = (ii.ravel()[None] * k + kk[:, None]).ravel()
        cols = (jj.ravel()[None] * k + cols_k[:, None]).ravel()
        where = ((kk * 7 ** d + oo)[:, None] * d * d + (ii * d + jj).ravel()[None]).ravel()
        order = np.lexsort((cols, rows))
        return rows[order], cols[order], where[order]

    def _band_to_csr(self, band: np.ndarray) -> sp.csr_matrix:
        d, k = self.dim, self.control.n_points
        rows, cols, where = self._band_layout
        data = band.reshape(-1)[where]
        keep = data != 0
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=d * k))])
        return sp.csr_matrix((data[keep], cols[keep], indptr), shape=(d * k, d * k))

    def solve(self, h: sp.csr_matrix, b: np.ndarray, damping: float) -> np.ndarray:
        """Levenberg-Marquardt step (H + damping diag H + mu I)^-1 b by Jacobi-preconditioned CG."""
        diag = h.diagonal()
        floor = self.mu if self.mu > 0 else 1e-9 * max(float(diag.max()), 1e-30)
        system = h + sp.diags(damping * diag + floor)
        step, info = spla.cg(system, b, rtol=1e-5, maxiter=500, M=sp.diags(1.0 / system.diagonal()))
        if info < 0:
            raise RuntimeError("conjugate gradients failed on the B-spline system")
        return step

    def jacobian_determinants(self, box: Grid, p: np.ndarray) -> np.ndarray:
        """det(I + dD/dx) on a lattice over ``box``'s extent, FOLD_LATTICE points per control-point spacing
        (D is one cubic per control cell, so a finer lattice shows nothing new): <= 0 where D folds.

        Central differences of D at a step of 10^-3 control spacings (exact up to rounding for a cubic);
        the lattice is inset by that step, so that every difference stays inside the grid's valid region.
        The affine part is left out: it does not fold (and any mirroring is its own, not D's).
        """
        d = self.dim
        h = 1e-3 * float(self.control.grid.spacing.min())
        extent = (np.asarray(box.size, float) - 1.0) * box.spacing - 2.0 * h
        size = np.array([int(np.ceil(FOLD_LATTICE * e / s)) + 1 if e > 0 else 1
                         for e, s in zip(extent, self.control.grid.spacing)])
        spacing = np.where(size > 1, extent / np.maximum(size - 1, 1), 1.0)
        start = box.origin + box.direction @ np.full(d, h)
        bspline = self._bspline(p)

        def field(offset: np.ndarray) -> np.ndarray:
            image = sitk.TransformToDisplacementField(
                bspline, sitk.sitkVectorFloat64, [int(n) for n in size], tuple(float(v) for v in start + offset),
                tuple(float(v) for v in spacing), tuple(float(v) for v in box.direction.ravel()))
            return sitk.GetArrayFromImage(image).reshape(-1, d)

        jacobian = np.stack([(field(h * e) - field(-h * e)) / (2.0 * h) for e in np.eye(d)], axis=-1)
        return np.linalg.det(np.eye(d) + jacobian)

    def _bspline(self, p: np.ndarray) -> sitk.BSplineTransform:
        bspline = sitk.BSplineTransform(self.dim, 3)
        g = self.control.grid
        bspline.SetFixedParameters(tuple(float(v) for v in np.concatenate(
            [np.asarray(g.size, float), g.origin, g.spacing, g.direction.ravel()])))
        bspline.SetParameters(tuple(float(v) for v in p))
        return bspline

    def to_sitk(self, p: np.ndarray) -> sitk.Transform:
        d = self.dim
        bspline = self._bspline(p)
        affine = sitk.AffineTransform(d)
        affine.SetCenter(tuple(float(v) for v in self.center))
        affine.SetMatrix(tuple(float(v) for v in self.affine.ravel()))
        affine.SetTranslation(tuple(float(v) for v in self.translation))
        return sitk.CompositeTransform([affine, bspline])

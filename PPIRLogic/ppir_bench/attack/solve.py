"""Solve for the fixed image J at one pyramid level from what the moving party recorded.

Every revealed value is linear in J at the level's sampled voxels:

    r[k, c] = sum_x Phi_k(x) g_c(x) J(x)        cross = sum_x I(T(x)) J(x)

(``fixed_sq`` = sum J^2 is not linear and is not used). The equations are written in normalised
units (each row divided by the moving party's channel and basis-column scales, and J by a power of
two s >= max of its own warped image), where the noise the fixed party would add is i.i.d.
Two estimates (normal equations, dense: levels up to a few thousand unknowns): the minimum-norm least-squares solution, and the moving party's own warped image,
intensity-fitted through the same equations, plus the minimum-norm correction.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from ppir.engine.basis import BSplineBasis
from ppir.engine.image import Grid
from ppir.engine.joint import fixed_scale
from scipy.linalg import cho_factor, cho_solve

from ppir_bench.attack.record import Product


@dataclass
class LinearSystem:
    """A x = b over the level's distinct sampled voxels ``voxels`` (flat, level grid); x = J / scale."""

    a: sp.csr_matrix
    b: np.ndarray
    voxels: np.ndarray
    prior: np.ndarray
    scale: float
    grid: Grid
    revealed: int
    informed: np.ndarray

    @property
    def unknowns(self) -> int:
        return len(self.voxels)


def _product_rows(product: Product, columns: np.ndarray, scale: float) -> tuple[sp.coo_matrix, np.ndarray]:
    """The equations of one product in normalised units: rows (outputs x channels, then the cross term)."""
    basis, g, w, res = product.sample_set.basis, product.channels.astype(np.float64), product.warped, product.result
    n, d = g.shape
    g_scale = np.maximum(np.abs(g).max(axis=0), 1e-30)
    gn = g / g_scale
    if isinstance(basis, BSplineBasis):
        phi = basis.phi.tocsc()
        blocks = [(phi.multiply(gn[:, c:c + 1])).T.tocoo() for c in range(d)]
        outputs = np.concatenate([res.r[:, c] / (scale * g_scale[c]) for c in range(d)])
        stacked = sp.vstack(blocks).tocoo()
        weights = stacked
    else:
        m = basis.matrix
        m_scale = np.maximum(np.abs(m).max(axis=0), 1e-30)
        coef = (m / m_scale)[:, :, None] * gn[:, None, :]           # (N, q, d): row (a, c)
        weights = sp.coo_matrix(coef.reshape(n, -1).T)
        outputs = (res.r / (scale * m_scale[:, None] * g_scale[None, :])).ravel()
    w_scale = max(float(np.abs(w).max()), 1e-30)
    cross = sp.coo_matrix(w[None, :].astype(np.float64) / w_scale)
    rows = sp.vstack([weights, cross]).tocoo()
    mapped = sp.coo_matrix((rows.data, (rows.row, columns[rows.col])), shape=(rows.shape[0], columns.max() + 1))
    return mapped, np.concatenate([outputs, [res.cross / (scale * w_scale)]])


def build_system(products: list[Product]) -> LinearSystem:
    """Pool every product of one level into one sparse system."""
    voxels = np.unique(np.concatenate([p.sample_set.samples for p in products]))
    prior = np.zeros(len(voxels))
    columns = []
    for p in products:                                              # the latest warped value of each voxel
        cols = np.searchsorted(voxels, p.sample_set.samples)
        prior[cols] = p.warped
        columns.append(cols)
    scale = fixed_scale(prior)
    blocks, rhs = [], []
    for p, cols in zip(products, columns):
        rows, b = _product_rows(p, cols, scale)
        blocks.append(sp.coo_matrix((rows.data, (rows.row, rows.col)), shape=(rows.shape[0], len(voxels))))
        rhs.append(b)
    a = sp.vstack(blocks).tocsr()
    a.eliminate_zeros()
    b = np.concatenate(rhs)
    keep = np.diff(a.indptr) > 0                                     # outputs no sample touches say nothing
    revealed = sum(p.result.r.size + 1 for p in products)
    a = a[keep]
    informed = np.diff(a.tocsc().indptr) > 0                      # voxels some equation involves
    return LinearSystem(a, b[keep], voxels, prior, scale, products[0].sample_set.grid, revealed, informed)


def normal_equations(system: LinearSystem) -> tuple[np.ndarray, np.ndarray]:
    """A^T A (dense) and A^T b; dense rows (affine outputs, cross terms) are multiplied densely."""
    a = system.a
    dense = np.diff(a.indptr) > a.shape[1] // 4
    sparse_part, dense_part = a[~dense], a[dense].toarray()
    normal = (sparse_part.T @ sparse_part).toarray() + dense_part.T @ dense_part
    return normal, a.T @ system.b


def _ridge(normal: np.ndarray, damp: float) -> np.ndarray:
    """N + (damp^2 + 1e-12 mean diag) I: Tikhonov damping, plus a ridge that gives voxels no
    equation touches the value 0 (the minimum-norm choice) without moving the others measurably."""
    return normal + (damp ** 2 + 1e-12 * float(np.trace(normal)) / len(normal)) * np.eye(len(normal))


def minimum_norm(system: LinearSystem, damp: float = 0.0) -> np.ndarray:
    """The (damped) minimum-norm least-squares J: Cholesky of the normal equations."""
    normal, rhs = normal_equations(system)
    return cho_solve(cho_factor(_ridge(normal, damp)), rhs) * system.scale


def fitted_prior(system: LinearSystem) -> np.ndarray:
    """The moving party's own warped image, fitted as alpha I + beta through the revealed equations."""
    p = system.prior / system.scale
    basis = np.stack([system.a @ p, system.a @ np.ones_like(p)], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(basis, system.b, rcond=None)
    return (alpha * p + beta) * system.scale


def with_prior(system: LinearSystem, damp: float = 0.0) -> np.ndarray:
    """Fitted own image plus the (damped) minimum-norm correction that explains the revealed values."""
    x0 = fitted_prior(system) / system.scale
    normal, rhs = normal_equations(system)
    return (x0 + cho_solve(cho_factor(_ridge(normal, damp)), rhs - normal @ x0)) * system.scale


class Spectrum:
    """One eigendecomposition of A^T A, then the prior-based solution for any damping at the cost of a product."""

    def __init__(self, system: LinearSystem):
        normal, rhs = normal_equations(system)
        self.values, self.vectors = np.linalg.eigh(normal)
        self.x0 = fitted_prior(system) / system.scale
        self._projected = self.vectors.T @ (rhs - normal @ self.x0)
        self.scale = system.scale

    def _gain(self, relative_damping: float) -> np.ndarray:
        top = max(float(self.values[-1]), 1e-300)
        return np.where(self.values > 1e-12 * top,
                        1.0 / (np.maximum(self.values, 1e-12 * top) + relative_damping * top), 0.0)

    def with_prior(self, relative_damping: float) -> np.ndarray:
        """Damping (Tikhonov weight) given relative to the largest eigenvalue of A^T A."""
        return (self.x0 + self.vectors @ (self._gain(relative_damping) * self._projected)) * self.scale

    def response(self, change: np.ndarray, relative_damping: float) -> np.ndarray:
        """How ``with_prior``'s estimate moves when J moves by ``change`` at the voxels and the revealed
        values with it (the prior's fit held fixed): the change as far as the equations see it."""
        seen = self.values * (self.vectors.T @ (change / self.scale))
        return self.vectors @ (self._gain(relative_damping) * seen) * self.scale


def psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    """PSNR (dB) against the truth, with the truth's range as peak."""
    err = float(np.sqrt(np.mean((estimate - truth) ** 2))) if len(truth) else 0.0
    peak = float(truth.max() - truth.min())
    return float("inf") if err == 0 else 20.0 * np.log10(peak / err)


@dataclass(frozen=True)
class Disc:
    """A detail present only in J: a disc (2D) or ball (3D) of ``radius_mm`` around ``center``."""

    center: tuple[float, ...]
    radius_mm: float
    amplitude: float = 0.0


def disc_and_ring(grid: Grid, voxels: np.ndarray, disc: Disc) -> tuple[np.ndarray, np.ndarray]:
    """Masks over ``voxels``: inside the disc (radius + half a level voxel), and the ring around it
    (radius + 1.5 to radius + 3 level voxels) that a contrast compares it with."""
    spacing = float(grid.spacing.min())
    dist = np.linalg.norm(grid.points(voxels) - np.asarray(disc.center), axis=1)
    return dist <= disc.radius_mm + 0.5 * spacing, (dist >= disc.radius_mm + 1.5 * spacing) & \
        (dist <= disc.radius_mm + 3.0 * spacing)


def response_share(grid: Grid, voxels: np.ndarray, moved: np.ndarray, change: np.ndarray, disc: Disc,
                   floor: float) -> float:
    """The share of a detail the attack's estimate follows: the contrast (disc minus ring, ``disc_and_ring``)
    of the estimate's response ``moved`` over the contrast of the detail's own ``change`` (J with the
    detail minus J without, at ``voxels``). Unlike ``detail_recovered`` it has no chance floor: the rest
    of J does not enter. NaN when the disc or ring holds no sample, or the change's contrast is under ``floor``."""
    inside, ring = disc_and_ring(grid, voxels, disc)
    if not inside.any() or not ring.any():
        return float("nan")
    true = float(change[inside].mean() - change[ring].mean())
    return float(moved[inside].mean() - moved[ring].mean()) / true if abs(true) >= floor else float("nan")


def detail_recovered(system: LinearSystem, estimate: np.ndarray, baseline: np.ndarray, truth: np.ndarray,
                     disc: Disc) -> float:
    """(contrast of the estimate - contrast of the baseline) / (true contrast - contrast of the baseline).

    Contrast = mean over the informed sampled voxels in the disc minus the mean in the ring around it
    (``disc_and_ring``). 1: the detail is recovered; 0: nothing
    beyond the moving party's own image. NaN when the disc or ring holds no informed voxel, or when
    the true contrast over the baseline's is below a tenth of the disc's amplitude (a detail the
    level's smoothing has blurred below the noise: the ratio would be noise over noise).
    """
    inside, ring = (mask & system.informed for mask in disc_and_ring(system.grid, system.voxels, disc))
    if not inside.any() or not ring.any():
        return float("nan")

    def contrast(v: np.ndarray) -> float:
        return float(v[inside].mean() - v[ring].mean())

    base = contrast(baseline)
    true = contrast(truth) - base
    if abs(true) < 0.1 * disc.amplitude:
        return float("nan")
    return (contrast(estimate) - base) / true

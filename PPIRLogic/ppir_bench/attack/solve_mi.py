"""Solve for the fixed image's bin memberships at one pyramid level from what Mattes MI revealed.

MI's releases are linear in the fixed party's one-hot bin memberships M (voxels x fixed bins):

    histogram   H(l, k) = sum_x M_l(x) W_k(x)
    gradient    r[a, c] = sum_x Phi_a(x) g_c(x) sum_l M_l(x) v_l(x)

with W, g, v and Phi the moving party's own. It also knows that every row of M sums to 1. The
attack solves for M (the voxels x bins unknowns, ``bins`` times as many as SSD's) starting from
the moving party's own guess, each voxel's Parzen weights through the histogram's conditional
p(l | k), and adds the minimum-norm correction that explains every revealed value (rows
normalised). The estimate's bin is its argmax; its "image" is the expected bin, sum_l l M_l. A detail's
share is measured on the same equations: how much of its change in M (J with the detail against J
without) the estimate follows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from ppir.engine.basis import BSplineBasis
from ppir.engine.image import Grid
from scipy.linalg import cho_factor, cho_solve

from ppir_bench.attack.record import MIProduct
from ppir_bench.attack.solve import Disc, _ridge, response_share


@dataclass
class BinSystem:
    """A m = b over vec(M) (voxel-major: column x * bins + l) at the level's distinct sampled ``voxels``."""

    a: sp.csr_matrix
    b: np.ndarray
    voxels: np.ndarray
    bins: int
    prior: np.ndarray           # (voxels, bins): the moving party's own guess
    grid: Grid
    revealed: int

    @property
    def unknowns(self) -> int:
        return len(self.voxels) * self.bins

    @property
    def informed(self) -> np.ndarray:
        """Every sampled voxel is in the histogram."""
        return np.ones(len(self.voxels), bool)


def _spread(cols: np.ndarray, per_bin: np.ndarray, bins: int, width: int) -> sp.csr_matrix:
    """The (N, width * bins) matrix whose row x holds per_bin[x, l] at column cols[x] * bins + l."""
    n = len(cols)
    index = (cols[:, None] * bins + np.arange(bins)).ravel()
    return sp.csr_matrix((per_bin.ravel(), index, np.arange(0, n * bins + 1, bins)), shape=(n, width * bins))


def _product_rows(p: MIProduct, cols: np.ndarray, bins: int, width: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """The histogram's equations, then the gradient's (when the evaluation went that far)."""
    w = sp.coo_matrix(p.weights.T)                       # (moving bins, N)
    fixed_bin = np.arange(bins)[:, None]                    # H(l, k) = sum_x M_l(x) W_k(x): row l * K + k
    rows = (fixed_bin * p.weights.shape[1] + w.row).ravel()
    columns = (cols[w.col] * bins + fixed_bin).ravel()
    blocks = [sp.csr_matrix((np.tile(w.data, bins), (rows, columns)), shape=(p.histogram.size, width * bins))]
    rhs = list(p.histogram.ravel())
    if p.r is not None:
        basis = p.sample_set.basis
        phi = basis.phi if isinstance(basis, BSplineBasis) else sp.csr_matrix(basis.matrix)
        spread = _spread(cols, p.bin_weights, bins, width)
        for c in range(p.channels.shape[1]):
            blocks.append(sp.csr_matrix(phi.multiply(p.channels[:, c:c + 1]).T) @ spread)
            rhs.extend(p.r[:, c])
    return sp.vstack(blocks).tocsr(), np.asarray(rhs, np.float64)


def build_bin_system(products: list[MIProduct]) -> BinSystem:
    """Pool every MI evaluation of one level into one sparse system (rows scaled to unit norm)."""
    bins = products[0].histogram.shape[0]
    voxels = np.unique(np.concatenate([p.sample_set.samples for p in products]))
    prior = np.full((len(voxels), bins), 1.0 / bins)
    blocks, rhs = [], []
    for p in products:
        cols = np.searchsorted(voxels, p.sample_set.samples)
        conditional = p.histogram / np.maximum(p.histogram.sum(axis=0, keepdims=True), 1e-30)   # p(l | k)
        prior[cols] = np.clip(p.weights @ conditional.T, 0.0, None)   # the latest evaluation's guess per voxel
        rows, b = _product_rows(p, cols, bins, len(voxels))
        blocks.append(rows)
        rhs.append(b)
    prior /= np.maximum(prior.sum(axis=1, keepdims=True), 1e-30)
    revealed = sum(p.histogram.size + (0 if p.r is None else p.r.size) for p in products)
    ones = _spread(np.arange(len(voxels)), np.ones((len(voxels), bins)), bins, len(voxels))   # rows of M sum to 1
    a = sp.vstack(blocks + [ones]).tocsr()
    b = np.concatenate(rhs + [np.ones(len(voxels))])
    norms = np.sqrt(np.asarray(a.multiply(a).sum(axis=1)).ravel())
    keep = norms > 0
    scale = sp.diags(1.0 / norms[keep])
    return BinSystem(scale @ a[keep], b[keep] / norms[keep], voxels, bins, prior,
                     products[0].sample_set.grid, revealed)


class BinAttack:
    """The own guess plus the minimum-norm correction that explains every revealed value, factorised once.

    Dense, on whichever side of A is smaller: A A^T when the unknowns outnumber the equations, else A^T A.
    ``damp``: Tikhonov damping (rows have unit norm), for revealed values that carry noise."""

    def __init__(self, system: BinSystem, damp: float = 0.0):
        self.system = system
        a = system.a
        self._dual = a.shape[0] < a.shape[1]
        self._factor = cho_factor(_ridge((a @ a.T if self._dual else a.T @ a).toarray(), damp))

    def _pseudo_inverse(self, rhs: np.ndarray) -> np.ndarray:
        """A^+ rhs: the minimum-norm x with A x = rhs (least squares when inconsistent)."""
        a = self.system.a
        return a.T @ cho_solve(self._factor, rhs) if self._dual else cho_solve(self._factor, a.T @ rhs)

    def estimate(self) -> np.ndarray:
        """M's estimate (voxels, bins)."""
        x0 = self.system.prior.ravel()
        return (x0 + self._pseudo_inverse(self.system.b - self.system.a @ x0)).reshape(-1, self.system.bins)

    def response(self, change: np.ndarray) -> np.ndarray:
        """How the estimate moves when M moves by ``change`` (voxels, bins) and the revealed values with it
        (the prior held fixed): the part of the change the equations see."""
        return self._pseudo_inverse(self.system.a @ change.ravel()).reshape(-1, self.system.bins)


def expected_bin(memberships: np.ndarray) -> np.ndarray:
    """sum_l l M_l(x): a memberships estimate as an image in bin units."""
    return memberships @ np.arange(memberships.shape[1], dtype=np.float64)


def accuracy(memberships: np.ndarray, truth: np.ndarray) -> float:
    """The share of voxels whose most likely bin is the true one."""
    return float(np.mean(np.argmax(memberships, axis=1) == truth))


def one_hot(bins_of: np.ndarray, bins: int) -> np.ndarray:
    return np.eye(bins)[bins_of]


def detail_recovered(system: BinSystem, moved: np.ndarray, change: np.ndarray, disc: Disc) -> float:
    """``solve.response_share`` in expected-bin units (NaN under a tenth of a bin)."""
    return response_share(system.grid, system.voxels, moved, change, disc, 0.1)

"""The response measure at any size: a level's revealed values as linear equations A on its sampled voxels.

``solve`` forms A^T A densely, which limits it to a few thousand voxels: the coarse levels of 2D slices.
Here, with few equations (up to ``GRAM_ROWS``, as in the test suite's 3D levels), the projection goes
through the dense Gram matrix A A^T, in seconds; with more, A is applied sample set by sample set (A x:
each product's Phi^T (g * x) and cross term; A^T y: back through the same basis) and solved by LSQR, so
a 3D level of 100,000 sampled voxels costs a few sparse products per iteration. Undamped, the
minimum-norm solution of A x = A c is c's projection onto the equations' row space: everything of the
change c that the revealed values determine, which is the most any attacker can follow of it from exact
values (``solve.Spectrum.response`` at damping 0, without the dense solve).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from ppir.engine.basis import BSplineBasis
from scipy.linalg.blas import dsyrk as syrk
from scipy.sparse.linalg import LinearOperator, lsqr

from ppir_bench.attack.record import Product

GRAM_ROWS = 8000            # up to this many equations, ``response`` projects through A A^T (dense, rows^2)
GRAM_CUTOFF = 1e-12         # eigenvalues of A A^T under this share of the largest (dependent rows) are left out


@dataclass
class _Block:
    """The equations of one sample set's products over the columns ``cols`` (its samples among the level's
    voxels): every product's channels side by side, so each iteration applies the basis once per sample set."""

    cols: np.ndarray
    basis: object              # the sample set's basis: ``phi`` (N x K sparse) or ``matrix`` (N x q), columns scaled
    g: np.ndarray              # (N, channels of every product), each over its largest magnitude
    w: np.ndarray              # (N, products): warped intensities, each over its largest magnitude

    def _phi(self):
        return self.basis.phi if isinstance(self.basis, BSplineBasis) else self.basis.matrix

    @property
    def rows(self) -> int:
        return self._phi().shape[1] * self.g.shape[1] + self.w.shape[1]

    def forward(self, x: np.ndarray) -> np.ndarray:
        xs = x[self.cols]
        r = np.asarray(self._phi().T @ (self.g * xs[:, None]))
        return np.concatenate([r.ravel(), self.w.T @ xs])

    def columns(self, lo: int, hi: int) -> np.ndarray:
        """The block's equations over the level's columns ``lo`` to ``hi`` - 1, dense, rows as ``forward``'s."""
        inside = (self.cols >= lo) & (self.cols < hi)
        return self._dense(inside, self.cols[inside] - lo, hi - lo)

    def subset(self, wanted: np.ndarray) -> np.ndarray:
        """The block's equations over the level's columns ``wanted`` (sorted), dense, rows as ``forward``'s."""
        inside = np.isin(self.cols, wanted)
        return self._dense(inside, np.searchsorted(wanted, self.cols[inside]), len(wanted))

    def _dense(self, inside: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
        phi = self._phi()[inside]
        phi = phi.toarray() if sp.issparse(phi) else np.asarray(phi)
        g = self.g[inside]
        out = np.zeros((self.rows, width))
        out[:-self.w.shape[1], at] = (phi[:, :, None] * g[:, None, :]).reshape(len(at), -1).T
        out[-self.w.shape[1]:, at] = self.w[inside].T
        return out

    def backward(self, y: np.ndarray, out: np.ndarray) -> None:
        split = y.size - self.w.shape[1]
        back = np.asarray(self._phi() @ y[:split].reshape(-1, self.g.shape[1]))
        out[self.cols] += (back * self.g).sum(axis=1) + self.w @ y[split:]


def _scaled(values: np.ndarray) -> np.ndarray:
    return values / np.maximum(np.abs(values).max(axis=0), 1e-30)


class Equations(LinearOperator):
    """A over the level's distinct sampled voxels ``voxels`` (flat, level grid); rows scaled as ``solve`` scales
    them (which changes neither the row space nor the undamped response)."""

    def __init__(self, products: list[Product]):
        self.voxels = np.unique(np.concatenate([p.sample_set.samples for p in products]))
        self.grid = products[0].sample_set.grid
        self.revealed = sum(p.result.r.size + 1 for p in products)
        sets: dict[int, list[Product]] = {}
        for p in products:
            sets.setdefault(id(p.sample_set), []).append(p)
        self._blocks = []
        for group in sets.values():
            basis = group[0].sample_set.basis
            if not isinstance(basis, BSplineBasis):
                basis = basis.with_matrix(_scaled(basis.matrix))
            self._blocks.append(_Block(np.searchsorted(self.voxels, group[0].sample_set.samples), basis,
                                       np.hstack([_scaled(p.channels) for p in group]),
                                       np.stack([_scaled(p.warped) for p in group], axis=1)))
        super().__init__(np.float64, (sum(b.rows for b in self._blocks), len(self.voxels)))

    @property
    def unknowns(self) -> int:
        return len(self.voxels)

    def gram(self, chunk: int = 2048) -> np.ndarray:
        """A A^T, dense, summed over blocks of ``chunk`` columns (A itself is never held whole); BLAS's syrk fills
        one triangle, half the work of a full product."""
        gram = np.zeros((self.shape[0], self.shape[0]), order="F")
        for lo in range(0, self.shape[1], chunk):
            block = np.vstack([b.columns(lo, min(lo + chunk, self.shape[1])) for b in self._blocks])
            gram = syrk(1.0, block.T, beta=1.0, c=gram, trans=1, overwrite_c=1)
        return np.triu(gram) + np.triu(gram, 1).T

    def over(self, wanted: np.ndarray) -> np.ndarray:
        """A's columns ``wanted`` (sorted), dense: every equation, zero rows included."""
        return np.vstack([b.subset(wanted) for b in self._blocks])

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([b.forward(np.ravel(x)) for b in self._blocks])

    def _rmatvec(self, y: np.ndarray) -> np.ndarray:
        out, start = np.zeros(self.shape[1]), 0
        y = np.ravel(y)
        for b in self._blocks:
            b.backward(y[start:start + b.rows], out)
            start += b.rows
        return out


def response_knowing_the_rest(equations: Equations, change: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The projection of ``change`` (zero outside the columns ``wanted``, sorted) for an attacker that already knows
    J at every other sampled voxel: it subtracts their part of each revealed value, which leaves the equations
    over ``wanted`` alone (exact: through their normal matrix, eigenvalues under ``GRAM_CUTOFF`` of the largest
    left out). Returns the response at ``wanted``."""
    local = equations.over(wanted)
    values, vectors = np.linalg.eigh(local.T @ local)
    keep = values > GRAM_CUTOFF * values[-1]
    return vectors[:, keep] @ (vectors[:, keep].T @ change[wanted])


def response(equations: Equations, change: np.ndarray, iterations: int = 2000) -> tuple[np.ndarray, float]:
    """The projection of ``change`` (at the voxels) onto the row space, and its relative residual ||A x - A c||
    / ||A c||. Through the Gram matrix up to ``GRAM_ROWS`` equations: the projection of exact values, down to
    singular values 10^-6 of the largest (an attacker with exact values; less precise ones follow less). Else
    by LSQR, which stops before its weakest directions: a lower bound (on a 3D level of 13,824 voxels, 17 %
    of a detail where the Gram projection gives 22 %)."""
    target = equations @ change
    norm = float(np.linalg.norm(target))
    if norm == 0:
        return np.zeros_like(change), 0.0
    if equations.shape[0] <= GRAM_ROWS:
        values, vectors = np.linalg.eigh(equations.gram())
        keep = values > GRAM_CUTOFF * values[-1]
        moved = equations.rmatvec(vectors[:, keep] @ ((vectors[:, keep].T @ target) / values[keep]))
    else:
        moved = lsqr(equations, target, atol=1e-12, btol=1e-12, iter_lim=iterations)[0]
    return moved, float(np.linalg.norm(equations @ moved - target)) / norm

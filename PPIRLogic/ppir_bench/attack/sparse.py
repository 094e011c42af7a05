"""The response measure at any size: a level's revealed values as a matrix-free operator, solved by LSQR.

``solve`` forms A^T A densely, which limits it to a few thousand voxels: the coarse levels of 2D slices.
Here A is applied product by product (A x: each product's Phi^T (g * x) and cross term; A^T y: back
through the same basis), so a 3D level of 100,000 sampled voxels costs a few sparse products per
iteration. Undamped, the minimum-norm solution of A x = A c is c's projection onto the equations' row
space: everything of the change c that the revealed values determine, which is the most any attacker
can follow of it from exact values (``solve.Spectrum.response`` at damping 0, without the dense solve).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ppir.engine.basis import BSplineBasis
from scipy.sparse.linalg import LinearOperator, lsqr

from ppir_bench.attack.record import Product


@dataclass
class _Block:
    """One product's equations over the columns ``cols`` (its samples among the level's voxels)."""

    cols: np.ndarray
    basis: object              # the sample set's basis: ``phi`` (N x K sparse) or ``matrix`` (N x q)
    g: np.ndarray              # (N, d) channels, each over its largest magnitude
    w: np.ndarray              # (N,) warped intensities, over their largest magnitude

    @property
    def rows(self) -> int:
        outputs = self.basis.phi.shape[1] if isinstance(self.basis, BSplineBasis) else self.basis.matrix.shape[1]
        return outputs * self.g.shape[1] + 1

    def forward(self, x: np.ndarray) -> np.ndarray:
        xs = x[self.cols]
        gx = self.g * xs[:, None]
        r = (self.basis.phi.T @ gx) if isinstance(self.basis, BSplineBasis) else self.basis.matrix.T @ gx
        return np.concatenate([np.asarray(r).T.ravel(), [self.w @ xs]])

    def backward(self, y: np.ndarray, out: np.ndarray) -> None:
        d = self.g.shape[1]
        r = y[:-1].reshape(d, -1).T                                     # (outputs, d)
        back = (self.basis.phi @ r) if isinstance(self.basis, BSplineBasis) else self.basis.matrix @ r
        out[self.cols] += (np.asarray(back) * self.g).sum(axis=1) + self.w * y[-1]


def _scaled(values: np.ndarray) -> np.ndarray:
    return values / np.maximum(np.abs(values).max(axis=0), 1e-30)


class Equations(LinearOperator):
    """A over the level's distinct sampled voxels ``voxels`` (flat, level grid); rows scaled as ``solve`` scales
    them (which changes neither the row space nor the undamped response)."""

    def __init__(self, products: list[Product]):
        self.voxels = np.unique(np.concatenate([p.sample_set.samples for p in products]))
        self.grid = products[0].sample_set.grid
        self.revealed = sum(p.result.r.size + 1 for p in products)
        self._blocks = []
        for p in products:
            basis = p.sample_set.basis
            if not isinstance(basis, BSplineBasis):
                basis = basis.with_matrix(_scaled(basis.matrix))
            self._blocks.append(_Block(np.searchsorted(self.voxels, p.sample_set.samples), basis,
                                       _scaled(p.channels), _scaled(p.warped)))
        super().__init__(np.float64, (sum(b.rows for b in self._blocks), len(self.voxels)))

    @property
    def unknowns(self) -> int:
        return len(self.voxels)

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([b.forward(np.ravel(x)) for b in self._blocks])

    def _rmatvec(self, y: np.ndarray) -> np.ndarray:
        out, start = np.zeros(self.shape[1]), 0
        y = np.ravel(y)
        for b in self._blocks:
            b.backward(y[start:start + b.rows], out)
            start += b.rows
        return out


def response(equations: Equations, change: np.ndarray, iterations: int = 2000) -> tuple[np.ndarray, float]:
    """The projection of ``change`` (at the voxels) onto the row space, and LSQR's relative residual ||A x - A c||
    / ||A c|| (how far from converged: the projection is only as good as it is small)."""
    target = equations @ change
    norm = float(np.linalg.norm(target))
    if norm == 0:
        return np.zeros_like(change), 0.0
    moved = lsqr(equations, target, atol=1e-12, btol=1e-12, iter_lim=iterations)[0]
    return moved, float(np.linalg.norm(equations @ moved - target)) / norm

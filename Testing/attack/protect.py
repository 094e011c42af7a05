"""Scratch protections for measuring (the lead puts the real ones inside each protocol).

Units. As in the MPC protocol, J' = J / s (s: one power of two >= max |J| for the whole session),
G'_c = G_c / max |G_c| and the basis columns Phi'_a = Phi_a / max |Phi_a| (affine; B-spline weights
are used as they are), so |J'|, |G'|, |Phi'_a| <= 1. Output (a, c) is sum_x Phi'_a(x) G'_c(x) J'(x)
and the cross term sum_x G'_d(x) J'(x), with G'_d the warped intensities over their maximum.

Sensitivity. Neighbouring images differ at one voxel by at most 1 in these units (|dJ'| <= 1; the
pyramid's smoothing and resampling do not increase the l1 norm of a change, so this holds at every
level). One product then changes by at most

    S = max_x sqrt(d ||Phi'(x)||^2 + 1)

in l2 (Sum_a,c (Phi'_a G'_c)^2 <= ||Phi'||^2 Sum_c G'_c^2 <= d ||Phi'||^2, plus G'_d^2 <= 1), and
Sum J'^2 (once per sample set) by at most 1. This needs |G'| <= 1, which holds for a semi-honest
moving party; one that deviates can scale its channels up and shrink the noise relative to the
signal, so against it the bound holds only if the protocol enforces the range.
"""
from __future__ import annotations

import math

import numpy as np
from dp_accounting import dp_event, pld, rdp

from ppir.engine.joint import JointBackend, JointResult, fixed_scale
from ppir.engine.basis import AffineBasis, BSplineBasis
from ppir.engine.image import Grid
from ppir.engine.pyramid import LevelSpec

from .record import Product, Recording


def basis_column_scales(basis: AffineBasis | BSplineBasis) -> np.ndarray:
    """max |Phi_a| per output row: affine columns; 1 for B-spline weights."""
    if isinstance(basis, AffineBasis):
        return np.maximum(np.abs(basis.matrix).max(axis=0), 1e-30)
    return np.ones(basis.control.n_points)


def sensitivity(basis: AffineBasis | BSplineBasis, d: int) -> float:
    """The l2 sensitivity S of one product (r and cross) to one voxel of J' changing by 1."""
    if isinstance(basis, AffineBasis):
        row_sq = ((basis.matrix / basis_column_scales(basis)) ** 2).sum(axis=1)
    else:
        row_sq = np.asarray(basis.phi.multiply(basis.phi).sum(axis=1)).ravel()
    return math.sqrt(d * float(row_sq.max()) + 1.0)


class NoisyBackend(JointBackend):
    """Gaussian noise of standard deviation ``sigma`` (normalised units) on every revealed value.

    Emulates what the fixed party would add (MPC: on its output share, which is in these units);
    ``peak`` is max |J| (the fixed party's), which fixes the session scale s.
    """

    def __init__(self, inner: JointBackend, sigma: float, peak: float, seed: int = 0):
        self.inner, self.sigma, self.scale = inner, sigma, fixed_scale(np.array([peak]))
        self.name = inner.name
        self._rng = np.random.default_rng(seed)
        self._sets: list[tuple[float, int]] = []        # (sensitivity, products) per sample set

    @property
    def fixed_grid(self) -> Grid:
        return self.inner.fixed_grid

    def start_level(self, spec: LevelSpec) -> Grid:
        return self.inner.start_level(spec)

    def set_samples(self, samples: np.ndarray | None, basis):
        self._basis = self.inner.set_samples(samples, basis)
        self._row_scale = basis_column_scales(self._basis)
        self._sum_sq_noise = self.sigma * self.scale ** 2 * self._rng.standard_normal()
        self._sets.append([None, 0])
        return self._basis

    def joint_product(self, channels: np.ndarray, warped: np.ndarray) -> JointResult:
        exact = self.inner.joint_product(channels, warped)
        g_scale = np.maximum(np.abs(channels).max(axis=0), 1e-30)
        w_scale = max(float(np.abs(warped).max()), 1e-30)
        noise = self._rng.standard_normal(exact.r.shape) * self._row_scale[:, None] * g_scale[None, :]
        if self._sets[-1][0] is None:
            self._sets[-1][0] = sensitivity(self._basis, channels.shape[1])
        self._sets[-1][1] += 1
        return JointResult(exact.r + self.sigma * self.scale * noise,
                           exact.cross + self.sigma * self.scale * w_scale * self._rng.standard_normal(),
                           exact.fixed_sq + self._sum_sq_noise)

    def epsilon(self, delta: float = 1e-5) -> float:
        """(epsilon, delta) spent so far (PLD accountant)."""
        return session_epsilon(self.sigma, [(s, n) for s, n in self._sets if n], delta)

    def party_stats(self):
        return self.inner.party_stats()

    def close(self) -> None:
        self.inner.close()


def _event(sigma: float, sets: list[tuple[float, int]]) -> dp_event.DpEvent:
    """Every product a Gaussian mechanism of multiplier sigma / S, every sample set's Sum J'^2 one of sigma / 1."""
    events = [dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(sigma / s), n) for s, n in sets]
    events.append(dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(sigma), len(sets)))
    return dp_event.ComposedDpEvent(events)


def session_epsilon(sigma: float, sets: list[tuple[float, int]], delta: float = 1e-5) -> float:
    """epsilon at ``delta`` for a session: ``sets`` lists (sensitivity, products) per sample set.

    Privacy-loss-distribution accountant (tight); below a noise multiplier of 0.5 its discretised
    distributions grow to gigabytes, and the Renyi accountant's bound is used instead.
    """
    if sigma / max(s for s, _ in sets) < 0.5:
        return session_epsilon_rdp(sigma, sets, delta)
    accountant = pld.PLDAccountant()
    accountant.compose(_event(sigma, sets))
    return float(accountant.get_epsilon(delta))


def session_epsilon_rdp(sigma: float, sets: list[tuple[float, int]], delta: float = 1e-5) -> float:
    """The same with the Renyi accountant (an upper bound on the PLD figure)."""
    accountant = rdp.RdpAccountant()
    accountant.compose(_event(sigma, sets))
    return float(accountant.get_epsilon(delta))


def recorded_sets(recording: Recording) -> list[tuple[float, int]]:
    """(sensitivity, products) per sample set of a recorded run."""
    counts: dict[int, int] = {}
    for p in recording.products:
        counts[id(p.sample_set)] = counts.get(id(p.sample_set), 0) + 1
    return [(sensitivity(s.basis, _dim(recording, s)), counts[id(s)]) for s in recording.sample_sets
            if id(s) in counts]


def _dim(recording: Recording, sample_set) -> int:
    return next(p.channels.shape[1] for p in recording.products if p.sample_set is sample_set)


def within_budget(products: list[Product], ratio: float) -> list[Product]:
    """The products a fixed party would answer at one level under a budget of ``ratio`` x unknowns
    (revealed values: r and the cross term per product; unknowns: distinct voxels sampled so far)."""
    kept, seen, revealed = [], np.zeros(0, np.int64), 0
    for p in products:
        seen = np.union1d(seen, p.sample_set.samples)
        revealed += p.result.r.size + 1
        if revealed > ratio * len(seen):
            break
        kept.append(p)
    return kept

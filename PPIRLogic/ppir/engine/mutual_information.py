"""Mattes mutual information: Parzen windows on the moving side, bin memberships on the fixed side.

The joint histogram over the samples x is

    H(l, k) = sum_x M_l(x) W_k(x),   M_l(x) = 1[J(x) in fixed bin l],   W_k(x) = beta3(xi(x) - k)

with xi(x) = (I(T(x)) - lo) / delta + 1 the moving intensity in bin units (cubic B-spline kernel beta3,
four bins per sample, summing to 1). M is the fixed party's alone and constant for a sample set;
W changes every iteration and is the moving party's. Both products the metric needs are joint
products of moving-side columns with the fixed-side columns M (``JointBackend.histogram_product``
and ``binned_product``):

    histogram   H = M^T W                                            (bins x bins)
    gradient    r = Phi^T (g * u),  u(x) = sum_l M_l(x) v_l(x),  v_l(x) = sum_k beta3'(xi(x) - k) L(l, k)

where L(l, k) = log(p(l, k) / p_m(k)) comes from H (p = H / sum H, p_m its moving marginal). The
moving party minimises the conditional entropy F = H(J | I) = H(J) - MI (the fixed marginal does not
depend on p), whose gradient is dF/dp = -(1 / (n delta)) sum_x S(x) u(x), S(x) = Phi(x)^T g(x).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ppir.common.errors import PPIRError
from ppir.engine.basis import cubic_weights
from ppir.engine.settings import HISTOGRAM_BINS as BINS  # default bins on each side (--histogram-bins)


@dataclass(frozen=True)
class ParzenWeights:
    """The moving party's Parzen weights W (N, bins), held as the first of four bins and their weights."""

    first: np.ndarray           # (N,) int
    values: np.ndarray          # (N, 4), rows sum to 1
    bins: int

    def dense(self) -> np.ndarray:
        """W as a dense (N, bins) array (what a protocol that shares or encrypts it would send)."""
        out = np.zeros((len(self.first), self.bins))
        np.put_along_axis(out, self.first[:, None] + np.arange(4), self.values, axis=1)
        return out


def cubic_derivatives(frac: np.ndarray) -> np.ndarray:
    """d/dt of ``cubic_weights(t)``: (..., 4)."""
    t = frac[..., None]
    t2 = t * t
    return np.concatenate([-3 * (1 - t) ** 2, 9 * t2 - 12 * t, -9 * t2 + 6 * t + 3, 3 * t2], axis=-1) / 6.0


def parzen(values: np.ndarray, lo: float, hi: float, bins: int = BINS) -> tuple[ParzenWeights, np.ndarray, float]:
    """Parzen weights of moving intensities in [lo, hi], their derivatives d/dxi (N, 4) and the bin width.

    Intensities outside [lo, hi] (zero outside the image when lo > 0) are clamped, with zero derivative.
    """
    delta = (hi - lo) / (bins - 3) if hi > lo else 1.0
    raw = (values.astype(np.float64) - lo) / delta + 1.0
    xi = np.clip(raw, 1.0, bins - 2 - 1e-9)
    base = np.floor(xi)
    frac = xi - base
    derivative = cubic_derivatives(frac)
    derivative[(raw < 1.0) | (raw > bins - 2 - 1e-9)] = 0.0
    return ParzenWeights(base.astype(np.int64) - 1, cubic_weights(frac), bins), derivative, delta


def fixed_bins(values: np.ndarray, lo: float, hi: float, bins: int = BINS) -> np.ndarray:
    """The fixed party's bin of each J(x), for J in [lo, hi] (the level image's range): (N,) int."""
    width = (hi - lo) / bins if hi > lo else 1.0
    return np.clip(np.floor((values.astype(np.float64) - lo) / width), 0, bins - 1).astype(np.int64)


def histogram(bins_of_fixed: np.ndarray, weights: ParzenWeights, fixed_count: int = BINS) -> np.ndarray:
    """H = M^T W in the clear: (fixed bins, moving bins)."""
    k = weights.bins
    cells = (bins_of_fixed[:, None] * k + weights.first[:, None] + np.arange(4)).ravel()
    return np.bincount(cells, weights=weights.values.ravel(), minlength=fixed_count * k).reshape(fixed_count, k)


@dataclass(frozen=True)
class Entropies:
    """MI's terms from a joint histogram."""

    mi: float
    conditional: float          # H(J | I) = H(J) - MI: the objective
    fixed_entropy: float        # H(J): MI's upper bound
    log_ratio: np.ndarray       # L(l, k) = log(p(l, k) / p_m(k)), 0 where p = 0
    total: float                # sum H (the number of samples, up to noise)


def entropies(h: np.ndarray) -> Entropies:
    """MI, H(J | I), H(J) and L from a (possibly noised) joint histogram."""
    h = np.clip(h, 0.0, None)
    total = float(h.sum())
    if total <= 0:
        raise PPIRError("mutual information is undefined: the joint histogram is empty")
    p = h / total
    pf, pm = p.sum(axis=1), p.sum(axis=0)

    def plogp(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(q @ np.log(q))

    joint, moving, fixed = -plogp(p.ravel()), -plogp(pm), -plogp(pf)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.where(p > 0, np.log(p / np.where(pm > 0, pm, 1.0)[None, :]), 0.0)
    mi = fixed + moving - joint
    return Entropies(mi, joint - moving, fixed, log_ratio, total)


def bin_weights(weights: ParzenWeights, derivative: np.ndarray, log_ratio: np.ndarray) -> np.ndarray:
    """v_l(x) = sum_k beta3'(xi(x) - k) L(l, k) for every fixed bin l: (N, fixed bins), float32."""
    by_moving = np.ascontiguousarray(log_ratio.T, dtype=np.float32)          # (moving bins, fixed bins)
    out = np.zeros((len(weights.first), log_ratio.shape[0]), dtype=np.float32)
    for j in range(4):
        out += derivative[:, j, None].astype(np.float32) * by_moving[weights.first + j]
    return out

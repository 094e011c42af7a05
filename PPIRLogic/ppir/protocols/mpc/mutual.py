"""Mattes mutual information under MPC: two dealer-assisted products with the fixed party's bin memberships.

Notation as in ``ppir.protocols.mpc.protocol`` (bars: Z_2^64 fixed-point encodings). The fixed party's
bin memberships M (N x B, one-hot rows, integers: no fractional bits) are constant for a sample set,
so they are masked once; the moving party's Parzen weights W (N x B) and per-bin gradient weights
v (N x B) change every evaluation.

Per sample set::

    dealer -> fixed   seed_b                       B = mask of M (N x B)
    fixed  -> moving  F = M - B                    uniform to the moving party (once)

Histogram H = M^T W (a matrix Beaver product: the dealer's correlated term is B x B, not N x B)::

    dealer -> moving  seed_a, seed_r0              A (N x B), R0 (B x B)
    dealer -> fixed   R1 = B^T A - R0              (B x B)
    moving -> fixed   E = W' - A                   uniform to the fixed party
    moving: F^T W' + R0        fixed: B^T E + R1 (+ noise)  ->  moving       sum = M^T W'

Gradient r = Phi^T (g * u), u(x) = sum_l M_l(x) v_l(x) (one message each way)::

    dealer -> moving  seeds of A_v (N x B), s0 (N), a (N x d), r0 (N x d)
    dealer -> fixed   s1 = sum_l B_l A_v,l - s0 (N), seed of b (N), r1 = a * b - r0 (N x d)
    moving -> fixed   E_v = v' - A_v,  e = g' - a
    fixed:  u1 = sum_l B_l E_v,l + s1,  f = u1 - b,  its share Phi^T (e * b + r1) (+ noise)  ->  moving, with f
    moving: u0 = sum_l F_l v'_l + s0,  z0 = g' * (u0 + f) + r0;  r = Phi^T z0 + the fixed party's share

u0 + u1 = u, and z0 + (e * b + r1) = g' * (u - b) + g' * b = g' * u. The fixed party sees only E_v and
e (masked by A_v and a, which it never learns); the moving party sees F and f (masked by B and b)
and the fixed party's output shares, which with its own give exactly the histogram and r.
"""
from __future__ import annotations

import numpy as np
import torch

from ppir.common.errors import PPIRError
from ppir.engine.mutual_information import ParzenWeights
from ppir.protocols.mpc.protocol import FIXED_BITS, channel_bits
from ppir.protocols.mpc.ring import RingBasis, decode, encode, random_ring

WEIGHT_BITS = 24        # Parzen weights in [0, 1]: counts up to 2^25 samples stay below 2^49
BIN_BITS = FIXED_BITS   # the per-bin gradient weights, over their largest magnitude: |v'| <= 1 as |J'| for SSD


def dealer_histogram(seed_a: bytes, seed_r0: bytes, b: torch.Tensor) -> torch.Tensor:
    """R1 = B^T A - R0 for the fixed party (B x B)."""
    bins = b.shape[1]
    return b.T @ random_ring(seed_a, tuple(b.shape)) - random_ring(seed_r0, (bins, bins))


def dealer_binned(seeds: dict[str, bytes], b: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(s1, r1) for the fixed party: s1 = sum_l B_l A_v,l - s0 (N), r1 = a * b2 - r0 (N x d)."""
    n = b.shape[0]
    s1 = (b * random_ring(seeds["av"], tuple(b.shape))).sum(dim=1) - random_ring(seeds["s0"], (n,))
    r1 = random_ring(seeds["a"], (n, d)) * random_ring(seeds["b"], (n,))[:, None] - random_ring(seeds["r0"], (n, d))
    return s1, r1


class FixedBins:
    """The fixed party's state for one MI sample set: its bin memberships and their mask."""

    def __init__(self, bins_of_samples: np.ndarray, count: int, seed_b: bytes, basis: RingBasis):
        n = len(bins_of_samples)
        self.m = torch.zeros((n, count), dtype=torch.int64)
        self.m[torch.arange(n), torch.from_numpy(bins_of_samples.astype(np.int64))] = 1
        self.b = random_ring(seed_b, (n, count))
        self.basis = basis

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.b.shape)

    def masked(self) -> torch.Tensor:
        """F = M - B, sent to the moving party once per sample set."""
        return self.m - self.b

    def histogram_share(self, e: torch.Tensor, r1: torch.Tensor) -> torch.Tensor:
        """B^T E + R1: the fixed party's share of M^T W'."""
        return self.b.T @ e + r1

    def binned_share(self, e_v: torch.Tensor, e_g: torch.Tensor, s1: torch.Tensor, b2: torch.Tensor,
                     r1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f = u1 - b2, sent to the moving party; the fixed party's share of Phi^T (g' * u))."""
        u1 = (self.b * e_v).sum(dim=1) + s1
        return u1 - b2, self.basis.transpose_apply(e_g * b2[:, None] + r1)


class MovingHistogram:
    """The moving party's side of one histogram product."""

    def __init__(self, weights: ParzenWeights, f: torch.Tensor, seed_a: bytes, seed_r0: bytes):
        n, bins = len(weights.first), weights.bins
        if (n, bins) != tuple(f.shape):
            raise PPIRError(f"Parzen weights of shape {(n, bins)} against fixed bins of shape {tuple(f.shape)}")
        values = encode(weights.values, WEIGHT_BITS)                     # (N, 4): W' is sparse
        columns = torch.from_numpy(weights.first)[:, None] + torch.arange(4)
        w = torch.zeros((n, bins), dtype=torch.int64).scatter_(1, columns, values)
        self.e = w - random_ring(seed_a, (n, bins))
        own = random_ring(seed_r0, (bins, bins))                         # + F^T W', four columns at a time
        for j in range(4):
            own.index_add_(1, columns[:, j], (f * values[:, j:j + 1]).T)
        self._own = own

    def finish(self, fixed_share: torch.Tensor) -> np.ndarray:
        return decode(self._own + fixed_share, WEIGHT_BITS)


class MovingBinned:
    """The moving party's side of one gradient product."""

    def __init__(self, channels: np.ndarray, bin_weights: np.ndarray, basis: RingBasis, f: torch.Tensor,
                 seeds: dict[str, bytes]):
        n, d = channels.shape
        self.v_scale = max(float(np.abs(bin_weights).max()), 1e-30)
        v = encode(bin_weights.astype(np.float64) / self.v_scale, BIN_BITS)
        self.scales = np.maximum(np.abs(channels).max(axis=0), 1e-30)
        normalised = channels.astype(np.float64) / self.scales
        # |u'| <= 1, as |J'| for SSD: the same bound keeps every output inside the ring (no cross term here)
        self.bits = channel_bits(np.concatenate([normalised, np.zeros((n, 1))], axis=1), basis)
        self.g = encode(normalised, self.bits)
        self.e_v = v - random_ring(seeds["av"], tuple(v.shape))
        self.e_g = self.g - random_ring(seeds["a"], (n, d))
        self._u0 = (f * v).sum(dim=1) + random_ring(seeds["s0"], (n,))
        self._r0 = random_ring(seeds["r0"], (n, d))
        self._basis = basis

    def finish(self, f: torch.Tensor, fixed_r: torch.Tensor) -> np.ndarray:
        """r = Phi^T (g * u) from the fixed party's opening f and its share of the outputs."""
        z0 = self.g * (self._u0 + f)[:, None] + self._r0
        r = self._basis.decode(self._basis.transpose_apply(z0) + fixed_r, self.bits + BIN_BITS)
        return r * self.scales[None, :] * self.v_scale

"""The dealer-assisted product of the moving party's channels with the fixed party's image.

Notation: bars are fixed-point ring encodings (Z_2^64). Per level (sample set) the fixed party holds
J' = J / s_J with s_J a power of two >= max |J| (so |J'| <= 1); per iteration the moving party
holds channels G' = G / s_G (its own per-channel scales, kept private).

    dealer -> fixed   seed_b                    b = mask of J (once per level)
    fixed  -> moving  f = J' - b                uniformly random to the moving party
    dealer -> moving  seed_a, seed_r0           a = mask of G', r0 = its share of a*b
    dealer -> fixed   r1 = a*b - r0             (N x C ring elements)
    moving -> fixed   e = G' - a                uniformly random to the fixed party
    moving: z0 = G'*f + r0        fixed: z1 = e*b + r1        z0 + z1 = G'*J'
    each applies the public basis to its share; fixed -> moving: its share of Phi^T z and of sum z
    moving: reveals r = Phi^T (G' * J') and the cross term, and rescales by s_G * s_J.

The fixed party sees only e (masked by a, which it never learns); the moving party sees only f
(masked by b) and the fixed party's share of the outputs, which together with its own share is
exactly the result. A dealer that colludes with either party breaks this: it knows the masks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ppir.common.errors import PPIRError
from ppir.protocols.mpc.ring import BASIS_BITS, RingBasis, decode, encode, random_ring

FIXED_BITS = 16
RING_BITS = 62
MAX_CHANNEL_BITS = 20
MIN_CHANNEL_BITS = 8


def channel_bits(normalised: np.ndarray, basis: RingBasis) -> int:
    """Fractional bits for the moving channels such that no revealed sum can leave the ring.

    With |J'| <= 1, output (a, c) is bounded by sum_x |Phi'_a(x)| |G'_c(x)| (the moving party knows
    both factors), and the cross term by sum_x |G'_d(x)|.
    """
    magnitude = np.abs(normalised)
    bound_r = float(basis.abs_transpose_apply(magnitude[:, :-1]).max()) + 1.0
    bound_cross = float(magnitude[:, -1].sum()) + 1.0
    bits = min(MAX_CHANNEL_BITS,
               RING_BITS - FIXED_BITS - BASIS_BITS - math.ceil(math.log2(bound_r)),
               RING_BITS - FIXED_BITS - math.ceil(math.log2(bound_cross)))
    if bits < MIN_CHANNEL_BITS:
        raise PPIRError(f"too many samples ({len(normalised)}) for the 64-bit ring at the required precision; "
                        "use --sampling urs with a smaller --sample-fraction")
    return bits


@dataclass
class FixedLevel:
    """The fixed party's state for one sample set."""

    j_bar: torch.Tensor
    b: torch.Tensor
    basis: RingBasis

    @classmethod
    def start(cls, values: np.ndarray, scale: float, seed_b: bytes, basis: RingBasis) -> "FixedLevel":
        j_bar = encode(values / scale, FIXED_BITS)
        return cls(j_bar, random_ring(seed_b, j_bar.shape), basis)

    def masked(self) -> torch.Tensor:
        """f = J' - b, sent to the moving party once per sample set."""
        return self.j_bar - self.b

    def share(self, e: torch.Tensor, r1: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed party's shares of Phi^T (G'*J')[:, :d] and of sum (G'*J')[:, d]."""
        z1 = e * self.b[:, None] + r1
        return self.basis.transpose_apply(z1[:, :d]), z1[:, d].sum()


def dealer_share(seed_a: bytes, seed_r0: bytes, b: torch.Tensor, channels: int) -> torch.Tensor:
    """r1 = a*b - r0 for the fixed party (the dealer expands every seed itself)."""
    shape = (len(b), channels)
    return random_ring(seed_a, shape) * b[:, None] - random_ring(seed_r0, shape)


class MovingProduct:
    """The moving party's side of one product."""

    def __init__(self, gradients: np.ndarray, warped: np.ndarray, basis: RingBasis, seed_a: bytes, seed_r0: bytes):
        channels = np.concatenate([gradients, warped[:, None]], axis=1).astype(np.float64)
        self.scales = np.maximum(np.abs(channels).max(axis=0), 1e-30)
        normalised = channels / self.scales
        self.bits = channel_bits(normalised, basis)
        self.d = gradients.shape[1]
        self.g_bar = encode(normalised, self.bits)
        self._shape = tuple(self.g_bar.shape)
        self._seed_r0 = seed_r0
        self.a = random_ring(seed_a, self._shape)

    def masked(self) -> torch.Tensor:
        """e = G' - a, sent to the fixed party."""
        return self.g_bar - self.a

    def share(self, f: torch.Tensor, basis: RingBasis) -> tuple[torch.Tensor, torch.Tensor]:
        """The moving party's shares (r0 is expanded here, while the fixed party computes its own)."""
        z0 = self.g_bar * f[:, None] + random_ring(self._seed_r0, self._shape)
        return basis.transpose_apply(z0[:, :self.d]), z0[:, self.d].sum()

    def finish(self, own: tuple[torch.Tensor, torch.Tensor], basis: RingBasis, fixed_r: torch.Tensor,
               fixed_cross: torch.Tensor, fixed_scale_value: float) -> tuple[np.ndarray, float]:
        """Reveal r = Phi^T (G * J) (gradient channels) and cross = sum I(T(x)) J(x) from both shares."""
        own_r, own_cross = own
        r = basis.decode(own_r + fixed_r, self.bits + FIXED_BITS)
        cross = decode((own_cross + fixed_cross).reshape(1), self.bits + FIXED_BITS)[0]
        r = r * self.scales[None, :self.d] * fixed_scale_value
        return r, float(cross * self.scales[self.d] * fixed_scale_value)

"""Ring Z_2^64 helpers on torch int64 (wrap-around arithmetic, as CrypTen does)."""
from __future__ import annotations

import secrets

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ppir.engine.basis import AffineBasis, BSplineBasis
from ppir.protocols.mpc.crypten_compat import FixedPointEncoder

BASIS_BITS = 16        # at 12, B-spline NCC under MPC took another path than clear (0.11 mm; method.md)


def new_seed() -> bytes:
    """A 256-bit secret seed."""
    return secrets.token_bytes(32)


def random_ring(seed: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform ring elements expanded from a secret seed with AES-256-CTR.

    Not CrypTen's ``generate_random_ring_element``: it draws from torch's Mersenne Twister, whose
    state a party can rebuild from a few hundred outputs, and a party does see raw mask values
    wherever the other party's data is zero (e.g. image background).
    """
    count = int(np.prod(shape))
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    out = np.empty(count + 2, dtype="<i8")  # update_into wants room for one more block
    encryptor.update_into(bytes(8 * count), out.view(np.uint8))
    return torch.from_numpy(out[:count].reshape(shape))


def encode(values: np.ndarray, bits: int) -> torch.Tensor:
    """Fixed-point encoding with ``bits`` fractional bits (CrypTen's encoder), rounded to the nearest step.

    CrypTen's encoder truncates towards zero, which biases every positive value by half a step on
    average; sums of many samples (NCC's covariance, a difference of two such sums) inherit the bias.
    Rounding first makes the encoder's truncation exact.
    """
    scaled = np.rint(np.ascontiguousarray(values, np.float64) * float(2 ** bits)) / float(2 ** bits)
    return FixedPointEncoder(precision_bits=bits).encode(torch.from_numpy(scaled))


def decode(ring: torch.Tensor, bits: int) -> np.ndarray:
    """Signed ring elements back to floats (exact int64 to float64, then scaled)."""
    return ring.to(torch.float64).numpy() / float(2 ** bits)


class RingBasis:
    """The public basis Phi encoded as integers, applied to additive shares over the ring.

    Columns are scaled by their largest magnitude (``scales``, computed identically by both
    parties from the same basis) and encoded with ``BASIS_BITS`` fractional bits.
    """

    def __init__(self, basis: AffineBasis | BSplineBasis):
        self._basis = basis
        self._magnitude = None
        if isinstance(basis, AffineBasis):
            self.scales = np.maximum(np.abs(basis.matrix).max(axis=0), 1e-30)
            self._dense = encode(basis.matrix / self.scales, BASIS_BITS)
        else:
            self.scales = np.ones(basis.control.n_points)
            weights = basis.support_weights
            self._weights = encode(weights, BASIS_BITS)
            self._index = torch.from_numpy(basis.phi.indices.astype(np.int64).reshape(basis.n_samples, -1))
            self._outputs = basis.control.n_points

    @property
    def outputs(self) -> int:
        """The number of basis functions (rows of Phi^T)."""
        return int(self._dense.shape[1]) if hasattr(self, "_dense") else int(self._outputs)

    def effective(self) -> AffineBasis | BSplineBasis:
        """The basis as the integers represent it: what the revealed results are exactly a product with."""
        if hasattr(self, "_dense"):
            return self._basis.with_matrix(decode(self._dense, BASIS_BITS) * self.scales)
        return self._basis.with_weights(decode(self._weights, BASIS_BITS))

    def transpose_apply(self, shares: torch.Tensor) -> torch.Tensor:
        """Phi_int^T shares for shares (N, C): (outputs, C), over the ring."""
        if hasattr(self, "_dense"):
            return self._dense.T @ shares
        out = torch.zeros((self._outputs, shares.shape[1]), dtype=torch.int64)
        flat = self._index.reshape(-1)
        for c in range(shares.shape[1]):
            out[:, c].index_add_(0, flat, (self._weights * shares[:, c:c + 1]).reshape(-1))
        return out

    def abs_transpose_apply(self, magnitudes: np.ndarray) -> np.ndarray:
        """|Phi'|^T magnitudes in floating point (for bounding the ring results); |Phi'| is cached."""
        if self._magnitude is None:
            if isinstance(self._basis, AffineBasis):
                self._magnitude = np.abs(self._basis.matrix / self.scales).T.copy()
            else:
                self._magnitude = abs(self._basis.phi).T.tocsr()
        return np.asarray(self._magnitude @ magnitudes)

    def decode(self, revealed: torch.Tensor, value_bits: int) -> np.ndarray:
        """Floats of Phi^T (values) from the revealed ring result whose values had ``value_bits``."""
        return decode(revealed, value_bits + BASIS_BITS) * self.scales[:, None]

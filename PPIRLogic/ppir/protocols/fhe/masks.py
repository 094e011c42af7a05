"""Masks and flooding noise from the operating system's CSPRNG."""
from __future__ import annotations

import os
import secrets

import numpy as np


def uniform(n: int, half_width: float) -> np.ndarray:
    """n floats uniform in [-half_width, half_width), 53 random bits each."""
    bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
    return (bits.astype(np.float64) * 2.0 ** -52 - 1.0) * half_width


def zero_mean_slots(n: int, half_width: float) -> np.ndarray:
    """n complex values, uniform real and imaginary parts, real parts shifted to sum to zero.

    A zero real mean keeps the constant coefficient of the encoded vector at zero.
    """
    real = uniform(n, half_width)
    return (real - real.mean()) + 1j * uniform(n, half_width)


def integer(bits: int) -> int:
    """Uniform integer in [0, 2**bits)."""
    return secrets.randbits(bits)


def symmetric_integer(half_width: int) -> int:
    """Uniform integer in [-half_width, half_width]."""
    return secrets.randbelow(2 * half_width + 1) - half_width


def symmetric_integers(n: int, half_width: int) -> list[int]:
    """n uniform integers in [-half_width, half_width]."""
    return [symmetric_integer(half_width) for _ in range(n)]


def uniform_residues(primes: list[int], n: int) -> np.ndarray:
    """A polynomial uniform over R_q in RNS form: (primes, n) residues, each uniform below its prime."""
    out = np.empty((len(primes), n), dtype=np.uint64)
    for row, prime in zip(out, primes):
        bits = np.uint64(prime.bit_length())
        filled = 0
        while filled < n:
            draw = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> (np.uint64(64) - bits)
            draw = draw[draw < np.uint64(prime)][:n - filled]
            row[filled:filled + len(draw)] = draw
            filled += len(draw)
    return out

"""Exact access to SEAL polynomials: RNS residues out of plaintexts and ciphertexts, and back in.

``sealapi`` reads a polynomial's residues but cannot write them. SEAL's own serialisation can: an
object saved uncompressed is a ``SEALHeader`` followed by its members, and ``load`` validates what
it reads (sizes, parameters, every residue below its prime). The packed release (``ppir.fhe.packed``)
needs this to add and remove masks exactly and to move flooding noise into the NTT domain, where
SEAL keeps CKKS plaintexts; SEAL itself does every transform.
"""
from __future__ import annotations

import struct
from functools import cache

import numpy as np
import tenseal.sealapi as seal

from ppir.protocols.fhe.seal_io import dump, load

_HEADER = struct.Struct("<HBBBBHQ")       # magic, header size, version major, minor, compression, reserved, size
_MAGIC = 0xA15E
_NO_COMPRESSION = 0


@cache
def _version() -> tuple[int, int, int]:
    """Header size and SEAL version, as this SEAL writes them."""
    magic, size, major, minor, *_ = _HEADER.unpack(dump(seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS))[:16])
    if magic != _MAGIC or size != _HEADER.size:
        raise RuntimeError("unexpected SEAL serialisation header")
    return size, major, minor


def _header(body: int) -> bytes:
    return _HEADER.pack(_MAGIC, *_version(), _NO_COMPRESSION, 0, _HEADER.size + body)


def _array(values: np.ndarray) -> bytes:
    """A serialised ``DynArray<uint64_t>``."""
    body = struct.pack("<Q", values.size) + np.ascontiguousarray(values, dtype="<u8").tobytes()
    return _header(len(body)) + body


def residues(obj: seal.Plaintext | seal.Ciphertext) -> np.ndarray:
    """All residues of a plaintext or ciphertext, in SEAL's order (polynomial, prime, coefficient)."""
    data = obj.dyn_array()
    return np.fromiter((data.at(i) for i in range(data.size())), dtype=np.uint64, count=data.size())


def plaintext(context: seal.SEALContext, parms_id: list[int], scale: float, values: np.ndarray) -> seal.Plaintext:
    """An NTT-form CKKS plaintext with the given residues (primes x coefficients, flattened)."""
    body = struct.pack("<4Q", *parms_id) + struct.pack("<Q", values.size) + struct.pack("<d", scale) + _array(values)
    return load(seal.Plaintext(), context, _header(len(body)) + body)


def to_ntt(context: seal.SEALContext, evaluator: seal.Evaluator, parms_id: list[int],
           coefficients: np.ndarray) -> np.ndarray:
    """NTT-domain residues of a polynomial given by its coefficient residues (primes, N).

    SEAL transforms ciphertexts only: the polynomial rides as the first component of a two-component
    ciphertext (the second is the constant 1, SEAL refuses a transparent one) and comes back out.
    """
    primes, n = coefficients.shape
    second = np.zeros_like(coefficients)
    second[:, 0] = 1
    members = (struct.pack("<4Q", *parms_id) + struct.pack("<B", 0) + struct.pack("<QQQ", 2, n, primes)
               + struct.pack("<d", 1.0) + struct.pack("<Q", 1)
               + _array(np.concatenate([coefficients.ravel(), second.ravel()])))
    ciphertext = load(seal.Ciphertext(), context, _header(len(members)) + members)
    evaluator.transform_to_ntt_inplace(ciphertext)
    return residues(ciphertext)[:primes * n].reshape(primes, n)


class Coefficients:
    """Coefficient residues of NTT-form plaintexts at a few positions, without reading all N residues per prime one
    by one (``residues`` costs a Python call per residue): the plaintext is added to an NTT-form ciphertext (0, 1)
    (kept per parameters and scale), SEAL moves the sum out of the NTT domain, and only the wanted coefficients of its
    first component are read. Exact: the same integers as the inverse NTT of ``residues``."""

    def __init__(self, context: seal.SEALContext, evaluator: seal.Evaluator):
        self._context, self._evaluator = context, evaluator
        self._templates: dict[tuple, seal.Ciphertext] = {}

    def _template(self, parms_id: list[int], scale: float) -> seal.Ciphertext:
        key = (tuple(parms_id), scale)
        if key not in self._templates:
            parms = self._context.get_context_data(parms_id).parms()
            primes, n = len(parms.coeff_modulus()), parms.poly_modulus_degree()
            data = np.zeros((2, primes, n), dtype=np.uint64)
            data[1] = 1                                                 # the NTT of the constant 1
            members = (struct.pack("<4Q", *parms_id) + struct.pack("<B", 1) + struct.pack("<QQQ", 2, n, primes)
                       + struct.pack("<d", scale) + struct.pack("<Q", 1) + _array(data.ravel()))
            self._templates[key] = load(seal.Ciphertext(), self._context, _header(len(members)) + members)
        return self._templates[key]

    def __call__(self, plain: seal.Plaintext, positions: list[int]) -> np.ndarray:
        """(primes, len(positions)) residues of the plaintext's coefficients at ``positions``."""
        template = self._template(plain.parms_id(), plain.scale)
        total, coefficients = seal.Ciphertext(), seal.Ciphertext()
        self._evaluator.add_plain(template, plain, total)
        self._evaluator.transform_from_ntt(total, coefficients)
        n, primes = coefficients.poly_modulus_degree(), coefficients.coeff_modulus_size()
        data = coefficients.dyn_array()
        return np.array([[data.at(j * n + i) for i in positions] for j in range(primes)], dtype=np.uint64)


def crt(values: list[int], primes: list[int]) -> int:
    """The integer modulo prod(primes) with the given residues (not centred)."""
    modulus, value = 1, 0
    for residue, prime in zip(values, primes, strict=True):
        step = (int(residue) - value) * pow(modulus, -1, prime) % prime
        value += modulus * step
        modulus *= prime
    return value


def add_residues(a: np.ndarray, b: np.ndarray, primes: list[int]) -> np.ndarray:
    """(a + b) mod p, row by row, for residues below primes < 2**63."""
    p = np.array(primes, dtype=np.uint64)[:, None]
    total = a + b
    return np.where(total >= p, total - p, total)


def subtract_residues(a: np.ndarray, b: np.ndarray, primes: list[int]) -> np.ndarray:
    """(a - b) mod p, row by row."""
    p = np.array(primes, dtype=np.uint64)[:, None]
    return np.where(a >= b, a - b, a + (p - b))

"""The fixed party's CKKS keys: encrypt its normalised columns, release flooded constant coefficients.

The secret key never leaves this object. The moving party receives the parameter set and the Galois
keys of the rotations a rotate-and-sum needs: no public key (it never encrypts), no relinearisation
keys (it never multiplies ciphertexts).

Release, per returned ciphertext: decrypt, take the constant coefficient exactly (CRT over the data
primes; it is N**-1 times the sum of the NTT values), add uniform flooding, return it as an integer.
Never a raw decryption: SEAL's CKKS is open to key recovery from those (Li-Micciancio 2021).
"""
from __future__ import annotations

import numpy as np
import tenseal.sealapi as seal

from ..net.channel import PeerError
from . import masks, params
from .seal_io import context, dump, load, parameters, rotation_elements


class FixedKeys:
    """Key owner: encrypts its columns once per sample set, releases masked sums with flooding."""

    def __init__(self):
        self._parms = parameters()
        self._context = context(self._parms)
        keygen = seal.KeyGenerator(self._context)
        self._secret = keygen.secret_key()
        self._galois = dump(keygen.create_galois_keys(rotation_elements()))
        self._encoder = seal.CKKSEncoder(self._context)
        self._encryptor = seal.Encryptor(self._context, self._secret)
        self._decryptor = seal.Decryptor(self._context, self._secret)
        self._primes = [m.value() for m in self._parms.coeff_modulus()][:-1]
        self._chunks = 0
        self.released = 0

    def public_bundle(self) -> dict[str, bytes]:
        """What the moving party needs to compute on the ciphertexts: no secret key."""
        return {"parms": dump(self._parms), "galois": self._galois}

    def encrypt(self, columns: np.ndarray) -> list[bytes]:
        """Ciphertexts of columns (q, N) with |values| <= 1, chunk by chunk: q * ceil(N / slots) blobs."""
        if columns.size and np.abs(columns).max() > 1.0:
            raise ValueError("columns must be normalised to [-1, 1]")
        blobs = []
        for column in columns:
            for lo in range(0, columns.shape[1], params.SLOTS):
                plain = seal.Plaintext()
                self._encoder.encode(column[lo:lo + params.SLOTS].tolist(), params.DELTA_FIXED, plain)
                blobs.append(dump(self._encryptor.encrypt_symmetric(plain)))
        self._chunks = -(-columns.shape[1] // params.SLOTS)
        return blobs

    def release(self, blobs: list[bytes]) -> list[int]:
        """The flooded constant coefficient of each masked ciphertext (integers, scale 2**136)."""
        if self.released + len(blobs) > params.MAX_RELEASED:
            raise PeerError(f"the session's decryption budget ({params.MAX_RELEASED} values) is exhausted")
        flood = params.flood_width(self._chunks)
        values = []
        for blob in blobs:
            ciphertext = load(seal.Ciphertext(), self._context, blob)
            if (ciphertext.size() != 2 or ciphertext.coeff_modulus_size() != len(self._primes)
                    or ciphertext.scale != 2.0 ** params.PRODUCT_BITS):
                raise PeerError("a returned ciphertext is not the product the protocol computes")
            plain = seal.Plaintext()
            self._decryptor.decrypt(ciphertext, plain)
            values.append(self._constant_coefficient(plain) + masks.symmetric_integer(flood))
        self.released += len(blobs)
        return values

    def _constant_coefficient(self, plain: seal.Plaintext) -> int:
        """Coefficient 0 of an NTT-form plaintext, centred in (-q/2, q/2]."""
        n = params.POLY_DEGREE
        residues = np.array([plain.data(i) for i in range(plain.coeff_count())], dtype=np.uint64)
        residues = residues.reshape(len(self._primes), n)
        modulus, value = 1, 0
        for prime, row in zip(self._primes, residues):
            coefficient = int(row.astype(object).sum()) * pow(n, -1, prime) % prime
            # CRT: extend value (mod modulus) to mod modulus * prime
            step = (coefficient - value) * pow(modulus, -1, prime) % prime
            value += modulus * step
            modulus *= prime
        return value - modulus if value > modulus // 2 else value

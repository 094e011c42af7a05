"""The fixed party's CKKS keys: encrypt its normalised columns, release flooded decryptions.

The secret key never leaves this object. The moving party receives the parameter set, the Galois
keys of the rotations a rotate-and-sum needs, and the public key (it encrypts zeros only, to
re-randomise what it returns); no relinearisation keys (it never multiplies ciphertexts).

Release of a value: decrypt, take the constant coefficient exactly (CRT over the data primes; it is
N**-1 times the sum of the NTT values), add uniform flooding, return it as an integer. Release of a
packed ciphertext: decrypt, add a polynomial of uniform flooding to every coefficient (moved into
the NTT domain by SEAL), return the residues. Never a raw decryption: SEAL's CKKS is open to key
recovery from those (Li-Micciancio 2021).
"""
from __future__ import annotations

import numpy as np
import tenseal.sealapi as seal

from ppir.protocols.fhe import masks, params, seal_raw
from ppir.protocols.fhe.packed import Folding
from ppir.protocols.fhe.seal_io import context, dump, load, parameters, rotation_elements
from ppir.protocols.net.channel import PeerError


class FixedKeys:
    """Key owner: encrypts its columns once per sample set, releases masked sums with flooding."""

    def __init__(self):
        self._parms = parameters()
        self._context = context(self._parms)
        keygen = seal.KeyGenerator(self._context)
        self._secret = keygen.secret_key()
        self._galois = dump(keygen.create_galois_keys(rotation_elements()))
        public = seal.PublicKey()
        keygen.create_public_key(public)
        self._public = dump(public)
        self._encoder = seal.CKKSEncoder(self._context)
        self._evaluator = seal.Evaluator(self._context)
        self._encryptor = seal.Encryptor(self._context, self._secret)
        self._decryptor = seal.Decryptor(self._context, self._secret)
        self._primes = [m.value() for m in self._parms.coeff_modulus()][:-1]
        self._chunks = 0
        self._folding = Folding(self._context, self._evaluator, self._primes)
        self.released = 0

    @property
    def chunks(self) -> int:
        """Ciphertexts per column of the last encryption (its samples over the slots)."""
        return self._chunks

    def public_bundle(self) -> dict[str, bytes]:
        """What the moving party needs to compute on the ciphertexts: no secret key."""
        return {"parms": dump(self._parms), "galois": self._galois, "public": self._public}

    def encrypt(self, columns: np.ndarray, scale: float = params.DELTA_FIXED) -> list[bytes]:
        """Ciphertexts of columns (q, N) with |values| <= 1, chunk by chunk: q * ceil(N / slots) blobs."""
        if columns.size and np.abs(columns).max() > 1.0:
            raise ValueError("columns must be normalised to [-1, 1]")
        blobs = []
        for column in columns:
            for lo in range(0, columns.shape[1], params.SLOTS):
                plain = seal.Plaintext()
                self._encoder.encode(column[lo:lo + params.SLOTS].tolist(), scale, plain)
                blobs.append(dump(self._encryptor.encrypt_symmetric(plain)))
        self._chunks = -(-columns.shape[1] // params.SLOTS)
        return blobs

    def release(self, blobs: list[bytes], noise: list[int]) -> list[int]:
        """The flooded constant coefficient of each masked ciphertext plus ``noise`` (integers, scale 2**136)."""
        self._spend(len(blobs))
        flood = params.flood_width(self._chunks)
        return [self._constant_coefficient(self._decrypt(blob, params.PRODUCT_BITS)) + masks.symmetric_integer(flood)
                + extra for blob, extra in zip(blobs, noise, strict=True)]

    def release_packed(self, blobs: list[bytes], widths: list[int], noise: list[list[int]]) -> np.ndarray:
        """Residues (ciphertexts, primes * N) of each decryption plus its own uniform flooding polynomial and
        ``noise`` (integer coefficients per ciphertext: the disclosure policy's Gaussian noise)."""
        self._spend(len(blobs))
        released = []
        for blob, width, extra in zip(blobs, widths, noise, strict=True):
            plain = self._decrypt(blob, params.PACKED_PRODUCT_BITS)
            noise_coefficients = [u + e for u, e in zip(masks.symmetric_integers(params.POLY_DEGREE, width), extra,
                                                        strict=True)]
            flood = [[value % prime for value in noise_coefficients] for prime in self._primes]
            noise = seal_raw.to_ntt(self._context, self._evaluator, plain.parms_id(),
                                    np.array(flood, dtype=np.uint64))
            released.append(seal_raw.add_residues(seal_raw.residues(plain).reshape(noise.shape), noise, self._primes))
        return np.array(released).reshape(len(blobs), -1)

    def release_periodic(self, blobs: list[bytes], p: int, width: int, noise: list[list[int]]) -> list[list[int]]:
        """Per padded ciphertext, the P integers of its period-P part (``ppir.fhe.packed``: c_0 and c_t - c_(2P-t) of
        the coefficients at multiples of N / 2P, exactly, modulo q and centred), each plus uniform flooding of
        half-width ``width`` and ``noise`` (the policy's, P integers per ciphertext). Nothing else of the decryption
        leaves: the other coefficients are the moving party's partial sums."""
        self._spend(len(blobs))
        q = 1
        for prime in self._primes:
            q *= prime
        released = []
        for blob, extra in zip(blobs, noise, strict=True):
            plain = self._decrypt(blob, params.PACKED_PRODUCT_BITS)
            values = [v - q if v > q // 2 else v for v in self._folding.plaintext(plain, p)]
            released.append([v + masks.symmetric_integer(width) + e for v, e in zip(values, extra, strict=True)])
        return released

    def _spend(self, count: int) -> None:
        if self.released + count > params.MAX_RELEASED:
            raise PeerError(f"the session's decryption budget ({params.MAX_RELEASED} releases) is exhausted")
        self.released += count

    def _decrypt(self, blob: bytes, scale_bits: int) -> seal.Plaintext:
        ciphertext = load(seal.Ciphertext(), self._context, blob)
        if (ciphertext.size() != 2 or ciphertext.coeff_modulus_size() != len(self._primes)
                or ciphertext.scale != 2.0 ** scale_bits):
            raise PeerError("a returned ciphertext is not the product the protocol computes")
        plain = seal.Plaintext()
        self._decryptor.decrypt(ciphertext, plain)
        return plain

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

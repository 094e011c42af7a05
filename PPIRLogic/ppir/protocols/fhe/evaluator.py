"""The moving party's homomorphic work: products of its weights with the encrypted fixed columns.

For outputs k = (column a_k, weight row b_k) it computes Enc(sum_x w_b(x) C_a(x)) chunk by chunk
(plaintext x ciphertext products, accumulated) and sums the slots with log2(slots) rotations, so
the sum sits in every slot, i.e. in the constant coefficient. It then adds masks it keeps: a uniform
integer U to the constant coefficient (hides the sum) and a complex per-slot V with zero real mean
(smudges the error in all other coefficients, leaving the constant one alone). Every ciphertext it
returns is first re-randomised with an encryption of zero under the fixed party's public key.
"""
from __future__ import annotations

import math

import numpy as np
import tenseal.sealapi as seal

from ppir.protocols.fhe import masks, params
from ppir.protocols.fhe.seal_io import context, dump, load


class MovingEvaluator:
    """Holds the public context and the current sample set's encrypted columns."""

    def __init__(self, bundle: dict[str, bytes]):
        parms = load(seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS), None, bundle["parms"])
        self.context = context(parms)
        self.galois = load(seal.GaloisKeys(), self.context, bundle["galois"])
        self.encoder = seal.CKKSEncoder(self.context)
        self.evaluator = seal.Evaluator(self.context)
        self._encryptor = seal.Encryptor(self.context, load(seal.PublicKey(), self.context, bundle["public"]))
        self.primes = [m.value() for m in parms.coeff_modulus()][:-1]
        self._columns: list[list[seal.Ciphertext]] = []

    def set_columns(self, blobs: list[bytes], n_columns: int) -> None:
        """The fixed party's encrypted columns, in ``FixedKeys.encrypt`` order."""
        if n_columns < 1 or len(blobs) % n_columns:
            raise ValueError("the encrypted columns do not split evenly")
        chunks = len(blobs) // n_columns
        cts = [load(seal.Ciphertext(), self.context, blob) for blob in blobs]
        self._columns = [cts[a * chunks:(a + 1) * chunks] for a in range(n_columns)]

    def masked_sums(self, weights: np.ndarray, outputs: list[tuple[int, int]]) -> dict[int, tuple[bytes, int]]:
        """Masked ciphertexts of sum_x weights[b] * C_a for (a, b) in outputs, with the masks to remove.

        Keyed by position in ``outputs``; an output whose weights all encode to zero (below the
        encoding's precision) is left out: its sum is 0. Each weight row must have l1 norm <= 1
        (the bound the fixed party's flooding assumes).
        """
        return self.masked_combinations(weights, [[output] for output in outputs])

    def masked_combinations(self, weights: np.ndarray, outputs: list[list[tuple[int, int]]]) -> dict[int, tuple[bytes, int]]:
        """``masked_sums`` for outputs that are sums of terms: output k is sum over its (a, b) of
        sum_x weights[b] * C_a. The l1 norms of each output's weight rows must add up to at most 1; the
        error bound counts every term's products.
        """
        mass = np.abs(weights).sum(axis=1)
        if max((sum(mass[b] for _, b in terms) for terms in outputs), default=0.0) > 1.0 + 1e-9:
            raise ValueError("each output's weights must have l1 norm <= 1 in total")
        acc: dict[int, seal.Ciphertext] = {}
        for chunk in range(len(self._columns[0])):
            plains = self._encode_chunk(weights, chunk, {b for terms in outputs for _, b in terms})
            for k, terms in enumerate(outputs):
                for a, b in terms:
                    if b in plains:
                        product = seal.Ciphertext()
                        self.evaluator.multiply_plain(self._columns[a][chunk], plains[b], product)
                        acc[k] = self.add(acc.get(k), product)
        terms_per_output = max((len(terms) for terms in outputs), default=1)
        masked = {}
        for k, ciphertext in sorted(acc.items()):
            self.rotate_and_sum(ciphertext)
            self.rerandomise(ciphertext)
            mask = self._add_mask(ciphertext, len(self._columns[0]) * terms_per_output)
            masked[k] = (dump(ciphertext), mask)
        return masked

    def _encode_chunk(self, weights: np.ndarray, chunk: int, rows: set[int]) -> dict[int, seal.Plaintext]:
        """Plaintexts of the chunk's weights for ``rows``, skipping those that encode to zero."""
        lo = chunk * params.SLOTS
        plains = {b: self.encode(weights[b, lo:lo + params.SLOTS], params.DELTA_MOVING) for b in sorted(rows)}
        return {b: plain for b, plain in plains.items() if plain is not None}

    def encode(self, values: np.ndarray, scale: float) -> seal.Plaintext | None:
        """The plaintext of ``values``, or None when it is zero (SEAL refuses a product with a zero plaintext)."""
        if not np.any(values):
            return None
        plain = seal.Plaintext()
        self.encoder.encode(values.tolist(), scale, plain)     # a list converts faster than an array
        return None if plain.is_zero() else plain

    def add(self, total: seal.Ciphertext | None, term: seal.Ciphertext | None) -> seal.Ciphertext | None:
        """total + term, either of which may be None (zero); adds in place into ``total``."""
        if total is None or term is None:
            return term if total is None else total
        self.evaluator.add_inplace(total, term)
        return total

    @staticmethod
    def unmask(released: int, removed: int) -> float:
        """The sum R' from a released constant coefficient and the mask that was added to it."""
        return math.ldexp(float(released - removed), -params.PRODUCT_BITS)

    @property
    def columns(self) -> list[list[seal.Ciphertext]]:
        """The fixed party's encrypted columns, chunk by chunk."""
        return self._columns

    def rotate_and_sum(self, ciphertext: seal.Ciphertext) -> None:
        """Every slot becomes the sum of all slots (log2(slots) rotations)."""
        step = params.SLOTS // 2
        while step:
            rotated = seal.Ciphertext()
            self.evaluator.rotate_vector(ciphertext, step, self.galois, rotated)
            self.evaluator.add_inplace(ciphertext, rotated)
            step //= 2

    def rotate_left(self, ciphertext: seal.Ciphertext, steps: int) -> seal.Ciphertext:
        """The ciphertext rotated left by ``steps`` slots, one power-of-two rotation per set bit."""
        out = ciphertext
        for bit in range(steps.bit_length()):
            if steps >> bit & 1:
                rotated = seal.Ciphertext()
                self.evaluator.rotate_vector(out, 1 << bit, self.galois, rotated)
                out = rotated
        return out

    def zero(self, scale: float) -> seal.Ciphertext:
        """A fresh public-key encryption of zero at ``scale``."""
        zero, encrypted = seal.Plaintext(), seal.Ciphertext()
        self.encoder.encode(0.0, scale, zero)
        self._encryptor.encrypt(zero, encrypted)
        return encrypted

    def rerandomise(self, ciphertext: seal.Ciphertext) -> None:
        """Add a fresh public-key encryption of zero at the ciphertext's scale."""
        zero, encrypted = seal.Plaintext(), seal.Ciphertext()
        self.encoder.encode(0.0, ciphertext.scale, zero)
        self._encryptor.encrypt(zero, encrypted)
        self.evaluator.add_inplace(ciphertext, encrypted)

    def _add_mask(self, ciphertext: seal.Ciphertext, products: int) -> int:
        """Add V (all slots) and U (constant coefficient); returns U. ``products``: plaintext products per slot
        summed into the ciphertext (the chunks, times the terms of a combination)."""
        plain = seal.Plaintext()
        v = masks.zero_mean_slots(params.SLOTS, params.slot_mask_width(products))
        self.encoder.encode(v.tolist(), ciphertext.scale, plain)
        self.evaluator.add_plain_inplace(ciphertext, plain)
        u = masks.integer(params.MASK_RANGE_BITS)
        # a constant encodes exactly as round(value * scale): add U in 53-bit pieces, each a double
        for shift in range(0, params.MASK_RANGE_BITS, 53):
            piece = (u >> shift) & ((1 << 53) - 1)
            if piece:
                self.encoder.encode(math.ldexp(float(piece), shift - params.PRODUCT_BITS), ciphertext.scale, plain)
                self.evaluator.add_plain_inplace(ciphertext, plain)
        return u

"""The one CKKS parameter set, its security level, and the noise bounds the protocol relies on.

Ring degree N = 8192 with a 218-bit modulus (three 60-bit primes and a 38-bit special prime) is the
largest modulus the HomomorphicEncryption.org standard allows for 128-bit classical security with a
ternary secret; SEAL checks it (``sec_level_type.tc128``) when the context is built.

Scales (no rescaling anywhere: one plaintext product, then additions and rotations): Enc(C) at
DELTA_FIXED = 2**88, moving weights at DELTA_MOVING = 2**48, so the product's scale is 2**136.

Normalisation: the fixed columns are divided by public scales so |C| <= 1; the moving party divides
each weight vector by its l1 norm, so every sum R' = sum_x w(x) C(x) has |R'| <= 1, i.e. at most
2**136 as the constant coefficient of the product polynomial.

Release of single values (affine; ``fixed.py``/``moving.py``): the moving party adds a uniform
integer U in [0, 2**177) to the constant coefficient (statistical distance <= 2**136 / 2**177 =
2**-41 per value) and a per-slot mask V that smudges the error in every other coefficient; the
fixed party returns only the constant coefficient, exactly (CRT), plus uniform flooding 2**42
times wider than the error bound.

Packed release (B-spline; ``packed.py``): scales 2**110 x 2**60 = 2**170; the moving party adds a
polynomial uniform over R_q (a one-time pad: the fixed party sees nothing of the result); the fixed
party floods every coefficient with uniform noise 2**42 * N times wider than the error bound.

Periodic release (Mattes MI; ``packed.py``): the same scales and pad; the fixed party returns only the P
integers of the decryption's period-P part, each flooded 2**42 * 2P times wider than its error bound.

Every returned ciphertext is re-randomised first with an encryption of zero under the fixed party's
public key, so its second component says nothing of the moving party's weights (RLWE).
Each release (a value, or a packed ciphertext) is within 2**-42 of one that does not depend on the
error; at most MAX_RELEASED per session: <= 2**-30 over a session.
"""
from __future__ import annotations

import math

from ppir.common.errors import PPIRError

POLY_DEGREE = 8192
SLOTS = POLY_DEGREE // 2
COEFF_BITS = (60, 60, 60, 38)
SECURITY_BITS = 128
DELTA_FIXED_BITS = 88
DELTA_MOVING_BITS = 48
DELTA_FIXED = 2.0 ** DELTA_FIXED_BITS
DELTA_MOVING = 2.0 ** DELTA_MOVING_BITS
PRODUCT_BITS = DELTA_FIXED_BITS + DELTA_MOVING_BITS

MASK_BITS = 41
MASK_RANGE_BITS = PRODUCT_BITS + MASK_BITS     # 177 < log2(q / 2) = 179
FLOOD_BITS = 42
SLOT_MASK_BITS = 60
MAX_RELEASED = 2 ** 12

PACKED_DELTA_FIXED_BITS = 110
PACKED_DELTA_MOVING_BITS = 60
PACKED_DELTA_FIXED = 2.0 ** PACKED_DELTA_FIXED_BITS
PACKED_DELTA_MOVING = 2.0 ** PACKED_DELTA_MOVING_BITS
PACKED_PRODUCT_BITS = PACKED_DELTA_FIXED_BITS + PACKED_DELTA_MOVING_BITS   # 170 < log2(q / 2) - 1

# Error bounds per polynomial coefficient, in integer units (the product's scale is 2**136):
FRESH_COEFF = 6 * 3.2 + 0.5    # SEAL clips its Gaussian at 6 sigma; encoding J rounds by 1/2
KEYSWITCH_COEFF = 2.0 ** 44    # per rotation: 3 * N * 2**60 * 19.2 / 2**38 ~ 2**41, with margin
RERANDOMISE_COEFF = FRESH_COEFF * (2 * POLY_DEGREE + 1)   # Enc_pk(0) decrypts to e1 - e u + e2 s
ROTATIONS = int(math.log2(SLOTS))


def coefficient_error_bound(products: int, rotations: int = ROTATIONS, copies: int = SLOTS,
                            delta_moving: float = DELTA_MOVING, mass: float = 1.0) -> float:
    """|error| of any coefficient of a released ciphertext (the l1 norms of the weights of all its
    plaintext products add up to at most ``mass``).

    (e * p)_i <= max|e| * sum|p_j| with sum|p_j| <= 2 * delta_moving * |w|_1 + N / 2 per product;
    rotations permute coefficients and add key-switching error; a rotate-and-sum adds ``copies``
    rotated images; the re-randomisation adds its own.
    """
    product = FRESH_COEFF * (2 * delta_moving * mass + products * POLY_DEGREE / 2)
    return copies * (product + rotations * KEYSWITCH_COEFF) + RERANDOMISE_COEFF


def flood_width(chunks: int) -> int:
    """Half-width (integer units) of the fixed party's uniform flooding of a released coefficient."""
    return int(2.0 ** FLOOD_BITS * coefficient_error_bound(chunks))


def packed_flood_width(products: int, rotations: int, copies: int, mass: float) -> int:
    """Half-width of the flooding of every coefficient of a packed release: 2**-42 over all N of them."""
    bound = coefficient_error_bound(products, rotations, copies, PACKED_DELTA_MOVING, mass)
    return int(2.0 ** FLOOD_BITS * POLY_DEGREE * bound)


def slot_mask_width(chunks: int) -> float:
    """Half-width (value units) of the per-slot mask: 2**60 times the error bound of any slot."""
    return 2.0 ** SLOT_MASK_BITS * POLY_DEGREE * coefficient_error_bound(chunks) / 2.0 ** PRODUCT_BITS


def describe() -> dict:
    """The parameter set as recorded in reports and agreed in the session handshake."""
    return {"scheme": "ckks", "poly_degree": POLY_DEGREE, "coeff_bits": list(COEFF_BITS),
            "security_bits": SECURITY_BITS, "delta_fixed_bits": DELTA_FIXED_BITS,
            "delta_moving_bits": DELTA_MOVING_BITS, "packed_delta_bits": [PACKED_DELTA_FIXED_BITS,
                                                                            PACKED_DELTA_MOVING_BITS],
            "mask_bits": MASK_BITS, "flood_bits": FLOOD_BITS, "max_released": MAX_RELEASED}


def check_settings(settings) -> None:
    """Refuse settings whose products could need more decryptions than one session may release."""
    d, products = 3, settings.max_iterations + 1
    per_product, per_bspline_product = d * (d + 1) + 1, d + 1
    if settings.metric == "mi":     # packed: one release per histogram row, one per gradient channel
        per_product = per_bspline_product = settings.histogram_bins + d
    releases = len(settings.levels) * products * per_product
    if settings.transform == "bspline":
        releases += len(settings.stage_levels("bspline")) * products * per_bspline_product
    if releases > MAX_RELEASED:
        raise PPIRError(f"FHE: these levels and {settings.max_iterations} iterations per level could need "
                        f"{releases} decryptions, over the session budget of {MAX_RELEASED}; lower --max-iterations")

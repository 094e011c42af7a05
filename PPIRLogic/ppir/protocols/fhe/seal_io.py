"""SEAL objects to bytes and back (``sealapi`` serialises through files only)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import tenseal.sealapi as seal

from ppir.protocols.fhe.params import COEFF_BITS, POLY_DEGREE

_SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def dump(obj) -> bytes:
    """Bytes of a SEAL object (or a ``Serializable``) with SEAL's own compressed format."""
    with tempfile.TemporaryDirectory(dir=_SCRATCH) as tmp:
        path = os.path.join(tmp, "obj")
        obj.save(path)
        return Path(path).read_bytes()


def load(obj, context, data: bytes):
    """Fill ``obj`` (a fresh SEAL object) from ``data``; ``context`` is None for parameters."""
    with tempfile.TemporaryDirectory(dir=_SCRATCH) as tmp:
        path = os.path.join(tmp, "obj")
        Path(path).write_bytes(data)
        if context is None:
            obj.load(path)
        else:
            obj.load(context, path)
    return obj


def parameters() -> seal.EncryptionParameters:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(POLY_DEGREE)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(POLY_DEGREE, list(COEFF_BITS)))
    return parms


def context(parms: seal.EncryptionParameters) -> seal.SEALContext:
    """A SEAL context that refuses parameters below 128-bit security."""
    ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():
        raise ValueError("the CKKS parameters are not valid for 128-bit security")
    return ctx


def rotation_elements() -> list[int]:
    """Galois elements of the left rotations by 1, 2, 4, ... N/4 slots (all a rotate-and-sum needs)."""
    return [pow(3, 1 << i, 2 * POLY_DEGREE) for i in range((POLY_DEGREE // 2).bit_length() - 1)]

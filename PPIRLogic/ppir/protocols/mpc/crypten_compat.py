"""CrypTen 0.4.1 on current torch.

``import crypten`` imports ``crypten.nn``, whose ONNX converter needs modules that torch 2.x no
longer has (``torch.onnx.symbolic_registry``) and the ``onnx`` package. PPIR uses none of CrypTen's
neural-network layer, so an empty ``crypten.nn`` is registered before the import; the MPC core
(encoder, ring arithmetic, random ring elements) is unaffected.
"""
from __future__ import annotations

import sys
import types

sys.modules.setdefault("crypten.nn", types.ModuleType("crypten.nn"))

from crypten.common.rng import generate_random_ring_element  # noqa: E402
from crypten.encoder import FixedPointEncoder  # noqa: E402

__all__ = ["FixedPointEncoder", "generate_random_ring_element"]

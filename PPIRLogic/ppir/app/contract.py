"""The settings contract with the Slicer module: every choice a user makes, declared once.

The command line takes its choices from here, and so does the Slicer module (which imports this
module in Slicer's own Python: standard library only, no protocol library is imported).
"""
from __future__ import annotations

from ppir.engine.settings import INITIALIZATIONS, METRICS, SAMPLINGS, TRANSFORMS, Settings
from ppir.protocols import registry

PROTOCOLS = registry.names()
PRIVATE_PROTOCOLS = registry.names(private=True)
DEALER_PROTOCOLS = tuple(name for name, protocol in registry.PROTOCOLS.items() if protocol.needs_dealer)
SERVING_ROLES = ("fixed", "dealer")
SHARES = ("none", "transform", "warped")
DEFAULTS = Settings()

__all__ = ["DEALER_PROTOCOLS", "DEFAULTS", "INITIALIZATIONS", "METRICS", "PRIVATE_PROTOCOLS", "PROTOCOLS", "SAMPLINGS",
           "SERVING_ROLES", "SHARES", "TRANSFORMS"]

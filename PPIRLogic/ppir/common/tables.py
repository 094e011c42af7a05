"""Dataclasses from untrusted tables (a peer's message, a TOML file): unknown names and wrong types are errors."""
from __future__ import annotations

from dataclasses import fields

from ppir.common.errors import PPIRError


def from_table(cls, values, what: str):
    """``cls(**values)``, or PPIRError naming ``what`` and the problem (not a table, unknown names, bad types)."""
    if not isinstance(values, dict):
        raise PPIRError(f"{what}: expected a table")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PPIRError(f"{what}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except TypeError as err:
        raise PPIRError(f"{what}: {err}") from None

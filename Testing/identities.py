"""Test parties as the user guide sets them up: each makes its own identity, then they exchange certificates."""
from __future__ import annotations

from pathlib import Path

from ppir.protocols.net import certs, trust


def party(folder: Path, name: str, **options) -> Path:
    """One party's own identity folder (its key never leaves it)."""
    certs.create_identity(folder, name, hosts=["127.0.0.1"], **options)
    return folder


def introduce(a: Path, a_role: str, b: Path, b_role: str) -> None:
    """Each of two parties trusts the other's certificate for the other's role (the out-of-band exchange)."""
    trust.trust_peer(a, b / certs.CERT, b_role)
    trust.trust_peer(b, a / certs.CERT, a_role)


def parties(folder: Path, roles=("moving", "fixed", "dealer")) -> dict[str, Path]:
    """One identity per role under ``folder``, every pair introduced."""
    made = {role: party(folder / role, f"test {role}") for role in roles}
    for i, a in enumerate(roles):
        for b in roles[i + 1:]:
            introduce(made[a], a, made[b], b)
    return made

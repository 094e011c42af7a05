"""Which peers a party accepts: pinned certificates, or a CA plus the exact subject expected, per role.

The list lives in the party's identity folder as ``trust.json`` with copies of the certificates in
``trusted/``. TLS checks possession of the key (the handshake) and, on a serving party, the chain to
one of these certificates; ``Trust.identify`` then decides which role, if any, the peer may play.
"""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

from ppir.common.errors import PPIRError
from ppir.common.files import write_atomically
from ppir.protocols.net.certs import describe, fingerprint, normalize_fingerprint, read_certificate

ROLES = ("moving", "fixed", "dealer")
TRUST_FILE = "trust.json"


class UntrustedPeer(PPIRError):
    """A peer whose identity this party has not been told to accept."""

    exit_code = 3


@dataclass(frozen=True)
class Peer:
    """An authenticated peer: its certificate's fingerprint and subject, and the roles it may play here."""

    fingerprint: str
    subject: str
    roles: tuple[str, ...]


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise PPIRError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")


@dataclass
class Trust:
    """Pinned peers (role, fingerprint, certificate) and authorities (role, CA certificate, subject)."""

    peers: list[tuple[str, str, x509.Certificate]]
    authorities: list[tuple[str, x509.Certificate, str]]

    @classmethod
    def load(cls, folder: str | Path) -> "Trust":
        path = Path(folder) / TRUST_FILE
        if not path.is_file():
            return cls([], [])
        try:
            table = json.loads(path.read_text())
            peers = [(p["role"], normalize_fingerprint(p["fingerprint"]),
                      read_certificate(Path(folder) / p["certificate"])) for p in table.get("peers", [])]
            authorities = [(a["role"], read_certificate(Path(folder) / a["certificate"]), a["subject"])
                           for a in table.get("authorities", [])]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise PPIRError(f"trust list '{path}' is damaged ({err}); recreate it with `ppir certs trust`") from None
        for role, fp, cert in peers:
            if fingerprint(cert) != fp:
                raise PPIRError(f"trust list '{path}': the stored {role} certificate no longer has fingerprint {fp}")
        return cls(peers, authorities)

    def knows(self, role: str) -> bool:
        return any(r == role for r, _, _ in self.peers) or any(r == role for r, _, _ in self.authorities)

    def anchors(self, roles: tuple[str, ...]) -> str:
        """PEM bundle of the certificates that may anchor a peer of these roles (for the TLS verifier)."""
        certs = [c for r, _, c in self.peers if r in roles] + [c for r, c, _ in self.authorities if r in roles]
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)

    def identify(self, der: bytes, roles: tuple[str, ...]) -> Peer:
        """The peer behind certificate ``der`` if it may play one of ``roles`` here, else UntrustedPeer."""
        cert = x509.load_der_x509_certificate(der)
        fp, subject = fingerprint(cert), cert.subject.rfc4514_string()
        now = datetime.datetime.now(datetime.timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise UntrustedPeer(f"the peer's certificate {describe(cert)} is not valid now (valid from "
                                f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})")
        allowed = {r for r, pinned, _ in self.peers if r in roles and pinned == fp}
        allowed |= {r for r, ca, expected in self.authorities
                    if r in roles and expected == subject and _issued_by(cert, ca)}
        if not allowed:
            raise UntrustedPeer(f"the peer's identity {describe(cert)} is not among the {' or '.join(roles)} "
                                "parties this party trusts; if it is expected, check that fingerprint with the "
                                "other site (by phone) and add its certificate with `ppir certs trust`")
        return Peer(fp, subject, tuple(r for r in roles if r in allowed))


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """RFC 5280 path validation of ``cert`` directly under ``ca`` (cryptography's verifier), valid now.

    The web-PKI profile, except that a subject alternative name is optional: parties are named by subject.
    """
    leaf = ExtensionPolicy.webpki_defaults_ee().may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC,
                                                                None)
    verifier = (PolicyBuilder().store(Store([ca])).time(datetime.datetime.now(datetime.timezone.utc))
                .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=leaf)
                .build_client_verifier())
    try:
        verifier.verify(cert, [])
        return True
    except VerificationError:
        return False


def _save(folder: Path, trust_table: dict) -> None:
    write_atomically(folder / TRUST_FILE, lambda tmp: Path(tmp).write_text(json.dumps(trust_table, indent=2)))


def _table(folder: Path) -> dict:
    path = folder / TRUST_FILE
    return json.loads(path.read_text()) if path.is_file() else {"peers": [], "authorities": []}


def _store_copy(folder: Path, cert: x509.Certificate, label: str) -> str:
    (folder / "trusted").mkdir(parents=True, exist_ok=True)
    relative = f"trusted/{label}-{fingerprint(cert).replace(':', '')[:16].lower()}.pem"
    pem = cert.public_bytes(serialization.Encoding.PEM)
    write_atomically(folder / relative, lambda tmp: Path(tmp).write_bytes(pem))
    return relative


def trust_peer(folder: Path, certificate: Path, role: str, expected: str | None = None) -> str:
    """Pin a peer's certificate for ``role``; with ``expected``, only if its fingerprint is that one."""
    _check_role(role)
    cert = read_certificate(certificate)
    fp = fingerprint(cert)
    if expected is not None and normalize_fingerprint(expected) != fp:
        raise PPIRError(f"certificate '{certificate}' has fingerprint {fp}, not the {normalize_fingerprint(expected)} "
                        "you were given: do not trust it; ask the other site again")
    if cert.extensions and _is_ca(cert):
        raise PPIRError(f"'{certificate}' is a CA certificate: trust it with --subject (the peer's exact subject)")
    table = _table(folder)
    table["peers"] = [p for p in table["peers"] if not (p["role"] == role and p["fingerprint"] == fp)]
    table["peers"].append({"role": role, "fingerprint": fp, "subject": cert.subject.rfc4514_string(),
                           "certificate": _store_copy(folder, cert, role)})
    _save(folder, table)
    return fp


def trust_authority(folder: Path, certificate: Path, role: str, subject: str) -> str:
    """Accept as ``role`` a peer whose certificate this CA issued for exactly ``subject`` (RFC 4514 text)."""
    _check_role(role)
    ca = read_certificate(certificate)
    if not _is_ca(ca):
        raise PPIRError(f"'{certificate}' is not a CA certificate; pin a party's own certificate without --subject")
    try:
        subject = x509.Name.from_rfc4514_string(subject).rfc4514_string()
    except ValueError:
        raise PPIRError(f"subject {subject!r}: expected RFC 4514 text such as 'CN=Radiology,O=Hospital A'") from None
    table = _table(folder)
    table["authorities"].append({"role": role, "subject": subject, "certificate": _store_copy(folder, ca, "ca")})
    _save(folder, table)
    return fingerprint(ca)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False

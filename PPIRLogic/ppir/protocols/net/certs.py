"""Trial certificates: a local certificate authority and one certificate per role.

For trials and tests only. Between institutions each party uses a certificate from a PKI both
trust (docs/security.md); PPIR only needs the CA file, the party's certificate and its key.
"""
from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ppir.common.errors import PPIRError
from ppir.common.files import OutputBatch

ROLES = ("moving", "fixed", "dealer")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PPIR trial"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init(folder: Path, roles: list[str], hosts: list[str], days: int = 30,
         not_before: datetime.datetime | None = None) -> dict[str, Path]:
    """Write ca.pem and ROLE.pem / ROLE.key for each role into ``folder``; returns the written paths."""
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise PPIRError(f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(ROLES)}")
    if days < 1:
        raise PPIRError("certificates must be valid for at least one day")
    folder.mkdir(parents=True, exist_ok=True)
    start = not_before or datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    end = start + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("PPIR trial CA")).issuer_name(_name("PPIR trial CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    names = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts]
    written = {"ca": folder / "ca.pem"}
    with OutputBatch() as batch:
        batch.add(folder / "ca.pem", lambda p: Path(p).write_bytes(ca.public_bytes(serialization.Encoding.PEM)))
        for role in roles:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (x509.CertificateBuilder().subject_name(_name(role)).issuer_name(ca.subject)
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(start).not_valid_after(end)
                    .add_extension(x509.SubjectAlternativeName(names), critical=False)
                    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                    .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH,
                                                          x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                    .sign(ca_key, hashes.SHA256()))
            batch.add(folder / f"{role}.pem", lambda p, c=cert: Path(p).write_bytes(c.public_bytes(
                serialization.Encoding.PEM)))
            batch.add(folder / f"{role}.key", lambda p, k=key: Path(p).write_bytes(_pem_key(k)))
            written[role] = folder / f"{role}.pem"
        batch.commit()
    for role in roles:
        (folder / f"{role}.key").chmod(0o600)
    return written


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False

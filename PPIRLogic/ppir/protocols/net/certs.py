"""Identities: each party's own key pair and certificate, made on its own machine.

A party's folder holds ``identity.key`` (created 0600, never leaves the folder), ``identity.pem``
(self-signed, or signed by an institutional CA from ``identity.csr``) and its trust list
(``ppir.net.trust``). A CA operator signs requests with ``sign`` and never sees a party's key.
"""
from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ppir.common.errors import PPIRError
from ppir.common.files import write_atomically

KEY, CERT, CSR = "identity.key", "identity.pem", "identity.csr"
CA_KEY, CA_CERT = "ca.key", "ca.pem"


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate (DER), as colon-separated upper-case hex (as ``openssl x509 -fingerprint``)."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def normalize_fingerprint(text: str) -> str:
    """A fingerprint as typed (any case, colons or spaces optional) in canonical form."""
    digits = "".join(c for c in text if c not in ": ").upper()
    if len(digits) != 64 or any(c not in "0123456789ABCDEF" for c in digits):
        raise PPIRError(f"fingerprint {text!r}: expected 64 hexadecimal digits (SHA-256)")
    return ":".join(digits[i:i + 2] for i in range(0, 64, 2))


def read_certificate(path: str | os.PathLike) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise PPIRError(f"certificate '{path}': no such file") from None
    except ValueError:
        raise PPIRError(f"certificate '{path}': not a PEM certificate") from None


def describe(cert: x509.Certificate) -> str:
    """Subject and fingerprint, for messages and ``ppir certs show``."""
    return f"{cert.subject.rfc4514_string()} (SHA-256 {fingerprint(cert)})"


def _subject(name: str, organization: str | None) -> x509.Name:
    if not name.strip():
        raise PPIRError("an identity needs a name (--name), e.g. 'Radiology, Hospital A'")
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, name.strip())]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _alt_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """The private key, readable by its owner only from its first byte; never overwrites a key."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise PPIRError(f"'{path}' exists: a key is never overwritten (remove it yourself if you mean to)") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), None)
    except FileNotFoundError:
        raise PPIRError(f"key '{path}': no such file") from None
    except (ValueError, TypeError):
        raise PPIRError(f"key '{path}': not an unencrypted PEM private key") from None


def _validity(days: int, not_before: datetime.datetime | None) -> tuple[datetime.datetime, datetime.datetime]:
    if days < 1:
        raise PPIRError("certificates must be valid for at least one day")
    start = not_before or datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    return start, start + datetime.timedelta(days=days)


def _party_certificate(subject: x509.Name, public_key, issuer: x509.Name, signer, hosts: list[str],
                       days: int, not_before: datetime.datetime | None) -> x509.Certificate:
    start, end = _validity(days, not_before)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False))
    if hosts:
        builder = builder.add_extension(_alt_names(hosts), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _pem(obj) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def create_identity(folder: Path, name: str, organization: str | None = None, hosts: list[str] | None = None,
                    days: int = 365, request: bool = False,
                    not_before: datetime.datetime | None = None) -> x509.Certificate:
    """A new key pair in ``folder`` and a self-signed certificate (plus a CSR for a CA if ``request``)."""
    folder.mkdir(parents=True, exist_ok=True)
    subject, hosts = _subject(name, organization), hosts or []
    _validity(days, not_before)
    key = ec.generate_private_key(ec.SECP256R1())
    _write_key(folder / KEY, key)
    cert = _party_certificate(subject, key.public_key(), subject, key, hosts, days, not_before)
    write_atomically(folder / CERT, lambda tmp: Path(tmp).write_bytes(_pem(cert)))
    if request:
        csr = x509.CertificateSigningRequestBuilder().subject_name(subject)
        if hosts:
            csr = csr.add_extension(_alt_names(hosts), critical=False)
        signed = csr.sign(key, hashes.SHA256())
        write_atomically(folder / CSR, lambda tmp: Path(tmp).write_bytes(_pem(signed)))
    return cert


def install_certificate(folder: Path, signed: Path) -> x509.Certificate:
    """Make a CA-signed certificate this party's identity, after checking that it is for this party's key."""
    cert, key = read_certificate(signed), read_key(folder / KEY)
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise PPIRError(f"certificate '{signed}' is not for the key in '{folder / KEY}'")
    write_atomically(folder / CERT, lambda tmp: Path(tmp).write_bytes(_pem(cert)))
    return cert


def create_ca(folder: Path, name: str, days: int = 3650) -> x509.Certificate:
    """An institution's certificate authority: ca.key (0600) and ca.pem in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    subject = _subject(name, None)
    start, end = _validity(days, None)
    key = ec.generate_private_key(ec.SECP256R1())
    _write_key(folder / CA_KEY, key)
    ca = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
          .sign(key, hashes.SHA256()))
    write_atomically(folder / CA_CERT, lambda tmp: Path(tmp).write_bytes(_pem(ca)))
    return ca


def sign(ca_folder: Path, request: Path, output: Path, days: int = 365,
         not_before: datetime.datetime | None = None) -> x509.Certificate:
    """The CA operator signs a party's request; the party's key is never involved."""
    try:
        csr = x509.load_pem_x509_csr(Path(request).read_bytes())
    except FileNotFoundError:
        raise PPIRError(f"request '{request}': no such file") from None
    except ValueError:
        raise PPIRError(f"request '{request}': not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise PPIRError(f"request '{request}': its signature does not verify")
    ca, ca_key = read_certificate(ca_folder / CA_CERT), read_key(ca_folder / CA_KEY)
    try:
        hosts = [str(n.value) for n in csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value]
    except x509.ExtensionNotFound:
        hosts = []
    cert = _party_certificate(csr.subject, csr.public_key(), ca.subject, ca_key, hosts, days, not_before)
    write_atomically(output, lambda tmp: Path(tmp).write_bytes(_pem(cert)))
    return cert

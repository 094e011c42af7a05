"""TLS 1.3 channels with mutual authentication between named roles, counting bytes on the wire.

TLS runs over memory BIOs on a plain TCP socket, so every byte that crosses the network (handshake
and records included) passes through ``_send_raw``/``_recv_raw`` and is counted there. There is no
plaintext mode. Each side checks that the peer's certificate chains to the pinned CA and that its
common name is the role it expects.
"""
from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from ppir.common.errors import PPIRError
from ppir.protocols.net.framing import PREFIX, FramingError, Message, decode, encode, parse_prefix

DEFAULT_MAX_MESSAGE = 4 << 30
READ_SIZE = 1 << 20
WRITE_SIZE = 1 << 20


class PeerError(PPIRError):
    """The peer, the network or the TLS session failed."""

    exit_code = 3


@dataclass(frozen=True)
class Credentials:
    """A party's TLS identity: the pinned CA, its certificate and key, and its role name."""

    ca: Path
    cert: Path
    key: Path
    role: str

    @classmethod
    def from_folder(cls, folder: str | Path, role: str) -> "Credentials":
        folder = Path(folder)
        return cls(folder / "ca.pem", folder / f"{role}.pem", folder / f"{role}.key", role)

    def context(self, server: bool) -> ssl.SSLContext:
        for label, path in (("CA certificate", self.ca), ("certificate", self.cert), ("key", self.key)):
            if not Path(path).is_file():
                raise PPIRError(f"{label} '{path}': no such file")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        try:
            ctx.load_cert_chain(self.cert, self.key)
            ctx.load_verify_locations(cafile=str(self.ca))
        except (ssl.SSLError, ValueError) as err:
            raise PPIRError(f"certificate '{self.cert}' / key '{self.key}' / CA '{self.ca}': "
                            f"cannot be used ({err})") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@dataclass
class Traffic:
    bytes_sent: int = 0
    bytes_received: int = 0


def _describe(err: Exception) -> str:
    text = getattr(err, "verify_message", None) or getattr(err, "reason", None) or str(err)
    return str(text).replace("_", " ").lower()


class Channel:
    """One authenticated connection. ``send``/``recv`` move whole messages."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server: bool, expect_role: str | tuple[str, ...],
                 server_hostname: str | None, timeout: float, max_message: int = DEFAULT_MAX_MESSAGE):
        self.traffic = Traffic()
        self._sock = sock
        self._sock.settimeout(timeout)
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=server, server_hostname=server_hostname)
        self.max_message = max_message
        self._handshake(expect_role)

    def _send_raw(self) -> None:
        data = self._out.read()
        if data:
            try:
                self._sock.sendall(data)
            except socket.timeout:
                raise PeerError(f"the {self.peer_role} party did not accept data in time") from None
            except OSError as err:
                raise PeerError(f"connection to the {self.peer_role} party lost ({err.strerror or err})") from None
            self.traffic.bytes_sent += len(data)

    def _recv_raw(self) -> None:
        try:
            data = self._sock.recv(READ_SIZE)
        except socket.timeout:
            raise PeerError(f"the {self.peer_role} party did not answer within {self._sock.gettimeout():g} s") from None
        except OSError as err:
            raise PeerError(f"connection to the {self.peer_role} party lost ({err.strerror or err})") from None
        if not data:
            raise PeerError(f"the {self.peer_role} party closed the connection")
        self.traffic.bytes_received += len(data)
        self._in.write(data)

    def _tls_call(self, fn, *args):
        while True:
            try:
                result = fn(*args)
                self._send_raw()
                return result
            except ssl.SSLWantReadError:
                self._send_raw()
                self._recv_raw()
            except ssl.SSLCertVerificationError as err:
                self._send_raw()
                raise PeerError(f"the {self.peer_role} party's certificate was rejected: {_describe(err)}") from None
            except ssl.SSLError as err:
                self._send_raw()
                raise PeerError(f"TLS with the {self.peer_role} party failed: {_describe(err)} "
                                "(check that both sides use certificates from the same CA and that "
                                "they have not expired)") from None

    def _handshake(self, expect_role: str | tuple[str, ...]) -> None:
        roles = (expect_role,) if isinstance(expect_role, str) else expect_role
        self.peer_role = " or ".join(roles)
        self._tls_call(self._tls.do_handshake)
        subject = dict(item for rdn in self._tls.getpeercert().get("subject", ()) for item in rdn)
        role = subject.get("commonName")
        if role not in roles:
            self.close()
            raise PeerError(f"expected the {self.peer_role} party but the peer's certificate names {role!r}")
        self.peer_role = role

    @property
    def timeout(self) -> float:
        """Seconds a send or receive may wait for the peer."""
        return self._sock.gettimeout()

    def send(self, message: Message) -> None:
        """Encrypt and send in pieces, so that large messages stream instead of piling up in memory."""
        data = memoryview(encode(message))
        for start in range(0, len(data), WRITE_SIZE):
            self._tls_call(self._tls.write, data[start:start + WRITE_SIZE])

    def _read_exact(self, n: int) -> bytearray:
        buffer = bytearray(n)
        view, filled = memoryview(buffer), 0
        while filled < n:
            got = self._tls_call(self._tls.read, min(n - filled, READ_SIZE), view[filled:])
            if not got:
                raise PeerError(f"the {self.peer_role} party closed the connection")
            filled += got
        return buffer

    def recv(self, idle: float | None = None) -> Message:
        """The next message; ``idle``: seconds the peer may take before starting it (default: the timeout).

        A party serving requests passes a long ``idle``: the requester may compute for minutes
        between two requests, while a message once started must keep flowing.
        """
        timeout = self.timeout
        try:
            if idle is not None:
                self._sock.settimeout(idle)
            prefix = self._read_exact(PREFIX.size)
        finally:
            self._sock.settimeout(timeout)
        try:
            kind, header_len, body_len = parse_prefix(prefix, self.max_message)
            return decode(kind, self._read_exact(header_len), self._read_exact(body_len))
        except FramingError as err:
            raise PeerError(f"bad message from the {self.peer_role} party: {err}") from None

    def close(self) -> None:
        try:
            self._tls.unwrap()
            self._send_raw()
        except (ssl.SSLError, PeerError, OSError):
            pass
        self._sock.close()


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise PPIRError(f"address {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def connect(address: str, credentials: Credentials, expect_role: str, timeout: float = 30.0,
            retry_for: float = 0.0) -> Channel:
    """Open a channel to the party listening at HOST:PORT (retrying refused connections for ``retry_for`` s)."""
    host, port = parse_address(address)
    context = credentials.context(server=False)
    deadline = time.monotonic() + retry_for
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            break
        except ConnectionRefusedError:
            if time.monotonic() >= deadline:
                raise PeerError(f"no {expect_role} party is listening at {host}:{port}") from None
            time.sleep(0.1)
        except OSError as err:
            raise PeerError(f"cannot reach the {expect_role} party at {host}:{port} ({err})") from None
    return Channel(sock, context, False, expect_role, host, timeout)


class Listener:
    """A listening socket that accepts authenticated channels from one expected role."""

    def __init__(self, address: str, credentials: Credentials, timeout: float = 30.0):
        host, port = parse_address(address)
        self._context = credentials.context(server=True)
        self.timeout = timeout
        try:
            self._sock = socket.create_server((host, port), reuse_port=False)
        except OSError as err:
            raise PPIRError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None
        self.address = self._sock.getsockname()[:2]

    def accept(self, expect_role: str | tuple[str, ...], wait: float | None = None) -> Channel:
        """The next authenticated channel from a party of (one of) the expected role(s)."""
        roles = (expect_role,) if isinstance(expect_role, str) else expect_role
        self._sock.settimeout(wait)
        try:
            sock, _ = self._sock.accept()
        except socket.timeout:
            raise PeerError(f"no {' or '.join(roles)} party connected within {wait:g} s") from None
        return Channel(sock, self._context, True, roles, None, self.timeout)

    def close(self) -> None:
        self._sock.close()

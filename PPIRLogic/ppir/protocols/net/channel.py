"""TLS 1.3 channels with mutual authentication between pinned identities, counting bytes on the wire.

TLS runs over memory BIOs on a plain TCP socket, so every byte that crosses the network (handshake
and records included) passes through ``_send_raw``/``_recv_raw`` and is counted there. There is no
plaintext mode. A serving party's TLS layer accepts only certificates anchored in its trust list; a
connecting party checks the server's certificate after the handshake (TLS has proved the key), so
that an unknown server can be named by its fingerprint. Either way ``authenticate`` then decides,
from the trust list, which role the peer may play.
"""
from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ppir.common.errors import PPIRError
from ppir.protocols.net import certs
from ppir.protocols.net.framing import PREFIX, FramingError, Message, decode, encode, parse_prefix
from ppir.protocols.net.trust import Peer, Trust, UntrustedPeer

DEFAULT_MAX_MESSAGE = 4 << 30
READ_SIZE = 1 << 20
WRITE_SIZE = 1 << 20


class PeerError(PPIRError):
    """The peer, the network or the TLS session failed."""

    exit_code = 3


class Refused(PeerError):
    """The peer authenticated but is not trusted for the role asked (the message names its fingerprint)."""


@dataclass(frozen=True)
class Identity:
    """A party's identity folder: its key, its certificate and the peers it trusts."""

    folder: Path
    certificate: x509.Certificate
    trust: Trust

    @classmethod
    def load(cls, folder: str | Path) -> "Identity":
        folder = Path(folder)
        for name in (certs.KEY, certs.CERT):
            if not (folder / name).is_file():
                raise PPIRError(f"identity folder '{folder}': no {name} (create one with `ppir certs identity`)")
        return cls(folder, certs.read_certificate(folder / certs.CERT), Trust.load(folder))

    @property
    def fingerprint(self) -> str:
        return certs.fingerprint(self.certificate)

    def describe(self) -> str:
        return certs.describe(self.certificate)

    def context(self, server: bool, roles: tuple[str, ...] = ()) -> ssl.SSLContext:
        """TLS 1.3 with this identity; a server requires a client certificate anchored in the trust list."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        try:
            ctx.load_cert_chain(self.folder / certs.CERT, self.folder / certs.KEY)
        except (ssl.SSLError, ValueError) as err:
            raise PPIRError(f"identity '{self.folder}': certificate and key cannot be used ({err})") from None
        if server:
            anchors = self.trust.anchors(roles)
            if not anchors:
                raise PPIRError(f"identity '{self.folder}' trusts no {' or '.join(roles)} party yet: add their "
                                "certificates with `ppir certs trust`")
            ctx.load_verify_locations(cadata=anchors)
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE   # checked against the trust list in ``authenticate``
        return ctx


@dataclass
class Traffic:
    bytes_sent: int = 0
    bytes_received: int = 0


def _describe(err: Exception) -> str:
    text = getattr(err, "verify_message", None) or getattr(err, "reason", None) or str(err)
    return str(text).replace("_", " ").lower()


def _refused_us(err: ssl.SSLError) -> bool:
    """Whether a TLS alert says the peer did not accept this side's certificate."""
    reason = str(getattr(err, "reason", "") or "")
    return "ALERT" in reason and any(w in reason for w in ("CERTIFICATE", "UNKNOWN_CA", "ACCESS_DENIED"))


class Channel:
    """One TLS connection. ``authenticate`` names the peer; ``send``/``recv`` move whole messages."""

    def __init__(self, sock: socket.socket, identity: Identity, context: ssl.SSLContext, server: bool,
                 peer_label: str, timeout: float, limits: int | Mapping[int, int] = DEFAULT_MAX_MESSAGE):
        self.traffic = Traffic()
        self.identity = identity
        self.peer_role = peer_label
        self.peer: Peer | None = None
        self.limits = limits
        self._sock = sock
        self._sock.settimeout(timeout)
        if sock.family in (socket.AF_INET, socket.AF_INET6):     # request/reply: no Nagle delay on a message's tail
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass                     # a connection already gone: its first read or write says so
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=server)
        self._tls_call(self._tls.do_handshake)

    def authenticate(self, roles: tuple[str, ...]) -> Peer:
        """The peer's identity if the trust list accepts it for one of ``roles``; else Refused."""
        try:
            self.peer = self.identity.trust.identify(self._tls.getpeercert(binary_form=True), roles)
        except UntrustedPeer as err:
            raise Refused(str(err)) from None
        self.peer_role = " or ".join(self.peer.roles)
        return self.peer

    @property
    def peer_address(self) -> str:
        try:
            return "{}:{}".format(*self._sock.getpeername()[:2])
        except OSError:
            return "?"

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
                raise PeerError(f"the {self.peer_role} party's certificate is not trusted here "
                                f"({_describe(err)})") from None
            except ssl.SSLError as err:
                self._send_raw()
                if _refused_us(err):
                    raise Refused(f"the {self.peer_role} party does not trust this party's identity "
                                  f"{self.identity.describe()}: send it your certificate (identity.pem) and have "
                                  "its operator check that fingerprint with you and run `ppir certs trust`") from None
                raise PeerError(f"TLS with the {self.peer_role} party failed: {_describe(err)}") from None

    @property
    def timeout(self) -> float:
        """Seconds a send or receive may wait for the peer."""
        return self._sock.gettimeout()

    def send(self, message: Message) -> None:
        """Encrypt and send in pieces, so that large messages stream instead of piling up in memory."""
        data = memoryview(encode(message))
        for start in range(0, len(data), WRITE_SIZE):
            self._tls_call(self._tls.write, data[start:start + WRITE_SIZE])

    def _read(self, n: int) -> bytearray:
        """Exactly ``n`` bytes, grown as they arrive (an announced length allocates nothing by itself)."""
        buffer = bytearray()
        while len(buffer) < n:
            chunk = self._tls_call(self._tls.read, min(n - len(buffer), READ_SIZE))
            if not chunk:
                raise PeerError(f"the {self.peer_role} party closed the connection")
            buffer += chunk
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
            prefix = self._read(PREFIX.size)
        finally:
            self._sock.settimeout(timeout)
        try:
            kind, header_len, body_len = parse_prefix(bytes(prefix), self.limits)
            return decode(kind, self._read(header_len), self._read(body_len))
        except FramingError as err:
            raise PeerError(f"bad message from the {self.peer_role} party: {err}") from None

    def shutdown(self) -> None:
        """Break the connection from another thread: a blocked send or receive fails at once."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self._tls.unwrap()
            self._send_raw()
        except (ssl.SSLError, PeerError, OSError, ValueError):
            pass
        self._sock.close()


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise PPIRError(f"address {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def connect(address: str, identity: Identity, role: str, timeout: float = 30.0, retry_for: float = 0.0) -> Channel:
    """A channel to the party of ``role`` listening at HOST:PORT, refused unless the trust list accepts it.

    Refused connections are retried for ``retry_for`` s.
    """
    host, port = parse_address(address)
    if not identity.trust.knows(role):
        raise PPIRError(f"identity '{identity.folder}' trusts no {role} party: add its certificate with "
                        f"`ppir certs trust {identity.folder} CERT.pem --role {role}`")
    context = identity.context(server=False)
    deadline = time.monotonic() + retry_for
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            break
        except ConnectionRefusedError:
            if time.monotonic() >= deadline:
                raise PeerError(f"no {role} party is listening at {host}:{port}") from None
            time.sleep(0.1)
        except OSError as err:
            raise PeerError(f"cannot reach the {role} party at {host}:{port} ({err})") from None
    try:
        channel = Channel(sock, identity, context, False, role, timeout)
    except BaseException:
        sock.close()
        raise
    try:
        channel.authenticate((role,))
    except Refused as err:
        channel.close()
        raise Refused(f"{host}:{port}: {err}") from None
    return channel


class Listener:
    """A listening socket; ``handshake`` turns an accepted connection into a TLS channel."""

    def __init__(self, address: str, identity: Identity, roles: tuple[str, ...], timeout: float = 30.0):
        host, port = parse_address(address)
        self.identity, self.roles, self.timeout = identity, roles, timeout
        self._context = identity.context(server=True, roles=roles)
        try:
            self._sock = socket.create_server((host, port), reuse_port=False)
        except OSError as err:
            raise PPIRError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None
        self.address = self._sock.getsockname()[:2]

    def accept_socket(self, wait: float | None) -> socket.socket | None:
        """The next TCP connection, or None after ``wait`` s."""
        self._sock.settimeout(wait)
        try:
            return self._sock.accept()[0]
        except socket.timeout:
            return None

    def handshake(self, sock: socket.socket, timeout: float) -> Channel:
        """TLS on an accepted socket, within ``timeout`` s; the peer is not yet authenticated for a role."""
        channel = Channel(sock, self.identity, self._context, True, " or ".join(self.roles), timeout)
        channel._sock.settimeout(self.timeout)
        return channel

    def close(self) -> None:
        self._sock.close()

"""Identities, trust and TLS channels over real loopback sockets with real certificates; framing and its fuzzing."""
from __future__ import annotations

import datetime
import os
import socket
import struct
import threading
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from identities import introduce, parties, party
from ppir.common.errors import PPIRError
from ppir.protocols.net import certs, trust
from ppir.protocols.net.channel import Identity, Listener, PeerError, Refused, connect
from ppir.protocols.net.framing import DTYPES, PREFIX, FramingError, Message, decode, encode, parse_prefix


@pytest.fixture(scope="module")
def ids(tmp_path_factory):
    return parties(tmp_path_factory.mktemp("ids"))


def _serve(listener, handler, roles=("moving",)):
    """Accept one channel in a thread; returns (thread, box) where box gets the result or the error."""
    box = {}

    def run():
        sock = listener.accept_socket(wait=10)
        channel = None
        try:
            channel = listener.handshake(sock, 5.0)
            channel.authenticate(roles)
            box["result"] = handler(channel)
            box["traffic"] = channel.traffic
        except Exception as err:  # noqa: BLE001 - the test inspects it
            box["error"] = err
        finally:
            (channel or sock).close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _listener(folder, roles=("moving",), timeout=5.0):
    return Listener("127.0.0.1:0", Identity.load(folder), roles, timeout=timeout)


def _address(listener):
    return f"127.0.0.1:{listener.address[1]}"


def test_identity_key_is_private_from_its_first_byte_and_never_overwritten(tmp_path):
    old = os.umask(0)
    try:
        party(tmp_path / "a", "Site A")
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "identity.key").stat().st_mode & 0o777 == 0o600
    key = (tmp_path / "a" / "identity.key").read_bytes()
    with pytest.raises(PPIRError, match="never overwritten"):
        party(tmp_path / "a", "Site A again")
    assert (tmp_path / "a" / "identity.key").read_bytes() == key


def test_messages_cross_with_arrays_and_counted_bytes(ids):
    listener = _listener(ids["fixed"])
    payload = np.random.default_rng(0).normal(size=(1000, 3))
    thread, box = _serve(listener, lambda ch: (ch.recv(), ch.send(Message(2, {"ok": True})), ch.peer))
    channel = connect(_address(listener), Identity.load(ids["moving"]), "fixed")
    channel.send(Message(1, {"hello": "fixed"}, {"g": payload, "idx": np.arange(5, dtype=np.int64)}))
    reply = channel.recv()
    channel.close()
    thread.join(10)
    listener.close()
    received, _, peer = box["result"]
    assert reply.kind == 2 and reply.meta == {"ok": True}
    assert peer.roles == ("moving",) and peer.fingerprint == Identity.load(ids["moving"]).fingerprint
    np.testing.assert_array_equal(received.arrays["g"], payload)
    assert box["traffic"].bytes_received == channel.traffic.bytes_sent
    assert box["traffic"].bytes_sent == channel.traffic.bytes_received


def test_unknown_server_is_refused_showing_its_fingerprint(ids, tmp_path):
    stranger = party(tmp_path / "stranger", "Stranger")
    trust.trust_peer(stranger, ids["moving"] / certs.CERT, "moving")     # it knows the client, not vice versa
    listener = _listener(stranger)
    thread, _ = _serve(listener, lambda ch: ch.recv())
    with pytest.raises(Refused) as err:
        connect(_address(listener), Identity.load(ids["moving"]), "fixed")
    thread.join(10)
    listener.close()
    assert Identity.load(stranger).fingerprint in str(err.value) and "ppir certs trust" in str(err.value)


def test_unknown_client_is_refused_by_tls_and_told_its_own_fingerprint(ids, tmp_path):
    stranger = party(tmp_path / "stranger", "Stranger")
    trust.trust_peer(stranger, ids["fixed"] / certs.CERT, "fixed")      # it knows the server, not vice versa
    listener = _listener(ids["fixed"])
    thread, box = _serve(listener, lambda ch: ch.recv())
    with pytest.raises(Refused) as err:
        channel = connect(_address(listener), Identity.load(stranger), "fixed")
        channel.send(Message(1))
        channel.recv()
    thread.join(10)
    listener.close()
    assert Identity.load(stranger).fingerprint in str(err.value)
    assert "not trusted" in str(box["error"])


@pytest.mark.parametrize("server_role, client_role", [("fixed", "moving"), ("dealer", "moving"),
                                                       ("dealer", "fixed")])
@pytest.mark.parametrize("impostor", ["client", "server"])
def test_ca_issued_identity_that_is_not_the_expected_subject_is_refused(tmp_path, server_role, client_role, impostor):
    """Both sides trust the consortium CA for exactly the other's subject; a CA-issued other subject is refused."""
    ca = tmp_path / "ca"
    certs.create_ca(ca, "Consortium CA")

    def issued(name):
        folder = party(tmp_path / name.replace(" ", "-"), name, request=True)
        certs.sign(ca, folder / certs.CSR, folder / "signed.pem")
        certs.install_certificate(folder, folder / "signed.pem")
        return folder

    server, client, other = issued(f"site {server_role}"), issued(f"site {client_role}"), issued("someone else")
    trust.trust_authority(server, ca / certs.CA_CERT, client_role, f"CN=site {client_role}")
    trust.trust_authority(client, ca / certs.CA_CERT, server_role, f"CN=site {server_role}")
    if impostor == "client":
        trust.trust_authority(other, ca / certs.CA_CERT, server_role, f"CN=site {server_role}")
        listener, dialer = _listener(server, (client_role,)), Identity.load(other)
    else:
        trust.trust_authority(other, ca / certs.CA_CERT, client_role, f"CN=site {client_role}")
        listener, dialer = _listener(other, (client_role,)), Identity.load(client)
    thread, box = _serve(listener, lambda ch: ch.recv(), (client_role,))
    with pytest.raises(PeerError) as err:
        channel = connect(_address(listener), dialer, server_role)
        channel.send(Message(1))
        channel.recv()
    thread.join(10)
    listener.close()
    refused = box["error"] if impostor == "client" else err.value
    assert isinstance(refused, Refused) and Identity.load(other).fingerprint in str(refused)
    # the genuine pair works
    listener = _listener(server, (client_role,))
    thread, box = _serve(listener, lambda ch: ch.recv(), (client_role,))
    channel = connect(_address(listener), Identity.load(client), server_role)
    channel.send(Message(1, {"ok": 1}))
    thread.join(10)
    channel.close()
    listener.close()
    assert box["result"].meta == {"ok": 1}


def test_peer_pinned_for_another_role_is_refused(ids):
    listener = _listener(ids["fixed"], ("moving", "dealer"))
    thread, box = _serve(listener, lambda ch: ch.recv(), ("moving",))
    try:
        channel = connect(_address(listener), Identity.load(ids["dealer"]), "fixed")
        channel.recv()
    except PeerError:
        pass
    thread.join(10)
    listener.close()
    assert isinstance(box["error"], Refused) and "not among the moving parties" in str(box["error"])


@pytest.mark.parametrize("expired", ["client", "server"])
def test_expired_pinned_certificate_is_rejected(tmp_path, expired):
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=40)
    ages = {"client": {}, "server": {}}
    ages[expired] = {"days": 30, "not_before": old}
    moving, fixed = party(tmp_path / "m", "M", **ages["client"]), party(tmp_path / "f", "F", **ages["server"])
    introduce(moving, "moving", fixed, "fixed")
    listener = _listener(fixed)
    thread, box = _serve(listener, lambda ch: ch.recv())
    with pytest.raises(PeerError) as err:
        channel = connect(_address(listener), Identity.load(moving), "fixed")
        channel.recv()
    thread.join(10)
    listener.close()
    assert "expired" in str(box["error"]) if expired == "client" else "not valid now" in str(err.value)


def test_oversized_message_is_refused_for_its_kind(ids):
    listener = _listener(ids["fixed"])

    def small(channel):
        channel.limits = {1: 1000}
        return channel.recv()

    thread, box = _serve(listener, small)
    channel = connect(_address(listener), Identity.load(ids["moving"]), "fixed")
    channel.send(Message(1, {}, {"big": np.zeros(10_000)}))
    thread.join(10)
    channel.close()
    listener.close()
    assert "exceeds the limit of 1000 for kind 1" in str(box["error"])


def test_announced_size_is_not_allocated_before_the_bytes_arrive(ids):
    """A header announcing 3 GiB followed by silence costs the receiver next to no memory."""
    listener = _listener(ids["fixed"], timeout=1.0)

    peak = []

    def measured(channel):
        tracemalloc.start()
        try:
            channel.recv()
        finally:
            peak.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()

    thread, box = _serve(listener, measured)
    channel = connect(_address(listener), Identity.load(ids["moving"]), "fixed")
    header = b'{"meta": {}, "arrays": [["x", "uint8", [3221225472]]]}'
    channel._tls.write(PREFIX.pack(b"PPIR", 1, 1, len(header), 3 << 30) + header + b"\0" * 1000)
    channel._send_raw()
    thread.join(10)
    channel.close()
    listener.close()
    assert "did not answer" in str(box["error"])
    assert peak[0] < 8 << 20


def test_peer_that_disconnects_mid_message(ids):
    listener = _listener(ids["fixed"])
    thread, box = _serve(listener, lambda ch: ch.recv())
    channel = connect(_address(listener), Identity.load(ids["moving"]), "fixed")
    frame = encode(Message(1, {}, {"a": np.zeros(1000)}))
    channel._tls.write(frame[: len(frame) // 2])
    channel._send_raw()
    channel._sock.close()
    thread.join(10)
    listener.close()
    assert "closed the connection" in str(box["error"]) or "lost" in str(box["error"])


def test_silent_peer_times_out(ids):
    listener = _listener(ids["fixed"], timeout=1.0)
    thread, box = _serve(listener, lambda ch: ch.recv())
    channel = connect(_address(listener), Identity.load(ids["moving"]), "fixed", timeout=1.0)
    thread.join(10)
    channel.close()
    listener.close()
    assert "did not answer within 1 s" in str(box["error"])


def test_serving_party_waits_longer_for_the_next_request_than_for_a_message(ids):
    """recv(idle=...) lets a requester compute between requests; the timeout still bounds each message."""
    listener = _listener(ids["fixed"], timeout=0.5)
    thread, box = _serve(listener, lambda ch: (ch.recv(idle=5.0), ch.timeout))
    channel = connect(_address(listener), Identity.load(ids["moving"]), "fixed", timeout=5.0)
    time.sleep(1.5)          # three times the server's timeout
    channel.send(Message(2, {"late": True}))
    thread.join(10)
    channel.close()
    listener.close()
    message, timeout_after = box["result"]
    assert message.meta == {"late": True} and timeout_after == 0.5


def test_nobody_listening(ids):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PeerError, match="no fixed party is listening"):
        connect(f"127.0.0.1:{port}", Identity.load(ids["moving"]), "fixed")


def test_framing_rejects_bad_magic_version_and_unexpected_kind():
    frame = encode(Message(3, {"a": 1}))
    with pytest.raises(FramingError, match="magic"):
        parse_prefix(b"HTTP" + frame[4:PREFIX.size], 1 << 20)
    bumped = frame[:4] + struct.pack("!H", 99) + frame[6:PREFIX.size]
    with pytest.raises(FramingError, match="version 99"):
        parse_prefix(bumped, 1 << 20)
    with pytest.raises(FramingError, match="unexpected message kind 3"):
        parse_prefix(frame[:PREFIX.size], {1: 100, 2: 100})


def _check(header: bytes, body: bytes) -> None:
    """decode either returns arrays that fill the body exactly or raises FramingError, nothing else."""
    try:
        message = decode(7, header, body)
    except FramingError:
        return
    assert isinstance(message.meta, dict)
    assert sum(a.nbytes for a in message.arrays.values()) == len(body)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4), max_leaves=12)
_dims = st.one_of(st.integers(-3, 40), st.integers(min_value=2 ** 40, max_value=2 ** 80), st.booleans(),
                  st.floats(-1, 10), st.text(max_size=3), st.none())
_spec = st.one_of(st.tuples(st.one_of(st.text(max_size=70), st.integers(), st.none()),
                            st.one_of(st.sampled_from(sorted(DTYPES) + ["object", "<U8", ">f8", "bool", "complex128"]),
                                      st.integers(), st.none()),
                            st.one_of(st.lists(_dims, max_size=10), st.integers(), st.none())).map(list),
                  _json)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meta=st.one_of(st.dictionaries(st.text(max_size=8), _json, max_size=4), _json),
       specs=st.one_of(st.lists(_spec, max_size=4), _json), extra=st.sampled_from([None, "x"]),
       body=st.binary(max_size=600), nesting=st.integers(0, 3000))
@example(meta={}, specs=[["0", "float32", [0, 2 ** 40, 2 ** 40]]], extra=None, body=b"", nesting=0)   # CI found it
def test_framing_fuzz_structured_headers(meta, specs, extra, body, nesting):
    """Structured but hostile headers (wrong types, huge or negative shapes, odd dtypes, deep nesting)."""
    import json
    header = {"meta": meta, "arrays": specs}
    if extra:
        header[extra] = 1
    text = json.dumps(header)
    if nesting > 2000:
        text = "[" * nesting + "]" * nesting
    _check(text.encode(), body)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cut=st.integers(0, 400))
def test_framing_fuzz_random_bytes(data, cut):
    """Random prefixes, headers and bodies: only FramingError ever leaves parse_prefix and decode."""
    frame = encode(Message(5, {"level": 2}, {"v": np.arange(4.0)}))
    for raw in (data, frame[:PREFIX.size] + data, frame[:cut] + data):
        try:
            kind, header_len, body_len = parse_prefix(raw[:PREFIX.size], 1 << 16)
        except FramingError:
            continue
        body = PREFIX.size + header_len
        _check(raw[PREFIX.size:body], raw[body:body + body_len])

"""TLS channels and message framing over real loopback sockets with real certificates."""
from __future__ import annotations

import datetime
import socket
import struct
import threading

import numpy as np
import pytest
from ppir.protocols.net import certs
from ppir.protocols.net.channel import Credentials, Listener, PeerError, connect
from ppir.protocols.net.framing import PREFIX, FramingError, Message, decode, encode, parse_prefix


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    certs.init(folder, list(certs.ROLES), ["127.0.0.1", "localhost"])
    return folder


def _serve(listener, expect, handler):
    """Accept one channel in a thread; returns (thread, box) where box gets the result or the error."""
    box = {}

    def run():
        try:
            channel = listener.accept(expect, wait=10)
            box["result"] = handler(channel)
            box["traffic"] = channel.traffic
            channel.close()
        except Exception as err:  # noqa: BLE001 - the test inspects it
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _listener(folder, role="fixed", timeout=5.0):
    return Listener("127.0.0.1:0", Credentials.from_folder(folder, role), timeout=timeout)


def _address(listener):
    return f"127.0.0.1:{listener.address[1]}"


def test_certs_init_writes_ca_and_one_pair_per_role(pki):
    names = sorted(p.name for p in pki.iterdir())
    assert names == ["ca.pem", "dealer.key", "dealer.pem", "fixed.key", "fixed.pem", "moving.key", "moving.pem"]
    assert (pki / "moving.key").stat().st_mode & 0o077 == 0


def test_messages_cross_with_arrays_and_counted_bytes(pki):
    listener = _listener(pki)
    payload = np.random.default_rng(0).normal(size=(1000, 3))
    thread, box = _serve(listener, "moving", lambda ch: (ch.recv(), ch.send(Message(2, {"ok": True}))))
    channel = connect(_address(listener), Credentials.from_folder(pki, "moving"), "fixed")
    channel.send(Message(1, {"hello": "fixed"}, {"g": payload, "idx": np.arange(5, dtype=np.int64)}))
    reply = channel.recv()
    channel.close()
    thread.join(10)
    listener.close()
    received = box["result"][0]
    assert reply.kind == 2 and reply.meta == {"ok": True}
    assert received.meta == {"hello": "fixed"}
    np.testing.assert_array_equal(received.arrays["g"], payload)
    assert received.arrays["idx"].dtype == np.int64
    assert channel.traffic.bytes_sent >= payload.nbytes
    assert box["traffic"].bytes_received == channel.traffic.bytes_sent
    assert box["traffic"].bytes_sent == channel.traffic.bytes_received


def test_certificate_from_another_ca_is_rejected(pki, tmp_path):
    certs.init(tmp_path, ["moving"], ["127.0.0.1"])
    listener = _listener(pki)
    thread, box = _serve(listener, "moving", lambda ch: ch.recv())
    with pytest.raises(PeerError) as err:
        channel = connect(_address(listener), Credentials.from_folder(tmp_path, "moving"), "fixed")
        channel.recv()
    thread.join(10)
    listener.close()
    assert "certificate" in str(err.value) or "TLS" in str(err.value)
    assert isinstance(box.get("error"), PeerError)


def test_expired_certificate_is_rejected(tmp_path):
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=40)
    certs.init(tmp_path, ["moving", "fixed"], ["127.0.0.1"], days=30, not_before=old)
    listener = _listener(tmp_path)
    thread, box = _serve(listener, "moving", lambda ch: ch.recv())
    with pytest.raises(PeerError, match="expired"):
        connect(_address(listener), Credentials.from_folder(tmp_path, "moving"), "fixed")
    thread.join(10)
    listener.close()


def test_wrong_role_is_refused(pki):
    listener = _listener(pki)
    thread, box = _serve(listener, "moving", lambda ch: ch.recv())
    try:
        channel = connect(_address(listener), Credentials.from_folder(pki, "dealer"), "fixed")
        channel.recv()
    except PeerError:
        pass
    thread.join(10)
    listener.close()
    assert "expected the moving party" in str(box["error"]) and "dealer" in str(box["error"])


def test_oversized_message_is_refused_before_allocation(pki):
    listener = _listener(pki)

    def small(channel):
        channel.max_message = 1000
        return channel.recv()

    thread, box = _serve(listener, "moving", small)
    channel = connect(_address(listener), Credentials.from_folder(pki, "moving"), "fixed")
    channel.send(Message(1, {}, {"big": np.zeros(10_000)}))
    thread.join(10)
    channel.close()
    listener.close()
    assert "exceeds the limit" in str(box["error"])


def test_peer_that_disconnects_mid_message(pki):
    listener = _listener(pki)
    thread, box = _serve(listener, "moving", lambda ch: ch.recv())
    channel = connect(_address(listener), Credentials.from_folder(pki, "moving"), "fixed")
    frame = encode(Message(1, {}, {"a": np.zeros(1000)}))
    channel._tls.write(frame[: len(frame) // 2])
    channel._send_raw()
    channel._sock.close()
    thread.join(10)
    listener.close()
    assert "closed the connection" in str(box["error"]) or "lost" in str(box["error"])


def test_silent_peer_times_out(pki):
    listener = _listener(pki, timeout=1.0)
    thread, box = _serve(listener, "moving", lambda ch: ch.recv())
    channel = connect(_address(listener), Credentials.from_folder(pki, "moving"), "fixed", timeout=1.0)
    thread.join(10)
    channel.close()
    listener.close()
    assert "did not answer within 1 s" in str(box["error"])


def test_serving_party_waits_longer_for_the_next_request_than_for_a_message(pki):
    """recv(idle=...) lets a requester compute between requests; the timeout still bounds each message."""
    import time
    listener = _listener(pki, timeout=0.5)
    thread, box = _serve(listener, "moving", lambda ch: (ch.recv(idle=5.0), ch.timeout))
    channel = connect(_address(listener), Credentials.from_folder(pki, "moving"), "fixed", timeout=5.0)
    time.sleep(1.5)          # three times the server's timeout
    channel.send(Message(2, {"late": True}))
    thread.join(10)
    channel.close()
    listener.close()
    message, timeout_after = box["result"]
    assert message.meta == {"late": True} and timeout_after == 0.5


def test_nobody_listening(pki):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PeerError, match="no fixed party is listening"):
        connect(f"127.0.0.1:{port}", Credentials.from_folder(pki, "moving"), "fixed")


def test_framing_rejects_bad_magic_and_version():
    frame = encode(Message(3, {"a": 1}))
    with pytest.raises(FramingError, match="magic"):
        parse_prefix(b"HTTP" + frame[4:PREFIX.size], 1 << 20)
    bumped = frame[:4] + struct.pack("!H", 99) + frame[6:PREFIX.size]
    with pytest.raises(FramingError, match="version 99"):
        parse_prefix(bumped, 1 << 20)


def test_framing_fuzz_never_crashes():
    """Random corruptions of real frames either decode or raise FramingError (bounded: 2000 cases)."""
    rng = np.random.default_rng(0)
    frame = encode(Message(5, {"level": 2, "names": ["x"]}, {"v": np.arange(20.0), "i": np.arange(7)}))
    for _ in range(2000):
        data = bytearray(frame)
        for _ in range(rng.integers(1, 6)):
            data[rng.integers(0, len(data))] = rng.integers(0, 256)
        data = bytes(data[: rng.integers(PREFIX.size, len(data) + 1)])
        try:
            kind, header_len, body_len = parse_prefix(data[:PREFIX.size], 1 << 16)
            header = data[PREFIX.size:PREFIX.size + header_len]
            decode(kind, header, data[PREFIX.size + header_len:PREFIX.size + header_len + body_len])
        except FramingError:
            pass

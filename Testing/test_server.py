"""Serving parties under bad clients, at their session limit and under Ctrl-C: real processes over loopback."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
from identities import parties, party
from ppir.app.synth import synthesize
from ppir.engine.image import read_image
from ppir.engine.settings import Settings
from ppir.protocols.net import trust
from ppir.protocols.net.channel import Identity, PeerError, connect
from ppir.protocols.net.framing import PREFIX, Message, encode
from ppir.protocols.runtime import CONTROL, Kind
from private_runs import PY, policy_free, transform_rmse

LEVELS = "2,1"


@pytest.fixture(scope="module")
def site(tmp_path_factory, slice_2d):
    """A 2D pair, the three parties' identities, and the clear registration as the reference."""
    folder = tmp_path_factory.mktemp("server")
    synthesize(slice_2d, "affine", 2, folder)
    parties(folder / "ids")
    done = subprocess.run(PY + ["register", "--fixed", str(folder / "fixed.nrrd"), "--moving",
                                str(folder / "moving.nrrd"), "--levels", LEVELS, "--output-transform",
                                str(folder / "clear.h5")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return folder


def _start(args):
    process = subprocess.Popen(PY + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert line, process.stderr.read()
    return process, "127.0.0.1:{port}".format(**json.loads(line))


def _servers(site, *extra, fixed_extra=()):
    dealer, dealer_at = _start(["dealer", "--listen", "127.0.0.1:0", "--identity", str(site / "ids/dealer"),
                                "--sessions", "0", *extra])
    fixed, fixed_at = _start(["fixed", "--image", str(site / "fixed.nrrd"), "--listen", "127.0.0.1:0", "--identity",
                              str(site / "ids/fixed"), "--dealer", dealer_at, "--sessions", "0", *extra, *fixed_extra])
    return dealer, dealer_at, fixed, fixed_at


def _matches_clear(site, transform) -> bool:
    return transform_rmse(transform, site / "clear.h5", read_image(site / "fixed.nrrd").grid) < 0.05


def _bad_connections(address: str, site, stranger) -> int:
    """Connections of every bad kind (bounded: 100 in all); returns how many were made."""
    host, port = address.rsplit(":", 1)
    made = 0

    def raw(data: bytes) -> None:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            if data:
                sock.sendall(data)
                try:
                    sock.recv(100)
                except OSError:
                    pass

    def authenticated(payload: bytes, vanish: bool = False) -> None:
        try:
            channel = connect(address, Identity.load(site / "ids/moving"), "fixed", timeout=5)
        except PeerError:
            return
        channel._tls.write(payload)
        channel._send_raw()
        if vanish:
            channel._sock.close()
            return
        try:
            channel.recv()
        except PeerError:
            pass
        channel.close()

    def tls_as(identity) -> None:
        try:
            channel = connect(address, identity, "fixed", timeout=5)
            channel.send(Message(Kind.HELLO, {}))
            channel.recv()
        except PeerError:
            pass

    half = encode(Message(Kind.PRODUCT, {}, {"e": np.zeros((100, 4), np.int64)}))
    oversized = PREFIX.pack(b"PPIR", 1, Kind.HELLO, 2, CONTROL + 1) + b"{}"
    kinds = [(30, lambda: raw(b"")),                                                   # port scan
             (20, lambda: raw(b"GET / HTTP/1.1\r\nHost: fixed\r\n\r\n")),              # a web client
             (10, lambda: tls_as(Identity.load(stranger))),                            # unknown certificate
             (10, lambda: tls_as(Identity.load(site / "ids/dealer"))),                 # trusted, wrong role
             (10, lambda: authenticated(b"NOT A PPIR FRAME AT ALL, JUST BYTES....")),  # malformed message
             (10, lambda: authenticated(oversized)),                                   # oversized message
             (10, lambda: authenticated(half[: len(half) // 2], vanish=True))]         # vanished peer
    for count, attempt in kinds:
        for _ in range(count):
            attempt()
            made += 1
    return made


def test_servers_survive_100_bad_connections_then_serve_a_good_session(site, tmp_path):
    stranger = party(tmp_path / "stranger", "Stranger")
    trust.trust_peer(stranger, site / "ids/fixed/identity.pem", "fixed")
    dealer, dealer_at, fixed, fixed_at = _servers(site)
    try:
        start = time.monotonic()
        bad = _bad_connections(fixed_at, site, stranger)
        for _ in range(10):                          # the dealer gets its share: scans and web clients
            with socket.create_connection(tuple(dealer_at.rsplit(":", 1)), timeout=5) as sock:
                sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert bad >= 100 and time.monotonic() - start < 120
        assert fixed.poll() is None and dealer.poll() is None
        done = subprocess.run(PY + ["moving", "--image", str(site / "moving.nrrd"), "--connect", fixed_at,
                                    "--dealer", dealer_at, "--identity", str(site / "ids/moving"), "--levels",
                                    LEVELS, "--output-transform", str(tmp_path / "t.h5")],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert _matches_clear(site, tmp_path / "t.h5")
        assert fixed.poll() is None and dealer.poll() is None
    finally:
        fixed.send_signal(signal.SIGINT)
        dealer.send_signal(signal.SIGINT)
    log = fixed.communicate(timeout=30)[1].splitlines()
    assert sum("connection from" in line for line in log) == bad, "\n".join(log)    # one line per bad connection
    assert sum("session done" in line for line in log) == 1 and "Traceback" not in "\n".join(log)
    assert dealer.communicate(timeout=30)[1].count("connection from") == 10


def test_eight_concurrent_sessions_and_the_ninth_refused(site, tmp_path):
    from ppir.app.outputs import Outputs
    from ppir.app.roles import run_moving
    dealer, dealer_at, fixed, fixed_at = _servers(site, "--max-sessions", "8")
    try:
        me = Identity.load(site / "ids/moving")
        held = [connect(fixed_at, me, "fixed") for _ in range(8)]       # eight sessions in flight
        time.sleep(0.5)
        ninth = connect(fixed_at, me, "fixed")
        refusal = ninth.recv()
        ninth.close()
        for channel in held:
            channel.close()
        assert refusal.kind == Kind.ERROR and "maximum of 8 sessions" in refusal.meta["reason"]

        results: dict[int, object] = {}

        def session(n: int) -> None:
            try:
                settings = Settings(levels=[2, 1])
                # text transforms: HDF5 (.h5) is not thread-safe, and these moving parties share one process
                results[n] = run_moving(str(site / "moving.nrrd"), fixed_at, dealer_at, me, settings,
                                        Outputs(transform=tmp_path / f"t{n}.tfm"), "none", protocol="mpc")
            except Exception as err:  # noqa: BLE001 - checked below
                results[n] = err
        threads = [threading.Thread(target=session, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
        failures = {n: r for n, r in results.items() if isinstance(r, Exception)}
        assert not failures and len(results) == 8
        assert all(_matches_clear(site, tmp_path / f"t{n}.tfm") for n in range(8))
        walls = [results[n]["parties"]["fixed"]["wall_time_s"] for n in range(8)]
        assert max(walls) > 0
    finally:
        fixed.kill()
        dealer.kill()


def test_ctrl_c_on_a_server_with_sessions_in_flight_stops_every_party(site, tmp_path):
    # no disclosure limits: under the default policy a session can end between its first iteration and SIGSTOP
    dealer, dealer_at, fixed, fixed_at = _servers(site, fixed_extra=("--disclosure-policy", policy_free(tmp_path)))
    movings = []
    try:
        for n in range(2):      # one at a time: a party started early could finish while the other is awaited
            moving = subprocess.Popen(PY + ["moving", "--image", str(site / "moving.nrrd"), "--connect", fixed_at,
                                            "--dealer", dealer_at, "--identity", str(site / "ids/moving"), "--levels",
                                            LEVELS, "--progress-json", "--output-transform",
                                            str(tmp_path / f"t{n}.h5")],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            movings.append(moving)
            assert "iteration" in moving.stdout.readline()
            moving.send_signal(signal.SIGSTOP)      # its session stays in flight, the fixed party waiting on it
        fixed.send_signal(signal.SIGINT)
        assert fixed.wait(15) == 130
        start = time.monotonic()
        for moving in movings:
            moving.send_signal(signal.SIGCONT)
        for moving in movings:
            moving.wait(30)
        elapsed = time.monotonic() - start         # from the moment the moving parties run again
        errors = [m.stderr.read() for m in movings]
        assert [m.returncode for m in movings] == [3, 3] and elapsed < 30, (elapsed, errors)
        assert all("fixed party" in error or "dealer party" in error for error in errors), errors
        assert not any((tmp_path / f"t{n}.h5").exists() for n in range(2))
        assert "interrupted" in fixed.stderr.read()
        assert dealer.poll() is None                # the dealer serves on
    finally:
        dealer.kill()
        for moving in movings:
            moving.kill()

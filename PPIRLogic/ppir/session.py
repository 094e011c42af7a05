"""The two-party runtime: the fixed party's server, the dealer, and the moving party's backends.

Every message crosses a mutually authenticated TLS channel (``ppir.net``). The moving party drives:
it opens the session with the fixed party and names the protocol. Under MPC the fixed party then
connects to the dealer named in the session parameters, and the moving party asks the dealer for
correlated randomness; under FHE (``ppir.fhe.backend``) there is no dealer. Message kinds are
listed in ``Kind``.
"""
from __future__ import annotations

import secrets
import time
from enum import IntEnum

import numpy as np
import torch

from .backend import FixedParty, JointBackend, JointResult, PartyStats
from .basis import AffineBasis, BSplineBasis, ControlGrid
from .image import Grid, Volume
from .mpc.protocol import FIXED_BITS, FixedLevel, MovingProduct, dealer_share, fixed_scale
from .mpc.ring import BASIS_BITS, RingBasis, new_seed, random_ring
from .net.channel import Channel, Credentials, Listener, PeerError, connect
from .net.framing import Message
from .pyramid import LevelSpec

SESSION_VERSION = 1


class Kind(IntEnum):
    HELLO = 1
    WELCOME = 2
    LEVEL = 3
    LEVEL_READY = 4
    SAMPLES = 5
    FIXED_MASKED = 6
    PRODUCT = 7
    SHARE = 8
    BYE = 9
    FAREWELL = 10
    ERROR = 11
    FHE_COLUMNS = 12
    FHE_VALUES = 13
    DEALER_HELLO = 20
    DEALER_READY = 21
    DEALER_LEVEL = 22
    DEALER_SEED_B = 23
    DEALER_TRIPLE = 24
    DEALER_SEEDS = 25
    DEALER_SHARE = 26


def expect(channel: Channel, kind: Kind) -> Message:
    """The next message, which must be ``kind`` (an ERROR from the peer becomes a PeerError)."""
    message = channel.recv()
    if message.kind == Kind.ERROR:
        raise PeerError(f"the {channel.peer_role} party stopped: {message.meta.get('reason', 'unknown error')}")
    if message.kind != kind:
        raise PeerError(f"the {channel.peer_role} party sent message {message.kind}, expected {kind.name}")
    return message


def tell_error(channel: Channel | None, reason: str) -> None:
    """Inform the peer why this side stops (best effort)."""
    if channel is not None:
        try:
            channel.send(Message(Kind.ERROR, {"reason": reason}))
        except PeerError:
            pass


def _grid_from(meta: dict) -> Grid:
    d = len(meta["size"])
    return Grid(tuple(meta["size"][::-1]), np.array(meta["spacing"]), np.array(meta["origin"]),
                np.array(meta["direction"]).reshape(d, d))


def basis_spec(basis) -> dict:
    """What the fixed party needs to rebuild the public basis from the sample positions."""
    if isinstance(basis, AffineBasis):
        return {"kind": "affine", "center": basis.center.tolist()}
    return {"kind": "bspline", "control": basis.control.grid.to_dict()}


def rebuild_basis(spec: dict, points: np.ndarray):
    if spec.get("kind") == "affine":
        return AffineBasis(points, np.array(spec["center"], dtype=np.float64))
    if spec.get("kind") == "bspline":
        return BSplineBasis(points, ControlGrid(_grid_from(spec["control"])))
    raise PeerError(f"unknown basis {spec.get('kind')!r}")


def per_level(marks: list[tuple[int, int]]) -> list[dict]:
    """Bytes sent and received between consecutive (sent, received) marks: one entry per level."""
    return [{"bytes_sent": b[0] - a[0], "bytes_received": b[1] - a[1]} for a, b in zip(marks, marks[1:])]


def totals(channels: list[Channel | None]) -> tuple[int, int]:
    """Bytes sent and received over the (open) channels."""
    return (sum(c.traffic.bytes_sent for c in channels if c), sum(c.traffic.bytes_received for c in channels if c))


class _Clock:
    """Wall and CPU time of one party."""

    def __init__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stats(self, channels: list[Channel | None]) -> PartyStats:
        return PartyStats(time.perf_counter() - self._wall, time.process_time() - self._cpu, *totals(channels))


class RemoteBackend(JointBackend):
    """The moving party's end of a session with a remote fixed party: levels, accounting, ending."""

    def __init__(self, fixed: str, credentials: Credentials, hello: dict, timeout: float, retry_for: float):
        self._clock = _Clock()
        self._fixed = connect(fixed, credentials, "fixed", timeout, retry_for)
        self.session_id = secrets.token_hex(8)
        try:
            self._fixed.send(Message(Kind.HELLO, {"version": SESSION_VERSION, "session": self.session_id, **hello}))
            self.welcome = expect(self._fixed, Kind.WELCOME)
            self._grid = _grid_from(self.welcome.meta["grid"])
        except BaseException:
            self.abort("the moving party could not open the session")
            self.close()
            raise
        self._fixed_stats = PartyStats()
        self._marks: list[tuple[int, int]] = []
        self.level_traffic: dict[str, list[dict]] = {"moving": [], "fixed": []}

    @property
    def channels(self) -> list[Channel | None]:
        return [self._fixed]

    @property
    def fixed_grid(self) -> Grid:
        return self._grid

    def start_level(self, spec: LevelSpec) -> Grid:
        self._marks.append(totals(self.channels))
        self._fixed.send(Message(Kind.LEVEL, spec.to_dict()))
        return _grid_from(expect(self._fixed, Kind.LEVEL_READY).meta["grid"])

    def send_samples(self, samples: np.ndarray | None, basis) -> None:
        """Tell the fixed party the sample indices (None: all voxels) and the public basis."""
        arrays = {} if samples is None else {"samples": np.asarray(samples, dtype=np.int64)}
        self._fixed.send(Message(Kind.SAMPLES, {"basis": basis_spec(basis)}, arrays))

    def finish(self, shared: dict, arrays: dict[str, np.ndarray]) -> None:
        """End the session, handing the fixed party what the moving party chose to share."""
        self._marks.append(totals(self.channels))
        self._fixed.send(Message(Kind.BYE, shared, arrays))
        farewell = expect(self._fixed, Kind.FAREWELL).meta
        self._fixed_stats = PartyStats(**farewell["stats"])
        self.level_traffic = {"moving": per_level(self._marks), "fixed": farewell["levels"]}

    def party_stats(self) -> dict[str, PartyStats]:
        return {"moving": self._clock.stats(self.channels), "fixed": self._fixed_stats}

    def abort(self, reason: str) -> None:
        for channel in self.channels:
            tell_error(channel, reason)

    def close(self) -> None:
        for channel in self.channels:
            if channel is not None:
                channel.close()


class MPCBackend(RemoteBackend):
    """The moving party's end of the MPC protocol (see ``ppir.mpc.protocol``)."""

    name = "mpc"

    def __init__(self, fixed: str, dealer: str, credentials: Credentials, session: dict, timeout: float = 60.0,
                 retry_for: float = 10.0):
        self._dealer: Channel | None = None
        super().__init__(fixed, credentials, {"protocol": "mpc", "dealer": dealer, "fixed_bits": FIXED_BITS,
                                              "basis_bits": BASIS_BITS, "settings": session}, timeout, retry_for)
        try:
            self._dealer = connect(dealer, credentials, "dealer", timeout, retry_for)
            self._dealer.send(Message(Kind.DEALER_HELLO, {"version": SESSION_VERSION, "session": self.session_id}))
            expect(self._dealer, Kind.DEALER_READY)
        except BaseException:
            self.abort("the moving party could not open the session")
            self.close()
            raise

    @property
    def channels(self) -> list[Channel | None]:
        return [self._fixed, self._dealer]

    def set_samples(self, samples: np.ndarray | None, basis):
        self.send_samples(samples, basis)
        self._dealer.send(Message(Kind.DEALER_LEVEL, {"samples": int(basis.n_samples)}))
        reply = expect(self._fixed, Kind.FIXED_MASKED)
        self._f = torch.from_numpy(reply.arrays["f"])
        self._fixed_scale = float(reply.meta["scale"])
        self._fixed_sq = float(reply.meta["sum_sq"])
        self._ring_basis = RingBasis(basis)
        return self._ring_basis.effective()

    def joint_product(self, channels: np.ndarray, warped: np.ndarray) -> JointResult:
        self._dealer.send(Message(Kind.DEALER_TRIPLE, {"channels": channels.shape[1] + 1}))
        seeds = expect(self._dealer, Kind.DEALER_SEEDS).arrays
        product = MovingProduct(channels, warped, self._ring_basis, seeds["a"].tobytes(), seeds["r0"].tobytes())
        self._fixed.send(Message(Kind.PRODUCT, {"d": channels.shape[1]}, {"e": product.masked().numpy()}))
        own = product.share(self._f, self._ring_basis)
        share = expect(self._fixed, Kind.SHARE).arrays
        r, cross = product.finish(own, self._ring_basis, torch.from_numpy(share["r"]),
                                  torch.from_numpy(share["cross"]).reshape(()), self._fixed_scale)
        return JointResult(r, cross, self._fixed_sq)

    def finish(self, shared: dict, arrays: dict[str, np.ndarray]) -> None:
        super().finish(shared, arrays)
        self._dealer.send(Message(Kind.BYE, {}))


class _FixedMPC:
    """The fixed party's side of the MPC protocol (its dealer connection included)."""

    def __init__(self, meta: dict, channel: Channel, credentials: Credentials):
        if meta.get("fixed_bits") != FIXED_BITS or meta.get("basis_bits") != BASIS_BITS:
            raise PeerError(f"unsupported session parameters: fixed-point bits {meta.get('fixed_bits')}/"
                            f"{meta.get('basis_bits')}, this side {FIXED_BITS}/{BASIS_BITS}")
        self._meta, self._channel, self._credentials = meta, channel, credentials
        self.dealer: Channel | None = None
        self._level: FixedLevel | None = None

    def welcome(self) -> tuple[dict, dict]:
        return {}, {}

    def open(self) -> None:
        self.dealer = connect(self._meta["dealer"], self._credentials, "dealer", self._channel.timeout, retry_for=10.0)
        self.dealer.send(Message(Kind.DEALER_HELLO, {"version": SESSION_VERSION, "session": self._meta["session"]}))

    @property
    def channels(self) -> list[Channel | None]:
        return [self._channel, self.dealer]

    def on_samples(self, party: FixedParty, basis) -> None:
        seed_b = expect(self.dealer, Kind.DEALER_SEED_B).arrays["b"].tobytes()
        scale = fixed_scale(party.values)
        self._level = FixedLevel.start(party.values, scale, seed_b, RingBasis(basis))
        self._channel.send(Message(Kind.FIXED_MASKED, {"scale": scale, "sum_sq": party.sum_of_squares()},
                                   {"f": self._level.masked().numpy()}))

    def on_product(self, message: Message) -> int:
        """Answer one product; returns the number of samples."""
        e = torch.from_numpy(message.arrays.get("e", np.zeros((0, 0), np.int64)))
        d = int(message.meta.get("d", -1))
        if self._level is None or e.ndim != 2 or e.shape[0] != self._level.b.shape[0] or not 0 < d < e.shape[1]:
            raise PeerError("product message does not match the sample set")
        r1 = torch.from_numpy(expect(self.dealer, Kind.DEALER_SHARE).arrays["r1"])
        if r1.shape != e.shape:
            raise PeerError("the dealer's share does not match the product")
        r, cross = self._level.share(e, r1, d)
        self._channel.send(Message(Kind.SHARE, {}, {"r": r.numpy(), "cross": cross.reshape(1).numpy()}))
        return int(e.shape[0])

    def close(self) -> None:
        if self.dealer is not None:
            self.dealer.close()


def _fixed_protocol(meta: dict, channel: Channel, credentials: Credentials):
    """The fixed party's handler for the protocol the moving party asks for."""
    if meta.get("protocol") == "mpc":
        return _FixedMPC(meta, channel, credentials)
    if meta.get("protocol") == "fhe":
        from .fhe.backend import FixedFHE
        return FixedFHE(meta, channel)
    raise PeerError(f"unsupported session parameters: protocol {meta.get('protocol')}")


def serve_fixed_session(channel: Channel, fixed: Volume, credentials: Credentials, on_result, log,
                        progress=None) -> PartyStats:
    """Answer one registration session for the fixed party; returns its cost.

    ``progress`` receives {"event": "level" | "product", ...} as the session goes.
    """
    clock = _Clock()
    meta = expect(channel, Kind.HELLO).meta
    if meta.get("version") != SESSION_VERSION:
        raise PeerError(f"the moving party speaks session version {meta.get('version')}, this side {SESSION_VERSION}")
    handler = _fixed_protocol(meta, channel, credentials)
    party = FixedParty(fixed)
    extra, arrays = handler.welcome()
    channel.send(Message(Kind.WELCOME, {"grid": party.grid.to_dict(), **extra}, arrays))
    try:
        handler.open()
        grid = None
        marks: list[tuple[int, int]] = []
        products = 0
        while True:
            message = channel.recv()
            if message.kind == Kind.LEVEL:
                marks.append(totals(handler.channels))
                grid = party.start_level(LevelSpec(int(message.meta["factor"]), float(message.meta["sigma"])))
                products = 0
                if progress:
                    progress({"event": "level", "level": len(marks), "factor": int(message.meta["factor"]),
                              "size": list(grid.size)})
                channel.send(Message(Kind.LEVEL_READY, {"grid": grid.to_dict()}))
            elif message.kind == Kind.SAMPLES:
                if grid is None:
                    raise PeerError("samples sent before any pyramid level")
                samples = message.arrays.get("samples")
                if samples is not None and (samples.ndim != 1 or samples.min(initial=0) < 0
                                            or samples.max(initial=0) >= grid.n_voxels):
                    raise PeerError("sample indices outside the fixed grid")
                basis = rebuild_basis(message.meta["basis"], grid.points(samples))
                party.set_samples(samples, basis)
                handler.on_samples(party, basis)
            elif message.kind == Kind.PRODUCT:
                n_samples = handler.on_product(message)
                products += 1
                if progress:
                    sent, received = totals(handler.channels)
                    progress({"event": "product", "level": len(marks), "products": products,
                              "samples": n_samples, "bytes_sent": sent, "bytes_received": received})
            elif message.kind == Kind.BYE:
                marks.append(totals(handler.channels))
                on_result(message)
                stats = clock.stats(handler.channels)
                channel.send(Message(Kind.FAREWELL, {"stats": stats.to_dict(), "levels": per_level(marks)}))
                return stats
            elif message.kind == Kind.ERROR:
                raise PeerError(f"the moving party stopped: {message.meta.get('reason', 'unknown error')}")
            else:
                raise PeerError(f"unexpected message {message.kind} from the moving party")
    finally:
        handler.close()


def serve_dealer_session(listener: Listener, log, wait: float | None = None) -> None:
    """Pair one moving and one fixed party by session id and serve their correlated randomness."""
    first = listener.accept(("moving", "fixed"), wait=wait)
    second = listener.accept(("fixed",) if first.peer_role == "moving" else ("moving",), wait=60.0)
    moving, fixed = (first, second) if first.peer_role == "moving" else (second, first)
    try:
        hellos = [expect(moving, Kind.DEALER_HELLO).meta, expect(fixed, Kind.DEALER_HELLO).meta]
        if hellos[0].get("session") != hellos[1].get("session"):
            raise PeerError("the moving and fixed parties belong to different sessions")
        moving.send(Message(Kind.DEALER_READY, {}))
        b = None
        while True:
            message = moving.recv()
            if message.kind == Kind.DEALER_LEVEL:
                seed_b = new_seed()
                b = random_ring(seed_b, (int(message.meta["samples"]),))
                fixed.send(Message(Kind.DEALER_SEED_B, {}, {"b": np.frombuffer(seed_b, np.uint8)}))
            elif message.kind == Kind.DEALER_TRIPLE:
                if b is None:
                    raise PeerError("triple requested before any sample set")
                seed_a, seed_r0 = new_seed(), new_seed()
                # seeds first: the moving party prepares its product while the dealer computes r1
                moving.send(Message(Kind.DEALER_SEEDS, {}, {"a": np.frombuffer(seed_a, np.uint8),
                                                            "r0": np.frombuffer(seed_r0, np.uint8)}))
                r1 = dealer_share(seed_a, seed_r0, b, int(message.meta["channels"]))
                fixed.send(Message(Kind.DEALER_SHARE, {}, {"r1": r1.numpy()}))
            elif message.kind == Kind.BYE:
                log("session done")
                return
            elif message.kind == Kind.ERROR:
                tell_error(fixed, message.meta.get("reason", "the moving party stopped"))
                raise PeerError(f"the moving party stopped: {message.meta.get('reason')}")
            else:
                raise PeerError(f"unexpected message {message.kind} from the moving party")
    finally:
        moving.close()
        fixed.close()

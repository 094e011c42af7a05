"""The MPC protocol's session ends: the moving party's backend, the fixed party's handler, the dealer.

The arithmetic is in ``ppir.protocols.mpc.protocol``; the messages and the shared runtime in
``ppir.protocols.runtime``; the connections in ``ppir.protocols.net``.
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from ppir.common.errors import PPIRError
from ppir.engine.joint import FixedParty, JointResult, PartyStats
from ppir.engine.settings import MAX_HISTOGRAM_BINS
from ppir.protocols.mpc.mutual import (
    BIN_BITS,
    WEIGHT_BITS,
    FixedBins,
    MovingBinned,
    MovingHistogram,
    dealer_binned,
    dealer_histogram,
)
from ppir.protocols.mpc.protocol import (
    FIXED_BITS,
    MAX_CHANNEL_BITS,
    MIN_CHANNEL_BITS,
    FixedLevel,
    MovingProduct,
    dealer_share,
)
from ppir.protocols.mpc.ring import BASIS_BITS, RingBasis, encode, new_seed, random_ring
from ppir.protocols.net.channel import Channel, Identity, PeerError
from ppir.protocols.net.framing import Message
from ppir.protocols.runtime import (
    IDLE_SECONDS,
    LIMITS,
    SESSION_VERSION,
    Kind,
    RemoteBackend,
    _Clock,
    expect,
    field,
    fixed_sums,
    open_channel,
    stats_from,
    tell_error,
)

PAIR_SECONDS = 60.0   # how long the dealer waits for the second party of a session
MAX_CHANNELS = 16     # moving channels per product (SSD: d + 1; MI's gradient: d)
BINNED_SEEDS = ("av", "s0", "a", "r0")      # the moving party's seeds for an MI gradient product


def _seed(arrays: dict, name: str, party: str) -> bytes:
    """A 256-bit seed from a message's arrays (a PeerError if it is missing or malformed)."""
    seed = arrays.get(name)
    if seed is None or seed.dtype != np.uint8 or seed.shape != (32,):
        raise PeerError(f"the {party} party's seed {name!r} is missing or malformed")
    return seed.tobytes()


def _ring(arrays: dict, name: str, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """A ring array of exactly ``shape`` from a message (a PeerError naming ``what`` otherwise)."""
    value = arrays.get(name)
    if value is None or value.dtype != np.int64 or tuple(value.shape) != tuple(shape):
        got = "nothing" if value is None else f"{value.dtype} {tuple(value.shape)}"
        raise PeerError(f"{what}: {name!r} must be int64 of shape {tuple(shape)}, got {got}")
    return torch.from_numpy(value)


class MPCBackend(RemoteBackend):
    """The moving party's end of the MPC protocol (see ``ppir.mpc.protocol``).

    It opens its own channel to the dealer first and names that dealer (address and certificate
    fingerprint) in its HELLO; the fixed party goes on only if that is the dealer it was configured with.
    """

    name = "mpc"

    def __init__(self, fixed: str, dealer: str, identity: Identity, session: dict, timeout: float = 60.0,
                 retry_for: float = 10.0):
        self._dealer: Channel | None = open_channel(dealer, identity, "dealer", timeout, retry_for)
        self._dealer_stats = PartyStats()
        hello = {"protocol": "mpc", "dealer": {"address": dealer, "fingerprint": self._dealer.peer.fingerprint},
                 "fixed_bits": FIXED_BITS, "basis_bits": BASIS_BITS, "settings": session}
        self._bins = session["histogram_bins"] if session.get("metric") == "mi" else 0
        try:
            super().__init__(fixed, identity, hello, timeout, retry_for)
        except BaseException:
            tell_error(self._dealer, "the moving party could not open the session")
            self._dealer.close()
            raise
        try:
            self._dealer.send(Message(Kind.DEALER_HELLO, {"version": SESSION_VERSION, "session": self.session_id,
                                                          "role": "moving", "peer": self._fixed.peer.fingerprint}))
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
        self._ring_basis = RingBasis(basis)
        n = int(basis.n_samples)
        if self._bins:      # MI: the fixed party's bin memberships, masked once per sample set
            self._dealer.send(Message(Kind.DEALER_LEVEL, {"samples": n, "columns": self._bins}))
            reply = expect(self._fixed, Kind.FIXED_MASKED)
            self._f = _ring(reply.arrays, "f", (n, self._bins), "the fixed party's masked bins")
            return self._ring_basis.effective()
        self._dealer.send(Message(Kind.DEALER_LEVEL, {"samples": n}))
        reply = expect(self._fixed, Kind.FIXED_MASKED)
        self._f = torch.from_numpy(reply.arrays["f"])
        self._fixed_scale = float(reply.meta["scale"])
        self._sums = fixed_sums(reply.meta)
        return self._ring_basis.effective()

    def histogram_product(self, weights) -> np.ndarray:
        """MI's joint histogram M^T W (``ppir.protocols.mpc.mutual``)."""
        self._dealer.send(Message(Kind.DEALER_TRIPLE, {"op": "histogram"}))
        seeds = expect(self._dealer, Kind.DEALER_SEEDS).arrays
        product = MovingHistogram(weights, self._f, _seed(seeds, "a", "dealer"), _seed(seeds, "r0", "dealer"))
        self._fixed.send(Message(Kind.PRODUCT, {"op": "histogram"}, {"e": product.e.numpy()}))
        share = _ring(expect(self._fixed, Kind.SHARE).arrays, "h", (self._bins, self._bins), "the fixed party's share")
        return product.finish(share)

    def binned_product(self, channels: np.ndarray, bin_weights: np.ndarray) -> np.ndarray:
        """MI's gradient product Phi^T (g * sum_l M_l v_l) (``ppir.protocols.mpc.mutual``)."""
        n, d = channels.shape
        self._dealer.send(Message(Kind.DEALER_TRIPLE, {"op": "binned", "channels": d}))
        arrays = expect(self._dealer, Kind.DEALER_SEEDS).arrays
        seeds = {name: _seed(arrays, name, "dealer") for name in BINNED_SEEDS}
        product = MovingBinned(channels, bin_weights, self._ring_basis, self._f, seeds)
        self._fixed.send(Message(Kind.PRODUCT, {"op": "binned", "d": d, "bits": product.bits},
                                 {"e": product.e_v.numpy(), "g": product.e_g.numpy()}))
        reply = expect(self._fixed, Kind.SHARE).arrays
        f = _ring(reply, "f", (n,), "the fixed party's opening")
        r = _ring(reply, "r", (self._ring_basis.outputs, d), "the fixed party's share")
        return product.finish(f, r)

    def joint_product(self, channels: np.ndarray, warped: np.ndarray) -> JointResult:
        self._dealer.send(Message(Kind.DEALER_TRIPLE, {"channels": channels.shape[1] + 1}))
        seeds = expect(self._dealer, Kind.DEALER_SEEDS).arrays
        product = MovingProduct(channels, warped, self._ring_basis, seeds["a"].tobytes(), seeds["r0"].tobytes())
        self._fixed.send(Message(Kind.PRODUCT, {"d": channels.shape[1], "bits": product.bits},
                                 {"e": product.masked().numpy()}))
        own = product.share(self._f, self._ring_basis)
        share = expect(self._fixed, Kind.SHARE).arrays
        r, cross = product.finish(own, self._ring_basis, torch.from_numpy(share["r"]),
                                  torch.from_numpy(share["cross"]).reshape(()), self._fixed_scale)
        return JointResult(r, cross, *self._sums)

    def finish(self, shared: dict, arrays: dict[str, np.ndarray]) -> None:
        super().finish(shared, arrays)
        self._dealer.send(Message(Kind.BYE, {}))
        self._dealer_stats = stats_from(expect(self._dealer, Kind.DEALER_FAREWELL).meta, "dealer")

    def party_stats(self) -> dict[str, PartyStats]:
        return {**super().party_stats(), "dealer": self._dealer_stats}


def moving_backend(fixed: str, dealer: str, identity: Identity, settings: dict) -> MPCBackend:
    """The moving party's end of an MPC session (registry entry point)."""
    return MPCBackend(fixed, dealer, identity, settings)


class FixedHandler:
    """The fixed party's side of the MPC protocol, with the one dealer this party was configured with."""

    def __init__(self, meta: dict, channel: Channel, identity: Identity, dealer: str | None):
        if meta.get("fixed_bits") != FIXED_BITS or meta.get("basis_bits") != BASIS_BITS:
            raise PeerError(f"unsupported session parameters: fixed-point bits {meta.get('fixed_bits')}/"
                            f"{meta.get('basis_bits')}, this side {FIXED_BITS}/{BASIS_BITS}")
        if dealer is None:
            raise PeerError("this fixed party has no dealer configured (ppir fixed --dealer HOST:PORT), so it "
                            "serves FHE sessions only")
        named = meta.get("dealer")
        self._named = named if isinstance(named, dict) else {}
        self._meta, self._channel, self._identity, self._address = meta, channel, identity, dealer
        self.dealer: Channel | None = None
        self._level: FixedLevel | None = None

    def welcome(self) -> tuple[dict, dict]:
        return {}, {}

    def open(self) -> None:
        """Connect to the configured dealer (never to an address from the moving party); it must be the named one."""
        self.dealer = open_channel(self._address, self._identity, "dealer", self._channel.timeout, retry_for=10.0)
        own = self.dealer.peer.fingerprint
        if self._named.get("fingerprint") != own:
            raise PeerError(f"this fixed party works only with its own dealer at {self._address} (SHA-256 {own}); "
                            f"the moving party named the dealer at {self._named.get('address')!r} "
                            f"(SHA-256 {self._named.get('fingerprint')})")
        self.dealer.send(Message(Kind.DEALER_HELLO, {"version": SESSION_VERSION, "session": self._meta["session"],
                                                     "role": "fixed", "peer": self._channel.peer.fingerprint}))

    @property
    def channels(self) -> list[Channel | None]:
        return [self._channel, self.dealer]

    def on_samples(self, party: FixedParty, basis) -> None:
        self._party = party
        seed_b = _seed(expect(self.dealer, Kind.DEALER_SEED_B).arrays, "b", "dealer")
        if party.metric == "mi":
            self._level = FixedBins(party.bin_indices, party.histogram_bins, seed_b, RingBasis(basis))
            self._channel.send(Message(Kind.FIXED_MASKED, {}, {"f": self._level.masked().numpy()}))
            return
        scale = party.scale
        self._level = FixedLevel.start(party.values, scale, seed_b, RingBasis(basis))
        self._channel.send(Message(Kind.FIXED_MASKED, {"scale": scale, **party.statistics()},
                                   {"f": self._level.masked().numpy()}))

    def on_product(self, message: Message) -> int | None:
        """Answer one product message; returns the number of samples (None: a product's second message)."""
        if self._level is None:
            raise PeerError("product message before any sample set")
        op = message.meta.get("op", "ssd")
        if (op in ("histogram", "binned")) != (self._party.metric == "mi"):
            raise PeerError(f"product message: operation {op!r} in a {self._party.metric.upper()} session")
        if op == "histogram":
            return self._histogram(message)
        if op == "binned":
            return self._binned(message)
        if op != "ssd":
            raise PeerError(f"product message: unknown operation {op!r}")
        e = torch.from_numpy(message.arrays.get("e", np.zeros((0, 0), np.int64)))
        d = int(message.meta.get("d", -1))
        if self._level is None or e.ndim != 2 or e.shape[0] != self._level.b.shape[0] or not 0 < d < e.shape[1]:
            raise PeerError("product message does not match the sample set")
        bits = message.meta.get("bits")
        if not isinstance(bits, int) or not MIN_CHANNEL_BITS <= bits <= MAX_CHANNEL_BITS:
            raise PeerError(f"product message: channel precision {bits!r} outside "
                            f"[{MIN_CHANNEL_BITS}, {MAX_CHANNEL_BITS}] bits")
        self._party.begin_product()
        r1 = torch.from_numpy(expect(self.dealer, Kind.DEALER_SHARE).arrays["r1"])
        if r1.shape != e.shape:
            raise PeerError("the dealer's share does not match the product")
        r, cross = self._level.share(e, r1, d)
        if self._party.policy.noise_multiplier > 0:      # the policy's noise, in the product's fixed point
            noise_r = self._party.output_noise(tuple(r.shape)) / self._level.basis.scales[:, None]
            r = r + encode(noise_r, bits + FIXED_BITS + BASIS_BITS)
            cross = cross + encode(np.array([self._party.noise(())]), bits + FIXED_BITS)[0]
        self._channel.send(Message(Kind.SHARE, {}, {"r": r.numpy(), "cross": cross.reshape(1).numpy()}))
        return int(e.shape[0])

    def _histogram(self, message: Message) -> int:
        """MI: the fixed party's share of the joint histogram M^T W, with the policy's noise."""
        level = self._level
        e = _ring(message.arrays, "e", level.shape, "histogram product")
        self._party.begin_histogram()
        r1 = _ring(expect(self.dealer, Kind.DEALER_SHARE).arrays, "r1", (level.shape[1],) * 2, "the dealer's share")
        share = level.histogram_share(e, r1)
        if self._party.policy.noise_multiplier > 0:      # in counts, in the weights' fixed point
            share = share + encode(self._party.histogram_noise(), WEIGHT_BITS)
        self._channel.send(Message(Kind.SHARE, {}, {"h": share.numpy()}))
        return level.shape[0]

    def _binned(self, message: Message) -> None:
        """MI: the fixed party's share of Phi^T (g * sum_l M_l v_l), after its histogram."""
        level = self._level
        n = level.shape[0]
        d = message.meta.get("d")
        if not isinstance(d, int) or isinstance(d, bool) or not 0 < d <= self._party.grid.dim:
            raise PeerError(f"gradient product: {d!r} channels for a {self._party.grid.dim}D image")
        bits = message.meta.get("bits")
        if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_CHANNEL_BITS <= bits <= MAX_CHANNEL_BITS:
            raise PeerError(f"gradient product: channel precision {bits!r} outside "
                            f"[{MIN_CHANNEL_BITS}, {MAX_CHANNEL_BITS}] bits")
        e_v = _ring(message.arrays, "e", level.shape, "gradient product")
        e_g = _ring(message.arrays, "g", (n, d), "gradient product")
        try:
            self._party.begin_binned()
        except PPIRError as err:
            raise PeerError(str(err)) from None
        share = expect(self.dealer, Kind.DEALER_SHARE).arrays
        s1 = _ring(share, "s1", (n,), "the dealer's share")
        r1 = _ring(share, "r1", (n, d), "the dealer's share")
        b2 = random_ring(_seed(share, "b", "dealer"), (n,))
        f, r = level.binned_share(e_v, e_g, s1, b2, r1)
        if self._party.policy.noise_multiplier > 0:      # normalised units, in the product's fixed point
            noise = self._party.binned_noise(tuple(r.shape)) / level.basis.scales[:, None]
            r = r + encode(noise, bits + BIN_BITS + BASIS_BITS)
        self._channel.send(Message(Kind.SHARE, {}, {"f": f.numpy(), "r": r.numpy()}))
        # returns None: the histogram's message counted this product

    def close(self) -> None:
        if self.dealer is not None:
            self.dealer.close()


class DealerHub:
    """The dealer: pairs one moving and one fixed party by session id and serves their correlated randomness.

    Each party's connection arrives in its own thread (``ppir.net.server``); the second one of a pair
    runs the session, the first waits for it to end. Each party names the other by certificate
    fingerprint, and both must match the channels the dealer actually holds.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[str, Channel, dict, threading.Event]] = {}

    def handle(self, channel: Channel) -> str | None:
        channel.limits = LIMITS
        hello = expect(channel, Kind.DEALER_HELLO)
        session, role = field(hello, "session", str), field(hello, "role", str)
        field(hello, "peer", str)
        if hello.meta.get("version") != SESSION_VERSION:
            raise PeerError(f"session version {hello.meta.get('version')}, this side {SESSION_VERSION}")
        if role not in channel.peer.roles:
            raise PeerError(f"the peer {channel.peer.subject} claims the {role} role, which this dealer does not "
                            f"trust it with (trusted as: {', '.join(channel.peer.roles)})")
        with self._lock:
            first = self._waiting.get(session)
            if first is None:
                done = threading.Event()
                self._waiting[session] = (role, channel, hello.meta, done)
            elif first[0] == role:
                raise PeerError(f"a second {role} party for session {session}")
            else:
                del self._waiting[session]
        if first is None:
            return self._wait(session, done)
        try:
            moving, fixed = (channel, first[1]) if role == "moving" else (first[1], channel)
            claims = {"moving": hello.meta if role == "moving" else first[2],
                      "fixed": hello.meta if role == "fixed" else first[2]}
            if claims["moving"]["peer"] != fixed.peer.fingerprint or claims["fixed"]["peer"] != moving.peer.fingerprint:
                tell_error(moving, "the dealer's two parties do not name each other")
                tell_error(fixed, "the dealer's two parties do not name each other")
                raise PeerError(f"session {session}: the moving and fixed parties do not name each other")
            return serve_dealer_session(moving, fixed)
        finally:
            first[3].set()

    def _wait(self, session: str, done: threading.Event) -> None:
        """The first party of a pair: wait for the second, then for the session to end."""
        if not done.wait(PAIR_SECONDS):
            with self._lock:
                unpaired = self._waiting.pop(session, None) is not None
            if unpaired:
                raise PeerError(f"session {session}: the other party did not reach the dealer within "
                                f"{PAIR_SECONDS:g} s")
            done.wait()
        return None


def _seeds(names) -> dict[str, bytes]:
    return {name: new_seed() for name in names}


def _as_arrays(seeds: dict[str, bytes]) -> dict[str, np.ndarray]:
    return {name: np.frombuffer(seed, np.uint8) for name, seed in seeds.items()}


def _serve_mi(message: Message, moving: Channel, fixed: Channel, b: torch.Tensor | None) -> None:
    """The correlated randomness of one MI product (``ppir.protocols.mpc.mutual``); seeds go first."""
    if b is None or b.ndim != 2:
        raise PeerError("an MI product requested before a sample set of bins")
    if message.meta["op"] == "histogram":
        seeds = _seeds(("a", "r0"))
        moving.send(Message(Kind.DEALER_SEEDS, {}, _as_arrays(seeds)))
        fixed.send(Message(Kind.DEALER_SHARE, {}, {"r1": dealer_histogram(seeds["a"], seeds["r0"], b).numpy()}))
        return
    d = field(message, "channels", int)
    if not 0 < d <= MAX_CHANNELS:
        raise PeerError(f"an MI gradient product with {d} channels")
    seeds = _seeds(BINNED_SEEDS + ("b",))
    moving.send(Message(Kind.DEALER_SEEDS, {}, _as_arrays({name: seeds[name] for name in BINNED_SEEDS})))
    s1, r1 = dealer_binned(seeds, b, d)
    fixed.send(Message(Kind.DEALER_SHARE, {}, {"s1": s1.numpy(), "r1": r1.numpy(), **_as_arrays({"b": seeds["b"]})}))


def serve_dealer_session(moving: Channel, fixed: Channel) -> str:
    """Serve one session's correlated randomness; the dealer's cost goes to the moving party at the end."""
    clock = _Clock()
    moving.send(Message(Kind.DEALER_READY, {}))
    b = None
    while True:
        message = moving.recv(idle=IDLE_SECONDS)
        if message.kind == Kind.DEALER_LEVEL:
            samples = field(message, "samples", int)
            if not 0 < samples <= 1 << 25:
                raise PeerError(f"sample count {samples} out of range")
            columns = message.meta.get("columns")           # MI: the fixed bins, masked as a matrix
            if columns is not None and (not isinstance(columns, int) or isinstance(columns, bool)
                                        or not 1 < columns <= MAX_HISTOGRAM_BINS):
                raise PeerError(f"bin count {columns!r} out of range")
            seed_b = new_seed()
            b = random_ring(seed_b, (samples,) if columns is None else (samples, columns))
            fixed.send(Message(Kind.DEALER_SEED_B, {}, {"b": np.frombuffer(seed_b, np.uint8)}))
        elif message.kind == Kind.DEALER_TRIPLE and message.meta.get("op") in ("histogram", "binned"):
            _serve_mi(message, moving, fixed, b)
        elif message.kind == Kind.DEALER_TRIPLE:
            channels = field(message, "channels", int)
            if b is None or b.ndim != 1 or not 1 < channels <= MAX_CHANNELS:
                raise PeerError("triple requested before any sample set or with a bad channel count")
            seed_a, seed_r0 = new_seed(), new_seed()
            # seeds first: the moving party prepares its product while the dealer computes r1
            moving.send(Message(Kind.DEALER_SEEDS, {}, {"a": np.frombuffer(seed_a, np.uint8),
                                                        "r0": np.frombuffer(seed_r0, np.uint8)}))
            r1 = dealer_share(seed_a, seed_r0, b, channels)
            fixed.send(Message(Kind.DEALER_SHARE, {}, {"r1": r1.numpy()}))
        elif message.kind == Kind.BYE:
            stats = clock.stats([moving, fixed])
            moving.send(Message(Kind.DEALER_FAREWELL, {"stats": stats.to_dict()}))
            return (f"session done: {stats.bytes_sent} bytes sent, {stats.bytes_received} received, "
                    f"{stats.wall_time_s:.1f} s")
        elif message.kind == Kind.ERROR:
            tell_error(fixed, message.meta.get("reason", "the moving party stopped"))
            raise PeerError(f"the moving party stopped: {message.meta.get('reason')}")
        else:
            raise PeerError(f"unexpected message {message.kind} from the moving party")

"""The MPC protocol's session ends: the moving party's backend, the fixed party's handler, the dealer.

The arithmetic is in ``ppir.mpc.protocol``; the messages and the shared runtime in ``ppir.session``.
"""
from __future__ import annotations

import numpy as np
import torch

from ppir.engine.joint import FixedParty, JointResult
from ppir.protocols.mpc.protocol import (
    FIXED_BITS,
    MAX_CHANNEL_BITS,
    MIN_CHANNEL_BITS,
    FixedLevel,
    MovingProduct,
    dealer_share,
)
from ppir.protocols.mpc.ring import BASIS_BITS, RingBasis, encode, new_seed, random_ring
from ppir.protocols.net.channel import Channel, Credentials, Listener, PeerError, connect
from ppir.protocols.net.framing import Message
from ppir.protocols.runtime import IDLE_SECONDS, SESSION_VERSION, Kind, RemoteBackend, expect, fixed_sums, tell_error


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
        self._sums = fixed_sums(reply.meta)
        self._ring_basis = RingBasis(basis)
        return self._ring_basis.effective()

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


def moving_backend(fixed: str, dealer: str, credentials: Credentials, settings: dict) -> MPCBackend:
    """The moving party's end of an MPC session (registry entry point)."""
    return MPCBackend(fixed, dealer, credentials, settings)


class FixedHandler:
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
        self._party = party
        seed_b = expect(self.dealer, Kind.DEALER_SEED_B).arrays["b"].tobytes()
        scale = party.scale
        self._level = FixedLevel.start(party.values, scale, seed_b, RingBasis(basis))
        self._channel.send(Message(Kind.FIXED_MASKED, {"scale": scale, **party.statistics()},
                                   {"f": self._level.masked().numpy()}))

    def on_product(self, message: Message) -> int:
        """Answer one product; returns the number of samples."""
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
            noise_r = self._party.noise(tuple(r.shape)) / self._level.basis.scales[:, None]
            r = r + encode(noise_r, bits + FIXED_BITS + BASIS_BITS)
            cross = cross + encode(np.array([self._party.noise(())]), bits + FIXED_BITS)[0]
        self._channel.send(Message(Kind.SHARE, {}, {"r": r.numpy(), "cross": cross.reshape(1).numpy()}))
        return int(e.shape[0])

    def close(self) -> None:
        if self.dealer is not None:
            self.dealer.close()


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
            message = moving.recv(idle=IDLE_SECONDS)
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

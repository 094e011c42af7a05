"""The two-party runtime shared by the protocols: messages, the moving party's remote backend, the fixed server.

Every message crosses a mutually authenticated TLS channel between pinned identities
(``ppir.protocols.net``). The moving party drives: it opens the session with the fixed party and
names the protocol; the fixed party answers with that protocol's handler (``ppir.protocols.mpc``:
secret sharing with the fixed party's own dealer; ``ppir.protocols.fhe``: CKKS, no dealer). Message
kinds are listed in ``Kind``, each with its body limit in ``LIMITS``. Each protocol's libraries are
imported only when that protocol is used.
"""
from __future__ import annotations

import secrets
import time
from enum import IntEnum

import numpy as np

from ppir.common.errors import PPIRError
from ppir.common.usage import peak_memory_mb
from ppir.engine.basis import AffineBasis, BSplineBasis, ControlGrid
from ppir.engine.disclosure import DisclosurePolicy
from ppir.engine.image import Grid, Volume
from ppir.engine.joint import FixedParty, JointBackend, PartyStats
from ppir.engine.pyramid import LevelSpec
from ppir.engine.settings import Settings
from ppir.protocols import registry
from ppir.protocols.net.channel import DEFAULT_MAX_MESSAGE, Channel, Identity, PeerError, connect
from ppir.protocols.net.framing import Message
from ppir.protocols.terms import SessionTerms

SESSION_VERSION = 3     # 3: both parties plan the levels within the policy (plan_within); 2: the policy in WELCOME
                        # gained the B-spline floor and spread checks
IDLE_SECONDS = 3600.0   # how long a serving party waits for the moving party's next request


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
    SAMPLES_KEPT = 14
    DEALER_HELLO = 20
    DEALER_READY = 21
    DEALER_LEVEL = 22
    DEALER_SEED_B = 23
    DEALER_TRIPLE = 24
    DEALER_SEEDS = 25
    DEALER_SHARE = 26
    DEALER_FAREWELL = 27


CONTROL = 1 << 16
"""The largest body of each kind a party accepts: control messages carry no arrays to speak of."""
LIMITS = {kind: CONTROL for kind in Kind} | {
    kind: DEFAULT_MAX_MESSAGE for kind in (Kind.WELCOME, Kind.SAMPLES, Kind.SAMPLES_KEPT, Kind.FIXED_MASKED,
                                           Kind.PRODUCT, Kind.SHARE, Kind.BYE, Kind.FHE_COLUMNS, Kind.FHE_VALUES,
                                           Kind.DEALER_SHARE)}


def field(message: Message, name: str, kind: type | tuple[type, ...]):
    """``message.meta[name]``, which must be a ``kind`` (and not a bool), else a PeerError naming it."""
    value = message.meta.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise PeerError(f"message {Kind(message.kind).name}: field {name!r} missing or of the wrong type")
    return value


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


def open_channel(address: str, identity: Identity, role: str, timeout: float, retry_for: float) -> Channel:
    """A session channel to the trusted party of ``role`` at ``address``."""
    channel = connect(address, identity, role, timeout, retry_for)
    channel.limits = LIMITS
    return channel


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
    """The public basis the moving party describes (a PeerError if the description is malformed)."""
    try:
        if spec.get("kind") == "affine":
            center = np.array(spec["center"], dtype=np.float64)
            if center.shape != (points.shape[1],):
                raise ValueError("centre of the wrong dimension")
            return AffineBasis(points, center)
        if spec.get("kind") == "bspline":
            return BSplineBasis(points, ControlGrid(_grid_from(spec["control"])))
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise PeerError(f"malformed basis from the moving party ({err})") from None
    raise PeerError(f"unknown basis {spec.get('kind')!r}")


def fixed_sums(meta: dict) -> tuple[float, float]:
    """(sum J^2, sum J) as the fixed party released them with a sample set (sum J only for NCC, else NaN)."""
    try:
        return float(meta["sum_sq"]), float(meta.get("sum", "nan"))
    except (KeyError, TypeError, ValueError):
        raise PeerError("the fixed party's sample-set sums are missing or malformed") from None


def _level_spec(meta: dict) -> LevelSpec:
    try:
        return LevelSpec(int(meta["factor"]), float(meta["sigma"]))
    except (KeyError, TypeError, ValueError):
        raise PeerError("malformed level request") from None


def per_level(marks: list[tuple[int, int]]) -> list[dict]:
    """Bytes sent and received between consecutive (sent, received) marks: one entry per level."""
    return [{"bytes_sent": b[0] - a[0], "bytes_received": b[1] - a[1]} for a, b in zip(marks, marks[1:])]


def totals(channels: list[Channel | None]) -> tuple[int, int]:
    """Bytes sent and received over the (open) channels."""
    return (sum(c.traffic.bytes_sent for c in channels if c), sum(c.traffic.bytes_received for c in channels if c))


def stats_from(meta: dict, party: str) -> PartyStats:
    """A party's cost as it reported it at the end of a session."""
    try:
        return PartyStats(**{k: float(v) if k.endswith(("_s", "_mb")) else int(v)
                             for k, v in meta["stats"].items()})
    except (KeyError, TypeError, ValueError, AttributeError):
        raise PeerError(f"the {party} party's final report is malformed") from None


class _Clock:
    """Wall and CPU time of one party, and its process's peak memory."""

    def __init__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stats(self, channels: list[Channel | None]) -> PartyStats:
        return PartyStats(time.perf_counter() - self._wall, time.process_time() - self._cpu, *totals(channels),
                          peak_memory_mb())


class RemoteBackend(JointBackend):
    """The moving party's end of a session with a remote fixed party: levels, accounting, ending."""

    def __init__(self, fixed: str, identity: Identity, hello: dict, timeout: float, retry_for: float):
        self._clock = _Clock()
        self._fixed = open_channel(fixed, identity, "fixed", timeout, retry_for)
        self.session_id = secrets.token_hex(8)
        try:
            self._fixed.send(Message(Kind.HELLO, {"version": SESSION_VERSION, "session": self.session_id, **hello}))
            self.welcome = expect(self._fixed, Kind.WELCOME)
            self._grid = _grid_from(self.welcome.meta["grid"])
            self.policy = DisclosurePolicy.from_dict(self.welcome.meta.get("policy"))
            self._fixed_mask = self.welcome.meta.get("fixed_mask", False)
            if not isinstance(self._fixed_mask, bool):
                raise PeerError("the fixed party's WELCOME: field 'fixed_mask' is not true or false")
        except BaseException:
            self.abort("the moving party could not open the session")
            self.close()
            raise
        self._offered = False
        self._fixed_stats = PartyStats()
        self._disclosure: dict = {}
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
        grid = _grid_from(expect(self._fixed, Kind.LEVEL_READY).meta["grid"])
        self._level_voxels = grid.n_voxels
        return grid

    @property
    def fixed_mask(self) -> bool:
        return self._fixed_mask

    def keep_samples(self, samples: np.ndarray | None, basis) -> np.ndarray | None:
        """Tell the fixed party the sample indices (None: all voxels) and the public basis; with a fixed
        mask, it answers with the samples it keeps (checked to be some of these)."""
        arrays = {} if samples is None else {"samples": np.asarray(samples, dtype=np.int64)}
        self._fixed.send(Message(Kind.SAMPLES, {"basis": basis_spec(basis)}, arrays))
        self._offered = True
        if not self._fixed_mask:
            return samples
        kept = expect(self._fixed, Kind.SAMPLES_KEPT).arrays.get("kept")
        n_voxels = self._level_voxels
        if kept is None or kept.dtype != np.int64 or kept.ndim != 1 or np.any(np.diff(kept) <= 0) \
                or kept.min(initial=0) < 0 or kept.max(initial=0) >= n_voxels \
                or (samples is not None and not np.isin(kept, samples).all()):
            raise PeerError("the fixed party's kept samples are not a subset of the samples sent")
        return kept

    def send_samples(self, samples: np.ndarray | None, basis) -> None:
        """Before a protocol's sample-set exchange: the indices go to the fixed party unless ``keep_samples``
        already sent them (a caller that offers nothing first gets every sample kept, or a PeerError)."""
        if self._offered:
            self._offered = False
            return
        kept = self.keep_samples(samples, basis)
        self._offered = False
        if kept is not samples and (samples is None or len(kept) != len(samples)):
            raise PeerError("the fixed party masks its samples: offer them with keep_samples first")

    def finish(self, shared: dict, arrays: dict[str, np.ndarray]) -> None:
        """End the session, handing the fixed party what the moving party chose to share."""
        self._marks.append(totals(self.channels))
        self._fixed.send(Message(Kind.BYE, shared, arrays))
        farewell = expect(self._fixed, Kind.FAREWELL).meta
        self._fixed_stats = stats_from(farewell, "fixed")
        self._disclosure = farewell.get("disclosure", {})
        self.level_traffic = {"moving": per_level(self._marks), "fixed": farewell["levels"]}

    def agree(self, settings: Settings) -> DisclosurePolicy:
        """The settings went with the opening message; the fixed party answered with its policy."""
        return self.policy

    def party_stats(self) -> dict[str, PartyStats]:
        return {"moving": self._clock.stats(self.channels), "fixed": self._fixed_stats}

    def disclosure(self) -> dict:
        return self._disclosure

    def abort(self, reason: str) -> None:
        for channel in self.channels:
            tell_error(channel, reason)

    def close(self) -> None:
        for channel in self.channels:
            if channel is not None:
                channel.close()


def _fixed_handler(meta: dict, channel: Channel, identity: Identity, dealer: str | None):
    """The fixed party's handler for the private protocol the moving party asks for."""
    try:
        return registry.load(str(meta.get("protocol"))).FixedHandler(meta, channel, identity, dealer)
    except PPIRError as err:
        raise PeerError(f"unsupported session: {err}") from None


def serve_fixed_session(channel: Channel, fixed: Volume, identity: Identity, dealer: str | None, on_result,
                        progress=None, policy: DisclosurePolicy | None = None,
                        mask: Volume | None = None) -> tuple[PartyStats, dict]:
    """Answer one registration session for the fixed party under its disclosure ``policy`` (default: the
    default policy); returns its cost and its account of what it revealed.

    ``mask``: the fixed party's own mask on the fixed grid; each sample set is cut to it, and the moving
    party is told which of its samples were kept (SAMPLES_KEPT), never the mask.

    ``dealer``: the only dealer address this party uses (MPC), whatever the moving party names.
    ``on_result(bye)`` keeps what the moving party shares and returns what that was; ``progress``
    receives {"event": "level" | "product" | "done", ...} as the session goes.
    """
    channel.limits = LIMITS
    clock = _Clock()
    meta = expect(channel, Kind.HELLO).meta
    if meta.get("version") != SESSION_VERSION:
        raise PeerError(f"the moving party speaks session version {meta.get('version')}, this side {SESSION_VERSION}")
    if not isinstance(meta.get("session"), str):
        raise PeerError("the moving party's HELLO has no session id")
    handler = _fixed_handler(meta, channel, identity, dealer)
    try:
        party = FixedParty(fixed, DisclosurePolicy() if policy is None else policy, mask=mask)
        terms = SessionTerms(str(meta.get("protocol")), meta.get("settings"), party.grid, party.policy, party.masked)
        try:
            party.open(terms.settings)
        except PPIRError as err:
            raise PeerError(str(err)) from None
        handler.open()
        extra, arrays = handler.welcome()
        channel.send(Message(Kind.WELCOME, {"grid": party.grid.to_dict(), "policy": party.policy.to_dict(),
                                            "fixed_mask": party.masked, **extra}, arrays))
        grid = None
        marks: list[tuple[int, int]] = []
        products = 0
        while True:
            message = channel.recv(idle=IDLE_SECONDS)
            if message.kind == Kind.LEVEL:
                marks.append(totals(handler.channels))
                spec = _level_spec(message.meta)
                terms.check_level(spec)
                grid = party.start_level(spec)
                products = 0
                if progress:
                    progress({"event": "level", "level": len(marks), "factor": int(message.meta["factor"]),
                              "size": list(grid.size)})
                channel.send(Message(Kind.LEVEL_READY, {"grid": grid.to_dict()}))
            elif message.kind == Kind.SAMPLES:
                if grid is None:
                    raise PeerError("samples sent before any pyramid level")
                samples = message.arrays.get("samples")
                if samples is not None and (samples.dtype != np.int64 or samples.ndim != 1
                                            or samples.min(initial=0) < 0 or samples.max(initial=0) >= grid.n_voxels):
                    raise PeerError("sample indices outside the fixed grid")
                terms.check_samples(samples, message.meta.get("basis", {}), grid.n_voxels)
                kept = party.keep(samples)
                if party.masked:      # only which of the moving party's own samples are kept
                    channel.send(Message(Kind.SAMPLES_KEPT, {}, {"kept": kept}))
                basis = rebuild_basis(message.meta["basis"], grid.points(kept))
                party.set_samples(kept, basis)
                handler.on_samples(party, basis)
            elif message.kind == Kind.PRODUCT:
                n_samples = handler.on_product(message)
                if n_samples is None:       # the second message of one product (MI's gradient)
                    continue
                products += 1
                if progress:
                    sent, received = totals(handler.channels)
                    progress({"event": "product", "level": len(marks), "products": products,
                              "samples": n_samples, "bytes_sent": sent, "bytes_received": received})
            elif message.kind == Kind.BYE:
                marks.append(totals(handler.channels))
                shared = on_result(message)
                stats = clock.stats(handler.channels)
                disclosure = party.ledger.report()
                channel.send(Message(Kind.FAREWELL, {"stats": stats.to_dict(), "levels": per_level(marks),
                                                     "disclosure": disclosure}))
                if progress:
                    progress({"event": "done", "shared": shared, "disclosure": disclosure, **stats.to_dict()})
                return stats, disclosure
            elif message.kind == Kind.ERROR:
                raise PeerError(f"the moving party stopped: {message.meta.get('reason', 'unknown error')}")
            else:
                raise PeerError(f"unexpected message {message.kind} from the moving party")
    finally:
        handler.close()

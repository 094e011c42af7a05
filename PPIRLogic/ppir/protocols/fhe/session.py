"""The FHE protocol between two parties (no dealer), on the session runtime of ``ppir.protocols.runtime``.

    fixed  -> moving  public context: CKKS parameters + Galois keys of the rotations (once)
    fixed  -> moving  Enc(C_a), C_a = J * Phi_a / s_a for each basis column a (once per sample set)
    moving -> fixed   Enc(sum_x w_b C_a + U_ab + V_ab) for each output (a, b) (each iteration)
    fixed  -> moving  the constant coefficient of each, decrypted exactly, plus flooding (each iteration)
    moving: R_ab = (value - U_ab) / 2**136 * |w_b|_1 * s_a

Phi_a are the columns of the affine basis [x - c, 1] (so the last column gives J itself, used for the
SSD's cross term); w_b are the moving party's channels (image gradient components, and the warped
intensities for the cross term), each divided by its l1 norm.

B-spline bases have thousands of outputs: they go through the packed products of
``ppir.fhe.packed`` instead (Enc(J) in a cell layout once per sample set; per product one
ciphertext per gradient channel and one for the cross term, each released whole, with the policy's noise
drawn once per output and carried by each of its copies).

Mattes MI: Enc(M_l), the fixed bins' membership columns, once per sample set, and per evaluation one
periodic release per histogram row l (``ppir.fhe.packed``): a padded ciphertext whose period-P part holds P
outputs; the fixed party returns only that part, as P flooded integers with the policy's noise. The gradient:
rigid and affine, Enc(M_l Phi_a / s_a) interleaved (once per sample set) and one periodic release per channel;
B-spline, each M_l in the packed cell layout (once per sample set) and one packed release per channel, summed
over the bins.

Masks, flooding and parameters: ``ppir.fhe.params``; what each party learns: docs/security.md.
"""
from __future__ import annotations

import numpy as np

from ppir.common.errors import PPIRError
from ppir.engine.basis import AffineBasis, BSplineBasis
from ppir.engine.joint import FixedParty, JointResult, fixed_scale
from ppir.protocols.fhe import masks, packed, params
from ppir.protocols.fhe.evaluator import MovingEvaluator
from ppir.protocols.fhe.keys import FixedKeys
from ppir.protocols.fhe.packed import CellLayout, PackedProducts, split_weights
from ppir.protocols.net.channel import Channel, Identity, PeerError
from ppir.protocols.net.framing import Message
from ppir.protocols.runtime import Kind, RemoteBackend, expect, fixed_sums


def pack(blobs: list[bytes]) -> dict[str, np.ndarray]:
    """Byte strings as two arrays for a message."""
    return {"blobs": np.frombuffer(b"".join(blobs), dtype=np.uint8),
            "sizes": np.array([len(b) for b in blobs], dtype=np.int64)}


def unpack(arrays: dict[str, np.ndarray]) -> list[bytes]:
    data, sizes = arrays.get("blobs"), arrays.get("sizes")
    if data is None or sizes is None or sizes.sum() != data.size or np.any(sizes < 0):
        raise PeerError("malformed ciphertext list")
    ends = np.cumsum(sizes)
    raw = data.tobytes()
    return [raw[end - size:end] for end, size in zip(ends, sizes)]


def mi_norms(basis: AffineBasis, bins: int) -> np.ndarray:
    """B * sum_x |Phi_a(x)| per basis column a (each at least 1e-30): the single-value releases' normalisers, which
    size the flooding each gradient output still gets."""
    return np.maximum(bins * np.abs(basis.matrix).sum(axis=0), 1e-30)


def binned_norms(channels: np.ndarray, v: np.ndarray, bins: int) -> np.ndarray:
    """nu_c = N B max |g_c| max |v| per channel c: an MI gradient output's B weight rows g_c v_l / nu_c have l1 norm
    <= 1 in all, and the fixed party knows the release's units without asking (N and B are public)."""
    return len(v) * bins * np.maximum(np.abs(channels).max(axis=0), 1e-30) * max(float(np.abs(v).max()), 1e-30)


def basis_scales(basis: AffineBasis) -> np.ndarray:
    """s_a, the power of two >= max |Phi_a| per basis column (public geometry): Phi_a / s_a is encrypted."""
    return np.array([fixed_scale(column) for column in basis.matrix.T])


def mi_columns(basis: AffineBasis, bins: int) -> int:
    """Encrypted columns of an MI sample set: B memberships M_l, then B * P interleaved M_l * Phi / s."""
    return bins * (1 + packed.period(basis.matrix.shape[1]))


def column_scales(values: np.ndarray, basis: AffineBasis) -> np.ndarray:
    """s_a = s_J * (power of two >= max |Phi_a|): public geometry and the exponent of max |J|."""
    return fixed_scale(values) * np.array([fixed_scale(column) for column in basis.matrix.T])


class FixedHandler:
    """The fixed party's side: owns the keys, encrypts its columns, releases flooded values."""

    def __init__(self, meta: dict, channel: Channel, identity: Identity, dealer: str | None):
        if meta.get("fhe") != params.describe():
            raise PeerError(f"unsupported session parameters: CKKS parameters {meta.get('fhe')}, "
                            f"this side {params.describe()}")
        self._channel = channel
        self._keys = FixedKeys()

    def welcome(self) -> tuple[dict, dict]:
        bundle = self._keys.public_bundle()
        return {"fhe": params.describe()}, {k: np.frombuffer(v, dtype=np.uint8) for k, v in bundle.items()}

    def open(self) -> None:
        """No third party under FHE."""

    @property
    def channels(self) -> list[Channel | None]:
        return [self._channel]

    def on_samples(self, party: FixedParty, basis) -> None:
        self._party, self._layout = party, None
        if party.metric == "mi":         # Mattes MI: the bin memberships, one column per fixed bin
            bins = party.histogram_bins
            memberships = np.zeros((bins, len(party.bin_indices)))
            memberships[party.bin_indices, np.arange(len(party.bin_indices))] = 1.0
            if isinstance(basis, BSplineBasis):
                self._layout = self._cell_layout(basis)
                rows = np.vstack([self._layout.fixed_rows(m, basis.support_weights) for m in memberships])
                blobs = self._keys.encrypt(rows, params.PACKED_DELTA_FIXED)
                blobs += self._keys.encrypt(memberships, params.PACKED_DELTA_FIXED)    # last: sets keys.chunks
            else:
                scales = basis_scales(basis)
                interleaved = packed.fixed_interleave(memberships, basis.matrix / scales, packed.period(scales.size))
                blobs = self._keys.encrypt(np.vstack([memberships, interleaved]), params.PACKED_DELTA_FIXED)
                self._mi_norms = mi_norms(basis, bins)
                self._gradient_norms = len(party.bin_indices) * bins * scales     # N B s_a, public
            self._channel.send(Message(Kind.FHE_COLUMNS, {"scales": [1.0] * bins}, pack(blobs)))
            return
        if isinstance(basis, BSplineBasis):
            self._layout = self._cell_layout(basis)
            scales = np.array([fixed_scale(party.values)])
            rows = self._layout.fixed_rows(party.values / scales[0], basis.support_weights)
            blobs = self._keys.encrypt(rows, params.PACKED_DELTA_FIXED)
        else:
            scales = column_scales(party.values, basis)
            blobs = self._keys.encrypt((basis.matrix * party.values[:, None] / scales).T)
        self._column_powers = scales / party.scale         # p_a: the basis column's power of two
        self._channel.send(Message(Kind.FHE_COLUMNS, {"scales": scales.tolist(), **party.statistics()},
                                   pack(blobs)))

    @staticmethod
    def _cell_layout(basis: BSplineBasis) -> CellLayout:
        try:
            return CellLayout(basis)
        except ValueError as err:
            raise PeerError(str(err)) from None

    def on_product(self, message: Message) -> int | None:
        blobs = unpack(message.arrays)
        if not blobs:
            raise PeerError("empty product message")
        op = message.meta.get("op", "ssd")
        if (op in ("histogram", "binned")) != (self._party.metric == "mi"):
            raise PeerError(f"product message: operation {op!r} in a {self._party.metric.upper()} session")
        if op in ("histogram", "binned"):
            return self._mi_product(op, message, blobs)
        if op != "ssd":
            raise PeerError(f"product message: unknown operation {op!r}")
        peaks = _peaks(message.meta.get("peaks"), len(blobs))
        self._party.begin_product()
        try:
            if self._layout is None:
                values = self._keys.release(blobs, self._value_noise(message.meta.get("outputs"), peaks))
                reply = Message(Kind.FHE_VALUES, {"values": [str(v) for v in values]})
            else:
                widths = self._layout.flood_widths(len(blobs) - 1)
                noise = [self._copies_noise(peak, self._layout.block_size) for peak in peaks[:-1]]
                noise.append(self._copies_noise(peaks[-1], 1))
                reply = self._packed_reply(blobs, widths, noise)
        except (ValueError, RuntimeError) as err:
            raise PeerError(f"the moving party's ciphertexts are malformed ({err})") from None
        self._channel.send(reply)
        return int(message.meta.get("samples", 0))

    def _mi_product(self, op: str, message: Message, blobs: list[bytes]) -> int | None:
        """Mattes MI, in periodic releases (``ppir.fhe.packed``): the histogram as one release per fixed bin l
        (cell (l, k) = M_l^T W_k / N at residue k mod P), then the gradient as one release per channel c (output
        (a, c) = sum_l sum_x (M_l Phi_a / s_a) (g_c v_l / nu_c) at residue a mod P); of each decryption only the
        period-P part leaves, as P integers, so every cell and output is released and nothing else. The
        normalisers are public (N; N B s_a, times the moving party's channel and bin-weight peaks in nu_c), so the
        policy's noise needs nothing from the moving party: 1/N per count unit, 1/(N B s_a) per normalised unit,
        one draw per output, and so is the uniform flooding a single-value release had (``params.flood_width``).
        With a B-spline the gradient goes through the packed layout instead (``_bspline_gradient``)."""
        bins, d = self._party.histogram_bins, self._party.grid.dim
        expected = bins if op == "histogram" else d
        if len(blobs) != expected:
            raise PeerError(f"{op} product: {len(blobs)} ciphertexts, expected {expected}")
        if op == "histogram":
            self._party.begin_histogram()
            p = packed.period(bins)
            released = self._party.histogram_noise() / len(self._party.values)      # counts -> released units, (l, k)
            terms = 1
        else:
            try:
                self._party.begin_binned()
            except PPIRError as err:
                raise PeerError(str(err)) from None
            if self._layout is not None:
                return self._bspline_gradient(blobs)
            q = self._mi_norms.size
            p = packed.period(q)
            noise = self._party.binned_noise((q, d))                      # normalised units, (a, c)
            released = (noise / self._gradient_norms[:, None]).T          # (c, a)
            terms = bins
        # every output also gets the uniform flooding of the single value it replaces (released units), one draw
        # for all its copies: the moving party learns each output to the precision it did from a single value
        single = params.flood_width(self._keys.chunks * terms) * 2.0 ** -params.PRODUCT_BITS
        if op == "binned":      # as wide in r as a single value's: released over N B s_a here, over B sum |Phi_a| there
            single = single * self._mi_norms / self._gradient_norms
        values = np.zeros((expected, p))
        values[:, :released.shape[1]] = released + masks.uniform(released.size, 1.0).reshape(released.shape) * single
        width = packed.periodic_flood_width(self._keys.chunks * terms * p, p)
        try:
            released = self._keys.release_periodic(blobs, p, width, [packed.periodic_noise(row, p) for row in values])
        except (ValueError, RuntimeError) as err:
            raise PeerError(f"the moving party's ciphertexts are malformed ({err})") from None
        self._channel.send(Message(Kind.FHE_VALUES, {"values": [[str(v) for v in row] for row in released]}))
        return len(self._party.values) if op == "histogram" else None

    def _bspline_gradient(self, blobs: list[bytes]) -> None:
        """MI's gradient with a B-spline: channel c's packed release holds sum_l sum_x Phi_j(x) M_l(x) w_cl(x) for
        every control point j, with w_cl = g_c v_l / nu_c and nu_c = N B max |g_c| max |v| (weights of l1 norm <= 1
        over all bins, as the flooding assumes). The policy's noise in those units is the normalised noise over
        N B: public, nothing taken from the moving party."""
        n, bins = len(self._party.values), self._party.histogram_bins
        noise = [self._copies_noise(1.0 / (n * bins), self._layout.block_size, self._party.mi_sensitivity)
                 for _ in blobs]
        self._channel.send(self._packed_reply(blobs, [self._layout.channel_flood_width(bins)] * len(blobs), noise))

    def _packed_reply(self, blobs: list[bytes], widths: list[int], noise: list[list[int]]) -> Message:
        """The flooded, noised residues of packed releases (``FixedKeys.release_packed``)."""
        try:
            return Message(Kind.FHE_VALUES, {}, {"residues": self._keys.release_packed(blobs, widths, noise)})
        except (ValueError, RuntimeError) as err:
            raise PeerError(f"the moving party's ciphertexts are malformed ({err})") from None

    def _value_noise(self, outputs, peaks: list[float]) -> list[int]:
        """The policy's noise on released sums R'_ab (scale 2**136): the normalised release's noise times
        w_a kappa_b / p_a, kappa_b = max |w_b| / |w_b|_1 (the moving party's weights), p_a the column's scale,
        w_a the output's noise scale (``ppir.engine.disclosure.output_scales``)."""
        if not isinstance(outputs, list) or len(outputs) != len(peaks) or not all(
                isinstance(o, list) and len(o) == 2 and 0 <= o[0] < len(self._column_powers) for o in outputs):
            raise PeerError("product message: the released outputs are not described")
        noise = self._party.noise((len(peaks),))
        w = self._party.output_scales
        return [int(round(n * w[a] * peak / self._column_powers[a] * 2.0 ** params.PRODUCT_BITS))
                for n, peak, (a, _) in zip(noise, peaks, outputs)]

    def _copies_noise(self, peak: float, period: int, sensitivity: float | None = None) -> list[int]:
        """The policy's noise as polynomial coefficients (``packed.periodic_polynomial``) whose slots repeat with the
        period of the release's copies: one draw N(0, (sigma kappa)^2) per slot of a period, the same in each copy,
        so that averaging the copies of an output (a gradient output sits once per block of ``period`` slots, the
        cross term in every slot: period 1) does not shrink its noise. Normalised units; kappa: the moving party's
        peak ratio; ``sensitivity``: the release's, if not the product's."""
        draws = self._party.noise((period,), sensitivity) * peak
        p = max(period, 2)                              # period 1 is period 2 with both values equal
        return packed.periodic_polynomial(np.resize(draws, p), p)

    def close(self) -> None:
        """Nothing to release: the keys die with the session."""


def _peaks(values, count: int) -> list[float]:
    """The moving party's kappa per released ciphertext, checked: the policy's noise is scaled by them."""
    if not isinstance(values, list) or len(values) != count or not all(
            isinstance(v, (int, float)) and 0 < v <= 1 for v in values):
        raise PeerError("product message: the weights' peak ratios are missing or outside (0, 1]")
    return [float(v) for v in values]


class FHEBackend(RemoteBackend):
    """The moving party's end of the FHE protocol."""

    name = "fhe"

    def __init__(self, fixed: str, identity: Identity, session: dict, timeout: float = 60.0,
                 retry_for: float = 10.0):
        super().__init__(fixed, identity, {"protocol": "fhe", "fhe": params.describe(), "settings": session},
                         timeout, retry_for)
        self._bins = session["histogram_bins"] if session.get("metric") == "mi" else 0
        bundle = {k: self.welcome.arrays[k].tobytes() for k in ("parms", "galois", "public")}
        self._evaluator = MovingEvaluator(bundle)
        self._folding = packed.Folding(self._evaluator.context, self._evaluator.evaluator, self._evaluator.primes)

    def set_samples(self, samples: np.ndarray | None, basis):
        layout = None
        if isinstance(basis, BSplineBasis):
            try:
                layout = CellLayout(basis)
            except ValueError as err:
                raise PPIRError(f"FHE: {err}") from None
        self.send_samples(samples, basis)
        reply = expect(self._fixed, Kind.FHE_COLUMNS)
        self._scales = np.asarray(reply.meta["scales"], dtype=np.float64)
        self._basis = basis
        if self._bins:
            if len(self._scales) != self._bins:
                raise PeerError("the fixed party's bin columns do not match the session's histogram bins")
        else:
            self._sums = fixed_sums(reply.meta)
        try:
            if self._bins and layout is not None:       # MI with a B-spline: packed memberships, then the plain ones
                blobs = unpack(reply.arrays)
                cells = self._bins * packed.SPLIT * layout.n_ciphertexts
                self._packed = PackedProducts(self._evaluator, layout, blobs[:cells], self._bins)
                self._evaluator.set_columns(blobs[cells:], self._bins)
                self._first_axes = split_weights(basis.support_weights)[0]
            elif layout is None:
                self._packed = None
                self._evaluator.set_columns(unpack(reply.arrays), mi_columns(basis, self._bins) if self._bins
                                            else len(self._scales))
            else:
                self._packed = PackedProducts(self._evaluator, layout, unpack(reply.arrays))
                self._first_axes = split_weights(basis.support_weights)[0]
        except (ValueError, RuntimeError) as err:
            raise PeerError(f"the fixed party's ciphertexts are malformed ({err})") from None
        self._n_samples = basis.n_samples
        return basis

    def joint_product(self, channels: np.ndarray, warped: np.ndarray) -> JointResult:
        if self._packed is not None:
            return self._packed_product(channels.astype(np.float64), warped.astype(np.float64))
        weights = np.vstack([channels.T, warped[None]]).astype(np.float64)
        norms = np.abs(weights).sum(axis=1)
        q, d = len(self._scales), channels.shape[1]
        wanted = [(a, b) for a in range(q) for b in range(d)] + [(q - 1, d)]
        values = np.zeros(len(wanted))
        normalised = weights / np.where(norms > 0, norms, 1.0)[:, None]
        masked = self._evaluator.masked_sums(normalised, wanted)
        if masked:
            order = sorted(masked)
            peaks = np.abs(normalised).max(axis=1)
            self._fixed.send(Message(Kind.PRODUCT, {"samples": self._n_samples,
                                                    "outputs": [list(wanted[k]) for k in order],
                                                    "peaks": [float(peaks[wanted[k][1]]) for k in order]},
                                     pack([masked[k][0] for k in order])))
            released = expect(self._fixed, Kind.FHE_VALUES).meta.get("values", [])
            if len(released) != len(order):
                raise PeerError("the fixed party returned the wrong number of values")
            for k, value in zip(order, released):
                a, b = wanted[k]
                values[k] = MovingEvaluator.unmask(int(value), masked[k][1]) * norms[b] * self._scales[a]
        return JointResult(values[:-1].reshape(q, d), float(values[-1]), *self._sums)

    def _release(self, op: str, weights: list[np.ndarray], releases: list[list[tuple[int, int]]],
                 p: int) -> np.ndarray:
        """Periodic packed releases (``ppir.fhe.packed``): one padded ciphertext per release, each output m in
        the slots m mod P; returns the released outputs (releases, P)."""
        try:
            products = packed.periodic_products(self._evaluator, weights, releases, p)
            masked = [packed.masked(self._evaluator, ciphertext) for ciphertext in products]
        except (ValueError, RuntimeError) as err:
            raise PeerError(f"the fixed party's ciphertexts are malformed ({err})") from None
        self._fixed.send(Message(Kind.PRODUCT, {"op": op, "samples": self._n_samples},
                                 pack([blob for blob, _ in masked])))
        released = expect(self._fixed, Kind.FHE_VALUES).meta.get("values")
        if not isinstance(released, list) or len(released) != len(masked) or not all(
                isinstance(row, list) and len(row) == p for row in released):
            raise PeerError("the fixed party returned the wrong number of values")
        try:
            return np.array([packed.periodic_outputs([int(v) for v in row], pad, self._folding, self._evaluator.primes, p)
                             for row, (_, pad) in zip(released, masked)])
        except (TypeError, ValueError):
            raise PeerError("the fixed party's released values are malformed") from None

    def histogram_product(self, weights) -> np.ndarray:
        """MI's joint histogram: H(l, k) = N * sum_x (W_k / N)(x) M_l(x), every cell released (N is public):
        one release per fixed bin l, cell (l, k) in the slots k mod P."""
        bins, n = self._bins, self._n_samples
        p = packed.period(bins)
        rows = np.zeros((p, n))
        rows[:bins] = weights.dense().T / n                           # (moving bins, N); each row's l1 <= 1
        values = self._release("histogram", [rows], [[(l, 0)] for l in range(bins)], p)
        return values[:, :bins] * n

    def binned_product(self, channels: np.ndarray, bin_weights: np.ndarray) -> np.ndarray:
        """MI's gradient: r_ac = nu_c s_a sum_l sum_x (M_l Phi_a / s_a) (g_c v_l / nu_c), every (a, c) released, with
        nu_c = N B max |g_c| max |v| (an output's B weight rows have l1 norm <= 1 in all): one release per channel c,
        output (a, c) in the slots a mod P; the fixed party has interleaved M_l Phi_a / s_a, so each (c, l) is one
        plaintext per chunk. A B-spline's: ``_packed_binned``."""
        if self._packed is not None:
            return self._packed_binned(channels.astype(np.float64), bin_weights.astype(np.float64))
        phi = self._basis.matrix                                    # (N, outputs): public
        bins, (outputs, d) = self._bins, (phi.shape[1], channels.shape[1])
        p = packed.period(outputs)
        v = bin_weights.astype(np.float64)
        nu = binned_norms(channels, v, bins)                        # (d,)
        weights = [channels[:, c] * v[:, l] / nu[c] for c in range(d) for l in range(bins)]
        releases = [[(tuple(bins + l * p + r for r in range(p)), c * bins + l) for l in range(bins)] for c in range(d)]
        values = self._release("binned", weights, releases, p)
        return values[:, :outputs].T * nu[None, :] * basis_scales(self._basis)[:, None]

    def _packed_binned(self, channels: np.ndarray, v: np.ndarray) -> np.ndarray:
        """MI's gradient with a B-spline, r_jc = nu_c sum_l sum_x Phi_j(x) M_l(x) (g_c v_l / nu_c)(x) for every
        control point j, nu_c = N B max |g_c| max |v| (public in units, so the fixed party sizes its noise alone):
        one packed release per channel c, summed over the bins (``PackedProducts.channel``)."""
        n, bins, d = len(v), self._bins, channels.shape[1]
        nu = binned_norms(channels, v, bins)
        products = []
        for c in range(d):
            weights = np.stack([self._first_axes * (channels[:, c] * v[:, l] / nu[c])[:, None] for l in range(bins)])
            total = self._packed.channel(weights)
            products.append(total if total is not None else self._evaluator.zero(2.0 ** params.PACKED_PRODUCT_BITS))
        slots = self._packed_release(products, {"op": "binned", "samples": n})
        return np.stack([self._packed.layout.outputs(decoded) * nu[c] for c, decoded in enumerate(slots)], axis=1)

    def _packed_release(self, products: list, meta: dict) -> list[np.ndarray]:
        """Each product masked and sent in one message; the decoded slots the fixed party's release gives back."""
        masked = [self._packed.masked(ciphertext) for ciphertext in products]
        self._fixed.send(Message(Kind.PRODUCT, meta, pack([blob for blob, _ in masked])))
        residues = expect(self._fixed, Kind.FHE_VALUES).arrays.get("residues")
        if residues is None or residues.shape != (len(masked), masked[0][1].size):
            raise PeerError("the fixed party returned the wrong number of values")
        return [self._packed.unmask(values, pad) for values, (_, pad) in zip(residues, masked)]

    def _packed_product(self, channels: np.ndarray, warped: np.ndarray) -> JointResult:
        """B-spline: one packed ciphertext per non-zero gradient channel, one for the cross term."""
        norms = np.abs(channels).sum(axis=0)
        sums = {k: self._packed.channel(self._first_axes * (channels[:, k] / norms[k])[:, None])
                for k in range(channels.shape[1]) if norms[k] > 0}
        sums = {k: ciphertext for k, ciphertext in sums.items() if ciphertext is not None}
        warped_norm = float(np.abs(warped).sum())
        cross = self._packed.cross(warped / warped_norm) if warped_norm > 0 else None
        if cross is None:
            raise PPIRError("the images do not overlap: every warped sample is zero")
        peaks = [float(np.abs(channels[:, k]).max() / norms[k]) for k in sums] + \
            [float(np.abs(warped).max() / warped_norm)]
        slots = self._packed_release([*sums.values(), cross], {"samples": self._n_samples, "peaks": peaks})
        scale = self._scales[0]
        r = np.zeros((self._packed.layout.n_points, channels.shape[1]))
        for k, decoded in zip(sums, slots):
            r[:, k] = self._packed.layout.outputs(decoded) * norms[k] * scale
        return JointResult(r, float(slots[-1][0]) * warped_norm * scale, *self._sums)


def moving_backend(fixed: str, dealer: str | None, identity: Identity, settings: dict) -> FHEBackend:
    """The moving party's end of an FHE session (registry entry point; no dealer)."""
    return FHEBackend(fixed, identity, settings)

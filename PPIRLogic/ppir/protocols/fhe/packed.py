"""Packed FHE products for B-spline bases: every control point's sum in the slots of one ciphertext.

Layout (public: it follows from the sample positions and the control grid). A sample x lies in the
cell of its first supporting control point s(x); control point c owns slot P - 1 - lin(c) (P control
points, lin in ITK order) of each of the B = 2**k <= slots / P blocks of slots / B slots, and the
samples of one cell go to different places: x, the rank(x)-th sample of its cell, goes to block
rank(x) mod B of ciphertext o = rank(x) // B. Phi_r(x) is a product of per-axis weights,
b_{r_1}(x_1) ... b_{r_d}(x_d); the fixed party takes the last axis' four, the moving party the
others. The fixed party encrypts, at 2**110, for t = 0..3,

    E_ot[block + slot(s(x))] = b_t(x_d) J(x) / s_J.

The moving party, per channel k (|g_k|_1-normalised gradient component), encodes the plaintext of
each offset q of the first d - 1 axes and multiplies it into all four E_ot:

    U_(q,t) = sum_o E_ot * encode(b_q(x) g_k(x) in slot(s(x)))           (plaintext products, 2**60)

then moves each U_r left by lin(r) slots, since slot(s) - lin(r) = slot(s + r), combining the 4**d
offsets axis by axis (Horner: three rotations per group and axis; nothing crosses a block), and
sums the B blocks cyclically (log2 B rotations by slots / B, 2 slots / B, ...), so that every block
holds the total and no partial sum over a subset of samples survives. Slot(c) then holds
sum_x Phi_c(x) g_k(x) J(x) / (|g_k|_1 s_J). The cross term sums I(T(x)) / |I|_1 * E_ot over every
slot (the four E_ot of a sample add up to its J). Depth one: one plaintext product, then additions
and rotations; the weights of a channel have l1 norm 1 in all, each used with four ciphertexts:
``params.packed_flood_width`` counts that.
Splitting the last axis off to the fixed party makes four times as many E but a quarter of the
encodings, which dominate the moving party's time.

Mattes MI with a B-spline uses the same layout with the fixed party's bin memberships in place of J: one set
E_lot = b_t(x_d) M_l(x) per fixed bin l. The moving party's weights for bin l are g_k(x) v_l(x) (its per-bin
gradient weights), and a channel sums over l before the offsets are combined, so its one release holds
sum_x Phi_c(x) g_k(x) v_{l(x)}(x) for every control point: the gradient, as the clear protocol computes it, and
nothing per bin.

Release: the moving party re-randomises each result, adds a polynomial uniform over R_q and keeps
it; the fixed party decrypts, floods every coefficient, adds the policy's noise as a polynomial whose
slots repeat with the period of the copies (``periodic_polynomial``: period slots / B for a channel,
one for the cross term, so every copy of an output carries the same draw) and returns the residues;
the moving party subtracts its pad and decodes.
"""
from __future__ import annotations

import numpy as np
import scipy.fft
import tenseal.sealapi as seal

from ppir.engine.basis import BSplineBasis
from ppir.protocols.fhe import masks, params, seal_raw
from ppir.protocols.fhe.evaluator import MovingEvaluator
from ppir.protocols.fhe.seal_io import dump, load

SPLIT = 4   # the last axis' supporting control points, whose weights the fixed party applies


def split_weights(phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample weights (N, 4**d) as (first d - 1 axes (N, 4**(d-1)), last axis (N, 4)).

    The support is ordered x fastest, so the last axis' offset is the slowest index; each factor is
    the sum of Phi over the other's offsets (the cubic weights of an axis sum to one).
    """
    grouped = phi.reshape(len(phi), SPLIT, -1)
    return grouped.sum(axis=1), grouped.sum(axis=2)


class CellLayout:
    """Where each sample's J sits: ciphertext and slot; and how outputs come back."""

    def __init__(self, basis: BSplineBasis):
        control = basis.control
        self.n_points = control.n_points
        if self.n_points > params.SLOTS:
            raise ValueError(f"the B-spline grid has {self.n_points} control points; the FHE protocol packs "
                             f"at most {params.SLOTS} (choose a larger control-point spacing)")
        self.dim = control.grid.dim
        self.blocks = 1 << (params.SLOTS // self.n_points).bit_length() - 1
        self.block_size = params.SLOTS // self.blocks
        cell = control.linear(basis.start)
        order = np.argsort(cell, kind="stable")
        first = np.flatnonzero(np.r_[True, np.diff(cell[order]) != 0])
        counts = np.diff(np.r_[first, len(cell)])
        rank = np.empty(len(cell), dtype=np.int64)
        rank[order] = np.arange(len(cell)) - np.repeat(first, counts)
        self.ciphertext = rank // self.blocks
        self.slot = (rank % self.blocks) * self.block_size + self.n_points - 1 - cell
        self.n_ciphertexts = int(self.ciphertext.max()) + 1 if len(cell) else 0
        self.strides = [int(s) for s in control.linear(np.eye(self.dim, dtype=np.int64))]

    def arrange(self, values: np.ndarray) -> np.ndarray:
        """Per-sample values in the layout: (ciphertexts, slots), zero where no sample sits."""
        dense = np.zeros((self.n_ciphertexts, params.SLOTS))
        dense[self.ciphertext, self.slot] = values
        return dense

    def fixed_rows(self, values: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """The fixed party's plaintexts: E_ot for every ciphertext o and last-axis offset t, (o * 4 + t, slots)."""
        last = split_weights(phi)[1]
        return np.stack([self.arrange(values * last[:, t]) for t in range(SPLIT)], axis=1).reshape(-1, params.SLOTS)

    def outputs(self, slots: np.ndarray) -> np.ndarray:
        """Control-point values in ITK order from decoded slots."""
        return slots[:self.n_points][::-1]

    @property
    def block_steps(self) -> list[int]:
        """The rotations that sum the blocks cyclically into every block (powers of two)."""
        return [self.block_size << i for i in range(self.blocks.bit_length() - 1)]

    @property
    def rotations(self) -> int:
        """Power-of-two rotations a channel's combination of offsets and blocks performs."""
        horner = sum(3 * 4 ** (self.dim - 1 - axis) * stride.bit_count() for axis, stride in enumerate(self.strides))
        return horner + sum(step.bit_count() for step in self.block_steps)

    def channel_flood_width(self, columns: int = 1) -> int:
        """The fixed party's flooding of a channel's release over ``columns`` fixed columns (weights of l1 norm 1
        over all of them)."""
        return params.packed_flood_width(4 ** self.dim * self.n_ciphertexts * columns, self.rotations, self.blocks,
                                         SPLIT)

    def flood_widths(self, n_channels: int) -> list[int]:
        """The fixed party's flooding for a product's releases: n_channels channels, then the cross term."""
        channel = self.channel_flood_width()
        cross = params.packed_flood_width(SPLIT * self.n_ciphertexts, params.ROTATIONS, params.SLOTS, SPLIT)
        return [channel] * n_channels + [cross]


class PackedProducts:
    """The moving party's products with one sample set's encrypted E_ot, for one or more fixed columns (SSD: J;
    Mattes MI: each fixed bin's membership M_l in place of J)."""

    def __init__(self, evaluator: MovingEvaluator, layout: CellLayout, blobs: list[bytes], columns: int = 1):
        if len(blobs) != columns * SPLIT * layout.n_ciphertexts:
            raise ValueError(f"expected {columns * SPLIT * layout.n_ciphertexts} ciphertexts of the fixed image, "
                             f"got {len(blobs)}")
        self._ev, self.layout = evaluator, layout
        loaded = [load(seal.Ciphertext(), evaluator.context, blob) for blob in blobs]
        groups = [loaded[o:o + SPLIT] for o in range(0, len(loaded), SPLIT)]
        self._fixed = [groups[k:k + layout.n_ciphertexts] for k in range(0, len(groups), layout.n_ciphertexts)]
        self._parms_id = loaded[0].parms_id() if loaded else None   # products keep it: no rescaling

    def channel(self, weights: np.ndarray) -> seal.Ciphertext | None:
        """Enc(sum_l sum_x Phi_c(x) w_l(x) C_l) in slot(c) for every control point (C_l: the fixed columns).

        ``weights`` (columns, N, 4**(d-1)), or (N, 4**(d-1)) for one column: the first d - 1 axes' factor of Phi
        (``split_weights``) times w_l.
        """
        weights = weights[None] if weights.ndim == 2 else weights
        offsets = weights.shape[2]
        terms: list[seal.Ciphertext | None] = [None] * (SPLIT * offsets)
        for q in range(offsets):
            for t, total in enumerate(self._sums([self.layout.arrange(w[:, q]) for w in weights])):
                terms[t * offsets + q] = total
        for stride in self.layout.strides:
            terms = [self._horner(terms[g:g + 4], stride) for g in range(0, len(terms), 4)]
        total = terms[0]
        for step in self.layout.block_steps if total is not None else ():
            self._ev.evaluator.add_inplace(total, self._ev.rotate_left(total, step))
        return total

    def cross(self, values: np.ndarray) -> seal.Ciphertext | None:
        """Enc(sum_x values(x) J) in every slot (the four E_ot of a sample add up to its J)."""
        total = None
        for part in self._sums([self.layout.arrange(values)]):
            total = self._ev.add(total, part)
        if total is not None:
            self._ev.rotate_and_sum(total)
        return total

    def masked(self, ciphertext: seal.Ciphertext) -> tuple[bytes, np.ndarray]:
        """The re-randomised ciphertext plus a pad uniform over R_q, and the pad's residues."""
        return masked(self._ev, ciphertext)

    def unmask(self, released: np.ndarray, pad: np.ndarray) -> np.ndarray:
        """Decoded slots (real parts) of a released decryption once the pad is removed."""
        return unmask(self._ev, released, pad, self._parms_id)

    def _sums(self, dense: list[np.ndarray]) -> list[seal.Ciphertext | None]:
        """sum_l sum_o E_lot * encode(dense[l][o]) for t = 0..3 (None where every row encodes to zero)."""
        totals: list[seal.Ciphertext | None] = [None] * SPLIT
        for rows, column in zip(dense, self._fixed, strict=True):
            for row, fixed in zip(rows, column):
                plain = self._ev.encode(row, params.PACKED_DELTA_MOVING)
                if plain is None:
                    continue
                for t, ciphertext in enumerate(fixed):
                    product = seal.Ciphertext()
                    self._ev.evaluator.multiply_plain(ciphertext, plain, product)
                    totals[t] = self._ev.add(totals[t], product)
        return totals

    def _horner(self, group: list[seal.Ciphertext | None], stride: int) -> seal.Ciphertext | None:
        """sum_t group[t] moved left by t * stride slots."""
        total = None
        for term in reversed(group):
            if total is not None:
                total = self._ev.rotate_left(total, stride)
            total = self._ev.add(total, term)
        return total


def masked(ev: MovingEvaluator, ciphertext: seal.Ciphertext) -> tuple[bytes, np.ndarray]:
    """A product for a packed release: re-randomised, plus a pad uniform over R_q; returns it and the pad's residues."""
    ev.rerandomise(ciphertext)
    pad = masks.uniform_residues(ev.primes, params.POLY_DEGREE)
    plain = seal_raw.plaintext(ev.context, ciphertext.parms_id(), ciphertext.scale, pad.ravel())
    ev.evaluator.add_plain_inplace(ciphertext, plain)
    return dump(ciphertext), pad


def unmask(ev: MovingEvaluator, released: np.ndarray, pad: np.ndarray, parms_id) -> np.ndarray:
    """Decoded slots (real parts) of a packed release once the pad is removed."""
    plain_residues = seal_raw.subtract_residues(released.reshape(pad.shape), pad, ev.primes)
    plain = seal_raw.plaintext(ev.context, parms_id, 2.0 ** params.PACKED_PRODUCT_BITS, plain_residues.ravel())
    return np.asarray(ev.encoder.decode_double(plain))


# Periodic packed releases (Mattes MI under FHE): up to P outputs in one ciphertext, output m in the slots i = m (mod P).
# The moving party computes, for the fixed party's chunked columns C_a (samples in slot order) and its weight rows
# w_(b, m) (one per output m of a term b),
#
#     Q_r = sum_chunks sum_(a, b) C_a * encode(w'_(b, r)),   w'_(b, r)[j] = w_(b, (j - r) mod P)[j]
#
# (r = 0..P-1: each sample meets every output once), then sum_r rot_r(Q_r) (Horner: P - 1 rotations by one slot):
# summed over the SLOTS / P copies i, i + P, ..., slot i would hold sum_x sum_(a, b) C_a(x) w_(b, i mod P)(x).
# When the outputs are public columns Phi_a (MI's gradient), the fixed party interleaves instead: it encrypts
# C_(l, r)[j] = M_l[j] Phi_((j - r) mod P)[j] / s and the moving party encodes one plaintext per term, used P times.
#
# The fixed party does the summing over the copies, in the clear, on the padded decryption: a slot vector of period
# P is exactly a polynomial whose only non-zero coefficients sit at multiples of N / (2P) (the invariants of the
# rotation by P), and keeping those coefficients is the mean over the copies. With Y = X^(N / 2P) and c_t the
# coefficient of Y^t (t < 2P), the real part of slot m is c_0 + sum_(0<t<P) (c_t - c_(2P-t)) cos(pi g_m t / 2P),
# g_m = 3^m mod 4P; so the fixed party releases exactly P integers per ciphertext, c_0 and c_t - c_(2P-t), each
# flooded, plus the policy's noise: whatever the moving party sends, it learns P real numbers per release, as from P
# single values, never a partial sum over a subset of samples. P releases' worth of single values cost P log2(SLOTS)
# rotations; a periodic release P - 1.


def period(outputs: int) -> int:
    """P: the power of two (at least 2) that holds ``outputs`` outputs."""
    return max(2, 1 << (max(outputs, 1) - 1).bit_length())


def interleave(rows: np.ndarray, r: int) -> np.ndarray:
    """w'_r from one term's rows (P, samples): sample j's weight of output (j - r) mod P."""
    p, n = rows.shape
    j = np.arange(n)
    return rows[(j - r) % p, j]


def periodic_flood_width(products: int, p: int) -> int:
    """Half-width of the fixed party's flooding of each of a periodic release's P integers (each the difference of
    two coefficients): 2**-42 over the P of them. ``products``: plaintext products (chunks x terms x P), each output's
    weights of l1 norm <= 1 (mass P in all), P - 1 rotations, no copies summed homomorphically."""
    bound = params.coefficient_error_bound(products, p - 1, 1, params.PACKED_DELTA_MOVING, float(p))
    return int(2.0 ** params.FLOOD_BITS * p * 2 * bound)


def real_basis(p: int) -> np.ndarray:
    """A (P, P): the real part of slot m is sum_t A[m, t] d_t for the released d_0 = c_0, d_t = c_t - c_(2P-t)."""
    g = np.array([pow(3, m, 4 * p) for m in range(p)])
    return np.cos(np.pi * np.outer(g, np.arange(p)) / (2 * p))


class Folding:
    """The P released integers d_t (modulo q, not centred) of an NTT-form polynomial, without leaving the NTT
    domain: the coefficient of X^(tS) (S = N / 2P) is N^-1 sum_i v_i w_i^-t, where w_i, the value of X^S at NTT
    position i, takes one of 2P values, so it is a sum over 2P classes of positions. The classes and their w come
    once from SEAL's own NTT of X^S (``seal_raw.to_ntt``). ``plaintext``: the same integers of a SEAL plaintext (the
    fixed party's decryption), from the 2P coefficients SEAL's inverse NTT gives (``seal_raw.Coefficients``)."""

    def __init__(self, context: seal.SEALContext, evaluator: seal.Evaluator, primes: list[int]):
        self._context, self._evaluator, self._primes = context, evaluator, primes
        self._classes: dict[int, list[tuple[np.ndarray, list[list[int]]]]] = {}
        self._coefficients = seal_raw.Coefficients(context, evaluator)

    def _of(self, p: int) -> list[tuple[np.ndarray, list[list[int]]]]:
        """Per prime: the class of each NTT position and N^-1 w^-t for each class and t < 2P."""
        if p not in self._classes:
            monomial = np.zeros((len(self._primes), params.POLY_DEGREE), dtype=np.uint64)
            monomial[:, params.POLY_DEGREE // (2 * p)] = 1
            ntt = seal_raw.to_ntt(self._context, self._evaluator, self._context.first_parms_id(), monomial)
            classes = []
            for row, prime in zip(ntt, self._primes, strict=True):
                values, labels = np.unique(row, return_inverse=True)
                scale = pow(params.POLY_DEGREE, -1, prime)
                classes.append((labels, [[pow(int(root), -t, prime) * scale % prime for root in values]
                                         for t in range(2 * p)]))
            self._classes[p] = classes
        return self._classes[p]

    def __call__(self, ntt: np.ndarray, p: int) -> list[int]:
        """``ntt``: the polynomial's NTT residues (primes, N)."""
        low = np.uint64((1 << 30) - 1)
        c = []
        for row, prime, (labels, powers) in zip(ntt, self._primes, self._of(p), strict=True):
            counts = len(powers[0])
            lo = np.bincount(labels, weights=(row & low).astype(np.float64), minlength=counts)
            hi = np.bincount(labels, weights=(row >> np.uint64(30)).astype(np.float64), minlength=counts)
            sums = [(int(h) << 30) + int(l) for h, l in zip(hi, lo)]
            c.append([sum(total * power for total, power in zip(sums, powers[t])) % prime for t in range(2 * p)])
        return self._released(c, p)

    def plaintext(self, plain: seal.Plaintext, p: int) -> list[int]:
        """The same integers for an NTT-form SEAL plaintext, read from its coefficients at multiples of S."""
        step = params.POLY_DEGREE // (2 * p)
        return self._released(self._coefficients(plain, [t * step for t in range(2 * p)]).tolist(), p)

    def _released(self, c: list[list[int]], p: int) -> list[int]:
        """d_0 = c_0, d_t = c_t - c_(2P-t) from the coefficients c_(tS) (per prime, t < 2P), combined over the primes."""
        d = [[int(row[0])] + [(int(row[t]) - int(row[2 * p - t])) % prime for t in range(1, p)]
             for row, prime in zip(c, self._primes, strict=True)]
        return [seal_raw.crt([row[t] for row in d], self._primes) for t in range(p)]


def periodic_noise(values: np.ndarray, p: int) -> list[int]:
    """The released integers d_t (scale 2**PACKED_PRODUCT_BITS, the fixed party's mean over SLOTS / P copies) whose
    outputs are ``values`` (P reals): what the fixed party adds for the policy's noise, the same in every copy."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (p,) or p < 2 or p & (p - 1) or p > params.SLOTS:
        raise ValueError("periodic noise: P values, P a power of two in [2, slots]")
    d = np.linalg.solve(real_basis(p), values * p / params.SLOTS)
    return [int(round(x * 2.0 ** params.PACKED_PRODUCT_BITS)) for x in d]


def periodic_polynomial(values: np.ndarray, p: int) -> list[int]:
    """The N integer coefficients (scale 2**PACKED_PRODUCT_BITS) of the polynomial whose slot m decodes to the real
    values[m mod P], imaginary part zero: non-zero only at the multiples tS of S = N / 2P (the invariants of the
    rotation by P), c_0 = d_0 and c_t = -c_(2P-t) = d_t / 2 (0 < t < P) for values = A d (``real_basis``). Added to a
    decryption, it moves every copy of output m by the same values[m mod P]. A is a DCT-III up to the order of its
    rows (cos(pi g t / 2P) depends on g through k = min(g, 4P - g), and m -> k is onto the odd k < 2P), so c comes
    from one inverse DCT."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (p,) or p < 2 or p & (p - 1) or p > params.SLOTS:
        raise ValueError("periodic polynomial: P values, P a power of two in [2, slots]")
    g = np.array([pow(3, m, 4 * p) for m in range(p)])
    ordered = np.empty(p)
    ordered[(np.minimum(g, 4 * p - g) - 1) // 2] = values            # by k = 2j + 1
    c = scipy.fft.idct(ordered, type=3) * 2.0 ** params.PACKED_PRODUCT_BITS   # c_0 + 2 sum_t c_t cos(pi k t / 2P)
    step = params.POLY_DEGREE // (2 * p)
    coefficients = [0] * params.POLY_DEGREE
    coefficients[0] = int(round(c[0]))
    for t in range(1, p):
        coefficients[t * step] = int(round(c[t]))
        coefficients[(2 * p - t) * step] = -coefficients[t * step]
    return coefficients


def periodic_outputs(released: list[int], pad: np.ndarray, folding: Folding, primes: list[int], p: int) -> np.ndarray:
    """The P outputs of a released periodic ciphertext once the moving party's pad (NTT residues) is removed."""
    q = 1
    for prime in primes:
        q *= prime
    pad_values = folding(pad, p)
    d = []
    for value, removed in zip(released, pad_values, strict=True):
        centred = (int(value) - removed) % q
        d.append(float(centred - q if centred > q // 2 else centred))
    return real_basis(p) @ (np.array(d) * 2.0 ** -params.PACKED_PRODUCT_BITS) * (params.SLOTS / p)


def fixed_interleave(columns: np.ndarray, phi: np.ndarray, p: int) -> np.ndarray:
    """The fixed party's side of a periodic release whose outputs are public basis columns: rows l * P + r hold
    columns[l][j] * phi[j, (j - r) mod P] (zero for residues >= phi's columns), so that one moving plaintext
    per term, multiplied into the P rows of its l, puts output a in the slots a mod P."""
    n, q = phi.shape
    padded = np.zeros((n, p))
    padded[:, :q] = phi
    j = np.arange(n)
    return np.stack([column * padded[j, (j - r) % p] for column in columns for r in range(p)])


def periodic_products(ev: MovingEvaluator, weights: list[np.ndarray], releases: list[list[tuple]],
                      p: int) -> list[seal.Ciphertext]:
    """One ciphertext per release, output m of release k in every slot m mod P. A term (a, b) is either a column a
    with weight rows weights[b] (P, samples), row m for output m (the moving party interleaves them), or a tuple a
    of P columns (the fixed party has interleaved them: ``fixed_interleave``) with one weight row weights[b]
    (samples,) multiplied into each. Each output's weights over a release's terms must have l1 norm <= 1 in all
    (so no output exceeds 1 and the products' l1 norms add up to at most P: the flooding's bound). A release whose
    weights all encode to zero is a fresh encryption of zero (which outputs are zero says nothing)."""
    for terms in releases:
        mass = sum(np.abs(weights[b]).sum(axis=-1) * np.ones(p) for _, b in terms)
        if np.max(mass, initial=0.0) > 1.0 + 1e-9:
            raise ValueError("each output's weights must have l1 norm <= 1 in total")
    columns = ev.columns
    acc: list[list[seal.Ciphertext | None]] = [[None] * p for _ in releases]
    used = sorted({b for terms in releases for _, b in terms})
    # each encrypted column's products, grouped so that a chunk's column is read once while it is hot in cache:
    # column -> [(release k, residue r, weight b)]
    work: dict[int, list[tuple[int, int, int]]] = {}
    for k, terms in enumerate(releases):
        for a, b in terms:
            for r in range(p):
                work.setdefault(a if isinstance(a, int) else a[r], []).append((k, r, b))
    multiply, add = ev.evaluator.multiply_plain, ev.evaluator.add_inplace
    product = seal.Ciphertext()          # reused: SEAL overwrites a destination of the right size in place
    for chunk in range(len(columns[0])):
        lo = chunk * params.SLOTS
        plains: dict[int, list[seal.Plaintext | None]] = {}
        for b in used:
            block = weights[b][..., lo:lo + params.SLOTS]
            if block.ndim == 2:
                plains[b] = [ev.encode(interleave(block, r), params.PACKED_DELTA_MOVING) for r in range(p)]
            else:
                plains[b] = [ev.encode(block, params.PACKED_DELTA_MOVING)] * p
        for column in sorted(work):
            ciphertext = columns[column][chunk]
            for k, r, b in work[column]:
                plain = plains[b][r]
                if plain is None:
                    continue
                if acc[k][r] is None:
                    acc[k][r] = seal.Ciphertext()
                    multiply(ciphertext, plain, acc[k][r])
                else:
                    multiply(ciphertext, plain, product)
                    add(acc[k][r], product)
    out = []
    for parts in acc:
        total = None
        for part in reversed(parts):             # sum_r rot_r(Q_r), Horner
            if total is not None:
                total = ev.rotate_left(total, 1)
            total = ev.add(total, part)
        if total is None:
            total = ev.zero(2.0 ** params.PACKED_PRODUCT_BITS)
        out.append(total)
    return out

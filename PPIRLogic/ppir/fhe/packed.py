"""Packed FHE products for B-spline bases: every control point's sum in the slots of one ciphertext.

Layout (public: it follows from the sample positions and the control grid). A sample x lies in the
cell of its first supporting control point s(x); control point c owns slot P - 1 - lin(c) (P control
points, lin in ITK order), and the samples of one cell go to different ciphertexts: x goes to
ciphertext rank(x), its place among its cell's samples. The fixed party encrypts, at 2**110,

    E_o[slot(s(x))] = J(x) / s_J   for the samples x of rank o.

The moving party, per channel k (|g_k|_1-normalised gradient component) and support offset r:

    U_r = sum_o E_o * encode(Phi_{s(x)+r}(x) g_k(x) in slot(s(x)))     (plaintext products, 2**60)

then moves each U_r left by lin(r) slots, since slot(s) - lin(r) = slot(s + r), combining the 4**d
offsets axis by axis (Horner: three rotations per group and axis). Slot(c) then holds
sum_x Phi_c(x) g_k(x) J(x) / (|g_k|_1 s_J). The cross term sums I(T(x)) / |I|_1 * E_o over every
slot. Depth one: one plaintext product, then additions and rotations; the weights of a channel
have l1 norm 1 in all, which is what ``params.packed_flood_width`` assumes.

Release: the moving party re-randomises each result, adds a polynomial uniform over R_q and keeps
it; the fixed party decrypts, floods every coefficient and returns the residues; the moving party
subtracts its pad and decodes.
"""
from __future__ import annotations

import numpy as np
import tenseal.sealapi as seal

from ..basis import BSplineBasis
from . import masks, params, seal_raw
from .moving import MovingEvaluator
from .seal_io import dump, load


class CellLayout:
    """Where each sample's J sits: ciphertext ``rank``, slot ``slot``; and how outputs come back."""

    def __init__(self, basis: BSplineBasis):
        control = basis.control
        self.n_points = control.n_points
        if self.n_points > params.SLOTS:
            raise ValueError(f"the B-spline grid has {self.n_points} control points; the FHE protocol packs "
                             f"at most {params.SLOTS} (choose a larger control-point spacing)")
        self.dim = control.grid.dim
        cell = control.linear(basis.start)
        self.slot = self.n_points - 1 - cell
        order = np.argsort(cell, kind="stable")
        first = np.flatnonzero(np.r_[True, np.diff(cell[order]) != 0])
        counts = np.diff(np.r_[first, len(cell)])
        self.rank = np.empty(len(cell), dtype=np.int64)
        self.rank[order] = np.arange(len(cell)) - np.repeat(first, counts)
        self.n_ciphertexts = int(self.rank.max()) + 1 if len(cell) else 0
        self.strides = [int(s) for s in control.linear(np.eye(self.dim, dtype=np.int64))]

    def arrange(self, values: np.ndarray) -> np.ndarray:
        """Per-sample values in the layout: (ciphertexts, slots), zero where no sample sits."""
        dense = np.zeros((self.n_ciphertexts, params.SLOTS))
        dense[self.rank, self.slot] = values
        return dense

    def outputs(self, slots: np.ndarray) -> np.ndarray:
        """Control-point values in ITK order from decoded slots."""
        return slots[:self.n_points][::-1]

    @property
    def rotations(self) -> int:
        """Rotations the axis-by-axis combination of the 4**d offsets performs."""
        return sum(3 * 4 ** (self.dim - 1 - axis) * bin(stride).count("1") for axis, stride in enumerate(self.strides))

    def flood_widths(self, n_channels: int) -> list[int]:
        """The fixed party's flooding for a product's releases: n_channels channels, then the cross term."""
        channel = params.packed_flood_width(4 ** self.dim * self.n_ciphertexts, self.rotations, 1)
        cross = params.packed_flood_width(self.n_ciphertexts, params.ROTATIONS, params.SLOTS)
        return [channel] * n_channels + [cross]


class PackedProducts:
    """The moving party's products with one sample set's encrypted E_o."""

    def __init__(self, evaluator: MovingEvaluator, layout: CellLayout, blobs: list[bytes]):
        if len(blobs) != layout.n_ciphertexts:
            raise ValueError(f"expected {layout.n_ciphertexts} ciphertexts of the fixed image, got {len(blobs)}")
        self._ev, self.layout = evaluator, layout
        self._fixed = [load(seal.Ciphertext(), evaluator.context, blob) for blob in blobs]

    def channel(self, weights: np.ndarray) -> seal.Ciphertext | None:
        """Enc(sum_x Phi_c(x) w(x) E) in slot(c) for every control point; ``weights`` (N, 4**d) = Phi * w."""
        terms = [self._sum(self.layout.arrange(weights[:, r])) for r in range(weights.shape[1])]
        for stride in self.layout.strides:
            terms = [self._horner(terms[g:g + 4], stride) for g in range(0, len(terms), 4)]
        return terms[0]

    def cross(self, values: np.ndarray) -> seal.Ciphertext | None:
        """Enc(sum_x values(x) E) in every slot."""
        total = self._sum(self.layout.arrange(values))
        if total is not None:
            self._ev.rotate_and_sum(total)
        return total

    def masked(self, ciphertext: seal.Ciphertext) -> tuple[bytes, np.ndarray]:
        """The re-randomised ciphertext plus a pad uniform over R_q, and the pad's residues."""
        self._ev.rerandomise(ciphertext)
        pad = masks.uniform_residues(self._ev.primes, params.POLY_DEGREE)
        plain = seal_raw.plaintext(self._ev.context, ciphertext.parms_id(), ciphertext.scale, pad.ravel())
        self._ev.evaluator.add_plain_inplace(ciphertext, plain)
        self._parms_id = ciphertext.parms_id()
        return dump(ciphertext), pad

    def unmask(self, released: np.ndarray, pad: np.ndarray) -> np.ndarray:
        """Decoded slots (real parts) of a released decryption once the pad is removed."""
        plain_residues = masks.sub_mod(released.reshape(pad.shape), pad, self._ev.primes)
        plain = seal_raw.plaintext(self._ev.context, self._parms_id, 2.0 ** params.PACKED_PRODUCT_BITS,
                                   plain_residues.ravel())
        return np.asarray(self._ev.encoder.decode_double(plain))

    def _sum(self, dense: np.ndarray) -> seal.Ciphertext | None:
        """sum_o E_o * encode(dense[o]), or None when every row encodes to zero."""
        total = None
        for row, fixed in zip(dense, self._fixed):
            if not row.any():
                continue
            plain = seal.Plaintext()
            self._ev.encoder.encode(row, params.PACKED_DELTA_MOVING, plain)
            if plain.is_zero():
                continue
            product = seal.Ciphertext()
            self._ev.evaluator.multiply_plain(fixed, plain, product)
            if total is None:
                total = product
            else:
                self._ev.evaluator.add_inplace(total, product)
        return total

    def _horner(self, group: list[seal.Ciphertext | None], stride: int) -> seal.Ciphertext | None:
        """sum_t group[t] moved left by t * stride slots."""
        total = None
        for term in reversed(group):
            if total is not None:
                total = self._ev.rotate_left(total, stride)
            if term is not None:
                if total is None:
                    total = term
                else:
                    self._ev.evaluator.add_inplace(total, term)
        return total

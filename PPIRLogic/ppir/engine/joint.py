"""The one place where the two parties' data meet: the joint product.

For samples x (chosen by the moving party) and moving-side channels g(x) (d of them) and I(T(x)),
a backend returns to the moving party only

    r     = Phi^T (g * J)        the registration's joint term, through the public basis Phi
    cross = sum_x I(T(x)) J(x)   for the SSD
    fixed_sq = sum_x J(x)^2      over the same samples (known to the fixed party alone)
    fixed_sum = sum_x J(x)       the same, for NCC only (``ppir.engine.metrics``)

and, for Mattes MI, products with the fixed party's bin memberships M (N, bins) instead of J
(``ppir.engine.mutual_information``): the joint histogram M^T W and Phi^T (g * sum_l M_l v_l).

Backends: ``ClearBackend`` (both in one process, no protection: the reference), and the private
backends, which compute the same quantities without either party seeing the other's image.
"""
from __future__ import annotations

import math
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ppir.common.errors import PPIRError
from ppir.engine import masks
from ppir.engine import mutual_information as mattes
from ppir.engine.disclosure import DisclosureLedger, DisclosurePolicy, output_scales, sensitivity
from ppir.engine.image import Grid, Volume
from ppir.engine.metrics import fixed_statistics
from ppir.engine.pyramid import LevelSpec, level_image
from ppir.engine.settings import Settings


@dataclass(frozen=True)
class JointResult:
    r: np.ndarray
    cross: float
    fixed_sq: float
    fixed_sum: float = float("nan")


def fixed_scale(values: np.ndarray) -> float:
    """The smallest power of two >= max |values|: the scale a private backend divides J by (only its exponent is disclosed)."""
    peak = float(np.abs(values).max()) if values.size else 0.0
    return 2.0 ** math.ceil(math.log2(peak)) if peak > 0 else 1.0


@dataclass
class PartyStats:
    """What one party spent: filled in by backends that have a network."""

    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    peak_memory_mb: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class JointBackend(ABC):
    """The interface every protocol implements; the registration driver sees only this."""

    name: str

    @property
    @abstractmethod
    def fixed_grid(self) -> Grid:
        """The fixed image's geometry (public session metadata)."""

    @abstractmethod
    def agree(self, settings: Settings) -> DisclosurePolicy:
        """Settle the session's settings with the fixed party; returns the fixed party's disclosure policy."""

    @abstractmethod
    def start_level(self, spec: LevelSpec) -> Grid:
        """Have the fixed party prepare J at this level; returns the level's grid."""

    @property
    def fixed_mask(self) -> bool:
        """Whether the fixed party applies a mask of its own to the sample sets (``keep_samples``)."""
        return False

    def keep_samples(self, samples: np.ndarray | None, basis) -> np.ndarray | None:
        """Offer a sample set (None: all voxels; ``basis``: the public basis at those samples) to the fixed
        party; returns the samples it keeps: all of them, or with a fixed mask those inside it (voxel numbers).
        ``set_samples`` then follows with the kept samples and their basis."""
        return samples

    @abstractmethod
    def set_samples(self, samples: np.ndarray | None, basis):
        """Fix the sample voxels (None: all) and the public basis for the next joint products.

        Returns the basis exactly as the backend applies it (a private backend encodes it in fixed
        point); the moving party uses that one for its own sums so that both sides agree.
        """

    @abstractmethod
    def joint_product(self, channels: np.ndarray, warped: np.ndarray) -> JointResult:
        """r, cross and fixed_sq for moving-side channels (N, d) and warped intensities (N,)."""

    def histogram_product(self, weights: mattes.ParzenWeights) -> np.ndarray:
        """Mattes MI: the joint histogram M^T W (fixed bins, moving bins) of the moving party's Parzen weights."""
        raise PPIRError(f"the {self.name} protocol does not compute mutual information's products")

    def binned_product(self, channels: np.ndarray, bin_weights: np.ndarray) -> np.ndarray:
        """Mattes MI, after ``histogram_product``: Phi^T (g * sum_l M_l v_l) for channels g (N, d) and
        per-bin weights v (N, fixed bins)."""
        raise PPIRError(f"the {self.name} protocol does not compute mutual information's products")

    def party_stats(self) -> dict[str, PartyStats]:
        return {"moving": PartyStats(), "fixed": PartyStats()}

    def disclosure(self) -> dict:
        """The fixed party's account of what it revealed (per level: values, unknowns, epsilon)."""
        return {}

    def close(self) -> None:
        """Release connections and workers."""


class FixedParty:
    """Everything the fixed party does with its own image J, whatever the protocol.

    It keeps the session's disclosure ledger: every sample set and product passes it first, and
    ``noise`` draws the Gaussian noise the policy adds to each release, in the protocol's
    normalised units (J / s_J and each moving channel over its largest magnitude).
    """

    def __init__(self, fixed: Volume, policy: DisclosurePolicy, seed: int | None = None, mask: Volume | None = None):
        """``mask``: the fixed party's own mask on the fixed grid (``ppir.engine.masks``); it never leaves
        this object: ``keep`` tells the moving party only which of its samples lie inside it."""
        self._fixed = fixed
        self._mask = mask
        self._mask_level: np.ndarray | None = None
        self.policy = policy
        self.ledger: DisclosureLedger | None = None
        self._rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
        self._level: Volume | None = None
        self._values: np.ndarray | None = None
        self._basis = None
        self._metric = "ssd"
        self.histogram_bins = mattes.BINS
        self.scale = 1.0                # s_J: the power of two the protocols divide J by
        self._sensitivity = 0.0         # of one product's normalised release, outputs over output_scales
        self.output_scales = np.ones(0)  # w_a: the noise on output a is w_a times the rescaled release's
        self._sq_sensitivity = 0.0      # of the sample set's normalised sum of squares
        self._span = 0.0                # of the sample set's normalised sum (NCC)
        self._bins: np.ndarray | None = None    # Mattes MI: each sample's fixed bin
        self._mi_sensitivity = 0.0      # of an MI gradient product's normalised release
        self._gradient_due = False      # MI: a histogram was answered, its gradient product may follow

    @property
    def grid(self) -> Grid:
        return self._fixed.grid

    @property
    def masked(self) -> bool:
        return self._mask is not None

    def open(self, settings: Settings) -> None:
        """Start the session's ledger (refuses what the policy never allows, such as GMS)."""
        self.ledger = DisclosureLedger(self.policy, settings.sampling, settings.metric, settings.histogram_bins,
                                       self.masked, settings.moving_mask)
        self._metric = settings.metric
        self._moving_mask = settings.moving_mask
        self.histogram_bins = settings.histogram_bins

    def start_level(self, spec: LevelSpec) -> Grid:
        self._level = level_image(self._fixed, spec)
        self.ledger.start_level(spec.factor, self._level.grid.shape)
        if self._mask is not None:
            self._mask_level = masks.footprint(self._mask, self._level.grid)
        return self._level.grid

    def keep(self, samples: np.ndarray | None) -> np.ndarray | None:
        """The samples of an offered set that this party keeps (all without a mask; else those inside it,
        as voxel numbers), after the ledger's checks: DisclosureRefused if the set shows the mask at too
        many voxels of the level or too few samples are left."""
        self.ledger.offer(samples, self._moving_mask)
        if self._mask_level is None:
            return samples
        kept = np.flatnonzero(self._mask_level) if samples is None else samples[self._mask_level[samples]]
        offered = self._mask_level.size if samples is None else len(samples)
        self.ledger.kept(len(kept), offered)
        return kept.astype(np.int64)

    def set_samples(self, samples: np.ndarray | None, basis) -> None:
        flat = self._level.array.ravel().astype(np.float64)
        self.ledger.sample_set(samples, basis, self.grid.dim)
        self._values = flat if samples is None else flat[samples]
        self._basis = basis
        self.scale = fixed_scale(self._values)
        span = float(np.ptp(self._values)) / self.scale if self._values.size else 0.0
        unit = sensitivity(basis, self.grid.dim, 1.0)       # linear in the span: one pass over the basis
        self._sensitivity = span * unit
        self.output_scales = output_scales(basis)
        self._span = span
        self._sq_sensitivity = span * span
        if self._metric == "mi":
            level = self._level.array
            self._bins = mattes.fixed_bins(self._values, float(level.min()), float(level.max()), self.histogram_bins)
            self._mi_sensitivity = 2.0 * unit
        self._gradient_due = False

    @property
    def metric(self) -> str:
        """The session's metric."""
        return self._metric

    @property
    def values(self) -> np.ndarray:
        """J at the current samples."""
        return self._values

    def noise(self, shape, sensitivity: float | None = None) -> np.ndarray:
        """Gaussian noise of the policy's multiplier times the release's sensitivity, normalised units."""
        sigma = self.policy.noise_multiplier * (self._sensitivity if sensitivity is None else sensitivity)
        return self._rng.normal(0.0, sigma, shape) if sigma > 0 else np.zeros(shape)

    def output_noise(self, shape: tuple[int, int], sensitivity: float | None = None) -> np.ndarray:
        """``noise`` for a product's r (outputs, channels), each output's row times its w_a."""
        return self.noise(shape, sensitivity) * self.output_scales[:, None]

    def sum_of_squares(self) -> float:
        """sum J^2 over the samples, with the policy's noise (released once per sample set)."""
        noise = float(self.noise((), self._sq_sensitivity))
        return float(self._values @ self._values) + noise * self.scale ** 2

    def sum_of_values(self) -> float:
        """sum J over the samples, with the policy's noise (released once per sample set, NCC only)."""
        return float(self._values.sum()) + float(self.noise((), self._span)) * self.scale

    def statistics(self) -> dict[str, float]:
        """The per-sample-set sums of J the session's metric needs, noised: ``sum_sq`` and, for NCC, ``sum``."""
        sums = {"sum_sq": self.sum_of_squares, "sum": self.sum_of_values}
        return {name: sums[name]() for name in fixed_statistics(self._metric)}

    def begin_product(self) -> None:
        """Pass the ledger before a product is answered (DisclosureRefused when the policy says no)."""
        self.ledger.allow_product()
        self.ledger.product()

    def clear_product(self, channels: np.ndarray, warped: np.ndarray) -> tuple[np.ndarray, float]:
        """r and the cross term computed here, with the policy's noise (the clear protocol)."""
        self.begin_product()
        r = self._basis.transpose_apply(channels, self._values)
        cross = float(warped.astype(np.float64) @ self._values)
        if self.policy.noise_multiplier > 0:
            channel_scales = np.maximum(np.abs(channels).max(axis=0), 1e-30)
            r = r + self.output_noise(r.shape) * self.scale * channel_scales[None, :]
            cross += float(self.noise(())) * self.scale * max(float(np.abs(warped).max()), 1e-30)
        return r, cross

    def clear_histogram(self, weights: mattes.ParzenWeights) -> np.ndarray:
        """MI's joint histogram computed here, with the policy's noise; counts as the product.

        Two releases for the ledger's accountant: the histogram, whose sensitivity is sqrt 2 (one voxel of J
        changing bin moves one row of Parzen weights, L2 norm <= 1, from one histogram row to another),
        and the gradient product that follows, ``sensitivity(basis, d, 2)`` (|v'| <= 1 either side).
        """
        self.begin_histogram()
        h = mattes.histogram(self._bins, weights, self.histogram_bins)
        return h + self.histogram_noise()

    def begin_histogram(self) -> None:
        """MI: pass the ledger before a histogram is answered (the histogram and its gradient are one product)."""
        self.begin_product()
        self._gradient_due = True

    def begin_binned(self) -> None:
        """MI: a gradient product is answered only once, after its histogram (PPIRError otherwise)."""
        if not self._gradient_due:
            raise PPIRError("a mutual-information gradient product without its histogram")
        self._gradient_due = False

    def histogram_noise(self) -> np.ndarray:
        """The policy's noise on a joint histogram, in counts (sensitivity sqrt 2)."""
        return self.noise((self.histogram_bins, self.histogram_bins), math.sqrt(2.0))

    def binned_noise(self, shape) -> np.ndarray:
        """The policy's noise on an MI gradient product (outputs, channels), in units of the normalised channels
        and bin weights, each output's row times its w_a (``output_noise``)."""
        return self.output_noise(shape, self._mi_sensitivity)

    @property
    def mi_sensitivity(self) -> float:
        """The L2 sensitivity of an MI gradient product's normalised release (``binned_noise``)."""
        return self._mi_sensitivity

    @property
    def bin_indices(self) -> np.ndarray:
        """MI: each sample's fixed bin l(x) (the fixed party's own)."""
        return self._bins

    def clear_binned(self, channels: np.ndarray, bin_weights: np.ndarray) -> np.ndarray:
        """Phi^T (g * v_{l(x)}(x)) computed here, with the policy's noise (only after a histogram)."""
        self.begin_binned()
        u = np.take_along_axis(bin_weights, self._bins[:, None], axis=1)[:, 0].astype(np.float64)
        r = self._basis.transpose_apply(channels, u)
        if self.policy.noise_multiplier > 0:
            scales = np.maximum(np.abs(channels).max(axis=0), 1e-30) * max(float(np.abs(bin_weights).max()), 1e-30)
            r = r + self.binned_noise(r.shape) * scales[None, :]
        return r


class ClearBackend(JointBackend):
    """No cryptography: the fixed party's object lives in the same process. The reference for accuracy.

    ``policy`` is the fixed party's disclosure policy, applied as in the private protocols (``ppir
    register --protocol clear`` passes the fixed party's, so that the clear run stays their
    reference); without one, nothing is limited or noised (the engine on its own).
    """

    name = "clear"

    def __init__(self, fixed: Volume, policy: DisclosurePolicy | None = None, seed: int | None = None,
                 mask: Volume | None = None):
        self._party = FixedParty(fixed, DisclosurePolicy.off() if policy is None else policy, seed, mask)
        self._sums: dict[str, float] = {}

    @property
    def fixed_grid(self) -> Grid:
        return self._party.grid

    @property
    def fixed_mask(self) -> bool:
        return self._party.masked

    def keep_samples(self, samples: np.ndarray | None, basis) -> np.ndarray | None:
        return self._party.keep(samples)

    def agree(self, settings: Settings) -> DisclosurePolicy:
        self._party.open(settings)
        return self._party.policy

    def start_level(self, spec: LevelSpec) -> Grid:
        return self._party.start_level(spec)

    def set_samples(self, samples: np.ndarray | None, basis):
        self._party.set_samples(samples, basis)
        self._sums = self._party.statistics()
        return basis

    def joint_product(self, channels: np.ndarray, warped: np.ndarray) -> JointResult:
        r, cross = self._party.clear_product(channels, warped)
        return JointResult(r, cross, self._sums["sum_sq"], self._sums.get("sum", float("nan")))

    def histogram_product(self, weights: mattes.ParzenWeights) -> np.ndarray:
        return self._party.clear_histogram(weights)

    def binned_product(self, channels: np.ndarray, bin_weights: np.ndarray) -> np.ndarray:
        return self._party.clear_binned(channels, bin_weights)

    def disclosure(self) -> dict:
        return self._party.ledger.report() if self._party.ledger else {}

"""What the fixed party reveals about its image J, and the limits it sets: the disclosure policy and its ledger.

Every joint product hands the moving party values that are linear in J at the sampled voxels,
r = Phi^T (g * J) and the cross term sum I(T(x)) J(x), and each sample set adds sum J^2. Whoever
records them can solve for J once they outnumber the voxels involved (docs/security.md). The fixed
party therefore

- counts, per pyramid level, the values it has revealed against the unknowns the moving party could
  be solving for (the distinct voxels sampled at that level, over every sample set and stage), and
  refuses a product that would take the ratio over ``max_ratio``;
- refuses a B-spline sample set with fewer than ``min_samples_per_control_point`` sampled voxels per control
  point it touches (``min_samples_per_control_point_3d`` on 3D images): each B-spline output is a local sum,
  so what bounds how much of a small detail its values determine is how many samples share each output, not
  the level's global ratio. A 3D sample enters 3 x 64 outputs where a 2D one enters 2 x 16, and 3D levels
  at 4 mm showed 13-22 % of a detail at 216-512 samples per control point and up to 13 % at 1,000, at 2 mm
  up to 15 % at 1,561 and 12 % at 2,986, hence a floor of its own (measured in docs/security.md);
- refuses a sample set declared URS whose samples are not spread as a uniform draw would be
  (``uniform_samples``): a block of the level with implausibly few of them (hypergeometric tail
  below ``SPREAD_P``, blocks of 8, 16 and 32 voxels a side). A moving party that thins its samples
  around a detail and keeps the rest dense passes the per-control-point count but gives the attack
  more equations per voxel there (measured in docs/security.md). Not checked with a moving mask,
  whose sets are uneven by design, so moving masks are refused unless ``allow_moving_mask``;
- refuses sample sets smaller than ``min_samples`` (or with repeated voxels): at a level with few sampled
  voxels, even the two products a level needs weigh each voxel heavily (2D levels of 1,024 voxels showed up
  to 36 % of a detail; docs/security.md), so the moving party leaves such coarse levels out (``plan_within``);
  refuses more than ``max_sample_sets`` and ``max_products`` per level and stage, and GMS and Mattes MI unless
  allowed (GMS indices trace the moving image's edges; MI's histograms show J's bin at the samples);
- with a mask of its own (``ppir fixed --fixed-mask``), keeps only the samples inside it and tells the
  moving party which: the moving party learns the mask's membership at the voxels it offered, so the
  fixed party refuses sample sets that would take those voxels over ``max_mask_fraction`` of a level
  (over every sample set and stage), and counts only the kept samples as unknowns (``min_samples``
  applies to them);
- adds Gaussian noise of ``noise_multiplier`` times each release's L2 sensitivity to everything it
  reveals, and accounts the session's privacy loss with Google's RDP accountant (dp-accounting):
  (epsilon, delta) per session, refused beyond ``max_epsilon``.

Sensitivity: both sides normalise before a product: J' = J / s_J (s_J a power of two >= max |J|),
each moving channel G'_c = G_c / max |G_c| (|G'_c| <= 1). Changing one voxel of J anywhere in its
range moves J' by at most span = (max J - min J) / s_J, hence the normalised release
(Phi_a(x) G'_c(x) J'(x) / w_a for every output, with w_a = max |Phi_a| over the samples, and I'(x) J'(x)
for the cross term) by at most span * sqrt(d * max_x |Phi(x) / w|^2 + 1) in L2; the noise on output a is
w_a times the noise on that rescaled release. This bound holds for a moving party that normalises
as the protocol says (semi-honest); one that scales its channels up shrinks the noise relative to
J by the same factor. The value counts and caps hold against any moving party.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, replace
from functools import lru_cache, reduce
from pathlib import Path

import numpy as np

from ppir.common.errors import PPIRError
from ppir.common.files import write_atomically
from ppir.common.tables import from_table
from ppir.engine.metrics import fixed_statistics
from ppir.engine.mutual_information import BINS
from ppir.engine.sampling import has_repeats

DELTA = 1e-5
SPREAD_P = 1e-9                 # per block: a uniform draw has this few samples there with at most this chance
SPREAD_TILES = (8, 16, 32)      # block sides, in voxels of the level


class DisclosureRefused(PPIRError):
    """A request the fixed party's disclosure policy does not allow."""


@dataclass(frozen=True)
class DisclosurePolicy:
    """The fixed party's limits on what it reveals (its configuration; the moving party plans within it)."""

    max_ratio: float = 0.5
    min_samples: int = 2048
    max_sample_sets: int = 1
    max_products: int = 40
    allow_gms: bool = False
    allow_mi: bool = False
    noise_multiplier: float = 0.0
    max_epsilon: float = math.inf
    delta: float = DELTA
    max_mask_fraction: float = 0.5
    min_samples_per_control_point: float = 180.0
    min_samples_per_control_point_3d: float = 4000.0
    uniform_samples: bool = True
    allow_moving_mask: bool = False

    def __post_init__(self) -> None:
        if not self.max_ratio > 0:
            raise PPIRError(f"disclosure policy: max_ratio must be positive, got {self.max_ratio}")
        if isinstance(self.max_mask_fraction, bool) or not isinstance(self.max_mask_fraction, (int, float)) \
                or not 0 < self.max_mask_fraction <= 1:
            raise PPIRError(f"disclosure policy: max_mask_fraction must be in (0, 1], got {self.max_mask_fraction!r}")
        for name in ("min_samples_per_control_point", "min_samples_per_control_point_3d"):
            floor = getattr(self, name)
            if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < math.inf:
                raise PPIRError(f"disclosure policy: {name} must be a number >= 0, got {floor!r}")
        for name in ("min_samples", "max_sample_sets", "max_products"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise PPIRError(f"disclosure policy: {name} must be a whole number >= 1, got {value!r}")
        for name in ("allow_gms", "allow_mi", "uniform_samples", "allow_moving_mask"):
            if not isinstance(getattr(self, name), bool):
                raise PPIRError(f"disclosure policy: {name} must be true or false, got {getattr(self, name)!r}")
        if self.noise_multiplier < 0:
            raise PPIRError(f"disclosure policy: noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if not self.max_epsilon > 0 or not 0 < self.delta < 1:
            raise PPIRError("disclosure policy: max_epsilon must be positive and delta in (0, 1)")
        if self.noise_multiplier == 0 and math.isfinite(self.max_epsilon):
            raise PPIRError("disclosure policy: an epsilon budget needs noise (noise_multiplier > 0)")

    @classmethod
    def off(cls) -> "DisclosurePolicy":
        """No limits and no noise: the fixed party reveals whatever the moving party asks (trials, attack tests)."""
        return cls(max_ratio=math.inf, min_samples=1, max_sample_sets=10 ** 9, max_products=10 ** 9,
                   allow_gms=True, allow_mi=True, max_mask_fraction=1.0, min_samples_per_control_point=0.0,
                   min_samples_per_control_point_3d=0.0, uniform_samples=False, allow_moving_mask=True)

    def control_point_floor(self, dim: int) -> tuple[float, str]:
        """The B-spline floor for images of ``dim`` dimensions, and its field's name."""
        name = "min_samples_per_control_point" + ("_3d" if dim == 3 else "")
        return getattr(self, name), name

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "DisclosurePolicy":
        """A policy from a table (a received WELCOME, or a TOML file); None stands for no limit."""
        if isinstance(values, dict):
            values = {k: (math.inf if v is None and k in ("max_ratio", "max_epsilon") else v) for k, v in values.items()}
        return from_table(cls, values, "disclosure policy")

    @classmethod
    def read(cls, path: str | Path) -> "DisclosurePolicy":
        """The ``[disclosure]`` table of a TOML file (``enabled = false`` for no limits)."""
        path = Path(path)
        try:
            table = tomllib.loads(path.read_text()).get("disclosure")
        except FileNotFoundError:
            raise PPIRError(f"disclosure policy '{path}': no such file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise PPIRError(f"disclosure policy '{path}': not valid TOML ({err})") from None
        if not isinstance(table, dict):
            raise PPIRError(f"disclosure policy '{path}': no [disclosure] table")
        if table.pop("enabled", True) is False:
            return cls.off()
        return cls.from_dict(table)

    def write(self, path: str | Path) -> None:
        """This policy as a ``[disclosure]`` TOML table that ``read`` returns unchanged."""
        lines = ["[disclosure]"] + [f"{k} = {_toml(v)}" for k, v in asdict(self).items()]
        write_atomically(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))

    def epsilon(self, releases: int) -> float:
        """(epsilon, delta)-DP of ``releases`` Gaussian releases at this noise (RDP accountant); inf without noise."""
        return _epsilon(self.noise_multiplier, releases, self.delta)

    def release_budget(self) -> int:
        """How many noised releases fit in ``max_epsilon`` (unbounded without an epsilon budget)."""
        if math.isinf(self.max_epsilon):
            return 10 ** 9
        low, high = 0, 1
        while self.epsilon(high) <= self.max_epsilon:
            low, high = high, high * 2
            if high > 10 ** 7:
                return high
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if self.epsilon(mid) <= self.max_epsilon else (low, mid)
        return low


def _finite(value: float) -> float | None:
    """JSON has no infinity: an unbounded epsilon (no noise) is reported as null."""
    return None if math.isinf(value) else value


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(float(value)) if isinstance(value, float) else str(value)


@lru_cache(maxsize=4096)
def _epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    if releases == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    import dp_accounting
    from dp_accounting import rdp
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier), releases)
    return float(accountant.get_epsilon(delta))


def values_per_sample_set(metric: str) -> int:
    """Values a sample set reveals before any product: sum J^2, and sum J for NCC."""
    return len(fixed_statistics(metric))


def product_values(outputs: int, dim: int, metric: str = "ssd", bins: int = BINS) -> int:
    """Values one product reveals for ``outputs`` basis functions: r (outputs x d), and the cross term, or,
    for Mattes MI, the joint histogram (bins x bins) instead."""
    return outputs * dim + (bins * bins if metric == "mi" else 1)


def touched_outputs(basis) -> int:
    """How many basis outputs the samples touch (B-spline: the control points whose support holds a sample)."""
    if hasattr(basis, "control"):
        return np.unique(np.asarray(basis.phi.indices)).size if basis.n_samples else 0
    return basis.matrix.shape[1]


def output_scales(basis) -> np.ndarray:
    """w_a = max_x |Phi_a(x)| per basis output (affine: coordinates in mm, and 1; B-spline: 1).

    Noise is added to r_a in proportion to w_a: the Gaussian mechanism on the rescaled release r_a / w_a,
    in which every output moves by at most the same amount when one voxel of J changes. Without it, the
    translation outputs of an affine product would carry noise sized for its coordinate outputs (about
    100 times theirs).
    """
    if hasattr(basis, "control"):
        return np.ones(basis.control.n_points)
    if not basis.n_samples:
        return np.ones(basis.matrix.shape[1])
    return np.maximum(np.abs(basis.matrix).max(axis=0), 1e-30)


def sensitivity(basis, dim: int, span: float) -> float:
    """L2 sensitivity of one normalised release, its outputs divided by ``output_scales``, to one voxel of J'
    moving by ``span`` (see the module note)."""
    if hasattr(basis, "control"):
        phi_sq = float(np.max(np.square(basis.support_weights).sum(axis=1))) if basis.n_samples else 0.0
    else:
        phi_sq = float(np.max(np.square(basis.matrix / output_scales(basis)).sum(axis=1))) if basis.n_samples else 0.0
    return span * math.sqrt(dim * phi_sq + 1.0)


@dataclass
class LevelAccount:
    """One pyramid level's disclosure: the voxels sampled there (every stage) and the values revealed."""

    factor: int
    sampled: np.ndarray
    shape: tuple[int, ...]
    revealed: int = 0
    products: int = 0
    sample_sets: int = 0
    releases: int = 0
    probed: np.ndarray | None = None     # with a fixed mask: the voxels whose membership the moving party learnt

    @property
    def unknowns(self) -> int:
        return int(np.count_nonzero(self.sampled))

    def to_dict(self, policy: DisclosurePolicy) -> dict:
        account = {"factor": self.factor, "unknowns": self.unknowns, "revealed": self.revealed,
                   "ratio": self.revealed / max(self.unknowns, 1), "products": self.products,
                   "sample_sets": self.sample_sets, "epsilon": _finite(policy.epsilon(self.releases))}
        if self.probed is not None:
            account["mask_membership_shown"] = int(np.count_nonzero(self.probed))
            account["voxels"] = int(self.probed.size)
        return account


class DisclosureLedger:
    """The fixed party's running account of one session, checked before every release."""

    def __init__(self, policy: DisclosurePolicy, sampling: str, metric: str = "ssd", bins: int = BINS,
                 fixed_mask: bool = False, moving_mask: bool = False):
        """``bins``: MI's histogram bins; ``fixed_mask``: the fixed party applies a mask of its own to every
        sample set (``offer``); ``moving_mask``: the moving party draws its samples inside a mask of its own."""
        if sampling == "gms" and not policy.allow_gms:
            raise DisclosureRefused("the fixed party's disclosure policy refuses GMS sampling (its sample indices "
                                    "trace the moving image's edges, and the policy keeps samples data-independent); "
                                    "use --sampling urs")
        if metric == "mi" and not policy.allow_mi:
            raise DisclosureRefused("the fixed party's disclosure policy refuses mutual information: its joint "
                                    "histograms show the moving party which intensity bin the fixed image falls in "
                                    "at the sampled voxels (docs/security.md); use --metric ncc or ssd, or the fixed "
                                    "party sets allow_mi = true in its policy file")
        if moving_mask and not policy.allow_moving_mask:
            raise DisclosureRefused("the fixed party's disclosure policy refuses a moving mask: samples drawn inside "
                                    "it are uneven by design, so the fixed party cannot check that they are spread "
                                    "as a uniform draw (docs/security.md); register without --moving-mask, or the "
                                    "fixed party sets allow_moving_mask = true in its policy file")
        self.policy = policy
        self.fixed_mask = fixed_mask
        self._sampling = sampling
        self._per_sample_set = values_per_sample_set(metric)
        self._metric = metric
        self._bins = bins
        self._releases_per_product = 2 if metric == "mi" else 1     # MI: the histogram, then its gradient
        self.levels: dict[int, LevelAccount] = {}
        self._level: LevelAccount | None = None
        self._per_product = 0
        self.releases = 0
        self._budget = policy.release_budget()

    def start_level(self, factor: int, shape: tuple[int, ...]) -> None:
        """Account the level of shrink ``factor``; ``shape``: its voxel grid (numpy order)."""
        shape = tuple(shape)
        n_voxels = math.prod(shape)
        if factor not in self.levels:
            self.levels[factor] = LevelAccount(factor, np.zeros(n_voxels, dtype=bool), shape,
                                               probed=np.zeros(n_voxels, dtype=bool) if self.fixed_mask else None)
        self._level = self.levels[factor]
        self._level.sample_sets = 0
        self._level.products = 0

    def offer(self, samples: np.ndarray | None, moving_mask: bool = False) -> None:
        """A sample set offered at the current level, before the fixed party's mask (if any) is applied:
        its size, repeats and count are checked, and with a fixed mask the voxels whose membership the
        moving party will learn are counted against ``max_mask_fraction`` of the level.
        ``moving_mask``: the moving party drew it inside its own mask (named in a refusal)."""
        level, policy = self._level, self.policy
        self._check_set(samples, moving_mask)
        if samples is not None and self._sampling == "urs" and policy.uniform_samples and not moving_mask:
            _check_spread(np.asarray(samples), level.shape, level.factor)
        if level.probed is not None:
            probed = level.probed.copy()
            probed[slice(None) if samples is None else samples] = True
            shown = int(np.count_nonzero(probed))
            if shown > policy.max_mask_fraction * probed.size:
                raise DisclosureRefused(
                    f"the fixed party's mask: this sample set would show whether {shown} of the {probed.size} voxels "
                    f"of level {level.factor} ({100 * shown / probed.size:.0f} %) lie in its mask, over its limit of "
                    f"{100 * policy.max_mask_fraction:g} % (max_mask_fraction): use --sampling urs with a "
                    f"--sample-fraction of at most {policy.max_mask_fraction:g}")
            level.probed = probed

    def _check_set(self, samples: np.ndarray | None, moving_mask: bool = False) -> None:
        """Refuse a sample set under ``min_samples`` or beyond ``max_sample_sets`` at the current level."""
        level, policy = self._level, self.policy
        n = level.sampled.size if samples is None else len(samples)
        if n < policy.min_samples:
            inside = " inside the moving mask" if moving_mask else ""
            raise DisclosureRefused(f"a sample set of {n} voxels{inside} at level {level.factor}, under the fixed "
                                    f"party's minimum of {policy.min_samples}: use a larger --sample-fraction"
                                    f"{', a larger moving mask' if moving_mask else ''} or fewer levels")
        if level.sample_sets >= policy.max_sample_sets:
            raise DisclosureRefused(f"more than {policy.max_sample_sets} sample set(s) at one level, the fixed "
                                    "party's limit: drop --resample-each-iteration")

    def _check_density(self, basis, touched: int, dim: int) -> None:
        """Refuse a B-spline sample set with fewer than the policy's floor for ``dim`` of samples per output it
        touches (``touched``)."""
        floor, name = self.policy.control_point_floor(dim)
        if not hasattr(basis, "control") or not floor or not basis.n_samples:
            return
        if basis.n_samples < floor * touched:
            raise DisclosureRefused(
                f"at level {self._level.factor} the B-spline stage's {basis.n_samples} samples touch {touched} "
                f"control points, {basis.n_samples / touched:.1f} samples per control point, under the fixed "
                f"party's minimum of {floor:g} ({name}): use a coarser --bspline-spacing, "
                "a larger --sample-fraction, or --bspline-levels without this level")

    def kept(self, kept: int, offered: int) -> None:
        """After the fixed party's mask: refuse if fewer than ``min_samples`` of the ``offered`` samples are kept."""
        if kept < self.policy.min_samples:
            raise DisclosureRefused(f"the fixed party's mask keeps {kept} of the {offered} samples at level "
                                    f"{self._level.factor}, under its minimum of {self.policy.min_samples}: use a "
                                    "larger --sample-fraction or fewer levels (or the fixed party a larger mask)")

    def sample_set(self, samples: np.ndarray | None, basis, dim: int) -> None:
        """A new sample set at the current level (after ``offer`` and, with a fixed mask, only the kept samples):
        its voxels are added to the unknowns."""
        level = self._level
        self._check_set(samples)
        if samples is not None and has_repeats(samples):
            raise DisclosureRefused("a sample set with repeated voxels")
        touched = touched_outputs(basis)
        self._check_density(basis, touched, dim)
        level.sample_sets += 1
        if samples is None:
            level.sampled[:] = True
        else:
            level.sampled[samples] = True
        # per product: r for every output the samples touch, and the cross term (or MI's histogram)
        self._per_product = product_values(touched, dim, self._metric, self._bins)
        level.revealed += self._per_sample_set     # the sample set's sum of squares (and sum, for NCC; none for MI)
        for _ in range(self._per_sample_set):
            self._release()

    def allow_product(self) -> None:
        """Raise DisclosureRefused unless one more product fits the policy at this level."""
        level, policy = self._level, self.policy
        if level.products >= policy.max_products:
            raise DisclosureRefused(f"more than {policy.max_products} products at level {level.factor}, the fixed "
                                    "party's limit")
        limit = policy.max_ratio * level.unknowns
        if level.revealed + self._per_product > limit:
            raise DisclosureRefused(f"level {level.factor}: {level.revealed + self._per_product} revealed values "
                                    f"for {level.unknowns} sampled voxels would exceed the fixed party's ratio of "
                                    f"{policy.max_ratio:g}")
        if self.releases + self._releases_per_product > self._budget:
            raise DisclosureRefused(f"the session's privacy budget (epsilon {policy.max_epsilon:g} at delta "
                                    f"{policy.delta:g}) is spent")

    def product(self) -> None:
        """Record one product (after ``allow_product``)."""
        self._level.products += 1
        self._level.revealed += self._per_product
        for _ in range(self._releases_per_product):
            self._release()

    def can_product(self) -> bool:
        """Whether ``allow_product`` would pass (the moving party's replica asks before each trial)."""
        try:
            self.allow_product()
        except DisclosureRefused:
            return False
        return True

    def headroom(self) -> int:
        """How many more products the policy allows at this level."""
        level, policy = self._level, self.policy
        by_ratio = (policy.max_ratio * level.unknowns - level.revealed) / max(self._per_product, 1)
        by_ratio = 10 ** 9 if math.isinf(by_ratio) else max(0, math.floor(by_ratio))
        by_budget = (self._budget - self.releases) // self._releases_per_product
        return int(min(policy.max_products - level.products, by_ratio, by_budget))

    def _release(self) -> None:
        self._level.releases += 1
        self.releases += 1

    def epsilon(self) -> float:
        return self.policy.epsilon(self.releases)

    def report(self) -> dict:
        return {"policy": self.policy.to_dict(), "epsilon": _finite(self.epsilon()), "delta": self.policy.delta,
                "levels": [level.to_dict(self.policy) for level in self.levels.values()]}


def _check_spread(samples: np.ndarray, shape: tuple[int, ...], factor: int) -> None:
    """Raise DisclosureRefused if some block of the level (``SPREAD_TILES`` voxels a side) holds fewer of the
    ``samples`` than a uniform draw of their number would, except with probability ``SPREAD_P``."""
    from scipy.stats import hypergeom
    n_voxels, k = math.prod(shape), len(samples)
    coords = np.unravel_index(samples, shape)
    for tile in SPREAD_TILES:
        blocks = tuple(-(-side // tile) for side in shape)
        if math.prod(blocks) < 2:
            continue
        counts = np.bincount(np.ravel_multi_index(tuple(c // tile for c in coords), blocks),
                             minlength=math.prod(blocks))
        lengths = [np.minimum(tile, side - tile * np.arange(b)) for side, b in zip(shape, blocks)]
        sizes = reduce(np.multiply.outer, lengths).ravel()
        tail = hypergeom.cdf(counts, n_voxels, sizes, k)
        worst = int(np.argmin(tail))
        if tail[worst] < SPREAD_P:
            corner = [int(i) * tile for i in np.unravel_index(worst, blocks)][::-1]
            axes = "xyz"[:len(corner)]
            raise DisclosureRefused(
                f"a URS sample set at level {factor} holds {counts[worst]} samples in the block of {sizes[worst]} "
                f"voxels from ({', '.join(axes)}) = ({', '.join(map(str, corner))}), where a uniform draw of {k} of "
                f"the level's {n_voxels} voxels puts about {sizes[worst] * k / n_voxels:.0f}: the fixed party "
                "refuses sets that thin their samples in places (uniform_samples)")


def plan_within(policy: DisclosurePolicy, settings, fixed, fixed_mask: bool = False):
    """``settings`` as the moving party runs them under ``policy``, and what changed, as sentences. Both parties
    derive the plan from the agreed settings and the policy:

    - pyramid levels whose sample sets would hold fewer than ``min_samples`` voxels (the coarse levels of
      small images, where a few global sums already weigh each voxel heavily: docs/security.md) are left
      out (if none has enough, all but the finest, which ``check_plan`` then refuses with what would fit);
    - an unset B-spline stage is kept to the levels the policy serves (``fit_bspline_levels``)."""
    from ppir.engine.pyramid import level_grid
    counts = [_level_samples(settings, level_grid(fixed, factor).n_voxels) for factor in settings.levels]
    keep = [i for i, n in enumerate(counts) if n >= policy.min_samples] or [int(np.argmin(settings.levels))]
    notes = [f"level {settings.levels[i]} left out: its sample set would hold {counts[i]} voxels, under the fixed "
             f"party's minimum of {policy.min_samples} (min_samples)" for i in range(len(counts)) if i not in keep]
    if notes:
        smoothing = None if settings.smoothing is None else [settings.smoothing[i] for i in keep]
        settings = replace(settings, levels=[settings.levels[i] for i in keep], smoothing=smoothing)
    fitted = fit_bspline_levels(policy, settings, fixed, fixed_mask)
    if fitted.bspline_levels != settings.bspline_levels and fitted.bspline_levels != settings.levels:
        left_out = [f for f in settings.levels if f not in fitted.bspline_levels]
        notes.append(f"the B-spline stage runs at level(s) {','.join(map(str, fitted.bspline_levels))} only: the fixed "
                     f"party's policy does not serve the {settings.bspline_spacing_mm:g} mm grid at level(s) "
                     f"{','.join(map(str, left_out))}")
    return fitted, notes


def _level_samples(settings, n_voxels: int) -> int:
    """The size of a level's sample set under ``settings`` (before any mask)."""
    from ppir.engine.sampling import sample_count
    return n_voxels if settings.sampling == "full" else sample_count(n_voxels, settings.sample_fraction)


def fit_bspline_levels(policy: DisclosurePolicy, settings, fixed, fixed_mask: bool = False):
    """``settings`` with the B-spline stage kept to the levels ``policy`` serves, when the user left
    ``bspline_levels`` unset (the stage then follows ``levels``); unchanged when the user chose them. When no
    level fits, raises the finest level's refusal (DisclosureRefused), which names a grid that would fit there."""
    if settings.transform != "bspline" or settings.bspline_levels is not None:
        return settings
    fitting = []
    for factor in settings.levels:
        try:
            check_plan(policy, replace(settings, bspline_levels=[factor]), fixed, fixed_mask)
        except DisclosureRefused:
            continue
        fitting.append(factor)
    if not fitting:
        check_plan(policy, replace(settings, bspline_levels=[min(settings.levels)]), fixed, fixed_mask)
    return replace(settings, bspline_levels=fitting)


def check_plan(policy: DisclosurePolicy, settings, fixed, fixed_mask: bool = False) -> None:
    """Before the first product: raise DisclosureRefused, naming the limit and what would fit, if some level
    of these settings cannot run two products (one evaluation and one step) under ``policy``.

    Masks only shrink the sample sets: what they leave is checked when each set is drawn (``offer``, ``kept``).
    ``fixed_mask``: the fixed party masks, so the share of each level offered to it is limited."""
    from ppir.engine.bspline import control_grid_for
    from ppir.engine.pyramid import level_grid
    DisclosureLedger(policy, settings.sampling, settings.metric, settings.histogram_bins,     # GMS, MI, masks
                     moving_mask=settings.moving_mask)
    if settings.resample_each_iteration and settings.sampling != "full" and policy.max_sample_sets < 2:
        raise DisclosureRefused("the fixed party allows one sample set per level: drop --resample-each-iteration")
    offered = 1.0 if settings.sampling == "full" else settings.sample_fraction
    if fixed_mask and offered > policy.max_mask_fraction:
        raise DisclosureRefused(
            f"the fixed party applies its own mask and shows its membership at no more than "
            f"{100 * policy.max_mask_fraction:g} % of a level's voxels (max_mask_fraction); {settings.sampling} "
            f"sampling offers {100 * offered:g} %: use --sampling urs with a --sample-fraction of at most "
            f"{policy.max_mask_fraction:g}")
    d = fixed.dim
    floor, floor_name = policy.control_point_floor(d)
    linear = "rigid" if settings.transform == "rigid" else "affine"
    revealed: dict[int, int] = {}
    for stage in (linear, "bspline") if settings.transform == "bspline" else (linear,):
        points = control_grid_for(fixed, settings.bspline_spacing_mm).n_points if stage == "bspline" else d + 1
        per_product = product_values(points, d, settings.metric, settings.histogram_bins)
        for factor in settings.stage_levels(stage):
            n = level_grid(fixed, factor).n_voxels
            samples = _level_samples(settings, n)
            if samples < policy.min_samples:
                what = (f"use a --sample-fraction of at least {policy.min_samples / n:.3g}" if n >= policy.min_samples
                        else f"this level has {n} voxels: use a finer level or a larger image")
                raise DisclosureRefused(
                    f"level {factor} would use {samples} samples, under the fixed party's minimum of "
                    f"{policy.min_samples} (min_samples): {what}"
                    f"{'' if factor == min(settings.stage_levels(stage)) else f', or drop level {factor}'}")
            used = revealed.get(factor, 0) + values_per_sample_set(settings.metric) + 2 * per_product
            allowed = policy.max_ratio * samples
            more = ""            # offered only where every voxel of the level would meet the limits
            full_serves = used <= policy.max_ratio * n and (stage != "bspline" or n >= floor * points)
            if settings.sampling != "full" and full_serves:
                more = ", or full sampling"
                if stage == "bspline":
                    more += f", which serves the {settings.bspline_spacing_mm:g} mm grid at this level"
            room = allowed - used + 2 * per_product

            def grid_hint() -> str:
                spacing = _fitting_spacing(fixed, settings, room, d, samples, policy)
                if spacing is None:
                    return f"no control grid fits at this level: use --bspline-levels without {factor}{more}"
                return f"use --bspline-spacing {spacing} mm or more, --bspline-levels without {factor}{more}"
            if stage == "bspline" and samples < floor * points:
                raise DisclosureRefused(
                    f"the fixed party asks for at least {floor:g} sampled voxels per B-spline control point "
                    f"({floor_name}); at level {factor} the grid's {points} "
                    f"control points share {samples} samples ({samples / points:.1f} each): {grid_hint()}")
            if used > allowed:
                hint = (f"{points} control points; {grid_hint()}" if stage == "bspline"
                        else f"use fewer --levels{more} or a larger --sample-fraction")
                raise DisclosureRefused(
                    f"the fixed party reveals at most {policy.max_ratio:g} values per sampled voxel; at level "
                    f"{factor} the {stage} stage needs {used} values for {samples} samples: {hint}")
            revealed[factor] = used


def _fitting_spacing(fixed, settings, room: float, d: int, samples: int, policy: DisclosurePolicy) -> float | None:
    """The smallest control-point spacing (in steps of 25 %) whose two products fit in ``room`` values with
    at least the policy's floor for ``d`` dimensions of the ``samples`` per control point; None if even the
    coarsest grid (one cell across the image) does not."""
    from ppir.engine.bspline import control_grid_for
    floor = policy.control_point_floor(d)[0]

    def fits(spacing: float) -> bool:
        points = control_grid_for(fixed, spacing).n_points
        return (2 * product_values(points, d, settings.metric, settings.histogram_bins) <= room
                and samples >= floor * points)

    widest = float(np.max((np.asarray(fixed.size) - 1) * fixed.spacing))
    spacing = settings.bspline_spacing_mm
    while not fits(spacing):
        if spacing >= widest:
            return None
        spacing *= 1.25
    return round(spacing, 1)

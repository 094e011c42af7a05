"""The registration settings: every choice that decides the outcome, checked once when they are made.

The moving party makes them; in a private session it sends them to the fixed party, which rebuilds
them with ``Settings.from_dict`` (the same checks) before it answers anything. Standard library
only, so that the Slicer module can read the choices without the engine's dependencies.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ppir.common.errors import PPIRError
from ppir.common.tables import from_table

TRANSFORMS = ("rigid", "affine", "bspline")
SAMPLINGS = ("full", "urs", "gms")
INITIALIZATIONS = ("centers", "identity")
METRICS = ("ssd", "ncc", "mi")
HISTOGRAM_BINS = 8      # Mattes MI: bins on each side (the journal code's choice; see docs/method.md)
MAX_HISTOGRAM_BINS = 64


@dataclass(frozen=True)
class Settings:
    """Everything that decides a registration's outcome (both parties agree on it). Invalid values raise PPIRError."""

    transform: str = "affine"
    metric: str = "ssd"
    levels: list[int] = field(default_factory=lambda: [4, 2, 1])
    smoothing: list[float] | None = None
    sampling: str = "full"
    sample_fraction: float = 0.1
    resample_each_iteration: bool = False
    max_iterations: int = 50
    bspline_spacing_mm: float = 20.0
    bspline_levels: list[int] | None = None
    bspline_regularization: float = 0.1
    histogram_bins: int = HISTOGRAM_BINS
    initialization: str = "centers"
    seed: int = 0
    moving_mask: bool = False   # the moving party draws its samples inside its own mask (the mask is never sent)

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise PPIRError(f"unknown transform {self.transform!r}; choose from {', '.join(TRANSFORMS)}")
        if self.metric not in METRICS:
            raise PPIRError(f"unknown metric {self.metric!r}; choose from {', '.join(METRICS)}")
        if self.sampling not in SAMPLINGS:
            raise PPIRError(f"unknown sampling {self.sampling!r}; choose from {', '.join(SAMPLINGS)}")
        for name in ("levels", "bspline_levels"):
            factors = getattr(self, name)
            if factors is not None and (not factors or any(not isinstance(f, int) or f < 1 for f in factors)):
                raise PPIRError(f"{name.replace('_', ' ')} must be shrink factors >= 1, got {factors}")
        if not 0 < self.sample_fraction <= 1:
            raise PPIRError(f"sample fraction must be in (0, 1], got {self.sample_fraction}")
        if self.max_iterations < 1:
            raise PPIRError("max iterations must be at least 1")
        if self.bspline_regularization < 0:
            raise PPIRError("B-spline regularization must be >= 0")
        if self.bspline_spacing_mm <= 0:
            raise PPIRError("B-spline control-point spacing must be positive")
        if not isinstance(self.histogram_bins, int) or not 6 <= self.histogram_bins <= MAX_HISTOGRAM_BINS:
            raise PPIRError(f"histogram bins must be an integer from 6 to {MAX_HISTOGRAM_BINS}, got {self.histogram_bins}")
        if self.initialization not in INITIALIZATIONS:
            raise PPIRError(f"unknown initialization {self.initialization!r}; choose from {', '.join(INITIALIZATIONS)}")
        if not isinstance(self.moving_mask, bool):
            raise PPIRError(f"moving mask must be true or false, got {self.moving_mask!r}")
        if self.smoothing is not None and len(self.smoothing) != len(self.levels):
            raise PPIRError("give one smoothing sigma per level")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Settings":
        """Settings received from a peer: unknown names or wrong types raise PPIRError, like bad values."""
        return from_table(cls, values, "session settings")

    def stage_levels(self, stage: str) -> list[int]:
        """The shrink factors a stage ('rigid', 'affine' or 'bspline') runs at."""
        return (self.bspline_levels or self.levels) if stage == "bspline" else self.levels

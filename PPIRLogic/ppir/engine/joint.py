"""The one place where the two parties' data meet: the joint product.

For samples x (chosen by the moving party) and moving-side channels g(x) (d of them) and I(T(x)),
a backend returns to the moving party only

    r     = Phi^T (g * J)        the registration's joint term, through the public basis Phi
    cross = sum_x I(T(x)) J(x)   for the SSD
    fixed_sq = sum_x J(x)^2      over the same samples (known to the fixed party alone)

Backends: ``ClearBackend`` (both in one process, no protection: the reference), and the private
backends, which compute the same quantities without either party seeing the other's image.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ppir.engine.image import Grid, Volume
from ppir.engine.pyramid import LevelSpec, level_image


@dataclass(frozen=True)
class JointResult:
    r: np.ndarray
    cross: float
    fixed_sq: float


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
    def start_level(self, spec: LevelSpec) -> Grid:
        """Have the fixed party prepare J at this level; returns the level's grid."""

    @abstractmethod
    def set_samples(self, samples: np.ndarray | None, basis):
        """Fix the sample voxels (None: all) and the public basis for the next joint products.

        Returns the basis exactly as the backend applies it (a private backend encodes it in fixed
        point); the moving party uses that one for its own sums so that both sides agree.
        """

    @abstractmethod
    def joint_product(self, channels: np.ndarray, warped: np.ndarray) -> JointResult:
        """r, cross and fixed_sq for moving-side channels (N, d) and warped intensities (N,)."""

    def party_stats(self) -> dict[str, PartyStats]:
        return {"moving": PartyStats(), "fixed": PartyStats()}

    def close(self) -> None:
        """Release connections and workers."""


class FixedParty:
    """Everything the fixed party does with its own image J, whatever the protocol."""

    def __init__(self, fixed: Volume):
        self._fixed = fixed
        self._level: Volume | None = None
        self._values: np.ndarray | None = None
        self._basis = None

    @property
    def grid(self) -> Grid:
        return self._fixed.grid

    def start_level(self, spec: LevelSpec) -> Grid:
        self._level = level_image(self._fixed, spec)
        return self._level.grid

    def set_samples(self, samples: np.ndarray | None, basis) -> None:
        flat = self._level.array.ravel().astype(np.float64)
        self._values = flat if samples is None else flat[samples]
        self._basis = basis

    @property
    def values(self) -> np.ndarray:
        """J at the current samples."""
        return self._values

    def sum_of_squares(self) -> float:
        return float(self._values @ self._values)

    def clear_product(self, channels: np.ndarray, warped: np.ndarray) -> JointResult:
        r = self._basis.transpose_apply(channels, self._values)
        return JointResult(r, float(warped.astype(np.float64) @ self._values), self.sum_of_squares())


class ClearBackend(JointBackend):
    """No privacy: the fixed party's object lives in the same process. The reference for accuracy."""

    name = "clear"

    def __init__(self, fixed: Volume):
        self._party = FixedParty(fixed)

    @property
    def fixed_grid(self) -> Grid:
        return self._party.grid

    def start_level(self, spec: LevelSpec) -> Grid:
        return self._party.start_level(spec)

    def set_samples(self, samples: np.ndarray | None, basis):
        self._party.set_samples(samples, basis)
        return basis

    def joint_product(self, channels: np.ndarray, warped: np.ndarray) -> JointResult:
        return self._party.clear_product(channels, warped)

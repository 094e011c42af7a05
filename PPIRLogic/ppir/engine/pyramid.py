"""Multi-resolution levels: each party smooths and shrinks its own image by the agreed factors."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ppir.engine.image import Grid, Volume


@dataclass(frozen=True)
class LevelSpec:
    """One pyramid level: shrink factor, and Gaussian sigma in units of the finest voxel spacing."""

    factor: int
    sigma: float

    def to_dict(self) -> dict:
        return {"factor": self.factor, "sigma": self.sigma}


def default_levels(factors: list[int], sigmas: list[float] | None = None) -> list[LevelSpec]:
    """Levels for the given factors; sigma defaults to half the factor (0 at full resolution)."""
    if sigmas is None:
        sigmas = [0.5 * f if f > 1 else 0.0 for f in factors]
    if len(sigmas) != len(factors):
        raise ValueError("give one smoothing sigma per level")
    return [LevelSpec(int(f), float(s)) for f, s in zip(factors, sigmas)]


def axis_factors(grid: Grid, factor: int) -> np.ndarray:
    """Per-axis (ITK order) integer shrink factors: coarse axes of anisotropic images shrink less."""
    finest = grid.spacing.min()
    f = np.maximum(1, np.round(factor * finest / grid.spacing)).astype(int)
    return np.minimum(f, np.maximum(1, np.asarray(grid.size) // 4))


def level_grid(grid: Grid, factor: int) -> Grid:
    """The grid of a level: blocks of ``axis_factors`` voxels, centred on the same physical region."""
    f = axis_factors(grid, factor)
    size = np.asarray(grid.size) // f
    origin = grid.index_to_point((f - 1) / 2.0)
    return Grid(shape=tuple(int(n) for n in size[::-1]), spacing=grid.spacing * f,
                origin=origin, direction=grid.direction)


def level_image(volume: Volume, spec: LevelSpec) -> Volume:
    """Smooth with an isotropic Gaussian (sigma * finest spacing, in mm) and resample onto the level grid."""
    grid = volume.grid
    image = volume.to_sitk()
    if spec.sigma > 0:
        image = sitk.SmoothingRecursiveGaussian(image, float(spec.sigma * grid.spacing.min()))
    if np.all(axis_factors(grid, spec.factor) == 1):
        return Volume(sitk.GetArrayFromImage(image).astype(np.float32), grid)
    target = level_grid(grid, spec.factor)
    resampled = sitk.Resample(image, target.reference_image(), sitk.Transform(), sitk.sitkLinear, 0.0,
                              sitk.sitkFloat32)
    return Volume(sitk.GetArrayFromImage(resampled), target)

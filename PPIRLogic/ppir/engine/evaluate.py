"""Target registration error of a transform against a ground truth, over the fixed image's foreground."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ppir.engine.image import Grid, Volume


def displacement(tfm: sitk.Transform, grid: Grid) -> np.ndarray:
    """T(x) - x at every voxel of ``grid``, (N, d) in numpy voxel order."""
    ref = grid.reference_image()
    field = sitk.TransformToDisplacementField(tfm, sitk.sitkVectorFloat64, ref.GetSize(), ref.GetOrigin(),
                                              ref.GetSpacing(), ref.GetDirection())
    return sitk.GetArrayFromImage(field).reshape(-1, grid.dim)


def foreground(fixed: Volume) -> np.ndarray:
    """Otsu foreground of the fixed image (flat boolean mask)."""
    mask = sitk.OtsuThreshold(fixed.to_sitk(), 0, 1)
    return sitk.GetArrayFromImage(mask).ravel().astype(bool)


def distance_stats(distances: np.ndarray) -> dict:
    return {"mean": float(distances.mean()), "rmse": float(np.sqrt(np.mean(distances ** 2))),
            "median": float(np.median(distances)),
            "p95": float(np.percentile(distances, 95)), "max": float(distances.max()),
            "voxels": int(distances.size)}


def disagreement(transform: sitk.Transform, other: sitk.Transform, grid: Grid,
                 mask: np.ndarray | None = None) -> dict:
    """Statistics in mm of |T(x) - T'(x)| over the voxels of ``grid`` (or those in ``mask``)."""
    diff = displacement(transform, grid) - displacement(other, grid)
    return distance_stats(np.linalg.norm(diff if mask is None else diff[mask], axis=1))


def tre(fixed: Volume, transform: sitk.Transform, truth: sitk.Transform, mask: np.ndarray | None = None) -> dict:
    """TRE statistics in mm over ``mask`` (default: the fixed image's Otsu foreground)."""
    return disagreement(transform, truth, fixed.grid, foreground(fixed) if mask is None else mask)

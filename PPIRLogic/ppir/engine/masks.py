"""Masks: which voxels a party lets into the registration, each kept on its owner's side.

- The **moving party's mask** (on the moving image's grid) restricts the samples it draws to the
  fixed-grid voxels that the current transform maps into the mask (``footprint``, when a sample set
  is drawn: at the start of each level, and at each resampling). The fixed party sees the sample
  indices, so it learns where the moving mask falls on the fixed grid at the sampled voxels.
- The **fixed party's mask** (on the fixed image's grid) is applied by the fixed party to each
  sample set it receives (``FixedParty.keep`` in ``ppir.engine.joint``); it tells the moving party
  which of its samples it kept, and nothing else about the mask.

A mask is an image on exactly its volume's grid; a voxel is inside when its value is non-zero. At a
pyramid level, a level voxel is inside when the linearly interpolated mask there is at least 1/2.
"""
from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from ppir.common.errors import PPIRError
from ppir.engine.image import Grid, Volume, read_sitk

ORIGIN_TOLERANCE = 1e-3      # of the smallest voxel spacing
RELATIVE_TOLERANCE = 1e-4    # spacing and direction cosines
HEAD_FRACTION = 0.1          # head_mask's threshold, of the 99th intensity percentile


def read_mask(path: str | os.PathLike, volume: Volume, role: str) -> Volume:
    """Read a mask for ``volume`` (``role``: e.g. "fixed mask"): a scalar image on exactly its grid with at
    least one non-zero voxel; returned as 0/1 uint8. Raises PPIRError naming the file and the problem."""
    label = f"{role} '{path}'"
    image = read_sitk(path, label)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise PPIRError(f"{label}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; a mask is "
                        "a scalar (label) image")
    if image.GetDimension() == 3 and image.GetSize()[2] == 1 and volume.dim == 2:
        image = image[:, :, 0]
    if image.GetDimension() != volume.dim:
        raise PPIRError(f"{label}: is {image.GetDimension()}D but its image is {volume.dim}D")
    array = sitk.GetArrayFromImage(image)
    d = volume.dim
    grid = Grid(array.shape, np.array(image.GetSpacing(), float), np.array(image.GetOrigin(), float),
                np.array(image.GetDirection(), float).reshape(d, d))
    problem = grid_difference(grid, volume.grid)
    if problem:
        raise PPIRError(f"{label}: not on its image's grid ({problem}); resample the mask onto the image first")
    if not np.all(np.isfinite(array)):
        raise PPIRError(f"{label}: contains NaN or infinite values")
    inside = array != 0
    if not inside.any():
        raise PPIRError(f"{label}: is empty (no non-zero voxel)")
    return Volume(inside.astype(np.uint8), volume.grid)


def head_mask(volume: Volume, fraction: float = HEAD_FRACTION) -> Volume:
    """The head (or body) in ``volume``: the voxels brighter than ``fraction`` x its 99th intensity percentile,
    their largest connected part, holes filled; 0/1 uint8 on the volume's grid. A fixed party's mask that
    keeps the air out of NCC between scanners whose intensity curves differ (docs/method.md)."""
    if not 0.0 < fraction < 1.0:
        raise PPIRError(f"the head mask's threshold must be a fraction between 0 and 1, got {fraction}")
    level = fraction * float(np.percentile(volume.array, 99))
    if not level > 0:
        raise PPIRError("the image's 99th intensity percentile is not positive: there is no head above the air")
    bright = sitk.BinaryThreshold(volume.to_sitk(), level, float("inf"), 1, 0)
    largest = sitk.RelabelComponent(sitk.ConnectedComponent(bright), sortByObjectSize=True) == 1
    return Volume(sitk.GetArrayFromImage(sitk.BinaryFillhole(largest)).astype(np.uint8), volume.grid)


def grid_difference(grid: Grid, expected: Grid) -> str | None:
    """How ``grid`` differs from ``expected`` (size, spacing, origin or direction), or None if it does not."""
    if grid.size != expected.size:
        return f"size {list(grid.size)}, the image's {list(expected.size)}"
    if not np.allclose(grid.spacing, expected.spacing, rtol=RELATIVE_TOLERANCE, atol=0):
        return f"spacing {grid.spacing.tolist()} mm, the image's {expected.spacing.tolist()} mm"
    if not np.allclose(grid.origin, expected.origin, rtol=0, atol=ORIGIN_TOLERANCE * float(expected.spacing.min())):
        return f"origin {grid.origin.tolist()} mm, the image's {expected.origin.tolist()} mm"
    if not np.allclose(grid.direction, expected.direction, rtol=0, atol=RELATIVE_TOLERANCE):
        return f"direction {grid.direction.ravel().tolist()}, the image's {expected.direction.ravel().tolist()}"
    return None


def footprint(mask: Volume, grid: Grid, transform: sitk.Transform | None = None) -> np.ndarray:
    """Flat bool (grid voxels, numpy order): whether ``transform`` (grid point -> mask point; None: the
    identity) puts the voxel inside ``mask`` (the interpolated mask at least 1/2; outside the mask's grid: out)."""
    if transform is None and grid_difference(grid, mask.grid) is None:
        return mask.array.ravel() != 0
    image = sitk.GetImageFromArray(mask.array.astype(np.float32))
    image.CopyInformation(mask.grid.reference_image())
    resampled = sitk.Resample(image, grid.reference_image(), transform or sitk.Transform(grid.dim, sitk.sitkIdentity),
                              sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayViewFromImage(resampled).ravel() >= 0.5

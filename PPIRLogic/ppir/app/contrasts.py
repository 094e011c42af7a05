"""Synthetic contrasts for multi-modal test pairs, made from a T1 image and its tissue maps (all synthetic).

- ``mapped``: the T1 through a scanner-like intensity curve, v -> gain * m * (v / m)^gamma + offset * m
  (m = the 99th percentile; gain 1.3, gamma 0.5, offset 0.1; applied inside the head only, the air stays 0);
- ``t2``: T2-like: CSF bright, grey matter middle, white matter dark, the rest of the head faint;
- ``pet``: PET-like: grey matter 4x white matter, no signal elsewhere, blurred (Gaussian, 4 mm sigma), in
  its own units (grey matter at 4x the T1's 99th percentile), as a PET scanner's differ from an MR's.

Tissue maps (grey and white matter probabilities, as ``ppir data fetch`` gets them for MNI152) are
resampled onto the image's grid, so any level or crop of the template works.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ppir.common.errors import PPIRError
from ppir.engine.image import Volume, read_image

CONTRASTS = ("same", "mapped", "t2", "pet")
TISSUE_FILES = ("mni152_gm_1mm.nii.gz", "mni152_wm_1mm.nii.gz")
GAIN, GAMMA, OFFSET = 1.3, 0.5, 0.1
PET_SIGMA_MM = 4.0


def tissue_maps(volume: Volume, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Grey- and white-matter probabilities on ``volume``'s grid (linear resampling, physical space; maps
    stored as 0-255, as the fetched ones, are scaled to 0-1)."""
    maps = []
    for name in TISSUE_FILES:
        path = Path(folder) / name
        if not path.is_file():
            raise PPIRError(f"tissue map '{path}' is missing: run `ppir data fetch` (or give --tissue-dir)")
        image = sitk.Cast(read_image(path, "tissue map").to_sitk(), sitk.sitkFloat32)
        resampled = sitk.Resample(image, volume.grid.reference_image(), sitk.Transform(), sitk.sitkLinear, 0.0)
        array = sitk.GetArrayFromImage(resampled)
        peak = float(array.max())
        maps.append(np.clip(array / (peak if peak > 1.0 else 1.0), 0.0, 1.0))   # 0-255 files scaled to 0-1
    return maps[0], maps[1]


def head_mask(t1: np.ndarray) -> np.ndarray:
    """Voxels of the head: above 5 % of the 99th percentile."""
    return t1 > 0.05 * float(np.percentile(t1, 99))


def apply_contrast(volume: Volume, contrast: str, tissue_dir: Path | None = None) -> np.ndarray:
    """The image ``volume`` (a T1) would have in another contrast, as a float32 array on its grid."""
    t1 = volume.array.astype(np.float64)
    if contrast == "same":
        return t1.astype(np.float32)
    if contrast not in CONTRASTS:
        raise PPIRError(f"unknown contrast {contrast!r}; choose from {', '.join(CONTRASTS)}")
    top = float(np.percentile(t1, 99))
    if top <= 0:
        raise PPIRError("the image has no positive intensities to map")
    head = head_mask(t1)
    if contrast == "mapped":
        mapped = GAIN * top * np.clip(t1 / top, 0.0, None) ** GAMMA + OFFSET * top
        return np.where(head, mapped, 0.0).astype(np.float32)
    if tissue_dir is None:
        raise PPIRError(f"the {contrast} contrast needs the tissue maps (--tissue-dir)")
    gm, wm = tissue_maps(volume, tissue_dir)
    brain = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray((gm + wm > 0.3).astype(np.uint8))))
    if contrast == "t2":
        csf = np.clip(brain - gm - wm, 0.0, 1.0)
        other = np.where(head & (brain == 0), 0.25 * np.clip(t1 / top, 0.0, 1.0), 0.0)
        return (top * (1.0 * csf + 0.55 * gm + 0.25 * wm + other)).astype(np.float32)
    pet = sitk.GetImageFromArray((top * (4.0 * gm + 1.0 * wm)).astype(np.float32))
    pet.SetSpacing(tuple(float(s) for s in volume.grid.spacing))
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(pet, PET_SIGMA_MM)).astype(np.float32)

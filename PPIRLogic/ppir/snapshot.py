"""A PNG that shows at a glance whether a registration worked."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .image import Volume


def resample_into(moving: Volume, fixed: Volume, transform: sitk.Transform) -> Volume:
    """The moving image on the fixed grid through ``transform`` (fixed point -> moving point)."""
    out = sitk.Resample(moving.to_sitk(), fixed.grid.reference_image(), transform, sitk.sitkLinear, 0.0,
                        sitk.sitkFloat32)
    return Volume(sitk.GetArrayFromImage(out), fixed.grid)


def _slices(array: np.ndarray) -> list[tuple[str, np.ndarray]]:
    if array.ndim == 2:
        return [("slice", array)]
    z, y, x = (n // 2 for n in array.shape)
    return [("axial", array[z]), ("coronal", array[:, y, :]), ("sagittal", array[:, :, x])]


def _checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    rows = (np.arange(a.shape[0]) * tiles // a.shape[0])[:, None]
    cols = (np.arange(a.shape[1]) * tiles // a.shape[1])[None, :]
    return np.where((rows + cols) % 2 == 0, a, b)


def write_snapshot(path: str, fixed: Volume, moving: Volume, transform: sitk.Transform, title: str = "") -> None:
    """Rows: central slices. Columns: fixed, moving before, moving after, checkerboard, |difference|."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = fixed.dim
    before = resample_into(moving, fixed, sitk.Transform(d, sitk.sitkIdentity))
    after = resample_into(moving, fixed, transform)
    vmax = float(np.percentile(fixed.array, 99.5))
    rows = list(zip(_slices(fixed.array), _slices(before.array), _slices(after.array)))
    aspect = _aspects(fixed)
    fig, axes = plt.subplots(len(rows), 5, figsize=(15, 3.2 * len(rows) + 0.6), squeeze=False)
    headers = ["fixed", "moving, before", "moving, registered", "checkerboard fixed / registered",
               "|fixed - registered| (x4)"]
    for r, ((name, f), (_, b), (_, a)) in enumerate(rows):
        panels = [f, b, a, _checkerboard(f, a), np.abs(f - a)]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel, cmap="magma" if c == 4 else "gray", vmin=0, vmax=vmax / 4 if c == 4 else vmax,
                      origin="lower",
                      aspect=aspect[r], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(headers[c], fontsize=10)
            if c == 0:
                ax.set_ylabel(name)
    diff_before = float(np.mean(np.abs(fixed.array - before.array)))
    diff_after = float(np.mean(np.abs(fixed.array - after.array)))
    fig.suptitle(f"{title}  mean |difference|: {diff_before:.3g} before, {diff_after:.3g} after".strip())
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=80, format="png")
    finally:
        plt.close(fig)


def _aspects(volume: Volume) -> list[float]:
    s = volume.grid.spacing
    if volume.dim == 2:
        return [s[1] / s[0]]
    return [s[1] / s[0], s[2] / s[0], s[2] / s[1]]

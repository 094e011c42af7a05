"""A PNG that shows at a glance whether a registration worked."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ppir.engine.image import Grid, Volume, resample_into


def _slices(array: np.ndarray) -> list[tuple[str, np.ndarray]]:
    if array.ndim == 2:
        return [("slice", array)]
    z, y, x = (n // 2 for n in array.shape)
    return [("axial", array[z]), ("coronal", array[:, y, :]), ("sagittal", array[:, :, x])]


def _checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    rows = (np.arange(a.shape[0]) * tiles // a.shape[0])[:, None]
    cols = (np.arange(a.shape[1]) * tiles // a.shape[1])[None, :]
    return np.where((rows + cols) % 2 == 0, a, b)


def pyplot():
    """matplotlib.pyplot on the off-screen Agg backend (no display needed), imported on first use."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write_snapshot(path: str, grid: Grid, moving: Volume, transform: sitk.Transform, title: str = "",
                   fixed: Volume | None = None) -> None:
    """Rows: central slices. Columns: fixed, moving before, moving after, checkerboard, |difference|.

    Without the fixed image (the moving party of a private registration) only the moving image
    before and after, on the fixed grid, are shown.
    """
    plt = pyplot()
    before = resample_into(moving, grid, sitk.Transform(grid.dim, sitk.sitkIdentity))
    after = resample_into(moving, grid, transform)
    reference = fixed.array if fixed is not None else after.array
    vmax = float(np.percentile(reference, 99.5))
    if fixed is not None:
        headers = ["fixed", "moving, before", "moving, registered", "checkerboard fixed / registered",
                   "|fixed - registered| (x4)"]
        columns = [_slices(fixed.array), _slices(before.array), _slices(after.array),
                   [(n, _checkerboard(f, a)) for (n, f), (_, a) in zip(_slices(fixed.array), _slices(after.array))],
                   [(n, np.abs(f - a)) for (n, f), (_, a) in zip(_slices(fixed.array), _slices(after.array))]]
    else:
        headers = ["moving, before (on the fixed grid)", "moving, registered"]
        columns = [_slices(before.array), _slices(after.array)]
    aspect = _aspects(grid)
    n_rows = len(columns[0])
    fig, axes = plt.subplots(n_rows, len(columns), figsize=(3 * len(columns), 3.2 * n_rows + 0.6), squeeze=False)
    for c, column in enumerate(columns):
        for r, (name, panel) in enumerate(column):
            difference = fixed is not None and c == 4
            ax = axes[r, c]
            ax.imshow(panel, cmap="magma" if difference else "gray", vmin=0, vmax=vmax / 4 if difference else vmax,
                      origin="lower", aspect=aspect[r], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(headers[c], fontsize=10)
            if c == 0:
                ax.set_ylabel(name)
    if fixed is not None:
        diff_before = float(np.mean(np.abs(fixed.array - before.array)))
        diff_after = float(np.mean(np.abs(fixed.array - after.array)))
        title = f"{title}  mean |difference|: {diff_before:.3g} before, {diff_after:.3g} after"
    fig.suptitle(title.strip())
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=80, format="png")
    finally:
        plt.close(fig)


def _aspects(grid: Grid) -> list[float]:
    s = grid.spacing
    if grid.dim == 2:
        return [s[1] / s[0]]
    return [s[1] / s[0], s[2] / s[0], s[2] / s[1]]

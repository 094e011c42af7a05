"""The moving party's image at one level: intensities and physical gradients, sampled at warped points."""
from __future__ import annotations

from itertools import product

import numpy as np
import SimpleITK as sitk

from .image import Grid, Volume

CHUNK = 1 << 20


class MovingLevel:
    """Stacked channels [I, dI/dx, dI/dy(, dI/dz)] with (multi)linear interpolation, zero outside.

    Two equivalent samplers: ``sample`` at arbitrary points (numpy; the channel array is padded with
    zeros, one voxel before and two after each axis, so clamped indices never leave it) and
    ``sample_grid`` over a whole grid through a SimpleITK transform (multi-threaded resampling).
    Both read zeros outside the image.
    """

    def __init__(self, volume: Volume):
        grid = volume.grid
        self.grid = grid
        d = grid.dim
        arr = volume.array.astype(np.float32)
        grads = np.gradient(arr, axis=tuple(range(d)))
        index_grad = np.stack(grads[::-1], axis=-1) / grid.spacing.astype(np.float32)
        physical = index_grad @ grid.direction.T.astype(np.float32)
        stacked = np.concatenate([arr[..., None], physical], axis=-1)
        self._image = sitk.GetImageFromArray(stacked, isVector=True)
        self._image.CopyInformation(volume.to_sitk())
        padded = np.pad(stacked, [(1, 2)] * d + [(0, 0)])
        self.channels = padded.reshape(-1, d + 1)
        padded_size = np.asarray(padded.shape[:-1][::-1])
        self._stride = np.cumprod((1,) + tuple(padded_size[:-1])).astype(np.int64)
        self._upper = np.asarray(grid.size, dtype=np.float64)
        self._corners = np.array(list(product((0, 1), repeat=d)))
        self._corner_offsets = self._corners @ self._stride
        to_index = np.linalg.inv(grid.index_to_physical)
        self._affine = np.vstack([to_index.T, -(grid.origin @ to_index.T) + 1.0])

    def sample(self, points: np.ndarray) -> np.ndarray:
        """Channels [I(y), grad I(y)] (N, 1+d) at physical points y."""
        out = np.empty((len(points), self.channels.shape[1]), dtype=np.float32)
        for lo in range(0, len(points), CHUNK):
            out[lo:lo + CHUNK] = self._sample_chunk(points[lo:lo + CHUNK])
        return out

    def sample_grid(self, transform: sitk.Transform, grid: Grid) -> np.ndarray:
        """Channels at T(x) for every voxel x of ``grid`` (numpy voxel order), (N, 1+d)."""
        out = sitk.Resample(self._image, grid.reference_image(), transform, sitk.sitkLinear, 0.0,
                            sitk.sitkVectorFloat32)
        return sitk.GetArrayFromImage(out).reshape(-1, self.channels.shape[1])

    def _sample_chunk(self, points: np.ndarray) -> np.ndarray:
        d = points.shape[1]
        u = points @ self._affine[:d] + self._affine[d]          # padded continuous index
        np.clip(u, 0.0, self._upper + 1.0, out=u)
        base = np.floor(u)
        frac = (u - base).astype(np.float32)
        flat = base.astype(np.int64) @ self._stride
        factors = np.stack([1.0 - frac, frac], axis=1)          # (n, 2, d)
        acc = np.zeros((len(points), self.channels.shape[1]), dtype=np.float32)
        for corner, offset in zip(self._corners, self._corner_offsets):
            w = factors[:, corner[0], 0].copy()
            for axis in range(1, d):
                w *= factors[:, corner[axis], axis]
            acc += w[:, None] * self.channels[flat + offset]
        return acc

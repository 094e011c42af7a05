"""The moving party's image at one level: intensities and physical gradients, sampled at warped points."""
from __future__ import annotations

from functools import cached_property
from itertools import product

import numpy as np
import SimpleITK as sitk

from ppir.engine.image import Grid, Volume

CHUNK = 1 << 20


class MovingLevel:
    """Stacked channels [I, dI/dx, dI/dy(, dI/dz)] with (multi)linear interpolation, zero outside.

    Two samplers, both reading zeros outside the image: ``sample`` at arbitrary points (numpy;
    the channel array is padded with zeros, one voxel before and two after each axis, so clamped
    indices never leave it) interpolates the moving image's gradient; ``sample_grid`` warps a whole
    grid by a linear transform and differentiates the warped image there instead (see its note).
    """

    def __init__(self, volume: Volume):
        grid = volume.grid
        self.grid = grid
        self._volume = volume
        d = grid.dim
        self._image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
        self._twice_grad: np.ndarray | None = None
        padded_size = np.asarray(grid.size) + 3
        self._stride = np.cumprod((1,) + tuple(padded_size[:-1])).astype(np.int64)
        self._upper = np.asarray(grid.size, dtype=np.float64)
        self._corners = np.array(list(product((0, 1), repeat=d)))
        self._corner_offsets = self._corners @ self._stride
        to_index = np.linalg.inv(grid.index_to_physical)
        self._affine = np.vstack([to_index.T, -(grid.origin @ to_index.T) + 1.0])

    @cached_property
    def channels(self) -> np.ndarray:
        """The padded channel array ``sample`` reads, (voxels, 1+d); built on first use."""
        grid, d = self.grid, self.grid.dim
        arr = self._volume.array.astype(np.float32)
        grads = np.gradient(arr, axis=tuple(range(d)))
        index_grad = np.stack(grads[::-1], axis=-1) / grid.spacing.astype(np.float32)
        physical = index_grad @ grid.direction.T.astype(np.float32)
        stacked = np.concatenate([arr[..., None], physical], axis=-1)
        return np.pad(stacked, [(1, 2)] * d + [(0, 0)]).reshape(-1, d + 1)

    @cached_property
    def value_range(self) -> tuple[float, float]:
        """The image's smallest and largest intensity (the range of Mattes MI's moving bins)."""
        return float(self._volume.array.min()), float(self._volume.array.max())

    def sample(self, points: np.ndarray) -> np.ndarray:
        """Channels [I(y), grad I(y)] (N, 1+d) at physical points y."""
        out = np.empty((len(points), self.channels.shape[1]), dtype=np.float32)
        for lo in range(0, len(points), CHUNK):
            out[lo:lo + CHUNK] = self._sample_chunk(points[lo:lo + CHUNK])
        return out

    def sample_grid(self, transform: sitk.MatrixOffsetTransformBase, grid: Grid) -> np.ndarray:
        """Channels at T(x) for every voxel x of ``grid`` (numpy voxel order), (N, 1+d).

        One threaded SimpleITK resampling of I, then central differences of F = I(T(x)) on the
        grid: with T(x) = A x + b, grad I(T(x)) = A^-T grad F(x). Resampling the d+1 channels would
        cost five times as much; the two gradients differ by interpolation error only.
        """
        a = np.asarray(transform.GetMatrix()).reshape(grid.dim, grid.dim)
        warped, values, twice_grad = self._warped_differences(transform, grid)
        to_moving = np.linalg.solve(a.T, grid.direction / grid.spacing)      # A^-T D S^-1
        out = np.empty((values.size, grid.dim + 1), dtype=np.float32)
        out[:, 0] = values.ravel()     # ``warped`` is alive: ``values`` views its buffer
        out[:, 1:] = ((0.5 * to_moving).astype(np.float32) @ twice_grad).T
        return out

    def gradient_magnitude(self, transform: sitk.Transform, grid: Grid) -> np.ndarray:
        """|grad| of the warped image at every voxel of ``grid`` (the weights of GMS sampling).

        |grad I(T(x))| for linear transforms; for others (the B-spline stage) |grad F(x)| of
        F = I(T(x)) on the grid, which differs from it by T's Jacobian (the affine matrix times
        I + grad D): weights for drawing samples, not for the registration's gradient.
        """
        if isinstance(transform, (sitk.AffineTransform, sitk.Euler2DTransform, sitk.Euler3DTransform)):
            return np.linalg.norm(self.sample_grid(transform, grid)[:, 1:], axis=1)
        _, _, twice_grad = self._warped_differences(transform, grid)
        return np.linalg.norm((0.5 * grid.direction / grid.spacing) @ twice_grad, axis=0)

    def _warped_differences(self, transform: sitk.Transform, grid: Grid) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
        """F = I(T(x)) on ``grid``: the image, a numpy view of it (valid while the image lives) and
        2 x its index-space gradient, (d, N) with x first, in a buffer reused by the next call."""
        d = grid.dim
        warped = sitk.Resample(self._image, grid.reference_image(), transform, sitk.sitkLinear, 0.0,
                               sitk.sitkFloat32)
        values = sitk.GetArrayViewFromImage(warped)
        if self._twice_grad is None or self._twice_grad.shape != (d,) + values.shape:
            self._twice_grad = np.empty((d,) + values.shape, dtype=np.float32)
        for channel, axis in enumerate(reversed(range(d))):
            _twice_central_difference(values, axis, self._twice_grad[channel])
        return warped, values, self._twice_grad.reshape(d, -1)

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


def _twice_central_difference(values: np.ndarray, axis: int, out: np.ndarray) -> None:
    """2 x np.gradient(values, axis=axis) into ``out`` (one-sided differences, doubled, at the ends)."""
    n = values.shape[axis]

    def part(lo: int | None, hi: int | None) -> tuple[slice, ...]:
        return tuple(slice(lo, hi) if ax == axis else slice(None) for ax in range(values.ndim))

    np.subtract(values[part(2, None)], values[part(None, -2)], out=out[part(1, -1)])
    first, last = part(0, 1), part(n - 1, n)
    np.subtract(values[part(1, 2)], values[first], out=out[first])
    np.subtract(values[last], values[part(n - 2, n - 1)], out=out[last])
    out[first] *= 2.0
    out[last] *= 2.0

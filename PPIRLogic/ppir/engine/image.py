"""Volumes with physical geometry, read and written through SimpleITK.

Arrays are kept in numpy order (``[z, y, x]`` for 3D) as SimpleITK returns them; every geometric
vector (spacing, origin, index, point) is in ITK order (x, y, z) and in ITK's LPS physical space.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ppir.common.errors import PPIRError
from ppir.common.files import write_atomically


@dataclass(frozen=True)
class Grid:
    """The geometry of a voxel grid: ``shape`` in numpy order, vectors in ITK order (LPS, mm)."""

    shape: tuple[int, ...]
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray

    @property
    def dim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> tuple[int, ...]:
        """Number of voxels along x, y(, z)."""
        return tuple(self.shape[::-1])

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape))

    @property
    def index_to_physical(self) -> np.ndarray:
        """Matrix M with point = origin + M @ index."""
        return self.direction @ np.diag(self.spacing)

    def index_to_point(self, index: np.ndarray) -> np.ndarray:
        """Continuous indices (..., dim) in ITK order to physical points (..., dim)."""
        return index @ self.index_to_physical.T + self.origin

    def point_to_index(self, points: np.ndarray) -> np.ndarray:
        """Physical points (..., dim) to continuous indices (..., dim) in ITK order."""
        return (points - self.origin) @ np.linalg.inv(self.index_to_physical).T

    def center(self) -> np.ndarray:
        """Physical position of the centre of the voxel grid."""
        return self.index_to_point((np.asarray(self.size, float) - 1.0) / 2.0)

    def flat_to_index(self, flat: np.ndarray) -> np.ndarray:
        """Flat numpy-order voxel numbers (N,) to integer ITK-order indices (N, dim)."""
        return np.stack(np.unravel_index(flat, self.shape)[::-1], axis=1)

    def points(self, flat: np.ndarray | None = None) -> np.ndarray:
        """Physical points (N, dim) of the voxels numbered ``flat`` (all voxels when None)."""
        if flat is None:
            flat = np.arange(self.n_voxels)
        return self.index_to_point(self.flat_to_index(flat).astype(np.float64))

    def corners(self) -> np.ndarray:
        """Physical points of the 2**dim corner voxel centres."""
        extent = np.asarray(self.size, float) - 1.0
        bits = np.array(np.meshgrid(*[[0.0, 1.0]] * self.dim, indexing="ij")).reshape(self.dim, -1).T
        return self.index_to_point(bits * extent)

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": self.spacing.tolist(),
                "origin": self.origin.tolist(), "direction": self.direction.ravel().tolist()}

    def reference_image(self) -> sitk.Image:
        """An empty SimpleITK image with this geometry (for resampling onto it)."""
        image = sitk.Image([int(n) for n in self.size], sitk.sitkUInt8)
        image.SetSpacing(tuple(float(s) for s in self.spacing))
        image.SetOrigin(tuple(float(o) for o in self.origin))
        image.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return image


@dataclass(frozen=True)
class Volume:
    """A scalar image: ``array`` in numpy order on a ``grid``."""

    array: np.ndarray
    grid: Grid

    @property
    def dim(self) -> int:
        return self.array.ndim

    def with_array(self, array: np.ndarray) -> "Volume":
        """The same geometry with other voxel values."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match {self.array.shape}")
        return Volume(array, self.grid)

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array)
        image.CopyInformation(self.grid.reference_image())
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, name: str = "image") -> "Volume":
        dim = image.GetDimension()
        array = sitk.GetArrayFromImage(image)
        grid = Grid(shape=array.shape,
                    spacing=np.array(image.GetSpacing(), dtype=np.float64),
                    origin=np.array(image.GetOrigin(), dtype=np.float64),
                    direction=np.array(image.GetDirection(), dtype=np.float64).reshape(dim, dim))
        check_geometry(grid, name)
        return cls(array, grid)


def check_geometry(grid: Grid, name: str) -> None:
    """Raise PPIRError unless spacing is positive and the direction matrix orthonormal."""
    if np.any(~np.isfinite(grid.spacing)) or np.any(grid.spacing <= 0):
        raise PPIRError(f"{name}: spacing must be positive, got {grid.spacing.tolist()}")
    gram = grid.direction @ grid.direction.T
    if not np.allclose(gram, np.eye(grid.dim), atol=1e-4):
        raise PPIRError(f"{name}: direction cosines are not orthonormal: {grid.direction.tolist()}")


def read_sitk(path: str | os.PathLike, label: str) -> sitk.Image:
    """The image at ``path`` (a file, or a DICOM series folder); PPIRError naming ``label`` if it is missing
    or unreadable."""
    path = Path(path)
    if not path.exists():
        raise PPIRError(f"{label}: no such file or folder")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            files = reader.GetGDCMSeriesFileNames(str(path))
            if not files:
                raise PPIRError(f"{label}: the folder holds no DICOM series")
            reader.SetFileNames(files)
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reader error"
        raise PPIRError(f"{label}: not a readable image ({first})") from None


def read_image(path: str | os.PathLike, role: str = "image") -> Volume:
    """Read a 2D or 3D scalar image (NRRD, NIfTI, MetaImage, ... or a DICOM series folder) as float32.

    Raises PPIRError naming the file for anything PPIR cannot register.
    """
    label = f"{role} '{path}'"
    image = read_sitk(path, label)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise PPIRError(f"{label}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                        "PPIR registers scalar images only")
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        image = image[:, :, 0]
    if image.GetDimension() not in (2, 3):
        raise PPIRError(f"{label}: is {image.GetDimension()}D; PPIR registers 2D or 3D images")
    volume = Volume.from_sitk(sitk.Cast(image, sitk.sitkFloat32), label)
    if min(volume.grid.size) < 4:
        raise PPIRError(f"{label}: size {volume.grid.size} is too small (at least 4 voxels per axis)")
    if not np.all(np.isfinite(volume.array)):
        raise PPIRError(f"{label}: contains NaN or infinite voxel values")
    if float(volume.array.max()) == float(volume.array.min()):
        raise PPIRError(f"{label}: is constant (every voxel is {float(volume.array.min())}); nothing to align")
    return volume


def check_pair(fixed: Volume, moving: Volume) -> None:
    """Raise PPIRError if the two images cannot be registered to each other."""
    if fixed.dim != moving.dim:
        raise PPIRError(f"the fixed image is {fixed.dim}D but the moving image is {moving.dim}D")


def write_volume(volume: "Volume", path: str) -> None:
    """Write a volume to exactly ``path`` (format from the extension, compressed)."""
    sitk.WriteImage(volume.to_sitk(), path, True)


def write_image(volume: Volume, path: str | os.PathLike) -> None:
    """Write a volume (format from the file extension) atomically."""
    write_atomically(path, lambda tmp: write_volume(volume, tmp))


def resample_into(moving: Volume, grid: Grid, transform: sitk.Transform) -> Volume:
    """The moving image on the fixed grid through ``transform`` (fixed point -> moving point)."""
    out = sitk.Resample(moving.to_sitk(), grid.reference_image(), transform, sitk.sitkLinear, 0.0,
                        sitk.sitkFloat32)
    return Volume(sitk.GetArrayFromImage(out), grid)

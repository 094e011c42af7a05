"""Synthetic pairs with known truth whose fixed image carries small details the moving image lacks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from ppir.app.synth import synthesize
from ppir.engine.evaluate import foreground
from ppir.engine.image import Grid, Volume, read_image, write_image

from ppir_bench.attack.solve import Disc

RADII_MM = (3.0, 4.0, 5.0, 6.0, 8.0)
PLACES = ((0.30, 0.30, 0.40), (0.70, 0.35, 0.60), (0.35, 0.70, 0.50), (0.65, 0.65, 0.35), (0.50, 0.50, 0.55))


def central_cube(volume: Volume, side: int) -> Volume:
    """The central ``side``³ voxels of a 3D volume, in place (the same physical positions)."""
    start = [(n - side) // 2 for n in volume.array.shape]
    array = np.ascontiguousarray(volume.array[tuple(slice(s, s + side) for s in start)])
    grid = volume.grid
    origin = grid.index_to_point(np.asarray(start[::-1], float))
    return Volume(array, Grid(array.shape, grid.spacing, origin, grid.direction))


def place_discs(fixed: Volume, amplitude: float, radii: tuple[float, ...] = RADII_MM) -> list[Disc]:
    """Discs at spread positions inside the foreground's bounding box, one radius each."""
    points = fixed.grid.points()[foreground(fixed)]
    lo, hi = points.min(axis=0), points.max(axis=0)
    return [Disc(tuple(lo + np.asarray(place[:fixed.dim]) * (hi - lo)), r, amplitude) for place, r in zip(PLACES, radii)]


def add_discs(fixed: Volume, discs: list[Disc]) -> Volume:
    """J plus each disc's amplitude inside it."""
    points = fixed.grid.points()
    extra = np.zeros(len(points), np.float32)
    for disc in discs:
        extra[np.linalg.norm(points - np.asarray(disc.center), axis=1) <= disc.radius_mm] += disc.amplitude
    return fixed.with_array((fixed.array.ravel() + extra).reshape(fixed.array.shape))


def without_discs(fixed: Volume, discs: list[Disc]) -> Volume:
    """J as it would be without the discs (``add_discs`` undone)."""
    return add_discs(fixed, [Disc(d.center, d.radius_mm, -d.amplitude) for d in discs])


def pair_with_details(image: Volume, kind: str, seed: int, folder: Path, noise: float = 0.02,
                      contrast: float = 0.3) -> tuple[Path, Path, Path, list[Disc]]:
    """A synthetic ``kind`` pair (noise, bias field) whose fixed image gets discs of 3-8 mm of
    ``contrast`` x its 99th percentile; returns fixed, moving, ground-truth paths and the discs."""
    synthesize(image, kind, seed, folder, noise=noise, bias=True)
    fixed = read_image(folder / "fixed.nrrd")
    discs = place_discs(fixed, contrast * float(np.percentile(fixed.array, 99)))
    write_image(add_discs(fixed, discs), folder / "fixed.nrrd")
    return folder / "fixed.nrrd", folder / "moving.nrrd", folder / "ground_truth.h5", discs

"""Synthetic registration problems with a known answer, made from a real image.

Given a real image F (the fixed image) and a random transform T (fixed point -> moving point), the
moving image is M(y) = F(T^-1(y)) on F's grid, so that M(T(x)) = F(x): registering M to F should
recover T. T is written as ``ground_truth.h5``. With a ``contrast`` (``ppir.app.contrasts``) M is made
from F in that synthetic contrast (intensity-mapped T1, T2-like, PET-like), F staying the T1.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ppir.app.contrasts import apply_contrast
from ppir.common.files import write_atomically
from ppir.engine.bspline import control_grid_for
from ppir.engine.image import Volume, write_image


def random_affine(volume: Volume, rng: np.random.Generator, max_angle_deg: float = 10.0,
                  max_scale: float = 0.08, max_shift_mm: float = 10.0) -> sitk.AffineTransform:
    """Rotation, anisotropic scaling and shift about the image centre, each drawn uniformly."""
    d = volume.dim
    angles = np.deg2rad(rng.uniform(-max_angle_deg, max_angle_deg, size=1 if d == 2 else 3))
    rotation = sitk.Euler2DTransform() if d == 2 else sitk.Euler3DTransform()
    if d == 2:
        rotation.SetAngle(float(angles[0]))
    else:
        rotation.SetRotation(*(float(a) for a in angles))
    matrix = np.array(rotation.GetMatrix()).reshape(d, d) @ np.diag(1.0 + rng.uniform(-max_scale, max_scale, d))
    affine = sitk.AffineTransform(d)
    affine.SetCenter(tuple(float(c) for c in volume.grid.center()))
    affine.SetMatrix(tuple(float(v) for v in matrix.ravel()))
    affine.SetTranslation(tuple(float(v) for v in rng.uniform(-max_shift_mm, max_shift_mm, d)))
    return affine


def random_bspline(volume: Volume, rng: np.random.Generator, max_displacement_mm: float = 8.0,
                   spacing_mm: float = 40.0) -> sitk.BSplineTransform:
    """A smooth deformation whose largest displacement over the image is ``max_displacement_mm``."""
    control = control_grid_for(volume.grid, spacing_mm)
    d = volume.dim
    g = control.grid
    tfm = sitk.BSplineTransform(d, 3)
    tfm.SetFixedParameters(tuple(float(v) for v in np.concatenate(
        [np.asarray(g.size, float), g.origin, g.spacing, g.direction.ravel()])))
    coef = rng.normal(size=d * control.n_points)
    tfm.SetParameters(tuple(float(v) for v in coef))
    field = _displacement(tfm, volume)
    peak = np.linalg.norm(field, axis=-1).max()
    tfm.SetParameters(tuple(float(v) for v in coef * (max_displacement_mm / peak)))
    return tfm


def _displacement(tfm: sitk.Transform, volume: Volume) -> np.ndarray:
    ref = volume.grid.reference_image()
    field = sitk.TransformToDisplacementField(tfm, sitk.sitkVectorFloat64, ref.GetSize(), ref.GetOrigin(),
                                              ref.GetSpacing(), ref.GetDirection())
    return sitk.GetArrayFromImage(field)


def inverse_field(tfm: sitk.Transform, volume: Volume) -> sitk.Transform:
    """The inverse of ``tfm`` over the image grid, as a displacement-field transform."""
    ref = volume.grid.reference_image()
    field = sitk.TransformToDisplacementField(tfm, sitk.sitkVectorFloat64, ref.GetSize(), ref.GetOrigin(),
                                              ref.GetSpacing(), ref.GetDirection())
    inverse = sitk.InvertDisplacementField(field, maximumNumberOfIterations=100,
                                           maxErrorToleranceThreshold=0.001, meanErrorToleranceThreshold=0.0001,
                                           enforceBoundaryCondition=False)
    return sitk.DisplacementFieldTransform(inverse)


def synthesize(fixed: Volume, kind: str, seed: int, out: Path, noise: float = 0.0, bias: bool = False,
               contrast: str = "same", tissue_dir: Path | None = None) -> dict:
    """Write out/fixed.nrrd, out/moving.nrrd and out/ground_truth.h5; returns a summary."""
    source = apply_contrast(fixed, contrast, tissue_dir)
    rng = np.random.default_rng(seed)
    affine = random_affine(fixed, rng)
    if kind == "affine":
        truth: sitk.Transform = affine
        inverse = affine.GetInverse()
    elif kind == "bspline":
        truth = sitk.CompositeTransform([affine, random_bspline(fixed, rng)])
        inverse = inverse_field(truth, fixed)
    else:
        raise ValueError(f"unknown synthetic transform {kind!r}")
    image = fixed.with_array(source).to_sitk()
    moving = sitk.GetArrayFromImage(sitk.Resample(image, image, inverse, sitk.sitkBSpline, 0.0, sitk.sitkFloat32))
    moving = np.clip(moving, source.min(), None)
    if bias:
        moving = moving * _bias_field(fixed, rng)
    if noise > 0:
        moving = moving + rng.normal(scale=noise * float(np.percentile(fixed.array, 99)), size=moving.shape)
    out.mkdir(parents=True, exist_ok=True)
    write_image(fixed, out / "fixed.nrrd")
    write_image(fixed.with_array(moving.astype(np.float32)), out / "moving.nrrd")
    write_atomically(out / "ground_truth.h5", lambda tmp: sitk.WriteTransform(truth, tmp))
    return {"fixed": str(out / "fixed.nrrd"), "moving": str(out / "moving.nrrd"),
            "ground_truth": str(out / "ground_truth.h5"), "transform": kind, "seed": seed,
            "noise": noise, "bias": bias, "contrast": contrast}


def _bias_field(volume: Volume, rng: np.random.Generator, amplitude: float = 0.15) -> np.ndarray:
    """A smooth multiplicative field exp(b), b linear plus quadratic in the normalised coordinates."""
    points = volume.grid.points()
    lo, hi = points.min(0), points.max(0)
    u = 2.0 * (points - lo) / np.maximum(hi - lo, 1e-9) - 1.0
    terms = np.concatenate([u, u ** 2 - 1.0 / 3.0], axis=1)
    coef = rng.uniform(-1, 1, terms.shape[1])
    b = terms @ coef
    b *= amplitude / max(np.abs(b).max(), 1e-9)
    return np.exp(b).reshape(volume.array.shape).astype(np.float32)

"""Shared fixtures: small crops of the real sample images (fetched once into the user cache)."""
from __future__ import annotations

import signal

import numpy as np
import pytest
import SimpleITK as sitk
from ppir.app import data
from ppir.engine.image import Volume, read_image
from ppir.engine.pyramid import LevelSpec, level_image


def pytest_configure(config):
    """Tests stop parties with Ctrl-C (SIGINT). A shell that starts the suite in the background (`make test &`,
    nohup) ignores SIGINT, and every child would inherit that and never see it: catch it here instead, so the
    parties start with the default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def sample_dir():
    return data.fetch(log=lambda *_: None)


@pytest.fixture(scope="session")
def mni_4mm(sample_dir) -> Volume:
    """The MNI152 T1 template at 4 mm (49x58x47): a real 3D brain, small enough for fast tests."""
    return level_image(read_image(sample_dir / "mni152_t1_1mm.nii.gz"), LevelSpec(4, 2.0))


@pytest.fixture(scope="session")
def slice_2d(sample_dir) -> Volume:
    """The real 2D T1 slice at half resolution (128x128, 2 mm)."""
    return level_image(read_image(sample_dir / data.SLICE_2D), LevelSpec(2, 1.0))


def oblique(volume: Volume, spacing, angle_deg: float = 20.0) -> Volume:
    """The same voxels with anisotropic spacing and an oblique (rotated) direction matrix."""
    d = volume.dim
    tfm = sitk.Euler2DTransform() if d == 2 else sitk.Euler3DTransform()
    if d == 2:
        tfm.SetAngle(np.deg2rad(angle_deg))
    else:
        tfm.SetRotation(np.deg2rad(angle_deg), np.deg2rad(-angle_deg / 2), np.deg2rad(angle_deg / 3))
    direction = np.array(tfm.GetMatrix()).reshape(d, d)
    from ppir.engine.image import Grid
    grid = Grid(volume.array.shape, np.asarray(spacing, float), np.arange(1.0, d + 1) * 7.5, direction)
    return Volume(volume.array, grid)


def euler(angles_deg, translation, center) -> sitk.Euler3DTransform:
    """A 3D rigid transform from angles in degrees, a translation and a centre (mm)."""
    tfm = sitk.Euler3DTransform()
    tfm.SetCenter(center)
    tfm.SetRotation(*np.deg2rad(angles_deg))
    tfm.SetTranslation(translation)
    return tfm

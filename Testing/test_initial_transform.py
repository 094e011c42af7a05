"""An initial transform as the registration's starting point (``--initial-transform``, the moving party's own)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import euler
from ppir.app.job import register_files
from ppir.app.outputs import Outputs
from ppir.engine.driver import Diverged
from ppir.engine.image import Volume, write_volume
from ppir.engine.linear import InitialTransformError, LinearModel
from ppir.engine.settings import Settings


def _points(n: int = 30) -> np.ndarray:
    return np.random.default_rng(3).uniform(-120, 120, (n, 3))


def _same_mapping(a: sitk.Transform, b: sitk.Transform) -> float:
    return max(np.linalg.norm(np.subtract(a.TransformPoint(p.tolist()), b.TransformPoint(p.tolist())))
               for p in _points())



def test_linear_transforms_of_any_class_and_centre_become_the_models_parameters():
    affine = sitk.AffineTransform(3)
    affine.SetMatrix([1.1, 0.1, 0, -0.05, 0.95, 0.02, 0, 0.03, 1.0])
    affine.SetTranslation([3.0, -4.0, 5.0])
    affine.SetCenter([10.0, 20.0, -5.0])
    rotation = euler((20, -35, 50), (4.0, 1.0, -2.0), (-7.0, 3.0, 11.0))
    composite = sitk.CompositeTransform([rotation, affine])
    model = LinearModel("affine", np.array([1.0, 2.0, 3.0]))
    for tfm in (affine, rotation, composite):
        assert _same_mapping(model.to_sitk(model.from_sitk(tfm)), tfm) < 1e-9
    rigid = LinearModel("rigid", np.array([-30.0, 12.0, 40.0]))
    assert _same_mapping(rigid.to_sitk(rigid.from_sitk(rotation)), rotation) < 1e-9


def test_initial_transforms_a_model_cannot_start_from_are_refused_with_the_reason():
    scaling = sitk.ScaleTransform(3, (1.2, 1.0, 1.0))
    with pytest.raises(InitialTransformError, match="scales, shears or mirrors"):
        LinearModel("rigid", np.zeros(3)).from_sitk(scaling)
    LinearModel("affine", np.zeros(3)).from_sitk(scaling)   # an affine model starts from it
    bspline = sitk.BSplineTransform(3)
    bspline.SetTransformDomainOrigin((-100.0,) * 3)
    bspline.SetTransformDomainPhysicalDimensions((200.0,) * 3)
    bspline.SetTransformDomainMeshSize((4, 4, 4))
    bspline.SetParameters(np.random.default_rng(0).normal(0, 3, len(bspline.GetParameters())).tolist())
    with pytest.raises(InitialTransformError, match="not linear"):
        LinearModel("affine", np.zeros(3)).from_sitk(bspline)
    with pytest.raises(InitialTransformError, match="2D, the images are 3D"):
        LinearModel("affine", np.zeros(3)).from_sitk(sitk.Euler2DTransform())


@pytest.fixture(scope="module")
def rotated_pair(mni_4mm, tmp_path_factory):
    """The brain and a copy turned by 130 degrees about the head's long axis: too far for the default start."""
    folder = tmp_path_factory.mktemp("initial")
    image = mni_4mm.to_sitk()
    center = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    truth = euler((0, 0, 130), (6.0, -4.0, 3.0), center)
    moving = sitk.Resample(image, image, truth.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    write_volume(mni_4mm, str(folder / "fixed.nrrd"))
    write_volume(Volume.from_sitk(moving), str(folder / "moving.nrrd"))
    rough = euler((0, 0, 122), (2.0, 0.0, 0.0), center)   # a user's rough manual alignment
    sitk.WriteTransform(rough, str(folder / "rough.h5"))
    return {"folder": folder, "truth": truth, "rough": rough}


def _error_mm(found: sitk.Transform, truth: sitk.Transform, center) -> float:
    probes = np.asarray(center) + np.random.default_rng(4).uniform(-50, 50, (50, 3))
    return float(np.mean([np.linalg.norm(np.subtract(found.TransformPoint(p.tolist()), truth.TransformPoint(p.tolist())))
                          for p in probes]))


def test_a_rough_initial_transform_lets_a_registration_recover_what_the_default_start_cannot(rotated_pair):
    folder, truth = rotated_pair["folder"], rotated_pair["truth"]
    settings = Settings(transform="rigid", levels=[2, 1], sampling="urs", sample_fraction=0.5)
    try:
        register_files(folder / "fixed.nrrd", folder / "moving.nrrd", settings,
                       Outputs(transform=folder / "default.h5"))
        without = _error_mm(sitk.ReadTransform(str(folder / "default.h5")), truth, truth.GetCenter())
    except Diverged:
        without = float("inf")
    assert without > 5.0                                            # the default start does not get there
    register_files(folder / "fixed.nrrd", folder / "moving.nrrd", settings, Outputs(transform=folder / "from.h5"),
                   initial=rotated_pair["rough"])
    found = sitk.ReadTransform(str(folder / "from.h5"))
    assert _error_mm(rotated_pair["rough"], truth, truth.GetCenter()) > 5.0   # the start is rough
    assert _error_mm(found, truth, truth.GetCenter()) < 1.0                  # and the result is right


def test_the_command_line_takes_the_initial_transform_and_refuses_an_unusable_one(rotated_pair, tmp_path):
    folder = rotated_pair["folder"]
    sitk.WriteTransform(sitk.ScaleTransform(3, (1.3, 1.0, 1.0)), str(tmp_path / "scale.h5"))
    common = [sys.executable, "-m", "ppir", "register", "--fixed", str(folder / "fixed.nrrd"), "--moving",
              str(folder / "moving.nrrd"), "--transform", "rigid", "--levels", "2,1", "--sampling", "urs",
              "--sample-fraction", "0.5", "--output-transform"]
    refused = subprocess.run([*common, str(tmp_path / "t.h5"), "--initial-transform", str(tmp_path / "scale.h5")],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "scales, shears or mirrors" in refused.stderr
    assert not (tmp_path / "t.h5").exists()
    missing = subprocess.run([*common, str(tmp_path / "t.h5"), "--initial-transform", str(tmp_path / "none.h5")],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "initial transform" in missing.stderr and "no such file" in missing.stderr
    done = subprocess.run([*common, str(tmp_path / "t.h5"), "--initial-transform", str(folder / "rough.h5")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    truth = rotated_pair["truth"]
    assert _error_mm(sitk.ReadTransform(str(tmp_path / "t.h5")), truth, truth.GetCenter()) < 1.0

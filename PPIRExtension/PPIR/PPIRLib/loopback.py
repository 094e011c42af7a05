"""Both parties in one scene over loopback: the module's self-test, runnable in Slicer and under slicer-core.

A phantom volume (nested ellipsoids) is the fixed image; the moving image is the same phantom under a
known affine transform. Each party runs as its own ``ppir`` subprocess with a throwaway identity of its own; the
check is how far the imported transform node maps points from where the known transform does.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from . import mrml
from .jobs import Job, RunSettings, local_identities

TRUTH_MATRIX = np.array([[0.98, -0.12, 0.03], [0.11, 1.02, -0.04], [-0.02, 0.05, 0.97]])
TRUTH_TRANSLATION = np.array([4.0, -3.0, 2.5])
TOLERANCE_MM = 1.0   # a third of the phantom's 3 mm voxels, anywhere in the volume


def phantom_pair(folder: Path, size: int = 48, spacing: float = 3.0):
    """Write fixed.nrrd and moving.nrrd; moving(T(x)) = fixed(x) for the known fixed-to-moving T."""
    import SimpleITK as sitk
    grid = (np.indices((size,) * 3).T - (size - 1) / 2) * spacing   # grid[z, y, x] = (x, y, z) in mm
    phantom = np.zeros((size,) * 3)
    for centre, radii, value in (((0, 0, 0), (55, 45, 50), 1.0), ((12, -8, 5), (18, 14, 22), 2.5),
                                 ((-15, 10, -6), (10, 16, 9), 0.5), ((5, 20, -18), (8, 6, 10), 3.0)):
        inside = (((grid - centre) / radii) ** 2).sum(-1) <= 1
        phantom[inside] = value
    fixed = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(phantom.astype(np.float32)), 1.5)
    fixed.SetSpacing((spacing,) * 3)
    fixed.SetOrigin((-(size - 1) / 2 * spacing,) * 3)
    inverse = sitk.AffineTransform(3)
    inverse.SetMatrix(np.linalg.inv(TRUTH_MATRIX).ravel().tolist())
    inverse.SetTranslation((-np.linalg.inv(TRUTH_MATRIX) @ TRUTH_TRANSLATION).tolist())
    moving = sitk.Resample(fixed, fixed, inverse, sitk.sitkLinear, 0.0)
    sitk.WriteImage(fixed, str(folder / "fixed.nrrd"))
    sitk.WriteImage(moving, str(folder / "moving.nrrd"))


def transform_error_mm(transform_node, volume_node, stride: int = 4) -> float:
    """Largest distance (mm) between the node's mapping and the known transform over the volume's voxels."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4
    ijk_to_ras = vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    to_ras = np.array([[ijk_to_ras.GetElement(r, c) for c in range(4)] for r in range(4)])
    dims = volume_node.GetImageData().GetDimensions()
    ijk = np.stack(np.meshgrid(*[np.arange(0, n, stride) for n in dims], indexing="ij"), -1).reshape(-1, 3)
    ras = ijk @ to_ras[:3, :3].T + to_ras[:3, 3]
    flip = np.array([-1.0, -1.0, 1.0])   # RAS <-> LPS
    truth = ((ras * flip) @ TRUTH_MATRIX.T + TRUTH_TRANSLATION) * flip
    mapping = transform_node.GetTransformFromParent()
    found = np.array([mapping.TransformPoint(point.tolist()) for point in ras])
    return float(np.linalg.norm(found - truth, axis=1).max())


def run_loopback(scene, protocol: str = "fhe", folder: Path | None = None, python: str | None = None,
                 idle=None) -> dict:
    """Fixed (and, for MPC, dealer) and moving parties on 127.0.0.1; returns the error and both results.

    ``idle`` runs between polls (Slicer passes ``slicer.app.processEvents`` to stay responsive).
    """
    with tempfile.TemporaryDirectory(prefix="ppir-selftest-") as scratch:
        scratch = Path(folder or scratch)
        phantom_pair(scratch)
        fixed_node = mrml.import_volume(scene, scratch / "fixed.nrrd", "PPIR test fixed")
        moving_node = mrml.import_volume(scene, scratch / "moving.nrrd", "PPIR test moving")
        roles = ["moving", "fixed", "dealer"] if protocol == "mpc" else ["moving", "fixed"]
        identities = {role: str(path) for role, path in local_identities(scratch / "ids", roles, python).items()}
        common = {"protocol": protocol, "transform": "affine", "sampling": "urs", "sample_fraction": 0.2,
                  "levels": "2,1"}
        servers, addresses = {}, {}
        try:
            if protocol == "mpc":
                servers["dealer"] = Job(RunSettings(role="dealer", address="127.0.0.1:0",
                                                    certificates=identities["dealer"], **common), python=python)
                addresses["dealer"] = _listening_address(servers["dealer"])
            servers["fixed"] = Job(RunSettings(role="fixed", address="127.0.0.1:0", dealer=addresses.get("dealer", ""),
                                               certificates=identities["fixed"], **common), fixed_node=fixed_node,
                                   python=python)
            addresses["fixed"] = _listening_address(servers["fixed"])
            moving = Job(RunSettings(role="moving", address=addresses["fixed"], dealer=addresses.get("dealer", ""),
                                     certificates=identities["moving"], **common), moving_node=moving_node,
                         python=python)
            moving_result = moving.wait(timeout=600, idle=idle)
            fixed_result = servers["fixed"].wait(timeout=60, idle=idle)
            if "dealer" in servers:
                servers["dealer"].wait(timeout=60, idle=idle)
        finally:
            for job in servers.values():
                if job.process is not None:
                    job.process.cleanup()
        return {"error_mm": transform_error_mm(moving_result.transform_node, fixed_node),
                "moving": moving_result, "fixed": fixed_result, "fixed_node": fixed_node,
                "moving_node": moving_node}


def _listening_address(job: Job, timeout: float = 60) -> str:
    """Start a listening party and return the address it announces."""
    job.start()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for event in job.poll():
            if event.get("event") == "listening":
                return f"{event['host']}:{event['port']}"
        if not job.running:
            job.finish()
            raise RuntimeError(f"the {job.settings.role} party did not start")
        time.sleep(0.05)
    raise RuntimeError(f"the {job.settings.role} party is not listening after {timeout:.0f} s")

"""The module's output and initial-transform glue on Slicer's real MRML (slicer-core): overwrite or create the
output nodes, apply the result to the moving volume, start from a transform node or the volume's own."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "PPIRExtension" / "PPIR"))

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML) is a test requirement")
from conftest import euler  # noqa: E402
from ppir.engine.image import Volume, write_volume  # noqa: E402
from PPIRLib import jobs, mrml  # noqa: E402
from test_slicer_mrml import LPS, _scene  # noqa: E402
from vtkmodules.vtkCommonTransforms import vtkGeneralTransform  # noqa: E402

MOVING_ROLE, FIXED_ROLE = "spatialRegistrationMoving", "spatialRegistrationFixed"



def _transform_node(scene, transform: sitk.Transform, folder: Path, name: str):
    sitk.WriteTransform(transform, str(folder / f"{name}.h5"))
    return mrml.import_transform(scene, folder / f"{name}.h5", name, "affine")


def _mean_error_mm(node, truth: sitk.Transform, center) -> float:
    """Mean distance between the node's world-to-local mapping and ``truth`` (LPS), near ``center``."""
    probes = np.asarray(center) + np.random.default_rng(4).uniform(-50, 50, (50, 3))
    mapping = node.GetTransformFromParent()
    found = np.array([mapping.TransformPoint((p * LPS).tolist()) for p in probes]) * LPS
    expected = np.array([truth.TransformPoint(p.tolist()) for p in probes])
    return float(np.linalg.norm(found - expected, axis=1).mean())


def test_the_initial_transform_file_is_the_world_to_volume_mapping_through_every_parent(tmp_path):
    scene = _scene()
    outer = _transform_node(scene, euler((10, 0, 30), (5.0, 0.0, -3.0), (1.0, 2.0, 3.0)), tmp_path, "outer")
    inner = _transform_node(scene, euler((0, -15, 0), (0.0, 7.0, 2.0), (-4.0, 0.0, 9.0)), tmp_path, "inner")
    inner.SetAndObserveTransformNodeID(outer.GetID())
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "moving")
    volume.SetAndObserveTransformNodeID(inner.GetID())
    chosen = mrml.initial_transform(volume)
    assert chosen is inner
    before = scene.GetNumberOfNodes()
    written = sitk.ReadTransform(str(mrml.export_transform_from_world(chosen, tmp_path / "initial.h5")))
    assert scene.GetNumberOfNodes() == before   # no helper node left behind
    general = vtkGeneralTransform()
    inner.GetTransformFromWorld(general)   # Slicer's own composition of the chain
    for point in np.random.default_rng(5).uniform(-80, 80, (20, 3)):
        expected = np.array(general.TransformPoint((point * LPS).tolist())) * LPS
        assert np.allclose(written.TransformPoint(point.tolist()), expected, atol=1e-6)
    assert mrml.initial_transform(volume, use_moving_transform=False) is None
    assert mrml.initial_transform(volume, chosen=outer) is outer   # a chosen node comes first


def test_a_non_linear_initial_transform_is_refused_with_the_reason(tmp_path):
    bspline = sitk.BSplineTransform(3)
    bspline.SetTransformDomainOrigin((-100.0,) * 3)
    bspline.SetTransformDomainPhysicalDimensions((200.0,) * 3)
    bspline.SetTransformDomainMeshSize((4, 4, 4))
    bspline.SetParameters(np.random.default_rng(0).normal(0, 3, len(bspline.GetParameters())).tolist())
    sitk.WriteTransform(bspline, str(tmp_path / "b.h5"))
    scene = _scene()
    node = mrml.import_transform(scene, tmp_path / "b.h5", "warp", "bspline")
    with pytest.raises(ValueError, match="'warp' is not linear"):
        mrml.export_transform_from_world(node, tmp_path / "initial.h5")
    assert not (tmp_path / "initial.h5").exists()


def test_outputs_that_cannot_take_a_result_are_named(tmp_path):
    scene = _scene()
    moving = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "scan")
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "parent")
    child = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "child")
    child.SetAndObserveTransformNodeID(parent.GetID())
    assert "'scan' is an input volume" in mrml.output_problem([moving, None], output_volume=moving)
    assert "'child' is under another transform" in mrml.output_problem([moving], output_transform=child)
    assert mrml.output_problem([moving], parent, scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "out")) is None
    (tmp_path / "identity.pem").write_text("a certificate")
    with pytest.raises(ValueError, match="is an input volume"):
        jobs.Job(jobs.RunSettings(role="moving", certificates=str(tmp_path)), moving_node=moving, output_volume=moving)
    fixed_settings = jobs.RunSettings(role="fixed", certificates=str(tmp_path))
    with pytest.raises(ValueError, match="only the moving party starts from an initial transform"):
        jobs.Job(fixed_settings, fixed_node=moving, initial_transform=parent)


def test_a_result_overwrites_a_chosen_node_only_once_it_has_been_read(tmp_path):
    scene = _scene()
    mine = _transform_node(scene, euler((0, 0, 5), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0)), tmp_path, "mine")
    before = mine.GetTransformFromParent().TransformPoint((10.0, 20.0, 30.0))
    (tmp_path / "bad.h5").write_bytes(b"not a transform")
    count = scene.GetNumberOfNodes()
    with pytest.raises(OSError, match="could not read transform"):
        mrml.import_transform(scene, tmp_path / "bad.h5", "PPIR transform", "affine", mine)
    assert mine.GetTransformFromParent().TransformPoint((10.0, 20.0, 30.0)) == before
    assert scene.GetNumberOfNodes() == count


@pytest.fixture(scope="module")
def turned(mni_4mm, tmp_path_factory):
    """The brain and a copy turned by 130 degrees (too far for the default start), as MRML nodes, with the moving
    volume under a user's rough alignment and output nodes from an earlier run to overwrite."""
    folder = tmp_path_factory.mktemp("turned")
    image = mni_4mm.to_sitk()
    center = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    truth = euler((0, 0, 130), (6.0, -4.0, 3.0), center)
    write_volume(mni_4mm, str(folder / "fixed.nrrd"))
    moving_image = sitk.Resample(image, image, truth.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    write_volume(Volume.from_sitk(moving_image), str(folder / "moving.nrrd"))
    scene = _scene()
    nodes = {"fixed": mrml.import_volume(scene, folder / "fixed.nrrd", "fixed"),
             "moving": mrml.import_volume(scene, folder / "moving.nrrd", "moving"),
             "rough": _transform_node(scene, euler((0, 0, 122), (2.0, 0.0, 0.0), center), folder, "rough"),
             "old transform": scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "old transform"),
             "old volume": scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "old volume")}
    nodes["moving"].SetAndObserveTransformNodeID(nodes["rough"].GetID())
    return {"scene": scene, "nodes": nodes, "truth": truth, "center": center}


def test_a_local_run_starts_from_the_moving_volumes_transform_overwrites_the_outputs_and_applies_the_result(turned):
    scene, nodes, truth = turned["scene"], turned["nodes"], turned["truth"]
    assert _mean_error_mm(nodes["rough"], truth, turned["center"]) > 5.0   # a rough start
    settings = jobs.RunSettings(role="local", protocol="clear", transform="rigid", sampling="urs",
                                sample_fraction=0.5, levels="2,1")
    counts = {cls: scene.GetNodesByClass(cls).GetNumberOfItems()
              for cls in ("vtkMRMLTransformNode", "vtkMRMLScalarVolumeNode")}
    job = jobs.Job(settings, moving_node=nodes["moving"], fixed_node=nodes["fixed"],
                   initial_transform=mrml.initial_transform(nodes["moving"]), output_transform=nodes["old transform"],
                   output_volume=nodes["old volume"], apply_to_moving=True)
    result = job.wait(timeout=600)
    assert "--initial-transform" in job.process.args
    assert result.transform_node is nodes["old transform"] and result.warped_node is nodes["old volume"]
    assert {cls: scene.GetNodesByClass(cls).GetNumberOfItems() for cls in counts} == counts   # nothing new
    assert _mean_error_mm(result.transform_node, truth, turned["center"]) < 1.0
    assert nodes["moving"].GetParentTransformNode() is result.transform_node          # applied
    assert result.transform_node.GetNodeReference(MOVING_ROLE) is nodes["moving"]
    assert result.transform_node.GetNodeReference(FIXED_ROLE) is nodes["fixed"]
    warped, fixed = result.warped_node, nodes["fixed"]
    assert warped.GetImageData().GetDimensions() == fixed.GetImageData().GetDimensions()
    assert warped.GetDisplayNode() is not None and warped.GetName() == "old volume"


def test_without_output_nodes_a_run_creates_them_and_leaves_the_moving_volume_where_it_was(turned):
    nodes = turned["nodes"]
    nodes["moving"].SetAndObserveTransformNodeID(nodes["rough"].GetID())
    settings = jobs.RunSettings(role="local", protocol="clear", transform="rigid", sampling="urs",
                                sample_fraction=0.5, levels="2,1")
    job = jobs.Job(settings, moving_node=nodes["moving"], fixed_node=nodes["fixed"],
                   initial_transform=mrml.initial_transform(nodes["moving"]))
    result = job.wait(timeout=600)
    assert result.transform_node.GetName() == "PPIR transform" and result.warped_node.GetName() == "PPIR warped"
    assert result.transform_node.GetClassName() == "vtkMRMLLinearTransformNode"
    assert nodes["moving"].GetParentTransformNode() is nodes["rough"]
    assert result.transform_node.GetNodeReference(MOVING_ROLE) is nodes["moving"]

"""The Slicer module's MRML glue and jobs (PPIRExtension/PPIR/PPIRLib) on the real MRML library (slicer-core)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "PPIRExtension" / "PPIR"))

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML) is a test requirement")
from conftest import oblique  # noqa: E402
from ppir.app.synth import synthesize  # noqa: E402
from ppir.engine.disclosure import DisclosurePolicy  # noqa: E402
from ppir.engine.image import write_volume  # noqa: E402
from PPIRLib import jobs, loopback, mrml  # noqa: E402
from PPIRLib.events import describe, summary_lines  # noqa: E402
from vtkmodules.vtkCommonMath import vtkMatrix4x4  # noqa: E402

LPS = np.array([-1.0, -1.0, 1.0])


def _scene():
    scene = slicer.vtkMRMLScene()
    for name in ("Red", "Yellow", "Green"):
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        scene.AddNode(composite)
    return scene


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _itk_ijk_to_lps(image: sitk.Image) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    out[:3, 3] = image.GetOrigin()
    return out


def test_volume_round_trip_keeps_oblique_anisotropic_geometry(mni_4mm, tmp_path):
    source = oblique(mni_4mm, (3.0, 4.0, 5.5))
    write_volume(source, tmp_path / "source.nrrd")
    scene = _scene()
    node = mrml.import_volume(scene, tmp_path / "source.nrrd", "source")
    lps = _itk_ijk_to_lps(sitk.ReadImage(str(tmp_path / "source.nrrd")))
    assert np.allclose(_ijk_to_ras(node), np.diag([-1, -1, 1, 1]) @ lps, atol=1e-9)
    mrml.export_volume(node, tmp_path / "exported.nrrd")
    back = sitk.ReadImage(str(tmp_path / "exported.nrrd"))
    assert np.allclose(_itk_ijk_to_lps(back), lps, atol=1e-9)
    assert np.array_equal(sitk.GetArrayFromImage(back), source.array.astype(sitk.GetArrayFromImage(back).dtype))
    assert scene.GetNodesByClass("vtkMRMLStorageNode").GetNumberOfItems() == 0   # no temporary storage left


def test_export_refuses_an_empty_node(tmp_path):
    scene = _scene()
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="no image data"):
        mrml.export_volume(empty, tmp_path / "x.nrrd")
    assert not (tmp_path / "x.nrrd").exists()


@pytest.fixture(scope="module")
def registered(mni_4mm, tmp_path_factory):
    """A clear affine registration run through a local-test Job on MRML nodes."""
    folder = tmp_path_factory.mktemp("mrml")
    synthesize(mni_4mm, "affine", 3, folder)
    scene = _scene()
    fixed = mrml.import_volume(scene, folder / "fixed.nrrd", "fixed")
    moving = mrml.import_volume(scene, folder / "moving.nrrd", "moving")
    settings = jobs.RunSettings(role="local", protocol="clear", transform="affine", sampling="urs",
                                sample_fraction=0.3, levels="4,2,1")
    events = []
    job = jobs.Job(settings, moving_node=moving, fixed_node=fixed)
    result = job.wait(on_event=events.append, timeout=600)
    return {"scene": scene, "fixed": fixed, "result": result, "events": events, "workdir": job.process.workdir,
            "truth": sitk.ReadTransform(str(folder / "ground_truth.h5"))}


def test_local_job_imports_the_registration_as_a_linear_node_and_cleans_up(registered):
    result, fixed = registered["result"], registered["fixed"]
    assert result.transform_node.GetClassName() == "vtkMRMLLinearTransformNode"
    assert result.summary["report"]["protocol"] == "clear" and result.summary["iterations"] >= 2
    assert [e["event"] for e in registered["events"]].count("iteration") >= 2
    assert registered["events"][-1]["event"] == "done"
    assert not registered["workdir"].exists()
    fractions = [describe(e)[0] for e in registered["events"] if e["event"] == "iteration"]
    assert all(0 < f <= 1 for f in fractions) and fractions[-1] > 0.5
    assert f"Iterations: {result.summary['iterations']}" in summary_lines(result.summary)
    # level 4 of the 4 mm brain would draw 605 samples: the default policy's minimum leaves it out, and the log says so
    assert any(line.startswith("Planned within the fixed party's policy: level 4 left out: its sample set would hold")
               for line in summary_lines(result.summary))
    assert [level["factor"] for level in result.summary["report"]["levels"]] == [2, 1]
    ras = _ijk_to_ras(fixed)
    ijk = np.random.default_rng(0).uniform(8, 40, (200, 3))
    points_lps = (ijk @ ras[:3, :3].T + ras[:3, 3]) * LPS
    truth = np.array([registered["truth"].TransformPoint(p.tolist()) for p in points_lps])
    mapping = result.transform_node.GetTransformFromParent()
    found = np.array([mapping.TransformPoint((p * LPS).tolist()) for p in points_lps]) * LPS
    assert np.linalg.norm(truth - points_lps, axis=1).mean() > 3.0     # the pair is really misaligned
    assert np.linalg.norm(found - truth, axis=1).mean() < 0.5          # and the node undoes it


def test_transform_node_matches_the_itk_file_exactly(mni_4mm, tmp_path):
    """Linear and composite B-spline files: Slicer's 'from parent' mapping is ITK's, in RAS."""
    synthesize(mni_4mm, "bspline", 5, tmp_path)
    scene = _scene()
    fixed = mrml.import_volume(scene, tmp_path / "fixed.nrrd", "fixed")
    for path, model, node_class in ((tmp_path / "ground_truth.h5", "bspline", "vtkMRMLTransformNode"),):
        node = mrml.import_transform(scene, path, "truth", model)
        assert node.GetClassName() == node_class
        itk = sitk.ReadTransform(str(path))
        ras = _ijk_to_ras(fixed)
        ijk = np.random.default_rng(1).uniform(0, 40, (100, 3))
        points_lps = (ijk @ ras[:3, :3].T + ras[:3, 3]) * LPS
        expected = np.array([itk.TransformPoint(p.tolist()) for p in points_lps])
        mapped = np.array([node.GetTransformFromParent().TransformPoint((p * LPS).tolist()) for p in points_lps]) * LPS
        assert np.abs(mapped - expected).max() < 1e-6


def test_linear_file_becomes_a_linear_node(tmp_path):
    affine = sitk.AffineTransform(3)
    affine.SetMatrix([1.1, 0.1, 0, -0.05, 0.95, 0.02, 0, 0.03, 1.0])
    affine.SetTranslation([3.0, -4.0, 5.0])
    affine.SetCenter([10.0, 20.0, -5.0])
    sitk.WriteTransform(affine, str(tmp_path / "a.h5"))
    node = mrml.import_transform(_scene(), tmp_path / "a.h5", "a", "affine")
    assert node.GetClassName() == "vtkMRMLLinearTransformNode"
    for point in np.random.default_rng(2).uniform(-80, 80, (20, 3)):
        mapped = np.array(node.GetTransformFromParent().TransformPoint((point * LPS).tolist())) * LPS
        assert np.allclose(mapped, affine.TransformPoint(point.tolist()), atol=1e-9)


def test_bad_transform_file_gives_a_clear_error_and_no_node(tmp_path):
    (tmp_path / "bad.h5").write_bytes(b"not a transform")
    scene = _scene()
    before = scene.GetNumberOfNodes()
    with pytest.raises(OSError, match="could not read transform"):
        mrml.import_transform(scene, tmp_path / "bad.h5", "bad")
    assert scene.GetNumberOfNodes() == before


def test_warped_node_has_the_fixed_geometry_and_is_shown_over_it(registered):
    fixed, warped, scene = registered["fixed"], registered["result"].warped_node, registered["scene"]
    assert np.allclose(_ijk_to_ras(warped), _ijk_to_ras(fixed))
    assert warped.GetImageData().GetDimensions() == fixed.GetImageData().GetDimensions()
    mrml.show_overlay(scene, fixed, warped, 0.5)
    mrml.set_fade(scene, 0.8)
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(i)
        assert composite.GetBackgroundVolumeID() == fixed.GetID()
        assert composite.GetForegroundVolumeID() == warped.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.8)


def test_settings_refuse_what_cannot_work(tmp_path):
    (tmp_path / "identity.pem").write_text("a certificate")
    good = dict(certificates=str(tmp_path))
    for role in ("moving", "fixed"):
        with pytest.raises(ValueError, match="dealer's address"):
            jobs.RunSettings(role=role, protocol="mpc", **good).check()
    jobs.RunSettings(role="moving", protocol="fhe", transform="bspline", **good).check()   # FHE does B-spline too
    with pytest.raises(ValueError, match="HOST:PORT"):
        jobs.RunSettings(role="fixed", address="hospital-b", **good).check()
    with pytest.raises(ValueError, match="local test role"):
        jobs.RunSettings(role="moving", protocol="clear", **good).check()
    with pytest.raises(ValueError, match="identity folder"):
        jobs.RunSettings(role="moving", certificates=str(tmp_path / "none")).check()
    with pytest.raises(ValueError, match="select the moving volume"):
        jobs.Job(jobs.RunSettings(role="moving", **good))


@pytest.mark.parametrize("protocol", ["fhe", "mpc"])
def test_loopback_parties_align_the_phantom_and_share_the_transform(protocol):
    """What the module's self-test (PPIRTest) runs inside Slicer, here on slicer-core's MRML."""
    scene = _scene()
    outcome = loopback.run_loopback(scene, protocol)
    assert outcome["error_mm"] < loopback.TOLERANCE_MM
    moving, fixed = outcome["moving"], outcome["fixed"]
    assert moving.summary["report"]["protocol"] == protocol
    assert moving.summary["parties"]["moving"]["bytes_sent"] > 0
    assert fixed.summary["shared"] == "transform" and fixed.summary["bytes_received"] > 0
    assert fixed.transform_node is not None and fixed.warped_node is None
    assert "Shared by the moving party: transform" in summary_lines(fixed.summary)
    assert any(line.startswith("Level ") and "sampled voxels" in line for line in summary_lines(fixed.summary))
    assert any(line.startswith("Privacy loss:") for line in summary_lines(moving.summary))
    assert any(line.startswith("Fixed party: sent") for line in summary_lines(moving.summary))
    assert loopback.transform_error_mm(fixed.transform_node, outcome["fixed_node"]) == pytest.approx(
        outcome["error_mm"], abs=1e-9)


def test_a_party_that_gets_no_result_in_time_is_stopped(tmp_path):
    scene = _scene()
    loopback.phantom_pair(tmp_path)
    fixed = mrml.import_volume(scene, tmp_path / "fixed.nrrd", "fixed")
    ids = jobs.local_identities(tmp_path / "ids", ["moving", "fixed"])
    job = jobs.Job(jobs.RunSettings(role="fixed", address="127.0.0.1:0", certificates=str(ids["fixed"])),
                   fixed_node=fixed)
    with pytest.raises(RuntimeError, match="fixed party had no result after 3 s"):
        job.wait(timeout=3)
    assert not job.running and not job.process.workdir.exists()


def test_failed_run_shows_the_commands_message_and_leaves_no_node(tmp_path):
    scene = _scene()
    loopback.phantom_pair(tmp_path)
    moving = mrml.import_volume(scene, tmp_path / "moving.nrrd", "moving")
    ids = jobs.local_identities(tmp_path / "ids", ["moving", "fixed"])
    before = scene.GetNumberOfNodes()
    job = jobs.Job(jobs.RunSettings(role="moving", address="127.0.0.1:1", certificates=str(ids["moving"])),
                   moving_node=moving)
    with pytest.raises(RuntimeError) as failure:
        job.wait(timeout=120)
    assert "127.0.0.1:1" in str(failure.value) and "Traceback" not in str(failure.value)
    assert scene.GetNumberOfNodes() == before
    assert not job.process.workdir.exists()


@pytest.mark.parametrize("keep", [False, True])
def test_temporary_files_go_under_the_given_folder_and_are_kept_on_request(tmp_path, keep):
    scene = _scene()
    loopback.phantom_pair(tmp_path, size=16)
    moving = mrml.import_volume(scene, tmp_path / "moving.nrrd", "moving")
    ids = jobs.local_identities(tmp_path / "ids", ["moving", "fixed"])
    (tmp_path / "slicer-temp").mkdir()
    job = jobs.Job(jobs.RunSettings(role="moving", address="127.0.0.1:1", certificates=str(ids["moving"])),
                   moving_node=moving, temp_root=tmp_path / "slicer-temp", keep_files=keep)
    with pytest.raises(RuntimeError):
        job.wait(timeout=120)
    assert job.process.workdir.parent == tmp_path / "slicer-temp"
    assert job.process.workdir.exists() is keep
    if keep:
        assert (job.process.workdir / "moving.nrrd").is_file()   # the volume that would have been used


def test_identity_buttons_each_site_makes_its_own_key_and_trusts_by_fingerprint(tmp_path):
    """The module's identity flow (what its three buttons call): no site ever holds another's key."""
    text = jobs.create_identity(tmp_path / "a", "Radiology, Hospital A")
    fingerprint = text.split("SHA-256 ")[1].split(")")[0]
    jobs.create_identity(tmp_path / "b", "Radiology, Hospital B")
    assert fingerprint in jobs.show_identity(tmp_path / "a")
    with pytest.raises(RuntimeError, match="do not trust it"):
        jobs.trust_certificate(tmp_path / "b", tmp_path / "a/identity.pem", "moving", "AB" * 32)
    jobs.trust_certificate(tmp_path / "b", tmp_path / "a/identity.pem", "moving", fingerprint)
    assert "trusts as moving" in jobs.show_identity(tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").glob("*.key")) == ["identity.key"]


def _label_map(scene, path, name):
    """A file read into a vtkMRMLLabelMapVolumeNode (what a segmentation exported to a label map gives)."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    scene.RemoveNode(storage)
    return node


def test_masks_are_exported_with_their_volumes_geometry(mni_4mm, tmp_path):
    """A label map on another grid (coarser, shifted, turned) is written on the volume's own grid."""
    from ppir.engine.image import read_image
    from ppir.engine.masks import read_mask
    source = oblique(mni_4mm, (3.0, 4.0, 5.5))
    write_volume(source, tmp_path / "volume.nrrd")
    scene = _scene()
    volume = mrml.import_volume(scene, tmp_path / "volume.nrrd", "volume")
    labels = np.zeros((30, 36, 28), np.uint8)          # 4.5 mm voxels, its own origin and direction
    labels[6:22, 8:30, 5:20] = 3
    label_image = sitk.GetImageFromArray(labels)
    label_image.SetSpacing((4.5, 4.5, 4.5))
    label_image.SetOrigin((-20.0, -35.0, -10.0))
    turn = sitk.Euler3DTransform()
    turn.SetRotation(0.1, -0.05, 0.2)
    label_image.SetDirection(turn.GetMatrix())
    sitk.WriteImage(label_image, str(tmp_path / "labels.nrrd"))
    mask = _label_map(scene, tmp_path / "labels.nrrd", "labels")
    mrml.export_volume(volume, tmp_path / "exported-volume.nrrd")
    mrml.export_mask(mask, volume, tmp_path / "exported-mask.nrrd")
    exported_volume = sitk.ReadImage(str(tmp_path / "exported-volume.nrrd"))
    exported_mask = sitk.ReadImage(str(tmp_path / "exported-mask.nrrd"))
    assert exported_mask.GetSize() == exported_volume.GetSize()
    assert np.allclose(_itk_ijk_to_lps(exported_mask), _itk_ijk_to_lps(exported_volume), atol=1e-9)
    # ppir accepts it as the volume's mask, and it holds the label map's region, voxel by voxel
    inside = read_mask(tmp_path / "exported-mask.nrrd", read_image(tmp_path / "exported-volume.nrrd"), "mask")
    expected = sitk.GetArrayFromImage(sitk.Resample(label_image, exported_volume, sitk.Transform(),
                                                    sitk.sitkNearestNeighbor, 0)) != 0
    assert expected.sum() > 1000
    assert (inside.array.astype(bool) != expected).mean() < 1e-3     # only ties of nearest-voxel rounding
    assert scene.GetNodesByClass("vtkMRMLStorageNode").GetNumberOfItems() == 0
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 2   # volume and label map


def test_a_mask_on_the_volumes_own_grid_is_exported_voxel_for_voxel(mni_4mm, tmp_path):
    source = oblique(mni_4mm, (3.0, 4.0, 5.5))
    write_volume(source, tmp_path / "volume.nrrd")
    write_volume(source.with_array((source.array > 60).astype(np.uint8) * 7), tmp_path / "labels.nrrd")
    scene = _scene()
    volume = mrml.import_volume(scene, tmp_path / "volume.nrrd", "volume")
    mask = _label_map(scene, tmp_path / "labels.nrrd", "labels")
    mrml.export_mask(mask, volume, tmp_path / "mask.nrrd")
    exported = sitk.ReadImage(str(tmp_path / "mask.nrrd"))
    assert np.array_equal(sitk.GetArrayFromImage(exported), (source.array > 60).astype(np.uint8))
    assert np.allclose(_itk_ijk_to_lps(exported), _itk_ijk_to_lps(sitk.ReadImage(str(tmp_path / "volume.nrrd"))),
                       atol=1e-9)


def test_masks_that_cannot_be_used_are_refused_with_the_reason(mni_4mm, tmp_path):
    write_volume(mni_4mm, tmp_path / "volume.nrrd")
    far = sitk.GetImageFromArray(np.ones((8, 8, 8), np.uint8))
    far.SetOrigin((5000.0, 0.0, 0.0))
    sitk.WriteImage(far, str(tmp_path / "far.nrrd"))
    scene = _scene()
    volume = mrml.import_volume(scene, tmp_path / "volume.nrrd", "volume")
    far_mask = _label_map(scene, tmp_path / "far.nrrd", "far")
    with pytest.raises(ValueError, match="the mask 'far' has no non-zero voxel inside the volume 'volume'"):
        mrml.export_mask(far_mask, volume, tmp_path / "x.nrrd")
    moved = _label_map(scene, tmp_path / "volume.nrrd", "moved")
    moved.SetAndObserveTransformNodeID(scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T").GetID())
    with pytest.raises(ValueError, match="under different transforms"):
        mrml.export_mask(moved, volume, tmp_path / "x.nrrd")
    assert not (tmp_path / "x.nrrd").exists()
    (tmp_path / "identity.pem").write_text("a certificate")
    with pytest.raises(ValueError, match="a moving mask belongs to the moving party"):
        jobs.Job(jobs.RunSettings(role="fixed", certificates=str(tmp_path)), fixed_node=volume, moving_mask=moved)
    with pytest.raises(ValueError, match="is an input volume"):
        jobs.Job(jobs.RunSettings(role="local", protocol="clear"), moving_node=volume, fixed_node=volume,
                 fixed_mask=volume)


def test_a_local_run_registers_within_both_masks(mni_4mm, tmp_path):
    """Each mask node goes to its party's command line as a file on its volume's grid; the report says so."""
    synthesize(mni_4mm, "affine", 3, tmp_path)
    scene = _scene()
    fixed = mrml.import_volume(scene, tmp_path / "fixed.nrrd", "fixed")
    moving = mrml.import_volume(scene, tmp_path / "moving.nrrd", "moving")
    for name in ("fixed", "moving"):
        image = sitk.ReadImage(str(tmp_path / f"{name}.nrrd"))
        sitk.WriteImage(sitk.Cast(image > 20, sitk.sitkUInt8), str(tmp_path / f"{name}-labels.nrrd"))
    DisclosurePolicy(allow_moving_mask=True).write(tmp_path / "policy.toml")    # the fixed party's consent
    settings = jobs.RunSettings(role="local", protocol="clear", transform="affine", sampling="urs",
                                sample_fraction=0.3, levels="1", disclosure_policy=str(tmp_path / "policy.toml"))
    job = jobs.Job(settings, moving_node=moving, fixed_node=fixed,
                   moving_mask=_label_map(scene, tmp_path / "moving-labels.nrrd", "moving labels"),
                   fixed_mask=_label_map(scene, tmp_path / "fixed-labels.nrrd", "fixed labels"), keep_files=True)
    result = job.wait(timeout=300)
    report = result.summary["report"]
    assert report["settings"]["moving_mask"] is True
    assert report["inputs"]["fixed_mask"].endswith("fixed-mask.nrrd")
    assert all(level["mask_membership_shown"] > level["unknowns"] for level in report["disclosure"]["levels"])
    assert any("; fixed mask shown at" in line for line in summary_lines(result.summary))
    args = job.process.args
    assert args[args.index("--moving-mask") + 1] == str(job.process.workdir / "moving-mask.nrrd")
    assert args[args.index("--fixed-mask") + 1] == str(job.process.workdir / "fixed-mask.nrrd")
    truth = sitk.ReadTransform(str(tmp_path / "ground_truth.h5"))
    from ppir.engine.evaluate import tre
    from ppir.engine.image import read_image
    found = sitk.ReadTransform(str(job.process.workdir / "transform.h5"))
    assert tre(read_image(tmp_path / "fixed.nrrd"), found, truth)["mean"] < 0.3
    job.process.cleanup()

"""Reading and writing images with their geometry, and the bad inputs PPIR must refuse clearly."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique
from ppir.common.errors import PPIRError
from ppir.common.files import OutputBatch
from ppir.engine.image import read_image, write_image


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, mni_4mm, suffix):
    volume = oblique(mni_4mm, [1.5, 2.0, 3.5])
    path = tmp_path / f"v{suffix}"
    write_image(volume, path)
    back = read_image(path)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.grid.spacing, volume.grid.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.grid.origin, volume.grid.origin, atol=1e-5)
    np.testing.assert_allclose(back.grid.direction, volume.grid.direction, atol=1e-6)


def test_2d_round_trip(tmp_path, slice_2d):
    volume = oblique(slice_2d, [0.8, 1.7])
    write_image(volume, tmp_path / "s.nrrd")
    back = read_image(tmp_path / "s.nrrd")
    assert back.dim == 2
    np.testing.assert_allclose(back.grid.points(np.array([0, 77])), volume.grid.points(np.array([0, 77])), atol=1e-5)


def test_dicom_series_folder(tmp_path, mni_4mm):
    image = sitk.Cast(sitk.RescaleIntensity(mni_4mm.to_sitk(), 0, 1000), sitk.sitkInt16)
    folder = tmp_path / "dicom"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        sl = image[:, :, z]
        origin = image.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {"0008|0060": "MR", "0020|0032": "\\".join(f"{v:f}" for v in origin),
                "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0013": str(z),
                "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": "1.2.826.0.1.3680043.2.1125.2",
                "0008|0018": f"1.2.826.0.1.3680043.2.1125.3.{z}", "0018|0050": f"{image.GetSpacing()[2]:f}"}
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{z:03d}.dcm"))
        writer.Execute(sl)
    volume = read_image(folder)
    assert volume.grid.size == image.GetSize()
    np.testing.assert_allclose(volume.grid.spacing, image.GetSpacing(), rtol=1e-4)
    np.testing.assert_allclose(volume.array, sitk.GetArrayFromImage(image), atol=0.5)


def test_point_index_round_trip(mni_4mm):
    grid = oblique(mni_4mm, [1.5, 2.0, 3.5]).grid
    ref = grid.reference_image()
    index = np.array([3.25, 10.5, 7.0])
    point = grid.index_to_point(index)
    np.testing.assert_allclose(point, ref.TransformContinuousIndexToPhysicalPoint(index.tolist()), atol=1e-9)
    np.testing.assert_allclose(grid.point_to_index(point), index, atol=1e-9)


def _write_array(tmp_path, name, array, **geometry):
    image = sitk.GetImageFromArray(array)
    for key, value in geometry.items():
        getattr(image, f"Set{key}")(value)
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("text", "not a readable image"),
    ("nan", "NaN"),
    ("constant", "constant"),
    ("vector", "components"),
    ("4d", "4D"),
    ("oblique_bad", "orthonormal"),
    ("zero_spacing", "spacing"),
])
def test_bad_inputs_name_the_file_and_problem(tmp_path, case, message):
    rng = np.random.default_rng(0)
    if case == "missing":
        path = tmp_path / "nothing.nrrd"
    elif case == "text":
        path = tmp_path / "notes.nrrd"
        path.write_text("this is not an image\n")
    elif case == "nan":
        array = rng.random((8, 8, 8)).astype(np.float32)
        array[2, 3, 4] = np.nan
        path = _write_array(tmp_path, "nan.nrrd", array)
    elif case == "constant":
        path = _write_array(tmp_path, "flat.nrrd", np.full((8, 8, 8), 3.0, np.float32))
    elif case == "vector":
        image = sitk.GetImageFromArray(rng.random((8, 8, 8, 3)).astype(np.float32), isVector=True)
        path = tmp_path / "vec.nrrd"
        sitk.WriteImage(image, str(path))
    elif case == "4d":
        frames = [sitk.GetImageFromArray(rng.random((8, 8, 8)).astype(np.float32)) for _ in range(3)]
        path = tmp_path / "t.nii.gz"
        sitk.WriteImage(sitk.JoinSeries(frames), str(path))
    elif case == "oblique_bad":
        path = _write_nrrd_header(tmp_path, "bad.nhdr", directions="(1,0,0) (0.5,1,0) (0,0,1)", spacing="1 1 1")
    else:
        path = _write_nrrd_header(tmp_path, "zero.nhdr", directions="(0,0,0) (0,1,0) (0,0,1)", spacing=None)
    with pytest.raises(PPIRError) as err:
        read_image(path, "moving image")
    text = str(err.value)
    assert "moving image" in text and str(path) in text
    assert message.lower() in text.lower()


def _write_nrrd_header(tmp_path, name, directions, spacing):
    raw = tmp_path / (name + ".raw")
    np.random.default_rng(1).random((8, 8, 8)).astype("<f4").tofile(raw)
    lines = ["NRRD0004", "type: float", "dimension: 3", "sizes: 8 8 8", "endian: little", "encoding: raw",
             "space: left-posterior-superior", f"space directions: {directions}", "space origin: (0,0,0)",
             f"data file: {raw.name}"]
    if spacing:
        lines.append(f"# spacing {spacing}")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n\n")
    return path


def test_output_batch_writes_all_or_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with OutputBatch() as batch:
            batch.add(tmp_path / "a.txt", lambda p: open(p, "w").write("a"))
            batch.add(tmp_path / "b.txt", lambda p: (_ for _ in ()).throw(RuntimeError("disk full")))
            batch.commit()
    assert list(tmp_path.iterdir()) == []
    with OutputBatch() as batch:
        batch.add(tmp_path / "a.txt", lambda p: open(p, "w").write("a"))
        batch.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_missing_output_folder_is_refused(tmp_path, mni_4mm):
    with pytest.raises(PPIRError, match="does not exist"):
        write_image(mni_4mm, tmp_path / "no" / "where.nrrd")

"""Sample data fetching, synthetic truth, and the sampling strategies."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from ppir.app import data
from ppir.app.synth import synthesize
from ppir.engine.evaluate import tre
from ppir.engine.image import read_image
from ppir.engine.sampling import draw_gradient_weighted, draw_uniform


def test_fetch_is_a_checked_no_op_when_present(sample_dir):
    messages = []
    assert data.fetch(sample_dir, log=messages.append) == sample_dir
    assert messages == []
    t1 = read_image(sample_dir / "mni152_t1_1mm.nii.gz")
    assert t1.grid.size == (197, 233, 189)
    assert read_image(sample_dir / data.SLICE_2D).dim == 2


def test_fetch_replaces_a_corrupted_file(tmp_path, sample_dir):
    for sample in data.SAMPLES:
        (tmp_path / sample.name).write_bytes((sample_dir / sample.name).read_bytes())
    (tmp_path / "t1_coronal_slice.npy").write_bytes(b"corrupted")
    messages = []
    data.fetch(tmp_path, log=messages.append)
    assert any("dipy" in m for m in messages)
    assert np.load(tmp_path / "t1_coronal_slice.npy").ndim == 2


def test_synthetic_moving_image_matches_truth(tmp_path, mni_4mm):
    """M(T(x)) = F(x): resampling the moving image through the truth gives back the fixed image."""
    synthesize(mni_4mm, "bspline", 5, tmp_path)
    truth = sitk.ReadTransform(str(tmp_path / "ground_truth.h5"))
    moving = sitk.ReadImage(str(tmp_path / "moving.nrrd"))
    back = sitk.GetArrayFromImage(sitk.Resample(moving, mni_4mm.to_sitk(), truth, sitk.sitkLinear, 0.0))
    inner = (slice(6, -6),) * 3
    error = np.abs(back[inner] - mni_4mm.array[inner]).mean()
    assert error < 0.05 * np.abs(mni_4mm.array[inner]).mean()
    field = tre(mni_4mm, sitk.Transform(3, sitk.sitkIdentity), truth)
    assert 1.0 < field["mean"] and field["max"] < 40.0


def test_uniform_sampling_is_seeded_and_unique():
    a = draw_uniform(10_000, 0.1, np.random.default_rng(1))
    b = draw_uniform(10_000, 0.1, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert len(a) == 1000 and len(np.unique(a)) == 1000 and np.all(np.diff(a) > 0)


def test_gradient_weighted_sampling_prefers_edges():
    magnitude = np.zeros(10_000)
    magnitude[:1000] = 10.0
    magnitude[1000:] = 0.1
    chosen = draw_gradient_weighted(magnitude, 0.05, np.random.default_rng(2))
    assert len(chosen) == 500
    assert np.mean(chosen < 1000) > 0.8

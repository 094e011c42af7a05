"""Mattes mutual information: its gradient against finite differences, its invariance, what it reveals, its
registrations across contrasts, and the private protocols' refusal."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from ppir.app.synth import synthesize
from ppir.common.errors import PPIRError
from ppir.engine import mutual_information as mattes
from ppir.engine.disclosure import DisclosureLedger, DisclosurePolicy
from ppir.engine.driver import Level, register
from ppir.engine.evaluate import tre
from ppir.engine.image import read_image
from ppir.engine.joint import ClearBackend
from ppir.engine.linear import LinearModel
from ppir.engine.moving_image import MovingLevel
from ppir.engine.pyramid import LevelSpec
from ppir.engine.settings import Settings
from ppir.protocols import registry
from test_transforms import gradient_check_point


def _smooth(volume, sigma=4.0):
    return volume.with_array(sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(volume.to_sitk(), sigma)))


def _level(fixed, moving, model, policy=None, seed=None, samples=3000):
    backend = ClearBackend(fixed, policy, seed)
    backend.agree(Settings(metric="mi"))
    grid = backend.start_level(LevelSpec(1, 0.0))
    level = Level(model, MovingLevel(moving), grid, backend, None, "mi")
    level.use_samples(np.sort(np.random.default_rng(0).choice(grid.n_voxels, samples, replace=False)))
    return level


def _inverted(volume):
    """Another contrast: the square root of the smoothed image, inverted (dark where the moving image is bright)."""
    return volume.with_array(50.0 - 3.0 * np.sqrt(np.clip(volume.array, 0, None)))


@pytest.mark.parametrize("kind", ["rigid", "affine", "bspline"])
def test_mi_gradient_matches_finite_differences(slice_2d, kind):
    """d H(J|I)/dp: twice the metric's half gradient equals central differences of the objective."""
    moving = _smooth(slice_2d)
    model, p, steps = gradient_check_point(slice_2d, kind, 2e-2, (1e-4, 1e-2))
    level = _level(_inverted(moving), moving, model, samples=12000 if kind == "bspline" else 3000)
    state = level.evaluate(p)
    assert 0.3 < state.value < state.reference and state.objective == pytest.approx(state.reference - state.value)
    check = list(range(len(p)) if kind != "bspline" else np.argsort(-np.abs(state.gradient))[:12])
    numeric = np.array([(level.evaluate(p + step).objective - level.evaluate(p - step).objective) / (2 * step[k])
                        for k in check for step in [np.eye(len(p))[k] * steps[k]]])
    analytic = 2 * state.gradient[check]
    # linear interpolation makes the gradient image an approximation of the true derivative (a systematic
    # 8-9 % on the B-spline coefficients of this slice, whatever the finite-difference step)
    assert np.abs(analytic - numeric).max() < (0.12 if kind == "bspline" else 0.06) * np.abs(numeric).max()
    assert float(analytic @ numeric) > 0.99 * np.linalg.norm(analytic) * np.linalg.norm(numeric)


def test_mi_is_invariant_to_gain_offset_and_inversion_of_the_fixed_image(slice_2d):
    """The fixed bins span J's range: a gain, an offset or an inversion only relabels them."""
    moving = _smooth(slice_2d)
    model = LinearModel("affine", slice_2d.grid.center())
    p = model.identity(np.array([1.5, -2.0]))
    base = _level(slice_2d, moving, model).evaluate(p)
    for gain, offset in ((2.5, 40.0), (-1.0, 300.0)):
        mapped = _level(slice_2d.with_array(gain * slice_2d.array + offset), moving, model).evaluate(p)
        assert mapped.value == pytest.approx(base.value, rel=1e-9)
        np.testing.assert_allclose(mapped.gradient, base.gradient, rtol=1e-5, atol=1e-6 * np.abs(base.gradient).max())


def test_parzen_weights_and_histogram():
    """Four weights per sample summing to one, derivatives summing to zero, the histogram summing to N."""
    values = np.random.default_rng(1).uniform(-5, 105, 1000)
    weights, derivative, delta = mattes.parzen(values, 0.0, 100.0)
    assert weights.first.min() >= 0 and weights.first.max() + 3 < mattes.BINS
    np.testing.assert_allclose(weights.values.sum(axis=1), 1.0)
    np.testing.assert_allclose(derivative.sum(axis=1), 0.0, atol=1e-12)
    assert np.all(derivative[(values < 0) | (values > 100)] == 0)
    dense = weights.dense()
    bins = mattes.fixed_bins(values, 0.0, 100.0)
    h = mattes.histogram(bins, weights)
    np.testing.assert_allclose(h, np.eye(mattes.BINS)[bins].T @ dense)
    assert h.sum() == pytest.approx(1000)
    # derivative of the weights with respect to the intensity, against finite differences
    shifted, _, _ = mattes.parzen(values + 1e-4, 0.0, 100.0)
    inside = (values > 1) & (values < 99)
    numeric = (shifted.dense() - dense)[inside] / 1e-4 * delta
    analytic = np.zeros_like(dense)
    np.put_along_axis(analytic, weights.first[:, None] + np.arange(4), derivative, axis=1)
    np.testing.assert_allclose(numeric, analytic[inside], atol=1e-3)


def test_mi_products_are_counted_noised_and_ordered(slice_2d):
    """One MI evaluation is one product: bins^2 + the gradient's outputs in the ledger; noised with noise."""
    policy = DisclosurePolicy(noise_multiplier=1.0, allow_mi=True)
    model = LinearModel("affine", slice_2d.grid.center())
    ledger = DisclosureLedger(policy, "full", "mi")
    ledger.start_level(1, slice_2d.grid.shape)
    ledger.sample_set(None, model.basis(slice_2d.grid.points()[:10]), 2)
    ledger.product()
    assert ledger.levels[1].revealed == mattes.BINS ** 2 + 3 * 2 and ledger.releases == 2     # histogram, gradient
    p = model.identity(np.array([1.0, 1.0]))
    moving = _smooth(slice_2d)
    values = [_level(slice_2d, moving, model, policy, seed).evaluate(p) for seed in (1, 2)]
    exact = _level(slice_2d, moving, model).evaluate(p)
    assert values[0].value != values[1].value and all(abs(v.value - exact.value) < 0.05 for v in values)
    backend = _level(slice_2d, moving, model).backend
    with pytest.raises(PPIRError, match="without its histogram"):
        backend.binned_product(np.zeros((3000, 2)), np.zeros((3000, mattes.BINS)))


def test_every_protocol_computes_mi():
    """MI's products are in every protocol (FHE's own limits: tests in test_private_mi.py)."""
    for protocol in registry.names():
        assert "mi" in registry.get(protocol).metrics
        registry.preflight(protocol, Settings(metric="mi", max_iterations=16))


def test_mi_registers_other_contrasts(tmp_path, mni_4mm, sample_dir):
    """T2-like and PET-like against the T1, 3D 4 mm, affine: MI recovers the affine (SSD diverges on PET)."""
    for contrast in ("t2", "pet"):
        synthesize(mni_4mm, "affine", 1, tmp_path / contrast, contrast=contrast, tissue_dir=sample_dir)
        fixed, moving = read_image(tmp_path / contrast / "fixed.nrrd"), read_image(tmp_path / contrast / "moving.nrrd")
        truth = sitk.ReadTransform(str(tmp_path / contrast / "ground_truth.h5"))
        result = register(moving, ClearBackend(fixed), Settings(metric="mi", levels=[2, 1]))
        assert result.metric == "mi" and [lv.metric for lv in result.levels] == ["mi", "mi"]
        assert np.isnan(result.final_ssd) and result.levels[-1].to_dict()["final_ssd"] is None
        assert tre(fixed, result.transform, truth)["mean"] < 0.7, contrast

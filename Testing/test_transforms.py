"""Transform models: parameters, point mappings against SimpleITK, ITK file round trips, and the
finite-difference check of the Gauss-Newton terms."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique
from ppir.engine.bspline import BSplineModel, control_grid_for
from ppir.engine.linear import LinearModel
from ppir.engine.moving_image import MovingLevel


def _points(grid, n=200, seed=0):
    rng = np.random.default_rng(seed)
    return grid.index_to_point(rng.uniform(2, np.asarray(grid.size) - 3, size=(n, grid.dim)))


def _random_linear(kind, dim, rng):
    model = LinearModel(kind, rng.normal(size=dim) * 10)
    p = model.identity(rng.normal(size=dim) * 5)
    if kind == "rigid":
        p[: model.n_params - dim] = rng.uniform(-0.3, 0.3, model.n_params - dim)
    else:
        p[: dim * dim] += rng.normal(scale=0.1, size=dim * dim)
    return model, p


def _random_bspline(volume, rng):
    control = control_grid_for(volume.grid, 25.0)
    a = np.eye(volume.dim) + rng.normal(scale=0.05, size=(volume.dim, volume.dim))
    model = BSplineModel(control, a, rng.normal(size=volume.dim), volume.grid.center())
    return model, rng.normal(scale=2.0, size=model.n_params)


def _sitk_map(tfm, points):
    return np.array([tfm.TransformPoint(tuple(float(v) for v in x)) for x in points])


@pytest.mark.parametrize("kind", ["rigid", "affine"])
@pytest.mark.parametrize("dim", [2, 3])
def test_linear_models_map_points_like_simpleitk(kind, dim):
    rng = np.random.default_rng(dim)
    model, p = _random_linear(kind, dim, rng)
    points = rng.normal(size=(50, dim)) * 40
    np.testing.assert_allclose(model.warp(points, p), _sitk_map(model.to_sitk(p), points), atol=1e-9)


@pytest.mark.parametrize("volume_name", ["slice_2d", "mni_4mm"])
def test_bspline_maps_points_like_simpleitk(request, volume_name):
    volume = oblique(request.getfixturevalue(volume_name), [1.5, 2.5, 3.0][: request.getfixturevalue(volume_name).dim])
    model, p = _random_bspline(volume, np.random.default_rng(1))
    points = _points(volume.grid)
    np.testing.assert_allclose(model.warp(points, p, model.basis(points)), _sitk_map(model.to_sitk(p), points),
                               atol=1e-8)


@pytest.mark.parametrize("suffix", [".h5", ".tfm"])
@pytest.mark.parametrize("kind", ["rigid", "affine", "bspline"])
def test_transform_files_read_back_identically(tmp_path, mni_4mm, kind, suffix):
    rng = np.random.default_rng(7)
    if kind == "bspline":
        model, p = _random_bspline(mni_4mm, rng)
    else:
        model, p = _random_linear(kind, 3, rng)
    tfm = model.to_sitk(p)
    path = str(tmp_path / f"t{suffix}")
    sitk.WriteTransform(tfm, path)
    back = sitk.ReadTransform(path)
    points = _points(mni_4mm.grid, 100)
    np.testing.assert_allclose(_sitk_map(back, points), _sitk_map(tfm, points), atol=1e-6)


def _numeric_gradient(model, p, points, basis, moving, weights, eps):
    """d/dp sum_x weights(x) I(T_p(x)) by central differences."""
    out = np.zeros(model.n_params)
    for k in range(model.n_params):
        dp = np.zeros_like(p)
        dp[k] = eps
        plus = moving.sample(model.warp(points, p + dp, basis))[:, 0].astype(np.float64)
        minus = moving.sample(model.warp(points, p - dp, basis))[:, 0].astype(np.float64)
        out[k] = weights @ (plus - minus) / (2 * eps)
    return out


@pytest.mark.parametrize("kind", ["rigid", "affine", "bspline"])
def test_jacobian_structure_matches_finite_differences(slice_2d, kind):
    """S(x) = Phi(x)^T g(x): the driver's assembled gradient equals numeric differentiation."""
    volume = slice_2d
    rng = np.random.default_rng(3)
    smooth = volume.with_array(sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(volume.to_sitk(), 6.0)))
    moving = MovingLevel(smooth)
    if kind == "bspline":
        model, p = _random_bspline(volume, rng)
        p *= 0.2
        eps = 1e-3
    else:
        model, p = _random_linear(kind, 2, rng)
        model = LinearModel(kind, volume.grid.center())
        eps = 1e-6
    points = _points(volume.grid, 400, seed=4)
    basis = model.basis(points)
    weights = rng.normal(size=len(points))
    sampled = moving.sample(model.warp(points, p, basis))
    g = model.channels(sampled[:, 1:].astype(np.float64), p)
    analytic = model.gradient_vector(basis.transpose_apply(g * weights[:, None]), p)
    numeric = _numeric_gradient(model, p, points, basis, moving, weights, eps)
    scale = np.abs(numeric).max()
    # linear interpolation makes the gradient image an approximation of the true derivative
    assert np.abs(analytic - numeric).max() < 0.05 * scale


def test_bspline_hessian_equals_dense_product(slice_2d):
    rng = np.random.default_rng(5)
    model, p = _random_bspline(slice_2d, rng)
    points = _points(slice_2d.grid, 300, seed=6)
    basis = model.basis(points)
    g = rng.normal(size=(len(points), 2))
    s = np.concatenate([basis.phi.toarray() * g[:, [i]] for i in range(2)], axis=1)
    np.testing.assert_allclose(model.hessian(basis, g, p).toarray(), s.T @ s, atol=1e-10)


def test_linear_hessian_equals_dense_product(mni_4mm):
    rng = np.random.default_rng(8)
    model, p = _random_linear("rigid", 3, rng)
    points = _points(mni_4mm.grid, 300)
    basis = model.basis(points)
    g = rng.normal(size=(len(points), 3))
    rows = []
    for x, gx in zip(basis.matrix, g):
        s_affine = np.concatenate([np.outer(gx, x[:3]).ravel(), gx])
        rows.append(model.chain(p).T @ s_affine)
    s = np.array(rows)
    np.testing.assert_allclose(model.hessian(basis, g, p), s.T @ s, rtol=1e-4)


@pytest.mark.parametrize("kind", ["rigid", "affine"])
def test_whole_grid_sampler_agrees_with_the_point_sampler(mni_4mm, kind):
    """sample_grid differentiates the warped image on the fixed grid; sample interpolates grad I."""
    volume = oblique(mni_4mm, (4.0, 3.0, 5.0))
    moving = MovingLevel(volume)
    rng = np.random.default_rng(7)
    model, p = _random_linear(kind, 3, rng)
    model = LinearModel(kind, volume.grid.center())
    grid_channels = moving.sample_grid(model.to_sitk(p), volume.grid)
    warped = model.warp(volume.grid.points(None), p)
    point_channels = moving.sample(warped)
    index = volume.grid.point_to_index(warped)      # the samplers treat the image's rim differently
    inside = np.all((index >= 1) & (index <= np.asarray(volume.grid.size) - 2), axis=1)
    assert inside.mean() > 0.3
    values, grads = grid_channels[inside, 0], grid_channels[inside, 1:]
    assert np.abs(values - point_channels[inside, 0]).max() < 1e-3 * np.abs(values).max()
    for axis in range(3):
        ours, theirs = grads[:, axis], point_channels[inside, 1 + axis]
        assert np.corrcoef(ours, theirs)[0, 1] > 0.98
        assert np.abs(ours - theirs).mean() < 0.2 * np.abs(theirs).mean()


def gradient_check_point(image, kind: str, bspline_step: float, linear_steps: tuple[float, float]):
    """A model, a parameter vector away from the identity and finite-difference steps, for gradient checks
    on a 2D ``image``: B-spline steps ``bspline_step``; linear steps (matrix, translation) ``linear_steps``."""
    if kind == "bspline":
        model, p = _random_bspline(image, np.random.default_rng(2))
        return model, 0.2 * p, np.full(len(p), bspline_step)
    model = LinearModel(kind, image.grid.center())
    p = model.identity(np.array([2.0, -3.0]))
    p[0] += 0.1
    if kind == "affine":
        p[1:4] += [0.03, -0.02, -0.04]
    return model, p, np.where(np.arange(len(p)) < len(p) - 2, *linear_steps)


def _linear_deformation(volume, k):
    """A B-spline model whose deformation is D(x) = K (x - c) over the image: cubic B-splines reproduce
    linear functions, so coefficients K (x_k - c) at the control points give it exactly."""
    control = control_grid_for(volume.grid, 25.0)
    model = BSplineModel(control, np.eye(volume.dim), np.zeros(volume.dim), volume.grid.center())
    coef = (control.grid.points() - volume.grid.center()) @ np.asarray(k).T
    return model, coef.T.ravel()


@pytest.mark.parametrize("volume_name", ["slice_2d", "mni_4mm"])
def test_bspline_jacobian_determinants_are_exact_on_a_linear_deformation(request, volume_name):
    """det(I + K) at every lattice point, on an oblique anisotropic grid; <= 0 where K folds."""
    volume = request.getfixturevalue(volume_name)
    volume = oblique(volume, [1.5, 2.5, 3.0][: volume.dim])
    rng = np.random.default_rng(2)
    k = rng.normal(scale=0.2, size=(volume.dim, volume.dim))
    model, p = _linear_deformation(volume, k)
    np.testing.assert_allclose(model.warp(volume.grid.points()[:50], p, model.basis(volume.grid.points()[:50])),
                               volume.grid.points()[:50] + (volume.grid.points()[:50] - volume.grid.center()) @ k.T,
                               atol=1e-8)
    det = model.jacobian_determinants(volume.grid, p)
    assert len(det) >= 4 ** volume.dim
    np.testing.assert_allclose(det, np.linalg.det(np.eye(volume.dim) + k), rtol=1e-6)
    np.testing.assert_allclose(model.jacobian_determinants(volume.grid, np.zeros_like(p)), 1.0, atol=1e-9)
    folding = -2.0 * np.eye(volume.dim)[:1].T @ np.eye(volume.dim)[:1]     # x -> -x: det(I + K) = -1
    model, p = _linear_deformation(volume, folding)
    np.testing.assert_allclose(model.jacobian_determinants(volume.grid, p), -1.0, rtol=1e-6)


def test_the_driver_refuses_a_folded_bspline_result(mni_4mm):
    """The check after every B-spline level: a deformation folding anywhere over the fixed image is a
    divergence (exit 4) naming the level; one that does not fold passes."""
    from ppir.engine.driver import METRIC_FOLD_ADVICE, Diverged, _check_folding
    from ppir.engine.settings import METRICS
    assert set(METRIC_FOLD_ADVICE) == set(METRICS)          # every metric's message has its advice
    model, p = _linear_deformation(mni_4mm, np.diag([0.1, -0.1, 0.05]))
    _check_folding(model, mni_4mm.grid, 1, p, "ssd")
    model, p = _linear_deformation(mni_4mm, np.diag([0.1, -0.1, 0.05]))
    p[model.control.n_points // 2] += 500.0         # one control point's x-coefficient: a local fold
    with pytest.raises(Diverged, match=r"bspline stage, level 1\): the deformation folds at .* %.*--metric ncc or mi"):
        _check_folding(model, mni_4mm.grid, 1, p, "ssd")

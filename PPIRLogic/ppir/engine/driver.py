"""The registration driver (moving party): multi-resolution, Levenberg-Marquardt damped Gauss-Newton
(for Mattes MI, the same loop on a secant-scaled metric matrix: a quasi-Newton method).

It owns the moving image and the transform, and reaches the fixed image only through a
``JointBackend``. Per trial step it makes exactly one joint product.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ppir.common.errors import PPIRError
from ppir.engine import masks
from ppir.engine.bspline import BSplineModel, control_grid_for
from ppir.engine.disclosure import DisclosureLedger, check_plan, plan_within
from ppir.engine.image import Grid, Volume, check_pair
from ppir.engine.joint import JointBackend
from ppir.engine.linear import LinearModel
from ppir.engine.metrics import Evaluation, evaluate_mi, gauss_newton
from ppir.engine.metrics import evaluate as evaluate_metric
from ppir.engine.moving_image import MovingLevel
from ppir.engine.pyramid import LevelSpec, default_levels, level_image
from ppir.engine.sampling import draw_gradient_weighted, draw_uniform
from ppir.engine.settings import HISTOGRAM_BINS, TRANSFORMS, Settings

RELATIVE_TOLERANCE = 1e-6
NOISE_FLOOR = 1e-3


class Diverged(PPIRError):
    """The registration left the images' overlap, ended with a worse metric than it started with, or folded."""

    exit_code = 4


ADVICE = ("try --metric ncc (scanners with different gain or contrast curves), --metric mi (other contrasts or "
          "modalities), more or coarser --levels, or the other --init")
FOLD_ADVICE = ("a larger --bspline-regularization, --bspline-levels without the coarsest level, or a coarser "
               "--bspline-spacing")
METRIC_FOLD_ADVICE = {"ssd": "--metric ncc or mi if the images come from different scanners or contrasts (SSD then "
                             "folds the grid to match intensities)",
                      "ncc": "--metric mi across contrasts",
                      "mi": "more --histogram-bins"}


@dataclass
class LevelReport:
    stage: str
    factor: int
    size: list[int]
    samples: int
    iterations: int
    joint_products: int
    metric: str
    value: float
    final_ssd: float
    wall_time_s: float

    def to_dict(self) -> dict:
        """As JSON: the SSD is null where the metric does not know it (MI)."""
        return {**self.__dict__, "final_ssd": _known(self.final_ssd)}


def _known(value: float) -> float | None:
    return None if np.isnan(value) else value


@dataclass
class Result:
    transform: sitk.Transform
    model: object
    parameters: np.ndarray
    levels: list[LevelReport]
    final_ssd: float
    metric: str = "ssd"
    final_value: float = float("nan")
    plan: list[str] = field(default_factory=list)     # what the fixed party's policy changed in the settings

    @property
    def iterations(self) -> int:
        return sum(level.iterations for level in self.levels)


Progress = Callable[[dict], None]


def level_specs(settings: Settings, factors: list[int] | None = None) -> list[LevelSpec]:
    """The pyramid levels of a stage: the settings' own, or ``factors`` with default smoothing."""
    if factors is None or factors == settings.levels:
        return default_levels(settings.levels, settings.smoothing)
    return default_levels(factors)


def stages(settings: Settings) -> list[tuple[str, list[LevelSpec]]]:
    """The stages a registration runs, in order, with their levels (both parties derive them from the settings)."""
    plan = [("rigid" if settings.transform == "rigid" else "affine", level_specs(settings))]
    if settings.transform == "bspline":
        plan.append(("bspline", level_specs(settings, settings.bspline_levels)))
    return plan


class NoOverlap(PPIRError):
    """Every sample maps outside the moving image."""


class Level:
    """One (stage, level): sample set, basis and the moving image at that level."""

    def __init__(self, model, moving: MovingLevel, grid: Grid, backend: JointBackend,
                 ledger: DisclosureLedger | None = None, metric: str = "ssd", bins: int = HISTOGRAM_BINS,
                 moving_mask: Volume | None = None):
        self.model, self.moving, self.grid, self.backend = model, moving, grid, backend
        self.ledger = ledger        # the moving party's replica of the fixed party's ledger
        self.metric = metric
        self.bins = bins            # Mattes MI's histogram bins
        self.moving_mask = moving_mask      # the moving party's own mask, on the moving image's full-resolution grid
        self.joint_products = 0

    def can_product(self, reserve: int = 0) -> bool:
        """Whether the fixed party's policy allows another product at this level (and ``reserve`` more)."""
        if self.ledger is None:
            return True
        return self.ledger.can_product() if reserve == 0 else self.ledger.headroom() > reserve

    def use_samples(self, samples: np.ndarray | None) -> None:
        """Offer a sample set to the fixed party, and use the samples it keeps (all, unless it has a mask)."""
        points = self.grid.points(samples)
        basis = self.model.basis(points)
        if self.ledger is not None:
            self.ledger.offer(samples, self.moving_mask is not None)
        kept = self.backend.keep_samples(samples, basis)
        if kept is not samples:
            if self.ledger is not None:
                self.ledger.kept(len(kept), len(points))
            samples, points = kept, self.grid.points(kept)
            basis = self.model.basis(points)
        self.samples, self.points, self.basis = samples, points, basis
        if self.ledger is not None:
            self.ledger.sample_set(samples, self.basis, self.grid.dim)
        self.joint_basis = self.backend.set_samples(samples, self.basis)
        self.n_samples = len(self.points)

    def footprint(self, p: np.ndarray) -> np.ndarray:
        """Flat bool over the level grid: the voxels that T_p maps into the moving mask."""
        return masks.footprint(self.moving_mask, self.grid, self.model.to_sitk(p))

    def moving_channels(self, p: np.ndarray) -> np.ndarray:
        """[I(T(x)), grad I(T(x))] at the samples: whole grids of linear models through SimpleITK's
        threaded resampling, everything else in numpy (faster than ITK's B-spline transform)."""
        if self.samples is None and self.model.kind != "bspline":
            return self.moving.sample_grid(self.model.to_sitk(p), self.grid)
        return self.moving.sample(self.model.warp(self.points, p, self.basis))

    def inside(self, p: np.ndarray) -> float:
        """The fraction of samples that T_p maps inside the moving image (the moving party's own knowledge)."""
        index = self.moving.grid.point_to_index(self.model.warp(self.points, p, self.basis))
        size = np.asarray(self.moving.grid.size, dtype=np.float64)
        return float(np.all((index >= -0.5) & (index <= size - 0.5), axis=1).mean())

    def evaluate(self, p: np.ndarray) -> Evaluation:
        sampled = self.moving_channels(p)
        if not sampled[:, 0].any():
            raise NoOverlap("the images do not overlap: every sample maps outside the moving image")
        values, grads = sampled[:, 0], sampled[:, 1:]
        g = self.model.channels(grads, p)
        if self.ledger is not None:
            self.ledger.allow_product()
            self.ledger.product()
        self.joint_products += 1
        if self.metric == "mi":
            return evaluate_mi(self.model, p, g, values, self.backend, self.joint_basis,
                               self.moving.value_range, self.bins)
        joint = self.backend.joint_product(g, values)
        return evaluate_metric(self.metric, self.model, p, g, values, joint, self.joint_basis)


def _initial_affine(moving: Volume, fixed: Grid, settings: Settings, kind: str,
                    initial: sitk.Transform | None = None) -> tuple[LinearModel, np.ndarray]:
    model = LinearModel(kind, fixed.center())
    if initial is not None:
        return model, model.from_sitk(initial)
    if settings.initialization == "centers":
        return model, model.identity(moving.grid.center() - fixed.center())
    return model, model.identity()


def check_initial(initial: sitk.Transform, settings: Settings, dim: int) -> None:
    """Raise ``InitialTransformError`` if the registration cannot start from ``initial`` (checked before any session)."""
    LinearModel("rigid" if settings.transform == "rigid" else "affine", np.zeros(dim)).from_sitk(initial)


def _check_overlap(moving: Volume, fixed: Grid) -> None:
    """Identity initialisation: the physical boxes must intersect."""
    lo_f, hi_f = fixed.corners().min(0), fixed.corners().max(0)
    lo_m, hi_m = moving.grid.corners().min(0), moving.grid.corners().max(0)
    if np.any(hi_f < lo_m) or np.any(hi_m < lo_f):
        raise PPIRError("the fixed and moving images do not overlap in physical space "
                        "(use --init centers to start from aligned image centres)")


def register(moving: Volume, backend: JointBackend, settings: Settings,
             progress: Progress | None = None, initial: sitk.Transform | None = None,
             moving_mask: Volume | None = None, check_folding: bool = True) -> Result:
    """Register ``moving`` to the fixed image behind ``backend``; returns the fixed->moving transform.

    ``initial`` (a linear fixed->moving transform) is the starting point instead of
    ``settings.initialization``; it is the moving party's own and never reaches the backend.
    ``moving_mask`` (on the moving grid, ``ppir.engine.masks``; ``settings.moving_mask`` says there is
    one) restricts every sample set to the fixed voxels the current transform maps into it; it never
    reaches the backend either, but the sample indices show where it falls on the fixed grid.
    A B-spline level that ends folded raises ``Diverged`` unless ``check_folding`` is off (the privacy
    benchmarks, which record what a run releases, whatever it ends with).
    The run is planned within the fixed party's policy (``plan_within``: coarse levels with too few samples left
    out, an unset B-spline stage kept to the levels the policy serves); ``Result.plan`` says what changed.
    """
    fixed = backend.fixed_grid
    check_pair(fixed, moving.grid)
    if (moving_mask is not None) != settings.moving_mask:
        raise PPIRError("the settings' moving_mask must say whether a moving mask is given")
    if moving_mask is not None and (problem := masks.grid_difference(moving_mask.grid, moving.grid)):
        raise PPIRError(f"the moving mask is not on the moving image's grid ({problem})")
    if initial is None and settings.initialization == "identity":
        _check_overlap(moving, fixed)
    policy = backend.agree(settings)
    settings, plan_notes = plan_within(policy, settings, fixed, backend.fixed_mask)
    check_plan(policy, settings, fixed, backend.fixed_mask)
    ledger = DisclosureLedger(policy, settings.sampling, settings.metric, settings.histogram_bins, backend.fixed_mask,
                              settings.moving_mask)
    reports: list[LevelReport] = []
    plan = stages(settings)
    linear_kind, linear_levels = plan[0]
    model, p = _initial_affine(moving, fixed, settings, linear_kind, initial)
    p = _run_stage(linear_kind, model, p, moving, backend, settings, linear_levels, reports, progress, ledger,
                   moving_mask)
    if settings.transform == "bspline":
        a, t = model.matrix(p)
        model = BSplineModel(control_grid_for(fixed, settings.bspline_spacing_mm), a, t, model.center)
        p = _run_stage("bspline", model, model.identity(), moving, backend, settings, plan[1][1], reports,
                       progress, ledger, moving_mask, check_folding)
    last = reports[-1]
    return Result(model.to_sitk(p), model, p, reports, last.final_ssd, settings.metric, last.value, plan_notes)


def _run_stage(stage, model, p, moving, backend, settings, specs, reports, progress, ledger=None, moving_mask=None,
               check_folding=False):
    """Run one stage through its levels; returns its parameters. Raises ``Diverged`` (naming what
    happened) when the transform leaves the images' overlap, the stage ends with a worse metric, at
    its finest level, than at its starting parameters, or (``check_folding``) a level ends folded."""
    start = p.copy()
    for number, spec in enumerate(specs):
        began = time.perf_counter()
        grid = backend.start_level(spec)
        if ledger is not None:
            ledger.start_level(spec.factor, grid.shape)
        level = Level(model, MovingLevel(level_image(moving, spec)), grid, backend, ledger, settings.metric,
                      settings.histogram_bins, moving_mask)
        rng = np.random.default_rng([settings.seed, TRANSFORMS.index(stage), number])
        last = number == len(specs) - 1
        p, state, iterations = _optimise(level, p, settings, rng, stage, number, len(specs), progress, last)
        at_start = level.evaluate(start) if last and level.can_product() else None
        reports.append(LevelReport(stage, spec.factor, list(grid.size), level.n_samples, iterations,
                                   level.joint_products, settings.metric, state.value, state.ssd,
                                   time.perf_counter() - began))
        _check_divergence(level, stage, spec.factor, start, p, state, at_start)
        if check_folding:
            _check_folding(model, backend.fixed_grid, spec.factor, p, settings.metric)
    return p


def _check_divergence(level: "Level", stage: str, factor: int, start: np.ndarray, p: np.ndarray,
                      state: Evaluation, at_start: Evaluation | None) -> None:
    """Raise ``Diverged`` if the transform has left the overlap or the metric ended worse than at ``start``."""
    before, after = level.inside(start), level.inside(p)
    if after < 0.5 * before:
        raise Diverged(f"the registration diverged ({stage} stage, level {factor}): the transform maps only "
                       f"{100 * after:.0f} % of the fixed samples into the moving image, {100 * before:.0f} % at "
                       f"the start; {ADVICE}")
    if at_start is not None and _worse(at_start.objective, state.objective, state):
        raise Diverged(f"the registration diverged ({stage} stage, level {factor}): the {level.metric.upper()} "
                       f"ended at {state.value:.6g}, worse than {at_start.value:.6g} at the starting transform; "
                       f"{ADVICE}")


def _check_folding(model: BSplineModel, fixed: Grid, factor: int, p: np.ndarray, metric: str) -> None:
    """Raise ``Diverged`` if the deformation at the end of a B-spline level folds anywhere over the fixed
    image (a Jacobian determinant <= 0): no anatomy maps so, whatever the metric says. Where a level's voxels
    are coarse for the control grid (MI above all), or the metric does not fit the intensities (SSD across
    scanners), the metric improves by folding, and the finer levels start
    from there: undoing the fold does not bring them back (they end worse than without that level), so the
    level that folds is the one named.
    The moving party's own check (its transform and the fixed grid's geometry; nothing reaches the fixed party).
    """
    det = model.jacobian_determinants(fixed, p)
    folded = float(np.mean(det <= 0.0))
    if folded > 0:
        raise Diverged(f"the registration diverged (bspline stage, level {factor}): the deformation folds at "
                       f"{100 * folded:.2g} % of the fixed image (Jacobian determinant down to {det.min():.2f}); "
                       f"try {METRIC_FOLD_ADVICE[metric]}, {FOLD_ADVICE}")


def _worse(start: float, final: float, state: Evaluation) -> bool:
    """Whether ``final`` is worse than ``start`` beyond noise: by 1 % of the start plus 10^-4 of the
    objective's natural size (sum J^2 for SSD, NCC's range)."""
    return final - start > 0.01 * abs(start) + 1e-4 * state.reference


def _draw(level: Level, p: np.ndarray, settings: Settings, rng: np.random.Generator) -> np.ndarray | None:
    """The next sample set: all voxels (None), URS or GMS; with a moving mask, only voxels that T_p maps
    into it: all of them (full), those of the usual URS draw (so a voxel at the mask's edge changes
    nothing else), or a GMS draw of the fraction of them."""
    n = level.grid.n_voxels
    inside = None
    if level.moving_mask is not None:
        inside = level.footprint(p)
        if not inside.any():
            raise PPIRError(f"no voxel of the fixed image's level {level.grid.size} maps into the moving mask at "
                            "the current transform: check that the mask covers the anatomy to register")
    if settings.sampling == "full":
        return None if inside is None else np.flatnonzero(inside)
    if settings.sampling == "urs":
        drawn = draw_uniform(n, settings.sample_fraction, rng)
        return drawn if inside is None else drawn[inside[drawn]]
    weights = level.moving.gradient_magnitude(level.model.to_sitk(p), level.grid)
    if inside is None:
        return draw_gradient_weighted(weights, settings.sample_fraction, rng)
    candidates = np.flatnonzero(inside)
    return candidates[draw_gradient_weighted(weights[candidates], settings.sample_fraction, rng)]


def _first_curvature(model, level: Level, matrix, gradient: np.ndarray, p: np.ndarray) -> float:
    """The curvature c for which the undamped step (c * matrix)^-1 gradient moves the samples by one voxel."""
    moved = model.max_change(level.basis, p, p - model.solve(matrix, gradient, 0.0))
    return max(moved / float(level.grid.spacing.min()), 1e-30)


def _secant(curvature: float, step: np.ndarray, change: np.ndarray, matrix) -> float:
    """The secant update of c from an accepted step s (p <- p - s) and the half-gradient change g_old - g_new."""
    sy, shs = float(step @ change), float(step @ (matrix @ step))
    if not (sy > 0 and shs > 0):
        return curvature
    return float(np.clip(sy / shs, curvature / 10.0, curvature * 10.0))


def _optimise(level: Level, p, settings: Settings, rng, stage, number, n_levels, progress, reserve: bool = False):
    """LM-damped Gauss-Newton at one level; returns (parameters, their evaluation, accepted iterations).
    With ``reserve``, one product of a budget of at least four is left for the divergence check.

    A level ends when a step would move no sample by 1 % of a voxel, when the Gauss-Newton model
    predicts (or a step achieves) a relative decrease below RELATIVE_TOLERANCE, when a step that
    promised less than NOISE_FLOOR (relative) is rejected (the model is no longer reliable there),
    or after ``max_iterations`` accepted steps. Each trial costs one joint product; a trial that maps
    every sample outside the moving image is rejected without one.

    For MI (``state.secant``) the matrix is c * sum S S^T: c is first set so that the undamped step
    moves the samples by one voxel of the level, then by the secant condition after each accepted step
    (c = s.y / s.(sum S S^T)s, kept within a factor of 10 per step and left alone when s.y <= 0).
    """
    model = level.model
    level.use_samples(_draw(level, p, settings, rng))
    state = level.evaluate(p)
    kept = 1 if reserve and level.ledger is not None and level.ledger.headroom() >= 3 else 0
    damping = 1e-3
    step_tol = 1e-2 * float(level.grid.spacing.min())
    iterations = 0
    curvature = None
    while iterations < settings.max_iterations:
        if not level.can_product(kept):
            break                       # the fixed party's disclosure budget for this level is spent
        if settings.resample_each_iteration and iterations > 0 and settings.sampling != "full":
            level.use_samples(_draw(level, p, settings, rng))
            state = level.evaluate(p)
        hessian = gauss_newton(model, level.joint_basis, state, p)
        if state.secant:
            metric_matrix = hessian
            if curvature is None:
                if iterations == 0 and stage == "bspline":      # the penalty scales with c: step ~ 1/c
                    model.set_regularization(metric_matrix, settings.bspline_regularization)
                curvature = _first_curvature(model, level, hessian, state.gradient, p)
            hessian = curvature * metric_matrix
        if iterations == 0 and stage == "bspline":
            model.set_regularization(hessian, settings.bspline_regularization)
        objective = state.objective + model.penalty(p)
        gradient = state.gradient + model.penalty_gradient(p)
        while True:
            step = model.solve(hessian, gradient, damping)
            candidate = p - step
            moved = model.max_change(level.basis, p, candidate)
            predicted = 2.0 * float(step @ gradient) - float(step @ (hessian @ step))
            if moved < step_tol or predicted < RELATIVE_TOLERANCE * objective or not level.can_product(kept):
                return p, state, iterations
            try:
                trial = level.evaluate(candidate)
                trial_objective = trial.objective + model.penalty(candidate)
            except NoOverlap:
                trial_objective = float("inf")
            if trial_objective < objective:
                break
            if predicted < NOISE_FLOOR * objective:
                return p, state, iterations
            damping *= 10.0
        relative = (objective - trial_objective) / max(objective, 1e-30)
        if state.secant:
            curvature = _secant(curvature, step, state.gradient - trial.gradient, metric_matrix)
        p, state = candidate, trial
        damping = max(damping / 10.0, 1e-9)
        iterations += 1
        if progress:
            progress({"stage": stage, "level": number + 1, "levels": n_levels, "size": list(level.grid.size),
                      "iteration": iterations, "max_iterations": settings.max_iterations,
                      "metric": level.metric, "value": state.value, "ssd": _known(state.ssd),
                      "samples": level.n_samples, "moved_mm": moved})
        if relative < RELATIVE_TOLERANCE:
            break
    return p, state, iterations

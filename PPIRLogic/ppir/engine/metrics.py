"""Similarity metrics from the joint product: SSD, normalised cross-correlation (NCC) and Mattes MI.

Both are minimised in the same least-squares form, F = ||residual||^2, so that one Levenberg-Marquardt
driver serves both: each metric returns F, the half gradient g = J^T residual (in parameters) and the
Gauss-Newton matrix J^T J, built by the moving party from its own sums and the backend's result.

- SSD: F = sum (I - J)^2; g = sum S (I - J); J^T J = sum S S^T.
- NCC: F = ||I^ - J^||^2 = 2 (1 - NCC), with I^ = (I - mean I) / ||I - mean I|| and J^ likewise;
  with b = (sum S I - mean I sum S) / sigma_I (sigma_I^2 = sum (I - mean I)^2),
  g = -(Cov'/sigma_J - NCC b) / sigma_I with Cov' = sum S J - mean J sum S, and
  J^T J = (sum S S^T - (sum S)(sum S)^T / N - b b^T) / sigma_I^2 (the two rank-one terms are dropped
  for the B-spline model, whose matrix is sparse: a larger matrix, so a shorter, still descending step).
  Besides the SSD's terms NCC needs sum J over the sample set: one more value the fixed party
  releases (with noise) once per sample set, nothing more per product.

S = dI(T(x))/dp; sum S J comes from the joint product's r, sum J^2 and sum J with the sample set.

- MI (``ppir.engine.mutual_information``): F = H(J | I) = H(J) - MI from the joint histogram, and its
  gradient from a second joint product. It has no least-squares form: the driver's matrix is
  c * sum S S^T, the Gauss-Newton matrix of the moving image alone (which scales rotations,
  translations and control points by how much they move the image), times a curvature c that the
  driver sets from a one-voxel first step and updates by the secant condition (``secant``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ppir.common.errors import PPIRError
from ppir.engine import mutual_information as mattes

FIXED_STATISTICS = {"ssd": ("sum_sq",), "ncc": ("sum_sq", "sum"), "mi": ()}


@dataclass
class Evaluation:
    """The metric's terms at one parameter vector."""

    objective: float            # F, minimised
    gradient: np.ndarray        # half gradient of F
    channels: np.ndarray        # moving channels g(x) (the Gauss-Newton matrix is built from them)
    value: float                # the metric as reported (SSD, NCC)
    ssd: float
    reference: float            # the objective's natural size (sum J^2 for SSD, 4 for NCC): for tolerances
    scale: float = 1.0          # J^T J = scale * (sum S S^T - sum_k u_k u_k^T)
    low_rank: list[np.ndarray] = field(default_factory=list)
    secant: bool = False        # J^T J is only a metric: the driver scales it by a secant curvature (MI)


def fixed_statistics(metric: str) -> tuple[str, ...]:
    """The per-sample-set sums of J a metric needs from the fixed party."""
    return FIXED_STATISTICS[metric]


def evaluate(metric: str, model, p: np.ndarray, channels: np.ndarray, values: np.ndarray, joint,
             joint_basis) -> Evaluation:
    """The metric's terms from the moving party's samples and the backend's ``JointResult``."""
    v = values.astype(np.float64)
    n = len(v)
    sum_ii = float(v @ v)
    ssd = sum_ii - 2.0 * joint.cross + joint.fixed_sq
    local = joint_basis.transpose_apply(channels, values)           # sum S I, basis space
    if metric == "ssd":
        return Evaluation(ssd, model.gradient_vector(local - joint.r, p), channels, ssd, ssd, joint.fixed_sq)
    if metric != "ncc":
        raise PPIRError(f"unknown metric {metric!r}")
    sum_i, sum_j = float(v.sum()), joint.fixed_sum
    var_i = sum_ii - sum_i * sum_i / n
    var_j = joint.fixed_sq - sum_j * sum_j / n
    if var_i <= 1e-12 * max(sum_ii, 1e-30) or var_j <= 0:
        raise PPIRError("NCC is undefined: the "
                        + ("warped moving image" if var_i <= 1e-12 * max(sum_ii, 1e-30) else "fixed image")
                        + " is constant over the samples (do the images overlap?)")
    sigma_i, sigma_j = np.sqrt(var_i), np.sqrt(var_j)
    cov = joint.cross - sum_i * sum_j / n
    ncc = cov / (sigma_i * sigma_j)
    sum_s = joint_basis.transpose_apply(channels)                    # sum S, basis space
    b = model.gradient_vector(local - (sum_i / n) * sum_s, p) / sigma_i
    d_cov = model.gradient_vector(joint.r - (sum_j / n) * sum_s, p)
    gradient = -(d_cov / sigma_j - ncc * b) / sigma_i
    low_rank = [] if model.kind == "bspline" else [model.gradient_vector(sum_s, p) / np.sqrt(n), b]
    return Evaluation(2.0 * (1.0 - ncc), gradient, channels, float(ncc), ssd, 4.0, 1.0 / var_i,
                      low_rank)


def evaluate_mi(model, p: np.ndarray, channels: np.ndarray, values: np.ndarray, backend, joint_basis,
                moving_range: tuple[float, float], bins: int = mattes.BINS) -> Evaluation:
    """Mattes MI's terms: the joint histogram, then the gradient, both joint products through ``backend``."""
    weights, derivative, delta = mattes.parzen(values, *moving_range, bins)
    terms = mattes.entropies(backend.histogram_product(weights))
    r = backend.binned_product(channels, mattes.bin_weights(weights, derivative, terms.log_ratio))
    gradient = -0.5 / (terms.total * delta) * model.gradient_vector(r, p)
    return Evaluation(terms.conditional, gradient, channels, terms.mi, float("nan"), terms.fixed_entropy,
                      secant=True)


def gauss_newton(model, joint_basis, state: Evaluation, p: np.ndarray):
    """J^T J at ``state`` (dense for rigid/affine, sparse for the B-spline model)."""
    hessian = model.hessian(joint_basis, state.channels, p)
    for u in state.low_rank:
        hessian = hessian - np.outer(u, u)
    return state.scale * hessian

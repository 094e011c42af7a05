"""Rigid and affine transforms in ITK's parameterisation: T(x) = A (x - c) + c + t.

Parameters follow SimpleITK: affine = A row-major then t; rigid 2D = (angle, t); rigid 3D =
(angle_x, angle_y, angle_z, t) with A = Rz Rx Ry (``Euler3DTransform``'s default). The centre c is
the fixed image's centre. Both models share one public basis, B(x) = [x - c, 1]: every gradient
term is assembled from ``B^T (channels)`` and mapped to the parameters by the chain rule.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ppir.common.errors import PPIRError
from ppir.engine.basis import AffineBasis

CHUNK = 1 << 18


class InitialTransformError(PPIRError):
    """An initial transform the model cannot start from."""


def _rot2(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s], [s, c]])


def _euler3(angles: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """A = Rz Rx Ry and its derivatives with respect to (ax, ay, az)."""
    cx, sx = np.cos(angles[0]), np.sin(angles[0])
    cy, sy = np.cos(angles[1]), np.sin(angles[1])
    cz, sz = np.cos(angles[2]), np.sin(angles[2])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    drx = np.array([[0, 0, 0], [0, -sx, -cx], [0, cx, -sx]])
    dry = np.array([[-sy, 0, cy], [0, 0, 0], [-cy, 0, -sy]])
    drz = np.array([[-sz, -cz, 0], [cz, -sz, 0], [0, 0, 0]])
    return rz @ rx @ ry, [rz @ drx @ ry, rz @ rx @ dry, drz @ rx @ ry]


class LinearModel:
    """A rigid or affine transform model about a fixed centre."""

    def __init__(self, kind: str, center: np.ndarray):
        if kind not in ("rigid", "affine"):
            raise ValueError(f"unknown linear model {kind!r}")
        self.kind = kind
        self.center = np.asarray(center, dtype=np.float64)
        self.dim = len(self.center)
        d = self.dim
        self.n_params = (1 if d == 2 else 3) + d if kind == "rigid" else d * d + d

    def identity(self, translation: np.ndarray | None = None) -> np.ndarray:
        d = self.dim
        t = np.zeros(d) if translation is None else np.asarray(translation, float)
        if self.kind == "rigid":
            return np.concatenate([np.zeros(self.n_params - d), t])
        return np.concatenate([np.eye(d).ravel(), t])

    def from_sitk(self, transform: sitk.Transform) -> np.ndarray:
        """The parameters of a linear SimpleITK transform (fixed point -> moving point) about this model's centre.

        Any linear transform class works (composites of linear ones too); ``InitialTransformError``
        says why when it is not linear, has another dimension, or is not rigid for a rigid model.
        """
        d = self.dim
        if transform.GetDimension() != d:
            raise InitialTransformError(f"the initial transform is {transform.GetDimension()}D, the images are {d}D")
        c = self.center
        origin = np.array(transform.TransformPoint(tuple(float(v) for v in c)))
        a = np.column_stack([np.array(transform.TransformPoint(tuple(float(v) for v in c + e))) - origin
                             for e in np.eye(d)])
        probes = c + np.random.default_rng(0).uniform(-200.0, 200.0, (8, d))
        mapped = np.array([transform.TransformPoint(tuple(float(v) for v in x)) for x in probes])
        if not np.allclose(mapped, (probes - c) @ a.T + origin, atol=1e-6 * (1 + np.abs(mapped).max())):
            raise InitialTransformError("the initial transform is not linear (a B-spline or a displacement field "
                                        "cannot start a registration): use a rigid or affine one")
        t = origin - c
        if self.kind == "affine":
            return np.concatenate([a.ravel(), t])
        if not np.allclose(a.T @ a, np.eye(d), atol=1e-6) or np.linalg.det(a) <= 0:
            raise InitialTransformError("the initial transform scales, shears or mirrors, which a rigid registration "
                                        "cannot start from: choose affine (or B-spline), or a rigid initial transform")
        u, _, vt = np.linalg.svd(a)
        rotation = u @ vt
        if d == 2:
            return np.array([np.arctan2(rotation[1, 0], rotation[0, 0]), *t])
        euler = sitk.Euler3DTransform()
        euler.SetMatrix(tuple(float(v) for v in rotation.ravel()))
        return np.array([euler.GetAngleX(), euler.GetAngleY(), euler.GetAngleZ(), *t])

    def matrix(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(A, t) of T(x) = A (x - c) + c + t."""
        d = self.dim
        if self.kind == "affine":
            return p[: d * d].reshape(d, d), p[d * d:]
        a = _rot2(p[0]) if d == 2 else _euler3(p[:3])[0]
        return a, p[-d:]

    def chain(self, p: np.ndarray) -> np.ndarray:
        """d(vec A, t)/dp: (d*d + d, n_params), vec A row-major."""
        d = self.dim
        if self.kind == "affine":
            return np.eye(d * d + d)
        if d == 2:
            c, s = np.cos(p[0]), np.sin(p[0])
            dmats = [np.array([[-s, -c], [c, -s]])]
        else:
            dmats = _euler3(p[:3])[1]
        chain = np.zeros((d * d + d, self.n_params))
        for k, dm in enumerate(dmats):
            chain[: d * d, k] = dm.ravel()
        chain[d * d:, len(dmats):] = np.eye(d)
        return chain

    def warp(self, points: np.ndarray, p: np.ndarray, basis: AffineBasis | None = None) -> np.ndarray:
        a, t = self.matrix(p)
        return (points - self.center) @ a.T + self.center + t

    def penalty(self, p: np.ndarray) -> float:
        return 0.0

    def penalty_gradient(self, p: np.ndarray) -> np.ndarray:
        return np.zeros_like(p)

    def max_change(self, basis: AffineBasis, p: np.ndarray, q: np.ndarray) -> float:
        """Largest |T_q(x) - T_p(x)| over the samples (attained at a corner of their bounding box)."""
        corners = basis.box_corners
        return float(np.linalg.norm(self.warp(corners, q) - self.warp(corners, p), axis=1).max())

    def channels(self, moving_gradient: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Moving-side channels g(x) whose product with J the backend computes."""
        return moving_gradient

    def basis(self, points: np.ndarray) -> AffineBasis:
        return AffineBasis(points, self.center)

    def gradient_vector(self, r: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Map a basis-space result r = B^T (g * v), shape (d+1, d), to d/dp of sum(v * I(T(x)))."""
        d = self.dim
        affine = np.concatenate([r[:d].T.ravel(), r[d]])
        return self.chain(p).T @ affine

    def hessian(self, basis: AffineBasis, g: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Gauss-Newton matrix sum S S^T, S = dI(T(x))/dp.

        In affine coordinates H[(i,a),(j,b)] = sum_x g_i g_j B_a B_b: one product of the gradient
        products (N x d(d+1)/2) with the basis' cached second moments (N x (d+1)(d+2)/2).
        """
        d = self.dim
        g_pairs = [(i, j) for i in range(d) for j in range(i, d)]
        b_pairs = basis.pairs
        moments = basis.second_moments()
        m = np.zeros((len(g_pairs), len(b_pairs)))
        first, second = (np.array(side) for side in zip(*g_pairs))
        for lo in range(0, len(g), CHUNK):
            gi = np.asarray(g[lo:lo + CHUNK], dtype=np.float32)
            products = gi[:, first] * gi[:, second]
            m += (products.T @ moments[lo:lo + CHUNK]).astype(np.float64)
        g_index = {pair: n for n, pair in enumerate(g_pairs)}
        b_index = {pair: n for n, pair in enumerate(b_pairs)}

        def param(i: int, a: int) -> int:
            return i * d + a if a < d else d * d + i

        h = np.zeros((d * d + d, d * d + d))
        for i in range(d):
            for j in range(d):
                for a in range(d + 1):
                    for b in range(d + 1):
                        h[param(i, a), param(j, b)] = m[g_index[tuple(sorted((i, j)))],
                                                        b_index[tuple(sorted((a, b)))]]
        chain = self.chain(p)
        return chain.T @ h @ chain

    def solve(self, h: np.ndarray, b: np.ndarray, damping: float) -> np.ndarray:
        """Levenberg-Marquardt step (H + damping diag H)^-1 b."""
        diag = np.diag(h)
        m = h + np.diag(damping * diag + 1e-12 * max(diag.max(), 1e-30))
        return np.linalg.solve(m, b)

    def to_sitk(self, p: np.ndarray) -> sitk.Transform:
        """The same mapping as a SimpleITK transform (fixed point -> moving point)."""
        d = self.dim
        c = tuple(float(v) for v in self.center)
        t = tuple(float(v) for v in p[-d:])
        if self.kind == "affine":
            tfm = sitk.AffineTransform(d)
            tfm.SetCenter(c)
            tfm.SetMatrix(tuple(float(v) for v in p[: d * d]))
            tfm.SetTranslation(t)
            return tfm
        tfm = sitk.Euler2DTransform() if d == 2 else sitk.Euler3DTransform()
        tfm.SetCenter(c)
        if d == 2:
            tfm.SetAngle(float(p[0]))
        else:
            tfm.SetRotation(*(float(v) for v in p[:3]))
        tfm.SetTranslation(t)
        return tfm

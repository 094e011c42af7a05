"""Which fixed-grid voxels enter the registration sums.

The moving party (party 1) chooses the samples and sends their indices to the fixed party, which
must know them to contribute J at those voxels. What the indices reveal to the fixed party:
- full: nothing (every voxel is used);
- URS (uniform random subset): nothing about either image: the indices come from a seeded
  generator independent of the data;
- GMS (gradient-magnitude sampling): voxels are drawn with probability proportional to the warped
  moving image's gradient magnitude, so the index set outlines where the moving image has edges
  (after the current transform). This is information about the moving image given to the fixed
  party; use URS when that matters.
"""
from __future__ import annotations

import numpy as np


def sample_count(n_voxels: int, fraction: float) -> int:
    return max(1, min(n_voxels, int(round(fraction * n_voxels))))


def draw_uniform(n_voxels: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A uniform random subset of voxel numbers, sorted."""
    return np.sort(rng.choice(n_voxels, size=sample_count(n_voxels, fraction), replace=False))


def draw_gradient_weighted(magnitude: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A subset drawn without replacement with probability proportional to ``magnitude`` (sorted).

    Uses exponential keys (Efraimidis-Spirakis): the k smallest of E_i / w_i.
    """
    k = sample_count(len(magnitude), fraction)
    weights = np.asarray(magnitude, np.float64)
    keys = rng.exponential(size=len(weights)) / np.maximum(weights, 1e-12 * max(weights.max(), 1e-30))
    return np.sort(np.argpartition(keys, k - 1)[:k])


def has_repeats(samples: np.ndarray) -> bool:
    """Whether a sample set names a voxel twice (one pass when it is sorted, as the samplers draw it)."""
    ordered = samples if np.all(samples[1:] > samples[:-1]) else np.sort(samples)
    return bool(np.any(ordered[1:] == ordered[:-1]))

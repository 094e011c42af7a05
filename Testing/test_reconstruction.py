"""The reconstruction attack of issue 14 against a real run (the moving party's side of the protocol).

The moving party records what its backend hands it and solves for J per pyramid level; details
(discs of 3-8 mm) exist only in J. See Testing/attack/ and docs/privacy-measurements.md.
"""
from __future__ import annotations

import numpy as np
import pytest

from ppir.app import data
from ppir.engine.settings import Settings
from ppir.engine.image import read_image
from ppir.engine.pyramid import LevelSpec, level_image

from attack import solve
from attack.pairs import pair_with_details
from attack.record import Wrapper, record_clear

# The disclosure policy as a wrapper around the backend the moving party's driver receives
# (None: no protection). The lead wires the real policy in here (or in the run's settings).
PROTECTION: Wrapper | None = None
MAX_UNKNOWNS = 1100        # dense normal equations: the coarse levels, where the ratio is highest


@pytest.fixture(scope="module")
def slice64(tmp_path_factory):
    """The 2D T1 slice at 4 mm (64x64) as a synthetic B-spline pair whose fixed image has five discs."""
    image = level_image(read_image(data.fetch(log=lambda *_: None) / data.SLICE_2D), LevelSpec(4, 2.0))
    fixed, moving, _, discs = pair_with_details(image, "bspline", 1, tmp_path_factory.mktemp("attack"))
    return read_image(fixed), read_image(moving), discs


def _attack(recording, fixed, discs) -> list[tuple[float, float, list[float]]]:
    """(PSNR of the best estimate, PSNR of the own image, detail recovery per disc) per attacked level."""
    out = []
    for spec, products in recording.levels().items():
        system = solve.build_system(products)
        if system.unknowns > MAX_UNKNOWNS:
            continue
        truth = level_image(fixed, spec).array.ravel()[system.voxels].astype(np.float64)
        base, k = solve.fitted_prior(system), system.informed
        estimates = [solve.minimum_norm(system), solve.with_prior(system)]
        psnr = max(solve.psnr(e[k], truth[k]) for e in estimates)
        # details from the prior-anchored estimate: the minimum-norm one is not anchored to any
        # image where the system is underdetermined, so its disc contrast there is arbitrary
        details = [solve.detail_recovered(system, estimates[1], base, truth, d) for d in discs]
        out.append((psnr, solve.psnr(base[k], truth[k]), details))
    return out


def test_attack_recovers_j_without_protection(slice64):
    """B-spline 20 mm, full sampling: the coarse levels of J are recovered exactly, details and all."""
    fixed, moving, discs = slice64
    _, recording = record_clear(fixed, moving, Settings(transform="bspline"))
    levels = _attack(recording, fixed, discs)
    assert len(levels) >= 2
    measured = [d for _, _, details in levels for d in details if np.isfinite(d)]
    assert len(measured) >= 3                   # discs a level's smoothing leaves visible
    assert min(measured) >= 0.9
    for psnr, own, _ in levels:
        assert psnr > 80.0 > own + 20.0


@pytest.mark.xfail(strict=False, reason="needs the disclosure policy")
@pytest.mark.parametrize("transform", ["rigid", "affine", "bspline"])
def test_attack_recovers_no_detail_under_the_policy(slice64, transform):
    """Under the policy every detail is recovered at <= 10 % of its contrast, at every attacked level."""
    fixed, moving, discs = slice64
    _, recording = record_clear(fixed, moving, Settings(transform=transform), PROTECTION)
    levels = _attack(recording, fixed, discs)
    assert levels
    for _, _, details in levels:
        assert max(d for d in details if np.isfinite(d)) <= 0.1

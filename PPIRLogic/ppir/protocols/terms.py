"""The terms of one session, as the fixed party accepts them: the moving party's settings, checked on every request.

The moving party sends its settings when it opens the session. The fixed party rebuilds them with
the engine's own checks, runs the protocol's pre-flight, plans them within its policy as the moving party
does once it has the policy (``plan_within``: levels left out, B-spline levels fitted), and then serves
only the pyramid levels, sample sets and bases that those settings produce; anything else ends the session.
"""
from __future__ import annotations

import numpy as np

from ppir.common.errors import PPIRError
from ppir.engine.bspline import control_grid_for
from ppir.engine.disclosure import DisclosurePolicy, DisclosureRefused, plan_within
from ppir.engine.driver import stages
from ppir.engine.image import Grid
from ppir.engine.pyramid import LevelSpec
from ppir.engine.sampling import sample_count
from ppir.engine.settings import Settings
from ppir.protocols import registry
from ppir.protocols.net.channel import PeerError


class SessionTerms:
    """The settings the fixed party agreed to, and the requests they allow, in order."""

    def __init__(self, protocol: str, settings: dict, fixed_grid: Grid, policy: DisclosurePolicy | None = None,
                 fixed_mask: bool = False):
        """``policy``, ``fixed_mask``: the fixed party's, to plan the levels as the moving party will (None: as the
        settings say)."""
        try:
            self.settings = Settings.from_dict(settings)
            registry.preflight(protocol, self.settings)
        except PPIRError as err:
            raise PeerError(f"the session settings were refused: {err}") from None
        if policy is not None:
            try:
                self.settings = plan_within(policy, self.settings, fixed_grid, fixed_mask)[0]
            except DisclosureRefused:
                pass    # no level fits: the moving party's plan check stops it with the reason
        self._levels = [(stage, spec) for stage, specs in stages(self.settings) for spec in specs]
        self._control = control_grid_for(fixed_grid, self.settings.bspline_spacing_mm).grid.to_dict()
        self._next = 0
        self._stage: str | None = None
        self._sample_sets = 0

    def check_level(self, spec: LevelSpec) -> None:
        """The next pyramid level must be the one the settings plan."""
        if self._next >= len(self._levels):
            raise PeerError(f"level {spec.factor} requested after the last level of the agreed settings")
        stage, planned = self._levels[self._next]
        if (spec.factor, spec.sigma) != (planned.factor, planned.sigma):
            raise PeerError(f"level (factor {spec.factor}, sigma {spec.sigma:g}) differs from the agreed "
                            f"settings' (factor {planned.factor}, sigma {planned.sigma:g})")
        self._next += 1
        self._stage = stage
        self._sample_sets = 0

    def check_samples(self, samples: np.ndarray | None, basis: dict, n_voxels: int) -> None:
        """A sample set (None: every voxel) and its basis must be what the settings draw at this level."""
        settings = self.settings
        if self._stage is None:
            raise PeerError("samples sent before any pyramid level")
        self._sample_sets += 1
        if self._sample_sets > 1 and not (settings.resample_each_iteration and settings.sampling != "full"):
            raise PeerError("a second sample set at one level, which the agreed settings do not draw")
        if settings.sampling == "full":
            if samples is not None and not settings.moving_mask:
                raise PeerError("a sample subset under full sampling")
        else:
            expected = sample_count(n_voxels, settings.sample_fraction)
            # inside its own mask the moving party draws the fraction of the voxels the mask covers: fewer
            fits = samples is not None and (len(samples) <= expected if settings.moving_mask
                                            else len(samples) == expected)
            if not fits:
                got = "every voxel" if samples is None else f"{len(samples)} samples"
                at_most = "at most " if settings.moving_mask else ""
                raise PeerError(f"{got} where the agreed sampling draws {at_most}{expected}")
        kind = "bspline" if self._stage == "bspline" else "affine"
        if basis.get("kind") != kind:
            raise PeerError(f"a {basis.get('kind')} basis in the {self._stage} stage")
        if kind == "bspline" and not _same_grid(basis.get("control"), self._control):
            raise PeerError("the B-spline control grid differs from the agreed control-point spacing")


def _same_grid(received, expected: dict) -> bool:
    try:
        return all(np.allclose(np.asarray(received[k], float), np.asarray(expected[k], float)) for k in expected)
    except (KeyError, TypeError, ValueError):
        return False

"""The whole registration job on files, shared by the command line and the Slicer module."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import SimpleITK as sitk

from ppir.app.local import run_local
from ppir.app.outputs import Outputs, write_outputs
from ppir.app.report import build_report
from ppir.engine.disclosure import DisclosurePolicy
from ppir.engine.driver import Progress, check_initial, register
from ppir.engine.evaluate import tre
from ppir.engine.image import read_image
from ppir.engine.joint import ClearBackend
from ppir.engine.masks import read_mask
from ppir.engine.settings import Settings
from ppir.protocols import registry


def register_files(fixed: str | Path, moving: str | Path, settings: Settings, outputs: Outputs,
                   protocol: str = "clear", progress: Progress | None = None,
                   ground_truth: sitk.Transform | None = None, policy: DisclosurePolicy | None = None,
                   initial: sitk.Transform | None = None, fixed_mask: str | Path | None = None,
                   moving_mask: str | Path | None = None) -> dict:
    """Register ``moving`` to ``fixed``, write the outputs (all or none) and return the report.

    ``clear`` computes in this process; ``mpc`` and ``fhe`` run the roles as separate local processes.
    With a ``ground_truth`` transform the report gets ``tre_mm`` over the fixed image's foreground.
    ``policy`` is the fixed party's disclosure policy, in every protocol (default: the default policy).
    ``initial``: a linear fixed->moving transform to start from (the moving party's, never sent).
    ``fixed_mask``, ``moving_mask``: mask images on the fixed and moving grids, each used by its owner
    only (``ppir.engine.masks``; what each reveals: docs/security.md).
    """
    policy = DisclosurePolicy() if policy is None else policy
    settings = replace(settings, moving_mask=moving_mask is not None)
    if registry.get(protocol).private:
        return run_local(protocol, fixed, moving, settings, outputs, progress, ground_truth, policy, initial,
                         fixed_mask, moving_mask)
    outputs.check(settings)
    fixed_volume = read_image(fixed, "fixed image")
    moving_volume = read_image(moving, "moving image")
    fixed_masks = read_mask(fixed_mask, fixed_volume, "fixed mask") if fixed_mask is not None else None
    moving_masks = read_mask(moving_mask, moving_volume, "moving mask") if moving_mask is not None else None
    if initial is not None:
        check_initial(initial, settings, moving_volume.grid.dim)
    start = time.perf_counter()
    backend = ClearBackend(fixed_volume, policy, mask=fixed_masks)
    try:
        result = register(moving_volume, backend, settings, progress, initial, moving_masks)
    finally:
        backend.close()
    wall = time.perf_counter() - start
    report = build_report(protocol, settings, result, wall, backend.party_stats(),
                          {"fixed": str(fixed), "moving": str(moving),
                           **({"fixed_mask": str(fixed_mask)} if fixed_mask is not None else {}),
                           **({"moving_mask": str(moving_mask)} if moving_mask is not None else {})},
                          outputs.to_dict())
    report["disclosure"] = backend.disclosure()
    if ground_truth is not None:
        report["tre_mm"] = tre(fixed_volume, result.transform, ground_truth)
    write_outputs(outputs, result.transform, fixed_volume.grid, moving_volume, report,
                  f"{protocol} {settings.transform}", fixed_volume)
    return report

"""The whole registration job on files, shared by the command line and the Slicer module."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from .backend import ClearBackend
from .driver import Progress, Settings, register
from .evaluate import tre
from .errors import PPIRError
from .image import Grid, OutputBatch, Volume, check_output_path, read_image, write_volume
from .report import build_report, dumps
from .snapshot import resample_into, write_snapshot

TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt", ".mat")
PROTOCOLS = ("clear", "mpc", "fhe")


@dataclass
class Outputs:
    transform: Path
    warped: Path | None = None
    report: Path | None = None
    snapshot: Path | None = None
    displacement: Path | None = None

    def check(self, settings: Settings) -> None:
        """Fail before any work if an output cannot be written."""
        if self.transform.suffix.lower() not in TRANSFORM_SUFFIXES:
            raise PPIRError(f"output transform '{self.transform}': use one of {', '.join(TRANSFORM_SUFFIXES)}")
        if self.displacement is not None and settings.transform != "bspline":
            raise PPIRError("--output-displacement is for --transform bspline")
        for path in (self.transform, self.warped, self.report, self.snapshot, self.displacement):
            if path is not None:
                check_output_path(path)

    def to_dict(self) -> dict:
        return {k: str(v) for k, v in self.__dict__.items() if v is not None}


def register_files(fixed: str | Path, moving: str | Path, settings: Settings, outputs: Outputs,
                   protocol: str = "clear", progress: Progress | None = None,
                   ground_truth: sitk.Transform | None = None) -> dict:
    """Register ``moving`` to ``fixed``, write the outputs (all or none) and return the report.

    ``clear`` computes in this process; ``mpc`` and ``fhe`` run the roles as separate local processes.
    With a ``ground_truth`` transform the report gets ``tre_mm`` over the fixed image's foreground.
    """
    if protocol not in PROTOCOLS:
        raise PPIRError(f"protocol {protocol!r} is not available here; choose from {', '.join(PROTOCOLS)}")
    if protocol != "clear":
        from .roles import run_local
        return run_local(protocol, fixed, moving, settings, outputs, progress, ground_truth)
    settings.validate()
    outputs.check(settings)
    fixed_volume = read_image(fixed, "fixed image")
    moving_volume = read_image(moving, "moving image")
    start = time.perf_counter()
    backend = ClearBackend(fixed_volume)
    try:
        result = register(moving_volume, backend, settings, progress)
    finally:
        backend.close()
    wall = time.perf_counter() - start
    report = build_report(protocol, settings, result, wall, backend.party_stats(),
                          {"fixed": str(fixed), "moving": str(moving)}, outputs.to_dict())
    if ground_truth is not None:
        report["tre_mm"] = tre(fixed_volume, result.transform, ground_truth)
    write_outputs(outputs, result.transform, fixed_volume.grid, moving_volume, report,
                  f"{protocol} {settings.transform}", fixed_volume)
    return report


def write_outputs(outputs: Outputs, transform: sitk.Transform, grid: Grid, moving: Volume, report: dict,
                  title: str, fixed: Volume | None = None) -> None:
    """Write every requested output, all or none (the fixed image only feeds the snapshot)."""
    with OutputBatch() as batch:
        batch.add(outputs.transform, lambda tmp: sitk.WriteTransform(transform, tmp))
        if outputs.warped:
            batch.add(outputs.warped, lambda tmp: write_volume(resample_into(moving, grid, transform), tmp))
        if outputs.displacement:
            ref = grid.reference_image()
            field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat32, ref.GetSize(),
                                                      ref.GetOrigin(), ref.GetSpacing(), ref.GetDirection())
            batch.add(outputs.displacement, lambda tmp: sitk.WriteImage(field, tmp, True))
        if outputs.snapshot:
            batch.add(outputs.snapshot, lambda tmp: write_snapshot(tmp, grid, moving, transform, title, fixed))
        if outputs.report:
            batch.add(outputs.report, lambda tmp: Path(tmp).write_text(dumps(report)))
        batch.commit()

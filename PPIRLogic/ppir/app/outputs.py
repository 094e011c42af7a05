"""What a registration writes: transform, warped image, displacement, snapshot, report, all or none."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ppir.app.report import dumps
from ppir.app.snapshot import write_snapshot
from ppir.common.errors import PPIRError
from ppir.common.files import OutputBatch, check_output_path
from ppir.engine.image import Grid, Volume, resample_into, write_volume
from ppir.engine.settings import Settings

TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt", ".mat")


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

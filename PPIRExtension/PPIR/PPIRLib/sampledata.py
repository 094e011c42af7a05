"""PPIR's entries in Slicer's Sample Data module: a pair of volumes to try a registration on.

The pair is Slicer's registration case 1 (the same patient's brain MRI at two time points, with
a tumour, in different head positions), stored content-addressed in SlicerTestingData as Slicer's
own sample data and its extension template use it. Fixed at one site, moving at the other (or
both in one Slicer for the local test). No thumbnail is shipped: with ``thumbnailFileName`` unset
the Sample Data module shows its own picture of a volume whose node name it knows.
"""
from __future__ import annotations

from dataclasses import dataclass

CATEGORY = "PPIR"
DATA_URL = "https://github.com/Slicer/SlicerTestingData/releases/download/SHA256/"


@dataclass(frozen=True)
class Sample:
    sample_name: str   # shown in the Sample Data module
    file_name: str
    node_name: str
    sha256: str


SAMPLES = (
    Sample("PPIR fixed (site B): MRBrainTumor1", "RegLib_C01_1.nrrd", "MRBrainTumor1",
           "998cb522173839c78657f4bc0ea907cea09fd04e44601f17c82ea27927937b95"),
    Sample("PPIR moving (site A): MRBrainTumor2", "RegLib_C01_2.nrrd", "MRBrainTumor2",
           "1a64f3f422eb3d1c9b093d1a18da354b13bcf307907c66317e2463ee530b7a97"),
)


def register(logic) -> None:
    """Register the pair with ``logic`` (``SampleData.SampleDataLogic``); its own category where Slicer has them."""
    if hasattr(logic, "registerCustomSampleDataCategory"):   # newer than Slicer 5.10
        logic.registerCustomSampleDataCategory(CATEGORY, title=CATEGORY)
    for sample in SAMPLES:
        logic.registerCustomSampleDataSource(
            category=CATEGORY, sampleName=sample.sample_name, uris=DATA_URL + sample.sha256,
            fileNames=sample.file_name, nodeNames=sample.node_name, checksums="SHA256:" + sample.sha256)

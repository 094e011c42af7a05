"""The module's presets (data files checked against ppir's contract) and its Sample Data entries."""
from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "PPIRExtension" / "PPIR"))

from ppir.app.cli import _settings, build_parser  # noqa: E402
from PPIRLib import jobs, presets, sampledata  # noqa: E402


def test_the_shipped_presets_load_in_order_and_each_is_a_command_line_ppir_accepts(tmp_path):
    shipped = presets.load_presets()
    assert [p.title for p in shipped] == ["Brain MRI, affine", "Brain MRI, B-spline", "Brain MRI, two scanners (NCC)",
                                         "Brain, two modalities (MI)"]
    assert {p.settings["transform"] for p in shipped} == {"affine", "bspline"} and "ncc" in {
        p.settings["metric"] for p in shipped}
    (tmp_path / "identity.pem").write_text("a certificate")
    for preset in shipped:
        settings = jobs.RunSettings(role="moving", certificates=str(tmp_path), **preset.settings)
        settings.check()
        args = build_parser().parse_args(jobs.ppir_arguments(settings, {"moving": tmp_path / "m.nrrd"},
                                                             {"transform": tmp_path / "t.h5"}))
        chosen = _settings(args)   # the engine's own checks
        assert (chosen.transform, chosen.metric, chosen.sampling, chosen.bspline_spacing_mm) == (
            preset.settings["transform"], preset.settings["metric"], preset.settings["sampling"],
            preset.settings["bspline_spacing"])
        assert presets.matching(shipped, dict(preset.settings)) is preset


def test_a_changed_detail_is_custom_settings():
    shipped = presets.load_presets()
    values = dict(shipped[0].settings, levels="8,4,2,1")
    assert presets.matching(shipped, values) is None
    assert presets.matching(shipped, dict(shipped[0].settings, sample_fraction=0.1 + 1e-12)) is shipped[0]


@pytest.mark.parametrize("change, message", [
    (lambda d: d["settings"].update(transform="thin-plate"), "transform must be one of"),
    (lambda d: d["settings"].pop("metric"), "missing metric"),
    (lambda d: d["settings"].update(colour="red"), "unknown colour"),
    (lambda d: d["settings"].update(max_iterations="50"), "max_iterations must be int"),
    (lambda d: d.pop("description"), "needs exactly order, title, description and settings"),
    (lambda d: d["settings"].update(levels="4,0"), "levels must be shrink factors"),
])
def test_a_bad_preset_file_is_refused_naming_the_file_and_the_problem(tmp_path, change, message):
    data = json.loads((presets.FOLDER / "brain-mri-affine.json").read_text())
    change(data)
    (tmp_path / "mine.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape("preset mine.json: ") + ".*" + re.escape(message)):
        presets.load_presets(tmp_path)
    (tmp_path / "mine.json").write_text("{not json")
    with pytest.raises(ValueError, match="preset mine.json: not readable JSON"):
        presets.load_presets(tmp_path)


class _SampleDataLogic510:
    """Stands in for Slicer 5.10's SampleData.SampleDataLogic: the same signature, recording the sources."""

    sources: list = []

    @staticmethod
    def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None, nodeNames=None,
                                       customDownloader=None, thumbnailFileName=None, loadFileTypes=None,
                                       loadFiles=None, loadFileProperties={}, checksums=None, loadFileType=None):
        _SampleDataLogic510.sources.append(dict(category=category, sampleName=sampleName, uris=uris,
                                                fileNames=fileNames, nodeNames=nodeNames,
                                                thumbnailFileName=thumbnailFileName, checksums=checksums))


class _SampleDataLogicMain(_SampleDataLogic510):
    """Later Slicer also has categories with a title."""

    categories: dict = {}

    @staticmethod
    def registerCustomSampleDataCategory(category, title):
        _SampleDataLogicMain.categories[category] = title


# Node names for which Slicer's Sample Data module ships a thumbnail (Modules/Scripted/SampleData/Resources/Icons,
# Slicer v5.10.0); with no thumbnailFileName it shows the one named after the node.
SLICER_THUMBNAILS = {"MRHead", "CTChest", "CTACardio", "DTIBrain", "MRBrainTumor1", "MRBrainTumor2", "BaselineVolume"}


@pytest.mark.parametrize("logic", [_SampleDataLogic510, _SampleDataLogicMain])
def test_sample_data_registers_a_content_addressed_pair_with_slicers_thumbnails(logic):
    logic.sources.clear()
    sampledata.register(logic)
    assert len(logic.sources) == 2
    names = set()
    for source in logic.sources:
        assert source["category"] == "PPIR"
        digest = re.fullmatch(r"SHA256:([0-9a-f]{64})", source["checksums"]).group(1)
        assert source["uris"] == f"https://github.com/Slicer/SlicerTestingData/releases/download/SHA256/{digest}"
        assert source["fileNames"].endswith(".nrrd") and source["thumbnailFileName"] is None
        assert source["nodeNames"] in SLICER_THUMBNAILS
        names.add(source["nodeNames"])
    assert names == {"MRBrainTumor1", "MRBrainTumor2"}   # one patient at two time points: a registration pair
    assert "fixed" in logic.sources[0]["sampleName"] and "moving" in logic.sources[1]["sampleName"]
    if hasattr(logic, "categories"):
        assert logic.categories == {"PPIR": "PPIR"}
    accepted = set(inspect.signature(_SampleDataLogic510.registerCustomSampleDataSource).parameters)
    assert set(logic.sources[0]) <= accepted

"""The Slicer module's subprocess runner (PPIRExtension/PPIR/PPIRLib), on the real ``ppir`` command."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "PPIRExtension" / "PPIR"))

from ppir.app.synth import synthesize  # noqa: E402
from PPIRLib.package import ppir_environment  # noqa: E402
from PPIRLib.runner import PPIRProcess  # noqa: E402


def _events_until_done(process: PPIRProcess, timeout: float = 300) -> list[dict]:
    events, end = [], time.monotonic() + timeout
    while process.running and time.monotonic() < end:
        events += process.poll()
        time.sleep(0.05)
    process.wait(10)
    return events + process.poll()


def test_progress_events_and_outputs(slice_2d, tmp_path):
    synthesize(slice_2d, "affine", 1, tmp_path)
    process = PPIRProcess(["register", "--fixed", str(tmp_path / "fixed.nrrd"), "--moving",
                           str(tmp_path / "moving.nrrd"), "--output-transform", str(tmp_path / "t.h5"),
                           "--progress-json"])
    process.start()
    events = _events_until_done(process)
    assert process.error() is None
    iterations = [e for e in events if e.get("event") == "iteration"]
    assert iterations and events[-1]["event"] == "done"
    assert (tmp_path / "t.h5").exists()
    process.cleanup()
    assert not process.workdir.exists()


def test_bad_input_gives_the_commands_message(tmp_path):
    process = PPIRProcess(["register", "--fixed", str(tmp_path / "missing.nrrd"), "--moving",
                           str(tmp_path / "missing.nrrd"), "--output-transform", str(tmp_path / "t.h5")])
    process.start()
    assert process.wait(60) == 2
    assert "missing.nrrd" in process.error() and "Traceback" not in process.error()
    process.cleanup()


def test_cancel_stops_a_waiting_party(slice_2d, tmp_path):
    from ppir.engine.image import write_volume
    from identities import parties
    write_volume(slice_2d, tmp_path / "fixed.nrrd")
    ids = parties(tmp_path / "ids", ("moving", "fixed"))
    process = PPIRProcess(["fixed", "--image", str(tmp_path / "fixed.nrrd"), "--listen", "127.0.0.1:0",
                           "--identity", str(ids["fixed"])])
    process.start()
    end = time.monotonic() + 60
    listening = []
    while not listening and time.monotonic() < end:
        listening = [e for e in process.poll() if e.get("event") == "listening"]
        time.sleep(0.05)
    assert listening and process.running
    process.cancel(wait=True)
    assert not process.running and process.error() == "cancelled"
    process.cleanup()


def test_a_crash_without_an_error_line_names_its_cause_and_keeps_the_whole_output(tmp_path):
    """A package that fails to load in the child (as a DLL load failure does) is named, traceback kept for the log."""
    broken = tmp_path / "site" / "scipy"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("DLL load failed while importing _fblas")\n')
    env = ppir_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), env["PYTHONPATH"]])
    process = PPIRProcess(["register", "--fixed", "f.nrrd", "--moving", "m.nrrd", "--output-transform", "t.h5"],
                          env=env)
    process.start()
    assert process.wait(60) == 1
    assert process.error() == "ppir stopped with exit code 1: ImportError: DLL load failed while importing _fblas"
    log = process.log_text()
    assert log.startswith(f"{sys.executable} -m ppir register") and "[stderr] Traceback" in log
    process.cleanup()

"""The ``ppir`` command end to end, as a user runs it (subprocesses of the installed console script)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from ppir.engine.image import write_image

PPIR = shutil.which("ppir", path=os.path.dirname(sys.executable)) or "ppir"


def ppir(*args, check=True):
    done = subprocess.run([PPIR, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"ppir {' '.join(map(str, args))} failed ({done.returncode}):\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def pair(tmp_path_factory, mni_4mm):
    folder = tmp_path_factory.mktemp("pair")
    write_image(mni_4mm, folder / "source.nrrd")
    ppir("data", "synth", "--image", folder / "source.nrrd", "--transform", "affine", "--seed", 3,
         "--noise", 0.01, "--out", folder / "synth")
    return folder / "synth"


def test_help_documents_every_command():
    text = ppir("--help").stdout
    for command in ("register", "data", "evaluate", "certs", "bench"):
        assert command in text
    assert "--output-transform" in ppir("register", "--help").stdout
    assert "synth" in ppir("data", "--help").stdout


def test_register_writes_every_output_and_a_report(pair, tmp_path):
    out = tmp_path
    done = ppir("register", "--fixed", pair / "fixed.nrrd", "--moving", pair / "moving.nrrd", "--transform", "affine",
                "--levels", "2,1", "--sampling", "urs", "--sample-fraction", 0.5, "--output-transform", out / "t.h5",
                "--output-warped", out / "w.nrrd", "--report", out / "r.json", "--snapshot", out / "s.png")
    assert "registered (clear) in" in done.stdout
    report = json.loads((out / "r.json").read_text())
    for key in ("protocol", "transform_model", "levels", "iterations", "final_ssd", "wall_time_s", "parties",
                "parameters", "versions"):
        assert key in report
    assert report["protocol"] == "clear" and report["transform_model"] == "affine"
    assert [lv["factor"] for lv in report["levels"]] == [2, 1]
    assert report["parties"]["fixed"]["bytes_sent"] == 0
    assert (out / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    warped = sitk.ReadImage(str(out / "w.nrrd"))
    fixed = sitk.ReadImage(str(pair / "fixed.nrrd"))
    assert warped.GetSize() == fixed.GetSize() and np.allclose(warped.GetOrigin(), fixed.GetOrigin())
    tre = json.loads(ppir("evaluate", "--fixed", pair / "fixed.nrrd", "--transform", out / "t.h5",
                          "--ground-truth", pair / "ground_truth.h5").stdout)["tre_mm"]
    assert tre["mean"] < 0.5 and tre["max"] >= tre["p95"] >= tre["median"] > 0


def test_progress_json_lines(pair, tmp_path):
    done = ppir("register", "--fixed", pair / "fixed.nrrd", "--moving", pair / "moving.nrrd", "--levels", "2",
                "--output-transform", tmp_path / "t.tfm", "--progress-json")
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[-1]["event"] == "done"
    iterations = [line for line in lines if line["event"] == "iteration"]
    assert iterations and all({"level", "iteration", "ssd"} <= set(line) for line in iterations)


def test_bspline_writes_displacement_field(tmp_path, slice_2d):
    write_image(slice_2d, tmp_path / "f.nrrd")
    ppir("data", "synth", "--image", tmp_path / "f.nrrd", "--transform", "bspline", "--seed", 1, "--out", tmp_path / "s")
    ppir("register", "--fixed", tmp_path / "s/fixed.nrrd", "--moving", tmp_path / "s/moving.nrrd", "--transform",
         "bspline", "--levels", "2,1", "--bspline-levels", "1", "--bspline-spacing", 50,
         "--output-transform", tmp_path / "t.h5", "--output-displacement", tmp_path / "d.nrrd")
    field = sitk.ReadImage(str(tmp_path / "d.nrrd"))
    assert field.GetNumberOfComponentsPerPixel() == 2
    tfm = sitk.ReadTransform(str(tmp_path / "t.h5"))
    x = field.TransformIndexToPhysicalPoint((40, 50))
    np.testing.assert_allclose(np.add(x, field[40, 50]), tfm.TransformPoint(x), atol=1e-4)


def _bad_file(tmp_path: Path, kind: str) -> Path:
    if kind == "text":
        path = tmp_path / "notes.nrrd"
        path.write_text("hello\n")
        return path
    array = np.random.default_rng(0).random((10, 10, 10)).astype(np.float32)
    if kind == "nan":
        array[1, 2, 3] = np.inf
    else:
        array[:] = 1.0
    path = tmp_path / f"{kind}.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


@pytest.mark.parametrize("kind, message", [("text", "not a readable image"), ("nan", "NaN or infinite"),
                                           ("constant", "constant")])
def test_bad_moving_image_exits_2_without_outputs(pair, tmp_path, kind, message):
    bad = _bad_file(tmp_path, kind)
    out = tmp_path / "out"
    out.mkdir()
    done = ppir("register", "--fixed", pair / "fixed.nrrd", "--moving", bad, "--output-transform", out / "t.h5",
                "--report", out / "r.json", check=False)
    assert done.returncode == 2
    assert str(bad) in done.stderr and message in done.stderr
    assert "Traceback" not in done.stderr
    assert list(out.iterdir()) == []


def test_missing_output_folder_fails_before_work(pair, tmp_path):
    done = ppir("register", "--fixed", pair / "fixed.nrrd", "--moving", pair / "moving.nrrd",
                "--output-transform", tmp_path / "missing" / "t.h5", check=False)
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_2d_fixed_with_3d_moving(pair, tmp_path, slice_2d):
    write_image(slice_2d, tmp_path / "flat.nrrd")
    done = ppir("register", "--fixed", tmp_path / "flat.nrrd", "--moving", pair / "moving.nrrd",
                "--output-transform", tmp_path / "t.h5", check=False)
    assert done.returncode == 2 and "2D" in done.stderr and "3D" in done.stderr
    assert not (tmp_path / "t.h5").exists()


def test_evaluate_with_unreadable_transform(pair, tmp_path):
    (tmp_path / "t.h5").write_text("not a transform")
    done = ppir("evaluate", "--fixed", pair / "fixed.nrrd", "--transform", tmp_path / "t.h5",
                "--ground-truth", pair / "ground_truth.h5", check=False)
    assert done.returncode == 2 and "not a readable ITK transform" in done.stderr


def test_certs_flow_each_party_its_own_key(tmp_path):
    """Identity, fingerprint, trust by fingerprint read over the phone, and an institutional CA's signature."""
    made = ppir("certs", "identity", tmp_path / "a", "--name", "Radiology, Hospital A")
    fingerprint = made.stdout.split("SHA-256 ")[1].split(")")[0]
    assert (tmp_path / "a/identity.key").stat().st_mode & 0o777 == 0o600
    assert fingerprint in ppir("certs", "show", tmp_path / "a/identity.pem").stdout
    ppir("certs", "identity", tmp_path / "b", "--name", "Radiology, Hospital B", "--request")
    wrong = ppir("certs", "trust", tmp_path / "b", tmp_path / "a/identity.pem", "--role", "moving",
                 "--fingerprint", "00" * 32, check=False)
    assert wrong.returncode == 2 and "do not trust it" in wrong.stderr
    ppir("certs", "trust", tmp_path / "b", tmp_path / "a/identity.pem", "--role", "moving", "--fingerprint",
         fingerprint.lower().replace(":", ""))
    assert f"trusts as moving: CN=Radiology\\, Hospital A (SHA-256 {fingerprint})" in ppir(
        "certs", "show", tmp_path / "b").stdout
    ppir("certs", "ca", tmp_path / "ca", "--name", "Hospital B CA")
    ppir("certs", "sign", tmp_path / "b/identity.csr", "--ca", tmp_path / "ca", "--out", tmp_path / "b-signed.pem")
    assert "Hospital B" in ppir("certs", "install", tmp_path / "b", tmp_path / "b-signed.pem").stdout
    foreign = ppir("certs", "install", tmp_path / "a", tmp_path / "b-signed.pem", check=False)
    assert foreign.returncode == 2 and "not for the key" in foreign.stderr
    again = ppir("certs", "identity", tmp_path / "a", "--name", "again", check=False)
    assert again.returncode == 2 and "never overwritten" in again.stderr


def test_party_without_identity_or_trust_is_refused(tmp_path):
    done = ppir("dealer", "--listen", "127.0.0.1:0", "--identity", tmp_path / "none", check=False)
    assert done.returncode == 2 and "no identity.key" in done.stderr
    ppir("certs", "identity", tmp_path / "d", "--name", "Dealer")
    done = ppir("dealer", "--listen", "127.0.0.1:0", "--identity", tmp_path / "d", check=False)
    assert done.returncode == 2 and "trusts no moving or fixed party yet" in done.stderr
"""Cancel under Slicer's launcher: the module's runner (PPIRLib.runner) ends the whole process tree.

``PythonSlicer`` is a launcher (CTKAppLauncher) that runs the real interpreter as its own child and
forwards no signal. The stand-in below does the same with ``subprocess.call``, and, as a launcher
may, writes bytes that are not UTF-8 (far more than a pipe holds) before it starts the child.
"""
from __future__ import annotations

import os
import re
import socket
import stat
import sys
import time
from pathlib import Path

import psutil
import pytest

MODULE = Path(__file__).resolve().parents[1] / "PPIRExtension" / "PPIR"
sys.path.insert(0, str(MODULE))

from PPIRLib import loopback  # noqa: E402
from PPIRLib.package import ppir_environment  # noqa: E402
from PPIRLib.runner import PPIRProcess  # noqa: E402

from identities import parties  # noqa: E402

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the stand-in launcher is a POSIX script")

LAUNCHER = '''#!{python}
"""Stand-in for PythonSlicer: noise on both streams, then the real interpreter as a child; no signal forwarded."""
import subprocess, sys
sys.stdout.buffer.write(b"launcher \\xff\\xfe not utf-8\\n"); sys.stdout.flush()
sys.stderr.buffer.write(b"\\xc3\\x28 noise \\x80\\n" * 10000); sys.stderr.flush()
sys.exit(subprocess.call([{python!r}, *sys.argv[1:]]))
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("cancel")
    launcher = folder / "PythonSlicer"
    launcher.write_text(LAUNCHER.format(python=sys.executable))
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    loopback.phantom_pair(folder, size=32)
    parties(folder / "ids", ("moving", "fixed"))
    return {"folder": folder, "launcher": str(launcher)}


def _listening_fixed_party(setup: dict, port: int = 0) -> tuple[PPIRProcess, int]:
    process = PPIRProcess(["fixed", "--image", str(setup["folder"] / "fixed.nrrd"), "--listen", f"127.0.0.1:{port}",
                           "--identity", str(setup["folder"] / "ids/fixed"), "--progress-json"],
                          python=setup["launcher"], env=ppir_environment())
    process.start()
    end = time.monotonic() + 60
    while time.monotonic() < end:
        listening = [e for e in process.poll() if e.get("event") == "listening"]
        if listening:
            return process, listening[0]["port"]
        assert process.running, process.output[-3:]
        time.sleep(0.05)
    raise AssertionError("the fixed party did not listen within 60 s")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_cancel_ends_launcher_and_child_frees_the_port_then_removes_files(setup):
    process, port = _listening_fixed_party(setup)
    launcher = psutil.Process(process._process.pid)
    children = launcher.children(recursive=True)
    assert len(children) == 1 and "ppir" in children[0].cmdline()   # the real ppir runs as the launcher's child
    (process.workdir / "sent.nrrd").write_bytes(b"x")

    started = time.monotonic()
    process.cancel()
    assert time.monotonic() - started < 0.5      # the GUI thread is never held up
    assert process.workdir.exists()
    end = time.monotonic() + 30
    while process.running and time.monotonic() < end:
        time.sleep(0.05)
    assert not process.running
    assert _gone(launcher.pid) and _gone(children[0].pid)
    assert process.error() == "cancelled"
    with socket.socket() as again:               # the port is free again
        again.bind(("127.0.0.1", port))
    process.cleanup()
    assert not process.workdir.exists()


def test_readers_survive_undecodable_and_endless_output(setup):
    """The launcher's 100 kB of invalid UTF-8 neither stops the readers nor blocks the child."""
    process, _ = _listening_fixed_party(setup)
    process.cleanup()
    assert not process.running
    assert any("\ufffd" in line and line.startswith("[stderr]") for line in process.output)
    assert any(line.startswith("launcher \ufffd") for line in process.output)
    assert process.log_text().startswith(setup["launcher"] + " -m ppir fixed")


def test_the_peer_is_told_when_a_party_is_cancelled(setup):
    """A cancelled fixed party closes its connection: the moving party stops at once and says why."""
    fixed, port = _listening_fixed_party(setup)
    moving_image = setup["folder"] / "moving.nrrd"
    moving = PPIRProcess(["moving", "--image", str(moving_image), "--connect", f"127.0.0.1:{port}",
                          "--protocol", "fhe", "--identity", str(setup["folder"] / "ids/moving"), "--levels", "1",
                          "--sampling", "full", "--max-iterations", "200",
                          "--output-transform", "t.h5", "--progress-json"], python=setup["launcher"],
                         env=ppir_environment())
    moving.start()
    end = time.monotonic() + 120
    while not any(e.get("event") == "iteration" for e in moving.poll()) and time.monotonic() < end:
        assert moving.running, moving.output[-3:]
        time.sleep(0.05)
    assert moving.running
    cancelled_at = time.monotonic()
    fixed.cancel()
    moving.wait(60)
    assert time.monotonic() - cancelled_at < 10
    fixed.cleanup()
    moving.cleanup()
    assert fixed.error() == "cancelled"
    assert moving.returncode == 3, moving.output[-3:]
    assert re.search(r"fixed party (closed the connection|lost)", moving.error()), moving.error()

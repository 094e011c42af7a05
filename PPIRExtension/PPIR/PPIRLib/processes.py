"""Start a subprocess without a console window, and end it together with every process it started.

Slicer's ``PythonSlicer`` is a launcher on every platform: it runs the real interpreter as its own
child and forwards no signal, so terminating the launcher alone leaves the registration running.
``stop_tree`` ends the launcher's descendants too (through ``psutil``, one of the module's base
requirements): SIGTERM first, which ``ppir`` turns into an orderly exit that closes its
connections (on Windows, where no signal can be caught, the process ends at once and the peer
sees the connection drop), then a kill for whatever is left after the grace period.
"""
from __future__ import annotations

import os
import subprocess
import time


def hidden_window() -> dict:
    """``Popen`` keyword arguments that keep a console window from opening on Windows (as Slicer's helpers do)."""
    if os.name != "nt":
        return {}
    info = subprocess.STARTUPINFO()
    info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
    info.wShowWindow = 0   # SW_HIDE
    return {"startupinfo": info, "creationflags": subprocess.CREATE_NO_WINDOW}


def require_psutil() -> None:
    """Raise RuntimeError, with the fix, when ``psutil`` (needed to stop a run for real) is missing."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        raise RuntimeError("the Python package psutil is missing: install the PPIR module's requirements "
                           "(Resources/requirements.txt)") from None


def stop_tree(process: subprocess.Popen, grace: float = 5.0) -> None:
    """End ``process`` and all its descendants; return once every one of them has exited.

    The root is suspended while its descendants are listed, so a launcher cannot start its child
    in between. Descendants and root get SIGTERM (TerminateProcess on Windows) together; those
    alive after ``grace`` seconds are killed.
    """
    import psutil
    tree: list = []
    try:
        root = psutil.Process(process.pid)
        root.suspend()
        try:
            tree = root.children(recursive=True)
        finally:
            root.resume()
    except psutil.Error:   # the root has exited already (or is a zombie): nothing left to list
        pass
    for member in tree:
        try:
            member.terminate()
        except psutil.Error:
            pass
    if process.poll() is None:
        process.terminate()
    deadline = time.monotonic() + grace
    _, alive = psutil.wait_procs(tree, timeout=grace)
    try:
        process.wait(max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        process.kill()
    for member in alive:
        try:
            member.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)
    process.wait()

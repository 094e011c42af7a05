"""Run a ``ppir`` command in a subprocess of Slicer's own Python, as SlicerElastix runs elastix.

The command's ``--progress-json`` lines are read on background threads and handed out by ``poll``
(so the GUI thread never blocks); every other output line is kept for the detailed log. Readers
decode with replacement characters, so no byte sequence can stop them (a stopped reader would
let the pipe fill and block the child). ``cancel`` ends the whole process tree without waiting;
``running`` stays true until every process of it has exited. ``error`` turns the outcome into
the message the user sees. Temporary files live in ``workdir`` and are removed by ``cleanup``,
after the processes have exited. Processes still running when Python exits (Slicer closing) are
stopped then.
"""
from __future__ import annotations

import atexit
import json
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import weakref
from pathlib import Path
from typing import IO

from .processes import hidden_window, require_psutil, stop_tree

ERROR_PREFIX = "ppir: error: "
_LIVE: weakref.WeakSet = weakref.WeakSet()


class PPIRProcess:
    """One ``python -m ppir ...`` run with JSON progress events."""

    def __init__(self, args: list[str], python: str = sys.executable, workdir: Path | None = None,
                 env: dict[str, str] | None = None, grace: float = 5.0, temp_root: Path | None = None):
        self.args = list(args)
        self.python = python
        self.env = env
        self.grace = grace
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="ppir-slicer-", dir=temp_root))
        self.output: list[str] = []   # every line that is not a progress event, stderr lines prefixed
        self._stderr: list[str] = []
        self._events: queue.Queue[dict] = queue.Queue()
        self._process: subprocess.Popen | None = None
        self._readers: list[threading.Thread] = []
        self._stopper: threading.Thread | None = None
        self.cancelled = False

    @property
    def command(self) -> list[str]:
        return [self.python, "-m", "ppir", *self.args]

    def start(self) -> None:
        require_psutil()
        self._process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, cwd=self.workdir, env=self.env, **hidden_window())
        _LIVE.add(self)
        self._readers = [threading.Thread(target=self._read, args=(self._process.stdout, False), daemon=True),
                         threading.Thread(target=self._read, args=(self._process.stderr, True), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[bytes], is_stderr: bool) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not is_stderr and line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
                if isinstance(event, dict):
                    self._events.put(event)
                    continue
            if is_stderr:
                self._stderr.append(line)
            self.output.append(f"[stderr] {line}" if is_stderr else line)
        stream.close()

    def poll(self) -> list[dict]:
        """Progress events received since the last call (never blocks)."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    @property
    def running(self) -> bool:
        """True until the process and, after a cancel, every process it started have exited."""
        if self._process is None:
            return False
        return self._process.poll() is None or (self._stopper is not None and self._stopper.is_alive())

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def wait(self, timeout: float | None = None) -> int:
        code = self._process.wait(timeout)
        if self._stopper is not None:
            self._stopper.join(timeout)
        for reader in self._readers:
            reader.join(2)
        return code

    def cancel(self, wait: bool = False) -> None:
        """Stop the process tree: at once in the background, or (``wait``) before returning."""
        if self._process is None:
            return
        if self._stopper is None and self._process.poll() is None:
            self.cancelled = True
            self._stopper = threading.Thread(target=self._stop, daemon=True)
            self._stopper.start()
        if wait and self._stopper is not None:
            self._stopper.join()

    def _stop(self) -> None:
        try:
            stop_tree(self._process, self.grace)
        except Exception:   # never leave the root running, whatever psutil ran into
            self._process.kill()
            self._process.wait()

    def error(self) -> str | None:
        """None if the command succeeded, "cancelled" after a cancel, else the command's own message."""
        code = self.returncode
        if code in (None, 0):
            return None
        if self.cancelled:
            return "cancelled"
        for line in reversed(self._stderr):
            if line.startswith(ERROR_PREFIX):
                return line[len(ERROR_PREFIX):]
        last = next((line.strip() for line in reversed(self._stderr) if line.strip()), "")
        return f"ppir stopped with exit code {code}" + (f": {last}" if last else "")

    def log_text(self) -> str:
        """The command line and all its output: what the detailed log shows after a failure."""
        return "\n".join([" ".join(self.command), *self.output])

    def cleanup(self, keep_files: bool = False) -> None:
        """Stop the process tree if needed, then (unless ``keep_files``) remove the temporary folder."""
        self.cancel(wait=True)
        _LIVE.discard(self)
        if not keep_files:
            shutil.rmtree(self.workdir, ignore_errors=True)


@atexit.register
def _stop_live_processes() -> None:
    """Slicer is closing: no ``ppir`` process may outlive it."""
    for process in list(_LIVE):
        process.cleanup()

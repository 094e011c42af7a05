"""Run a ``ppir`` command in a subprocess of Slicer's own Python, as SlicerElastix runs elastix.

The command's ``--progress-json`` lines are read on a background thread and handed out by ``poll``
(so the GUI thread never blocks); ``cancel`` stops the process for real (SIGTERM, then SIGKILL);
``error`` turns the command's ``ppir: error: ...`` line into the message the user sees, never a
traceback. Temporary files (volumes handed over, certificates) live in ``workdir`` and are removed
by ``cleanup`` whatever happened.
"""
from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path


class PPIRProcess:
    """One ``python -m ppir ...`` run with JSON progress events."""

    def __init__(self, args: list[str], python: str = sys.executable, workdir: Path | None = None,
                 env: dict[str, str] | None = None):
        self.args = list(args)
        self.python = python
        self.env = env
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="ppir-slicer-"))
        self._events: queue.Queue[dict] = queue.Queue()
        self._stderr: list[str] = []
        self._process: subprocess.Popen | None = None
        self._readers: list[threading.Thread] = []

    def start(self) -> None:
        self._process = subprocess.Popen([self.python, "-m", "ppir", *self.args], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, cwd=self.workdir,
                                         env=self.env)
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        for line in self._process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                self._events.put(event)

    def _read_stderr(self) -> None:
        for line in self._process.stderr:
            self._stderr.append(line.rstrip("\n"))

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
        return self._process is not None and self._process.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        code = self._process.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def cancel(self, grace: float = 5.0) -> None:
        """Stop the process and its work now."""
        if not self.running:
            return
        self._process.terminate()
        try:
            self._process.wait(grace)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def error(self) -> str | None:
        """The command's own error message, or None if it succeeded."""
        if self._process is None or self._process.poll() in (None, 0):
            return None
        for line in reversed(self._stderr):
            if line.startswith("ppir: error: "):
                return line[len("ppir: error: "):]
        if self._process.returncode < 0 or self._process.returncode == 130:
            return "cancelled"
        return f"ppir stopped with exit code {self._process.returncode}"

    def cleanup(self) -> None:
        """Stop the process if needed and remove the temporary files."""
        self.cancel()
        shutil.rmtree(self.workdir, ignore_errors=True)

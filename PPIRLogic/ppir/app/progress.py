"""Progress of a registration: a bar on a terminal, or JSON lines for programs (the Slicer module)."""
from __future__ import annotations

import json
import sys
from typing import TextIO


class TerminalBar:
    """One line per level, redrawn in place on a terminal (stderr)."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30):
        self.stream, self.width = stream, width
        self._current: tuple | None = None

    def __call__(self, event: dict) -> None:
        key = (event["stage"], event["level"])
        if self._current is not None and key != self._current:
            self.stream.write("\n")
        self._current = key
        done = event["iteration"] / event["max_iterations"]
        filled = int(round(self.width * done))
        size = "x".join(str(n) for n in event["size"])
        self.stream.write(f"\r{event['stage']:>7} level {event['level']}/{event['levels']} ({size}) "
                          f"[{'#' * filled}{'.' * (self.width - filled)}] it {event['iteration']:3d} "
                          f"{event.get('metric', 'ssd').upper()} {event.get('value', event['ssd']):.4g}")
        self.stream.flush()

    def close(self) -> None:
        if self._current is not None:
            self.stream.write("\n")
            self.stream.flush()


class FixedPartyBar:
    """The fixed party's view on a terminal: one line per level, with products answered and traffic."""

    def __init__(self, stream: TextIO = sys.stderr):
        self.stream = stream
        self._level: int | None = None
        self._size = ""

    def __call__(self, event: dict) -> None:
        if event["event"] == "level":
            if self._level is not None:
                self.stream.write("\n")
            self._level, self._size = event["level"], "x".join(str(n) for n in event["size"])
            self.stream.write(f"\rlevel {self._level} ({self._size}): waiting for the moving party")
        elif event["event"] == "product":
            self.stream.write(f"\rlevel {self._level} ({self._size}): {event['products']:3d} products answered, "
                              f"{event['bytes_received'] / 1e6:8.1f} MB received")
        elif event["event"] == "done":   # the session's end: the next session starts a fresh line
            self.close()
            self._level = None
        self.stream.flush()

    def close(self) -> None:
        if self._level is not None:
            self.stream.write("\n")
            self.stream.flush()


class JsonEvents:
    """Events as JSON lines on stdout (the fixed party's --progress-json)."""

    def __init__(self, stream: TextIO = sys.stdout):
        self.stream = stream

    def __call__(self, event: dict) -> None:
        self.stream.write(json.dumps(event) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class JsonLines:
    """One JSON object per iteration on stdout: {"event": "iteration", ...}."""

    def __init__(self, stream: TextIO = sys.stdout):
        self.stream = stream

    def __call__(self, event: dict) -> None:
        self.stream.write(json.dumps({"event": "iteration", **event}) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass

"""Output files written whole or not at all, and the checks made before long work starts."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ppir.common.errors import PPIRError


def check_output_path(path: str | os.PathLike) -> None:
    """Raise PPIRError if a file cannot be written at ``path`` (checked before long work starts)."""
    folder = Path(path).absolute().parent
    if not folder.is_dir():
        raise PPIRError(f"output '{path}': folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK):
        raise PPIRError(f"output '{path}': folder '{folder}' is not writable")


class OutputBatch:
    """Files written to temporary names and renamed into place together: all of them or none.

    ``add(path, write)`` calls ``write(tmp_path)`` at once; ``commit()`` renames every file; leaving
    the ``with`` block without committing (an error) removes every temporary file.
    """

    def __init__(self):
        self._staged: list[tuple[str, Path]] = []

    def add(self, path: str | os.PathLike, write) -> None:
        path = Path(path)
        check_output_path(path)
        fd, tmp = tempfile.mkstemp(prefix=".ppir-", suffix="".join(path.suffixes), dir=path.parent)
        os.close(fd)
        self._staged.append((tmp, path))
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)

    def commit(self) -> None:
        for tmp, path in self._staged:
            os.replace(tmp, path)
        self._staged = []

    def discard(self) -> None:
        for tmp, _ in self._staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._staged = []

    def __enter__(self) -> "OutputBatch":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


def write_atomically(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``: no partial file on failure."""
    with OutputBatch() as batch:
        batch.add(path, write)
        batch.commit()

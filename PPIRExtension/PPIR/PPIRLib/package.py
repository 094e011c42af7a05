"""Where the ``ppir`` package is, and how to run it with Slicer's Python."""
from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

MODULE_DIR = Path(__file__).resolve().parents[1]
PPIR_PYTHON = (3, 11)   # what the ppir package needs (PPIRLogic/pyproject.toml)


def ppir_root() -> Path | None:
    """The folder holding the ``ppir`` package when it is not installed in site-packages.

    An installed extension carries ``ppir/`` next to ``PPIR.py``; a source checkout added through
    "Additional module paths" has it in ``PPIRLogic/``.
    """
    for root in (MODULE_DIR, MODULE_DIR.parents[1] / "PPIRLogic"):
        if (root / "ppir" / "__init__.py").is_file():
            return root
    return None


def ppir_environment() -> dict[str, str]:
    """The environment for a ``python -m ppir`` subprocess: ours, with ``ppir`` findable."""
    env = dict(os.environ)
    root = ppir_root()
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    elif importlib.util.find_spec("ppir") is None:
        raise RuntimeError("the ppir package is missing from this PPIR module")
    return env


def python_executable() -> str:
    """Slicer's Python launcher (PythonSlicer) inside Slicer, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def check_python(version: tuple = tuple(sys.version_info[:2])) -> None:
    """Refuse, with the reason, a Slicer whose Python is older than the ppir package needs."""
    if tuple(version) < PPIR_PYTHON:
        raise RuntimeError(f"PPIR needs Python {PPIR_PYTHON[0]}.{PPIR_PYTHON[1]} or later (Slicer 5.10 or later); "
                           f"this Slicer's Python is {version[0]}.{version[1]}")


def settings_contract() -> ModuleType:
    """``ppir.app.contract``: every choice the panel offers, declared once by ``ppir`` (standard library only)."""
    root = ppir_root()
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("ppir.app.contract")

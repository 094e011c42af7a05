"""Which Python packages each protocol needs, and which of them this Python lacks.

The lists are the module's ``Resources/requirements*.txt``: the base set for every run, one more
file per private protocol, and packages that must be installed without their declared
dependencies (CrypTen 0.4.1 declares some that no longer install).
"""
from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

RESOURCES = Path(__file__).resolve().parents[1] / "Resources"
_SPEC = re.compile(r"^([A-Za-z0-9_.\-]+)\s*(?:==\s*([A-Za-z0-9_.+\-]+))?\s*$")


def requirement_files(protocol: str) -> dict[str, list[Path]]:
    """``{"normal": [...], "no_deps": [...]}``: the requirement files ``protocol`` needs."""
    normal = [RESOURCES / "requirements.txt"]
    extra = RESOURCES / f"requirements-{protocol}.txt"
    if extra.is_file():
        normal.append(extra)
    no_deps = RESOURCES / f"requirements-{protocol}-no-deps.txt"
    return {"normal": normal, "no_deps": [no_deps] if no_deps.is_file() else []}


def read_requirements(path: Path) -> list[str]:
    """The ``name`` or ``name==version`` lines of a requirements file (comments dropped)."""
    lines = [line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines()]
    specs = [line for line in lines if line]
    for spec in specs:
        if not _SPEC.match(spec):
            raise ValueError(f"{path}: only 'name' or 'name==version' lines are supported, not '{spec}'")
    return specs


def unmet(specs: list[str]) -> list[str]:
    """The specs this Python does not satisfy (missing, or another version than pinned)."""
    missing = []
    for spec in specs:
        name, version = _SPEC.match(spec).groups()
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(spec)
            continue
        if version and installed.split("+")[0] != version:
            missing.append(spec)
    return missing


def missing_for(protocol: str) -> dict[str, list[str]]:
    """``{"normal": [...], "no_deps": [...]}``: what to install before running ``protocol``."""
    return {kind: unmet([spec for path in paths for spec in read_requirements(path)])
            for kind, paths in requirement_files(protocol).items()}

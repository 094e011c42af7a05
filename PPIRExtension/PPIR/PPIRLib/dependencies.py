"""Which Python packages each protocol needs, which of them this Python lacks, and where they install.

The lists are the module's ``Resources/requirements*.txt``: the base set for every run, one more
file per private protocol, and packages that must be installed without their declared
dependencies (CrypTen 0.4.1 declares some that no longer install). PyTorch, which MPC needs, is
not among them: it comes from Slicer's PyTorch extension, which picks the build for the machine
and is shared with other extensions (``torch_problem`` says what is wrong with the one present).
"""
from __future__ import annotations

import importlib.metadata
import platform
import re
from pathlib import Path

RESOURCES = Path(__file__).resolve().parents[1] / "Resources"
_CLAUSE = r"(==|>=|<)\s*([A-Za-z0-9_.+\-]+)"
_SPEC = re.compile(rf"^([A-Za-z0-9_.\-]+)\s*((?:{_CLAUSE}\s*,?\s*)*)$")
TORCH_MINIMUM = (2, 0)
# Platforms with wheels for Slicer's Python 3.12 (pip download --only-binary :all:, docs/slicer-extension.md):
# (system, machine) -> oldest macOS release, or None off macOS.
WHEELS = {
    "tenseal": {("Windows", "AMD64"): None, ("Linux", "x86_64"): None, ("Linux", "aarch64"): None,
                ("Darwin", "x86_64"): (13, 0), ("Darwin", "arm64"): (14, 0)},
    "torch": {("Windows", "AMD64"): None, ("Linux", "x86_64"): None, ("Linux", "aarch64"): None,
              ("Darwin", "x86_64"): (10, 9), ("Darwin", "arm64"): (11, 0)},
}
NEEDS = {"fhe": ("tenseal",), "mpc": ("torch",)}


def requirement_files(protocol: str) -> dict[str, list[Path]]:
    """``{"normal": [...], "no_deps": [...]}``: the requirement files ``protocol`` needs."""
    normal = [RESOURCES / "requirements.txt"]
    extra = RESOURCES / f"requirements-{protocol}.txt"
    if extra.is_file():
        normal.append(extra)
    no_deps = RESOURCES / f"requirements-{protocol}-no-deps.txt"
    return {"normal": normal, "no_deps": [no_deps] if no_deps.is_file() else []}


def read_requirements(path: Path) -> list[str]:
    """The requirement lines of a file: a name, then ``==V``, ``>=V``, ``<V`` clauses, comma-separated."""
    lines = [line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines()]
    specs = [line for line in lines if line]
    for spec in specs:
        if not _SPEC.match(spec):
            raise ValueError(f"{path}: only 'name' with '==V', '>=V' or '<V' clauses is supported, not '{spec}'")
    return specs


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def _satisfies(installed: str, operator: str, version: str) -> bool:
    if operator == "==":
        return installed.split("+")[0] == version
    return (_release(installed) >= _release(version)) == (operator == ">=")


def unmet(specs: list[str]) -> list[str]:
    """The specs this Python does not satisfy (missing, or a version outside the spec's clauses)."""
    missing = []
    for spec in specs:
        name, clauses = _SPEC.match(spec).group(1, 2)
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(spec)
            continue
        if not all(_satisfies(installed, *clause) for clause in re.findall(_CLAUSE, clauses)):
            missing.append(spec)
    return missing


def missing_for(protocol: str) -> dict[str, list[str]]:
    """``{"normal": [...], "no_deps": [...]}``: what to install before running ``protocol``."""
    return {kind: unmet([spec for path in paths for spec in read_requirements(path)])
            for kind, paths in requirement_files(protocol).items()}


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_problem(installed: str | None = "this Python's") -> str | None:
    """Why a PyTorch (by default this Python's) cannot serve MPC (missing or too old), or None."""
    installed = installed_version("torch") if installed == "this Python's" else installed
    if installed is None:
        return "PyTorch is not installed"
    if _release(installed) < TORCH_MINIMUM:
        return (f"MPC needs PyTorch {TORCH_MINIMUM[0]}.{TORCH_MINIMUM[1]} or later; this Slicer has {installed}: "
                f"update it in the PyTorch Utils module")
    return None


def wheel_problem(package: str, system: str, machine: str, mac_release: tuple[int, ...] = ()) -> str | None:
    """Why ``package`` has no wheel for Slicer's Python on this system and machine, or None."""
    platforms = WHEELS[package]
    if (system, machine) not in platforms:
        return f"{package} publishes no package for {system} {machine}"
    oldest = platforms[(system, machine)]
    if oldest is not None and tuple(mac_release) < oldest:
        return f"{package} needs macOS {'.'.join(map(str, oldest))} or later"
    return None


def unsupported(protocol: str) -> str | None:
    """Why ``protocol`` cannot be installed here, said before anyone tries, or None.

    Packages already installed (built by hand, say) count as available wherever they are.
    """
    here = (platform.system(), platform.machine(), _release(platform.mac_ver()[0] or "0"))
    for package in NEEDS.get(protocol, ()):
        problem = None if installed_version(package) else wheel_problem(package, *here)
        if problem:
            return f"{protocol.upper()} cannot be installed on this computer: {problem}"
    return None

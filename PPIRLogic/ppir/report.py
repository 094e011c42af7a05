"""The registration report (JSON): settings, per-level figures, per-party cost, the final transform."""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .backend import PartyStats
from .driver import Result, Settings


def versions() -> dict:
    import scipy
    return {"ppir": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "SimpleITK": sitk.Version_VersionString()}


def transform_parameters(result: Result) -> dict:
    """The final transform as plain numbers (its file is the exact record)."""
    model = result.model
    if model.kind == "bspline":
        g = model.control.grid
        return {"type": "affine+bspline", "affine_matrix": model.affine.tolist(),
                "affine_translation": model.translation.tolist(), "center": model.center.tolist(),
                "control_grid": g.to_dict(), "coefficients": result.parameters.tolist()}
    a, t = model.matrix(result.parameters)
    return {"type": model.kind, "parameters": result.parameters.tolist(), "matrix": a.tolist(),
            "translation": t.tolist(), "center": model.center.tolist()}


def peak_memory_mb() -> float:
    """This process's peak resident memory so far, in MB (0 where the platform does not say).

    On Linux this is the VmHWM of /proc/self/status: ``getrusage``'s ``ru_maxrss`` would also count the
    parent process's memory at the time it started this one.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1024   # bytes on macOS, KiB elsewhere


def build_report(protocol: str, settings: Settings, result: Result, wall_time_s: float,
                 parties: dict[str, PartyStats], inputs: dict, outputs: dict) -> dict:
    return {
        "protocol": protocol,
        "transform_model": settings.transform,
        "settings": {k: v for k, v in settings.__dict__.items()},
        "levels": [level.to_dict() for level in result.levels],
        "iterations": result.iterations,
        "joint_products": sum(level.joint_products for level in result.levels),
        "final_ssd": result.final_ssd,
        "wall_time_s": wall_time_s,
        "peak_memory_mb": peak_memory_mb(),
        "parties": {name: stats.to_dict() for name, stats in parties.items()},
        "parameters": transform_parameters(result),
        "inputs": inputs,
        "outputs": outputs,
        "versions": versions(),
    }


def dumps(report: dict) -> str:
    return json.dumps(report, indent=2)

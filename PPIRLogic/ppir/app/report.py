"""The registration report (JSON): settings, per-level figures, per-party cost, the final transform."""
from __future__ import annotations

import json
import math
import platform

import numpy as np
import SimpleITK as sitk

from ppir.common.usage import peak_memory_mb
from ppir.common.version import __version__
from ppir.engine.driver import Result
from ppir.engine.joint import PartyStats
from ppir.engine.settings import Settings


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


def build_report(protocol: str, settings: Settings, result: Result, wall_time_s: float,
                 parties: dict[str, PartyStats], inputs: dict, outputs: dict) -> dict:
    return {
        "protocol": protocol,
        "transform_model": settings.transform,
        "metric": result.metric,
        "final_value": result.final_value,
        "settings": {k: v for k, v in settings.__dict__.items()},
        "plan": result.plan,
        "levels": [level.to_dict() for level in result.levels],
        "iterations": result.iterations,
        "joint_products": sum(level.joint_products for level in result.levels),
        "final_ssd": None if math.isnan(result.final_ssd) else result.final_ssd,     # unknown to MI
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

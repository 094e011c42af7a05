"""Helpers shared by the MPC and FHE tests: a clear and a private run of the same registration."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import SimpleITK as sitk
from ppir.engine.disclosure import DisclosurePolicy
from ppir.engine.evaluate import disagreement

PY = [sys.executable, "-m", "ppir"]


def noiseless_policy(folder) -> str:
    """The default disclosure policy without its noise, as a file: private and clear runs then agree exactly."""
    path = folder / "noiseless-policy.toml"
    replace(DisclosurePolicy(), noise_multiplier=0.0, max_epsilon=math.inf).write(path)
    return str(path)


def clear_and_private(protocol: str, fixed, moving, folder, *options) -> dict:
    """`ppir register` in the clear and under ``protocol`` (default policy, no noise); returns the private report."""
    policy = noiseless_policy(folder)
    for name in ("clear", protocol):
        done = subprocess.run(PY + ["register", "--fixed", str(fixed), "--moving", str(moving), *map(str, options),
                                    "--disclosure-policy", policy,
                                    "--protocol", name, "--output-transform", str(folder / f"{name}.h5"),
                                    "--report", str(folder / f"{name}.json")],
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
    return json.loads((folder / f"{protocol}.json").read_text())


def transform_rmse(a, b, grid) -> float:
    """RMSE (mm) between two transform files over every voxel of a grid (background included)."""
    return disagreement(sitk.ReadTransform(str(a)), sitk.ReadTransform(str(b)), grid)["rmse"]

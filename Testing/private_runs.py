"""Helpers shared by the MPC and FHE tests: a clear and a private run of the same registration."""
from __future__ import annotations

import json
import subprocess
import sys

import SimpleITK as sitk
from ppir.engine.disclosure import DisclosurePolicy
from ppir.engine.evaluate import disagreement

PY = [sys.executable, "-m", "ppir"]


def policy_free(folder) -> str:
    """A disclosure policy file that limits nothing: the protocols compared as such (the policy has its own tests)."""
    path = folder / "policy-free.toml"
    DisclosurePolicy.off().write(path)
    return str(path)


def clear_and_private(protocol: str, fixed, moving, folder, *options) -> dict:
    """`ppir register` in the clear and under ``protocol``, without a disclosure policy; returns the private report."""
    policy = policy_free(folder)
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

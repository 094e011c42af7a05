"""The engine benchmark keeps working (its figures are printed by `ppir bench`, not asserted here)."""
from __future__ import annotations

from ppir.bench import ENGINE_CASES, markdown, run_case


def test_smallest_engine_case_runs_with_simpleitk_reference():
    case = next(c for c in ENGINE_CASES if c.name == "2D affine")
    row = run_case(case, log=lambda *_: None)
    assert row["initial_tre_mm"] > row["ppir_tre_mm"]["mean"]
    assert row["simpleitk_tre_mm"]["voxels"] == row["ppir_tre_mm"]["voxels"]
    table = markdown({"cases": [row], "full_resolution_iteration": {"voxels": 1, "level_setup_s": 0.0,
                                                                    "median_iteration_s": 0.0}})
    assert "| 2D affine | 256x256 |" in table

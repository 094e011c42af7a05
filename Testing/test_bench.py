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


def test_mpc_suite_runs_and_agrees_with_clear():
    from ppir.bench import mpc_markdown, run_mpc_suite
    results = run_mpc_suite(None, log=lambda *_: None)
    runs = {row["run"]: row for row in results["runs"]}
    assert set(runs) == {"clear", "mpc", "mpc, URS", "fhe, URS"}
    assert runs["fhe, URS"]["rmse_vs_clear_mm"] < 0.05
    assert runs["mpc"]["rmse_vs_clear_mm"] < 0.05 and runs["mpc"]["moving_mb_per_product"] > 0
    assert "| mpc | 1260x1090 |" in mpc_markdown(results)

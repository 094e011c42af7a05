"""The engine benchmark keeps working (its figures are printed by `ppir bench`, not asserted here)."""
from __future__ import annotations

from ppir_bench.engine import ENGINE_CASES, markdown, run_case


def test_smallest_engine_case_runs_with_simpleitk_reference():
    case = next(c for c in ENGINE_CASES if c.name == "2D affine")
    row = run_case(case, log=lambda *_: None)
    assert row["initial_tre_mm"] > row["ppir_tre_mm"]["mean"]
    assert row["simpleitk_tre_mm"]["voxels"] == row["ppir_tre_mm"]["voxels"]
    table = markdown({"cases": [row], "full_resolution_iteration": {"voxels": 1, "level_setup_s": 0.0,
                                                                    "median_iteration_s": 0.0}})
    assert "| 2D affine | 256x256 |" in table


def test_mpc_suite_runs_and_agrees_with_clear():
    from ppir_bench.engine import mpc_markdown, run_mpc_suite
    results = run_mpc_suite(None, log=lambda *_: None)
    runs = {row["run"]: row for row in results["runs"]}
    assert set(runs) == {"clear", "mpc", "mpc, URS", "fhe, URS"}
    assert runs["fhe, URS"]["rmse_vs_clear_mm"] < 0.05
    assert runs["mpc"]["rmse_vs_clear_mm"] < 0.05 and runs["mpc"]["moving_mb_per_product"] > 0
    assert "| mpc | 1260x1090 |" in mpc_markdown(results)


def test_smallest_suite_case_writes_tables_and_plots(tmp_path, monkeypatch):
    """`ppir bench --suite quick|full` end to end on its smallest pair (64x64), one sampling, and two tiny
    scaling sizes."""
    from ppir.app import data
    from ppir_bench import suite as benchsuite
    smallest = benchsuite.Suite(pairs=(benchsuite.Pair("2D brain slice", data.SLICE_2D, 4, "1", ("full",), 32.0),),
                                scaling_shrinks=(16, 12), repeats=1, paper_size_pair=False)
    monkeypatch.setitem(benchsuite.SUITES, "smallest", smallest)
    monkeypatch.setattr(benchsuite, "SAMPLINGS", ("gms",))      # one sampling: every run is a new process
    out = tmp_path / "out"
    results = benchsuite.run_suite("smallest", out, log=lambda *_: None)
    assert sorted(p.name for p in out.iterdir()) == ["matrix.png", "results.json", "results.md", "scaling.png"]
    assert all((out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in ("matrix.png", "scaling.png"))
    rows = results["pairs"][0]["runs"]
    assert {(r["transform"], r["protocol"], r["sampling"]) for r in rows} == (
        {("affine", p, s) for p in benchsuite.PROTOCOLS for s in benchsuite.SAMPLINGS}
        | {("bspline", p, "full") for p in benchsuite.PROTOCOLS})
    for row in rows:
        assert row["iterations"] > 0 and row["moving"]["peak_mb"] > 50
        if row["protocol"] != "clear":
            assert row["moving"]["mb"] > 0 and row["fixed"]["peak_mb"] > 50
        if row["protocol"] != "clear":
            assert row["rmse_vs_clear_mm"] < 0.05
    assert results["pairs"][0]["peers"][0]["protocol"] == "SimpleITK"
    assert {p["protocol"] for p in results["scaling"]["points"]} == set(benchsuite.PROTOCOLS)
    text = (out / "results.md").read_text()
    assert "| affine | fhe | gms |" in text and "Fitted power laws" in text and "Table 3" in text


def test_multimodal_suite_runs_a_metric_under_a_protocol(tmp_path):
    """`ppir bench --suite multimodal` on one pair at 4 mm (its peers are SimpleITK's and elastix's own code):
    NCC in the clear recovers most of the misalignment, and the table row names pair, metric and protocol; with
    the fixed party's head mask NCC gets closer."""
    from ppir_bench.multimodal import PAIRS, _fixed_source, markdown, run_pair
    source, tissues = _fixed_source(4)
    pair = run_pair(PAIRS[0], source, tissues, tmp_path, lambda *_: None, protocols=("clear",), metrics=("ncc",),
                    with_peers=False)
    (run,) = pair["runs"]
    assert run["tre_mm"] < 0.5 * pair["initial_tre_mm"] and run["traffic_mb"] == 0
    assert f"| T1 through a scanner curve | affine | ncc | clear | {run['tre_mm']:.3f} |" in markdown({"pairs": [pair]})
    # the same pair with the fixed party's head mask: closer, and SimpleITK's peer is given the same mask
    masked = run_pair(PAIRS[1], source, tissues, tmp_path / "masked", lambda *_: None, protocols=("clear",))
    assert (tmp_path / "masked" / "head-mask.nrrd").exists() and masked["runs"][0]["tre_mm"] < run["tre_mm"]
    assert [p["metric"] for p in masked["peers"]] == ["Mattes MI, the same mask"]


def test_multimodal_suite_starts_a_bspline_pair_at_the_truth_as_well(tmp_path):
    """On a B-spline pair each metric also runs from the truth (the moving image resampled through it, registered
    from the identity): the row's TRE is its distance from the truth, far under the pair's initial misalignment."""
    from ppir_bench.multimodal import Pair, _fixed_source, markdown, run_pair
    source, tissues = _fixed_source(4)
    pair = run_pair(Pair("T1", "same", 0, "bspline", metrics=("ssd",)), source, tissues, tmp_path, lambda *_: None,
                    protocols=("clear",), with_peers=False)
    start, at_truth = pair["runs"]
    assert at_truth["protocol"] == "clear, started at the truth" and (tmp_path / "moving-at-truth.nrrd").exists()
    assert at_truth["tre_mm"] < 0.1 * pair["initial_tre_mm"] and start["tre_mm"] < 0.1 * pair["initial_tre_mm"]
    assert f"| T1 | bspline | ssd | clear, started at the truth | {at_truth['tre_mm']:.3f} |" in markdown({"pairs": [pair]})

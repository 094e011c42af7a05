"""Benchmarks that print figures: accuracy and speed of the engine against SimpleITK's own registration.

``ppir bench --suite engine`` registers synthetic pairs made from the real sample images with known
truth, with PPIR (clear backend) and with SimpleITK's ``ImageRegistrationMethod`` (affine, mean
squares, the same pyramid), and times full-resolution Gauss-Newton iterations on the 1 mm volume.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from ppir.app import data
from ppir.app.job import register_files
from ppir.app.outputs import Outputs
from ppir.app.report import versions
from ppir.app.synth import synthesize
from ppir.common.files import write_atomically
from ppir.engine.disclosure import DisclosurePolicy
from ppir.engine.driver import Level, register
from ppir.engine.evaluate import disagreement, tre
from ppir.engine.image import Grid, Volume, read_image
from ppir.engine.joint import ClearBackend
from ppir.engine.linear import LinearModel
from ppir.engine.moving_image import MovingLevel
from ppir.engine.pyramid import LevelSpec, level_image
from ppir.engine.settings import Settings

from ppir_bench.paper import table_2_row


@dataclass(frozen=True)
class Case:
    name: str
    image: str
    shrink: int
    truth: str
    transform: str
    noise: float = 0.0
    bias: bool = False
    settings: dict = field(default_factory=dict)
    simpleitk: bool = True


ENGINE_CASES = (
    Case("3D affine, 1 mm", "mni152_t1_1mm.nii.gz", 1, "affine", "affine"),
    Case("3D affine, 1 mm, noise + bias", "mni152_t1_1mm.nii.gz", 1, "affine", "affine", 0.02, True),
    Case("3D affine, 1 mm, URS 10%", "mni152_t1_1mm.nii.gz", 1, "affine", "affine",
         settings={"sampling": "urs", "sample_fraction": 0.1}, simpleitk=False),
    Case("3D B-spline, 2 mm", "mni152_t1_1mm.nii.gz", 2, "bspline", "bspline", simpleitk=False),
    Case("2D affine", data.SLICE_2D, 1, "affine", "affine"),
    Case("2D affine, noise + bias", data.SLICE_2D, 1, "affine", "affine", 0.02, True),
    Case("2D B-spline", data.SLICE_2D, 1, "bspline", "bspline", settings={"bspline_spacing_mm": 16.0},
         simpleitk=False),
)


def shrunk(image: Volume, factor: int) -> Volume:
    """``image`` at ``factor`` times its voxel size, smoothed as a pyramid level is (sigma 0.5 x factor voxels);
    itself at factor 1."""
    return level_image(image, LevelSpec(factor, 0.5 * factor)) if factor > 1 else image


def simpleitk_affine(fixed: Volume, moving: Volume, levels: list[int], mattes_bins: int | None = None,
                     sample_fraction: float | None = None, iterations: int = 200, seed: int = 1,
                     fixed_mask: Volume | None = None) -> sitk.Transform:
    """SimpleITK's registration with the same pyramid, affine: mean squares, or Mattes MI over ``mattes_bins``;
    all voxels, or a random ``sample_fraction`` of them; only inside ``fixed_mask`` if one is given."""
    f, m = fixed.to_sitk(), moving.to_sitk()
    initial = sitk.CenteredTransformInitializer(f, m, sitk.AffineTransform(fixed.dim),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = sitk.ImageRegistrationMethod()
    if mattes_bins is None:
        method.SetMetricAsMeanSquares()
    else:
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=mattes_bins)
    if sample_fraction is None:
        method.SetMetricSamplingStrategy(method.NONE)
    else:
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(sample_fraction, seed)
    if fixed_mask is not None:
        method.SetMetricFixedMask(sitk.Cast(fixed_mask.to_sitk(), sitk.sitkUInt8))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=iterations,
                                                    gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(levels)
    method.SetSmoothingSigmasPerLevel([0.5 * s if s > 1 else 0.0 for s in levels])
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(f, m)


def _pair(case: Case, folder: Path, seed: int) -> tuple[Volume, Volume, sitk.Transform]:
    source = shrunk(read_image(data.sample_path(case.image)), case.shrink)
    synthesize(source, case.truth, seed, folder, case.noise, case.bias)
    return (read_image(folder / "fixed.nrrd"), read_image(folder / "moving.nrrd"),
            sitk.ReadTransform(str(folder / "ground_truth.h5")))


def run_case(case: Case, seed: int = 1, log=print) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        fixed, moving, truth = _pair(case, Path(tmp), seed)
    settings = Settings(transform=case.transform, **case.settings)
    row = {"case": case.name, "size": list(fixed.grid.size), "spacing_mm": fixed.grid.spacing.tolist(),
           "initial_tre_mm": tre(fixed, sitk.Transform(fixed.dim, sitk.sitkIdentity), truth)["mean"]}
    start = time.perf_counter()
    result = register(moving, ClearBackend(fixed), settings)
    row["ppir_time_s"] = time.perf_counter() - start
    row["ppir_tre_mm"] = tre(fixed, result.transform, truth)
    row["ppir_iterations"] = result.iterations
    if case.simpleitk:
        start = time.perf_counter()
        reference = simpleitk_affine(fixed, moving, settings.levels)
        row["simpleitk_time_s"] = time.perf_counter() - start
        row["simpleitk_tre_mm"] = tre(fixed, reference, truth)
        row["time_ratio_ppir_over_simpleitk"] = row["ppir_time_s"] / row["simpleitk_time_s"]
    log(_row_text(row))
    return row


def full_resolution_iteration(repeats: int = 5) -> dict:
    """Seconds per Gauss-Newton iteration (joint product + matrix + step) over the whole 1 mm volume."""
    with tempfile.TemporaryDirectory() as tmp:
        fixed, moving, _ = _pair(ENGINE_CASES[0], Path(tmp), 1)
    backend = ClearBackend(fixed)
    backend.agree(Settings())
    grid = backend.start_level(LevelSpec(1, 0.0))
    model = LinearModel("affine", grid.center())
    level = Level(model, MovingLevel(moving), grid, backend)
    start = time.perf_counter()
    level.use_samples(None)
    setup = time.perf_counter() - start
    p = model.identity(moving.grid.center() - grid.center())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state = level.evaluate(p)
        hessian = model.hessian(level.basis, state.channels, p)
        p = p - model.solve(hessian, state.gradient, 1e-3)
        times.append(time.perf_counter() - start)
    return {"voxels": grid.n_voxels, "level_setup_s": setup, "iteration_s": times,
            "median_iteration_s": float(np.median(times[1:] if len(times) > 1 else times))}


def _row_text(row: dict) -> str:
    text = (f"{row['case']:<32} TRE {row['initial_tre_mm']:6.2f} -> PPIR {row['ppir_tre_mm']['mean']:.3f} mm "
            f"in {row['ppir_time_s']:6.1f} s ({row['ppir_iterations']} it)")
    if "simpleitk_tre_mm" in row:
        text += (f" | SimpleITK {row['simpleitk_tre_mm']['mean']:.3f} mm in {row['simpleitk_time_s']:6.1f} s"
                 f" | time ratio {row['time_ratio_ppir_over_simpleitk']:.2f}")
    return text


def markdown(results: dict) -> str:
    lines = ["| case | size | initial TRE (mm) | PPIR mean TRE (mm) | PPIR p95 (mm) | PPIR time (s) | "
             "SimpleITK mean TRE (mm) | SimpleITK time (s) | PPIR / SimpleITK time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in results["cases"]:
        sitk_cells = (f"{row['simpleitk_tre_mm']['mean']:.3f} | {row['simpleitk_time_s']:.1f} | "
                      f"{row['time_ratio_ppir_over_simpleitk']:.2f}") if "simpleitk_tre_mm" in row else "– | – | –"
        lines.append(f"| {row['case']} | {'x'.join(map(str, row['size']))} | {row['initial_tre_mm']:.2f} | "
                     f"{row['ppir_tre_mm']['mean']:.3f} | {row['ppir_tre_mm']['p95']:.3f} | "
                     f"{row['ppir_time_s']:.1f} | {sitk_cells} |")
    it = results["full_resolution_iteration"]
    lines.append("")
    lines.append(f"Full-resolution 3D affine iteration ({it['voxels']} voxels, clear backend): median "
                 f"{it['median_iteration_s']:.2f} s (one-off level setup {it['level_setup_s']:.2f} s).")
    return "\n".join(lines) + "\n"


def large_2d_pair(folder: Path) -> tuple[Path, Path, Path]:
    """The 2D T1 slice resampled to 1260 x 1090 voxels (the paper's PET size), and a synthetic pair."""
    source = read_image(data.sample_path(data.SLICE_2D))
    extent = (np.asarray(source.grid.size) - 1) * source.grid.spacing
    size = np.array([1260, 1090])
    spacing = extent / (size - 1)
    grid = Grid(tuple(size[::-1]), spacing, source.grid.origin, source.grid.direction)
    image = sitk.Resample(source.to_sitk(), grid.reference_image(), sitk.Transform(), sitk.sitkBSpline, 0.0,
                          sitk.sitkFloat32)
    synthesize(Volume.from_sitk(image), "affine", 1, folder)
    return folder / "fixed.nrrd", folder / "moving.nrrd", folder / "ground_truth.h5"


def run_mpc_suite(out: Path | None, log=print) -> dict:
    """Clear against MPC and FHE on a 2D pair of the paper's Table 2 size, as separate processes over TLS."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fixed, moving, truth_path = large_2d_pair(Path(tmp))
        truth = sitk.ReadTransform(str(truth_path))
        grid = read_image(fixed).grid
        runs = [("clear", "clear", {}), ("mpc", "mpc", {}),
                ("mpc, URS", "mpc", {"sampling": "urs", "sample_fraction": 0.1}),
                ("fhe, URS", "fhe", {"sampling": "urs", "sample_fraction": 0.1})]
        for name, protocol, options in runs:
            transform = Path(tmp) / f"{protocol}-{len(rows)}.h5"
            report = register_files(fixed, moving, Settings(transform="affine", **options), Outputs(transform),
                                    protocol, ground_truth=truth, policy=DisclosurePolicy.off())
            products = report["joint_products"]
            row = {"run": name, "protocol": protocol, "sampling": options.get("sampling", "full"), "size": list(grid.size), "wall_time_s": report["wall_time_s"],
                   "iterations": report["iterations"], "joint_products": products,
                   "tre_mm": report["tre_mm"]["mean"], "transform": str(transform)}
            for party, stats in report["parties"].items():
                row[f"{party}_s_per_product"] = stats["wall_time_s"] / products if stats["wall_time_s"] else None
                row[f"{party}_mb_per_product"] = (stats["bytes_sent"] + stats["bytes_received"]) / 1e6 / products
            if protocol != "clear":
                row["rmse_vs_clear_mm"] = disagreement(sitk.ReadTransform(str(transform)),
                                                       sitk.ReadTransform(rows[0]["transform"]), grid)["rmse"]
            rows.append(row)
            log(f"{name:<10} {row['wall_time_s']:6.1f} s, {products} products, TRE {row['tre_mm']:.4f} mm")
    results = {"suite": "mpc", "machine": machine(), "versions": versions(), "runs": rows}
    _save(out, "mpc", results, mpc_markdown(results))
    return results


def mpc_markdown(results: dict) -> str:
    lines = ["| run | size | wall time (s) | joint products | TRE (mm) | RMSE vs clear (mm) | moving s / product | "
             "moving MB / product | fixed MB / product | paper (Table 2): s, MB per party per iteration |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["runs"]:
        paper = table_2_row(row["protocol"], row["sampling"])
        cells = [row["run"], "x".join(map(str, row["size"])), f"{row['wall_time_s']:.1f}", str(row["joint_products"]),
                 f"{row['tre_mm']:.4f}", f"{row['rmse_vs_clear_mm']:.4f}" if "rmse_vs_clear_mm" in row else "–",
                 f"{row['moving_s_per_product']:.3f}" if row["moving_s_per_product"] else "–",
                 f"{row['moving_mb_per_product']:.2f}", f"{row['fixed_mb_per_product']:.2f}",
                 f"{paper['s']} s, {paper['mb']} MB" if paper else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count()}


def _save(out: Path | None, name: str, results: dict, text: str) -> None:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_atomically(out / f"{name}.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
        write_atomically(out / f"{name}.md", lambda tmp: Path(tmp).write_text(text))


def run_engine_suite(out: Path | None, log=print) -> dict:
    results = {"suite": "engine", "machine": machine(), "versions": versions(),
               "cases": [run_case(case, log=log) for case in ENGINE_CASES],
               "full_resolution_iteration": full_resolution_iteration()}
    log(f"full-resolution iteration: median {results['full_resolution_iteration']['median_iteration_s']:.2f} s")
    _save(out, "engine", results, markdown(results))
    return results

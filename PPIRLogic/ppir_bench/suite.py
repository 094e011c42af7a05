"""``ppir bench --suite quick|full``: the registration matrix, the peers, the scaling curves, the plots.

Every registration is a fresh ``ppir register`` process (private protocols start their other parties as
processes of their own and talk over loopback TLS), so each party's time, bytes and peak memory are its
own. Figures come from the runs' reports; nothing is estimated.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from ppir.app import data
from ppir.app.report import versions
from ppir.app.synth import synthesize
from ppir.common.files import OutputBatch
from ppir.engine.disclosure import DisclosurePolicy
from ppir.engine.evaluate import disagreement, tre
from ppir.engine.image import Volume, read_image
from ppir.protocols import registry

from ppir_bench.engine import large_2d_pair, machine, shrunk, simpleitk_affine
from ppir_bench.paper import PAPER

PROTOCOLS = registry.names()
SAMPLINGS = ("full", "urs", "gms")
SAMPLE_FRACTION = 0.1
MNI = "mni152_t1_1mm.nii.gz"


@dataclass(frozen=True)
class Pair:
    """A synthetic pair made from a real sample image: shrink factor, the models and samplings to run."""

    name: str
    image: str
    shrink: int
    levels: str
    bspline_samplings: tuple[str, ...]
    bspline_spacing_mm: float


@dataclass(frozen=True)
class Suite:
    pairs: tuple[Pair, ...]
    scaling_shrinks: tuple[int, ...]
    repeats: int
    paper_size_pair: bool


SUITES = {
    "quick": Suite(pairs=(Pair("2D brain slice", data.SLICE_2D, 2, "2,1", SAMPLINGS, 16.0),
                          Pair("3D brain", MNI, 4, "2,1", ("urs",), 40.0)),
                   scaling_shrinks=(8, 6, 4), repeats=1, paper_size_pair=False),
    "full": Suite(pairs=(Pair("2D brain slice", data.SLICE_2D, 2, "2,1", SAMPLINGS, 16.0),
                         Pair("2D brain slice, 1 mm", data.SLICE_2D, 1, "4,2,1", ("urs",), 16.0),
                         Pair("3D brain", MNI, 2, "4,2,1", ("urs", "gms"), 40.0)),
                  scaling_shrinks=(8, 6, 4, 3, 2), repeats=3, paper_size_pair=True),
}

def _make_pair(image: Volume, folder: Path, truth: str = "affine", seed: int = 1) -> sitk.Transform:
    synthesize(image, truth, seed, folder, 0.02, True)
    return sitk.ReadTransform(str(folder / "ground_truth.h5"))


def registration(fixed: Path, moving: Path, truth: Path, folder: Path, name: str, protocol: str,
                 transform: str, sampling: str, levels: str, extra: list[str] = ()) -> dict:
    """One row: a fresh ``ppir register`` process, its report reduced to the suite's columns."""
    report_path, output, errors = folder / f"{name}.json", folder / f"{name}.h5", folder / f"{name}.err"
    policy_free = folder / "policy-free.toml"       # the protocols compared as such (the policy has its own measurements)
    DisclosurePolicy.off().write(policy_free)
    with open(errors, "w") as err:
        code = subprocess.run([sys.executable, "-m", "ppir", "register", "--fixed", str(fixed), "--moving", str(moving),
                               "--protocol", protocol, "--transform", transform, "--sampling", sampling,
                               "--sample-fraction", str(SAMPLE_FRACTION), "--levels", levels, "--ground-truth",
                               str(truth), "--output-transform", str(output), "--report", str(report_path),
                               "--disclosure-policy", str(policy_free), *extra],
                              stdout=subprocess.DEVNULL, stderr=err).returncode
    if code != 0:
        raise RuntimeError(f"{name}: ppir register failed: {errors.read_text().strip()[-500:]}")
    report = json.loads(report_path.read_text())
    levels = report["levels"]
    iterations = max(sum(level["iterations"] for level in levels), 1)
    row = {"protocol": protocol, "transform": transform, "sampling": sampling, "final_ssd": report["final_ssd"],
           "iterations": report["iterations"], "joint_products": report["joint_products"],
           "tre_mm": report["tre_mm"]["mean"], "wall_s": report["wall_time_s"],
           "s_per_it": sum(level["wall_time_s"] for level in levels) / iterations, "transform_file": str(output)}
    private = protocol != "clear"
    for party, stats in report["parties"].items():
        level_bytes = sum(level.get(f"{party}_bytes_sent", 0) + level.get(f"{party}_bytes_received", 0)
                          for level in levels)
        row[party] = {"cpu_s": stats["cpu_time_s"] if private else None,
                      "mb": (stats["bytes_sent"] + stats["bytes_received"]) / 1e6,
                      "mb_per_it": level_bytes / 1e6 / iterations,
                      "peak_mb": stats["peak_memory_mb"] if private else
                      (report["peak_memory_mb"] if party == "moving" else None)}
    return row


def _median_row(rows: list[dict]) -> dict:
    """The first run's accuracy figures, the median of the repeats' times."""
    row = dict(rows[0])
    for key in ("wall_s", "s_per_it"):
        row[key] = float(np.median([r[key] for r in rows]))
    row["wall_s_repeats"] = [r["wall_s"] for r in rows]
    return row


def _peers(fixed: Volume, moving: Volume, truth: sitk.Transform, levels: list[int], folder: Path) -> list[dict]:
    """SimpleITK's ImageRegistrationMethod and, if installed, elastix: affine, mean squares, the same pyramid."""
    start = time.perf_counter()
    reference = simpleitk_affine(fixed, moving, levels)
    rows = [{"protocol": "SimpleITK", "transform": "affine", "sampling": "full", "wall_s": time.perf_counter() - start,
             "tre_mm": tre(fixed, reference, truth)["mean"]}]
    found = elastix_registration(folder, fixed, len(levels), "AdvancedMeanSquares")
    if found is None:
        rows.append({"protocol": "elastix", "skipped": ELASTIX_MISSING})
        return rows
    transform, wall = found
    rows.append({"protocol": "elastix", "transform": "affine", "sampling": "random (elastix default)",
                 "wall_s": wall, "tre_mm": tre(fixed, transform, truth)["mean"]})
    return rows


ELASTIX_MISSING = "itk-elastix is not installed (make bench installs it)"


def elastix_registration(folder: Path, fixed: Volume, levels: int, metric: str,
                         bspline_spacing_mm: float | None = None) -> tuple[sitk.Transform, float] | None:
    """elastix's default affine registration of ``folder``'s fixed.nrrd and moving.nrrd with ``metric``, then its
    default B-spline one on a grid of ``bspline_spacing_mm`` if given: the transform (as a displacement field on the
    fixed grid) and the wall time; None without itk-elastix."""
    try:
        import itk
        elastix = itk.elastix_registration_method
    except (ImportError, AttributeError):
        return None
    parameters = itk.ParameterObject.New()
    affine = parameters.GetDefaultParameterMap("affine", levels)
    affine["Metric"] = [metric]
    parameters.AddParameterMap(affine)
    if bspline_spacing_mm is not None:
        bspline = parameters.GetDefaultParameterMap("bspline", levels, bspline_spacing_mm)
        bspline["Metric"] = [metric, "TransformBendingEnergyPenalty"]
        parameters.AddParameterMap(bspline)
    start = time.perf_counter()
    f = itk.imread(str(folder / "fixed.nrrd"), itk.F)
    m = itk.imread(str(folder / "moving.nrrd"), itk.F)
    _, result = elastix(f, m, parameter_object=parameters, log_to_console=False)
    field = itk.transformix_deformation_field(m, result, output_directory=str(folder))   # not into the cwd
    wall = time.perf_counter() - start
    vectors = sitk.GetImageFromArray(itk.array_from_image(field).astype(np.float64), isVector=True)
    vectors.CopyInformation(fixed.to_sitk())
    return sitk.DisplacementFieldTransform(vectors), wall


def _model_runs(pair: Pair, transform: str, folder: Path, repeats: int, log) -> list[dict]:
    """Every protocol and sampling of one model on one synthetic pair, with the clear run as reference."""
    fixed, moving, truth = folder / "fixed.nrrd", folder / "moving.nrrd", folder / "ground_truth.h5"
    grid = read_image(fixed).grid
    samplings = SAMPLINGS if transform == "affine" else pair.bspline_samplings
    extra = ["--bspline-spacing", str(pair.bspline_spacing_mm)] if transform == "bspline" else []
    rows, clear = [], {}
    for protocol in PROTOCOLS:
        for sampling in samplings:
            name = f"{transform}-{protocol}-{sampling}"
            times = repeats if transform == "affine" else 1   # B-spline runs are long: one is enough
            row = _median_row([registration(fixed, moving, truth, folder, f"{name}-{i}", protocol, transform,
                                            sampling, pair.levels, extra) for i in range(times)])
            if protocol == "clear":
                clear[sampling] = row["transform_file"]
            else:
                row["rmse_vs_clear_mm"] = disagreement(sitk.ReadTransform(row["transform_file"]),
                                                       sitk.ReadTransform(clear[sampling]), grid)["rmse"]
            rows.append(row)
            log(f"  {pair.name}: {name:<22} {row['wall_s']:7.1f} s, {row['iterations']:3d} it, "
                f"TRE {row['tre_mm']:.3f} mm" + (f", vs clear {row['rmse_vs_clear_mm']:.1e} mm"
                                                 if "rmse_vs_clear_mm" in row else ""))
    return rows


def run_pair(pair: Pair, repeats: int, work: Path, log) -> dict:
    """Affine rows on a pair moved by a random affine; B-spline rows on a pair moved by affine + B-spline."""
    folder = work / pair.name.replace(" ", "_").replace(",", "")
    source = shrunk(read_image(data.sample_path(pair.image)), pair.shrink)
    truths = {model: _make_pair(source, folder / model, model) for model in ("affine", "bspline")}
    fixed_volume = read_image(folder / "affine" / "fixed.nrrd")
    rows = [row for model in ("affine", "bspline") for row in _model_runs(pair, model, folder / model, repeats, log)]
    peers = _peers(fixed_volume, read_image(folder / "affine" / "moving.nrrd"), truths["affine"],
                   [int(f) for f in pair.levels.split(",")], folder / "affine")
    for peer in peers:
        log(f"  {pair.name}: {peer['protocol']:<22} " + (peer.get("skipped") or
                                                          f"{peer['wall_s']:7.1f} s, TRE {peer['tre_mm']:.3f} mm"))
    identity = sitk.Transform(fixed_volume.dim, sitk.sitkIdentity)
    return {"pair": pair.name, "size": list(fixed_volume.grid.size), "levels": pair.levels,
            "spacing_mm": fixed_volume.grid.spacing.tolist(), "bspline_spacing_mm": pair.bspline_spacing_mm,
            "initial_tre_mm": {model: tre(fixed_volume, identity, truth)["mean"] for model, truth in truths.items()},
            "runs": rows, "peers": peers}


def run_scaling(shrinks: tuple[int, ...], work: Path, log) -> dict:
    """The same one-level affine registration, all voxels, at several sizes of the 3D brain, per protocol."""
    points = []
    source = read_image(data.sample_path(MNI))
    for shrink in shrinks:
        folder = work / f"scaling-{shrink}"
        image = shrunk(source, shrink)
        _make_pair(image, folder)
        voxels = int(np.prod(image.grid.size))
        for protocol in PROTOCOLS:
            row = registration(folder / "fixed.nrrd", folder / "moving.nrrd", folder / "ground_truth.h5", folder,
                               protocol, protocol, "affine", "full", "1", ["--max-iterations", "5"])
            points.append({"protocol": protocol, "shrink": shrink, "voxels": voxels, "iterations": row["iterations"],
                           "s_per_it": row["s_per_it"], "mb_per_it": row["moving"]["mb_per_it"],
                           "peak_mb": row["moving"]["peak_mb"]})
            log(f"  scaling {voxels:>9} voxels {protocol:<5} {row['s_per_it']:7.3f} s/it "
                f"{row['moving']['mb_per_it']:8.2f} MB/it")
    slopes = {}
    for protocol in PROTOCOLS:
        mine = [p for p in points if p["protocol"] == protocol]
        x = np.log([p["voxels"] for p in mine])
        slopes[protocol] = {"time": float(np.polyfit(x, np.log([p["s_per_it"] for p in mine]), 1)[0])}
        if all(p["mb_per_it"] > 0 for p in mine):
            slopes[protocol]["bytes"] = float(np.polyfit(x, np.log([p["mb_per_it"] for p in mine]), 1)[0])
    return {"points": points, "slopes": slopes}


def run_paper_size(work: Path, log) -> dict:
    """Table 2's setting: affine on a 2D image of 1260 x 1090, MPC and MPC/FHE with URS."""
    folder = work / "paper-size"
    folder.mkdir(parents=True)
    fixed, moving, truth = large_2d_pair(folder)
    rows = []
    for protocol, sampling in (("clear", "full"), ("mpc", "full"), ("mpc", "urs"), ("fhe", "urs")):
        rows.append(registration(fixed, moving, truth, folder, f"{protocol}-{sampling}", protocol, "affine",
                                 sampling, "4,2,1"))
        log(f"  1260x1090: {protocol} {sampling}: {rows[-1]['s_per_it']:.3f} s/it")
    return {"size": [1260, 1090], "runs": rows}


def run_suite(name: str, out: Path | None, log=print) -> dict:
    """Run the suite and write ``out/results.json``, ``results.md``, ``matrix.png``, ``scaling.png``."""
    suite = SUITES[name]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ppir-bench-") as tmp:
        work = Path(tmp)
        results = {"suite": name, "machine": machine(), "versions": versions(), "sample_fraction": SAMPLE_FRACTION,
                   "repeats": suite.repeats, "pairs": []}
        for pair in suite.pairs:
            log(f"{pair.name}")
            results["pairs"].append(run_pair(pair, suite.repeats, work, log))
        log("scaling")
        results["scaling"] = run_scaling(suite.scaling_shrinks, work, log)
        if suite.paper_size_pair:
            log("the paper's Table 2 size")
            results["paper_size"] = run_paper_size(work, log)
    for pair in results["pairs"]:
        for row in pair["runs"]:
            row.pop("transform_file")
    for row in results.get("paper_size", {}).get("runs", []):
        row.pop("transform_file")
    results["paper"] = PAPER
    results["suite_wall_s"] = time.perf_counter() - start
    if out is not None:
        from ppir_bench.report import markdown, plots
        with OutputBatch() as batch:
            batch.add(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
            batch.add(out / "results.md", lambda tmp: Path(tmp).write_text(markdown(results)))
            for png, draw in plots(results).items():
                batch.add(out / png, draw)
            batch.commit()
    log(f"suite {name}: {results['suite_wall_s'] / 60:.1f} min")
    return results


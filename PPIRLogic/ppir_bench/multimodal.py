"""``ppir bench --suite multimodal``: each metric under each protocol on pairs across scanners and contrasts.

The fixed image is the MNI152 T1 at 2 mm; the moving image is it in another synthetic contrast
(``ppir data synth --contrast mapped|t2|pet``: an intensity-mapped T1, a T2-like and a PET-like
image, 2 % noise and a bias field) moved by a known random affine (affine rows) or affine plus B-spline
deformation (B-spline rows, 40 mm grid). Every metric (SSD, NCC, MI) runs under every protocol as a
fresh ``ppir register`` process (levels 4,2,1, URS 10 %; affine: at most 16 iterations per level;
no disclosure policy: the policy has its own suite); a run that stops (divergence, a protocol that
does not serve the metric) is a row with the reason; FHE's B-spline MI, minutes per evaluation at 2 mm, is a row
saying it was not run. Next to them: SimpleITK's Mattes MI (affine)
and, if installed, elastix's AdvancedMattesMutualInformation (affine, or affine then B-spline) on
the same pair. The intensity-mapped pair runs NCC once more with the fixed party's head mask
(``ppir data mask``), SimpleITK's Mattes MI given the same mask. On a B-spline pair each metric also
runs in the clear started at the truth (``at_truth``): how far the metric's own optimum lies from it.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk
from ppir.app import data
from ppir.app.contract import METRICS
from ppir.app.synth import synthesize
from ppir.engine.disclosure import DisclosurePolicy
from ppir.engine.evaluate import disagreement, tre
from ppir.engine.image import Volume, read_image, write_image
from ppir.engine.masks import head_mask
from ppir.protocols import registry

from ppir_bench.engine import _save, machine, shrunk, simpleitk_affine
from ppir_bench.suite import ELASTIX_MISSING, elastix_registration

LEVELS = [4, 2, 1]
BSPLINE_SPACING_MM = 40.0
SAMPLING = ["--levels", ",".join(map(str, LEVELS)), "--sampling", "urs", "--sample-fraction", "0.1"]
FHE_BSPLINE_MI = ("not run: FHE's B-spline MI multiplies the bins' memberships in the packed layout, B times an SSD "
                  "B-spline product: minutes per evaluation at 2 mm (docs/benchmarks.md)")
REGISTRATION = {"affine": ["--transform", "affine", "--max-iterations", "16", *SAMPLING],
                "bspline": ["--transform", "bspline", "--bspline-spacing", f"{BSPLINE_SPACING_MM:g}", *SAMPLING]}


@dataclass(frozen=True)
class Pair:
    name: str
    contrast: str
    seed: int = 1
    transform: str = "affine"
    metrics: tuple[str, ...] = METRICS
    head_mask: bool = False     # the fixed party's --fixed-mask from `ppir data mask`; SimpleITK's peer gets it too


PAIRS = (Pair("T1 through a scanner curve", "mapped"),
         Pair("T1 through a scanner curve, the fixed party's head mask", "mapped", metrics=("ncc",), head_mask=True),
         Pair("T2-like", "t2"), Pair("PET-like", "pet"))
BSPLINE_PAIRS = tuple(Pair(p.name, p.contrast, 0, "bspline") for p in PAIRS if not p.head_mask)


def _fixed_source(factor: int) -> tuple[Volume, Path]:
    """The MNI152 T1 at ``factor`` mm, and the folder with its tissue maps."""
    folder = data.fetch(log=lambda *_: None)
    source = read_image(folder / "mni152_t1_1mm.nii.gz")
    return shrunk(source, factor), folder


def _ppir_row(folder: Path, transform: str, metric: str, protocol: str, truth: sitk.Transform, fixed: Volume,
              options: tuple[str, ...] = (), moving: str = "moving.nrrd", label: str | None = None) -> dict:
    """One fresh ``ppir register`` process; a stopped run keeps its last error line."""
    name = f"{metric}-{protocol}-{Path(moving).stem}"
    policy = folder / "policy-free.toml"
    DisclosurePolicy.off().write(policy)
    out, report = folder / f"{name}.h5", folder / f"{name}.json"
    done = subprocess.run([sys.executable, "-m", "ppir", "register", "--fixed", str(folder / "fixed.nrrd"),
                           "--moving", str(folder / moving), "--metric", metric, "--protocol", protocol,
                           *REGISTRATION[transform], *options, "--disclosure-policy", str(policy),
                           "--output-transform", str(out),
                           "--report", str(report)], capture_output=True, text=True, timeout=3600)
    row = {"metric": metric, "protocol": label or protocol}
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        row["stopped"] = (lines[-1] if lines else f"exit {done.returncode}").removeprefix("ppir: error: ")
        return row
    result = json.loads(report.read_text())
    traffic = sum(p["bytes_sent"] for p in result["parties"].values())
    row.update(tre_mm=tre(fixed, sitk.ReadTransform(str(out)), truth)["mean"], wall_s=result["wall_time_s"],
               iterations=result["iterations"], traffic_mb=traffic / 1e6, transform_file=str(out))
    return row


def at_truth(folder: Path, metric: str, fixed: Volume, moving: Volume, truth: sitk.Transform) -> dict:
    """The clear registration started at the truth: the moving image resampled onto the fixed grid through the
    ground truth, registered from the identity. Its distance from the identity (the row's TRE) is how far
    the metric's own optimum, as the pyramid reaches it from there, lies from the truth: a floor for the
    runs from the start on this pair."""
    aligned = sitk.Resample(moving.to_sitk(), fixed.to_sitk(), truth, sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    write_image(Volume.from_sitk(aligned), folder / "moving-at-truth.nrrd")
    row = _ppir_row(folder, "bspline", metric, "clear", sitk.Transform(fixed.dim, sitk.sitkIdentity), fixed,
                    ("--init", "identity"), moving="moving-at-truth.nrrd", label="clear, started at the truth")
    row.pop("transform_file", None)
    return row


def _peers(folder: Path, fixed: Volume, moving: Volume, truth: sitk.Transform, transform: str,
           mask: Volume | None = None) -> list[dict]:
    """SimpleITK's Mattes MI (50 bins, 10 % random samples; affine only; with ``mask`` as its fixed mask) and,
    without a mask, elastix's (affine, then B-spline for a B-spline pair), the same pyramid."""
    rows = []
    if transform == "affine":
        start = time.perf_counter()
        reference = simpleitk_affine(fixed, moving, LEVELS, mattes_bins=50, sample_fraction=0.1, iterations=300,
                                     fixed_mask=mask)
        rows.append({"metric": "Mattes MI" + (", the same mask" if mask is not None else ""), "protocol": "SimpleITK",
                     "wall_s": time.perf_counter() - start, "tre_mm": tre(fixed, reference, truth)["mean"]})
    if mask is not None:
        return rows
    found = elastix_registration(folder, fixed, len(LEVELS), "AdvancedMattesMutualInformation",
                                 BSPLINE_SPACING_MM if transform == "bspline" else None)
    peer = {"metric": "AdvancedMattesMutualInformation", "protocol": "elastix"}
    if found is None:
        rows.append({**peer, "stopped": ELASTIX_MISSING})
    else:
        rows.append({**peer, "wall_s": found[1], "tre_mm": tre(fixed, found[0], truth)["mean"]})
    return rows


def _log_row(log, pair: Pair, row: dict) -> None:
    log(f"  {pair.name} ({pair.transform}): {row['metric']} {row['protocol']}: " + (
        f"stopped: {row['stopped']}" if "stopped" in row else f"TRE {row['tre_mm']:.3f} mm, {row['wall_s']:.1f} s"))


def run_pair(pair: Pair, source: Volume, tissues: Path, folder: Path, log, protocols=None, metrics=None,
             with_peers: bool = True, with_truth_start: bool = True) -> dict:
    synthesize(source, pair.transform, pair.seed, folder, 0.02, True, contrast=pair.contrast, tissue_dir=tissues)
    fixed, moving = read_image(folder / "fixed.nrrd"), read_image(folder / "moving.nrrd")
    truth = sitk.ReadTransform(str(folder / "ground_truth.h5"))
    mask, options = None, ()
    if pair.head_mask:
        mask = head_mask(fixed)
        write_image(mask, folder / "head-mask.nrrd")
        options = ("--fixed-mask", str(folder / "head-mask.nrrd"))
    rows = []
    for metric in metrics or pair.metrics:
        clear = None
        for protocol in protocols or registry.names():
            if (pair.transform, metric, protocol) == ("bspline", "mi", "fhe"):
                row = {"metric": metric, "protocol": protocol, "stopped": FHE_BSPLINE_MI}
            else:
                row = _ppir_row(folder, pair.transform, metric, protocol, truth, fixed, options)
            if protocol == "clear" and "transform_file" in row:
                clear = sitk.ReadTransform(row["transform_file"])
            elif clear is not None and "transform_file" in row:
                row["rmse_vs_clear_mm"] = disagreement(sitk.ReadTransform(row["transform_file"]), clear,
                                                       fixed.grid)["rmse"]
            row.pop("transform_file", None)
            rows.append(row)
            _log_row(log, pair, row)
        if pair.transform == "bspline" and with_truth_start:
            rows.append(at_truth(folder, metric, fixed, moving, truth))
            _log_row(log, pair, rows[-1])
    peers = _peers(folder, fixed, moving, truth, pair.transform, mask) if with_peers else []
    for peer in peers:
        log(f"  {pair.name}: {peer['protocol']}: " + (peer.get("stopped") or f"TRE {peer['tre_mm']:.3f} mm"))
    initial = tre(fixed, sitk.Transform(fixed.dim, sitk.sitkIdentity), truth)["mean"]
    return {"pair": pair.name, "contrast": pair.contrast, "transform": pair.transform, "size": list(fixed.grid.size),
            "initial_tre_mm": initial, "runs": rows, "peers": peers}


def run_multimodal_suite(out: Path | None, log=print, factor: int = 2, pairs=PAIRS + BSPLINE_PAIRS,
                         protocols=None) -> dict:
    source, tissues = _fixed_source(factor)
    with tempfile.TemporaryDirectory(prefix="ppir-multimodal-") as tmp:
        results = {"suite": "multimodal", "machine": machine(), "spacing_mm": float(factor),
                   "pairs": [run_pair(p, source, tissues, Path(tmp) / f"{i}-{p.transform}-{p.contrast}", log, protocols)
                             for i, p in enumerate(pairs)]}
    _save(out, "multimodal", results, markdown(results))
    return results


def _cell(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown(results: dict) -> str:
    lines = ["| moving image (against the T1) | transform | metric | protocol | TRE mm | wall s | traffic MB | "
             "RMSE vs clear mm |", "|---|---|---|---|---|---|---|---|"]
    for pair in results["pairs"]:
        head = f"| {pair['pair']} | {pair.get('transform', 'affine')}"
        for row in pair["runs"] + pair["peers"]:
            if "stopped" in row:
                lines.append(f"{head} | {row['metric']} | {row['protocol']} | stopped: {row['stopped']} | | | |")
                continue
            lines.append(f"{head} | {row['metric']} | {row['protocol']} | {row['tre_mm']:.3f} | "
                         f"{row['wall_s']:.1f} | {_cell(row.get('traffic_mb'), '.1f')} | "
                         f"{_cell(row.get('rmse_vs_clear_mm'), '.2g')} |")
    return "\n".join(lines) + "\n"

"""The ``ppir`` command line."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

import SimpleITK as sitk

from ppir.app.contract import (
    DEFAULTS,
    INITIALIZATIONS,
    METRICS,
    PRIVATE_PROTOCOLS,
    PROTOCOLS,
    SAMPLINGS,
    SHARES,
    TRANSFORMS,
)
from ppir.app.job import register_files
from ppir.app.outputs import Outputs
from ppir.app.progress import JsonLines, TerminalBar
from ppir.common.errors import PPIRError
from ppir.common.version import __version__
from ppir.engine.masks import HEAD_FRACTION
from ppir.engine.settings import Settings
from ppir.protocols import registry


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_registration_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("registration")
    g.add_argument("--transform", choices=TRANSFORMS, default=DEFAULTS.transform,
                   help="transform model; bspline runs an affine stage first (default: affine)")
    g.add_argument("--metric", choices=METRICS, default=DEFAULTS.metric,
                   help="similarity: ssd (same scanner and contrast), ncc (normalised cross-correlation: "
                        "robust to gain and offset between scanners), mi (Mattes mutual information: other "
                        "contrasts and modalities) (default: ssd)")
    g.add_argument("--sampling", choices=SAMPLINGS, default=DEFAULTS.sampling,
                   help="which fixed voxels enter the sums: all, a uniform random subset, or a "
                        "gradient-magnitude-weighted subset (default: full)")
    g.add_argument("--sample-fraction", type=float, default=DEFAULTS.sample_fraction, metavar="X",
                   help=f"fraction of voxels for urs/gms (default: {DEFAULTS.sample_fraction})")
    g.add_argument("--resample-each-iteration", action="store_true",
                   help="draw new urs/gms samples every iteration instead of once per level")
    g.add_argument("--levels", type=_int_list, default=DEFAULTS.levels, metavar="F,F,...",
                   help=f"pyramid shrink factors, coarse to fine (default: {','.join(map(str, DEFAULTS.levels))})")
    g.add_argument("--smoothing", type=_float_list, default=None, metavar="S,S,...",
                   help="Gaussian sigma per level in voxels (default: half the shrink factor, 0 at 1)")
    g.add_argument("--max-iterations", type=int, default=DEFAULTS.max_iterations, metavar="N",
                   help=f"per level (default: {DEFAULTS.max_iterations})")
    g.add_argument("--bspline-spacing", type=float, default=DEFAULTS.bspline_spacing_mm, metavar="MM",
                   help="B-spline control-point spacing in mm (default: 20)")
    g.add_argument("--bspline-regularization", type=float, default=DEFAULTS.bspline_regularization, metavar="W",
                   help="B-spline penalty weight, relative to the mean Gauss-Newton diagonal (default: 0.1)")
    g.add_argument("--bspline-levels", type=_int_list, default=None, metavar="F,F,...",
                   help="shrink factors for the B-spline stage (default: --levels)")
    g.add_argument("--histogram-bins", type=int, default=DEFAULTS.histogram_bins, metavar="N",
                   help="--metric mi: joint-histogram bins on each side, 6 to 64; more bins cost more privately "
                        "(MPC: two masked columns per bin, sample and iteration; FHE: one decryption per histogram "
                        f"row and iteration) and reveal a finer histogram (default: {DEFAULTS.histogram_bins})")
    g.add_argument("--init", choices=INITIALIZATIONS, default=DEFAULTS.initialization,
                   help="start from aligned image centres (geometry only) or the identity (default: centers)")
    g.add_argument("--seed", type=int, default=DEFAULTS.seed, help=f"seed for sampling (default: {DEFAULTS.seed})")


def _add_initial_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--initial-transform", metavar="T.h5",
                   help="start from this linear (rigid or affine) fixed->moving ITK transform instead of --init; "
                        "it stays with the moving party (the fixed party never receives it)")


def _add_mask_option(p: argparse.ArgumentParser, which: str) -> None:
    if which == "fixed":
        p.add_argument("--fixed-mask", metavar="MASK", help=(
            "register only where this image (on the fixed image's grid) is non-zero: the fixed party keeps the "
            "samples inside it and tells the moving party which were kept (it learns the mask at those sampled "
            "voxels only; docs/security.md)"))
    else:
        p.add_argument("--moving-mask", metavar="MASK", help=(
            "register only where the transform maps into this image (on the moving image's grid, non-zero): "
            "samples are drawn there; the mask is never sent, but the sample indices show the fixed party "
            "where it falls on the fixed grid (docs/security.md)"))


def _initial(args: argparse.Namespace) -> sitk.Transform | None:
    return _read_transform(args.initial_transform, "initial transform") if args.initial_transform else None


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(transform=args.transform, metric=args.metric, levels=args.levels, smoothing=args.smoothing,
                    sampling=args.sampling, sample_fraction=args.sample_fraction,
                    resample_each_iteration=args.resample_each_iteration, max_iterations=args.max_iterations,
                    bspline_spacing_mm=args.bspline_spacing, bspline_levels=args.bspline_levels,
                    bspline_regularization=args.bspline_regularization,
                    histogram_bins=args.histogram_bins, initialization=args.init, seed=args.seed)


def _cmd_register(args: argparse.Namespace) -> int:
    outputs = Outputs(transform=args.output_transform, warped=args.output_warped, report=args.report,
                      snapshot=args.snapshot, displacement=args.output_displacement)
    progress = JsonLines() if args.progress_json else (TerminalBar() if sys.stderr.isatty() else None)
    try:
        truth = _read_transform(args.ground_truth, "ground truth") if args.ground_truth else None
        report = register_files(args.fixed, args.moving, _settings(args), outputs, args.protocol, progress, truth,
                                _policy(args), _initial(args), args.fixed_mask, args.moving_mask)
    finally:
        if progress:
            progress.close()
    _print_summary(report, args.progress_json)
    return 0


def _print_summary(report: dict, as_json: bool) -> None:
    summary = {"event": "done", "protocol": report["protocol"], "iterations": report["iterations"],
               "tre_mm": report.get("tre_mm"),
               "metric": report["metric"], "final_value": report["final_value"],
               "final_ssd": report["final_ssd"], "wall_time_s": round(report["wall_time_s"], 3),
               "parties": report["parties"], "outputs": report["outputs"], "disclosure": report.get("disclosure"),
               "plan": report["plan"]}
    if as_json:
        print(json.dumps(summary), flush=True)
        return
    print(f"registered ({report['protocol']}) in {summary['wall_time_s']} s, {summary['iterations']} iterations; "
          f"final {summary['metric'].upper()} {summary['final_value']:.6g}")
    for note in report["plan"]:
        print(f"  planned within the fixed party's policy: {note}")
    if "tre_mm" in report:
        tre = report["tre_mm"]
        print(f"  TRE against the ground truth: mean {tre['mean']:.3f} mm, p95 {tre['p95']:.3f} mm, "
              f"max {tre['max']:.3f} mm")
    for party, stats in report["parties"].items():
        if stats["bytes_sent"] or stats["bytes_received"]:
            print(f"  {party} party: {stats['bytes_sent'] / 1e6:.2f} MB sent, "
                  f"{stats['bytes_received'] / 1e6:.2f} MB received, {stats['wall_time_s']:.1f} s")
    for name, path in report["outputs"].items():
        print(f"  {name}: {path}")


def _add_identity_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--identity", required=True, metavar="DIR",
                   help="this party's identity folder: its key, its certificate and the peers it trusts "
                        "(`ppir certs identity`, `ppir certs trust`)")


def _identity(args: argparse.Namespace):
    from ppir.protocols.net.channel import Identity
    return Identity.load(args.identity)


def _policy(args: argparse.Namespace):
    from ppir.engine.disclosure import DisclosurePolicy
    return DisclosurePolicy.read(args.disclosure_policy) if args.disclosure_policy else DisclosurePolicy()


def _add_serving_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sessions", type=int, default=1, help="sessions to serve, 0 for until stopped (default: 1)")
    p.add_argument("--max-sessions", type=int, default=8, metavar="N",
                   help="sessions served at once; the next one is refused with a message (default: 8)")


def _add_policy_option(p: argparse.ArgumentParser, whose: str) -> None:
    p.add_argument("--disclosure-policy", metavar="POLICY.toml",
                   help=f"{whose} disclosure policy: a [disclosure] table (max_ratio, min_samples, "
                        "max_sample_sets, max_products, allow_gms, allow_mi, noise_multiplier, max_epsilon, delta, "
                        "max_mask_fraction, min_samples_per_control_point(_3d), uniform_samples, allow_moving_mask; "
                        "enabled = false for none). "
                        "Default: the default policy (docs/security.md)")


def _log(message: str) -> None:
    """One line on stderr, written whole: a server's session threads log concurrently."""
    sys.stderr.write(f"ppir: {message}\n")
    sys.stderr.flush()


def _cmd_fixed(args: argparse.Namespace) -> int:
    from ppir.app.progress import FixedPartyBar, JsonEvents
    from ppir.app.roles import run_fixed
    progress = JsonEvents() if args.progress_json else (FixedPartyBar() if sys.stderr.isatty() else None)
    try:
        run_fixed(args.image, args.listen, _identity(args), args.sessions, args.output_transform,
                  args.output_warped, _log, progress, args.dealer, args.max_sessions,
                  _policy(args), args.fixed_mask)
    finally:
        if progress:
            progress.close()
    return 0


def _cmd_dealer(args: argparse.Namespace) -> int:
    from ppir.app.roles import run_dealer
    run_dealer(args.listen, _identity(args), args.sessions, _log, args.max_sessions)
    return 0


def _cmd_moving(args: argparse.Namespace) -> int:
    from ppir.app.roles import run_moving
    outputs = Outputs(transform=args.output_transform, warped=args.output_warped, report=args.report,
                      snapshot=args.snapshot, displacement=args.output_displacement)
    progress = JsonLines() if args.progress_json else (TerminalBar() if sys.stderr.isatty() else None)
    try:
        protocol = args.protocol or next(name for name in PRIVATE_PROTOCOLS
                                         if registry.PROTOCOLS[name].needs_dealer == bool(args.dealer))
        report = run_moving(args.image, args.connect, args.dealer, _identity(args), _settings(args), outputs,
                            args.share_result, progress, protocol=protocol, initial=_initial(args),
                            moving_mask=args.moving_mask)
    finally:
        if progress:
            progress.close()
    _print_summary(report, args.progress_json)
    return 0


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from ppir.app.data import SAMPLES, SLICE_2D, fetch
    folder = fetch(args.dir, log=lambda msg: print(msg, file=sys.stderr))
    for sample in SAMPLES:
        print(f"{folder / sample.name}  ({sample.description})")
    print(f"{folder / SLICE_2D}  (2D T1 slice as NRRD)")
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from ppir.app.synth import synthesize
    from ppir.engine.image import read_image
    if args.noise < 0:
        raise PPIRError(f"--noise must be >= 0, got {args.noise}")
    out = Path(args.out)
    if not out.parent.absolute().is_dir():
        raise PPIRError(f"output folder '{out}': its parent folder does not exist")
    from ppir.app.data import default_dir
    tissue_dir = args.tissue_dir or default_dir()
    summary = synthesize(read_image(args.image, "image"), args.transform, args.seed, out, args.noise, args.bias,
                         args.contrast, tissue_dir)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_data_mask(args: argparse.Namespace) -> int:
    from ppir.common.files import check_output_path
    from ppir.engine.image import read_image, write_image
    from ppir.engine.masks import head_mask
    check_output_path(args.out)
    mask = head_mask(read_image(args.image, "image"), args.threshold)
    write_image(mask, args.out)
    print(f"{args.out}: {int(mask.array.sum())} of {mask.array.size} voxels inside "
          f"({100 * mask.array.mean():.1f} %)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ppir.engine.evaluate import tre
    from ppir.engine.image import read_image
    fixed = read_image(args.fixed, "fixed image")
    mask = None
    if args.mask:
        mask_volume = read_image(args.mask, "mask")
        if mask_volume.array.shape != fixed.array.shape:
            raise PPIRError(f"mask '{args.mask}': size {mask_volume.grid.size} differs from the fixed image's "
                            f"{fixed.grid.size}")
        mask = mask_volume.array.ravel() > 0
    result = tre(fixed, _read_transform(args.transform, "transform"),
                 _read_transform(args.ground_truth, "ground truth"), mask)
    print(json.dumps({"tre_mm": result}, indent=2))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ppir_bench.engine import (
        markdown,
        mpc_markdown,
        run_engine_suite,
        run_mpc_suite,
    )

    from ppir.common.files import check_output_path
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.out is not None:
        check_output_path(args.out)
    if args.suite in ("quick", "full"):
        from ppir_bench.report import markdown as suite_markdown
        from ppir_bench.suite import run_suite
        print(suite_markdown(run_suite(args.suite, args.out, log)))
    elif args.suite == "engine":
        print(markdown(run_engine_suite(args.out, log)))
    elif args.suite == "privacy":
        from ppir_bench.privacy import markdown as privacy_markdown
        from ppir_bench.privacy import run_privacy_suite
        print(privacy_markdown(run_privacy_suite(args.out, log)))
    elif args.suite == "multimodal":
        from ppir_bench.multimodal import markdown as multimodal_markdown
        from ppir_bench.multimodal import run_multimodal_suite
        print(multimodal_markdown(run_multimodal_suite(args.out, log)))
    elif args.suite == "mi":
        from ppir_bench.mi import markdown as mi_markdown
        from ppir_bench.mi import run_mi_suite
        print(mi_markdown(run_mi_suite(args.out, log)))
    elif args.suite == "serve":
        from ppir_bench.serve import markdown as serve_markdown
        from ppir_bench.serve import run_serve_suite
        print(serve_markdown(run_serve_suite(args.out, log)))
    else:
        print(mpc_markdown(run_mpc_suite(args.out, log)))
    return 0


def _cmd_certs_identity(args: argparse.Namespace) -> int:
    from ppir.protocols.net.certs import CSR, create_identity, describe
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    cert = create_identity(Path(args.dir), args.name, args.organization, hosts, args.days, args.request)
    print(f"identity: {describe(cert)}")
    print(f"give {Path(args.dir) / 'identity.pem'} to the other parties and read them this fingerprint by phone")
    if args.request:
        print(f"certificate signing request for your CA: {Path(args.dir) / CSR}")
    return 0


def _cmd_certs_show(args: argparse.Namespace) -> int:
    from ppir.protocols.net.certs import CERT, describe, read_certificate
    from ppir.protocols.net.trust import Trust
    path = Path(args.path)
    print(describe(read_certificate(path / CERT if path.is_dir() else path)))
    if path.is_dir():
        table = Trust.load(path)
        for role, fp, cert in table.peers:
            print(f"  trusts as {role}: {cert.subject.rfc4514_string()} (SHA-256 {fp})")
        for role, ca, subject in table.authorities:
            print(f"  trusts as {role}: {subject}, issued by {ca.subject.rfc4514_string()}")
    return 0


def _cmd_certs_trust(args: argparse.Namespace) -> int:
    from ppir.protocols.net.trust import trust_authority, trust_peer
    if args.subject:
        fp = trust_authority(Path(args.dir), Path(args.certificate), args.role, args.subject)
        print(f"trusted as {args.role}: {args.subject}, when issued by the CA with SHA-256 {fp}")
    else:
        fp = trust_peer(Path(args.dir), Path(args.certificate), args.role, args.fingerprint)
        print(f"trusted as {args.role}: SHA-256 {fp}")
    return 0


def _cmd_certs_ca(args: argparse.Namespace) -> int:
    from ppir.protocols.net.certs import create_ca, describe
    print(f"certificate authority: {describe(create_ca(Path(args.dir), args.name, args.days))}")
    return 0


def _cmd_certs_sign(args: argparse.Namespace) -> int:
    from ppir.protocols.net.certs import describe, sign
    print(f"signed: {describe(sign(Path(args.ca), Path(args.request), Path(args.out), args.days))}")
    return 0


def _cmd_certs_install(args: argparse.Namespace) -> int:
    from ppir.protocols.net.certs import describe, install_certificate
    print(f"identity: {describe(install_certificate(Path(args.dir), Path(args.certificate)))}")
    return 0


def _read_transform(path: str, role: str) -> sitk.Transform:
    if not Path(path).is_file():
        raise PPIRError(f"{role} '{path}': no such file")
    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError:
        raise PPIRError(f"{role} '{path}': not a readable ITK transform file") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppir", description=(
        "Privacy-preserving image registration. Aligns a moving image to a fixed image "
        "(rigid, affine, B-spline) so that the only computation needing both images is one joint product."))
    parser.add_argument("--version", action="version", version=f"ppir {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    reg = sub.add_parser("register", help="register a moving image to a fixed image on this machine",
                         description="Register MOVING to FIXED and write the fixed->moving transform "
                                     "(ITK convention; 3D Slicer loads it as the moving-to-fixed alignment).")
    reg.add_argument("--fixed", required=True, help="fixed image (NRRD, NIfTI, MetaImage, or a DICOM folder)")
    reg.add_argument("--moving", required=True, help="moving image")
    reg.add_argument("--ground-truth", metavar="G.h5",
                     help="known true transform (e.g. from `ppir data synth`): adds the TRE to the report and summary")
    reg.add_argument("--protocol", choices=PROTOCOLS, default=PROTOCOLS[0],
                     help="; ".join(f"{p.name}: {p.summary}" for p in registry.PROTOCOLS.values())
                          + f" (default: {PROTOCOLS[0]})")
    _add_registration_options(reg)
    _add_initial_option(reg)
    _add_mask_option(reg, "fixed")
    _add_mask_option(reg, "moving")
    _add_outputs(reg)
    _add_policy_option(reg, "the fixed party's")
    reg.set_defaults(run=_cmd_register)

    fixed = sub.add_parser("fixed", help="party 2: hold the fixed image and answer registration sessions",
                           description="Listens for the moving party, answers its MPC or FHE session about the "
                                       "fixed image and writes what the moving party shares at the end.")
    fixed.add_argument("--image", required=True, help="the fixed image")
    fixed.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to listen on (port 0: any)")
    _add_serving_options(fixed)
    fixed.add_argument("--output-transform", type=Path, metavar="T.h5",
                       help="where to write the transform if the moving party shares it")
    fixed.add_argument("--output-warped", type=Path, metavar="W.nrrd",
                       help="where to write the registered moving image if the moving party shares it")
    _add_policy_option(fixed, "this party's")
    _add_mask_option(fixed, "fixed")
    fixed.add_argument("--progress-json", action="store_true",
                       help="print JSON lines on stdout: listening, one per level and per product answered, "
                            "and a 'done' line per session with its cost and what was shared")
    fixed.add_argument("--dealer", metavar="HOST:PORT",
                       help="the one dealer this party uses for MPC sessions (its certificate trusted with "
                            "`ppir certs trust --role dealer`); a moving party naming another dealer is refused. "
                            "Without it: FHE sessions only")
    _add_identity_option(fixed)

    fixed.set_defaults(run=_cmd_fixed)

    dealer = sub.add_parser("dealer", help="the MPC dealer: correlated randomness, on a third, non-colluding machine",
                            description="Serves Beaver-style correlated randomness to one moving and one fixed "
                                        "party per session. It sees no image data; a dealer that colludes with "
                                        "either party can unmask the other's image (docs/security.md).")
    dealer.add_argument("--listen", required=True, metavar="HOST:PORT")
    _add_serving_options(dealer)
    _add_identity_option(dealer)

    dealer.set_defaults(run=_cmd_dealer)

    mov = sub.add_parser("moving", help="party 1: register the moving image to a remote fixed image (MPC or FHE)",
                         description="Connects to the fixed party (and, for MPC, the dealer), runs the registration and "
                                     "writes the outputs; the warped image is this party's own image resampled "
                                     "into the fixed grid.")
    mov.add_argument("--image", required=True, help="the moving image")
    mov.add_argument("--connect", required=True, metavar="HOST:PORT", help="the fixed party")
    mov.add_argument("--dealer", metavar="HOST:PORT", help="the dealer (MPC only)")
    mov.add_argument("--protocol", choices=PRIVATE_PROTOCOLS,
                     help="private protocol (default: mpc with --dealer, fhe without)")
    mov.add_argument("--share-result", choices=SHARES, default="transform",
                     help="what the fixed party receives at the end (default: transform)")
    _add_registration_options(mov)
    _add_initial_option(mov)
    _add_mask_option(mov, "moving")
    _add_outputs(mov)
    _add_identity_option(mov)
    mov.set_defaults(run=_cmd_moving)
    return _add_other_commands(parser, sub)


def _add_outputs(reg: argparse.ArgumentParser) -> None:
    out = reg.add_argument_group("outputs (each written whole or not at all)")
    out.add_argument("--output-transform", required=True, type=Path, metavar="T.h5",
                     help="ITK transform file (.h5, .tfm, .txt)")
    out.add_argument("--output-warped", type=Path, metavar="W.nrrd", help="moving image resampled on the fixed grid")
    out.add_argument("--output-displacement", type=Path, metavar="D.nrrd",
                     help="displacement field on the fixed grid (bspline only)")
    out.add_argument("--report", type=Path, metavar="R.json", help="JSON report")
    out.add_argument("--snapshot", type=Path, metavar="S.png",
                     help="PNG: fixed, moving before/after, checkerboard and difference on central slices")
    out.add_argument("--progress-json", action="store_true",
                     help="print one JSON line per iteration (and a final 'done' line) on stdout")


def _add_other_commands(parser: argparse.ArgumentParser, sub) -> argparse.ArgumentParser:

    data = sub.add_parser("data", help="sample data: fetch real images, synthesize test pairs")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    fetch = data_sub.add_parser("fetch", help="download the sample MRI (MNI152 T1 1 mm, tissue maps, a 2D T1 "
                                              "slice) with SHA-256 checks; a no-op when present")
    fetch.add_argument("--dir", type=Path, default=None, help="folder (default: $PPIR_DATA or ~/.cache/ppir/data)")
    fetch.set_defaults(run=_cmd_data_fetch)
    synth = data_sub.add_parser("synth", help="make a moving image from a real one with a random known transform",
                                description="Writes OUT/fixed.nrrd, OUT/moving.nrrd and OUT/ground_truth.h5 "
                                            "(the fixed->moving transform that registration should find).")
    synth.add_argument("--image", required=True, help="a real image (becomes the fixed image)")
    synth.add_argument("--transform", choices=("affine", "bspline"), default="affine",
                       help="affine: rotations up to 10 deg, scaling +-8%%, shifts up to 10 mm; bspline: such an "
                            "affine plus a smooth deformation up to 8 mm")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", required=True, help="output folder (created)")
    synth.add_argument("--noise", type=float, default=0.0, metavar="SIGMA",
                       help="Gaussian noise, as a fraction of the 99th intensity percentile (e.g. 0.03)")
    synth.add_argument("--bias", action="store_true", help="multiply by a smooth bias field (up to +-15%%)")
    synth.add_argument("--contrast", choices=("same", "mapped", "t2", "pet"), default="same",
                       help="the moving image's synthetic contrast, the fixed image staying the T1: mapped (the "
                            "T1 through gain 1.3, gamma 0.5, offset 10%%), t2 (CSF bright, white matter dark), pet "
                            "(grey matter 4x white matter, blurred); t2 and pet need the MNI152 tissue maps "
                            "(default: same)")
    synth.add_argument("--tissue-dir", type=Path, default=None,
                       help="folder with the tissue maps (default: the `ppir data fetch` folder)")
    synth.set_defaults(run=_cmd_data_synth)
    mask = data_sub.add_parser("mask", help="a head mask of an image, for --fixed-mask (NCC between scanners)",
                               description="Writes OUT: the voxels brighter than THRESHOLD x the image's 99th "
                                           "intensity percentile, their largest connected part, holes filled. "
                                           "As the fixed party's --fixed-mask it keeps the air out of NCC, "
                                           "whose result the air-tissue edge biases when the two scanners' "
                                           "intensity curves differ (docs/method.md); the moving party then "
                                           "learns the mask at the voxels it samples (docs/security.md).")
    mask.add_argument("--image", required=True, help="the image to mask (the fixed image)")
    mask.add_argument("--out", required=True, help="the mask to write (e.g. head-mask.nrrd), on the image's grid")
    mask.add_argument("--threshold", type=float, default=HEAD_FRACTION, metavar="FRACTION",
                      help=f"of the 99th intensity percentile (default: {HEAD_FRACTION:g})")
    mask.set_defaults(run=_cmd_data_mask)

    ev = sub.add_parser("evaluate", help="target registration error of a transform against a ground truth",
                        description="Prints JSON {\"tre_mm\": {mean, median, p95, max, voxels}} over the fixed "
                                    "image's foreground (Otsu) or a mask.")
    ev.add_argument("--fixed", required=True, help="fixed image (its grid is where the error is measured)")
    ev.add_argument("--transform", required=True, help="transform to evaluate")
    ev.add_argument("--ground-truth", required=True, help="true fixed->moving transform")
    ev.add_argument("--mask", help="evaluate only where this image (on the fixed grid) is non-zero")
    ev.set_defaults(run=_cmd_evaluate)

    certs = sub.add_parser("certs", help="this party's identity and the peers it trusts",
                           description="Each party makes its own key pair on its own machine; the key never "
                                       "leaves it. Parties exchange certificates (or have an institutional CA "
                                       "sign them) and check fingerprints with each other by phone.")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    ident = certs_sub.add_parser("identity", help="create my key pair (DIR/identity.key, mode 0600) and a "
                                                  "self-signed certificate (DIR/identity.pem)")
    ident.add_argument("dir", help="identity folder (created; an existing key is never overwritten)")
    ident.add_argument("--name", required=True, help="who you are, e.g. 'Radiology, Hospital A'")
    ident.add_argument("--organization", help="organization name in the certificate")
    ident.add_argument("--hosts", default="", help="host names / IP addresses this party serves on (optional)")
    ident.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    ident.add_argument("--request", action="store_true",
                       help="also write DIR/identity.csr for an institutional CA (`ppir certs sign`)")
    ident.set_defaults(run=_cmd_certs_identity)
    show = certs_sub.add_parser("show", help="subject and SHA-256 fingerprint of an identity folder or a "
                                             "certificate, and whom the folder trusts")
    show.add_argument("path", help="identity folder or certificate (.pem)")
    show.set_defaults(run=_cmd_certs_show)
    trust_cmd = certs_sub.add_parser("trust", help="accept a peer's certificate for a role (pinned by its "
                                                   "fingerprint), or with --subject what a CA issued for that subject")
    trust_cmd.add_argument("dir", help="my identity folder")
    trust_cmd.add_argument("certificate", help="the peer's certificate (or, with --subject, its CA's)")
    trust_cmd.add_argument("--role", required=True, choices=("moving", "fixed", "dealer"),
                           help="the role that peer plays for me")
    trust_cmd.add_argument("--fingerprint", help="the SHA-256 fingerprint the peer read to you: refuse the "
                                                 "certificate if it differs")
    trust_cmd.add_argument("--subject", help="accept any certificate this CA issued for exactly this subject "
                                             "(RFC 4514, e.g. 'CN=Radiology,O=Hospital A')")
    trust_cmd.set_defaults(run=_cmd_certs_trust)
    ca = certs_sub.add_parser("ca", help="create an institution's certificate authority (DIR/ca.key, DIR/ca.pem)")
    ca.add_argument("dir", help="CA folder (created)")
    ca.add_argument("--name", required=True, help="CA name, e.g. 'Hospital A PPIR CA'")
    ca.add_argument("--days", type=int, default=3650, help="validity in days (default: 3650)")
    ca.set_defaults(run=_cmd_certs_ca)
    sign_cmd = certs_sub.add_parser("sign", help="the CA operator signs a party's identity.csr")
    sign_cmd.add_argument("request", help="the party's identity.csr")
    sign_cmd.add_argument("--ca", required=True, help="CA folder")
    sign_cmd.add_argument("--out", required=True, help="signed certificate to hand back to the party")
    sign_cmd.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    sign_cmd.set_defaults(run=_cmd_certs_sign)
    install = certs_sub.add_parser("install", help="make the certificate my CA signed my identity")
    install.add_argument("dir", help="my identity folder")
    install.add_argument("certificate", help="the signed certificate")
    install.set_defaults(run=_cmd_certs_install)

    bench = sub.add_parser("bench", help="benchmarks that print figures: accuracy, time, traffic, memory",
                           description="Runs synthetic registrations with known truth on the sample images and "
                                       "prints markdown tables (progress on stderr).")
    bench.add_argument("--suite", choices=("quick", "full", "engine", "mpc", "serve", "privacy", "multimodal", "mi"),
                       default="quick",
                       help="quick (minutes) / full (under an hour): clear, MPC and FHE with full, URS and GMS "
                            "sampling, affine and B-spline, 2D and 3D, SimpleITK and elastix peers, scaling with "
                            "image size, the paper's tables; engine: PPIR (clear) vs SimpleITK; mpc: per-product "
                            "cost on a 1260x1090 2D pair; serve: one fixed party serving 1, 4 and 8 concurrent "
                            "moving parties, MPC and FHE, 3D 2 mm affine (about 10 minutes); privacy: the default "
                            "disclosure policy's cost and the reconstruction attack per level; multimodal: SSD, NCC "
                            "and MI under each protocol on 3D pairs across scanners and contrasts, affine and "
                            "B-spline, next to "
                            "SimpleITK's and elastix's Mattes MI; mi: the journal's private MI setting, 3D affine "
                            "Mattes MI at 120x110x140 with 10%% samples, clear, MPC and FHE on a PET-like pair, "
                            "clear and MPC on a T2-like one (about 5 minutes) (default: quick)")
    bench.add_argument("--out", type=Path, default=None,
                       help="folder for the results: results.json, results.md, matrix.png, scaling.png "
                            "(engine.* / mpc.* / serve.* / privacy.* / multimodal.* / mi.* for those suites)")
    bench.set_defaults(run=_cmd_bench)
    return parser


def _interrupt_on_sigterm() -> None:
    """SIGTERM (a cancel from the Slicer module) ends a run as Ctrl-C does: connections closed, exit 130."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _interrupt_on_sigterm()
    try:
        return args.run(args)
    except PPIRError as err:
        print(f"ppir: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("ppir: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

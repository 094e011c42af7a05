"""The attack's tables, for settings beyond ``ppir bench --suite privacy`` (docs/security.md).

    python -m ppir_bench.attack.measure baseline            # no policy: every setting, every level
    python -m ppir_bench.attack.measure policy [options]    # the real policy over ratios x noise multipliers
    python -m ppir_bench.attack.measure response [options]  # the default policy at any size (3D): response only
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from ppir.app import data
from ppir.common.errors import PPIRError
from ppir.engine import mutual_information as mattes
from ppir.engine.disclosure import DisclosurePolicy
from ppir.engine.evaluate import tre
from ppir.engine.image import Volume, read_image
from ppir.engine.pyramid import level_image
from ppir.engine.settings import Settings

from ppir_bench.attack import solve, solve_mi, sparse
from ppir_bench.attack.pairs import central_cube, pair_with_details, without_discs
from ppir_bench.attack.record import MIProduct, Product, record_clear
from ppir_bench.engine import shrunk

DAMPS = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)   # relative to the largest eigenvalue of A^T A


IMAGES = ("slice64", "slice128", "slice256", "mni4", "mni2", "mni4-cube24", "mni4-cube40", "mni4-cube46", "mni2-cube46",
          "mni2-cube58", "mni2-cube64", "mni2-cube72", "mni2-cube79", "mni1-cube64", "mni1-cube96")


def image(name: str) -> Volume:
    """slice64, slice128, slice256 (the 2D T1 slice at 4, 2, 1 mm), mni4, mni2, mni1 (MNI152 T1 at 4, 2, 1 mm) or
    mni4-cubeN, mni2-cubeN, mni1-cubeN (the central N³ voxels of one of them)."""
    folder = data.fetch(log=lambda *_: None)
    if "-cube" in name:
        whole, side = name.split("-cube")
        return central_cube(image(whole), int(side))
    if name in ("mni4", "mni2", "mni1"):
        return shrunk(read_image(folder / "mni152_t1_1mm.nii.gz"), int(name[3:]))
    return shrunk(read_image(folder / data.SLICE_2D), {"slice64": 4, "slice128": 2, "slice256": 1}[name])


def attack(products: list[Product], fixed: Volume, discs, damps=(0.0,)) -> dict:
    """Both estimates at one level (the prior one at the damping with the best PSNR: an upper bound
    on what the moving party could pick); PSNR over informed voxels; detail recovery per disc, as the
    estimates' disc contrast against the truth's (``detail_*``) and as the prior estimate's response to
    the disc alone (``response``: no chance floor; ``fixed`` carries the discs)."""
    system = solve.build_system(products)
    spec = products[0].sample_set.spec
    truth = level_image(fixed, spec).array.ravel()[system.voxels].astype(np.float64)
    base = solve.fitted_prior(system)
    k = system.informed
    spectrum = solve.Spectrum(system)
    if damps == (0.0,):
        estimates = {"min-norm": solve.minimum_norm(system), "prior": solve.with_prior(system)}
        damp = 0.0
    else:
        tries = [spectrum.with_prior(damp) for damp in damps]
        best = max(range(len(damps)), key=lambda i: solve.psnr(tries[i][k], truth[k]))
        estimates, damp = {"prior": tries[best]}, damps[best]
    out = {"unknowns": system.unknowns, "informed": int(k.sum()), "revealed": system.revealed,
           "psnr_base": solve.psnr(base[k], truth[k])}
    for name, est in estimates.items():
        out[f"psnr_{name}"] = solve.psnr(est[k], truth[k])
        out[f"detail_{name}"] = [solve.detail_recovered(system, est, base, truth, d) for d in discs]
    plain = without_discs(fixed, discs)
    change = truth - level_image(plain, spec).array.ravel()[system.voxels].astype(np.float64)
    moved = spectrum.response(change, damp)
    out["response"] = [solve.response_share(system.grid, system.voxels, moved, change, d, 0.1 * d.amplitude)
                       for d in discs]
    return out


def projected(products: list[Product], fixed: Volume, discs) -> tuple[sparse.Equations, list[float], float]:
    """The level's equations, each disc's share of its change that they determine (``sparse.response``, undamped;
    ``fixed`` carries the discs) and LSQR's relative residual."""
    spec = products[0].sample_set.spec
    equations = sparse.Equations(products)
    change = level_image(fixed, spec).array.ravel() - level_image(without_discs(fixed, discs), spec).array.ravel()
    change = change[equations.voxels].astype(np.float64)
    moved, residual = sparse.response(equations, change)
    return equations, [solve.response_share(equations.grid, equations.voxels, moved, change, d, 0.1 * d.amplitude)
                       for d in discs], residual


MI_DAMPS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)     # rows have unit norm


def attack_mi(products: list[MIProduct], fixed: Volume, discs, max_side: int = 9000, damps=MI_DAMPS) -> dict | None:
    """The MI attack at one level: bins recovered (share of samples, against the own guess's) and, per disc, the
    share of its change in J's bins the estimate follows (``fixed`` carries the discs), at the damping of
    ``damps`` that gets the most bins right (an optimistic attacker, for noised values). None when both the
    equations and the unknowns outnumber ``max_side`` (the dense solve's size)."""
    system = solve_mi.build_bin_system(products)
    if min(system.a.shape) > max_side:
        return None
    spec = products[0].sample_set.spec
    plain = without_discs(fixed, discs)
    level = level_image(fixed, spec).array
    lo, hi = float(level.min()), float(level.max())

    def bins_of(image: np.ndarray) -> np.ndarray:
        return mattes.fixed_bins(image.ravel()[system.voxels].astype(np.float64), lo, hi, system.bins)

    truth = bins_of(level)
    change = solve_mi.one_hot(truth, system.bins) - solve_mi.one_hot(bins_of(level_image(plain, spec).array),
                                                                       system.bins)
    attacks = [solve_mi.BinAttack(system, damp) for damp in damps]
    right = [solve_mi.accuracy(a.estimate(), truth) for a in attacks]
    best = int(np.argmax(right))
    moved = solve_mi.expected_bin(attacks[best].response(change))
    return {"unknowns": system.unknowns, "samples": len(system.voxels), "revealed": system.revealed,
            "bins_recovered": right[best], "bins_own": solve_mi.accuracy(system.prior, truth), "damp": damps[best],
            "details": [solve_mi.detail_recovered(system, moved, solve_mi.expected_bin(change), d) for d in discs]}


def _fmt_details(values: list[float]) -> str:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return f"{100 * v.min():.0f}–{100 * v.max():.0f} %" if v.size else "n/a"


def _per_detail(values: list[float], discs) -> str:
    """Each detail's share by its radius ("-" where the level has no sample in it or its ring)."""
    return ", ".join(f"{d.radius_mm:g} mm: " + (f"{100 * v:.0f} %" if np.isfinite(v) else "-")
                     for v, d in zip(values, discs))


def pair(name: str, kind: str, seed: int, folder: Path):
    f, m, gt, discs = pair_with_details(image(name), kind, seed, folder)
    return read_image(f), read_image(m), sitk.ReadTransform(str(gt)), discs


def baseline(args) -> None:
    """No protection: the attack per level."""
    print("| image | transform | sampling | level | unknowns (informed) | revealed | ratio | PSNR min-norm | PSNR prior | "
          "PSNR own image | details min-norm | details prior |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, kind, sampling in [("slice64", "bspline", "full"), ("slice128", "affine", "full"),
                                 ("slice128", "bspline", "full"), ("slice128", "bspline", "urs")]:
        with tempfile.TemporaryDirectory() as tmp:
            fixed, moving, truth, discs = pair(name, "bspline", args.seed, Path(tmp))
        settings = Settings(transform=kind, sampling=sampling)
        _, recording = record_clear(fixed, moving, settings)
        for spec, products in recording.levels().items():
            n = len(np.unique(np.concatenate([p.sample_set.samples for p in products])))
            if n > args.max_unknowns:
                print(f"| {name} | {kind} | {sampling} | ×{spec.factor} | {n} | | | skipped (dense solver) | | | | |")
                continue
            a = attack(products, fixed, discs)
            print(f"| {name} | {kind} | {sampling} | ×{spec.factor} | {a['unknowns']} ({a['informed']}) | {a['revealed']} | "
                  f"{a['revealed'] / a['unknowns']:.2f} | {a['psnr_min-norm']:.1f} | {a['psnr_prior']:.1f} | "
                  f"{a['psnr_base']:.1f} | {_fmt_details(a['detail_min-norm'])} | {_fmt_details(a['detail_prior'])} |",
                  flush=True)


def _settings(args, kind: str, spacing: float) -> Settings:
    """The registration of a sweep's run, from the command line's options."""
    return Settings(transform=kind, sampling=args.sampling, sample_fraction=args.sample_fraction,
                    bspline_spacing_mm=spacing, levels=args.levels or Settings().levels,
                    bspline_levels=args.bspline_levels if kind == "bspline" else None)


def _floors(args) -> dict:
    """The policy's control-point floors: ``--floor`` for both dimensions, or the defaults."""
    if args.floor is None:
        return {}
    return {"min_samples_per_control_point": args.floor, "min_samples_per_control_point_3d": args.floor}


def policy(args) -> None:
    """The real disclosure policy (max_ratio x noise multiplier), per transform and level: the run's TRE next to
    the policy-free run's, and the optimistic attacker's best reconstruction (over a damping sweep) and details."""
    print("| transform | grid mm | ratio | noise | TRE (policy-free) mm | products per level | level | unknowns | revealed | "
          "best PSNR (own) dB | details recovered | details: response |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, spacing in itertools.product(args.transforms, args.bspline_spacing):
            if kind != "bspline" and spacing != args.bspline_spacing[0]:
                continue
            pair_kind = args.pair or ("bspline" if kind == "bspline" else "affine")
            fixed, moving, truth, discs = pair(args.image, pair_kind, args.seed, Path(tmp) / f"{kind}{spacing}")
            settings = _settings(args, kind, spacing)
            grid = f"{spacing:g}" if kind == "bspline" else "-"
            free, _ = record_clear(fixed, moving, settings, DisclosurePolicy.off())
            for ratio, sigma in itertools.product(args.ratios, args.sigmas):
                rule = DisclosurePolicy(max_ratio=ratio, noise_multiplier=sigma,
                                        **_floors(args))
                try:
                    result, recording = record_clear(fixed, moving, settings, rule)
                except PPIRError as err:          # refused by the policy, or the registration diverged
                    print(f"| {kind} | {grid} | {ratio} | {sigma} | stopped: {err} |", flush=True)
                    continue
                error = f"{tre(fixed, result.transform, truth)['mean']:.3f} ({tre(fixed, free.transform, truth)['mean']:.3f})"
                counts = ", ".join(str(level.joint_products) for level in result.levels)
                for spec, prods in recording.levels().items():
                    system = solve.build_system(prods)
                    if system.unknowns > args.max_unknowns:
                        continue
                    a = attack(prods, fixed, discs, DAMPS)
                    print(f"| {kind} | {grid} | {ratio} | {sigma} | {error} | {counts} | x{spec.factor} | {system.unknowns} | "
                          f"{a['revealed']} | {a['psnr_prior']:.1f} ({a['psnr_base']:.1f}) | {_fmt_details(a['detail_prior'])} | "
                          f"{_fmt_details(a['response'])} |",
                          flush=True)


def response(args) -> None:
    """The default policy (or ``--ratios``) at any image size, 3D included: per level, the share of each detail that
    the revealed values determine (``sparse.response``: the undamped projection, the most an attacker can follow)."""
    print("| image | transform | sampling | B-spline levels | TRE (policy-free) mm | level | unknowns | revealed | ratio | "
          "details: response | per detail | LSQR residual |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.transforms:
            fixed, moving, truth, discs = pair(args.image, "bspline" if kind == "bspline" else "affine", args.seed,
                                               Path(tmp) / kind)
            settings = _settings(args, kind, args.bspline_spacing[0])
            free, _ = record_clear(fixed, moving, settings, DisclosurePolicy.off())
            for ratio in args.ratios:
                try:
                    result, recording = record_clear(fixed, moving, settings, DisclosurePolicy(
                        max_ratio=ratio, **_floors(args)))
                except PPIRError as err:
                    print(f"| {args.image} | {kind} | {args.sampling} | {args.bspline_levels} | stopped: {err} |", flush=True)
                    continue
                error = f"{tre(fixed, result.transform, truth)['mean']:.3f} ({tre(fixed, free.transform, truth)['mean']:.3f})"
                for products in recording.levels().values():
                    equations, shares, residual = projected(products, fixed, discs)
                    print(f"| {args.image} | {kind} | {args.sampling} | {args.bspline_levels or '-'} | {error} | "
                          f"x{products[0].sample_set.spec.factor} | {equations.unknowns} | {equations.revealed} | "
                          f"{equations.revealed / equations.unknowns:.3f} | {_fmt_details(shares)} | "
                          f"{_per_detail(shares, discs)} | {residual:.1e} |",
                          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ppir_bench.attack.measure")
    parser.add_argument("what", choices=("baseline", "policy", "response"))
    parser.add_argument("--image", default="slice128", choices=IMAGES)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sampling", default="full")
    parser.add_argument("--sample-fraction", type=float, default=Settings().sample_fraction, help="with --sampling urs")
    parser.add_argument("--max-unknowns", type=int, default=4200)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.1, 1.0, 10.0])
    parser.add_argument("--transforms", nargs="+", default=["rigid", "affine", "bspline"])
    parser.add_argument("--levels", type=int, nargs="+", default=None, help="pyramid shrink factors (policy)")
    parser.add_argument("--bspline-levels", type=int, nargs="+", default=None)
    parser.add_argument("--floor", type=float, default=None,
                        help="the policy's min_samples_per_control_point, 2D and 3D (default: the policy's; 0: none)")
    parser.add_argument("--bspline-spacing", type=float, nargs="+", default=[Settings.bspline_spacing_mm],
                        help="control-point spacings (mm) to sweep for the B-spline transform")
    parser.add_argument("--pair", choices=("affine", "bspline"), default=None,
                        help="the synthetic pair's deformation (default: bspline for B-spline, else affine)")
    args = parser.parse_args()
    {"baseline": baseline, "policy": policy, "response": response}[args.what](args)


if __name__ == "__main__":
    main()

"""``ppir bench --suite privacy``: what the fixed party's disclosure policy costs and what it leaves an attacker.

Per setting, a policy-free clear run (the reference) and a run under the default policy, both recorded
on the moving party's side; per pyramid level: distinct voxels sampled (unknowns), values revealed,
their ratio, epsilon, and the optimistic reconstruction attack (``ppir_bench.attack``: of a sweep of
Tikhonov dampings, the estimate closest to the truth) — its PSNR next to the moving party's own warped
image, and the share of each detail's contrast (discs of 3-8 mm present only in J) it recovers: measured
against the truth's contrast (which the rest of J's error enters: a chance floor) and as the estimate's
response to the disc alone (no floor; at levels too large for the dense solve, the matrix-free undamped
response of ``ppir_bench.attack.sparse``).
Accuracy cost: TRE against the truth and displacement RMSE against the policy-free run. Mattes MI
settings are attacked through its bin memberships (``ppir_bench.attack.solve_mi``): the share of
samples whose bin of J the attack gets right, next to the moving party's own guess.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from ppir.common.errors import PPIRError
from ppir.engine.disclosure import DisclosurePolicy
from ppir.engine.evaluate import disagreement, tre
from ppir.engine.image import Volume
from ppir.engine.settings import Settings

from ppir_bench.attack.measure import DAMPS, attack, attack_mi, pair, projected
from ppir_bench.attack.record import MIProduct, record_clear
from ppir_bench.engine import _save, machine

MAX_UNKNOWNS = 4200      # dense normal equations per level
MAX_MI_SIDE = 9000       # MI: dense A A^T or A^T A, whichever is smaller


@dataclass(frozen=True)
class Setting:
    name: str
    image: str
    kind: str
    settings: Settings
    allow_mi: bool = False      # run under the given policy with MI allowed (the default refuses it)


SETTINGS = (
    Setting("2D 64², affine", "slice64", "affine", Settings(transform="affine")),
    Setting("2D 64², B-spline 20 mm", "slice64", "bspline", Settings(transform="bspline")),
    Setting("2D 64², B-spline 20 mm, finest level", "slice64", "bspline",
            Settings(transform="bspline", bspline_levels=[1])),
    Setting("2D 64², B-spline 40 mm, finest level", "slice64", "bspline",
            Settings(transform="bspline", bspline_levels=[1], bspline_spacing_mm=40.0)),
    Setting("2D 128², B-spline 20 mm, finest level", "slice128", "bspline",
            Settings(transform="bspline", bspline_levels=[1])),
    Setting("2D 128², B-spline 48.8 mm (the grid the default policy serves), finest level", "slice128", "bspline",
            Settings(transform="bspline", bspline_levels=[1], bspline_spacing_mm=48.8)),
    Setting("3D MNI 4 mm, affine, URS 20 %", "mni4", "affine",
            Settings(transform="affine", sampling="urs", sample_fraction=0.2)),
    Setting("3D MNI 2 mm, central 64³, B-spline 149 mm (the grid the default policy serves)", "mni2-cube64",
            "bspline", Settings(transform="bspline", bspline_spacing_mm=149.0)),
    Setting("2D 128², affine, MI", "slice128", "affine", Settings(transform="affine", metric="mi")),
    Setting("2D 128², affine, MI (allowed)", "slice128", "affine", Settings(transform="affine", metric="mi"),
            allow_mi=True),
)


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if np.isfinite(v)]


def _levels(recording, fixed: Volume, discs, ledger: dict) -> list[dict]:
    """Per level: the fixed party's account and the attack (SSD's on J, or MI's on its bins)."""
    accounts = {level["factor"]: level for level in ledger.get("levels", [])}
    rows = []
    for spec, products in (recording.mi_levels() or recording.levels()).items():    # one metric per run
        account = accounts.get(spec.factor, {})
        row = {"factor": spec.factor, "revealed": account.get("revealed"), "unknowns": account.get("unknowns"),
               "epsilon": account.get("epsilon")}
        if isinstance(products[0], MIProduct):
            a = attack_mi(products, fixed, discs, MAX_MI_SIDE)
            if a is not None:
                row.update(attack_bins=a["bins_recovered"], own_bins=a["bins_own"], response=_finite(a["details"]))
        elif len(np.unique(np.concatenate([p.sample_set.samples for p in products]))) <= MAX_UNKNOWNS:
            a = attack(products, fixed, discs, DAMPS)
            row.update(attack_psnr=a["psnr_prior"], own_psnr=a["psnr_base"], details=_finite(a["detail_prior"]),
                       response=_finite(a["response"]))
        else:
            row.update(response=_finite(projected(products, fixed, discs)[1]))
        rows.append(row)
    return rows


def run_setting(setting: Setting, folder: Path, policy: DisclosurePolicy, log) -> dict:
    policy = replace(policy, allow_mi=True) if setting.allow_mi else policy
    fixed, moving, truth, discs = pair(setting.image, setting.kind, 1, folder)
    free, free_recording = record_clear(fixed, moving, setting.settings, DisclosurePolicy.off())
    out = {"setting": setting.name, "free_tre_mm": tre(fixed, free.transform, truth)["mean"],
           "free_levels": _levels(free_recording, fixed, discs, {})}
    try:
        result, recording = record_clear(fixed, moving, setting.settings, policy)
    except PPIRError as err:
        out["refused"] = str(err)
        log(f"{setting.name}: refused by the policy ({err})")
        return out
    ledger = recording.disclosure
    out.update(tre_mm=tre(fixed, result.transform, truth)["mean"],
               rmse_vs_free_mm=disagreement(result.transform, free.transform, fixed.grid)["rmse"],
               epsilon=ledger["epsilon"], levels=_levels(recording, fixed, discs, ledger))
    log(f"{setting.name}: TRE {out['tre_mm']:.3f} mm (policy-free {out['free_tre_mm']:.3f})")
    return out


def run_privacy_suite(out: Path | None, log=print, policy: DisclosurePolicy | None = None) -> dict:
    policy = DisclosurePolicy() if policy is None else policy
    with tempfile.TemporaryDirectory(prefix="ppir-privacy-") as tmp:
        rows = [run_setting(s, Path(tmp) / str(n), policy, log) for n, s in enumerate(SETTINGS)]
    results = {"suite": "privacy", "machine": machine(), "policy": policy.to_dict(), "settings": rows}
    _save(out, "privacy", results, markdown(results))
    return results


def _details(values: list[float] | None) -> str:
    if not values:
        return "–"
    return f"{100 * min(values):.0f} to {100 * max(values):.0f} %"


def markdown(results: dict) -> str:
    lines = ["| setting | policy | TRE mm | RMSE vs policy-free mm | level | unknowns | revealed | ratio | epsilon | "
             "attack PSNR dB (own image); MI: bins | details: contrast | details: response |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["settings"]:
        for level in row["free_levels"]:
            lines.append(f"| {row['setting']} | none | {row['free_tre_mm']:.3f} | – | x{level['factor']} | – | – | – | "
                         f"– | {_psnr(level)} | {_details(level.get('details'))} | {_details(level.get('response'))} |")
        if "refused" in row:
            lines.append(f"| {row['setting']} | default | refused before the first product: {row['refused']} "
                         "| | | | | | | | | |")
            continue
        for level in row["levels"]:
            ratio = level["revealed"] / max(level["unknowns"], 1)
            epsilon = "unbounded (no noise)" if level["epsilon"] is None else f"{level['epsilon']:.3g}"
            lines.append(f"| {row['setting']} | default | {row['tre_mm']:.3f} | {row['rmse_vs_free_mm']:.3f} | "
                         f"x{level['factor']} | {level['unknowns']} | {level['revealed']} | {ratio:.3f} | {epsilon} | "
                         f"{_psnr(level)} | {_details(level.get('details'))} | {_details(level.get('response'))} |")
    return "\n".join(lines) + "\n"


def _psnr(level: dict) -> str:
    if "attack_bins" in level:
        return f"bins right {100 * level['attack_bins']:.1f} % ({100 * level['own_bins']:.1f} %)"
    if "attack_psnr" not in level:
        return "dense attack skipped (too many unknowns)"
    return f"{level['attack_psnr']:.1f} ({level['own_psnr']:.1f})"

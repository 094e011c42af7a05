"""Tables and plots of ``ppir bench --suite quick|full`` results (see ``ppir.benchsuite``)."""
from __future__ import annotations

import math

import numpy as np
from ppir.app.snapshot import pyplot

COLORS = {"clear": "#4a5568", "mpc": "#2b6cb0", "fhe": "#dd6b20", "SimpleITK": "#38a169", "elastix": "#805ad5"}


def _num(value, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _run_cells(row: dict) -> list[str]:
    moving, fixed = row["moving"], row["fixed"]
    private = row["protocol"] != "clear"
    return [row["transform"], row["protocol"], row["sampling"], _num(row["final_ssd"], ".4g"), str(row["iterations"]),
            _num(row.get("rmse_vs_clear_mm"), ".1e"), _num(row["tre_mm"], ".3f"), _num(row["wall_s"], ".1f"),
            _num(row["s_per_it"], ".3f"),
            f"{_num(moving['cpu_s'], '.1f')} / {_num(fixed['cpu_s'], '.1f')}" if private else "–",
            f"{moving['mb']:.1f} / {moving['mb_per_it']:.2f}" if private else "–",
            f"{fixed['mb']:.1f} / {fixed['mb_per_it']:.2f}" if private else "–",
            f"{_num(moving['peak_mb'], '.0f')} / {_num(fixed['peak_mb'], '.0f')}"]


HEADER = ("| model | protocol | sampling | final SSD | iterations | RMSE vs clear (mm) | TRE (mm) | time (s) | "
          "s / it | CPU s moving / fixed | moving MB total / per it | fixed MB total / per it | "
          "peak memory moving / fixed (MB) |\n" + "|---" * 13 + "|")


def _pair_section(pair: dict) -> list[str]:
    size = "×".join(map(str, pair["size"]))
    spacing = " × ".join(f"{s:g}" for s in pair["spacing_mm"])
    lines = [f"### {pair['pair']}: {size} voxels of {spacing} mm",
             "",
             f"Affine rows: a pair moved by a random affine (initial TRE {pair['initial_tre_mm']['affine']:.2f} mm); "
             f"B-spline rows: a pair moved by a random affine and a random B-spline deformation (initial TRE "
             f"{pair['initial_tre_mm']['bspline']:.2f} mm), registered with control points every "
             f"{pair['bspline_spacing_mm']:g} mm on top of an affine stage. Levels {pair['levels']}.",
             "", HEADER]
    lines += ["| " + " | ".join(_run_cells(row)) + " |" for row in pair["runs"]]
    for peer in pair["peers"]:
        if "skipped" in peer:
            lines.append(f"| affine | {peer['protocol']} (peer) | – | – | – | – | skipped: {peer['skipped']} "
                         "| – | – | – | – | – | – |")
        else:
            lines.append(f"| affine | {peer['protocol']} (peer) | {peer['sampling']} | – | – | – | "
                         f"{peer['tre_mm']:.3f} | {peer['wall_s']:.1f} | – | – | – | – | – |")
    return lines + [""]


def _scaling_section(scaling: dict) -> list[str]:
    lines = ["### Scaling: one-level affine registration of the 3D brain, all voxels, 5 iterations at most", "",
             "| protocol | voxels | s / iteration | MB / iteration (moving party, sent + received) | "
             "peak memory moving (MB) |",
             "|---|---|---|---|---|"]
    for p in scaling["points"]:
        lines.append(f"| {p['protocol']} | {p['voxels']} | {p['s_per_it']:.3f} | {p['mb_per_it']:.2f} | "
                     f"{_num(p['peak_mb'], '.0f')} |")
    lines += ["", "Fitted power laws (least squares on log-log): " + "; ".join(
        f"{protocol}: time ∝ N^{s['time']:.2f}" + (f", bytes ∝ N^{s['bytes']:.2f}" if "bytes" in s else "")
        for protocol, s in scaling["slopes"].items()) + ".", ""]
    return lines


def _paper_section(results: dict) -> list[str]:
    paper = results["paper"]
    lines = ["### Next to the paper (per party and per iteration)", "",
             "| setting | paper: s / it | paper: MB / it | PPIR: s / it | PPIR: moving MB / it | "
             "PPIR: fixed MB / it |", "|---|---|---|---|---|---|"]
    ours_2 = {f"{r['protocol']} {r['sampling']}": r for r in results.get("paper_size", {}).get("runs", [])}
    for key, figures in paper["table_2"]["rows"].items():
        row = ours_2.get(key)
        lines.append(f"| Table 2, {key} (1260×1090) | {figures['s']} | {figures['mb']} | " +
                     (f"{row['s_per_it']:.3f} | {row['moving']['mb_per_it']:.2f} | "
                      f"{row['fixed']['mb_per_it']:.2f} |" if row else "full suite only | – | – |"))
    brain_2d = next((p for p in results["pairs"] if p["pair"] == "2D brain slice"), None)
    table_3 = next((r for r in brain_2d["runs"] if r["transform"] == "bspline" and r["protocol"] == "mpc"
                    and r["sampling"] == "full"), None) if brain_2d else None
    figures = paper["table_3"]["rows"]["mpc full"]
    size = "×".join(map(str, brain_2d["size"])) if brain_2d else "–"
    lines.append(f"| Table 3, B-spline mpc full (paper 121×121, here {size}) | {figures['s']} | "
                 f"{figures['mb']} / {figures['mb_fixed']} | " +
                 (f"{table_3['s_per_it']:.3f} | {table_3['moving']['mb_per_it']:.2f} | "
                  f"{table_3['fixed']['mb_per_it']:.2f} |" if table_3 else "– | – | – |"))
    lines += ["", "The paper's parties ran in one process on other hardware, with other B-spline grids and "
              "encodings; PPIR's parties are separate processes over TLS on the machine named above, so compare "
              "orders of magnitude, not digits.", ""]
    return lines


def markdown(results: dict) -> str:
    machine, v = results["machine"], results["versions"]
    lines = [f"## `ppir bench --suite {results['suite']}`", "",
             f"Machine: {machine['platform']}, {machine['cpus']} CPUs; ppir {v['ppir']}, Python {v['python']}, "
             f"numpy {v['numpy']}, SimpleITK {v['SimpleITK']}. Synthetic pairs with known truth (random affine, "
             f"noise 2 %, bias field); URS and GMS keep {results['sample_fraction']:.0%} of the voxels; times are "
             f"the median of {results['repeats']} run(s) for affine rows (one run for B-spline rows); "
             f"the suite took {results['suite_wall_s'] / 60:.1f} min.",
             "", "Columns: final SSD of the last level; RMSE of the displacement between the private and the clear "
             "transform over the whole fixed grid; TRE against the known truth over the fixed image's foreground; "
             "time = the whole registration (session set-up included), wall clock; s / it = the pyramid levels' "
             "wall time (each level's sample-set upload included, session set-up not) per Gauss–Newton "
             "iteration, the same for both parties as they work in lockstep; CPU seconds of each party's "
             "process; MB sent + received on the wire by each party, in total and per iteration (levels only, "
             "so FHE's one-off public context is in the total but not per iteration); peak resident memory of "
             "each party's process. The clear rows run in one process (its peak memory is under *moving*).", ""]
    for pair in results["pairs"]:
        lines += _pair_section(pair)
    lines += _scaling_section(results["scaling"])
    lines += _paper_section(results)
    lines += ["![time and accuracy of every run](matrix.png)", "", "![scaling with image size](scaling.png)", ""]
    return "\n".join(lines)


def _matrix_plot(results: dict, path: str) -> None:
    plt = pyplot()
    pairs = results["pairs"]
    fig, axes = plt.subplots(1, len(pairs), figsize=(6.5 * len(pairs), 7), squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        rows = pair["runs"] + [p for p in pair["peers"] if "skipped" not in p]
        labels = [f"{r['transform']} {r['protocol']} {r['sampling']}" for r in rows]
        y = np.arange(len(rows))[::-1]
        ax.barh(y, [r["wall_s"] for r in rows], color=[COLORS[r["protocol"]] for r in rows])
        for yi, r in zip(y, rows):
            ax.text(r["wall_s"] * 1.08, yi, f"TRE {r['tre_mm']:.2f} mm", va="center", fontsize=8)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xscale("log")
        ax.set_xlim(right=max(r["wall_s"] for r in rows) * 8)
        ax.set_xlabel("registration wall time (s, log scale)")
        ax.set_title(f"{pair['pair']} ({'×'.join(map(str, pair['size']))})")
        ax.grid(axis="x", which="both", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    fig.legend(handles, list(COLORS), loc="lower center", ncol=len(COLORS), frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _scaling_plot(results: dict, path: str) -> None:
    plt = pyplot()
    scaling = results["scaling"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for protocol, slopes in scaling["slopes"].items():
        points = [p for p in scaling["points"] if p["protocol"] == protocol]
        voxels = [p["voxels"] for p in points]
        left.loglog(voxels, [p["s_per_it"] for p in points], "o-", color=COLORS[protocol],
                    label=f"{protocol} (slope {slopes['time']:.2f})")
        if "bytes" in slopes:
            right.loglog(voxels, [p["mb_per_it"] for p in points], "o-", color=COLORS[protocol],
                         label=f"{protocol} (slope {slopes['bytes']:.2f})")
    left.set_ylabel("seconds per iteration")
    right.set_ylabel("MB per iteration (moving party, sent + received)")
    for ax in (left, right):
        ax.set_xlabel("voxels in the fixed image (all sampled)")
        ax.grid(which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("One-level affine registration of the 3D brain at several sizes")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def plots(results: dict) -> dict:
    """File name -> writer(path) for each PNG."""
    return {"matrix.png": lambda path: _matrix_plot(results, path),
            "scaling.png": lambda path: _scaling_plot(results, path)}

"""What the panel shows for ``ppir``'s JSON progress events and for a finished run."""
from __future__ import annotations


def describe(event: dict) -> tuple[float | None, str]:
    """(fraction done or None, one status-log line) for one progress event."""
    kind = event.get("event")
    if kind == "listening":
        return None, f"Listening on {event['host']}:{event['port']}; waiting for the other party"
    if kind == "iteration":
        levels, level = event["levels"], event["level"]
        within = min(event["iteration"] / max(event["max_iterations"], 1), 1.0)
        size = "x".join(str(n) for n in event["size"])
        return ((level - 1 + within) / levels,
                f"{event['stage']} level {level}/{levels} ({size}), iteration {event['iteration']}: "
                f"{event.get('metric', 'ssd').upper()} {event.get('value', event['ssd']):.4g}, {event['samples']} samples")
    if kind == "level":
        size = "x".join(str(n) for n in event["size"])
        return None, f"Level {event['level']} ({size}) started by the moving party"
    if kind == "product":
        return None, (f"Level {event['level']}: {event['products']} joint products answered, "
                      f"{event['bytes_received'] / 1e6:.1f} MB received")
    if kind == "done":
        return 1.0, "Done"
    return None, str(event)


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def summary_lines(summary: dict | None) -> list[str]:
    """The results section: iterations, time and bytes exchanged, for either party."""
    if not summary:
        return ["The run ended without figures."]
    if "parties" in summary:   # the moving party (or the local test): the whole run
        lines = [f"Protocol: {summary['protocol']}", f"Iterations: {summary['iterations']}",
                 f"Time: {summary['wall_time_s']:.1f} s"]
        for party, stats in summary["parties"].items():
            if stats["bytes_sent"] or stats["bytes_received"]:
                lines.append(f"{party.capitalize()} party: sent {_megabytes(stats['bytes_sent'])}, "
                             f"received {_megabytes(stats['bytes_received'])}")
        if summary.get("tre_mm"):
            lines.append(f"Target registration error: {summary['tre_mm']['mean']:.2f} mm (mean)")
        lines += [f"Planned within the fixed party's policy: {note}" for note in summary.get("plan", [])]
        return lines + disclosure_lines(summary.get("disclosure"))
    return [f"Session time: {summary['wall_time_s']:.1f} s",
            f"Sent {_megabytes(summary['bytes_sent'])}, received {_megabytes(summary['bytes_received'])}",
            *disclosure_lines(summary.get("disclosure")),
            f"Shared by the moving party: {summary['shared']}"]


def disclosure_lines(disclosure: dict | None) -> list[str]:
    """What the fixed image revealed in a session, per level, and the session's epsilon."""
    if not disclosure:
        return []
    lines = [f"Level {level['factor']}: revealed {level['revealed']} values for {level['unknowns']} sampled voxels"
             + (f"; fixed mask shown at {level['mask_membership_shown']} of {level['voxels']} voxels"
                if "mask_membership_shown" in level else "")
             for level in disclosure["levels"]]
    epsilon = disclosure["epsilon"]
    return lines + [f"Privacy loss: epsilon {epsilon:.3g} at delta {disclosure['delta']:g}" if epsilon is not None
                    else "Privacy loss: no noise added, so no epsilon bound (the value counts above still hold)"]

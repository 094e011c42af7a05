"""What this process has used so far: peak resident memory."""
from __future__ import annotations

import sys
from pathlib import Path


def peak_memory_mb() -> float:
    """This process's peak resident memory so far, in MB (0 where the platform does not say).

    On Linux this is the VmHWM of /proc/self/status: ``getrusage``'s ``ru_maxrss`` would also count the
    parent process's memory at the time it started this one.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1024   # bytes on macOS, KiB elsewhere

"""``ppir bench --suite serve``: one fixed party serving 1, 4 and 8 concurrent moving parties.

Every party is a ``ppir`` process of its own over loopback TLS (throwaway identities, one per
process): one dealer and one fixed party serve with ``--sessions 0``; for each concurrency N, N
``ppir moving`` processes start together on a 3D 2 mm affine pair. Per-session wall time is each
moving party's report (its session, imports excluded); sessions per minute is N over the span from the
first session's start to the last one's end; the server's peak memory is the largest resident size of
the fixed party's process sampled every 0.1 s during that phase.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ppir.app import data
from ppir.app.synth import synthesize
from ppir.engine.image import read_image
from ppir.engine.pyramid import LevelSpec, level_image

CONCURRENCY = (1, 4, 8)
PROTOCOLS = ("mpc", "fhe")
REGISTRATION = ["--transform", "affine", "--levels", "2,1", "--sampling", "urs", "--sample-fraction", "0.1"]
PPIR = [sys.executable, "-m", "ppir"]


def _ppir(*args: str) -> str:
    done = subprocess.run([*PPIR, *args], capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"ppir {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _identities(folder: Path) -> dict[str, Path]:
    """One throwaway identity per local process, each trusting the others (as ``ppir register`` does)."""
    roles = {role: folder / role for role in ("moving", "fixed", "dealer")}
    for role, path in roles.items():
        _ppir("certs", "identity", str(path), "--name", f"bench {role}")
    for role, path in roles.items():
        for other, other_path in roles.items():
            if other != role:
                _ppir("certs", "trust", str(path), str(other_path / "identity.pem"), "--role", other)
    return roles


def _server(args: list[str]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([*PPIR, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(process.stderr.read())
    return process, "127.0.0.1:{port}".format(**json.loads(line))


def _rss_mb(pid: int) -> float:
    """A process's resident memory now (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class _PeakRSS:
    """The largest resident size of a process, sampled in a thread every 0.1 s."""

    def __init__(self, pid: int):
        self._pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, _rss_mb(self._pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def _phase(protocol: str, n: int, pair: Path, ids: dict[str, Path], fixed_pid: int, fixed_at: str,
           dealer_at: str, out: Path) -> dict:
    memory = _PeakRSS(fixed_pid)
    dealer = ["--dealer", dealer_at] if protocol == "mpc" else []
    movings = [subprocess.Popen([*PPIR, "moving", "--image", str(pair / "moving.nrrd"), "--connect", fixed_at,
                                 *dealer, "--protocol", protocol, "--identity", str(ids["moving"]), *REGISTRATION,
                                 "--share-result", "none", "--output-transform", str(out / f"t{i}.h5"),
                                 "--report", str(out / f"r{i}.json")], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(n)]
    for moving in movings:
        _, err = moving.communicate(timeout=1800)
        if moving.returncode:
            raise RuntimeError(f"a moving party failed: {err.strip().splitlines()[-1]}")
    peak = memory.stop()
    reports = [out / f"r{i}.json" for i in range(n)]
    walls = [json.loads(report.read_text())["wall_time_s"] for report in reports]
    ends = [report.stat().st_mtime for report in reports]           # written as each session ends
    span = max(ends) - min(end - wall for end, wall in zip(ends, walls))
    return {"protocol": protocol, "sessions": n, "wall_mean_s": sum(walls) / n, "wall_max_s": max(walls),
            "sessions_per_min": 60 * n / span, "server_peak_mb": peak}


def run_serve_suite(out: Path | None, log) -> list[dict]:
    """The table's rows: per protocol and concurrency, session times, throughput, server memory."""
    with tempfile.TemporaryDirectory(prefix="ppir-bench-serve-") as scratch:
        scratch = Path(scratch)
        image = level_image(read_image(data.fetch(log=lambda *_: None) / "mni152_t1_1mm.nii.gz"),
                            LevelSpec(2, 1.0))
        synthesize(image, "affine", 1, scratch / "pair")
        ids = _identities(scratch / "ids")
        dealer, dealer_at = _server(["dealer", "--listen", "127.0.0.1:0", "--identity", str(ids["dealer"]),
                                     "--sessions", "0", "--max-sessions", "8"])
        fixed, fixed_at = _server(["fixed", "--image", str(scratch / "pair/fixed.nrrd"), "--listen", "127.0.0.1:0",
                                   "--identity", str(ids["fixed"]), "--dealer", dealer_at, "--sessions", "0",
                                   "--max-sessions", "8"])
        rows = []
        try:
            for protocol in PROTOCOLS:
                for n in CONCURRENCY:
                    log(f"serve: {protocol}, {n} concurrent session(s)")
                    folder = scratch / f"{protocol}-{n}"
                    folder.mkdir()
                    rows.append(_phase(protocol, n, scratch / "pair", ids, fixed.pid, fixed_at, dealer_at, folder))
        finally:
            fixed.kill()
            dealer.kill()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "serve.json").write_text(json.dumps(rows, indent=2))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| protocol | concurrent sessions | wall per session, mean (max) | sessions / min | "
             "fixed party peak memory |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['protocol']} | {r['sessions']} | {r['wall_mean_s']:.1f} s ({r['wall_max_s']:.1f} s) | "
                     f"{r['sessions_per_min']:.1f} | {r['server_peak_mb']:.0f} MB |")
    return "\n".join(lines)

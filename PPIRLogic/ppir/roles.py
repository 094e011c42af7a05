"""The roles as programs: fixed party, dealer, moving party, and all of them on one machine.

``run_local`` is what ``ppir register --protocol mpc|fhe`` does: it makes trial certificates in a
temporary folder, starts the fixed party (and, for MPC, the dealer) as separate processes listening
on loopback, and runs the moving party in this process: the same code paths as across hospitals.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .api import Outputs, write_outputs
from .driver import Progress, Settings, register
from .evaluate import tre
from .errors import PPIRError
from .image import Grid, OutputBatch, Volume, check_output_path, read_image, write_volume
from .net import certs
from .net.channel import Credentials, Listener, PeerError
from .report import build_report
from .session import protocol_backend, serve_fixed_session, tell_error
from .snapshot import resample_into

SHARE_CHOICES = ("none", "transform", "warped")
PRIVATE_PROTOCOLS = ("mpc", "fhe")


def announce(listener: Listener) -> None:
    """Tell a parent process where we listen (first stdout line)."""
    print(json.dumps({"event": "listening", "host": listener.address[0], "port": listener.address[1]}), flush=True)


def run_fixed(image: str, listen: str, credentials: Credentials, sessions: int, output_transform: Path | None,
              output_warped: Path | None, log, progress=None) -> None:
    """Party 2: answer ``sessions`` registration sessions (0: until stopped) about the fixed image."""
    for path in (output_transform, output_warped):
        if path is not None:
            check_output_path(path)
    fixed = read_image(image, "fixed image")
    listener = Listener(listen, credentials)
    announce(listener)
    served = 0
    try:
        while sessions == 0 or served < sessions:
            channel = listener.accept("moving")
            log("moving party connected")
            try:
                stats = serve_fixed_session(channel, fixed, credentials,
                                            lambda bye: _write_shared(bye, fixed, output_transform, output_warped, log),
                                            log, progress)
                log(f"session done: {stats.bytes_sent} bytes sent, {stats.bytes_received} received, "
                    f"{stats.wall_time_s:.1f} s")
            except (PeerError, PPIRError) as err:
                tell_error(channel, str(err))
                raise
            finally:
                channel.close()
            served += 1
    finally:
        listener.close()


def _write_shared(bye, fixed: Volume, output_transform: Path | None, output_warped: Path | None, log) -> str:
    """Write what the moving party shared (all or nothing); returns what that was."""
    shared = bye.meta.get("shared", "none")
    with OutputBatch() as batch:
        if shared == "transform" and output_transform is not None:
            batch.add(output_transform, lambda tmp: Path(tmp).write_bytes(bye.arrays["transform"].tobytes()))
        if shared == "warped" and output_warped is not None:
            array = bye.arrays["warped"]
            if array.shape != fixed.array.shape:
                raise PeerError("the shared warped image does not match the fixed grid")
            batch.add(output_warped, lambda tmp: write_volume(fixed.with_array(array), tmp))
        batch.commit()
    log(f"the moving party shared: {shared}")
    return shared


def run_dealer(listen: str, credentials: Credentials, sessions: int, log) -> None:
    """The correlated-randomness provider: serve ``sessions`` sessions (0: until stopped)."""
    listener = Listener(listen, credentials)
    announce(listener)
    served = 0
    try:
        while sessions == 0 or served < sessions:
            protocol_backend("mpc").serve_dealer_session(listener, log)
            served += 1
    finally:
        listener.close()


def check_protocol(protocol: str, dealer_address: str | None, settings: Settings) -> None:
    """Refuse, before any work, a protocol that cannot run these settings."""
    if protocol not in PRIVATE_PROTOCOLS:
        raise PPIRError(f"unknown protocol {protocol!r}; choose from {', '.join(PRIVATE_PROTOCOLS)}")
    if protocol == "mpc" and not dealer_address:
        raise PPIRError("the MPC protocol needs a dealer (--dealer HOST:PORT)")
    protocol_backend(protocol)
    if protocol == "fhe":
        from .fhe import params
        d, products = 3, settings.max_iterations + 1
        releases = len(settings.levels) * products * (d * (d + 1) + 1)
        if settings.transform == "bspline":
            releases += len(settings.bspline_levels or settings.levels) * products * (d + 1)
        if releases > params.MAX_RELEASED:
            raise PPIRError(f"FHE: these levels and {settings.max_iterations} iterations per level could need "
                            f"{releases} decryptions, over the session budget of {params.MAX_RELEASED}; "
                            "lower --max-iterations")


def run_moving(moving_path: str, fixed_address: str, dealer_address: str | None, credentials: Credentials,
               settings: Settings, outputs: Outputs, share: str = "transform",
               progress: Progress | None = None, evaluation: tuple[Volume, sitk.Transform] | None = None,
               protocol: str = "mpc") -> dict:
    """Party 1: register its image to the remote fixed image under ``protocol`` and write its outputs.

    ``evaluation`` (a fixed image and a true transform, for trials on one machine) adds ``tre_mm``.
    """
    if share not in SHARE_CHOICES:
        raise PPIRError(f"--share-result must be one of {', '.join(SHARE_CHOICES)}")
    settings.validate()
    check_protocol(protocol, dealer_address, settings)
    outputs.check(settings)
    moving = read_image(moving_path, "moving image")
    start = time.perf_counter()
    if protocol == "fhe":
        backend = protocol_backend("fhe").FHEBackend(fixed_address, credentials, settings.__dict__)
    else:
        backend = protocol_backend("mpc").MPCBackend(fixed_address, dealer_address, credentials, settings.__dict__)
    try:
        result = register(moving, backend, settings, progress)
        fixed_grid = backend.fixed_grid
        backend.finish(*_shared(share, result.transform, moving, fixed_grid))
    except BaseException as err:
        backend.abort(str(err) if isinstance(err, PPIRError) else f"the moving party stopped ({type(err).__name__})")
        raise
    finally:
        backend.close()
    inputs = {"moving": str(moving_path), "fixed": fixed_address}
    if dealer_address:
        inputs["dealer"] = dealer_address
    report = build_report(protocol, settings, result, time.perf_counter() - start, backend.party_stats(),
                          inputs, outputs.to_dict())
    report["shared_with_fixed_party"] = share
    for n, level in enumerate(report["levels"]):
        for party, traffic in backend.level_traffic.items():
            if n < len(traffic):
                level[f"{party}_bytes_sent"] = traffic[n]["bytes_sent"]
                level[f"{party}_bytes_received"] = traffic[n]["bytes_received"]
    if evaluation is not None:
        report["tre_mm"] = tre(evaluation[0], result.transform, evaluation[1])
    write_outputs(outputs, result.transform, fixed_grid, moving, report, f"{protocol} {settings.transform}")
    return report


def _shared(share: str, transform: sitk.Transform, moving: Volume, grid: Grid) -> tuple[dict, dict]:
    """What the fixed party receives at the end, as chosen by the moving party."""
    if share == "transform":
        with tempfile.TemporaryDirectory() as tmp:
            sitk.WriteTransform(transform, os.path.join(tmp, "t.h5"))
            data = Path(tmp, "t.h5").read_bytes()
        return {"shared": "transform"}, {"transform": np.frombuffer(data, dtype=np.uint8)}
    if share == "warped":
        return {"shared": "warped"}, {"warped": resample_into(moving, grid, transform).array}
    return {"shared": "none"}, {}


class _Role:
    """A role running as a child process on loopback."""

    def __init__(self, args: list[str], name: str):
        self.name = name
        self.process = subprocess.Popen([sys.executable, "-m", "ppir", *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self._stderr: str | None = None
        line = self.process.stdout.readline()
        if not line:
            raise PPIRError(f"the local {name} process did not start: {self.finish(5).strip()}")
        self.address = "127.0.0.1:{port}".format(**json.loads(line))

    def finish(self, timeout: float) -> str:
        """Wait for the process to end (killing it after ``timeout`` s); returns its stderr."""
        if self._stderr is None:
            try:
                _, self._stderr = self.process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                _, self._stderr = self.process.communicate()
        return self._stderr

    def failure(self) -> str | None:
        """The last line the process printed, if it ended with an error."""
        text = self.finish(5).strip()
        return text.splitlines()[-1] if self.process.returncode and text else None


def run_local(protocol: str, fixed_path: str, moving_path: str, settings: Settings, outputs: Outputs,
              progress: Progress | None = None, ground_truth: sitk.Transform | None = None) -> dict:
    """The roles as separate processes on this machine, over loopback TLS.

    The fixed image is read here only to check it before starting (and, with a ground truth, to
    measure the TRE afterwards); the registration itself reaches it only through the fixed process.
    """
    settings.validate()
    check_protocol(protocol, "local" if protocol == "mpc" else None, settings)
    outputs.check(settings)
    fixed = read_image(fixed_path, "fixed image")
    evaluation = (fixed, ground_truth) if ground_truth is not None else None
    with tempfile.TemporaryDirectory(prefix="ppir-pki-") as pki:
        certs.init(Path(pki), list(certs.ROLES), ["127.0.0.1"], days=1)
        roles: list[_Role] = []
        try:
            if protocol == "mpc":
                roles.append(_Role(["dealer", "--listen", "127.0.0.1:0", "--certs", pki, "--sessions", "1"],
                                   "dealer"))
            fixed_role = _Role(["fixed", "--image", str(fixed_path), "--listen", "127.0.0.1:0", "--certs", pki,
                                "--sessions", "1"], "fixed")
            roles.append(fixed_role)
            dealer = roles[0].address if protocol == "mpc" else None
            return run_moving(moving_path, fixed_role.address, dealer, Credentials.from_folder(pki, "moving"),
                              settings, outputs, "none", progress, evaluation, protocol)
        except PeerError as err:
            details = "; ".join(f"{r.name}: {r.failure()}" for r in roles if r.failure())
            raise PeerError(f"{err}" + (f" ({details})" if details else "")) from None
        finally:
            for role in roles:
                role.finish(30)

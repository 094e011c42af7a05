"""All the roles on one machine: what ``ppir register --protocol mpc|fhe`` does.

``run_local`` makes a throwaway identity per local process in a temporary folder (each trusting the
others), starts the fixed party (and, for MPC, the dealer) as separate processes listening on
loopback, and runs the moving party in this process: the same code paths as across hospitals.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import SimpleITK as sitk

from ppir.app.outputs import Outputs
from ppir.app.roles import run_moving
from ppir.common.errors import PPIRError
from ppir.engine.disclosure import DisclosurePolicy
from ppir.engine.driver import Progress
from ppir.engine.image import read_image
from ppir.engine.masks import read_mask
from ppir.engine.settings import Settings
from ppir.protocols import registry
from ppir.protocols.net import certs, trust
from ppir.protocols.net.channel import Identity, PeerError


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
              progress: Progress | None = None, ground_truth: sitk.Transform | None = None,
              policy: DisclosurePolicy | None = None, initial: sitk.Transform | None = None,
              fixed_mask: str | Path | None = None, moving_mask: str | Path | None = None) -> dict:
    """The roles as separate processes on this machine, over loopback TLS.

    The fixed image is read here only to check it before starting (and, with a ground truth, to
    measure the TRE afterwards); the registration itself reaches it only through the fixed process.
    """
    registry.preflight(protocol, settings)
    outputs.check(settings)
    fixed = read_image(fixed_path, "fixed image")
    if fixed_mask is not None:      # checked here too: no process starts on a bad mask
        read_mask(fixed_mask, fixed, "fixed mask")
    if moving_mask is not None:
        read_mask(moving_mask, read_image(moving_path, "moving image"), "moving mask")
    evaluation = (fixed, ground_truth) if ground_truth is not None else None
    needs_dealer = registry.get(protocol).needs_dealer
    with tempfile.TemporaryDirectory(prefix="ppir-identities-") as scratch:
        folders = local_identities(Path(scratch), ["moving", "fixed", *(["dealer"] if needs_dealer else [])])
        roles: list[_Role] = []
        try:
            dealer = None
            if needs_dealer:
                roles.append(_Role(["dealer", "--listen", "127.0.0.1:0", "--identity", str(folders["dealer"]),
                                    "--sessions", "1"], "dealer"))
                dealer = roles[0].address
            policy_file = folders["fixed"] / "disclosure.toml"
            (policy or DisclosurePolicy()).write(policy_file)
            fixed_role = _Role(["fixed", "--image", str(fixed_path), "--listen", "127.0.0.1:0", "--identity",
                                str(folders["fixed"]), "--sessions", "1", *(["--dealer", dealer] if dealer else []),
                                "--disclosure-policy", str(policy_file),
                                *(["--fixed-mask", str(fixed_mask)] if fixed_mask is not None else [])], "fixed")
            roles.append(fixed_role)
            return run_moving(moving_path, fixed_role.address, dealer, Identity.load(folders["moving"]),
                              settings, outputs, "none", progress, evaluation, protocol, initial, moving_mask)
        except PeerError as err:
            details = "; ".join(f"{r.name}: {r.failure()}" for r in roles if r.failure())
            raise PeerError(f"{err}" + (f" ({details})" if details else "")) from None
        finally:
            for role in roles:
                role.finish(30)


def local_identities(folder: Path, roles: list[str]) -> dict[str, Path]:
    """Throwaway identities for processes on this machine, one per role, each trusting the others' roles."""
    folders = {role: folder / role for role in roles}
    for role, path in folders.items():
        certs.create_identity(path, f"local {role}", hosts=["127.0.0.1"], days=1)
    for role, path in folders.items():
        for other, other_path in folders.items():
            if other != role:
                trust.trust_peer(path, other_path / certs.CERT, other)
    return folders

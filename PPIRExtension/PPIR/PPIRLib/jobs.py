"""One party's run from Slicer: export the volume, run ``ppir`` in a subprocess, import the results.

``RunSettings`` holds what the module's panel sets; ``ppir_arguments`` turns it into the command
line of the chosen role; ``Job`` drives one run: the volume (and the moving party's initial
transform, and the party's own mask on its volume's grid) go to temporary files, progress comes
back as JSON events, and on success the output transform and volume become MRML nodes (new ones,
or the chosen ones overwritten), the transform records the volumes it registers, and, if asked,
the moving volume is put under it. Unless kept for debugging, the temporary folder is removed.
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import mrml
from .package import ppir_environment, python_executable, settings_contract
from .runner import PPIRProcess

CONTRACT = settings_contract()
ROLES = ("moving", *CONTRACT.SERVING_ROLES, "local")
PROTOCOLS = CONTRACT.PROTOCOLS
TRANSFORMS = CONTRACT.TRANSFORMS
METRICS = CONTRACT.METRICS
SAMPLINGS = CONTRACT.SAMPLINGS
SHARES = CONTRACT.SHARES
DEFAULTS = CONTRACT.DEFAULTS
OUTPUT_FLAGS = {"transform": "--output-transform", "warped": "--output-warped", "report": "--report"}


@dataclass
class RunSettings:
    """What one party chose. ``address`` is the fixed party's (moving: connect to; fixed, dealer: listen on)."""

    role: str = "moving"
    protocol: str = "fhe"
    address: str = "127.0.0.1:7000"
    dealer: str = ""
    certificates: str = ""
    transform: str = DEFAULTS.transform
    metric: str = DEFAULTS.metric
    sampling: str = "urs"      # the panel's default for private runs: URS indices say nothing of either image
    sample_fraction: float = DEFAULTS.sample_fraction
    levels: str = ",".join(map(str, DEFAULTS.levels))
    max_iterations: int = DEFAULTS.max_iterations
    bspline_spacing: float = DEFAULTS.bspline_spacing_mm
    share_result: str = "transform"
    seed: int = DEFAULTS.seed
    disclosure_policy: str = ""   # the fixed party's policy file (fixed and local roles; empty: ppir's default)

    def check(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if self.disclosure_policy and not Path(self.disclosure_policy).is_file():
            raise ValueError(f"disclosure policy file not found: '{self.disclosure_policy}'")
        for name, value, allowed in (("role", self.role, ROLES), ("protocol", self.protocol, PROTOCOLS),
                                     ("transform", self.transform, TRANSFORMS), ("metric", self.metric, METRICS),
                                     ("sampling", self.sampling, SAMPLINGS),
                                     ("share result", self.share_result, SHARES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not '{value}'")
        if self.role == "local":
            if self.protocol in CONTRACT.PRIVATE_PROTOCOLS:
                raise ValueError("the local test role runs the clear protocol only")
            return
        if self.protocol not in CONTRACT.PRIVATE_PROTOCOLS:
            raise ValueError("the clear protocol needs both volumes on this machine: use the local test role")
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"address must be HOST:PORT, not '{self.address}'")
        if self.role in ("moving", "fixed") and self.protocol in CONTRACT.DEALER_PROTOCOLS and not self.dealer:
            raise ValueError(f"{self.protocol.upper()} needs the dealer's address (the fixed party's own dealer)")
        if self.role == "dealer" and self.protocol not in CONTRACT.DEALER_PROTOCOLS:
            raise ValueError(f"a dealer serves {', '.join(p.upper() for p in CONTRACT.DEALER_PROTOCOLS)} sessions only")
        if not self.certificates or not (Path(self.certificates) / "identity.pem").is_file():
            raise ValueError(f"identity folder not found: '{self.certificates}' (create your identity first)")


def ppir_arguments(settings: RunSettings, inputs: dict[str, Path], outputs: dict[str, Path]) -> list[str]:
    """The ``ppir`` command line for ``settings.role``; ``inputs``: image paths, ``outputs``: files to write."""
    registration = ["--transform", settings.transform, "--metric", settings.metric, "--sampling", settings.sampling,
                    "--sample-fraction", repr(settings.sample_fraction), "--levels", settings.levels,
                    "--max-iterations", str(settings.max_iterations),
                    "--bspline-spacing", repr(settings.bspline_spacing), "--seed", str(settings.seed)]
    written = [arg for key, path in outputs.items() for arg in (OUTPUT_FLAGS[key], str(path))]
    tls = ["--identity", settings.certificates]
    if "initial" in inputs and settings.role in ("moving", "local"):   # the moving party's own, never sent
        registration += ["--initial-transform", str(inputs["initial"])]
    masks = [arg for key, flag, roles in (("fixed_mask", "--fixed-mask", ("fixed", "local")),
                                          ("moving_mask", "--moving-mask", ("moving", "local")))
             if key in inputs and settings.role in roles for arg in (flag, str(inputs[key]))]
    policy = ["--disclosure-policy", settings.disclosure_policy] if settings.disclosure_policy else []
    if settings.role == "local":
        return ["register", "--fixed", str(inputs["fixed"]), "--moving", str(inputs["moving"]),
                "--protocol", settings.protocol, *registration, *masks, *policy, *written, "--progress-json"]
    if settings.role == "moving":
        dealer = ["--dealer", settings.dealer] if settings.protocol in CONTRACT.DEALER_PROTOCOLS else []
        return ["moving", "--image", str(inputs["moving"]), "--connect", settings.address, *dealer,
                "--protocol", settings.protocol, "--share-result", settings.share_result,
                *registration, *masks, *written, *tls, "--progress-json"]
    if settings.role == "fixed":
        dealer = ["--dealer", settings.dealer] if settings.protocol in CONTRACT.DEALER_PROTOCOLS else []
        return ["fixed", "--image", str(inputs["fixed"]), "--listen", settings.address, *dealer, *policy, *masks,
                *written, *tls, "--progress-json"]
    return ["dealer", "--listen", settings.address, *tls]


def _outputs(role: str, folder: Path) -> dict[str, Path]:
    """The files a role's run writes (the fixed party's only if the moving party shares them)."""
    if role == "dealer":
        return {}
    outputs = {"transform": folder / "transform.h5", "warped": folder / "warped.nrrd"}
    if role in ("moving", "local"):
        outputs["report"] = folder / "report.json"
    return outputs


@dataclass
class JobResult:
    """What a finished run produced: the new nodes and the run's figures."""

    transform_node: object = None
    warped_node: object = None
    summary: dict | None = None


class Job:
    """One party's ``ppir`` run on MRML volume nodes."""

    def __init__(self, settings: RunSettings, moving_node=None, fixed_node=None, python: str | None = None,
                 temp_root: Path | None = None, keep_files: bool = False, initial_transform=None,
                 output_transform=None, output_volume=None, apply_to_moving: bool = False, moving_mask=None,
                 fixed_mask=None):
        """``temp_root``: where the run's temporary folder goes (Slicer's temporary folder in Slicer);
        ``keep_files``: leave that folder in place after the run, for debugging.
        ``initial_transform``: a transform node the moving party starts from (mrml.initial_transform);
        ``output_transform``, ``output_volume``: nodes to overwrite with the results (None: new nodes);
        ``apply_to_moving``: put the moving volume under the result transform.
        ``moving_mask``, ``fixed_mask``: label map or scalar volume nodes, each exported on its own party's
        volume grid (mrml.export_mask) and used by that party only."""
        settings.check()
        needed = {"moving": ("moving",), "fixed": ("fixed",), "local": ("moving", "fixed"), "dealer": ()}[settings.role]
        nodes = {"moving": moving_node, "fixed": fixed_node}
        for key in needed:
            if nodes[key] is None:
                raise ValueError(f"select the {key} volume")
        problem = mrml.output_problem(list(nodes.values()), output_transform, output_volume)
        if problem:
            raise ValueError(problem)
        if initial_transform is not None and settings.role not in ("moving", "local"):
            raise ValueError("only the moving party starts from an initial transform")
        for key, mask in (("moving", moving_mask), ("fixed", fixed_mask)):
            if mask is not None and key not in needed:
                raise ValueError(f"a {key} mask belongs to the {key} party: this run is the {settings.role} party's")
            if mask is not None and any(mask is node for node in nodes.values()):
                raise ValueError(f"the {key} mask '{mask.GetName()}' is an input volume: choose a label map")
        self.settings = settings
        self.nodes = {key: nodes[key] for key in needed}
        self.initial_transform = initial_transform
        self.masks = {key: mask for key, mask in (("moving", moving_mask), ("fixed", fixed_mask)) if mask is not None}
        self.targets = {"transform": output_transform, "warped": output_volume}
        self.apply_to_moving = apply_to_moving and "moving" in self.nodes
        self.scene = next((node.GetScene() for node in self.nodes.values()), None)
        self.process: PPIRProcess | None = None
        self.events: list[dict] = []
        self._python = python or python_executable()
        self.temp_root, self.keep_files = temp_root, keep_files

    def start(self) -> None:
        """Export the volumes and start the subprocess (returns at once)."""
        self.process = PPIRProcess([], python=self._python, env=ppir_environment(), temp_root=self.temp_root)
        folder = self.process.workdir
        try:
            inputs = {key: mrml.export_volume(node, folder / f"{key}.nrrd") for key, node in self.nodes.items()}
            if self.initial_transform is not None:
                inputs["initial"] = mrml.export_transform_from_world(self.initial_transform, folder / "initial.h5")
            for key, mask in self.masks.items():     # on its own volume's grid, as ppir requires
                inputs[f"{key}_mask"] = mrml.export_mask(mask, self.nodes[key], folder / f"{key}-mask.nrrd")
        except Exception:
            self.process.cleanup()
            raise
        self.outputs = _outputs(self.settings.role, folder)
        self.process.args = ppir_arguments(self.settings, inputs, self.outputs)
        self.process.start()

    def poll(self) -> list[dict]:
        """New progress events (never blocks)."""
        events = self.process.poll()
        self.events += events
        return events

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def cancel(self) -> None:
        """Stop the run's whole process tree (returns at once; ``running`` turns false once it is gone)."""
        self.process.cancel()

    def log_text(self) -> str:
        """The command line and its whole output, for the detailed log."""
        return self.process.log_text() if self.process else ""

    def finish(self, name: str = "PPIR") -> JobResult:
        """After the process ended: raise RuntimeError with its message, or import its outputs as nodes.

        The temporary folder is removed in both cases, unless the job keeps its files.
        """
        try:
            self.process.wait()
            self.poll()
            error = self.process.error()
            if error:
                raise RuntimeError(error)
            return self._import(name)
        finally:
            self.process.cleanup(keep_files=self.keep_files)

    def wait(self, on_event=None, timeout: float | None = None, idle=None) -> JobResult:
        """Run to the end from a script: ``on_event`` sees each progress event, ``idle`` runs between polls."""
        if self.process is None:
            self.start()
        end = None if timeout is None else time.monotonic() + timeout
        while self.running:
            for event in self.poll():
                if on_event:
                    on_event(event)
            if end is not None and time.monotonic() > end:
                self.process.cleanup(keep_files=self.keep_files)
                raise RuntimeError(f"the {self.settings.role} party had no result after {timeout:g} s and was stopped")
            if idle:
                idle()
            time.sleep(0.05)
        for event in self.poll():
            if on_event:
                on_event(event)
        return self.finish()

    def _import(self, name: str) -> JobResult:
        done = [event for event in self.events if event.get("event") == "done"]
        result = JobResult(summary=done[-1] if done else None)
        role, outputs = self.settings.role, self.outputs
        if role == "dealer":
            return result
        if "report" in outputs and outputs["report"].exists():
            result.summary = {**(result.summary or {}), "report": json.loads(outputs["report"].read_text())}
        if outputs["transform"].exists():
            result.transform_node = mrml.import_transform(self.scene, outputs["transform"], f"{name} transform",
                                                          self.settings.transform if role != "fixed" else "",
                                                          self.targets["transform"])
            mrml.mark_registration(result.transform_node, self.nodes.get("moving"), self.nodes.get("fixed"))
            if self.apply_to_moving:
                mrml.apply_transform(self.nodes["moving"], result.transform_node)
        if outputs["warped"].exists():
            result.warped_node = mrml.import_volume(self.scene, outputs["warped"], f"{name} warped",
                                                    self.targets["warped"])
        return result


def certs_command(args: list[str], python: str | None = None) -> str:
    """Run ``ppir certs ARGS`` and return what it printed (RuntimeError with its message if it fails)."""
    done = subprocess.run([python or python_executable(), "-m", "ppir", "certs", *args], capture_output=True,
                          text=True, env=ppir_environment(), timeout=120)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(lines[-1].removeprefix("ppir: error: ") if lines else f"exit code {done.returncode}")
    return done.stdout.strip()


def create_identity(folder: Path, name: str, python: str | None = None) -> str:
    """This site's own key pair and self-signed certificate in ``folder``; returns its description."""
    return certs_command(["identity", str(folder), "--name", name], python)


def show_identity(folder: Path, python: str | None = None) -> str:
    """This site's certificate fingerprint and the peers it trusts, as ``ppir certs show`` prints them."""
    return certs_command(["show", str(folder)], python)


def trust_certificate(folder: Path, certificate: Path, role: str, fingerprint: str = "",
                      python: str | None = None) -> str:
    """Trust the other site's certificate for ``role``, refused if it does not have ``fingerprint`` (when given)."""
    check = ["--fingerprint", fingerprint] if fingerprint.strip() else []
    return certs_command(["trust", str(folder), str(certificate), "--role", role, *check], python)


def local_identities(folder: Path, roles: list[str], python: str | None = None) -> dict[str, Path]:
    """Throwaway identities for parties on this machine only (the self-test): each trusts the others."""
    folders = {role: folder / role for role in roles}
    for role, path in folders.items():
        create_identity(path, f"local {role}", python)
    for role, path in folders.items():
        for other, other_path in folders.items():
            if other != role:
                trust_certificate(path, other_path / "identity.pem", other, python=python)
    return folders

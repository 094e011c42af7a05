"""The roles as programs: the fixed party, the dealer and the moving party (``ppir fixed|dealer|moving``)."""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ppir.app.contract import SHARES
from ppir.app.outputs import Outputs, write_outputs
from ppir.app.report import build_report
from ppir.common.errors import PPIRError
from ppir.common.files import OutputBatch, check_output_path
from ppir.engine.disclosure import DisclosurePolicy
from ppir.engine.driver import Progress, check_initial, register
from ppir.engine.evaluate import tre
from ppir.engine.image import Grid, Volume, read_image, resample_into, write_volume
from ppir.engine.masks import read_mask
from ppir.engine.settings import Settings
from ppir.protocols import registry
from ppir.protocols.net.channel import Identity, Listener, PeerError, parse_address
from ppir.protocols.net.server import Server
from ppir.protocols.runtime import serve_fixed_session, tell_error


def announce(listener: Listener) -> None:
    """Tell a parent process where we listen (first stdout line)."""
    print(json.dumps({"event": "listening", "host": listener.address[0], "port": listener.address[1]}), flush=True)


def run_fixed(image: str, listen: str, identity: Identity, sessions: int, output_transform: Path | None,
              output_warped: Path | None, log, progress=None, dealer: str | None = None, max_sessions: int = 8,
              policy: DisclosurePolicy | None = None, mask: str | Path | None = None) -> None:
    """Party 2: answer registration sessions about the fixed image, up to ``max_sessions`` at once,
    revealing no more than its disclosure ``policy`` allows (default: the default policy).

    ``sessions``: how many to serve before exiting (0: until stopped). ``dealer``: HOST:PORT of the
    one dealer this party uses (its identity pinned as a dealer); without it, no protocol that needs one.
    ``mask``: a mask image on the fixed grid; every sample set is cut to it here, and the moving party
    learns only which of its own samples were kept.
    """
    for path in (output_transform, output_warped):
        if path is not None:
            check_output_path(path)
    if dealer is not None:
        parse_address(dealer)
        if not identity.trust.knows("dealer"):
            raise PPIRError(f"--dealer {dealer}: identity '{identity.folder}' trusts no dealer yet; add the "
                            "dealer's certificate with `ppir certs trust ... --role dealer`")
    fixed = read_image(image, "fixed image")
    fixed_mask = read_mask(mask, fixed, "fixed mask") if mask is not None else None
    for name in registry.names(private=True):
        if dealer is not None or not registry.PROTOCOLS[name].needs_dealer:
            try:
                registry.load(name)      # import its libraries now, not within the first session's time
            except PPIRError:
                pass                     # a session asking for it is refused with the reason
    listener = Listener(listen, identity, ("moving",))
    announce(listener)
    lock = threading.Lock()

    def shared(bye):
        with lock:
            return _write_shared(bye, fixed, output_transform, output_warped, log)

    def session(channel) -> str:
        stats, disclosure = serve_fixed_session(channel, fixed, identity, dealer, shared, progress, policy,
                                                fixed_mask)
        epsilon = "unbounded (no noise)" if disclosure["epsilon"] is None else f"{disclosure['epsilon']:.3g}"
        revealed = ", ".join(f"level {lv['factor']}: {lv['revealed']} values for {lv['unknowns']} voxels"
                             + (f" (mask shown at {lv['mask_membership_shown']} of {lv['voxels']})"
                                if "mask_membership_shown" in lv else "")
                             for lv in disclosure["levels"])
        return (f"session done: {stats.bytes_sent} bytes sent, {stats.bytes_received} received, "
                f"{stats.wall_time_s:.1f} s; disclosed {revealed}; epsilon {epsilon} at delta {disclosure['delta']:g}")

    failed = Server(listener, session, tell_error, log, "fixed", max_sessions, sessions).serve()
    if failed:
        raise PeerError(f"{failed} session(s) failed (see above)")


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


def run_dealer(listen: str, identity: Identity, sessions: int, log, max_sessions: int = 8) -> None:
    """The correlated-randomness provider: serve sessions between trusted moving and fixed parties."""
    hub = registry.load(registry.dealer_protocol()).DealerHub()
    listener = Listener(listen, identity, ("moving", "fixed"))
    announce(listener)
    failed = Server(listener, hub.handle, tell_error, log, "dealer", max_sessions, sessions, 2).serve()
    if failed:
        raise PeerError(f"{failed} session(s) failed (see above)")


def run_moving(moving_path: str, fixed_address: str, dealer_address: str | None, identity: Identity,
               settings: Settings, outputs: Outputs, share: str = "transform",
               progress: Progress | None = None, evaluation: tuple[Volume, sitk.Transform] | None = None,
               protocol: str = "mpc", initial: sitk.Transform | None = None,
               moving_mask: str | Path | None = None) -> dict:
    """Party 1: register its image to the remote fixed image under ``protocol`` and write its outputs.

    ``initial``: a linear fixed->moving transform to start from; checked before connecting, and
    never sent (the fixed party receives the settings, which do not include it).
    ``moving_mask``: a mask image on the moving grid; samples are drawn where the transform maps into
    it (the mask is never sent; the sample indices show where it falls on the fixed grid).

    ``evaluation`` (a fixed image and a true transform, for trials on one machine) adds ``tre_mm``.
    """
    if share not in SHARES:
        raise PPIRError(f"--share-result must be one of {', '.join(SHARES)}")
    if registry.get(protocol, private=True).needs_dealer and not dealer_address:
        raise PPIRError(f"the {protocol.upper()} protocol needs a dealer (--dealer HOST:PORT)")
    settings = replace(settings, moving_mask=moving_mask is not None)
    registry.preflight(protocol, settings)
    outputs.check(settings)
    moving = read_image(moving_path, "moving image")
    mask = read_mask(moving_mask, moving, "moving mask") if moving_mask is not None else None
    if initial is not None:
        check_initial(initial, settings, moving.grid.dim)
    start = time.perf_counter()
    backend = registry.load(protocol).moving_backend(fixed_address, dealer_address, identity, settings.to_dict())
    try:
        result = register(moving, backend, settings, progress, initial, mask)
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
    if moving_mask is not None:
        inputs["moving_mask"] = str(moving_mask)
    report = build_report(protocol, settings, result, time.perf_counter() - start, backend.party_stats(),
                          inputs, outputs.to_dict())
    report["shared_with_fixed_party"] = share
    report["disclosure"] = backend.disclosure()
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



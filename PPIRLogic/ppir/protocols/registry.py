"""Every protocol PPIR can run, by name: what it needs installed, how its roles run, its pre-flight checks.

Adding a protocol means one entry here and its own package under ``ppir.protocols``. A private
protocol's package provides a session module with:

- ``moving_backend(fixed, dealer, identity, settings) -> JointBackend``: the moving party's end;
- ``FixedHandler(meta, channel, identity, dealer)``: the fixed party's end of one session (``dealer``:
  the address the fixed party was configured with, or None);
- ``DealerHub()`` if it needs a dealer: ``handle(channel)`` serves each authenticated connection.

Standard library only (the session modules are imported on first use, with their libraries), so
that the Slicer module can list the protocols without installing any of them.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from ppir.common.errors import PPIRError


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    private: bool                     # the parties run as separate processes that talk over TLS
    needs_dealer: bool = False
    requires: str = ""                # what must be installed, in words
    session_module: str | None = None
    preflight: str | None = None      # "module:function" that refuses settings before any work
    metrics: tuple[str, ...] = ("ssd", "ncc", "mi")     # the metrics whose joint products it computes


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("clear", "one process, no protection: the accuracy reference", private=False),
    Protocol("mpc", "additive secret sharing over Z_2^64 with a dealer (moving, fixed and dealer processes)",
             private=True, needs_dealer=True, requires="PyTorch and CrypTen",
             session_module="ppir.protocols.mpc.session"),
    Protocol("fhe", "CKKS homomorphic encryption, two parties, no dealer", private=True,
             requires="TenSEAL", session_module="ppir.protocols.fhe.session",
             preflight="ppir.protocols.fhe.params:check_settings"),
)}


def names(private: bool | None = None) -> tuple[str, ...]:
    """Protocol names (only the private ones, or only the others, if ``private`` is given)."""
    return tuple(n for n, p in PROTOCOLS.items() if private is None or p.private == private)


def get(name: str, private: bool | None = None) -> Protocol:
    """The protocol called ``name``; PPIRError naming the choices if there is none (of that kind)."""
    choices = names(private)
    if name not in choices:
        raise PPIRError(f"unknown protocol {name!r}; choose from {', '.join(choices)}")
    return PROTOCOLS[name]


def dealer_protocol() -> str:
    """The protocol a dealer (``ppir dealer``) serves."""
    return next(name for name, protocol in PROTOCOLS.items() if protocol.needs_dealer)


def load(name: str) -> ModuleType:
    """The session module of a private protocol, imported now (PPIRError if its libraries are missing)."""
    protocol = get(name, private=True)
    try:
        return importlib.import_module(protocol.session_module)
    except ImportError as err:
        raise PPIRError(f"the {name.upper()} protocol needs {protocol.requires}, which this Python lacks ({err})") \
            from None


def preflight(name: str, settings) -> None:
    """Refuse, before any work, what ``name`` cannot run: a missing library, or settings it cannot serve."""
    protocol = get(name)
    if settings.metric not in protocol.metrics:
        able = [other for other, p in PROTOCOLS.items() if settings.metric in p.metrics]
        raise PPIRError(f"the {name.upper()} protocol does not compute {settings.metric.upper()} yet (its joint "
                        f"histogram is not among its products); use --protocol {' or '.join(able)}, or --metric "
                        f"{' or '.join(protocol.metrics)}")
    if not protocol.private:
        return
    load(name)
    if protocol.preflight:
        module, function = protocol.preflight.split(":")
        getattr(importlib.import_module(module), function)(settings)

"""PPIR: privacy-preserving image registration (logic layer of the PPIR 3D Slicer extension).

Layers, imports pointing down only (docs/architecture.md): ``ppir.app`` (jobs, roles, command line)
over ``ppir.protocols`` (registry, session runtime, network, MPC, FHE) over ``ppir.engine``
(images, transforms, the registration driver, the joint-product interface) over ``ppir.common``.

Public API: ``read_image``, ``Settings``, ``register_files`` (the whole job, as ``ppir register``),
``register`` (the driver, given a moving image and a backend) and ``ClearBackend``. Each name is
imported on first use, so that ``import ppir`` stays light (the Slicer module reads the settings
contract, ``ppir.app.contract``, without the engine's libraries).
"""
from __future__ import annotations

import importlib

from ppir.common.version import __version__

_PUBLIC = {"register_files": "ppir.app.job", "Outputs": "ppir.app.outputs", "ClearBackend": "ppir.engine.joint", "JointBackend": "ppir.engine.joint",
           "Settings": "ppir.engine.settings", "register": "ppir.engine.driver", "PPIRError": "ppir.common.errors",
           "Volume": "ppir.engine.image", "read_image": "ppir.engine.image", "write_image": "ppir.engine.image"}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'ppir' has no attribute {name!r}")

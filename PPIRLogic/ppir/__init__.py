"""PPIR: privacy-preserving image registration (logic layer of the PPIR 3D Slicer extension).

Public API: ``read_image``, ``Settings``, ``register_files`` (the whole job, as ``ppir register``),
``register`` (the driver, given a moving image and a backend) and ``ClearBackend``.
"""
__version__ = "0.1.0"

from .api import register_files  # noqa: E402
from .backend import ClearBackend, JointBackend  # noqa: E402
from .driver import Settings, register  # noqa: E402
from .errors import PPIRError  # noqa: E402
from .image import Volume, read_image, write_image  # noqa: E402

__all__ = ["ClearBackend", "JointBackend", "PPIRError", "Settings", "Volume", "read_image", "register",
           "register_files", "write_image", "__version__"]

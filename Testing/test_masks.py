"""Masks: each party's own mask, honoured on its own side, in every protocol, within the fixed party's policy."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
from identities import parties
from ppir.app.synth import synthesize
from ppir.common.errors import PPIRError
from ppir.engine import masks
from ppir.engine.basis import AffineBasis
from ppir.engine.disclosure import DisclosureLedger, DisclosurePolicy, DisclosureRefused, check_plan
from ppir.engine.driver import register
from ppir.engine.evaluate import tre
from ppir.engine.image import Volume, read_image, write_image
from ppir.engine.joint import ClearBackend
from ppir.engine.pyramid import LevelSpec, level_grid
from ppir.engine.sampling import draw_uniform
from ppir.engine.settings import Settings
from ppir.protocols import registry
from ppir.protocols.net.channel import Identity, PeerError
from ppir.protocols.runtime import Kind
from ppir.protocols.terms import SessionTerms
from private_runs import PY, clear_and_private, transform_rmse
from scipy import ndimage


def corrupted(volume: Volume, box, margin: int = 2) -> tuple[Volume, Volume]:
    """``volume`` with a bright artefact in ``box`` (fractions of each numpy axis) and a mask that excludes the
    artefact with ``margin`` voxels to spare (smoothing at the coarse levels spreads it)."""
    array = volume.array.copy()
    region = tuple(slice(int(lo * n), int(hi * n)) for (lo, hi), n in zip(box, array.shape))
    array[region] = 1.5 * array.max()
    outside = np.zeros(array.shape, bool)
    outside[region] = True
    mask = ~ndimage.binary_dilation(outside, iterations=margin)
    return Volume(array, volume.grid), Volume(mask.astype(np.uint8), volume.grid)


@pytest.fixture(scope="module")
def brain_pair(tmp_path_factory, mni_4mm):
    folder = tmp_path_factory.mktemp("masks3d")
    synthesize(mni_4mm, "affine", 1, folder)
    return (read_image(folder / "fixed.nrrd"), read_image(folder / "moving.nrrd"),
            sitk.ReadTransform(str(folder / "ground_truth.h5")))


SETTINGS = dict(transform="affine", levels=[2, 1], sampling="urs", sample_fraction=0.3)


def _tre(fixed, moving, truth, fixed_mask=None, moving_mask=None, reference=None) -> float:
    settings = Settings(**SETTINGS, moving_mask=moving_mask is not None)
    result = register(moving, ClearBackend(fixed, DisclosurePolicy(allow_moving_mask=True), mask=fixed_mask),
                      settings, moving_mask=moving_mask)
    return tre(reference or fixed, result.transform, truth)["mean"]


def test_a_moving_mask_that_excludes_a_corrupted_region_registers_where_no_mask_fails(brain_pair):
    fixed, moving, truth = brain_pair
    damaged, mask = corrupted(moving, [(0.2, 0.6), (0.45, 0.95), (0.2, 0.6)])
    without, with_mask = _tre(fixed, damaged, truth), _tre(fixed, damaged, truth, moving_mask=mask)
    assert without > 5.0, without           # measured 14.1 mm
    assert with_mask < 0.2, with_mask       # measured 0.061 mm (clean pair: 0.043 mm)


def test_a_fixed_mask_that_excludes_a_corrupted_region_registers_where_no_mask_fails(brain_pair):
    fixed, moving, truth = brain_pair
    damaged, mask = corrupted(fixed, [(0.4, 0.8), (0.05, 0.5), (0.4, 0.8)])
    without = _tre(damaged, moving, truth, reference=fixed)
    with_mask = _tre(damaged, moving, truth, fixed_mask=mask, reference=fixed)
    assert without > 5.0, without           # measured 13.7 mm
    assert with_mask < 0.2, with_mask       # measured 0.04 mm


def test_moving_samples_are_drawn_inside_the_moving_mask_and_the_fixed_party_keeps_those_inside_its_own(brain_pair):
    from ppir_bench.attack.record import RecordingBackend
    fixed, moving, _ = brain_pair
    _, moving_mask = corrupted(moving, [(0.2, 0.6), (0.45, 0.95), (0.2, 0.6)])
    _, fixed_mask = corrupted(fixed, [(0.4, 0.8), (0.05, 0.5), (0.4, 0.8)])
    backend = ClearBackend(fixed, DisclosurePolicy(allow_moving_mask=True), mask=fixed_mask)
    recorder = RecordingBackend(backend)
    offered = []
    keep = recorder.keep_samples
    recorder.keep_samples = lambda samples, basis: offered.append(samples) or keep(samples, basis)
    result = register(moving, recorder, Settings(**SETTINGS, moving_mask=True), moving_mask=moving_mask)
    sets = recorder.recording.sample_sets
    assert len(sets) == len(offered) == 2
    for sample_set, drawn, level in zip(sets, offered, result.levels):
        inside_fixed = masks.footprint(fixed_mask, sample_set.grid)
        assert inside_fixed[sample_set.samples].all()                         # only kept samples enter the sums
        np.testing.assert_array_equal(sample_set.samples, drawn[inside_fixed[drawn]])
        assert len(drawn) < round(0.3 * sample_set.grid.n_voxels)              # URS inside the moving mask: fewer
        assert level.samples == len(sample_set.samples)
    accounts = backend.disclosure()["levels"]
    assert [a["unknowns"] for a in accounts] == [len(s.samples) for s in sets]            # kept samples only
    assert [a["mask_membership_shown"] for a in accounts] == [len(d) for d in offered]    # what it showed


def test_the_ledger_counts_the_masks_membership_it_shows_and_refuses_beyond_its_share():
    policy = DisclosurePolicy(min_samples=10, max_sample_sets=5, max_mask_fraction=0.5,
                              uniform_samples=False)      # runs of consecutive voxels, to count them by hand
    ledger = DisclosureLedger(policy, "urs", fixed_mask=True)
    ledger.start_level(2, (100,))
    ledger.offer(np.arange(0, 40))
    ledger.kept(12, 40)
    with pytest.raises(DisclosureRefused, match=r"keeps 9 of the 40 samples at level 2, under its minimum of 10"):
        ledger.kept(9, 40)
    ledger.offer(np.arange(30, 50))          # 50 voxels shown in all: the limit
    with pytest.raises(DisclosureRefused, match=r"61 of the 100 voxels of level 2 \(61 %\).*max_mask_fraction"):
        ledger.offer(np.arange(41, 61))
    with pytest.raises(PPIRError, match="max_mask_fraction must be in"):
        DisclosurePolicy(max_mask_fraction=1.5)


def test_moving_masks_need_the_fixed_partys_consent(slice_2d):
    """A moving mask lets the moving party choose its samples (its sets are not checked for uniform spread: the
    thinning attack of test_reconstruction.py), so the default policy refuses it: the moving party's plan
    stops, and the fixed party refuses the session's settings itself. allow_moving_mask = true allows it."""
    settings = Settings(levels=[1], sampling="urs", moving_mask=True)
    policy = DisclosurePolicy()
    with pytest.raises(DisclosureRefused, match="refuses a moving mask.*allow_moving_mask = true"):
        check_plan(policy, settings, slice_2d.grid)
    with pytest.raises(DisclosureRefused, match="refuses a moving mask"):
        ClearBackend(slice_2d, policy).agree(settings)
    ClearBackend(slice_2d, DisclosurePolicy(allow_moving_mask=True)).agree(settings)
    ClearBackend(slice_2d, policy).agree(Settings(levels=[1], sampling="urs"))


def test_the_moving_party_plans_within_the_fixed_mask_share(slice_2d):
    policy = DisclosurePolicy(min_samples=16)
    check_plan(policy, Settings(levels=[2, 1], sampling="urs", sample_fraction=0.5), slice_2d.grid, fixed_mask=True)
    for settings in (Settings(levels=[2, 1], sampling="full"), Settings(sampling="urs", sample_fraction=0.6)):
        with pytest.raises(DisclosureRefused, match="sample-fraction of at most 0.5"):
            check_plan(policy, settings, slice_2d.grid, fixed_mask=True)
        check_plan(policy, settings, slice_2d.grid)                          # no fixed mask: no such limit


def test_the_fixed_party_accepts_fewer_samples_only_from_a_moving_party_with_a_mask(slice_2d):
    grid = slice_2d.grid
    subset = np.arange(0, 100, dtype=np.int64)
    basis = {"kind": "affine"}
    for sampling, expected in (("full", None), ("urs", 0.1)):
        values = dict(levels=[1], sampling=sampling, sample_fraction=expected or 0.1)
        masked = SessionTerms("fhe", Settings(**values, moving_mask=True).to_dict(), grid)
        masked.check_level(LevelSpec(1, 0.0))
        masked.check_samples(subset, basis, grid.n_voxels)
        plain = SessionTerms("fhe", Settings(**values).to_dict(), grid)
        plain.check_level(LevelSpec(1, 0.0))
        with pytest.raises(PeerError):
            plain.check_samples(subset, basis, grid.n_voxels)
    masked = SessionTerms("fhe", Settings(levels=[1], sampling="urs", moving_mask=True).to_dict(), grid)
    masked.check_level(LevelSpec(1, 0.0))
    with pytest.raises(PeerError, match="at most"):
        masked.check_samples(np.arange(grid.n_voxels // 2, dtype=np.int64), basis, grid.n_voxels)


def _serve_fixed(tmp_path, fixed: Volume, mask: Volume, policy: DisclosurePolicy):
    write_image(fixed, tmp_path / "fixed.nrrd")
    write_image(mask, tmp_path / "fixed-mask.nrrd")
    policy.write(tmp_path / "policy.toml")
    folders = parties(tmp_path / "ids", ("moving", "fixed"))
    process = subprocess.Popen(PY + ["fixed", "--image", str(tmp_path / "fixed.nrrd"), "--listen", "127.0.0.1:0",
                                     "--identity", str(folders["fixed"]), "--disclosure-policy",
                                     str(tmp_path / "policy.toml"), "--fixed-mask", str(tmp_path / "fixed-mask.nrrd")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    address = "127.0.0.1:{port}".format(**json.loads(process.stdout.readline()))
    return process, address, Identity.load(folders["moving"])


def test_the_moving_party_receives_only_which_of_its_own_samples_the_fixed_mask_keeps(tmp_path, slice_2d):
    """A real ``ppir fixed`` with a mask, under FHE; every message the moving party receives is recorded."""
    fixed, moving = slice_2d, slice_2d
    mask = np.zeros(fixed.array.shape, np.uint8)
    mask[20:100, 10:90] = 1
    fixed_mask = Volume(mask, fixed.grid)
    process, address, identity = _serve_fixed(tmp_path, fixed, fixed_mask, DisclosurePolicy(min_samples=64))
    settings = Settings(levels=[2, 1], sampling="urs", sample_fraction=0.25, max_iterations=3)
    backend = registry.load("fhe").moving_backend(address, None, identity, settings.to_dict())
    received, sent = [], []
    recv, send = backend._fixed.recv, backend._fixed.send
    backend._fixed.recv = lambda *a, **k: received.append(recv(*a, **k)) or received[-1]
    backend._fixed.send = lambda message: sent.append(message) or send(message)
    try:
        assert backend.fixed_mask
        register(moving, backend, settings)
        backend.finish({"shared": "none"}, {})
    finally:
        backend.close()
    process.wait(60)
    assert "(mask shown at" in process.stderr.read()            # the fixed party's own session log says it
    offered = [m.arrays["samples"] for m in sent if m.kind == Kind.SAMPLES]
    kept = [m for m in received if m.kind == Kind.SAMPLES_KEPT]
    assert len(offered) == len(kept) == 2
    as_read = read_image(tmp_path / "fixed.nrrd").grid            # the fixed party's own grid, as it reads it
    for samples, message, factor in zip(offered, kept, (2, 1)):
        assert set(message.arrays) == {"kept"} and message.meta == {}
        inside = masks.footprint(Volume(mask, as_read), level_grid(as_read, factor))
        np.testing.assert_array_equal(message.arrays["kept"], samples[inside[samples]])
        assert 0 < len(message.arrays["kept"]) < len(samples)
    # no other message carries an array of the level's size (the mask as a whole)
    for message in received:
        if message.kind != Kind.SAMPLES_KEPT:
            assert all(array.dtype != np.bool_ for array in message.arrays.values())
    report = json.loads(json.dumps(backend.disclosure()))
    assert [lv["unknowns"] for lv in report["levels"]] == [len(m.arrays["kept"]) for m in kept]
    assert [lv["mask_membership_shown"] for lv in report["levels"]] == [len(s) for s in offered]


def test_a_fixed_mask_that_leaves_too_few_samples_is_refused_with_the_reason(tmp_path, slice_2d):
    mask = np.zeros(slice_2d.array.shape, np.uint8)
    mask[60:70, 60:70] = 1                  # 100 voxels of 16384
    fixed_mask = Volume(mask, slice_2d.grid)
    settings = Settings(levels=[1], sampling="urs", sample_fraction=0.2)
    with pytest.raises(DisclosureRefused, match=r"the fixed party's mask keeps \d+ of the 3277 samples at level 1, "
                                                r"under its minimum of 2048"):
        register(slice_2d, ClearBackend(slice_2d, DisclosurePolicy(), mask=fixed_mask), settings)
    process, address, identity = _serve_fixed(tmp_path, slice_2d, fixed_mask, DisclosurePolicy())
    backend = registry.load("fhe").moving_backend(address, None, identity, settings.to_dict())
    try:
        grid = backend.start_level(LevelSpec(1, 0.0))
        samples = draw_uniform(grid.n_voxels, 0.2, np.random.default_rng(0))
        with pytest.raises(PeerError, match=r"the fixed party stopped: the fixed party's mask keeps \d+ of the 3277"):
            backend.keep_samples(samples, AffineBasis(grid.points(samples), grid.center()))
    finally:
        backend.close()
    process.wait(60)
    assert "under its minimum of 2048" in process.stderr.read()


@pytest.mark.parametrize("protocol", ["mpc", "fhe"])
def test_both_masks_under_each_private_protocol_give_the_clear_result(tmp_path, slice_2d, protocol):
    """The same samples kept: the private run matches the clear one with both masks.

    (On images with the bright artefacts of the tests above, MPC's fixed-point products round the artefact's
    large gradients and its path departs from the clear one by 0.2 mm at the same TRE; FHE stays exact.)"""
    synthesize(slice_2d, "affine", 2, tmp_path)
    _, moving_mask = corrupted(read_image(tmp_path / "moving.nrrd"), [(0.5, 0.8), (0.2, 0.5)], margin=4)
    _, fixed_mask = corrupted(read_image(tmp_path / "fixed.nrrd"), [(0.2, 0.45), (0.5, 0.8)], margin=4)
    write_image(fixed_mask, tmp_path / "fixed-mask.nrrd")
    write_image(moving_mask, tmp_path / "moving-mask.nrrd")
    report = clear_and_private(protocol, tmp_path / "fixed.nrrd", tmp_path / "moving.nrrd", tmp_path,
                               "--fixed-mask", tmp_path / "fixed-mask.nrrd", "--moving-mask",
                               tmp_path / "moving-mask.nrrd", "--levels", "2,1", "--sampling", "urs",
                               "--sample-fraction", "0.3", "--max-iterations", "5",
                               "--ground-truth", tmp_path / "ground_truth.h5")
    clear = json.loads((tmp_path / "clear.json").read_text())
    assert report["settings"]["moving_mask"] is True
    assert [lv["samples"] for lv in report["levels"]] == [lv["samples"] for lv in clear["levels"]]
    # the same samples kept and shown; the products may differ by a rejected trial step, where the two runs'
    # metrics differ in the last digits near the optimum
    fields = ("factor", "unknowns", "sample_sets", "mask_membership_shown", "voxels")
    assert [{k: lv[k] for k in fields} for lv in report["disclosure"]["levels"]] == \
        [{k: lv[k] for k in fields} for lv in clear["disclosure"]["levels"]]
    assert all(0 < lv["mask_membership_shown"] < lv["voxels"] for lv in report["disclosure"]["levels"])
    assert transform_rmse(tmp_path / f"{protocol}.h5", tmp_path / "clear.h5", slice_2d.grid) < 0.05   # issue 15's bar
    assert report["tre_mm"]["mean"] < 0.1


def _volume_file(path, array, spacing=(2.0, 2.0), origin=(0.0, 0.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("option", ["--fixed-mask", "--moving-mask"])
@pytest.mark.parametrize("kind, message", [
    ("empty", "is empty (no non-zero voxel)"),
    ("size", "not on its image's grid (size [64, 64]"),
    ("spacing", "not on its image's grid (spacing [1.0, 1.0] mm"),
    ("origin", "not on its image's grid (origin [5.5, 0.5] mm"),
    ("vector", "components per voxel"),
    ("missing", "no such file"),
    ("text", "not a readable image"),
])
def test_a_bad_mask_stops_with_its_problem_and_no_output(tmp_path, slice_2d, option, kind, message):
    write_image(slice_2d, tmp_path / "image.nrrd")
    grid = slice_2d.grid
    ones = np.ones(slice_2d.array.shape, np.uint8)
    spacing, origin = tuple(grid.spacing), tuple(grid.origin)
    path = tmp_path / "mask.nrrd"
    if kind == "empty":
        _volume_file(path, 0 * ones, spacing, origin)
    elif kind == "size":
        _volume_file(path, ones[:64, :64], spacing, origin)
    elif kind == "spacing":
        _volume_file(path, ones, (1.0, 1.0), origin)
    elif kind == "origin":
        _volume_file(path, ones, spacing, (origin[0] + 5.0, origin[1]))
    elif kind == "vector":
        image = sitk.Compose(sitk.GetImageFromArray(ones), sitk.GetImageFromArray(ones))
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        sitk.WriteImage(image, str(path))
    elif kind == "text":
        path.write_text("not an image")
    done = subprocess.run(PY + ["register", "--fixed", str(tmp_path / "image.nrrd"), "--moving",
                                str(tmp_path / "image.nrrd"), option, str(path), "--sampling", "urs",
                                "--output-transform", str(tmp_path / "t.h5"), "--report", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    role = option.strip("-").replace("-", " ")
    assert f"ppir: error: {role} '{path}'" in done.stderr and message in done.stderr, done.stderr
    assert not (tmp_path / "t.h5").exists() and not (tmp_path / "r.json").exists()


def test_each_party_checks_its_own_mask_before_it_serves_or_connects(tmp_path, slice_2d):
    write_image(slice_2d, tmp_path / "image.nrrd")
    _volume_file(tmp_path / "empty.nrrd", np.zeros(slice_2d.array.shape, np.uint8), tuple(slice_2d.grid.spacing),
                 tuple(slice_2d.grid.origin))
    folders = parties(tmp_path / "ids", ("moving", "fixed"))
    fixed = subprocess.run(PY + ["fixed", "--image", str(tmp_path / "image.nrrd"), "--listen", "127.0.0.1:0",
                                 "--identity", str(folders["fixed"]), "--fixed-mask", str(tmp_path / "empty.nrrd")],
                           capture_output=True, text=True, timeout=60)
    assert fixed.returncode == 2 and "fixed mask" in fixed.stderr and "is empty" in fixed.stderr
    assert "listening" not in fixed.stdout
    moving = subprocess.run(PY + ["moving", "--image", str(tmp_path / "image.nrrd"), "--connect", "127.0.0.1:9",
                                  "--protocol", "fhe", "--identity", str(folders["moving"]), "--moving-mask",
                                  str(tmp_path / "empty.nrrd"), "--output-transform", str(tmp_path / "t.h5")],
                            capture_output=True, text=True, timeout=60)
    assert moving.returncode == 2 and "moving mask" in moving.stderr and "is empty" in moving.stderr, moving.stderr
    assert not (tmp_path / "t.h5").exists()


def test_the_settings_say_whether_the_moving_party_masks(slice_2d):
    with pytest.raises(PPIRError, match="moving_mask"):
        register(slice_2d, ClearBackend(slice_2d), Settings(levels=[1]),
                 moving_mask=Volume(np.ones(slice_2d.array.shape, np.uint8), slice_2d.grid))
    with pytest.raises(PPIRError, match="true or false"):
        Settings.from_dict({"moving_mask": "yes"})

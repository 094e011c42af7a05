"""The FHE protocol: real SEAL (TenSEAL's sealapi), real processes over loopback TLS, real images."""
from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pytest
import tenseal.sealapi as seal
from ppir.app.synth import synthesize
from ppir.engine.basis import BSplineBasis
from ppir.engine.bspline import control_grid_for
from ppir.engine.image import Grid, read_image
from ppir.engine.joint import fixed_scale
from ppir.protocols.fhe import params, seal_raw
from ppir.protocols.fhe.evaluator import MovingEvaluator
from ppir.protocols.fhe.keys import FixedKeys
from ppir.protocols.fhe.packed import CellLayout, PackedProducts, split_weights
from ppir.protocols.fhe.seal_io import context, dump, load
from identities import party, parties
from private_runs import PY, clear_and_private, transform_rmse


@pytest.fixture(scope="module")
def keys():
    return FixedKeys()


def _masked(keys, columns, weights, outputs):
    evaluator = MovingEvaluator(keys.public_bundle())
    evaluator.set_columns(keys.encrypt(columns), len(columns))
    return evaluator.masked_sums(weights, outputs)


def test_masked_sums_recover_the_products(keys):
    rng = np.random.default_rng(0)
    columns = np.stack([rng.random(10000), rng.uniform(-1, 1, 10000)])
    weights = rng.standard_normal((2, 10000))
    weights /= np.abs(weights).sum(axis=1, keepdims=True)
    outputs = [(0, 0), (0, 1), (1, 0), (1, 1)]
    masked = _masked(keys, columns, weights, outputs)
    blobs, removed = [masked[k][0] for k in range(4)], [masked[k][1] for k in range(4)]
    released = keys.release(blobs, [0] * len(blobs))
    got = np.array([MovingEvaluator.unmask(v, u) for v, u in zip(released, removed)])
    want = np.array([weights[b] @ columns[a] for a, b in outputs])
    assert np.abs(got - want).max() < 1e-8
    # the fixed party saw only masked values: U spreads them over 2**177 integer units
    assert min(abs(v) for v in released) > 2.0 ** 150


def test_release_is_flooded_not_a_raw_decryption(keys):
    rng = np.random.default_rng(1)
    columns = rng.random((1, 5000))
    weights = rng.random((1, 5000))
    weights /= weights.sum()
    blobs = [_masked(keys, columns, weights, [(0, 0)])[0][0]]
    first, second = keys.release(blobs * 2, [0] * 2 * len(blobs))
    assert first != second  # fresh flooding noise on each release of the same ciphertext
    raw = keys._constant_coefficient(_decrypt(keys, blobs[0]))
    assert raw not in (first, second)
    width = params.flood_width(2)
    assert abs(first - raw) <= width and abs(second - raw) <= width
    assert abs(first - second) > width / 2 ** 20


def _decrypt(keys, blob):
    plain = seal.Plaintext()
    keys._decryptor.decrypt(load(seal.Ciphertext(), keys._context, blob), plain)
    return plain


def test_the_public_context_holds_no_secret_key(keys):
    bundle = keys.public_bundle()
    secret = dump(keys._secret)
    assert secret[16:80] not in bundle["parms"] + bundle["galois"] + bundle["public"]
    # a party with only the public context can make keys of its own; they do not decrypt Enc(J)
    ctx = context(load(seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS), None, bundle["parms"]))
    other = seal.Decryptor(ctx, seal.KeyGenerator(ctx).secret_key())
    values = np.linspace(0, 1, params.SLOTS)
    ciphertext = load(seal.Ciphertext(), ctx, keys.encrypt(values[None])[0])
    plain = seal.Plaintext()
    other.decrypt(ciphertext, plain)
    assert np.abs(np.array(seal.CKKSEncoder(ctx).decode_double(plain)) - values).max() > 1e3


def _packed_case(keys, rng):
    """A 2D B-spline sample set, J and moving channels; the packed products, masked for release."""
    grid = Grid((36, 40), np.array([2.0, 2.0]), np.zeros(2), np.eye(2))
    samples = np.sort(rng.choice(grid.n_voxels, 900, replace=False))
    basis = BSplineBasis(grid.points(samples), control_grid_for(grid, 10.0))
    layout = CellLayout(basis)
    values = rng.random(len(samples)) * 200.0
    scale = fixed_scale(values)
    phi = basis.support_weights
    products = PackedProducts(MovingEvaluator(keys.public_bundle()), layout,
                              keys.encrypt(layout.fixed_rows(values / scale, phi), params.PACKED_DELTA_FIXED))
    g, warped = rng.standard_normal((len(samples), 2)), rng.random(len(samples))
    norms = np.abs(g).sum(axis=0)
    first_axes = split_weights(phi)[0]
    ciphertexts = [products.channel(first_axes * (g[:, k] / norms[k])[:, None]) for k in range(2)]
    ciphertexts.append(products.cross(warped / warped.sum()))
    want = np.column_stack([basis.transpose_apply(g * values[:, None]), np.full(layout.n_points, warped @ values)])
    return products, [products.masked(c) for c in ciphertexts], np.append(norms, warped.sum()) * scale, want


def test_packed_products_recover_every_control_point(keys):
    products, masked, factors, want = _packed_case(keys, np.random.default_rng(2))
    widths = products.layout.flood_widths(2)
    released = keys.release_packed([blob for blob, _ in masked], widths, [[0] * params.POLY_DEGREE] * len(masked))
    got = [products.unmask(values, pad) * factor for values, (_, pad), factor in zip(released, masked, factors)]
    layout = products.layout
    assert layout.blocks > 1
    for k in range(2):
        assert np.abs(layout.outputs(got[k]) - want[:, k]).max() < 1e-7 * np.abs(want[:, k]).max()
        # the moving party learns R and nothing else: every block holds the total, the rest is zero
        blocks = got[k].reshape(layout.blocks, layout.block_size)
        assert np.abs(blocks - blocks[0]).max() < 1e-7 * np.abs(want[:, k]).max()
        assert np.abs(blocks[:, layout.n_points:]).max() < 1e-7 * np.abs(want[:, k]).max()
    assert np.abs(got[2] - want[0, 2]).max() < 1e-7 * want[0, 2]


def test_packed_noise_is_one_draw_in_every_copy(keys):
    """The policy's noise on a packed release (``packed.periodic_polynomial``): every copy of an output (one per
    block; the cross term in every slot) moves by the same value, so averaging the copies does not shrink it."""
    from ppir.protocols.fhe import packed
    products, masked, factors, want = _packed_case(keys, np.random.default_rng(5))
    layout, rng = products.layout, np.random.default_rng(6)
    block = rng.normal(0, 1e-3, layout.block_size)
    cross = rng.normal(0, 1e-3)
    noise = [packed.periodic_polynomial(block, max(layout.block_size, 2))] * 2 + \
        [packed.periodic_polynomial(np.full(2, cross), 2)]
    released = keys.release_packed([blob for blob, _ in masked], layout.flood_widths(2), noise)
    got = [products.unmask(values, pad) for values, (_, pad) in zip(released, masked)]
    assert layout.blocks > 1
    for k in range(2):
        blocks = got[k].reshape(layout.blocks, layout.block_size)
        assert np.abs(blocks - blocks[0]).max() < 1e-6        # every copy alike (noise 1e-3, flooding far less)
        assert np.abs(layout.outputs(blocks.mean(axis=0)) * factors[k] - want[:, k]
                      - layout.outputs(block) * factors[k]).max() < 1e-7 * np.abs(want[:, k]).max()
    assert np.abs(got[2] - got[2][0]).max() < 1e-6
    assert abs(got[2].mean() * factors[2] - want[0, 2] - cross * factors[2]) < 1e-7 * want[0, 2]
    with pytest.raises(ValueError, match="power of two"):
        packed.periodic_polynomial(np.zeros(3), 3)


def test_packed_release_is_padded_and_flooded(keys):
    products, masked, _, _ = _packed_case(keys, np.random.default_rng(3))
    blob, pad = masked[0]
    raw = seal_raw.residues(_decrypt(keys, blob)).reshape(pad.shape)
    # what the fixed party decrypts is padded by a polynomial uniform over R_q: the residues look uniform
    primes = np.array(keys._primes, dtype=np.float64)[:, None]
    assert abs((raw / primes).mean() - 0.5) < 0.01
    width = products.layout.flood_widths(2)[0]
    first, second = keys.release_packed([blob, blob], [width, width], [[0] * params.POLY_DEGREE] * 2)
    assert not np.array_equal(first, second)                    # fresh flooding on each release
    assert not np.array_equal(first.reshape(raw.shape), raw)     # never the raw decryption
    # the flooding is as wide as the parameters say: decoded, the two releases differ by about
    # N * width / scale in the slots, far below the values yet far above the ciphertext's error
    spread = np.abs(products.unmask(first, pad) - products.unmask(second, pad)).max()
    assert 1e-3 < spread / (params.POLY_DEGREE * width / 2.0 ** params.PACKED_PRODUCT_BITS) < 10


def test_periodic_releases_recover_every_output_and_nothing_else(keys):
    """Mattes MI's packed releases: P outputs per ciphertext, the fixed party returning only its period-P part (P
    integers, flooded, with the policy's noise), whatever the moving party sent."""
    from ppir.protocols.fhe import packed
    rng = np.random.default_rng(4)
    n, bins, outputs = 9000, 3, 5                        # 5 outputs: P = 8, three residues empty
    p = packed.period(outputs)
    labels = rng.integers(0, bins, n)
    memberships = np.zeros((bins, n))
    memberships[labels, np.arange(n)] = 1.0
    phi = rng.uniform(-1, 1, (n, outputs))              # public columns, interleaved by the fixed party
    columns = np.vstack([memberships, packed.fixed_interleave(memberships, phi, p)])
    evaluator = MovingEvaluator(keys.public_bundle())
    evaluator.set_columns(keys.encrypt(columns, params.PACKED_DELTA_FIXED), len(columns))
    weights = []
    for _ in range(2):                                   # two weight sets, each output's rows of l1 norm <= 1
        rows = np.zeros((p, n))
        rows[:outputs] = rng.uniform(-1, 1, (outputs, n))
        weights.append(rows / (2 * np.abs(rows).sum(axis=1, keepdims=True).clip(1e-30)))
    weights.append(rng.uniform(-1, 1, n) / (4 * n))     # one row per term, used with P interleaved columns
    fixed_side = [(tuple(bins + l * p + r for r in range(p)), 2) for l in (0, 2)]
    releases = [[(0, 0), (1, 1)], [(2, 0)], [(1, 1), (2, 1)], fixed_side]
    want = np.array([sum(weights[b] @ memberships[a] for a, b in terms) for terms in releases[:3]]
                    + [np.r_[sum((memberships[l] * weights[2]) @ phi for l in (0, 2)), np.zeros(p - outputs)]])
    noise = np.zeros((len(releases), p))
    noise[:, :outputs] = rng.normal(0, 1e-3, (len(releases), outputs))
    products = packed.periodic_products(evaluator, weights, releases, p)
    folding = packed.Folding(evaluator.context, evaluator.evaluator, evaluator.primes)
    masked = [packed.masked(evaluator, c) for c in products]
    width = packed.periodic_flood_width(keys.chunks * 2 * p, p)     # at most two terms a release
    released = keys.release_periodic([blob for blob, _ in masked], p, width,
                                     [packed.periodic_noise(row, p) for row in noise])
    assert [len(row) for row in released] == [p] * len(releases)   # P integers per ciphertext, nothing else
    for k, (row, (_, pad)) in enumerate(zip(released, masked)):
        got = packed.periodic_outputs(row, pad, folding, evaluator.primes, p)
        assert np.abs(got - want[k] - noise[k]).max() < 1e-9
    # the fixed party reads the period-P part from SEAL's inverse NTT: the same integers as folding every residue
    for p_fold in (2, 4, p):
        plain = _decrypt(keys, masked[0][0])
        whole = seal_raw.residues(plain).reshape(len(evaluator.primes), params.POLY_DEGREE)
        assert folding.plaintext(plain, p_fold) == folding(whole, p_fold)
    # released again: fresh flooding; without the pad: uniform-looking residues of q
    again = keys.release_periodic([masked[0][0]], p, width, [[0] * p])[0]
    assert again != released[0]
    # a moving party that skips the rotations (one sample's product in each slot) still learns P numbers only,
    # each a mean over 4096 / P slots
    one = [row[:, :params.SLOTS] for row in weights[:1]]
    evaluator.set_columns(keys.encrypt(memberships[:, :params.SLOTS], params.PACKED_DELTA_FIXED), bins)
    product = seal.Ciphertext()
    evaluator.evaluator.multiply_plain(evaluator.columns[0][0], evaluator.encode(one[0][0], params.PACKED_DELTA_MOVING),
                                       product)
    blob, pad = packed.masked(evaluator, product)
    row = keys.release_periodic([blob], p, width, [[0] * p])[0]
    got = packed.periodic_outputs(row, pad, folding, evaluator.primes, p)
    slot_values = memberships[0, :params.SLOTS] * one[0][0]
    means = slot_values.reshape(-1, p).mean(axis=0) * params.SLOTS / p
    assert np.abs(got - means).max() < 1e-9
    with pytest.raises(ValueError, match="l1 norm"):
        packed.periodic_products(evaluator, [weights[0] * 3], [[(0, 0)]], p)


def test_decryption_budget_is_enforced(keys):
    keys.released = params.MAX_RELEASED
    try:
        with pytest.raises(Exception, match="budget"):
            keys.release([b"x"], [0])
    finally:
        keys.released = 0




def test_register_fhe_matches_clear_affine_3d(mni_4mm, tmp_path):
    synthesize(mni_4mm, "affine", 6, tmp_path)
    report = clear_and_private("fhe", tmp_path / "fixed.nrrd", tmp_path / "moving.nrrd", tmp_path, "--levels", "2,1")
    assert report["protocol"] == "fhe" and "dealer" not in report["inputs"]
    moving, fixed = report["parties"]["moving"], report["parties"]["fixed"]
    # the fixed party sends the Galois keys and Enc(J x basis column) per level
    assert fixed["bytes_sent"] > 8e6 and moving["bytes_received"] >= fixed["bytes_sent"] * 0.99
    assert transform_rmse(tmp_path / "fhe.h5", tmp_path / "clear.h5", mni_4mm.grid) < 1e-3


def test_register_fhe_matches_clear_bspline_3d(mni_4mm, tmp_path):
    synthesize(mni_4mm, "bspline", 5, tmp_path)
    report = clear_and_private("fhe", tmp_path / "fixed.nrrd", tmp_path / "moving.nrrd", tmp_path,
                               "--transform", "bspline", "--levels", "2", "--sampling", "urs",
                               "--sample-fraction", "0.2", "--max-iterations", "3", "--bspline-spacing", "40")
    assert report["levels"][-1]["stage"] == "bspline" and report["levels"][-1]["iterations"] > 0
    assert transform_rmse(tmp_path / "fhe.h5", tmp_path / "clear.h5", mni_4mm.grid) < 1e-3


def test_register_fhe_matches_clear_rigid_2d(slice_2d, tmp_path):
    synthesize(slice_2d, "affine", 2, tmp_path)
    clear_and_private("fhe", tmp_path / "fixed.nrrd", tmp_path / "moving.nrrd", tmp_path, "--transform", "rigid",
                   "--levels", "2,1", "--sampling", "urs", "--sample-fraction", "0.3")
    assert transform_rmse(tmp_path / "fhe.h5", tmp_path / "clear.h5", slice_2d.grid) < 1e-3


def test_fhe_runs_where_torch_and_crypten_are_not_installed(slice_2d, tmp_path):
    """An FHE-only install (what the Slicer module installs for FHE) has no torch: every process must do without."""
    blocked = tmp_path / "blocked"
    for name in ("torch", "crypten"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    synthesize(slice_2d, "affine", 3, tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocked), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(PY + ["register", "--fixed", str(tmp_path / "fixed.nrrd"), "--moving",
                                str(tmp_path / "moving.nrrd"), "--protocol", "fhe", "--levels", "2",
                                "--output-transform", str(tmp_path / "t.h5")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    refused = subprocess.run(PY + ["register", "--fixed", str(tmp_path / "fixed.nrrd"), "--moving",
                                   str(tmp_path / "moving.nrrd"), "--protocol", "mpc", "--levels", "2",
                                   "--output-transform", str(tmp_path / "m.h5")],
                             capture_output=True, text=True, timeout=600, env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "the MPC protocol needs PyTorch and CrypTen, which this Python lacks" in refused.stderr


@pytest.fixture(scope="module")
def pair(tmp_path_factory, mni_4mm):
    folder = tmp_path_factory.mktemp("fhepair")
    synthesize(mni_4mm, "affine", 4, folder)
    parties(folder / "ids", ("moving", "fixed"))
    return folder


def _start_fixed(pair, *extra):
    process = subprocess.Popen(PY + ["fixed", "--image", str(pair / "fixed.nrrd"), "--listen", "127.0.0.1:0",
                                     "--identity", str(pair / "ids/fixed"), *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert line, process.stderr.read()
    return process, "127.0.0.1:{port}".format(**json.loads(line))


def test_two_parties_without_dealer_share_the_transform(pair, tmp_path):
    fixed, address = _start_fixed(pair, "--output-transform", str(tmp_path / "received.h5"))
    done = subprocess.run(PY + ["moving", "--image", str(pair / "moving.nrrd"), "--connect", address,
                                "--identity", str(pair / "ids/moving"), "--levels", "2", "--output-transform",
                                str(tmp_path / "t.h5")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "registered (fhe)" in done.stdout
    assert fixed.wait(30) == 0
    assert transform_rmse(tmp_path / "t.h5", tmp_path / "received.h5", read_image(pair / "fixed.nrrd").grid) < 1e-9


def test_fixed_party_terminal_progress_survives_a_whole_session(pair, tmp_path):
    """`ppir fixed` on a terminal shows FixedPartyBar: every event of a real session, 'done' included."""
    import io
    import socket
    import threading

    from ppir.app.progress import FixedPartyBar
    from ppir.app.roles import run_fixed
    from ppir.protocols.net.channel import Identity
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    screen, failures = io.StringIO(), []

    def serve():
        try:
            run_fixed(str(pair / "fixed.nrrd"), f"127.0.0.1:{port}", Identity.load(pair / "ids/fixed"),
                      1, None, None, lambda *_: None, FixedPartyBar(screen))
        except Exception as err:   # reported below, in the test's thread
            failures.append(err)
    server = threading.Thread(target=serve)
    server.start()
    done = subprocess.run(PY + ["moving", "--image", str(pair / "moving.nrrd"), "--connect", f"127.0.0.1:{port}",
                                "--identity", str(pair / "ids/moving"), "--levels", "2", "--output-transform",
                                str(tmp_path / "t.h5")], capture_output=True, text=True, timeout=600)
    server.join(60)
    assert done.returncode == 0, done.stderr
    assert not failures and not server.is_alive()
    assert "products answered" in screen.getvalue() and screen.getvalue().endswith("\n")


def test_fixed_party_that_disappears_mid_run(pair, tmp_path):
    fixed, address = _start_fixed(pair)
    moving = subprocess.Popen(PY + ["moving", "--image", str(pair / "moving.nrrd"), "--connect", address,
                                    "--identity", str(pair / "ids/moving"), "--levels", "2,1", "--progress-json",
                                    "--output-transform", str(tmp_path / "t.h5")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "iteration" in moving.stdout.readline()
    fixed.kill()
    _, err = moving.communicate(timeout=60)
    assert moving.returncode == 3 and "fixed party" in err and "Traceback" not in err
    assert not (tmp_path / "t.h5").exists()


def test_unknown_moving_party_is_refused_and_the_fixed_party_serves_on(pair, tmp_path):
    from ppir.protocols.net import trust
    from ppir.protocols.net.channel import Identity
    stranger = party(tmp_path / "stranger", "Stranger")
    trust.trust_peer(stranger, pair / "ids/fixed/identity.pem", "fixed")
    fixed, address = _start_fixed(pair)
    done = subprocess.run(PY + ["moving", "--image", str(pair / "moving.nrrd"), "--connect", address,
                                "--protocol", "fhe", "--identity", str(stranger), "--output-transform",
                                str(tmp_path / "t.h5")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and Identity.load(stranger).fingerprint in done.stderr
    assert "does not trust this party's identity" in done.stderr
    assert not (tmp_path / "t.h5").exists()
    time.sleep(0.5)
    assert fixed.poll() is None
    fixed.kill()
    assert "not trusted" in fixed.communicate()[1]


@pytest.mark.parametrize("options, message", [
    (["--protocol", "mpc"], "needs a dealer"),
    (["--protocol", "fhe", "--max-iterations", "200"], "decryptions"),
    (["--protocol", "fhe", "--transform", "bspline", "--max-iterations", "90"], "decryptions"),
])
def test_impossible_protocol_settings_fail_before_connecting(pair, tmp_path, options, message):
    done = subprocess.run(PY + ["moving", "--image", str(pair / "moving.nrrd"), "--connect", "127.0.0.1:9",
                                "--identity", str(pair / "ids/moving"), *options, "--output-transform",
                                str(tmp_path / "t.h5")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr

"""One settings contract between the Slicer module and ``ppir``: every command line the module can build parses."""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "PPIRExtension" / "PPIR"))

from ppir.app import contract  # noqa: E402
from ppir.app.cli import _settings, build_parser  # noqa: E402
from PPIRLib import jobs  # noqa: E402


def _valid_settings(tmp_path: Path):
    """Every RunSettings the module's check accepts, over every choice it offers."""
    (tmp_path / "identity.pem").write_text("an identity folder's certificate")
    policy = tmp_path / "policy.toml"
    policy.write_text("[disclosure]\nmax_ratio = 0.25\n")
    for role, protocol, transform, metric, sampling, share, policy_file in itertools.product(
            jobs.ROLES, jobs.PROTOCOLS, jobs.TRANSFORMS, jobs.METRICS, jobs.SAMPLINGS, jobs.SHARES, ("", str(policy))):
        settings = jobs.RunSettings(role=role, protocol=protocol, transform=transform, metric=metric, sampling=sampling,
                                    share_result=share, dealer="127.0.0.1:7001", certificates=str(tmp_path),
                                    disclosure_policy=policy_file)
        try:
            settings.check()
        except ValueError:
            continue
        yield settings


def test_the_module_offers_exactly_the_contracts_choices():
    assert jobs.PROTOCOLS == contract.PROTOCOLS
    assert jobs.TRANSFORMS == contract.TRANSFORMS and jobs.SAMPLINGS == contract.SAMPLINGS
    assert jobs.METRICS == contract.METRICS
    assert jobs.SHARES == contract.SHARES


def test_every_command_line_the_module_builds_is_one_ppir_accepts(tmp_path):
    parser = build_parser()
    seen = set()
    for settings, initial, masked in itertools.product(_valid_settings(tmp_path), (False, True), (False, True)):
        inputs = {"moving": tmp_path / "moving.nrrd", "fixed": tmp_path / "fixed.nrrd"}
        if initial:
            inputs["initial"] = tmp_path / "initial.h5"
        if masked:
            inputs |= {"moving_mask": tmp_path / "moving-mask.nrrd", "fixed_mask": tmp_path / "fixed-mask.nrrd"}
        outputs = jobs._outputs(settings.role, tmp_path)
        argv = jobs.ppir_arguments(settings, inputs, outputs)
        args = parser.parse_args(argv)                   # argparse exits on anything it refuses
        if settings.role in ("moving", "local"):         # the moving party's own start, on its command line only
            assert args.initial_transform == (str(inputs["initial"]) if initial else None)
        else:
            assert "--initial-transform" not in argv
        for party in ("moving", "fixed"):                # each mask on its owner's command line only
            owner = settings.role in (party, "local")
            assert getattr(args, f"{party}_mask", None) == (str(inputs[f"{party}_mask"]) if masked and owner else None)
            assert owner or f"--{party}-mask" not in argv
        assert args.command == {"local": "register"}.get(settings.role, settings.role)
        if hasattr(args, "transform"):
            chosen = _settings(args)                      # the engine's own checks
            assert (chosen.transform, chosen.metric, chosen.sampling) == (settings.transform, settings.metric,
                                                                          settings.sampling)
            assert chosen.levels == [int(f) for f in settings.levels.split(",")]
        if settings.disclosure_policy and settings.role in ("fixed", "local"):
            assert args.disclosure_policy == settings.disclosure_policy
        seen.add((settings.role, settings.protocol))
    assert {role for role, _ in seen} == set(jobs.ROLES)
    assert {protocol for _, protocol in seen} == set(jobs.PROTOCOLS)


def test_a_choice_outside_the_contract_is_refused_by_both(tmp_path):
    settings = jobs.RunSettings(role="moving", transform="thin-plate", certificates=str(tmp_path))
    with pytest.raises(ValueError, match="transform must be one of"):
        settings.check()
    argv = jobs.ppir_arguments(settings, {"moving": tmp_path / "m.nrrd"}, {})
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)

"""The Boutiques descriptor (boutiques/vbm-predict.json) against the CLI parser and `bosh` itself."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bids_app.cli.parser import build_parser

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR = ROOT / "boutiques" / "vbm-predict.json"
INVOCATION = ROOT / "boutiques" / "invocation-participant.json"

sys.path.insert(0, str(ROOT / "scripts"))
import make_boutiques  # noqa: E402


def _bosh() -> str:
    found = shutil.which("bosh") or str(Path(sys.executable).with_name("bosh"))
    if not Path(found).is_file():
        if os.environ.get("CI") == "true":
            pytest.fail("bosh (PyPI boutiques) is not installed; scripts/install.sh --test installs it")
        pytest.skip("bosh (PyPI boutiques) is not installed")
    return found


def _parser_options() -> dict[str, argparse.Action]:
    skip = (argparse._HelpAction, argparse._VersionAction)
    return {a.dest: a for a in build_parser()._actions if not isinstance(a, skip)}


def test_descriptor_is_generated_from_the_current_parser():
    assert DESCRIPTOR.read_text() == make_boutiques.render(), (
        "boutiques/vbm-predict.json and the CLI parser disagree: run python scripts/make_boutiques.py"
    )


def test_every_parser_option_is_an_input_and_nothing_else():
    inputs = {i["id"]: i for i in json.loads(DESCRIPTOR.read_text())["inputs"]}
    options = _parser_options()
    assert set(inputs) == set(options), (
        f"only in the parser: {sorted(set(options) - set(inputs))}; "
        f"only in the descriptor: {sorted(set(inputs) - set(options))}"
    )
    for dest, action in options.items():
        if action.option_strings:
            assert inputs[dest]["command-line-flag"] in action.option_strings, dest
        if action.choices:
            assert inputs[dest]["value-choices"] == list(action.choices), dest


def test_a_parser_change_is_caught(monkeypatch):
    """The check above can fail: an option added to the parser only makes the descriptor stale."""
    real = make_boutiques.build_parser

    def with_extra():
        parser = real()
        parser.add_argument("--brand-new-option", default=None)
        return parser

    monkeypatch.setattr(make_boutiques, "build_parser", with_extra)
    assert make_boutiques.render() != DESCRIPTOR.read_text()
    assert "brand_new_option" in {i["id"] for i in make_boutiques.build_descriptor()["inputs"]}


def test_bosh_validates_the_descriptor_and_the_invocation():
    bosh = _bosh()
    for args in (["validate", str(DESCRIPTOR)], ["invocation", str(DESCRIPTOR), "-i", str(INVOCATION)]):
        res = subprocess.run([bosh, *args], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr


def test_the_command_bosh_builds_parses_back_to_the_invocation():
    bosh = _bosh()
    res = subprocess.run(
        [bosh, "exec", "simulate", str(DESCRIPTOR), "-i", str(INVOCATION)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("vbm-predict "))
    args = build_parser().parse_args(shlex.split(line)[1:])
    invocation = json.loads(INVOCATION.read_text())
    assert str(args.bids_dir) == invocation["bids_dir"] and str(args.output_dir) == invocation["output_dir"]
    assert args.analysis_level == "participant"
    assert args.participant_label == invocation["participant_label"]
    assert (args.preproc, args.models, args.nprocs, args.ad_threshold) == ("ants", "demo", 2, 0.3)

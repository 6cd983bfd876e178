"""The command line behaves like a BIDS App: arguments, aliases, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bids_app.cli.main import main
from bids_app.cli.parser import build_parser
from bids_app.discovery import read_labels
from bids_app.errors import (
    EXIT_NO_INPUT,
    EXIT_NO_MATCH,
    EXIT_UNKNOWN_LEVEL,
    EXIT_USAGE,
    EXIT_VALIDATION,
)

from .conftest import make_bids

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_valid():
    args = build_parser().parse_args(["in", "out", "participant"])
    assert args.preproc == "auto" and args.device == "auto"
    assert args.ad_threshold == 0.5 and args.nprocs is None and args.participant_label == []
    assert args.models is None and args.work_dir is None and args.skip_bids_validation is False


@pytest.mark.parametrize("flag", ["--participant-label", "--participant_label"])
def test_participant_label_aliases_and_prefix(flag, tmp_path):
    listing = tmp_path / "subjects.txt"
    listing.write_text("sub-03\n# comment\n04\n")
    args = build_parser().parse_args(["in", "out", "participant", flag, "sub-01", "02", f"@{listing}"])
    assert read_labels(args.participant_label, "sub") == ["01", "02", "03", "04"]


@pytest.mark.parametrize("bad", ["../etc", "sub-", "a_b"])
def test_malicious_or_invalid_labels_refused(bad):
    with pytest.raises(LookupError, match="invalid sub label"):
        read_labels([bad], "sub")


@pytest.mark.parametrize("value", ["0", "1", "1.5", "x"])
def test_threshold_out_of_range_is_usage_error(value, capsys):
    assert main(["in", "out", "participant", "--ad-threshold", value]) == EXIT_USAGE
    assert "threshold" in capsys.readouterr().err


def test_unknown_level_exit_17(tmp_path):
    assert main([str(tmp_path), str(tmp_path / "o"), "subject"]) == EXIT_UNKNOWN_LEVEL


def test_missing_description_exit_66(tmp_path, capsys):
    (tmp_path / "bids").mkdir()
    code = main([str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "--models", "demo"])
    assert code == EXIT_NO_INPUT
    err = capsys.readouterr().err
    assert "dataset_description.json" in err and '"BIDSVersion"' in err


def test_unknown_participant_exit_18_with_hint(tmp_path, capsys):
    bids = make_bids(tmp_path / "bids", ["sub-01", "sub-02"])
    code = main([str(bids), str(tmp_path / "out"), "participant", "--participant-label", "O1",
                 "--skip-bids-validation"])
    assert code == EXIT_NO_MATCH
    err = capsys.readouterr().err
    assert "'O1'" in err and "did you mean '01'" in err


def test_output_inside_input_refused(tmp_path, capsys):
    bids = make_bids(tmp_path / "bids", ["sub-01"])
    code = main([str(bids), str(bids / "derivatives" / "vbm"), "participant", "--skip-bids-validation"])
    assert code == EXIT_USAGE
    assert "inside the BIDS input" in capsys.readouterr().err
    assert not (bids / "derivatives").exists()


def test_invalid_dataset_exit_16_lists_validator_errors(tmp_path, capsys):
    bids = make_bids(tmp_path / "bids", ["sub-01"])
    (bids / "sub-01" / "anat" / "sub-01_T1w.json").write_text("{not json")
    code = main([str(bids), str(tmp_path / "out"), "participant", "--models", "demo"])
    assert code == EXIT_VALIDATION
    err = capsys.readouterr().err
    assert "BIDS validator found" in err and "sub-01_T1w.json" in err
    assert "--skip-bids-validation" in err


def test_run_py_and_module_entrypoints_agree():
    for cmd in ([sys.executable, str(ROOT / "run.py"), "--version"], [sys.executable, "-m", "bids_app", "--version"]):
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout
        assert out.startswith("vbm-predict ")


def test_log_handler_writes_to_the_current_stderr(monkeypatch):
    # A caller that swaps and closes stderr (pytest capture, notebooks) must not break later logging.
    import io
    import logging

    from bids_app.cli.main import setup_logging

    first = io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    setup_logging(1)
    logging.getLogger("bids_app").info("first message")
    assert "first message" in first.getvalue()
    first.close()
    second = io.StringIO()
    monkeypatch.setattr("sys.stderr", second)
    logging.getLogger("bids_app").info("second message")
    assert "second message" in second.getvalue()
    logging.getLogger("bids_app").handlers.clear()

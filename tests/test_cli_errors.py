"""Every command, given bad values, exits with its documented code and one clear line, no traceback.

Also: the dispatch rule (a BIDS dataset called ``demo`` or ``models`` is still a dataset), the
deprecated ``--participants`` spelling of the simulators' count, and ``-vv`` showing the traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bids_app.cli.main import is_subcommand, main
from bids_app.errors import (
    EXIT_CANT_CREATE,
    EXIT_DATA,
    EXIT_NO_INPUT,
    EXIT_SOFTWARE,
    EXIT_UNKNOWN_LEVEL,
    EXIT_USAGE,
)

from .conftest import make_bids

ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- bad option values (argparse, 64)

USAGE_CASES = {
    "participant preproc": (["in", "out", "participant", "--preproc", "spm"], "invalid choice: 'spm'"),
    "participant device": (["in", "out", "participant", "--device", "tpu"], "cuda or cuda:N; got 'tpu'"),
    "participant nprocs": (["in", "out", "participant", "--nprocs", "0"], "expected at least 1"),
    "participant threshold": (["in", "out", "participant", "--ad-threshold", "2"], "strictly between 0 and 1"),
    "group unknown option": (["in", "out", "group", "--bogus"], "unrecognized arguments: --bogus"),
    "models no command": (["models"], "the following arguments are required"),
    "models import task": (["models", "import-keras", "a.h5", "--task", "age", "--out", "o"], "invalid choice: 'age'"),
    "models score device": (["models", "score", "p", "--input", "x.npy", "--device", "tpu"],
                            "cuda or cuda:N; got 'tpu'"),
    "models score precision": (["models", "score", "p", "--input", "x.npy", "--precision", "int4"],
                               "invalid choice: 'int4'"),
    "models score batch": (["models", "score", "p", "--input", "x.npy", "--batch-size", "0"], "expected at least 1"),
    "simulate count": (["simulate", "out", "--n-participants", "0"], "expected at least 1"),
    "simulate count text": (["simulate", "out", "--n-participants", "many"], "expected a whole number"),
    "simulate nprocs": (["simulate", "out", "--nprocs", "-1"], "expected at least 1"),
    "train optimizer": (["train", "--derivatives", "d", "--participants", "p.tsv", "-o", "o", "--optimizer", "rmsprop"],
                        "invalid choice: 'rmsprop'"),
    "train epochs": (["train", "--derivatives", "d", "--participants", "p.tsv", "-o", "o", "--epochs", "0"],
                     "expected at least 1"),
    "train width": (["train", "--derivatives", "d", "--participants", "p.tsv", "-o", "o", "--width", "-1"],
                    "expected a number > 0"),
    "train blocks": (["train", "--derivatives", "d", "--participants", "p.tsv", "-o", "o", "--blocks", "5,10"],
                     "three positive integers"),
    "train tasks": (["train", "--derivatives", "d", "--participants", "p.tsv", "-o", "o", "--tasks", "age"],
                    "invalid choice: 'age'"),
    "finetune freeze": (["finetune", "pkg", "--derivatives", "d", "--participants", "p.tsv", "-o", "o",
                         "--freeze", "all"], "invalid choice: 'all'"),
    "finetune lr": (["finetune", "pkg", "--derivatives", "d", "--participants", "p.tsv", "-o", "o", "--lr", "0"],
                    "expected a number > 0"),
    "demo count": (["demo", "out", "--n-participants", "0"], "expected at least 1"),
}


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_bad_option_values_exit_64_with_the_reason(case, capsys):
    argv, needle = USAGE_CASES[case]
    code, err = _run(argv, capsys)
    assert code == EXIT_USAGE, err
    assert needle in _one_error_line(err)


# ---------------------------------------------------------------- errors found by the library


def test_unknown_level_exits_17(tmp_path, capsys):
    code, err = _run([str(tmp_path), str(tmp_path / "out"), "subject"], capsys)
    assert code == EXIT_UNKNOWN_LEVEL and "unknown analysis level 'subject'" in err


def test_missing_dataset_exits_66(tmp_path, capsys):
    code, err = _run([str(tmp_path / "nowhere"), str(tmp_path / "out"), "participant"], capsys)
    assert code == EXIT_NO_INPUT, err
    assert str(tmp_path / "nowhere") in _one_error_line(err)


def test_group_level_before_the_participant_level_exits_66(tmp_path, capsys):
    code, err = _run([str(make_bids(tmp_path / "bids")), str(tmp_path / "out"), "group"], capsys)
    assert code == EXIT_NO_INPUT and "run the participant level first" in _one_error_line(err)


def test_models_import_missing_file_exits_66(tmp_path, capsys):
    code, err = _run(["models", "import-keras", str(tmp_path / "fold0.h5"), "--task", "ad", "--out",
                      str(tmp_path / "pkg")], capsys)
    assert code == EXIT_NO_INPUT and "fold0.h5: Keras H5 file not found" in _one_error_line(err)


def test_models_info_on_a_non_package_exits_65(tmp_path, capsys):
    code, err = _run(["models", "info", str(tmp_path)], capsys)
    assert code == EXIT_DATA and "no model.json here" in _one_error_line(err)


def test_models_score_missing_input_exits_66(tmp_path, capsys):
    code, err = _run(["models", "score", str(tmp_path), "--input", str(tmp_path / "x.npy")], capsys)
    assert code == EXIT_NO_INPUT and "x.npy: input array not found" in _one_error_line(err)


def test_models_score_pickled_input_exits_65(tmp_path, capsys):
    bad = tmp_path / "x.npy"
    np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, err = _run(["models", "score", str(tmp_path), "--input", str(bad)], capsys)
    assert code == EXIT_DATA and "without pickles" in _one_error_line(err)


def test_simulate_more_sites_than_participants_exits_64(tmp_path, capsys):
    code, err = _run(["simulate", str(tmp_path / "d"), "--n-participants", "2", "--sites", "3"], capsys)
    assert code == EXIT_USAGE and "--sites must be between 1 and the number of participants" in err
    assert not (tmp_path / "d").exists()


def test_simulate_into_a_non_empty_dir_exits_73(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    code, err = _run(["simulate", str(tmp_path / "d"), "--n-participants", "1", "--sites", "1"], capsys)
    assert code == EXIT_CANT_CREATE and "exists and is not empty" in _one_error_line(err)
    assert (tmp_path / "d" / "keep.txt").read_text() == "mine"


def test_train_bad_val_fraction_exits_64(tmp_path, capsys):
    code, err = _run(["train", "--derivatives", str(tmp_path), "--participants", str(tmp_path / "participants.tsv"),
                      "-o", str(tmp_path / "o"), "--val-fraction", "1.5"], capsys)
    assert code == EXIT_USAGE and "--val-fraction must be in (0, 1)" in _one_error_line(err)


def test_train_missing_derivatives_exits_66(tmp_path, capsys):
    code, err = _run(["train", "--derivatives", str(tmp_path / "maps"), "--participants",
                      str(tmp_path / "participants.tsv"), "-o", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == EXIT_NO_INPUT and "the derivatives directory does not exist" in _one_error_line(err)


def test_finetune_bad_fraction_exits_64(tmp_path, capsys):
    code, err = _run(["finetune", str(tmp_path), "--derivatives", str(tmp_path), "--participants",
                      str(tmp_path / "participants.tsv"), "-o", str(tmp_path / "o"), "--fraction", "1"], capsys)
    assert code == EXIT_USAGE and "--fraction must be in (0, 1)" in _one_error_line(err)


def test_demo_without_its_models_exits_70(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("bids_app.cli.demo_cmd.demo_models_dir", lambda: tmp_path / "gone")
    code, err = _run(["demo", str(tmp_path / "out")], capsys)
    assert code == EXIT_SOFTWARE
    names = "sex, ad, cnn_ad, liu_mox_cn_mci_ad, sfcn_brain_age, regional_ad"
    assert f"the demo models ({names}) are missing" in _one_error_line(err)
    assert "reinstall" in err
    assert not (tmp_path / "out" / "bids").exists()


def test_traceback_only_with_vv(tmp_path, capsys):
    argv = ["models", "info", str(tmp_path)]
    assert main(argv) == EXIT_DATA
    assert "Traceback" not in capsys.readouterr().err
    assert main([*argv[:2], "-vv", *argv[2:]]) == EXIT_DATA
    err = capsys.readouterr().err
    assert "Traceback" in err and "ModelPackageError" in err and "no model.json here" in err


def test_a_process_shows_no_traceback_for_a_user_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bids_app", "models", "info", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == EXIT_DATA
    assert "Traceback" not in proc.stderr and proc.stderr.count("error") == 1, proc.stderr


# ---------------------------------------------------------------- dispatch and the deprecated spelling


@pytest.mark.parametrize("name", ["demo", "models"])
def test_a_bids_dataset_named_like_a_command_runs_as_a_dataset(name, tmp_path, monkeypatch, capsys):
    make_bids(tmp_path / name, ["sub-01"])
    monkeypatch.chdir(tmp_path)
    argv = [name, "out", "participant", "--participant-label", "02", "--skip-bids-validation"]
    assert not is_subcommand(argv)
    code, err = _run(argv, capsys)
    assert code == 18 and "'02'" in err  # the BIDS App's own error: participant 02 is not in the dataset


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["demo", "out"], True),  # no dataset called demo here
        (["models", "info", "pkg"], True),
        (["demo", "out", "participant"], True),  # 'demo' is not a directory
        (["simulate", "out", "--n-participants", "3"], True),
        (["in", "out", "participant"], False),
        ([], False),
    ],
)
def test_dispatch_rule(argv, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_subcommand(argv) is expected


def test_an_existing_demo_dir_without_the_bids_app_shape_is_still_the_command(tmp_path, monkeypatch, capsys):
    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    assert is_subcommand(["demo", "out"])
    code, err = _run(["demo", "out", "--n-participants", "0"], capsys)
    assert code == EXIT_USAGE and "--n-participants" in err


def test_old_participants_count_spelling_warns_and_still_works(tmp_path, capsys):
    code = main(["simulate", str(tmp_path / "d"), "--participants", "1", "--sites", "1", "--maps-only"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "--participants is deprecated; use --n-participants" in captured.err
    table = (tmp_path / "d" / "participants.tsv").read_text().splitlines()
    assert len(table) == 2  # header + the one participant
    assert json.loads((tmp_path / "d" / "dataset_description.json").read_text())["DatasetType"] == "raw"

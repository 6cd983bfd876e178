"""``vbm-predict train --family ... --task ...`` from the command line on real NIfTI maps.

A small cohort of SPM-grid GM maps whose GMV in one block falls with age, written as the app names
them, with participants.tsv (age, site); the BrainImageNet family at a tiny width trains a brain-age
regression head with leave-sites-out folds and a learning curve, and writes its package card and the
comparison report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app.cli import train_cmd
from bids_app.derivatives import SPACE
from bids_app.errors import UsageError
from bids_app.grid import SPM_AFFINE, SPM_SHAPE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    train_cmd.add_parser(parser.add_subparsers())
    return parser


def _cohort(root: Path, n: int = 12, sites: int = 3) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    deriv = root / "derivatives"
    rows = []
    for i in range(n):
        pid = f"sub-{i:02d}"
        age = float(rng.uniform(55, 90))
        gm = np.clip(rng.normal(0.4, 0.05, SPM_SHAPE), 0, 1).astype(np.float32)
        gm[40:80, 50:100, 40:80] *= 1.5 - (age - 55) / 50  # GM declines with age
        d = deriv / pid / "anat"
        d.mkdir(parents=True)
        for suffix in ("probseg", "desc-modulated_probseg"):
            nib.save(nib.Nifti1Image(gm, SPM_AFFINE), d / f"{pid}_space-{SPACE}_label-GM_{suffix}.nii")
        rows.append({"participant_id": pid, "age": round(age, 1), "sex": "F" if i % 2 else "M",
                     "site": f"S{i % sites}"})
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)
    return deriv, root / "participants.tsv"


@pytest.mark.slow
def test_train_family_brain_age_from_the_command_line(tmp_path: Path) -> None:
    deriv, participants = _cohort(tmp_path)
    out = tmp_path / "train"
    args = _parser().parse_args([
        "train", "--derivatives", str(deriv), "--participants", str(participants), "-o", str(out),
        "--family", "brainimagenet", "--task", "brain_age", "--folds", "3", "--allocations", "50",
        "--width", "0.0625", "--blocks", "1,1,1", "--epochs", "2", "--batch-size", "4", "--optimizer", "adam",
        "--lr", "1e-3", "--sample-sizes", "4", "8", "--resamples", "20", "--device", "cpu", "--no-progress",
    ])
    assert args.func(args) == 0
    rep = out / "report"
    wide = pd.read_csv(rep / "brain_age_comparison_wide.tsv", sep="\t")
    assert list(wide["family"]) == ["brainimagenet"] and {"mae", "r", "r2"} <= set(wide.columns)
    curve = pd.read_csv(rep / "brain_age_learning_curve.tsv", sep="\t")
    assert len(curve) == 2 * 3 and set(curve["n_requested"]) == {4, 8}
    preds = pd.read_csv(rep / "brainimagenet_brain_age_predictions.tsv", sep="\t")
    assert len(preds) == 12 and preds["age_value"].notna().all()
    folds = pd.read_csv(rep / "brain_age_folds_sites.tsv", sep="\t")
    assert folds.groupby("site")["fold"].nunique().max() == 1
    summary = json.loads((rep / "summary.json").read_text())
    entry = summary["brainimagenet_brain_age"]
    # a v2 card is written where save_package reads v2; otherwise the report says why there is none
    if entry["package"]:
        card = json.loads((Path(entry["package"]) / "model.json").read_text())
        assert card["schema_version"] == 2 and card["heads"][0]["kind"] == "regression"
        assert card["heads"][0]["unit"] == "years" and card["input"]["kind"] == "gm_crop2"
    else:
        assert "v2" in entry["note"]


def test_family_options_are_checked(tmp_path: Path) -> None:
    parser = _parser()
    base = ["train", "--derivatives", str(tmp_path), "--participants", str(tmp_path / "participants.tsv"),
            "-o", str(tmp_path / "o")]
    args = parser.parse_args(base + ["--task", "brain_age"])
    with pytest.raises(UsageError, match="need --family"):
        args.func(args)
    args = parser.parse_args(base + ["--family", "cnn"])
    with pytest.raises(UsageError, match="--family needs --task"):
        args.func(args)
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--family", "resnet", "--task", "ad"])
    args = parser.parse_args(base + ["--family", "brainimagenet", "--task", "cn_mci_ad"])
    with pytest.raises(UsageError, match="one output; the task needs 3"):  # refused before any data is read
        args.func(args)

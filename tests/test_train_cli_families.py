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
from bids_app.models import load_package


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


def _ad_cohort(root: Path, n: int = 12, sites: int = 4) -> tuple[Path, Path]:
    """AD / CN participants (alternating, so every site holds both) with GM maps on the SPM grid and a
    skull-stripped T1w on the 1 mm MNI grid, as the app names them, AD losing GM in the medial temporal
    lobe (the simulator's ellipsoids) in both."""
    from bids_app import grid
    from bids_app.derivatives import T1W_MNI_DEFAULT_SPACE
    from bids_app.templates import ellipsoid_mask

    rng = np.random.default_rng(1)
    deriv = root / "derivatives"
    gm_t = grid.template_gm().astype(np.float32)
    mtl_spm = ellipsoid_mask(grid.SPM_SHAPE, grid.SPM_AFFINE)
    brain = grid.mni1mm_brain_mask()
    mtl_mni = ellipsoid_mask(grid.MNI1MM_SHAPE, grid.MNI1MM_AFFINE)
    rows = []
    for i in range(n):
        pid = f"sub-{i:02d}"
        ad = i % 2 == 1
        loss = (0.45 if ad else 0.05) + float(rng.normal(0, 0.03))
        gm = gm_t * (1 + 0.05 * rng.standard_normal(grid.SPM_SHAPE, dtype=np.float32))
        gm[mtl_spm] *= 1 - loss
        t1 = brain * (1 + 0.05 * rng.standard_normal(grid.MNI1MM_SHAPE, dtype=np.float32))
        t1[mtl_mni & brain] *= 1 - 0.6 * loss  # GM turned CSF: darker
        d = deriv / pid / "anat"
        d.mkdir(parents=True)
        for suffix in ("probseg", "desc-modulated_probseg"):
            nib.save(nib.Nifti1Image(gm, grid.SPM_AFFINE), d / f"{pid}_space-{SPACE}_label-GM_{suffix}.nii")
        nib.save(nib.Nifti1Image(t1, grid.MNI1MM_AFFINE),
                 d / f"{pid}_space-{T1W_MNI_DEFAULT_SPACE}_res-1_desc-preproc_T1w.nii")
        rows.append({"participant_id": pid, "diagnosis": "AD" if ad else "CN", "sex": "F" if i % 4 < 2 else "M",
                     "age": 70 + i % 5, "site": f"S{(i // 2) % sites}"})
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)
    return deriv, root / "participants.tsv"


FAMILIES = ["brainimagenet", "cnn", "liu_mox", "sfcn", "regional"]


@pytest.mark.slow
def test_every_family_and_the_baseline_side_by_side_from_the_command_line(tmp_path: Path) -> None:
    """One command, five families (four networks at tiny widths, the regional baseline) on AD vs CN, the
    same leave-sites-out folds, and the comparison table with each family's pooled metrics and intervals.

    The networks are far too small and short-trained to learn here (1 epoch); the baseline must, and the
    table must hold every family's row as the report shows it."""
    deriv, participants = _ad_cohort(tmp_path)
    out = tmp_path / "train"
    args = _parser().parse_args([
        "train", "--derivatives", str(deriv), "--participants", str(participants), "-o", str(out),
        "--family", *FAMILIES, "--task", "ad", "--folds", "2", "--allocations", "50",
        "--width", "0.03", "--blocks", "1,1,1", "--epochs", "1", "--batch-size", "4", "--optimizer", "adam",
        "--lr", "1e-3", "--resamples", "50", "--device", "cpu", "--no-progress",
    ])
    assert args.func(args) == 0
    rep = out / "report"
    wide = pd.read_csv(rep / "ad_comparison_wide.tsv", sep="\t")
    assert list(wide["family"]) == FAMILIES
    assert list(wide["input"]) == ["gm_crop2", "gm_spm1", "gm_spm1", "t1w_mni1mm", "gm_spm1"]
    assert (wide["n"] == 12).all() and (wide["n_positive"] == 6).all()
    metrics = {"roc_auc", "balanced_accuracy", "sensitivity", "specificity", "accuracy"}
    assert metrics <= set(wide.columns)
    assert wide["roc_auc"].str.fullmatch(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]").all(), wide["roc_auc"]
    long = pd.read_csv(rep / "ad_comparison.tsv", sep="\t")
    for fam in FAMILIES:
        auc = long[(long["family"] == fam) & (long["metric"] == "roc_auc")].iloc[0]
        assert 0.0 <= auc["ci_low"] <= auc["value"] <= auc["ci_high"] <= 1.0 and auc["n"] == 12, auc
    # the baseline reads the medial-temporal loss on held-out sites
    regional = long[(long["family"] == "regional") & (long["metric"] == "roc_auc")].iloc[0]
    assert regional["value"] >= 0.9, regional
    md = (rep / "ad_comparison.md").read_text()
    assert all(f"| {fam} |" in md for fam in FAMILIES) and "95% intervals from 50 half-size subsamples" in md
    # every family: the same folds, each of whole sites, tested only on sites it never trained on
    sites = pd.read_csv(rep / "ad_folds_sites.tsv", sep="\t")
    assert sites.groupby("site")["fold"].nunique().max() == 1 and sites["fold"].nunique() == 2
    fold_of_site = sites.drop_duplicates("site").set_index("site")["fold"]
    for fam in FAMILIES:
        preds = pd.read_csv(rep / f"{fam}_ad_predictions.tsv", sep="\t")
        assert len(preds) == 12 and preds["ad_score"].between(0, 1).all()
        assert (preds["fold"].to_numpy() == fold_of_site.loc[preds["site"]].to_numpy()).all()
        folds = pd.read_csv(rep / f"{fam}_ad_folds.tsv", sep="\t")
        for row in folds.itertuples():
            test_sites = set(row.test_sites.split(";"))
            assert test_sites == set(fold_of_site[fold_of_site == row.fold].index)
        package = load_package(out / "models" / f"{fam}_ad")  # the app loads every family's package
        assert package.card["family"] == fam and package.card["training"]["cv"]["scheme"] == "leave-sites-out"
        assert len(package.card["training"]["cv"]["fold_sites"]) == 2

"""The demo-model recipe (scripts/make_demo_models.sh) at tiny scale, end to end, and fine-tuning.

Runs the script's exact commands (simulate --maps-only, then train with leave-sites-out folds and
sex -> AD transfer) on 6 synthetic participants and checks that the packages load in the app and
score, that the folds are whole sites, that the AD stems came from the sex networks, and that
``finetune`` adapts a package with the chosen layers frozen.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bids_app.grid import make_model_input
from bids_app.models import build_network, load_package, predict
from bids_app.synth import truth_paths

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

_SHIM = """
import argparse, sys
from bids_app.cli import simulate_cmd, train_cmd
p = argparse.ArgumentParser(prog="vbm-predict")
sub = p.add_subparsers(required=True)
simulate_cmd.add_parser(sub)
train_cmd.add_parser(sub)
a = p.parse_args()
sys.exit(a.func(a))
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("demo_recipe")
    shim = tmp / "vbm.py"
    shim.write_text(_SHIM)
    env = dict(os.environ, PYTHONPATH=str(ROOT), VBM=f"{sys.executable} {shim}", DEMO_PARTICIPANTS="6", DEMO_SITES="2",
               DEMO_FOLDS="2", DEMO_EPOCHS="1", DEMO_ALLOCATIONS="50",
               DEMO_SHIFT="none", DEMO_FAMILIES="brainimagenet", DEMO_MCI_FRACTION="0")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "make_demo_models.sh"), str(tmp / "work"), str(tmp / "dest")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"work": tmp / "work", "dest": tmp / "dest", "tmp": tmp}


def test_recipe_makes_packages_the_app_loads_and_scores(made: dict[str, Path]) -> None:
    cohort = made["work"] / "cohort"
    pid = pd.read_csv(cohort / "participants.tsv", sep="\t")["participant_id"].iloc[0]
    p = truth_paths(cohort, pid)
    import nibabel as nib

    x = make_model_input(np.asarray(nib.load(str(p["gmd"])).dataobj, np.float32),
                         np.asarray(nib.load(str(p["gmv"])).dataobj, np.float32))
    for task in ("sex", "ad"):
        pkg = load_package(made["dest"] / task)
        assert pkg.task == task and pkg.n_folds == 2
        assert pkg.trained_on_synthetic
        assert "trained on synthetic data; not for any real use" in pkg.card["training"]["data"]
        assert pkg.validated_preprocessing == ("synthetic-ground-truth",)
        assert pkg.card["weights_dtype"] == "float16"
        names = {m["name"] for m in pkg.card["metrics"]}
        assert "pooled_accuracy" in names
        scores = predict(pkg, x, device="cpu", precision="fp32")
        assert scores.fold_scores.shape == (1, 2)
        assert np.all((scores.fold_scores > 0) & (scores.fold_scores < 1))
    assert (made["dest"] / "ad_folds.tsv").is_file()


def test_folds_in_the_report_are_whole_sites(made: dict[str, Path]) -> None:
    folds = pd.read_csv(made["work"] / "train" / "report" / "folds_sites.tsv", sep="\t")
    assert folds.groupby("site")["fold"].nunique().max() == 1
    assert folds.groupby("participant_id")["fold"].nunique().max() == 1
    table = pd.read_csv(made["work"] / "train" / "report" / "ad_folds.tsv", sep="\t")
    assert sorted(table["test_sites"]) == sorted(folds.groupby("fold")["site"].first())
    preds = pd.read_csv(made["work"] / "train" / "report" / "sex_predictions.tsv", sep="\t")
    merged = preds.merge(folds[["participant_id", "fold"]], on="participant_id", suffixes=("", "_alloc"))
    assert (merged["fold"] == merged["fold_alloc"]).all()  # each participant scored by the fold that never saw its site
    assert (made["work"] / "train" / "report" / "ad_curves.png").stat().st_size > 1000


def test_ad_stems_come_from_the_sex_networks(made: dict[str, Path]) -> None:
    sex, ad = load_package(made["dest"] / "sex"), load_package(made["dest"] / "ad")
    fresh = build_network("irv2_ad_optimised", **ad.card["architecture"]["params"])
    for k in range(2):
        s_w = sex.folds[k].stem["conv3d_1"].weight
        a_w = ad.folds[k].stem["conv3d_1"].weight
        # one epoch of Adam at lr 1e-3 moves each weight by a few 1e-3 at most
        assert (a_w - s_w).abs().max() < 0.02
        assert (fresh.stem["conv3d_1"].weight - s_w).abs().max() > 0.05


def test_resume_skips_finished_folds(made: dict[str, Path]) -> None:
    ck = made["work"] / "train" / "checkpoints"
    saved = torch.load(ck / "sex_fold0_best.pt", weights_only=True)
    assert {"state", "best_epoch", "best_val", "history"} <= set(saved)


def test_finetune_with_frozen_stem(made: dict[str, Path]) -> None:
    from bids_app.cli import train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.add_parser(parser.add_subparsers())
    cohort = made["work"] / "cohort"
    out = made["tmp"] / "ft"
    args = parser.parse_args(["finetune", str(made["dest"] / "sex"),
                              "--derivatives", str(cohort / "derivatives" / "ground-truth"),
                              "--participants", str(cohort / "participants.tsv"), "-o", str(out), "--fraction", "0.5",
                              "--freeze", "low", "--epochs", "1", "--batch-size", "2", "--optimizer", "adam",
                              "--lr", "1e-3", "--device", "cpu", "--no-progress"])
    assert args.func(args) == 0
    base, tuned = load_package(made["dest"] / "sex"), load_package(out / "model")
    assert tuned.card["training"]["finetuning"]["freeze"] == "low"
    assert tuned.trained_on_synthetic
    for k in range(2):
        b, t = base.folds[k].state_dict(), tuned.folds[k].state_dict()
        stem = {f"layers.{n}" for n in base.folds[k].stem.state_dict()}
        assert all(torch.equal(b[n], t[n]) for n in stem if b[n].is_floating_point())
        assert any(not torch.equal(b[n], t[n]) for n in b if n not in stem and b[n].is_floating_point())
    report = pd.read_csv(out / "finetune_report.tsv", sep="\t")
    assert {"before_accuracy", "after_accuracy"} <= set(report.columns) and len(report) == 2

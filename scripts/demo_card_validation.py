"""Add the demo packages' metrics on ANTs-made maps of held-out participants to their cards.

Why: the cards' leave-sites-out metrics come from held-out synthetic sites of the training cohort,
whose maps are the simulator's truth carried through the measured ANTs shift (bids_app.train.shift);
what the demo shows its models are maps the ANTs backend made. ``scripts/make_demo_models.sh`` runs
the app itself (participant + group level, derivatives backend) on ANTs-made maps of simulated
participants that neither the training nor the shift fit saw, and this script writes that group
evaluation's figures into each card as ``ants_heldout_<metric>`` (subset ``all``: every prediction of
a demo model is outside its validated conditions, since it was trained on synthetic data). The card
pins its weights and every fold pins the card, so the package is written again (same weights).

Usage: python scripts/demo_card_validation.py DEMO_MODELS_DIR GROUP_EVALUATION_TSV --note TEXT
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from bids_app.metrics import finite_or_none
from bids_app.models import find_packages, load_package
from bids_app.models.package import save_package

#: metrics taken per head kind (group_evaluation.tsv column names)
METRICS = {
    "binary": ("roc_auc", "balanced_accuracy", "accuracy"),
    "multiclass": ("macro_roc_auc", "balanced_accuracy", "accuracy"),
    "regression": ("mae", "pearson_r", "r2"),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", type=Path)
    p.add_argument("evaluation", type=Path)
    p.add_argument("--note", required=True, help="what the held-out maps are (goes into every metric's source)")
    args = p.parse_args()
    ev = pd.read_csv(args.evaluation, sep="\t", keep_default_na=False, na_values=["n/a"])
    ev = ev[ev["subset"] == "all"]
    for pkg_dir in find_packages(args.models):
        pkg = load_package(pkg_dir)
        card = dict(pkg.card)
        rows = ev[ev["model_name"] == pkg.name]
        if rows.empty:
            raise SystemExit(f"{pkg.name}: not in {args.evaluation}")
        metrics = [m for m in card["metrics"] if not str(m["name"]).startswith("ants_heldout_")]
        for r in rows.itertuples(index=False):
            kind = str(r.head_kind)
            n = int(r.n_labelled) if kind != "regression" else int(r.n_participants)
            for m in METRICS[kind]:
                v = float(getattr(r, m))
                lo, hi = float(getattr(r, f"{m}_ci_low")), float(getattr(r, f"{m}_ci_high"))
                prefix = "ants_heldout_" if len(rows) == 1 else f"ants_heldout_{r.head}_"
                metrics.append({
                    "name": f"{prefix}{m}", "value": finite_or_none(v),
                    "ci_low": finite_or_none(lo), "ci_high": finite_or_none(hi),
                    "source": f"{args.note}: the app's group evaluation (derivatives backend reading the ANTs-made "
                              f"maps; n = {n}); far too few participants for a stable figure, a check that the "
                              "model reads ANTs-made maps, not an estimate of its accuracy",
                })
        card["metrics"] = metrics
        card.pop("folds", None)
        states = [{k: v.detach().clone() for k, v in net.state_dict().items()} for net in pkg.folds]
        dtype = torch.float16 if card.get("weights_dtype", "float16") == "float16" else torch.float32
        save_package(pkg_dir, card, states, dtype=dtype)
        added = [m for m in metrics if str(m["name"]).startswith("ants_heldout_")]
        print(f"{pkg.name}: " + ", ".join(f"{m['name']} {m['value']}" for m in added))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

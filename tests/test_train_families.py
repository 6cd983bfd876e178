"""Any family, any task: heads, balanced folds, the generic leave-sites-out CV, learning curves, the report.

Cheap by design: hand-made 8^3 inputs whose signal is known (class c is brighter in octant c; the
"age" raises one octant), a tiny real torch network with (N, K) outputs, a few epochs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bids_app.train import HeadSet, cross_validate, site_folds, task_heads, write_comparison
from bids_app.train.crossval import FoldData, FoldFit, make_card_v2, network_fitter, rebase_regression_outputs
from bids_app.train.loop import OptimConfig


class Tiny(nn.Module):
    """Octant means -> linear: enough to read 'which octant is bright' and 'how bright'."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d(2)
        self.fc = nn.Linear(8, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))


def _cohort(n_sites: int = 6, per_site: int = 12, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows, xs = [], []
    for s in range(n_sites):
        for i in range(per_site):
            cls = (s + i) % 3
            age = float(rng.uniform(55, 90))
            x = rng.normal(0, 0.3, (1, 8, 8, 8)).astype(np.float32)
            x[0, :4, :4, 4 * (cls % 2):4 * (cls % 2) + 4] += 1.0 if cls else 0.0  # MCI, AD: distinct octants
            x[0, 4:, 4:, 4:] += (age - 70) / 10
            xs.append(x)
            rows.append({"participant_id": f"sub-{s}{i:02d}", "prefix": f"sub-{s}{i:02d}", "site": f"S{s}",
                         "diagnosis": ("CN", "MCI", "AD")[cls], "age": age,
                         "sex": ("female", "male")[i % 2]})
    return pd.DataFrame(rows), np.stack(xs).astype(np.float16)


def _run(task: str, rows: pd.DataFrame, x: np.ndarray, *, sizes=(), epochs: int = 40, family: str = "tiny"):
    heads = HeadSet(task_heads(task))
    y = heads.targets(rows)
    folds = site_folds(rows["participant_id"], rows["site"], y[:, 0], 3, n_allocations=200,
                       kind=heads.heads[0].kind)
    optim = OptimConfig(optimizer="adam", lr=0.05, decay=0, batch_size=8, epochs=epochs, patience=10)
    fitter = network_fitter(x, y, lambda seed: (torch.manual_seed(seed), Tiny(heads.n_outputs))[1], optim,
                            device=torch.device("cpu"))
    return cross_validate(rows, y, heads, folds, fitter, family=family, task=task, architecture="tiny", params={},
                          input_kind="gm_spm1", n_folds=3, sample_sizes=sizes, n_resamples=50, optim=optim), folds


def _pooled(res, metric: str, head: str | None = None) -> float:
    p = res.pooled
    if head is not None:
        p = p[p["head"] == head]
    return float(p.loc[p["metric"] == metric, "value"].iloc[0])


def test_multiclass_cv_beats_chance() -> None:
    rows, x = _cohort()
    res, folds = _run("cn_mci_ad", rows, x)
    assert _pooled(res, "macro_auc") > 0.9  # chance 0.5
    assert _pooled(res, "balanced_accuracy") > 0.7  # chance 1/3
    assert {"auc_CN", "auc_MCI", "auc_AD"} <= set(res.pooled["metric"])
    row = res.pooled[res.pooled["metric"] == "macro_auc"].iloc[0]
    assert row["ci_low"] <= row["value"] <= row["ci_high"] and row["n"] == len(rows)
    p = res.predictions[["diagnosis_p_CN", "diagnosis_p_MCI", "diagnosis_p_AD"]].to_numpy()
    assert np.allclose(p.sum(axis=1), 1.0)
    # whole sites per fold, every participant scored once by the fold that never saw its site
    assert rows.assign(fold=folds).groupby("site")["fold"].nunique().max() == 1
    assert sorted(res.predictions["participant_id"]) == sorted(rows["participant_id"])


def test_regression_cv_beats_the_mean_baseline() -> None:
    rows, x = _cohort(seed=1)
    res, _ = _run("brain_age", rows, x)
    preds = res.predictions
    mae = _pooled(res, "mae")
    baseline = float(np.abs(preds["age_true"] - rows["age"].mean()).mean())  # predicting the cohort mean
    assert mae < 0.5 * baseline, (mae, baseline)
    assert _pooled(res, "r") > 0.8
    # the package head carries the cohort's standardisation; rebased fold weights reproduce the fold's values
    k = 0
    net = Tiny(1)
    net.load_state_dict(rebase_regression_outputs(res.fold_states[k], res.fold_heads[k], res.heads))
    test = (preds["fold"] == k).to_numpy()
    with torch.no_grad():
        raw = net(torch.from_numpy(x[rows["participant_id"].isin(preds["participant_id"][test])].astype(np.float32)))
    values = res.heads.decode(raw.numpy())[0]
    assert np.allclose(np.sort(values), np.sort(preds.loc[test, "age_value"].to_numpy()), atol=1e-3)


def test_multitask_heads_share_one_network_and_mask_missing_targets() -> None:
    rows, x = _cohort(seed=2)
    rows.loc[rows.index % 4 == 0, "age"] = np.nan  # a quarter without age still trains the sex head
    res, _ = _run("multitask", rows, x, epochs=10)
    assert set(res.pooled["head"]) == {"age", "sex"}
    n_age = int(res.pooled.loc[(res.pooled["head"] == "age") & (res.pooled["metric"] == "mae"), "n"].iloc[0])
    assert n_age == rows["age"].notna().sum()
    assert _pooled(res, "mae", "age") < 8.0  # age spans 55-90: the mean predictor's MAE is about 9
    heads = res.heads.card_heads()
    assert [h["outputs"] for h in heads] == [[0, 1], [1, 2]] and heads[0]["unit"] == "years"


def test_sample_sizes_give_one_row_per_size_and_fold_on_nested_subsets() -> None:
    rows, x = _cohort(seed=3)
    res, _ = _run("cn_mci_ad", rows, x, sizes=(12, 24, 36), epochs=15)
    curve = res.curve
    assert len(curve) == 3 * 3 and set(curve["n_requested"]) == {12, 24, 36}
    assert curve.groupby(["fold", "n_requested"]).size().eq(1).all()
    assert (curve.groupby("fold")["n_participants"].apply(lambda s: s.is_monotonic_increasing)).all()
    big = curve[curve["n_requested"] == 36]["macro_auc"].mean()
    assert big > 0.8  # trained on the subset, scored on the same held-out sites


def test_report_holds_every_familys_row_side_by_side(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rows, x = _cohort(seed=4)
    tiny, folds = _run("ad", rows, x, sizes=(10, 20), epochs=15, family="cnn")
    heads = HeadSet(task_heads("ad"))
    y = heads.targets(rows)

    def logistic(d: FoldData) -> FoldFit:  # a scikit-learn fitter through the same driver, as the baseline's
        feats = x.reshape(len(x), -1).astype(np.float32)
        tr = np.concatenate([d.train, d.val])
        clf = LogisticRegression(max_iter=500).fit(feats[tr], y[tr, 0])
        return FoldFit(clf.decision_function(feats[d.test])[:, None], None)

    base = cross_validate(rows, y, heads, folds, logistic, family="regional", task="ad", architecture="regional_linear",
                          params={}, input_kind="gm_spm1", n_folds=3, sample_sizes=(10, 20), n_resamples=50)
    write_comparison(tmp_path, [tiny, base])
    wide = pd.read_csv(tmp_path / "report" / "ad_comparison_wide.tsv", sep="\t")
    assert list(wide["family"]) == ["cnn", "regional"]
    assert {"roc_auc", "balanced_accuracy", "accuracy"} <= set(wide.columns)
    assert wide["roc_auc"].str.match(r"^\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]$").all()
    long = pd.read_csv(tmp_path / "report" / "ad_comparison.tsv", sep="\t")
    assert set(long["family"]) == {"cnn", "regional"} and {"ci_low", "ci_high"} <= set(long.columns)
    curve = pd.read_csv(tmp_path / "report" / "ad_learning_curve.tsv", sep="\t")
    assert len(curve) == 2 * 2 * 3 and set(curve["family"]) == {"cnn", "regional"}
    assert (tmp_path / "report" / "ad_learning_curve.png").stat().st_size > 5000
    assert "| cnn |" in (tmp_path / "report" / "ad_comparison.md").read_text()
    card = make_card_v2(tiny, name_prefix="t", version="0", origin="synthetic-ground-truth", synthetic=True,
                        data_note="test", n_folds=3, val_fraction=0.2, seed=0)
    assert card["schema_version"] == 2 and card["family"] == "cnn" and card["input"]["kind"] == "gm_spm1"
    assert card["heads"] == [{"name": "ad", "kind": "binary", "target": "diagnosis", "outputs": [0, 1],
                              "labels": ["CN", "AD"], "thresholds": {"default": 0.5, "screening": 0.3}}]


@pytest.mark.parametrize("kind", ["multiclass", "regression"])
def test_folds_balance_classes_and_target_distribution(kind: str) -> None:
    rng = np.random.default_rng(0)
    n_sites = 12
    sites, values = [], []
    for s in range(n_sites):
        for _ in range(int(rng.integers(5, 20))):
            sites.append(f"S{s}")
            # sites differ a lot in class mix / age, so a bad allocation is easy to make
            values.append(float(rng.choice(3, p=np.roll([0.7, 0.2, 0.1], s % 3))) if kind == "multiclass"
                          else float(rng.normal(60 + 2 * s, 5)))
    sites_a, y = np.array(sites), np.array(values)
    pids = np.array([f"sub-{i}" for i in range(len(y))])

    # what is balanced: the class fractions, or for a continuous target the fractions of its quartile bins
    strata = y if kind == "multiclass" else np.searchsorted(np.quantile(y, [0.25, 0.5, 0.75]), y, side="right")

    def spread(folds: np.ndarray) -> float:
        return max(np.ptp([np.mean(strata[folds == f] == c) for f in range(3)]) for c in range(int(strata.max()) + 1))

    def median_spread(folds: np.ndarray) -> float:
        return float(np.ptp([np.median(y[folds == f]) for f in range(3)]))

    best = site_folds(pids, sites_a, y, 3, n_allocations=2000, kind=kind)
    names = sorted(set(sites))
    allocations = [np.array([a[names.index(s)] for s in sites])
                   for a in (np.random.default_rng(i).permutation(np.arange(n_sites) % 3) for i in range(50))]
    assert spread(best) < np.percentile([spread(a) for a in allocations], 10)
    if kind == "regression":  # and so the folds' ages are alike, better than a typical random allocation
        assert median_spread(best) < np.median([median_spread(a) for a in allocations])
    assert len(set(best)) == 3

"""Multi-class and regression metrics against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, r2_score, roc_auc_score

from bids_app.errors import InputDataError
from bids_app.metrics import (
    multiclass_metrics,
    multiclass_subsample_intervals,
    regression_metrics,
    regression_subsample_intervals,
)

CLASSES = ["CN", "MCI", "AD"]
# true: CN CN MCI MCI AD AD
Y = [0, 0, 1, 1, 2, 2]
P = [
    [0.7, 0.2, 0.1],  # CN  -> CN  right
    [0.4, 0.5, 0.1],  # CN  -> MCI wrong
    [0.2, 0.6, 0.2],  # MCI -> MCI right
    [0.1, 0.3, 0.6],  # MCI -> AD  wrong
    [0.1, 0.2, 0.7],  # AD  -> AD  right
    [0.3, 0.3, 0.4],  # AD  -> AD  right
]


def test_multiclass_metrics_hand_computed():
    m = multiclass_metrics(Y, P, CLASSES)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recalls: CN 1/2, MCI 1/2, AD 2/2
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    # one-vs-rest AUC, counting positive/negative pairs (ties half):
    # CN  p = .7 .4 vs .2 .1 .1 .3: 8 of 8;  MCI p = .6 .3 vs .2 .5 .2 .3: 4 + 2.5 = 6.5 of 8;
    # AD  p = .7 .4 vs .1 .1 .2 .6: 4 + 3 = 7 of 8
    assert m["roc_auc_per_class"] == pytest.approx({"CN": 1.0, "MCI": 6.5 / 8, "AD": 7 / 8})
    assert m["macro_roc_auc"] == pytest.approx((1.0 + 6.5 / 8 + 7 / 8) / 3)
    assert m["confusion"].tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]  # rows true, columns predicted
    # the same as scikit-learn's definitions
    assert m["macro_roc_auc"] == pytest.approx(roc_auc_score(Y, P, multi_class="ovr", average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(Y, np.argmax(P, axis=1)))


def test_multiclass_absent_class_is_nan_and_left_out_of_the_macro_mean():
    m = multiclass_metrics([0, 0, 1, 1], [p for p in P[:4]], CLASSES)
    assert math.isnan(m["roc_auc_per_class"]["AD"])
    assert m["macro_roc_auc"] == pytest.approx(np.mean([m["roc_auc_per_class"]["CN"], m["roc_auc_per_class"]["MCI"]]))
    assert m["balanced_accuracy"] == pytest.approx(0.5)  # recall CN 1/2, MCI 1/2; AD absent
    with pytest.raises(InputDataError, match="class indices"):
        multiclass_metrics([0, 3], [P[0], P[1]], CLASSES)


def test_multiclass_intervals_bracket_reproducible_and_collapse_at_full_fraction():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 150)
    p = rng.dirichlet([1, 1, 1], 150)
    p[np.arange(150), y] += 0.3  # informative, not perfect
    p /= p.sum(axis=1, keepdims=True)
    point = multiclass_metrics(y, p, CLASSES)
    ci = multiclass_subsample_intervals(y, p, CLASSES, n_resamples=200)
    assert ci == multiclass_subsample_intervals(y, p, CLASSES, n_resamples=200)
    for name in ("accuracy", "balanced_accuracy", "macro_roc_auc"):
        assert ci[name][0] < point[name] < ci[name][1], (name, point[name], ci[name])
    for c in CLASSES:
        assert ci[f"roc_auc_{c}"][0] < point["roc_auc_per_class"][c] < ci[f"roc_auc_{c}"][1]
    full = multiclass_subsample_intervals(y, p, CLASSES, n_resamples=5, fraction=1.0)
    assert full["macro_roc_auc"] == pytest.approx((point["macro_roc_auc"],) * 2)


def test_regression_metrics_hand_computed():
    y, v = [60.0, 70.0, 80.0], [62.0, 69.0, 85.0]
    m = regression_metrics(y, v)
    assert m["mae"] == pytest.approx((2 + 1 + 5) / 3)
    assert m["r2"] == pytest.approx(1 - (4 + 1 + 25) / (100 + 0 + 100))  # 0.85
    # centred: y -10 0 10, v -10 -3 13 -> r = 230 / sqrt(200 * 278)
    assert m["pearson_r"] == pytest.approx(230 / math.sqrt(200 * 278))
    assert m["pearson_r"] == pytest.approx(stats.pearsonr(y, v).statistic)
    assert m["r2"] == pytest.approx(r2_score(y, v))
    assert math.isnan(regression_metrics([70.0, 70.0], [60.0, 61.0])["r2"])  # constant truth: undefined
    with pytest.raises(InputDataError, match="finite"):
        regression_metrics([60.0, math.nan], [1.0, 2.0])


def test_regression_intervals_bracket_and_collapse():
    rng = np.random.default_rng(2)
    y = rng.uniform(55, 90, 120)
    v = y + rng.normal(0, 4, 120)
    point = regression_metrics(y, v)
    ci = regression_subsample_intervals(y, v, n_resamples=300)
    for name in ("mae", "pearson_r", "r2"):
        assert ci[name][0] < point[name] < ci[name][1], name
    assert 2.0 < ci["mae"][0] < ci["mae"][1] < 4.5  # MAE of N(0, 4) errors: 4 * sqrt(2 / pi) = 3.19
    full = regression_subsample_intervals(y, v, n_resamples=3, fraction=1.0)
    assert full["mae"] == pytest.approx((point["mae"],) * 2)

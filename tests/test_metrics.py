"""Metrics against numbers worked out by hand (comments show the counting)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from bids_app.metrics import METRIC_NAMES, _batched_metrics, binary_metrics, spearman, subsample_intervals

# 4 positives, 4 negatives.
Y = [1, 1, 1, 0, 0, 0, 0, 1]
S = [0.9, 0.6, 0.4, 0.2, 0.55, 0.1, 0.3, 0.8]


def test_binary_metrics_hand_computed_default_threshold():
    # pred (>=0.5) = 1 1 0 0 1 0 0 1 -> TP 3 (idx 0,1,7), FN 1 (idx 2), TN 3 (idx 3,5,6), FP 1 (idx 4)
    # AUC: positive/negative pairs ranked right: 0.9 -> 4, 0.6 -> 4, 0.4 -> 3 (not over 0.55), 0.8 -> 4 = 15/16
    m = binary_metrics(Y, S)
    assert m == pytest.approx(
        {
            "n": 8,
            "n_positive": 4,
            "accuracy": 0.75,
            "sensitivity": 0.75,
            "specificity": 0.75,
            "balanced_accuracy": 0.75,
            "roc_auc": 15 / 16,
        }
    )


def test_binary_metrics_threshold_is_inclusive_and_moves_sens_spec():
    # pred (>=0.3) = 1 1 1 0 1 0 1 1: TP 4, TN 2 (idx 3,5), FP 2 (idx 4,6); 0.3 itself counts as positive
    m = binary_metrics(Y, S, threshold=0.3)
    assert m["sensitivity"] == 1.0
    assert m["specificity"] == 0.5
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == 0.75
    assert m["roc_auc"] == pytest.approx(15 / 16)  # AUC does not depend on the threshold


def test_balanced_accuracy_differs_from_accuracy_when_unbalanced():
    # 1 positive predicted wrong, 9 negatives right: acc 0.9, sens 0, spec 1, BAC 0.5
    y = [1] + [0] * 9
    s = [0.1] + [0.2] * 9
    m = binary_metrics(y, s)
    assert (m["accuracy"], m["sensitivity"], m["specificity"], m["balanced_accuracy"]) == (0.9, 0.0, 1.0, 0.5)
    assert m["roc_auc"] == 0.0


def test_ties_in_auc_count_half():
    # pairs: (0.5 vs 0.5) = 1/2, (0.5 vs 0.2) = 1, (0.7 vs 0.5) = 1, (0.7 vs 0.2) = 1 -> 3.5 / 4
    assert binary_metrics([1, 0, 1, 0], [0.5, 0.5, 0.7, 0.2])["roc_auc"] == pytest.approx(0.875)


def test_one_class_gives_nan_not_made_up_values():
    m = binary_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert math.isnan(m["specificity"])
    assert math.isnan(m["balanced_accuracy"])
    assert math.isnan(m["roc_auc"])
    m0 = binary_metrics([], [])
    assert m0["n"] == 0 and all(math.isnan(m0[k]) for k in METRIC_NAMES)


def test_booleans_accepted_and_bad_inputs_refused():
    assert binary_metrics([True, False], [0.8, 0.1])["accuracy"] == 1.0
    with pytest.raises(ValueError, match="only 0 and 1"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics([0, float("nan")], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="same length"):
        binary_metrics([0, 1, 1], [0.1, 0.2])


def test_batched_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=(50, 30))
    s = rng.integers(0, 6, size=(50, 30)) / 5.0  # many ties on purpose
    got = _batched_metrics(y, s, 0.5)
    for r in range(50):
        one = binary_metrics(y[r], s[r])
        for name in METRIC_NAMES:
            assert got[name][r] == pytest.approx(one[name], nan_ok=True), name
        if 0 < y[r].sum() < y.shape[1]:
            assert got["roc_auc"][r] == pytest.approx(roc_auc_score(y[r], s[r]))


def test_interval_of_accuracy_matches_the_hypergeometric_law():
    # n = 400, 300 predictions right. A 50% subsample (200 drawn without replacement) holds a
    # hypergeometric number of right ones, so the exact 2.5% / 97.5% quantiles of its accuracy are known.
    n, right = 400, 300
    y = np.r_[np.ones(200), np.zeros(200)].astype(int)
    s = np.where(y == 1, 0.9, 0.1)
    wrong = np.r_[np.arange(0, 50), np.arange(200, 250)]  # 50 FN, 50 FP
    s[wrong] = 1 - s[wrong]
    assert binary_metrics(y, s)["accuracy"] == right / n
    ci = subsample_intervals(y, s, n_resamples=1000, seed=1)
    lo_exact = stats.hypergeom.ppf(0.025, n, right, 200) / 200
    hi_exact = stats.hypergeom.ppf(0.975, n, right, 200) / 200
    assert ci["accuracy"][0] == pytest.approx(lo_exact, abs=0.01)
    assert ci["accuracy"][1] == pytest.approx(hi_exact, abs=0.01)
    # normal approximation with finite-population correction: half-width 1.96*sqrt(p(1-p)/m * (1-m/n)) = 0.042
    assert 0.07 < ci["accuracy"][1] - ci["accuracy"][0] < 0.10
    for name in METRIC_NAMES:
        lo, hi = ci[name]
        assert lo <= binary_metrics(y, s)[name] <= hi


def test_intervals_shrink_with_more_data_and_are_reproducible():
    rng = np.random.default_rng(0)

    def cohort(n):
        y = rng.integers(0, 2, n)
        s = 1 / (1 + np.exp(-(2.0 * (y - 0.5) * 2 + rng.normal(0, 1.5, n))))
        return y, s

    small, large = cohort(60), cohort(2000)
    w_small = np.diff(subsample_intervals(*small)["roc_auc"])[0]
    w_large = np.diff(subsample_intervals(*large)["roc_auc"])[0]
    assert w_large < w_small / 3  # width ~ 1/sqrt(n): sqrt(2000/60) = 5.8
    assert subsample_intervals(*small, seed=7) == subsample_intervals(*small, seed=7)
    assert subsample_intervals(*small, seed=7) != subsample_intervals(*small, seed=8)


def test_full_fraction_collapses_to_point_estimate_and_undefined_metric_is_nan():
    ci = subsample_intervals(Y, S, fraction=1.0, n_resamples=20)
    point = binary_metrics(Y, S)
    for name in METRIC_NAMES:
        assert ci[name] == pytest.approx((point[name], point[name]))
    ci1 = subsample_intervals([1, 1, 1, 1], [0.9, 0.2, 0.7, 0.6], n_resamples=50)
    assert all(math.isnan(v) for v in ci1["roc_auc"])
    assert all(math.isnan(v) for v in ci1["specificity"])
    with pytest.raises(ValueError, match="fraction"):
        subsample_intervals(Y, S, fraction=0.0)


def test_spearman_hand_computed_with_tie_and_nan():
    # ranks x 1..5, ranks y 1 2 3.5 5 3.5: cov = 4+1+0+2+1 = 8, var sums 10 and 9.5 -> rho = 8/sqrt(95)
    x = [1, 2, 3, 4, 5, np.nan, 7]
    y = [5, 6, 7, 8, 7, 3, np.nan]
    rho, p = spearman(x, y)
    assert rho == pytest.approx(8 / math.sqrt(95))
    t = rho * math.sqrt(3 / (1 - rho**2))
    assert p == pytest.approx(2 * stats.t.sf(t, 3))
    assert spearman([1, 2, 3, 4], [8, 6, 4, 2])[0] == pytest.approx(-1.0)
    assert all(math.isnan(v) for v in spearman([1, 2], [3, 4]))
    assert all(math.isnan(v) for v in spearman([1, 2, 3], [3, 3, 3]))

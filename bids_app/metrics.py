"""Evaluation metrics for binary predictions, with the reference paper's subsampling intervals.

The group level (and the training helpers) score a model by comparing its per-participant scores
with labels from ``participants.tsv``. Definitions, for labels ``y`` (1 = positive: male for the
sex model, AD for the AD model) and predictions ``score >= threshold`` (the same rule that makes the
``label`` column of the predictions tables):

* accuracy = (TP + TN) / n
* sensitivity = TP / (TP + FN)         (NaN when there is no positive)
* specificity = TN / (TN + FP)         (NaN when there is no negative)
* balanced accuracy = (sensitivity + specificity) / 2   (NaN when either is)
* ROC AUC from scikit-learn            (NaN when only one class is present)

Intervals follow Lu et al. 2022 (J Big Data, "A practical Alzheimer's disease classifier..."): the
metrics are recomputed on 1,000 random subsamples holding 50% of the participants, drawn without
replacement, and the 2.5th and 97.5th percentiles of those values give the 95% interval. This is a
subsampling (not bootstrap) interval; with half the data per draw it is wider than a bootstrap
interval would be, which is what the paper reported and what users comparing with it expect.

Nothing here reads files: inputs are arrays, outputs plain floats, so results are easy to test and
to put into tables. Bad labels or scores raise :class:`~bids_app.errors.InputDataError`, bad
parameters :class:`~bids_app.errors.UsageError` (both subclass ``ValueError``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import roc_auc_score

from .errors import InputDataError, UsageError

__all__ = ["METRIC_NAMES", "binary_metrics", "subsample_intervals", "spearman"]

#: the metrics that :func:`subsample_intervals` gives intervals for, in table order
METRIC_NAMES: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "balanced_accuracy", "roc_auc")


def _check_inputs(y_true: ArrayLike, score: ArrayLike, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels as 0/1 ints, scores as floats) after checking shapes and values.

    Missing values are refused rather than dropped: silently dropping them would change ``n``
    behind the caller's back; the group level removes unlabelled participants itself and counts them.
    """
    y = np.asarray(y_true)
    s = np.asarray(score, dtype=float)
    if y.ndim != 1 or s.ndim != 1:
        raise InputDataError(f"y_true and score must be 1-D; got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise InputDataError(f"y_true and score must have the same length; got {y.shape[0]} and {s.shape[0]}")
    if y.dtype == bool:
        y = y.astype(int)
    try:
        yf = y.astype(float)
    except (TypeError, ValueError) as exc:
        raise InputDataError(f"y_true must hold 0/1 (or booleans); got values of dtype {y.dtype}") from exc
    if np.isnan(yf).any() or np.isnan(s).any():
        raise InputDataError("y_true and score must not contain NaN; remove unlabelled or unscored rows first")
    bad = set(np.unique(yf).tolist()) - {0.0, 1.0}
    if bad:
        raise InputDataError(f"y_true must hold only 0 and 1; got also {sorted(bad)}")
    if not math.isfinite(threshold):
        raise UsageError(f"threshold must be a finite number; got {threshold!r}")
    return yf.astype(int), s


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def binary_metrics(y_true: ArrayLike, score: ArrayLike, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, balanced accuracy and ROC AUC of ``score`` against ``y_true``.

    Parameters
    ----------
    y_true : array of 0/1 or bool
        True labels, 1 = positive class.
    score : array of float
        Model scores (probabilities); the predicted class is ``score >= threshold``.
    threshold : float
        Decision threshold (0.5 by default; the reference authors suggest 0.3 for AD screening).

    Returns
    -------
    dict
        ``n``, ``n_positive`` (as floats, so the dict is uniformly typed), and the five metrics;
        a metric that is undefined for these data (e.g. sensitivity without positives, AUC with one
        class) is NaN, never a made-up 0 or 1.
    """
    y, s = _check_inputs(y_true, score, threshold)
    pred = s >= threshold
    pos = y == 1
    tp = int(np.sum(pred & pos))
    tn = int(np.sum(~pred & ~pos))
    n_pos = int(pos.sum())
    n_neg = int(y.size - n_pos)
    sens = _ratio(tp, n_pos)
    spec = _ratio(tn, n_neg)
    auc = float(roc_auc_score(y, s)) if n_pos and n_neg else math.nan
    return {
        "n": float(y.size),
        "n_positive": float(n_pos),
        "accuracy": _ratio(tp + tn, y.size),
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2.0,  # NaN propagates
        "roc_auc": auc,
    }


def _batched_metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """The metrics of :func:`binary_metrics` for many subsamples at once.

    ``y`` and ``s`` are (R, m): one subsample per row. AUC uses the Mann-Whitney form
    (rank sum of the positives, ties given average ranks), which equals scikit-learn's trapezoidal
    ROC AUC exactly, ties included; the test suite checks the two agree. Vectorising matters: 1,000
    calls of ``roc_auc_score`` cost about a second per model, this costs a few milliseconds.
    """
    pred = s >= threshold
    pos = y == 1
    n_pos = pos.sum(axis=1).astype(float)
    n_neg = y.shape[1] - n_pos
    tp = (pred & pos).sum(axis=1)
    tn = (~pred & ~pos).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(n_pos > 0, tp / n_pos, np.nan)
        spec = np.where(n_neg > 0, tn / n_neg, np.nan)
        ranks = stats.rankdata(s, axis=1)
        rank_sum_pos = np.where(pos, ranks, 0.0).sum(axis=1)
        u = rank_sum_pos - n_pos * (n_pos + 1) / 2.0
        auc = np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)
    return {
        "accuracy": (tp + tn) / y.shape[1],
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2.0,
        "roc_auc": auc,
    }


def subsample_intervals(
    y_true: ArrayLike,
    score: ArrayLike,
    threshold: float = 0.5,
    *,
    n_resamples: int = 1000,
    fraction: float = 0.5,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of each metric over random subsamples drawn without replacement.

    The reference paper's method (Lu et al. 2022): ``n_resamples`` subsamples of
    ``round(fraction * n)`` participants each, metrics on each, then the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` percentiles (2.5th / 97.5th for the default 95%). Subsamples in which a
    metric is undefined (e.g. no positive drawn) are left out of that metric's percentiles; when
    none defines it the interval is ``(nan, nan)``. The same ``seed`` gives the same intervals.

    Returns
    -------
    dict
        metric name (:data:`METRIC_NAMES`) -> ``(low, high)``.
    """
    y, s = _check_inputs(y_true, score, threshold)
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise UsageError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"fraction must be in (0, 1]; got {fraction!r}")
    if not 0.0 < level < 1.0:
        raise UsageError(f"level must be in (0, 1); got {level!r}")
    nan_pair = (math.nan, math.nan)
    if y.size == 0:
        return {name: nan_pair for name in METRIC_NAMES}
    m = max(1, int(round(fraction * y.size)))
    values = _subsample_metrics(y, s, threshold, int(n_resamples), m, np.random.default_rng(seed))
    q = [100.0 * (1.0 - level) / 2.0, 100.0 * (1.0 + level) / 2.0]
    out: dict[str, tuple[float, float]] = {}
    for name in METRIC_NAMES:
        v = values[name]
        v = v[np.isfinite(v)]
        if v.size == 0:
            out[name] = nan_pair
        else:
            lo, hi = np.percentile(v, q)
            out[name] = (float(lo), float(hi))
    return out


#: bytes of random keys held at once by :func:`_subsample_metrics` (bounds its memory at any n)
_CHUNK_BYTES = 64 << 20


def _subsample_metrics(
    y: np.ndarray, s: np.ndarray, threshold: float, n_resamples: int, m: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The metrics of ``n_resamples`` random subsets of ``m`` of the ``n`` participants.

    Subset ``r`` is the ``m`` participants with the smallest keys in row ``r`` of
    ``rng.random((n_resamples, n))`` (the same subsets as the first ``m`` of an argsort of those
    keys, i.e. uniform draws without replacement). Rows are drawn in chunks, so memory stays
    bounded at biobank size, and each subset is handled as a 0/1 mask over the participants
    sorted by score once: counts are matrix products, and the rank sum of the positives (the
    Mann-Whitney form of the AUC, ties given average ranks) comes from a cumulative sum of the
    mask, so no subsample is ever sorted. Equals :func:`_batched_metrics` (tested).
    """
    n = y.size
    order = np.argsort(s, kind="stable")
    rank_of = np.empty(n, dtype=np.intp)
    rank_of[order] = np.arange(n)
    s_sorted = s[order]
    # predicted positive = score >= threshold = a suffix of the sorted order, from position first_pred
    first_pred = int(np.searchsorted(s_sorted, threshold, side="left"))
    # tie blocks of equal scores: first and one-past-last sorted position of each element's block
    new_block = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
    starts = np.flatnonzero(new_block)
    block = np.cumsum(new_block) - 1
    pos_idx = np.flatnonzero(y[order] == 1)
    pos_start = starts[block[pos_idx]]
    pos_stop = np.r_[starts[1:], n][block[pos_idx]]
    pos_pred = pos_idx >= first_pred
    chunk = max(1, min(n_resamples, _CHUNK_BYTES // (8 * n)))
    parts: list[dict[str, np.ndarray]] = []
    for first in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - first)
        keys = rng.random((rows, n))
        mask = np.zeros((rows, n), dtype=bool)  # chosen participants, in score order
        if m < n:
            np.put_along_axis(mask, rank_of[np.argpartition(keys, m - 1, axis=1)[:, :m]], True, axis=1)
        else:
            mask[:] = True
        del keys
        below = np.zeros((rows, n + 1), dtype=np.int32)  # below[:, j] = chosen among sorted positions < j
        np.cumsum(mask, axis=1, out=below[:, 1:])
        chosen_pos = mask[:, pos_idx]
        n_pos = chosen_pos.sum(axis=1).astype(float)
        tp = chosen_pos[:, pos_pred].sum(axis=1).astype(float)
        tn = below[:, first_pred] - (n_pos - tp)
        n_neg = m - n_pos
        # average rank within the subset of each chosen positive: (#chosen before its tie block +
        # #chosen up to the block's end + 1) / 2; without ties that is its plain rank
        ranks = (below[:, pos_start] + below[:, pos_stop] + 1) * 0.5
        rank_sum_pos = np.einsum("ij,ij->i", ranks, chosen_pos)
        with np.errstate(invalid="ignore", divide="ignore"):
            sens = np.where(n_pos > 0, tp / n_pos, np.nan)
            spec = np.where(n_neg > 0, tn / n_neg, np.nan)
            u = rank_sum_pos - n_pos * (n_pos + 1) / 2.0
            auc = np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)
        parts.append({
            "accuracy": (tp + tn) / m,
            "sensitivity": sens,
            "specificity": spec,
            "balanced_accuracy": (sens + spec) / 2.0,
            "roc_auc": auc,
        })
    return {name: np.concatenate([p[name] for p in parts]) for name in METRIC_NAMES}


def spearman(x: ArrayLike, y: ArrayLike) -> tuple[float, float]:
    """Spearman's rank correlation and its two-sided p-value, ignoring pairs with a NaN.

    Returns ``(nan, nan)`` when fewer than 3 complete pairs remain or either variable is constant
    (the correlation is undefined there; scipy would warn and return NaN anyway).
    """
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise InputDataError(f"x and y must be 1-D of the same length; got shapes {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return (math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res: Any = stats.spearmanr(a, b)
    return (float(res.statistic), float(res.pvalue))

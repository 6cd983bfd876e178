"""Evaluation metrics for binary, multi-class and regression predictions, with subsampling intervals.

The group level (and the training helpers) score a model by comparing its per-participant scores
with labels from ``participants.tsv``. Definitions, for labels ``y`` (1 = positive: male for the
sex model, AD for the AD model) and predictions ``score >= threshold`` (the same rule that makes the
``label`` column of the predictions tables):

* accuracy = (TP + TN) / n
* sensitivity = TP / (TP + FN)         (NaN when there is no positive)
* specificity = TN / (TN + FP)         (NaN when there is no negative)
* balanced accuracy = (sensitivity + specificity) / 2   (NaN when either is)
* ROC AUC from scikit-learn            (NaN when only one class is present)

Multi-class heads (:func:`multiclass_metrics`; predicted class = argmax of the probabilities):
accuracy, balanced accuracy (mean per-class recall), one-vs-rest ROC AUC of each class and their
unweighted (macro) mean, as the Liu et al. / MOX reproduction reports them, and the confusion matrix.
Regression heads (:func:`regression_metrics`): mean absolute error, Pearson's r, R^2.

Intervals (for every kind) follow Lu et al. 2022 (J Big Data, "A practical Alzheimer's disease classifier..."): the
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
from typing import Any, Iterator, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import roc_auc_score

from .errors import InputDataError, UsageError

__all__ = [
    "METRIC_NAMES",
    "MULTICLASS_METRIC_NAMES",
    "REGRESSION_METRIC_NAMES",
    "binary_metrics",
    "finite_or_none",
    "subsample_intervals",
    "multiclass_metrics",
    "multiclass_subsample_intervals",
    "regression_metrics",
    "regression_subsample_intervals",
    "spearman",
]


def finite_or_none(value: float) -> float | None:
    """``value`` as a float, or None when it is NaN or infinite: JSON has no NaN (``json.dumps`` writes
    a bare ``NaN`` that strict readers refuse), and an interval that cannot be computed, as for a
    count, is absent, not a number."""
    v = float(value)
    return v if math.isfinite(v) else None


#: the metrics that :func:`subsample_intervals` gives intervals for, in table order
METRIC_NAMES: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "balanced_accuracy", "roc_auc")
#: the scalar metrics of :func:`multiclass_metrics` with intervals (per-class AUCs come beside them)
MULTICLASS_METRIC_NAMES: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_roc_auc")
#: the metrics of :func:`regression_metrics`, in table order
REGRESSION_METRIC_NAMES: tuple[str, ...] = ("mae", "pearson_r", "r2")


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
    _check_subsampling(n_resamples, fraction, level)
    if y.size == 0:
        return {name: _NAN_PAIR for name in METRIC_NAMES}
    m = max(1, int(round(fraction * y.size)))
    values = _subsample_metrics(y, s, threshold, int(n_resamples), m, np.random.default_rng(seed))
    return _percentile_intervals(values, level)


_NAN_PAIR = (math.nan, math.nan)


def _check_subsampling(n_resamples: int, fraction: float, level: float) -> None:
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise UsageError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"fraction must be in (0, 1]; got {fraction!r}")
    if not 0.0 < level < 1.0:
        raise UsageError(f"level must be in (0, 1); got {level!r}")


def _percentile_intervals(values: dict[str, np.ndarray], level: float) -> dict[str, tuple[float, float]]:
    """``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of each metric's subsample values,
    undefined (NaN) values left out; ``(nan, nan)`` when no subsample defines the metric."""
    q = [100.0 * (1.0 - level) / 2.0, 100.0 * (1.0 + level) / 2.0]
    out: dict[str, tuple[float, float]] = {}
    for name, v in values.items():
        v = v[np.isfinite(v)]
        if v.size == 0:
            out[name] = _NAN_PAIR
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


# -- multi-class and regression ----------------------------------------------------------------------
def _subsample_index_chunks(
    n: int, m: int, n_resamples: int, rng: np.random.Generator, bytes_per_item: int
) -> Iterator[np.ndarray]:
    """Index arrays (rows, m) of ``n_resamples`` random subsets of ``m`` of ``n`` items, in chunks.

    The same draw as :func:`_subsample_metrics`: subset ``r`` holds the ``m`` items with the
    smallest keys in row ``r`` of ``rng.random((n_resamples, n))``, so a seed gives the same
    participants to every kind of metric. ``bytes_per_item`` bounds a chunk's working memory.
    """
    chunk = max(1, min(n_resamples, _CHUNK_BYTES // (max(8, bytes_per_item) * n)))
    for first in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - first)
        keys = rng.random((rows, n))
        if m < n:
            yield np.argpartition(keys, m - 1, axis=1)[:, :m]
        else:
            yield np.broadcast_to(np.arange(n), (rows, n))


def _rank_auc(y_pos: np.ndarray, s: np.ndarray) -> np.ndarray:
    """ROC AUC of each row (Mann-Whitney form, ties given average ranks); NaN without both classes."""
    n_pos = y_pos.sum(axis=1).astype(float)
    n_neg = y_pos.shape[1] - n_pos
    ranks = stats.rankdata(s, axis=1)
    u = np.where(y_pos, ranks, 0.0).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _check_multiclass(y_true: ArrayLike, probabilities: ArrayLike, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probabilities, dtype=float)
    if y.ndim != 1 or p.ndim != 2 or p.shape != (y.size, n_classes):
        raise InputDataError(
            f"y_true must be 1-D and probabilities (n, {n_classes}); got shapes {y.shape} and {p.shape}"
        )
    try:
        yf = y.astype(float)
    except (TypeError, ValueError) as exc:
        raise InputDataError(f"y_true must hold class indices 0..{n_classes - 1}; got dtype {y.dtype}") from exc
    if np.isnan(yf).any() or np.isnan(p).any():
        raise InputDataError("y_true and probabilities must not contain NaN; remove unlabelled rows first")
    bad = set(np.unique(yf).tolist()) - set(range(n_classes))
    if bad:
        raise InputDataError(f"y_true must hold class indices 0..{n_classes - 1}; got also {sorted(bad)}")
    return yf.astype(int), p


def _multiclass_batch(y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of :func:`multiclass_metrics` for many subsamples: ``y`` (R, m) class indices,
    ``p`` (R, m, k) probabilities. Per-class AUCs under the keys ``roc_auc_<index>``."""
    k = p.shape[2]
    pred = p.argmax(axis=2)
    correct = pred == y
    recalls, aucs = [], []
    for c in range(k):
        is_c = y == c
        n_c = is_c.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(n_c > 0, (correct & is_c).sum(axis=1) / n_c, np.nan))
        aucs.append(_rank_auc(is_c, p[:, :, c]))
    rec, auc = np.stack(recalls, axis=1), np.stack(aucs, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN, as they should
        out = {
            "accuracy": correct.mean(axis=1),
            "balanced_accuracy": np.nanmean(rec, axis=1),
            "macro_roc_auc": np.nanmean(auc, axis=1),
        }
    out.update({f"roc_auc_{c}": auc[:, c] for c in range(k)})
    return out


def multiclass_metrics(y_true: ArrayLike, probabilities: ArrayLike, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, one-vs-rest ROC AUC per class and their macro mean, confusion matrix.

    Parameters
    ----------
    y_true : array of int
        True class of each participant as an index into ``classes``.
    probabilities : array (n, k)
        Predicted probability of each class (a softmax output); the predicted class is the argmax.
    classes : sequence of str
        Class names in column order.

    Returns
    -------
    dict
        ``n``; ``accuracy``; ``balanced_accuracy`` (mean recall over the classes present in
        ``y_true``: scikit-learn's definition); ``roc_auc_per_class`` (class -> AUC of that class's
        probability, the class against all others; NaN when the class is absent or alone);
        ``macro_roc_auc`` (the unweighted mean of the defined per-class AUCs: scikit-learn's
        ``multi_class="ovr", average="macro"`` when every class is present); ``confusion``
        (k x k counts, rows = true class, columns = predicted class, in ``classes`` order).
    """
    k = len(classes)
    y, p = _check_multiclass(y_true, probabilities, k)
    if y.size == 0:
        nan = math.nan
        return {"n": 0.0, "accuracy": nan, "balanced_accuracy": nan, "macro_roc_auc": nan,
                "roc_auc_per_class": dict.fromkeys(classes, nan), "confusion": np.zeros((k, k), dtype=int)}
    batch = _multiclass_batch(y[None, :], p[None, :, :])
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (y, p.argmax(axis=1)), 1)
    return {
        "n": float(y.size),
        "accuracy": float(batch["accuracy"][0]),
        "balanced_accuracy": float(batch["balanced_accuracy"][0]),
        "macro_roc_auc": float(batch["macro_roc_auc"][0]),
        "roc_auc_per_class": {c: float(batch[f"roc_auc_{i}"][0]) for i, c in enumerate(classes)},
        "confusion": confusion,
    }


def multiclass_subsample_intervals(
    y_true: ArrayLike,
    probabilities: ArrayLike,
    classes: Sequence[str],
    *,
    n_resamples: int = 1000,
    fraction: float = 0.5,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Intervals of :data:`MULTICLASS_METRIC_NAMES` and of each class's AUC (key ``roc_auc_<class>``),
    by the same subsampling as :func:`subsample_intervals` (same draws for the same seed)."""
    k = len(classes)
    y, p = _check_multiclass(y_true, probabilities, k)
    _check_subsampling(n_resamples, fraction, level)
    names = [*MULTICLASS_METRIC_NAMES, *(f"roc_auc_{c}" for c in classes)]
    if y.size == 0:
        return dict.fromkeys(names, _NAN_PAIR)
    m = max(1, int(round(fraction * y.size)))
    parts = [
        _multiclass_batch(y[idx], p[idx])
        for idx in _subsample_index_chunks(y.size, m, int(n_resamples), np.random.default_rng(seed), 16 * (k + 2))
    ]
    values = {name: np.concatenate([part[name] for part in parts]) for name in MULTICLASS_METRIC_NAMES}
    values.update({f"roc_auc_{c}": np.concatenate([part[f"roc_auc_{i}"] for part in parts])
                   for i, c in enumerate(classes)})
    return _percentile_intervals(values, level)


def _check_regression(y_true: ArrayLike, predicted: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=float)
    v = np.asarray(predicted, dtype=float)
    if y.ndim != 1 or y.shape != v.shape:
        raise InputDataError(f"y_true and predicted must be 1-D of the same length; got {y.shape} and {v.shape}")
    if not (np.isfinite(y).all() and np.isfinite(v).all()):
        raise InputDataError("y_true and predicted must be finite; remove rows without a value first")
    return y, v


def _regression_batch(y: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    """MAE, Pearson r and R^2 of each row of ``y`` and ``v`` (R, m)."""
    err = v - y
    yc = y - y.mean(axis=1, keepdims=True)
    vc = v - v.mean(axis=1, keepdims=True)
    ss_tot = (yc * yc).sum(axis=1)
    ss_v = (vc * vc).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where((ss_tot > 0) & (ss_v > 0), (yc * vc).sum(axis=1) / np.sqrt(ss_tot * ss_v), np.nan)
        r2 = np.where(ss_tot > 0, 1.0 - (err * err).sum(axis=1) / ss_tot, np.nan)
    return {"mae": np.abs(err).mean(axis=1), "pearson_r": r, "r2": r2}


def regression_metrics(y_true: ArrayLike, predicted: ArrayLike) -> dict[str, float]:
    """Mean absolute error, Pearson's r and the coefficient of determination R^2 of ``predicted``.

    R^2 = 1 - sum((predicted - y)^2) / sum((y - mean(y))^2) (scikit-learn's ``r2_score``: it is not
    r^2 and is negative for predictions worse than the mean). ``n`` is returned as a float; r is
    NaN with fewer than 2 values or a constant variable, R^2 NaN when ``y_true`` is constant.
    """
    y, v = _check_regression(y_true, predicted)
    if y.size == 0:
        return {"n": 0.0, "mae": math.nan, "pearson_r": math.nan, "r2": math.nan}
    batch = _regression_batch(y[None, :], v[None, :])
    return {"n": float(y.size), **{name: float(batch[name][0]) for name in REGRESSION_METRIC_NAMES}}


def regression_subsample_intervals(
    y_true: ArrayLike,
    predicted: ArrayLike,
    *,
    n_resamples: int = 1000,
    fraction: float = 0.5,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Intervals of :data:`REGRESSION_METRIC_NAMES` by the subsampling of :func:`subsample_intervals`."""
    y, v = _check_regression(y_true, predicted)
    _check_subsampling(n_resamples, fraction, level)
    if y.size == 0:
        return dict.fromkeys(REGRESSION_METRIC_NAMES, _NAN_PAIR)
    m = max(1, int(round(fraction * y.size)))
    parts = [
        _regression_batch(y[idx], v[idx])
        for idx in _subsample_index_chunks(y.size, m, int(n_resamples), np.random.default_rng(seed), 64)
    ]
    return _percentile_intervals(
        {name: np.concatenate([part[name] for part in parts]) for name in REGRESSION_METRIC_NAMES}, level
    )


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

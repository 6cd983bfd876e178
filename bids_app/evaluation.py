"""Evaluation of the group's predictions against the labels in ``participants.tsv``.

Pure functions of two tables (the group predictions, :class:`~bids_app.labels.ParticipantLabels`):
no files are read or written here; :mod:`bids_app.group` runs them and writes the results.

Choices (also stated in the JSON sidecar of ``group_evaluation.tsv`` so readers of the table see them):

* The unit of evaluation is the **participant** (labels are per participant): a participant with
  several T1w (sessions, runs) contributes the mean of their scores, so nobody counts twice.
* Predictions made outside a model's validated conditions (``validated_input == False``: other
  preprocessing than the model's training, or failed QC) are kept apart: every model gets one row
  ``subset = validated`` (only validated predictions) and one row ``subset = all``; the ``all``
  row counts the non-validated images in ``n_images_not_validated``.
* Participants without a usable label for the task are counted (``n_unlabelled``), never guessed;
  MCI (AD task) and sex ``other`` are counted in ``n_other_class`` and left out of the metrics.

The 95% intervals (1,000 subsamples per model and subset) dominate the cost at biobank size; the
(model, subset) pairs are computed on a few threads (numpy releases the GIL in those loops).
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from .derivatives import PREDICTION_COLUMNS
from .labels import ParticipantLabels
from .metrics import METRIC_NAMES, binary_metrics, spearman, subsample_intervals

__all__ = [
    "EVALUATION_COLUMNS",
    "TASK_CLASSES",
    "as_bool",
    "participant_scores",
    "model_threshold",
    "evaluate",
]

logger = logging.getLogger(__name__)

#: task -> (label column in participants.tsv, positive class, negative class)
TASK_CLASSES: dict[str, tuple[str, str, str]] = {
    "sex": ("sex", "male", "female"),
    "ad": ("diagnosis", "AD", "CN"),
}

_N_RESAMPLES = 1000
_FRACTION = 0.5
_SEED = 0

_CI_TEXT = (
    "95% interval: 2.5th and 97.5th percentiles of the metric over 1000 random subsamples of 50% of "
    "the labelled participants drawn without replacement (Lu et al. 2022, J Big Data); seed 0."
)


def _metric_columns() -> dict[str, dict[str, Any]]:
    text = {
        "accuracy": "Accuracy: (TP + TN) / n_labelled.",
        "sensitivity": "Sensitivity (recall of the positive class): TP / n_positive.",
        "specificity": "Specificity: TN / n_negative.",
        "balanced_accuracy": "Balanced accuracy: (sensitivity + specificity) / 2.",
        "roc_auc": "Area under the ROC curve of the participant scores (threshold-free).",
    }
    out: dict[str, dict[str, Any]] = {}
    for name in METRIC_NAMES:
        out[name] = {"Description": text[name] + " n/a when undefined (e.g. one class only).", "Units": "proportion"}
        out[f"{name}_ci_low"] = {"Description": f"Lower bound of the 95% interval of {name}. " + _CI_TEXT}
        out[f"{name}_ci_high"] = {"Description": f"Upper bound of the 95% interval of {name}. " + _CI_TEXT}
    return out


#: Every column of ``group_evaluation.tsv``: name -> description. One row per (model, subset).
EVALUATION_COLUMNS: dict[str, dict[str, Any]] = {
    "target": dict(PREDICTION_COLUMNS["target"]),
    "model_name": dict(PREDICTION_COLUMNS["model_name"]),
    "model_version": dict(PREDICTION_COLUMNS["model_version"]),
    "subset": {
        "Description": "Which predictions the row evaluates.",
        "Levels": {
            "validated": "only predictions with validated_input = True (model's own preprocessing, QC passed)",
            "all": "every prediction, including those made outside the model's validated conditions",
        },
    },
    "positive_class": {"Description": "The class counted as positive (score = its probability): male or AD."},
    "negative_class": {"Description": "The class counted as negative: female or CN."},
    "threshold": {"Description": "Decision threshold: a participant is predicted positive when score >= threshold."},
    "n_images": {"Description": "Number of T1w images with a prediction in this subset."},
    "n_images_not_validated": {"Description": "Of n_images, how many have validated_input = False."},
    "n_participants": {
        "Description": (
            "Participants with a prediction in this subset. The unit of evaluation is the participant: "
            "with several T1w (sessions, runs) the participant's score is the mean of their scores."
        )
    },
    "n_labelled": {
        "Description": "Participants whose label is the positive or the negative class (used for the metrics)."
    },
    "n_positive": {"Description": "Labelled participants of the positive class."},
    "n_negative": {"Description": "Labelled participants of the negative class."},
    "n_unlabelled": {
        "Description": (
            "Participants with a prediction but no usable label (absent from participants.tsv, n/a, or a "
            "spelling not recognised): counted, never guessed, left out of the metrics."
        )
    },
    "n_other_class": {
        "Description": (
            "Participants of a class the binary model does not separate (MCI for AD, 'other' for sex): left out."
        )
    },
    **_metric_columns(),
    "n_mmse": {"Description": "Participants with both a score and an MMSE (AD models only; any diagnosis)."},
    "spearman_r_mmse": {
        "Description": "Spearman's rank correlation between the participant AD score and MMSE (AD models only)."
    },
    "spearman_p_mmse": {"Description": "Two-sided p-value of spearman_r_mmse."},
}


def as_bool(series: pd.Series) -> pd.Series:
    """True only for a recorded True (``n/a`` or anything else counts as not True)."""
    if series.dtype == bool:
        return series
    text = series.astype("string").str.strip().str.lower()
    return text.eq("true").fillna(False).astype(bool)


def participant_scores(predictions: pd.DataFrame, *, validated_only: bool) -> pd.DataFrame:
    """One row per (task, model_name, model_version, participant): mean score over their T1w.

    Columns: task, model_name, model_version, participant_id, score, n_images,
    n_images_not_validated, threshold.
    """
    keys = ["target", "model_name", "model_version"]
    cols = keys + ["participant_id", "score", "n_images", "n_images_not_validated", "threshold"]
    if predictions.empty:
        return pd.DataFrame(columns=cols)
    df = predictions.copy()
    df["validated"] = as_bool(df["validated_input"])
    if validated_only:
        df = df[df["validated"]]
    df = df[np.isfinite(pd.to_numeric(df["score"], errors="coerce").astype(float))]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df["model_version"] = df["model_version"].astype("string").fillna("n/a")
    df["score"] = df["score"].astype(float)
    df["not_validated"] = ~df["validated"]
    grouped = df.groupby(keys + ["participant_id"], sort=True, dropna=False)
    out = grouped.agg(
        score=("score", "mean"),
        n_images=("score", "size"),
        n_images_not_validated=("not_validated", "sum"),
        threshold=("threshold", "median"),
    ).reset_index()
    return out[cols]


def model_threshold(model_rows: pd.DataFrame) -> float:
    values = pd.to_numeric(model_rows["threshold"], errors="coerce").dropna()
    if values.empty:
        logger.warning("no threshold recorded for model %s; using 0.5", model_rows["model_name"].iloc[0])
        return 0.5
    counts = values.value_counts()
    if len(counts) > 1:
        logger.warning(
            "model %s was run with several thresholds %s; evaluating at the most frequent, %g",
            model_rows["model_name"].iloc[0],
            sorted(counts.index.tolist()),
            counts.index[0],
        )
    return float(counts.index[0])


def _truth(labels: ParticipantLabels, column: str, participant_ids: pd.Series) -> np.ndarray:
    """Each participant's label in ``column`` as text, ``""`` when unlabelled (vectorised)."""
    values = labels.table[column].reindex(participant_ids.to_numpy()).astype("string").fillna("")
    return values.to_numpy(dtype=object)


def evaluate(predictions: pd.DataFrame, labels: ParticipantLabels, *, threads: int | None = None) -> pd.DataFrame:
    """The evaluation table (columns :data:`EVALUATION_COLUMNS`, in order) for every model.

    ``threads``: how many (model, subset) interval computations run at once (default: the CPUs
    this process may use, at most 4); results do not depend on it.
    """
    rows: list[dict[str, Any]] = []
    jobs: list[tuple[np.ndarray, np.ndarray, float]] = []
    by_subset = {
        "validated": participant_scores(predictions, validated_only=True),
        "all": participant_scores(predictions, validated_only=False),
    }
    all_scores = by_subset["all"]
    keys = ["target", "model_name", "model_version"]
    grouped = {k: dict(tuple(df.groupby(keys, sort=False))) for k, df in by_subset.items()}
    empty = all_scores.iloc[0:0]
    for (task, model_name, model_version), model_rows in grouped["all"].items():
        if task not in TASK_CLASSES:
            logger.warning("model %s: task %r has no labels to evaluate against; skipped", model_name, task)
            continue
        label_col, positive, negative = TASK_CLASSES[task]
        threshold = model_threshold(model_rows)
        for subset in ("validated", "all"):
            scores = grouped[subset].get((task, model_name, model_version), empty)
            truth = _truth(labels, label_col, scores["participant_id"])
            is_pos, is_neg = truth == positive, truth == negative
            labelled = is_pos | is_neg
            n_unlabelled = int((truth == "").sum())
            y = is_pos[labelled].astype(int)
            s = scores["score"].to_numpy(dtype=float)[labelled]
            point = binary_metrics(y, s, threshold)
            jobs.append((y, s, threshold))
            row: dict[str, Any] = {
                "target": task,
                "model_name": model_name,
                "model_version": model_version,
                "subset": subset,
                "positive_class": positive,
                "negative_class": negative,
                "threshold": threshold,
                "n_images": int(scores["n_images"].sum()),
                "n_images_not_validated": int(scores["n_images_not_validated"].sum()),
                "n_participants": int(len(scores)),
                "n_labelled": int(labelled.sum()),
                "n_positive": int(is_pos.sum()),
                "n_negative": int(is_neg.sum()),
                "n_unlabelled": n_unlabelled,
                "n_other_class": int(len(truth) - labelled.sum() - n_unlabelled),
            }
            for name in METRIC_NAMES:
                row[name] = point[name]
            if task == "ad":
                mmse = labels.table["mmse"].reindex(scores["participant_id"].to_numpy()).to_numpy(dtype=float)
                row["n_mmse"] = int(np.isfinite(mmse).sum())
                row["spearman_r_mmse"], row["spearman_p_mmse"] = spearman(scores["score"].to_numpy(dtype=float), mmse)
            else:
                row["n_mmse"], row["spearman_r_mmse"], row["spearman_p_mmse"] = math.nan, math.nan, math.nan
            rows.append(row)
    for row, ci in zip(rows, _intervals(jobs, threads), strict=True):
        for name in METRIC_NAMES:
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = ci[name]
    table = pd.DataFrame(rows, columns=list(EVALUATION_COLUMNS))
    for col in ("n_mmse",):
        table[col] = table[col].astype("Int64")
    return table


def _intervals(
    jobs: list[tuple[np.ndarray, np.ndarray, float]], threads: int | None
) -> list[dict[str, tuple[float, float]]]:
    """Subsampling intervals of every (labels, scores, threshold) job; identical jobs computed once
    (e.g. subset ``validated`` equal to ``all`` when every prediction is validated)."""
    def one(job: tuple[np.ndarray, np.ndarray, float]) -> dict[str, tuple[float, float]]:
        y, s, threshold = job
        return subsample_intervals(y, s, threshold, n_resamples=_N_RESAMPLES, fraction=_FRACTION, seed=_SEED)

    keys = [(y.tobytes(), s.tobytes(), t) for y, s, t in jobs]
    unique = list(dict.fromkeys(keys))
    first = {k: jobs[keys.index(k)] for k in unique}
    if threads is None:
        threads = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    if threads > 1 and len(unique) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = dict(zip(unique, pool.map(one, [first[k] for k in unique]), strict=True))
    else:
        results = {k: one(first[k]) for k in unique}
    return [results[k] for k in keys]

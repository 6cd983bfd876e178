"""Evaluation of the group's predictions against the labels in ``participants.tsv`` / ``sessions.tsv``.

Pure functions of tables (the group predictions, :class:`~bids_app.labels.ParticipantLabels`, the
per-visit labels of :func:`read_visit_labels`): no files are written here; :mod:`bids_app.group`
runs them and writes the results.

Every prediction row belongs to one model head (``head_kind``: binary, multiclass, regression; a
table written before heads existed has no ``head_kind`` and is read as binary). Each kind has
its metrics (:mod:`bids_app.metrics`): binary heads as before; multi-class heads accuracy,
balanced accuracy, macro and per-class one-vs-rest ROC AUC (and a confusion matrix,
:func:`confusion_table`); regression heads MAE, Pearson's r and R^2.

Choices (also stated in the JSON sidecar of ``group_evaluation.tsv`` so readers of the table see them):

* The unit of evaluation is the **participant** (labels are per participant): a participant with
  several T1w (sessions, runs) contributes the mean of their scores, so nobody counts twice.
* Predictions made outside a model's validated conditions (``validated_input == False``: other
  preprocessing than the model's training, or failed QC) are kept apart: every model gets one row
  ``subset = validated`` (only validated predictions) and one row ``subset = all``; the ``all``
  row counts the non-validated images in ``n_images_not_validated``.
* Participants without a usable label for the task are counted (``n_unlabelled``), never guessed;
  MCI (AD task) and sex ``other`` are counted in ``n_other_class`` and left out of the metrics.
* Regression heads are evaluated per **visit** (participant and session: mean over the session's
  runs), because their target (age) changes from one session to the next.

The 95% intervals (1,000 subsamples per model and subset) dominate the cost at biobank size; the
(model, subset) pairs are computed on a few threads (numpy releases the GIL in those loops).
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .derivatives import PREDICTION_COLUMNS
from .labels import ParticipantLabels, read_labels
from .metrics import (
    METRIC_NAMES,
    MULTICLASS_METRIC_NAMES,
    REGRESSION_METRIC_NAMES,
    binary_metrics,
    multiclass_metrics,
    multiclass_subsample_intervals,
    regression_metrics,
    regression_subsample_intervals,
    spearman,
    subsample_intervals,
)

__all__ = [
    "EVALUATION_COLUMNS",
    "CONFUSION_COLUMNS",
    "TASK_CLASSES",
    "MULTICLASS_TARGETS",
    "REGRESSION_TARGETS",
    "SCREENING_THRESHOLD",
    "as_bool",
    "head_kinds",
    "parse_probabilities",
    "participant_scores",
    "participant_table",
    "visit_values",
    "read_visit_labels",
    "model_threshold",
    "evaluate",
    "evaluation_tables",
    "confusion_table",
    "visit_predictions",
]

logger = logging.getLogger(__name__)

#: binary head -> (label column in participants.tsv, positive class, negative class)
TASK_CLASSES: dict[str, tuple[str, str, str]] = {
    "sex": ("sex", "male", "female"),
    "ad": ("diagnosis", "AD", "CN"),
    "pmci": ("mci_progression", "pMCI", "sMCI"),
}
#: multi-class head -> the label column its classes are read against
MULTICLASS_TARGETS: dict[str, str] = {"diagnosis": "diagnosis", "cn_mci_ad": "diagnosis", "dx": "diagnosis"}
#: regression head -> the (numeric) label column it predicts
REGRESSION_TARGETS: dict[str, str] = {"age": "age", "brain_age": "age", "mmse": "mmse"}
#: the BrainImageNet authors' recommended AD screening threshold (Lu et al. 2022); the MCI table
#: reports the shares called AD at the recorded (default) threshold and at this one
SCREENING_THRESHOLD = 0.3

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


def _kind_metric_columns() -> dict[str, dict[str, Any]]:
    text = {
        "macro_roc_auc": (
            "Multi-class heads: unweighted mean over the classes of the one-vs-rest ROC AUC of each class's "
            "probability (macro AUC, as Liu et al. 2022 and the MOX reproduction report it)."
        ),
        "mae": "Regression heads: mean absolute error of predicted_value against the label, in value_unit.",
        "pearson_r": "Regression heads: Pearson's correlation of predicted_value with the label.",
        "r2": (
            "Regression heads: coefficient of determination 1 - SS_residual / SS_total (not r squared; "
            "negative when the predictions do worse than the labels' mean)."
        ),
    }
    out: dict[str, dict[str, Any]] = {}
    for name in ("macro_roc_auc", *REGRESSION_METRIC_NAMES):
        out[name] = {"Description": text[name] + " n/a for other heads or when undefined."}
        if name == "mae":
            out[name]["Units"] = "value_unit"
        out[f"{name}_ci_low"] = {"Description": f"Lower bound of the 95% interval of {name}. " + _CI_TEXT}
        out[f"{name}_ci_high"] = {"Description": f"Upper bound of the 95% interval of {name}. " + _CI_TEXT}
        if name == "macro_roc_auc":
            out["per_class_roc_auc"] = {
                "Description": (
                    "Multi-class heads: one-vs-rest ROC AUC of each class, 'class=auc' joined by ';' in the head's "
                    "label order (n/a for a class absent from the labelled participants)."
                )
            }
            out["per_class_roc_auc_ci"] = {
                "Description": "95% interval of each per-class AUC, 'class=low:high' joined by ';'. " + _CI_TEXT
            }
    out["value_unit"] = {"Description": "Regression heads: unit of the predicted values (e.g. years)."}
    return out


#: Every column of ``group_evaluation.tsv``: name -> description. One row per (model, head, subset).
EVALUATION_COLUMNS: dict[str, dict[str, Any]] = {
    "target": dict(PREDICTION_COLUMNS["target"]),
    "model_name": dict(PREDICTION_COLUMNS["model_name"]),
    "model_version": dict(PREDICTION_COLUMNS["model_version"]),
    "head": {"Description": "The model head evaluated (equals target)."},
    "head_kind": {
        "Description": "Kind of the head (predictions without head_kind, written before heads existed, are binary).",
        "Levels": {
            "binary": "accuracy, sensitivity, specificity, balanced accuracy, ROC AUC at the recorded threshold",
            "multiclass": "accuracy, balanced accuracy, macro and per-class one-vs-rest ROC AUC; confusion matrix in "
            "group_confusion.tsv",
            "regression": "mae, pearson_r, r2 of predicted_value against the label column, per visit",
        },
    },
    "subset": {
        "Description": "Which predictions the row evaluates.",
        "Levels": {
            "validated": "only predictions with validated_input = True (model's own preprocessing, QC passed)",
            "all": "every prediction, including those made outside the model's validated conditions",
        },
    },
    "positive_class": {"Description": "The class counted as positive (score = its probability): male or AD."},
    "negative_class": {"Description": "The class counted as negative: female or CN."},
    "classes": {"Description": "Multi-class heads: the classes in the head's label order, joined by ';'."},
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
    **_kind_metric_columns(),
    "n_mmse": {"Description": "Participants with both a score and an MMSE (AD models only; any diagnosis)."},
    "spearman_r_mmse": {
        "Description": "Spearman's rank correlation between the participant AD score and MMSE (AD models only)."
    },
    "spearman_p_mmse": {"Description": "Two-sided p-value of spearman_r_mmse."},
}

#: Every column of ``group_confusion.tsv``: one row per (model, head, subset, true class, predicted class).
CONFUSION_COLUMNS: dict[str, dict[str, Any]] = {
    "model_name": dict(PREDICTION_COLUMNS["model_name"]),
    "model_version": dict(PREDICTION_COLUMNS["model_version"]),
    "head": {"Description": "The multi-class head."},
    "subset": dict(EVALUATION_COLUMNS["subset"]),
    "true": {"Description": "True class (participants.tsv)."},
    "predicted": {"Description": "Predicted class: the most probable class of the participant's mean probabilities."},
    "n": {"Description": "Number of labelled participants with this true and predicted class (zeros included)."},
}


def as_bool(series: pd.Series) -> pd.Series:
    """True only for a recorded True (``n/a`` or anything else counts as not True)."""
    if series.dtype == bool:
        return series
    text = series.astype("string").str.strip().str.lower()
    return text.eq("true").fillna(False).astype(bool)


def head_kinds(predictions: pd.DataFrame) -> pd.Series:
    """Each row's head kind; missing (tables written before heads existed) means binary."""
    if "head_kind" not in predictions:
        return pd.Series("binary", index=predictions.index, dtype=object)
    kinds = predictions["head_kind"].astype("string").str.strip().str.lower()
    return kinds.fillna("binary").replace("", "binary").astype(object)


def parse_probabilities(text: Any) -> dict[str, float] | None:
    """``CN=0.1;MCI=0.3;AD=0.6`` -> ``{"CN": 0.1, "MCI": 0.3, "AD": 0.6}`` (order kept); None when
    the cell is missing or not of that form."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or pd.isna(text):
        return None
    out: dict[str, float] = {}
    for part in str(text).split(";"):
        name, sep, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            return None
        if not sep or not name.strip() or not math.isfinite(number) or name.strip() in out:
            return None
        out[name.strip()] = number
    return out or None


def _version(series: pd.Series) -> pd.Series:
    return series.astype("string").fillna("n/a")


def participant_scores(predictions: pd.DataFrame, *, validated_only: bool) -> pd.DataFrame:
    """One row per (task, model_name, model_version, participant) of a binary head: mean score over their T1w.

    Columns: task, model_name, model_version, participant_id, score, n_images,
    n_images_not_validated, threshold.
    """
    keys = ["target", "model_name", "model_version"]
    cols = keys + ["participant_id", "score", "n_images", "n_images_not_validated", "threshold"]
    if predictions.empty:
        return pd.DataFrame(columns=cols)
    df = predictions[head_kinds(predictions) == "binary"].copy()
    df["validated"] = as_bool(df["validated_input"])
    if validated_only:
        df = df[df["validated"]]
    df = df[np.isfinite(pd.to_numeric(df["score"], errors="coerce").astype(float))]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df["model_version"] = _version(df["model_version"])
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


# -- labels per participant and per visit -------------------------------------------------------------
#: columns of the per-visit label table (:func:`read_visit_labels`)
VISIT_COLUMNS = ("participant_id", "session_id", "sex", "diagnosis", "age", "mci_progression")

def read_visit_labels(bids_dir: Path, labels: ParticipantLabels | None = None) -> pd.DataFrame:
    """Age, diagnosis, MCI progression and sex per participant and per session (columns :data:`VISIT_COLUMNS`).

    One row per participant of ``participants.tsv`` (``session_id`` None: the participant's values)
    and one per row of ``sub-*/sub-*_sessions.tsv`` (the session's values, the participant's where
    the session gives none; :func:`visit_values` reads them). A view of ``labels`` (read from
    ``bids_dir`` by :func:`bids_app.labels.read_labels` when not given), the one reader of both tables.
    """
    if labels is None:
        labels = read_labels(Path(bids_dir))
    cols = [c for c in VISIT_COLUMNS if c not in ("participant_id", "session_id")]
    own = labels.table[cols].reset_index()
    own.insert(1, "session_id", None)
    visits = labels.sessions[cols].reset_index()
    table = pd.concat([own, visits], ignore_index=True) if len(visits) else own
    table = table[list(VISIT_COLUMNS)].astype({"participant_id": object, "session_id": object})
    for col in ("session_id", "sex", "diagnosis", "mci_progression"):
        table[col] = table[col].astype(object).where(table[col].notna(), None)
    table["age"] = table["age"].astype(float)
    return table.reset_index(drop=True)


def participant_table(labels: ParticipantLabels, visits: pd.DataFrame | None) -> pd.DataFrame:
    """Labels per participant (index ``participant_id``): sex, diagnosis, mmse of ``labels``, plus
    age and mci_progression of the participant's row in ``visits`` (for mci_progression the first
    session that records one when the participant row does not)."""
    table = labels.table.copy()
    table["age"] = math.nan
    table["mci_progression"] = pd.Series(pd.NA, index=table.index, dtype="string")
    if visits is None or visits.empty:
        return table
    ids = pd.Index(sorted(set(visits["participant_id"]) | set(table.index)), name="participant_id")
    table = table.reindex(ids)
    own = visits[visits["session_id"].isna()].drop_duplicates("participant_id").set_index("participant_id")
    table["age"] = own["age"].reindex(ids).astype(float)
    progression = own["mci_progression"].reindex(ids).astype("string")
    by_session = (visits[visits["session_id"].notna()].dropna(subset=["mci_progression"])
                  .sort_values("session_id").drop_duplicates("participant_id").set_index("participant_id"))
    table["mci_progression"] = progression.fillna(by_session["mci_progression"].reindex(ids).astype("string"))
    return table


def visit_values(visits: pd.DataFrame | None, keys: pd.DataFrame, column: str) -> np.ndarray:
    """``column`` for each (participant_id, session_id) row of ``keys``: the session's own value when
    sessions.tsv has one, else the participant's (object array; missing = None / NaN)."""
    numeric = column == "age"
    if visits is None or visits.empty or not len(keys):
        return np.full(len(keys), math.nan if numeric else None, dtype=float if numeric else object)
    own = visits[visits["session_id"].isna()].drop_duplicates("participant_id").set_index("participant_id")[column]
    ses = visits[visits["session_id"].notna()].drop_duplicates(["participant_id", "session_id"])
    ses = ses.set_index(["participant_id", "session_id"])[column]
    pids = keys["participant_id"].astype(str).to_numpy()
    sids = keys["session_id"].astype("string").fillna("").to_numpy(dtype=object)
    base = own.reindex(pids).to_numpy(dtype=object)
    if len(ses):
        session = ses.reindex(pd.MultiIndex.from_arrays([pids, sids])).to_numpy(dtype=object)
    else:
        session = np.full(len(pids), None, dtype=object)
    out = np.array([s if s is not None and not pd.isna(s) else b for s, b in zip(session, base)], dtype=object)
    if numeric:
        return np.array([math.nan if v is None or pd.isna(v) else float(v) for v in out], dtype=float)
    return np.array([None if v is None or pd.isna(v) else str(v) for v in out], dtype=object)


def _truth(table: pd.DataFrame, column: str, participant_ids: pd.Series) -> np.ndarray:
    """Each participant's label in ``column`` as text, ``""`` when unlabelled (vectorised)."""
    if column not in table:
        return np.full(len(participant_ids), "", dtype=object)
    values = table[column].reindex(participant_ids.to_numpy()).astype("string").fillna("")
    return values.to_numpy(dtype=object)


# -- the evaluation table -------------------------------------------------------------------------------
def _subset_rows(predictions: pd.DataFrame, kind: str) -> dict[str, pd.DataFrame]:
    rows = predictions[head_kinds(predictions) == kind].copy()
    rows["model_version"] = _version(rows["model_version"])
    rows["validated"] = as_bool(rows["validated_input"])
    return {"validated": rows[rows["validated"]], "all": rows}


def _empty_row(task: str, model_name: str, model_version: str, subset: str, kind: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(EVALUATION_COLUMNS, math.nan)
    row.update({"target": task, "model_name": model_name, "model_version": model_version, "head": task,
                "head_kind": kind, "subset": subset})
    return row


def _format_per_class(values: Mapping[str, float]) -> str:
    return ";".join(f"{c}={'n/a' if math.isnan(v) else f'{v:.6f}'}" for c, v in values.items())


def _multiclass_participants(rows: pd.DataFrame) -> tuple[list[str], pd.DataFrame, np.ndarray]:
    """Classes, one row per participant (participant_id, n_images, n_images_not_validated) and their
    mean probabilities (n, k). Rows whose probabilities do not parse or name other classes are
    left out, with a warning."""
    parsed = [parse_probabilities(v) for v in rows["probabilities"]] if "probabilities" in rows else []
    classes = next((list(p) for p in parsed if p), [])
    ok = np.array([p is not None and list(p) == classes for p in parsed], dtype=bool)
    if len(ok) and not ok.all():
        logger.warning("model %s head %s: %d prediction row(s) without probabilities of the classes %s; left out",
                       rows["model_name"].iloc[0], rows["target"].iloc[0], int((~ok).sum()), classes)
    probs = np.array([list(p.values()) for p, good in zip(parsed, ok) if good and p], dtype=float)
    good = rows[ok].assign(not_validated=lambda d: ~d["validated"])
    if good.empty:
        return classes, pd.DataFrame(columns=["participant_id", "n_images", "n_images_not_validated"]), probs
    frame = pd.DataFrame(probs.reshape(len(good), -1), index=good.index)
    frame["participant_id"] = good["participant_id"].to_numpy()
    mean = frame.groupby("participant_id", sort=True).mean()
    counts = good.groupby("participant_id", sort=True).agg(
        n_images=("participant_id", "size"), n_images_not_validated=("not_validated", "sum")
    ).reset_index()
    return classes, counts, mean.to_numpy(dtype=float)


def visit_predictions(rows: pd.DataFrame) -> pd.DataFrame:
    """Regression rows averaged per visit (participant, session): participant_id, session_id,
    value, n_images, n_images_not_validated, validated_input (every T1w of the visit validated)."""
    df = rows.assign(
        value=pd.to_numeric(rows["predicted_value"], errors="coerce") if "predicted_value" in rows else math.nan,
        _session=rows["session_id"].astype("string").fillna(""),
        not_validated=~rows["validated"],
    )
    df = df[np.isfinite(df["value"].astype(float))]
    out = df.groupby(["participant_id", "_session"], sort=True).agg(
        value=("value", "mean"), n_images=("value", "size"), n_images_not_validated=("not_validated", "sum"),
        validated_input=("validated", "all"),
    ).reset_index()
    out["session_id"] = out["_session"].replace("", pd.NA)
    return out.drop(columns="_session")


def _multiclass_rows(
    predictions: pd.DataFrame, table: pd.DataFrame
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Evaluation rows and confusion-matrix rows of every multi-class head."""
    rows: list[dict[str, Any]] = []
    confusion: list[dict[str, Any]] = []
    by_subset = _subset_rows(predictions, "multiclass")
    keys = ["target", "model_name", "model_version"]
    for (task, name, version), all_rows in by_subset["all"].groupby(keys, sort=True):
        column = MULTICLASS_TARGETS.get(task, task)
        for subset in ("validated", "all"):
            subset_rows = all_rows if subset == "all" else all_rows[all_rows["validated"]]
            row = _empty_row(task, name, version, subset, "multiclass")
            classes, counts, probs = _multiclass_participants(subset_rows)
            truth = _truth(table, column, counts["participant_id"])
            labelled = np.isin(truth, classes) if classes else np.zeros(len(truth), dtype=bool)
            n_unlabelled = int((truth == "").sum())
            row.update({
                "classes": ";".join(classes),
                "n_images": int(counts["n_images"].sum()),
                "n_images_not_validated": int(counts["n_images_not_validated"].sum()),
                "n_participants": int(len(counts)),
                "n_labelled": int(labelled.sum()),
                "n_unlabelled": n_unlabelled,
                "n_other_class": int(len(truth) - labelled.sum() - n_unlabelled),
            })
            y = np.array([classes.index(t) for t in truth[labelled]], dtype=int)
            p = probs[labelled] if len(probs) else np.zeros((0, len(classes)))
            point = multiclass_metrics(y, p, classes)
            ci = multiclass_subsample_intervals(y, p, classes, n_resamples=_N_RESAMPLES, fraction=_FRACTION, seed=_SEED)
            for metric in MULTICLASS_METRIC_NAMES:
                row[metric] = point[metric]
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = ci[metric]
            row["per_class_roc_auc"] = _format_per_class(point["roc_auc_per_class"])
            row["per_class_roc_auc_ci"] = ";".join(
                f"{c}=" + ("n/a" if math.isnan(ci[f"roc_auc_{c}"][0]) else
                           f"{ci[f'roc_auc_{c}'][0]:.6f}:{ci[f'roc_auc_{c}'][1]:.6f}") for c in classes
            )
            rows.append(row)
            for i, true in enumerate(classes):
                for j, predicted in enumerate(classes):
                    confusion.append({"model_name": name, "model_version": version, "head": task, "subset": subset,
                                      "true": true, "predicted": predicted, "n": int(point["confusion"][i, j])})
    return rows, confusion


def _regression_rows(
    predictions: pd.DataFrame, table: pd.DataFrame, visits: pd.DataFrame | None
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    by_subset = _subset_rows(predictions, "regression")
    keys = ["target", "model_name", "model_version"]
    for (task, name, version), all_rows in by_subset["all"].groupby(keys, sort=True):
        column = REGRESSION_TARGETS.get(task, task)
        units = all_rows["value_unit"].dropna().astype(str).unique() if "value_unit" in all_rows else []
        for subset in ("validated", "all"):
            subset_rows = all_rows if subset == "all" else all_rows[all_rows["validated"]]
            per_visit = visit_predictions(subset_rows)
            if column == "age" or column not in table:
                truth = visit_values(visits, per_visit, column) if column == "age" else np.full(len(per_visit), np.nan)
            else:  # a participant-level number such as MMSE
                truth = pd.to_numeric(table[column].reindex(per_visit["participant_id"].to_numpy()),
                                      errors="coerce").to_numpy(dtype=float)
            labelled = np.isfinite(truth)
            row = _empty_row(task, name, version, subset, "regression")
            row.update({
                "value_unit": ";".join(units) if len(units) else math.nan,
                "n_images": int(per_visit["n_images"].sum()),
                "n_images_not_validated": int(per_visit["n_images_not_validated"].sum()),
                "n_participants": int(per_visit["participant_id"].nunique()),
                "n_labelled": int(labelled.sum()),
                "n_unlabelled": int((~labelled).sum()),
                "n_other_class": 0,
            })
            y, v = truth[labelled], per_visit["value"].to_numpy(dtype=float)[labelled]
            point = regression_metrics(y, v)
            ci = regression_subsample_intervals(y, v, n_resamples=_N_RESAMPLES, fraction=_FRACTION, seed=_SEED)
            for metric in REGRESSION_METRIC_NAMES:
                row[metric] = point[metric]
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = ci[metric]
            rows.append(row)
    return rows


def evaluate(
    predictions: pd.DataFrame,
    labels: ParticipantLabels,
    *,
    visits: pd.DataFrame | None = None,
    threads: int | None = None,
) -> pd.DataFrame:
    """The evaluation table (columns :data:`EVALUATION_COLUMNS`, in order) for every model head.

    ``visits``: the per-visit labels (:func:`read_visit_labels`) that give age and MCI progression;
    without them only the labels of ``labels`` are used. ``threads``: how many (model, subset)
    interval computations of binary heads run at once (default: the CPUs this process may use, at
    most 4); results do not depend on it.
    """
    return evaluation_tables(predictions, labels, visits=visits, threads=threads)[0]


def confusion_table(
    predictions: pd.DataFrame, labels: ParticipantLabels, *, visits: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The confusion matrices of every multi-class head (columns :data:`CONFUSION_COLUMNS`)."""
    _, confusion = _multiclass_rows(predictions, participant_table(labels, visits))
    return pd.DataFrame(confusion, columns=list(CONFUSION_COLUMNS))


def evaluation_tables(
    predictions: pd.DataFrame,
    labels: ParticipantLabels,
    *,
    visits: pd.DataFrame | None,
    threads: int | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The evaluation table (:data:`EVALUATION_COLUMNS`) and the confusion table
    (:data:`CONFUSION_COLUMNS`), computed once; arguments as :func:`evaluate`."""
    table = participant_table(labels, visits)
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
            truth = _truth(table, label_col, scores["participant_id"])
            is_pos, is_neg = truth == positive, truth == negative
            labelled = is_pos | is_neg
            n_unlabelled = int((truth == "").sum())
            y = is_pos[labelled].astype(int)
            s = scores["score"].to_numpy(dtype=float)[labelled]
            point = binary_metrics(y, s, threshold)
            jobs.append((y, s, threshold))
            row = _empty_row(task, model_name, model_version, subset, "binary")
            row.update({
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
            })
            for name in METRIC_NAMES:
                row[name] = point[name]
            if task == "ad":
                mmse = table["mmse"].reindex(scores["participant_id"].to_numpy()).to_numpy(dtype=float)
                row["n_mmse"] = int(np.isfinite(mmse).sum())
                row["spearman_r_mmse"], row["spearman_p_mmse"] = spearman(scores["score"].to_numpy(dtype=float), mmse)
            rows.append(row)
    for row, ci in zip(rows, _intervals(jobs, threads), strict=True):
        for name in METRIC_NAMES:
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = ci[name]
    multiclass, confusion = _multiclass_rows(predictions, table)
    rows += multiclass + _regression_rows(predictions, table, visits)
    out = pd.DataFrame(rows, columns=list(EVALUATION_COLUMNS))
    for col in ("n_images", "n_images_not_validated", "n_participants", "n_labelled", "n_positive", "n_negative",
                "n_unlabelled", "n_other_class", "n_mmse"):
        out[col] = out[col].astype("Int64")
    for col in ("positive_class", "negative_class", "classes", "per_class_roc_auc", "per_class_roc_auc_ci",
                "value_unit", "head", "head_kind"):
        out[col] = out[col].astype(object).where(out[col].notna(), None)
    return out, pd.DataFrame(confusion, columns=list(CONFUSION_COLUMNS))


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

"""Group level: one table for everyone, evaluation against participants.tsv, group figures.

Reads only what the participant level wrote into ``output_dir`` (``sub-*/**/*_predictions.tsv``
and ``*_failure.json``) plus the labels in the input ``participants.tsv``; it never re-runs a
model or looks at images. Outputs, all in ``output_dir`` and named ``group_*`` (listed in
``.bidsignore``), each written atomically:

* ``group_predictions.tsv`` (+ JSON): every participant's prediction rows, concatenated, sorted;
* ``group_evaluation.tsv`` (+ JSON), when labels exist: per model the metrics of
  :mod:`bids_app.metrics` with 95% subsampling intervals, label counts and Spearman's r of the
  AD score with MMSE;
* ``group_roc.png``, ``group_scores.png``, ``group_mmse.png`` when there is something to draw.

Choices (also stated in the JSON sidecar so readers of the table see them):

* The unit of evaluation is the **participant** (labels are per participant): a participant with
  several T1w (sessions, runs) contributes the mean of their scores, so nobody counts twice.
* Predictions made outside a model's validated conditions (``validated_input == False``: other
  preprocessing than the model's training, or failed QC) are kept apart: every model gets one row
  ``subset = validated`` (only validated predictions) and one row ``subset = all``; the ``all``
  row counts the non-validated images in ``n_images_not_validated``.
* Participants without a usable label for the task are counted (``n_unlabelled``), never guessed;
  MCI (AD task) and sex ``other`` are counted in ``n_other_class`` and left out of the metrics.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._io import tsv_bool
from .derivatives import PREDICTION_COLUMNS, read_predictions, write_table
from .errors import InputDataError, NoInputError
from .labels import ParticipantLabels, read_participant_labels
from .metrics import METRIC_NAMES, binary_metrics, spearman, subsample_intervals

__all__ = [
    "GROUP_PREDICTIONS",
    "GROUP_EVALUATION",
    "GROUP_FIGURES",
    "EVALUATION_COLUMNS",
    "TASK_CLASSES",
    "FailureRecord",
    "GroupSummary",
    "collect_predictions",
    "collect_failures",
    "participant_scores",
    "evaluate",
    "run_group_level",
]

logger = logging.getLogger(__name__)

GROUP_PREDICTIONS = "group_predictions.tsv"
GROUP_EVALUATION = "group_evaluation.tsv"
GROUP_FIGURES = {"roc": "group_roc.png", "scores": "group_scores.png", "mmse": "group_mmse.png"}

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
    "n_labelled": {"Description": "Participants whose label is the positive or the negative class (used for the metrics)."},
    "n_positive": {"Description": "Labelled participants of the positive class."},
    "n_negative": {"Description": "Labelled participants of the negative class."},
    "n_unlabelled": {
        "Description": (
            "Participants with a prediction but no usable label (absent from participants.tsv, n/a, or a "
            "spelling not recognised): counted, never guessed, left out of the metrics."
        )
    },
    "n_other_class": {
        "Description": "Participants of a class the binary model does not separate (MCI for AD, 'other' for sex): left out."
    },
    **_metric_columns(),
    "n_mmse": {"Description": "Participants with both a score and an MMSE (AD models only; any diagnosis)."},
    "spearman_r_mmse": {
        "Description": "Spearman's rank correlation between the participant AD score and MMSE (AD models only)."
    },
    "spearman_p_mmse": {"Description": "Two-sided p-value of spearman_r_mmse."},
}


@dataclass(frozen=True)
class FailureRecord:
    """A T1w the participant level could not finish (from its ``*_failure.json``)."""

    path: Path
    participant_id: str
    reason: str
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupSummary:
    """What the group level found and wrote."""

    output_dir: Path
    predictions_path: Path
    evaluation_path: Path | None
    figure_paths: tuple[Path, ...]
    report_path: Path | None
    predictions: pd.DataFrame
    evaluation: pd.DataFrame | None
    failures: tuple[FailureRecord, ...]
    labels: ParticipantLabels

    @property
    def n_images(self) -> int:
        cols = [c for c in ("participant_id", "session_id", "run_id", "source_file") if c in self.predictions]
        return int(len(self.predictions[cols].drop_duplicates())) if len(self.predictions) else 0

    @property
    def n_participants(self) -> int:
        return int(self.predictions["participant_id"].nunique()) if len(self.predictions) else 0

    @property
    def exit_code(self) -> int:
        """0: the group level itself succeeded (participant failures were reported by that level)."""
        return 0

    def text(self) -> str:
        """A few lines for the terminal: what was read, what was evaluated, where the files are."""
        lines = [
            f"Group level: {self.n_images} T1w from {self.n_participants} participants with predictions; "
            f"{len(self.failures)} T1w failed at the participant level.",
        ]
        for f in self.failures:
            lines.append(f"  failed: {f.path.relative_to(self.output_dir)}: {f.reason}")
        if self.evaluation is not None and len(self.evaluation):
            for _, r in self.evaluation[self.evaluation["subset"] == "all"].iterrows():
                auc = "n/a" if pd.isna(r["roc_auc"]) else f"{r['roc_auc']:.3f}"
                bac = "n/a" if pd.isna(r["balanced_accuracy"]) else f"{r['balanced_accuracy']:.3f}"
                lines.append(
                    f"  {r['target']} {r['model_name']}: AUC {auc}, balanced accuracy {bac} "
                    f"({r['n_labelled']} labelled, {r['n_unlabelled']} unlabelled, {r['n_other_class']} other class)"
                )
        else:
            lines.append("  not evaluated (no usable labels in participants.tsv, or no predictions)")
        written = [self.predictions_path, self.evaluation_path, *self.figure_paths, self.report_path]
        lines.append("Outputs: " + ", ".join(str(p.relative_to(self.output_dir)) for p in written if p) + f" in {self.output_dir}")
        return "\n".join(lines)


def _is_output_file(path: Path, output_dir: Path) -> bool:
    """Skip hidden files (e.g. half-written temporaries) and anything below a hidden folder."""
    rel = path.relative_to(output_dir)
    return not any(part.startswith(".") for part in rel.parts)


def collect_predictions(output_dir: Path) -> pd.DataFrame:
    """All ``sub-*/**/*_predictions.tsv`` under ``output_dir``, concatenated and sorted."""
    output_dir = Path(output_dir)
    paths = sorted(p for p in output_dir.glob("sub-*/**/*_predictions.tsv") if _is_output_file(p, output_dir))
    tables = []
    for path in paths:
        try:
            table = read_predictions(path)
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise InputDataError(f"{path}: cannot be read as a predictions table ({exc})") from exc
        missing = [c for c in ("participant_id", "target", "model_name", "score") if c not in table.columns]
        if missing:
            raise InputDataError(f"{path}: predictions table lacks the columns {missing}")
        tables.append(table.reindex(columns=list(PREDICTION_COLUMNS)))
    if not tables:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in PREDICTION_COLUMNS})
    table = pd.concat(tables, ignore_index=True)
    keys = ["participant_id", "session_id", "run_id", "source_file", "target", "model_name"]
    return table.sort_values(keys, na_position="first", kind="stable").reset_index(drop=True)


def collect_failures(output_dir: Path) -> tuple[FailureRecord, ...]:
    """``*_failure.json`` records under ``output_dir`` whose T1w has no predictions file.

    A failure record next to a predictions file of the same T1w is stale (a later run succeeded)
    and is skipped with a log message.
    """
    output_dir = Path(output_dir)
    out = []
    for path in sorted(output_dir.glob("sub-*/**/*_failure.json")):
        if not _is_output_file(path, output_dir):
            continue
        prefix = path.name[: -len("_failure.json")]
        if (path.parent / f"{prefix}_predictions.tsv").exists():
            logger.info("%s: a predictions file of the same T1w exists; the failure record is stale", path)
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            record = {"unreadable": str(exc)}
        if not isinstance(record, dict):
            record = {"record": record}
        reason = next((str(record[k]) for k in ("reason", "error", "message", "exception") if record.get(k)), "")
        if reason and record.get("error_type") and str(record["error_type"]) not in reason:
            reason = f"{record['error_type']}: {reason}"
        if reason and record.get("step"):
            reason = f"at {record['step']}: {reason}"
        participant = path.relative_to(output_dir).parts[0]
        out.append(FailureRecord(path=path, participant_id=participant, reason=reason or "no reason recorded", record=record))
    return tuple(out)


def _as_bool(series: pd.Series) -> pd.Series:
    """True only for a recorded True (``n/a`` or anything else counts as not True)."""
    return series.map(tsv_bool)


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
    df["validated"] = _as_bool(df["validated_input"])
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


def _model_threshold(model_rows: pd.DataFrame) -> float:
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


def evaluate(predictions: pd.DataFrame, labels: ParticipantLabels) -> pd.DataFrame:
    """The evaluation table (columns :data:`EVALUATION_COLUMNS`, in order) for every model."""
    rows: list[dict[str, Any]] = []
    by_subset = {
        "validated": participant_scores(predictions, validated_only=True),
        "all": participant_scores(predictions, validated_only=False),
    }
    all_scores = by_subset["all"]
    models = all_scores[["target", "model_name", "model_version"]].drop_duplicates().itertuples(index=False)
    for task, model_name, model_version in models:
        if task not in TASK_CLASSES:
            logger.warning("model %s: task %r has no labels to evaluate against; skipped", model_name, task)
            continue
        label_col, positive, negative = TASK_CLASSES[task]
        for subset in ("validated", "all"):
            scores = by_subset[subset]
            scores = scores[
                (scores["target"] == task) & (scores["model_name"] == model_name) & (scores["model_version"] == model_version)
            ]
            model_rows = all_scores[
                (all_scores["target"] == task)
                & (all_scores["model_name"] == model_name)
                & (all_scores["model_version"] == model_version)
            ]
            threshold = _model_threshold(model_rows)
            truth = labels.table[label_col].reindex(scores["participant_id"]).to_numpy(dtype=object)
            truth = np.array([None if pd.isna(v) else str(v) for v in truth], dtype=object)
            is_pos, is_neg = truth == positive, truth == negative
            labelled = is_pos | is_neg
            n_unlabelled = int(sum(v is None for v in truth))
            y = is_pos[labelled].astype(int)
            s = scores["score"].to_numpy(dtype=float)[labelled]
            point = binary_metrics(y, s, threshold)
            ci = subsample_intervals(y, s, threshold, n_resamples=_N_RESAMPLES, fraction=_FRACTION, seed=_SEED)
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
                row[f"{name}_ci_low"], row[f"{name}_ci_high"] = ci[name]
            if task == "ad":
                mmse = labels.table["mmse"].reindex(scores["participant_id"]).to_numpy(dtype=float)
                ok = np.isfinite(mmse)
                row["n_mmse"] = int(ok.sum())
                row["spearman_r_mmse"], row["spearman_p_mmse"] = spearman(scores["score"].to_numpy(dtype=float), mmse)
            else:
                row["n_mmse"], row["spearman_r_mmse"], row["spearman_p_mmse"] = math.nan, math.nan, math.nan
            rows.append(row)
    table = pd.DataFrame(rows, columns=list(EVALUATION_COLUMNS))
    for col in ("n_mmse",):
        table[col] = table[col].astype("Int64")
    return table


def _model_title(task: str, name: str, version: str) -> str:
    return f"{name} {version}" if version and version != "n/a" else name


def _write_figures(output_dir: Path, predictions: pd.DataFrame, labels: ParticipantLabels) -> list[Path]:
    """ROC, score-by-label and MMSE figures from all predictions (subset ``all``)."""
    from .report import figures

    scores = participant_scores(predictions, validated_only=False)
    written: list[Path] = []
    curves, panels, mmse_panels = [], [], []
    for (task, name, version), rows in scores.groupby(["target", "model_name", "model_version"], sort=True):
        if task not in TASK_CLASSES:
            continue
        label_col, positive, negative = TASK_CLASSES[task]
        truth = labels.table[label_col].reindex(rows["participant_id"]).to_numpy(dtype=object)
        truth = np.array(["unlabelled" if pd.isna(v) else str(v) for v in truth], dtype=object)
        s = rows["score"].to_numpy(dtype=float)
        title = _model_title(task, name, version)
        sel = (truth == positive) | (truth == negative)
        if (truth[sel] == positive).any() and (truth[sel] == negative).any():
            curves.append((task, title, (truth[sel] == positive).astype(int), s[sel]))
        order = [positive, negative, "MCI", "other", "unlabelled"]
        groups = [(g, s[truth == g]) for g in order if (truth == g).any()]
        panels.append((f"{task}: {title}", _model_threshold(rows), groups))
        if task == "ad":
            mmse = labels.table["mmse"].reindex(rows["participant_id"]).to_numpy(dtype=float)
            ok = np.isfinite(mmse)
            if ok.sum() >= 3:
                rho, p = spearman(s, mmse)
                mmse_panels.append((title, mmse[ok], s[ok], truth[ok].tolist(), rho, p))
    if curves:
        written.append(figures.save_png(figures.roc_figure(curves), output_dir / GROUP_FIGURES["roc"]))
    if panels and labels.has_labels:
        written.append(figures.save_png(figures.score_distribution_figure(panels), output_dir / GROUP_FIGURES["scores"]))
    if mmse_panels:
        written.append(figures.save_png(figures.mmse_scatter_figure(mmse_panels), output_dir / GROUP_FIGURES["mmse"]))
    return written


def _remove_stale(output_dir: Path, keep: set[Path]) -> None:
    """Remove group files of an earlier run that this run did not rewrite (e.g. an evaluation
    table from when participants.tsv still had labels), so the outputs always agree."""
    owned = [output_dir / GROUP_EVALUATION, output_dir / GROUP_EVALUATION.replace(".tsv", ".json")]
    owned += [output_dir / name for name in GROUP_FIGURES.values()]
    keep_all = set(keep) | {k.with_suffix(".json") for k in keep if k.suffix == ".tsv"}
    for path in owned:
        if path not in keep_all and path.exists():
            logger.info("removing %s from an earlier group run (not produced by this one)", path)
            path.unlink()


def run_group_level(bids_dir: Path, output_dir: Path, *, report: bool = True) -> GroupSummary:
    """Run the group level: read participant outputs in ``output_dir``, write the group files.

    With ``report`` (default) also writes ``group_report.html`` (:func:`bids_app.report.write_group_report`).

    Raises :class:`~bids_app.errors.NoInputError` when ``output_dir`` holds neither predictions
    nor failure records (the participant level has not been run there).
    """
    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    if not output_dir.is_dir():
        raise NoInputError(f"output directory {output_dir} does not exist; run the participant level first")
    predictions = collect_predictions(output_dir)
    failures = collect_failures(output_dir)
    if predictions.empty and not failures:
        raise NoInputError(
            f"no sub-*/**/*_predictions.tsv or *_failure.json under {output_dir}; run the participant level first"
        )
    for failure in failures:
        logger.warning("%s: no predictions (%s); see %s", failure.participant_id, failure.reason, failure.path)
    labels = read_participant_labels(bids_dir)

    pred_path = write_table(output_dir / GROUP_PREDICTIONS, predictions, PREDICTION_COLUMNS)
    evaluation = None
    eval_path = None
    figure_paths: list[Path] = []
    if labels.has_labels and not predictions.empty:
        evaluation = evaluate(predictions, labels)
        eval_path = write_table(output_dir / GROUP_EVALUATION, evaluation, EVALUATION_COLUMNS)
        figure_paths = _write_figures(output_dir, predictions, labels)
    elif predictions.empty:
        logger.info("no predictions to evaluate")
    else:
        logger.info("no labels in %s: predictions are not evaluated", bids_dir / "participants.tsv")
    _remove_stale(output_dir, keep={pred_path, *([eval_path] if eval_path else []), *figure_paths})
    report_path = None
    if report:
        from .report import write_group_report

        report_path = write_group_report(output_dir)
    summary = GroupSummary(
        output_dir=output_dir,
        predictions_path=pred_path,
        evaluation_path=eval_path,
        figure_paths=tuple(figure_paths),
        report_path=report_path,
        predictions=predictions,
        evaluation=evaluation,
        failures=failures,
        labels=labels,
    )
    logger.info(
        "group level: %d T1w from %d participants, %d failed; wrote %s%s",
        summary.n_images,
        summary.n_participants,
        len(failures),
        pred_path,
        f" and {eval_path}" if eval_path else "",
    )
    return summary

"""Group level: one table for everyone, evaluation against participants.tsv, group figures.

Reads only what the participant level wrote into ``output_dir`` (``sub-*/**/*_predictions.tsv``
and ``*_failure.json``) plus the labels in the input ``participants.tsv``; it never re-runs a
model or looks at images. Outputs, all in ``output_dir`` and named ``group_*`` (listed in
``.bidsignore``), each written atomically:

* ``group_predictions.tsv`` (+ JSON): every participant's prediction rows, concatenated, sorted;
* ``group_evaluation.tsv`` (+ JSON), when labels exist: per model the metrics of
  :mod:`bids_app.metrics` with 95% subsampling intervals, label counts and Spearman's r of the
  AD score with MMSE;
* ``group_confusion.tsv`` (+ JSON), for multi-class heads: confusion matrices in long format;
* ``group_brain_age.tsv`` and ``group_brain_age_summary.tsv`` (+ JSON), for heads predicting age:
  the brain-age gap per visit, bias-corrected on the CN visits, and its summary by diagnosis;
* ``group_mci.tsv`` (+ JSON), for AD heads applied to pMCI / sMCI participants: shares called AD,
  AUC and the GLM score ~ group + age + sex (:mod:`bids_app.cohort_analyses`);
* ``group_roc.png``, ``group_scores.png``, ``group_mmse.png`` when there is something to draw.

What is evaluated and how (participants as the unit, validated vs all predictions, unlabelled
participants counted, never guessed) is described in :mod:`bids_app.evaluation`; the files are found
and read by :mod:`bids_app.outputs`.

Nothing of an earlier group run is removed or replaced before this run has computed everything it
writes: tables and figures are computed first, written next (each atomically), and group files this
run does not produce (an evaluation from when ``participants.tsv`` still had labels) are removed
only after every new file, the report included, is in place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .cohort_analyses import BRAIN_AGE_COLUMNS, BRAIN_AGE_SUMMARY_COLUMNS, MCI_COLUMNS, brain_age_tables, mci_table
from .derivatives import PREDICTION_COLUMNS, write_table
from .errors import EXIT_FAILURE, EXIT_OK, NoInputError
from .evaluation import (
    CONFUSION_COLUMNS,
    EVALUATION_COLUMNS,
    TASK_CLASSES,
    evaluation_tables,
    head_kinds,
    model_threshold,
    participant_scores,
    participant_table,
    read_visit_labels,
)
from .labels import ParticipantLabels, read_participant_labels
from .metrics import spearman
from .outputs import (
    GROUP_BRAIN_AGE,
    GROUP_BRAIN_AGE_SUMMARY,
    GROUP_CONFUSION,
    GROUP_EVALUATION,
    GROUP_FIGURES,
    GROUP_MCI,
    GROUP_PREDICTIONS,
    FailureRecord,
    TableProblem,
    read_participant_outputs,
)

__all__ = ["GroupSummary", "run_group_level"]

logger = logging.getLogger(__name__)

#: failures named one by one in the log (all of them are in the summary and the report)
_MAX_LOGGED = 20



@dataclass(frozen=True)
class GroupSummary:
    """What the group level found and wrote.

    ``exit_code`` follows the participant level's rule: 0 when every T1w found in the output has
    usable predictions; otherwise the common exit code of the incomplete T1w (their failure
    records' codes; 65 for a predictions table that cannot be used), or 1 when they differ. The
    group files are written in every case: they describe the T1w that succeeded.
    """

    output_dir: Path
    predictions_path: Path
    evaluation_path: Path | None
    figure_paths: tuple[Path, ...]
    report_path: Path | None
    predictions: pd.DataFrame
    evaluation: pd.DataFrame | None
    failures: tuple[FailureRecord, ...]
    labels: ParticipantLabels
    problems: tuple[TableProblem, ...] = ()
    #: further tables written (file name -> table): confusion matrices, brain age, MCI
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        cols = [c for c in ("participant_id", "session_id", "run_id", "source_file") if c in self.predictions]
        return int(len(self.predictions[cols].drop_duplicates())) if len(self.predictions) else 0

    @property
    def n_participants(self) -> int:
        return int(self.predictions["participant_id"].nunique()) if len(self.predictions) else 0

    @property
    def exit_code(self) -> int:
        codes = {f.exit_code for f in self.failures} | {p.exit_code for p in self.problems}
        if not codes:
            return EXIT_OK
        return codes.pop() if len(codes) == 1 else EXIT_FAILURE

    def text(self, *, max_listed: int = 20) -> str:
        """A few lines for the terminal: what was read, what was evaluated, where the files are
        (at most ``max_listed`` failures and problems named one by one)."""
        lines = [
            f"Group level: {self.n_images} T1w from {self.n_participants} participants with predictions; "
            f"{len(self.failures)} T1w failed at the participant level.",
        ]
        for f in self.failures[:max_listed]:
            lines.append(f"  failed: {f.path.relative_to(self.output_dir)}: {f.reason}")
        for t in self.problems[:max_listed]:
            lines.append(f"  not used: {t.path.relative_to(self.output_dir)}: {t.reason}")
        hidden = max(0, len(self.failures) - max_listed) + max(0, len(self.problems) - max_listed)
        if hidden:
            lines.append(f"  ... and {hidden} more (see the group report)")
        if self.evaluation is not None and len(self.evaluation):
            def num(value: object) -> str:
                return "n/a" if pd.isna(value) else f"{value:.3f}"

            for _, r in self.evaluation[self.evaluation["subset"] == "all"].iterrows():
                kind = r.get("head_kind") or "binary"
                if kind == "regression":
                    unit = "" if pd.isna(r["value_unit"]) else f" {r['value_unit']}"
                    figures = f"MAE {num(r['mae'])}{unit}, r {num(r['pearson_r'])}, R^2 {num(r['r2'])}"
                elif kind == "multiclass":
                    figures = f"macro AUC {num(r['macro_roc_auc'])}, balanced accuracy {num(r['balanced_accuracy'])}"
                else:
                    figures = f"AUC {num(r['roc_auc'])}, balanced accuracy {num(r['balanced_accuracy'])}"
                lines.append(
                    f"  {r['target']} {r['model_name']}: {figures} "
                    f"({r['n_labelled']} labelled, {r['n_unlabelled']} unlabelled, {r['n_other_class']} other class)"
                )
        else:
            lines.append("  not evaluated (no usable labels in participants.tsv, or no predictions)")
        written = [self.predictions_path, self.evaluation_path, *self.figure_paths, self.report_path]
        names = ", ".join([str(p.relative_to(self.output_dir)) for p in written if p] + list(self.tables))
        lines.append(f"Outputs: {names} in {self.output_dir}")
        return "\n".join(lines)


def _model_title(task: str, name: str, version: str) -> str:
    return f"{name} {version}" if version and version != "n/a" else name


def _figures(predictions: pd.DataFrame, labels: ParticipantLabels) -> dict[str, object]:
    """ROC, score-by-label and MMSE figures (subset ``all``), by key of ``GROUP_FIGURES``; not saved."""
    from .report import figures

    scores = participant_scores(predictions, validated_only=False)
    curves, panels, mmse_panels = [], [], []
    for (task, name, version), rows in scores.groupby(["target", "model_name", "model_version"], sort=True):
        if task not in TASK_CLASSES:
            continue
        label_col, positive, negative = TASK_CLASSES[task]
        truth = labels.table[label_col].reindex(rows["participant_id"].to_numpy()).astype("string")
        truth = truth.fillna("unlabelled").to_numpy(dtype=object)
        s = rows["score"].to_numpy(dtype=float)
        title = _model_title(task, name, version)
        sel = (truth == positive) | (truth == negative)
        if (truth[sel] == positive).any() and (truth[sel] == negative).any():
            curves.append((task, title, (truth[sel] == positive).astype(int), s[sel]))
        order = [positive, negative, "MCI", "other", "unlabelled"]
        groups = [(g, s[truth == g]) for g in order if (truth == g).any()]
        panels.append((f"{task}: {title}", model_threshold(rows), groups))
        if task == "ad":
            mmse = labels.table["mmse"].reindex(rows["participant_id"].to_numpy()).to_numpy(dtype=float)
            ok = np.isfinite(mmse)
            if ok.sum() >= 3:
                rho, p = spearman(s, mmse)
                mmse_panels.append((title, mmse[ok], s[ok], truth[ok].tolist(), rho, p))
    made: dict[str, object] = {}
    if curves:
        made["roc"] = figures.roc_figure(curves)
    if panels and labels.has_labels:
        made["scores"] = figures.score_distribution_figure(panels)
    if mmse_panels:
        made["mmse"] = figures.mmse_scatter_figure(mmse_panels)
    return made


#: the further group tables, by file name, with their column descriptions
_ANALYSIS_TABLES: dict[str, dict] = {
    GROUP_CONFUSION: CONFUSION_COLUMNS,
    GROUP_BRAIN_AGE: BRAIN_AGE_COLUMNS,
    GROUP_BRAIN_AGE_SUMMARY: BRAIN_AGE_SUMMARY_COLUMNS,
    GROUP_MCI: MCI_COLUMNS,
}


def _remove_stale(output_dir: Path, keep: set[Path]) -> None:
    """Remove group files of an earlier run that this run did not rewrite (e.g. an evaluation
    table from when participants.tsv still had labels), so the outputs always agree. Called only
    once everything this run writes is in place."""
    owned = [output_dir / name for name in _ANALYSIS_TABLES]
    owned += [path.with_suffix(".json") for path in owned]
    owned += [output_dir / GROUP_EVALUATION, output_dir / GROUP_EVALUATION.replace(".tsv", ".json")]
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
    nor failure records (the participant level has not been run there). T1w without usable
    predictions are listed in the summary and set its ``exit_code``.
    """
    from .report import figures as figure_io

    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    if not output_dir.is_dir():
        raise NoInputError(f"output directory {output_dir} does not exist; run the participant level first")
    found = read_participant_outputs(output_dir)
    predictions, failures = found.predictions, found.failures
    if predictions.empty and not failures and not found.problems:
        raise NoInputError(
            f"no sub-*/**/*_predictions.tsv or *_failure.json under {output_dir}; run the participant level first"
        )
    for failure in failures[:_MAX_LOGGED]:
        logger.warning("%s: no predictions (%s); see %s", failure.participant_id, failure.reason, failure.path)
    if len(failures) > _MAX_LOGGED:
        logger.warning("... and %d more T1w without predictions (see the group report)", len(failures) - _MAX_LOGGED)
    labels = read_participant_labels(bids_dir)
    visits = read_visit_labels(bids_dir, labels)
    kinds = set(head_kinds(predictions)) if len(predictions) else set()
    # age evaluates regression heads, MCI progression binary heads; neither alone evaluates anything else
    has_visit_labels = bool(len(visits)) and bool(
        ("regression" in kinds and visits["age"].notna().any())
        or ("binary" in kinds and visits["mci_progression"].notna().any())
    )

    # 1. compute everything (a failure here leaves every earlier group file as it was)
    evaluation = None
    made: dict[str, object] = {}
    tables: dict[str, pd.DataFrame] = {}
    if (labels.has_labels or has_visit_labels) and not predictions.empty:
        evaluation, confusion = evaluation_tables(predictions, labels, visits=visits, threads=None)
        made = _figures(predictions, labels)
        brain_age, brain_age_summary = brain_age_tables(predictions, visits)
        mci = mci_table(predictions, participant_table(labels, visits), visits)
        found_tables = {GROUP_CONFUSION: confusion, GROUP_BRAIN_AGE: brain_age,
                        GROUP_BRAIN_AGE_SUMMARY: brain_age_summary, GROUP_MCI: mci}
        tables = {name: table for name, table in found_tables.items() if len(table)}
    elif predictions.empty:
        logger.info("no predictions to evaluate")
    else:
        logger.info("no labels in %s: predictions are not evaluated", bids_dir / "participants.tsv")

    # 2. write (each file atomically), 3. the report, 4. only then remove what this run does not produce
    pred_path = write_table(output_dir / GROUP_PREDICTIONS, predictions, PREDICTION_COLUMNS)
    eval_path = None
    if evaluation is not None:
        eval_path = write_table(output_dir / GROUP_EVALUATION, evaluation, EVALUATION_COLUMNS)
    table_paths = [write_table(output_dir / name, table, _ANALYSIS_TABLES[name]) for name, table in tables.items()]
    figure_paths = [figure_io.save_png(fig, output_dir / GROUP_FIGURES[key]) for key, fig in made.items()]
    report_path = None
    if report:
        from .report import write_group_report

        report_path = write_group_report(output_dir, problems=found.problems)  # reads the files just written
    _remove_stale(output_dir, keep={pred_path, *([eval_path] if eval_path else []), *figure_paths, *table_paths})
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
        problems=found.problems,
        tables=tables,
    )
    logger.info(
        "group level: %d T1w from %d participants, %d failed, %d tables not usable; wrote %s%s",
        summary.n_images,
        summary.n_participants,
        len(failures),
        len(found.problems),
        pred_path,
        f" and {eval_path}" if eval_path else "",
    )
    return summary

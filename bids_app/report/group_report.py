"""The group HTML report: summaries and distributions that stay readable at 100,000 participants.

Interface with the group level (:mod:`bids_app.group`): the group level passes what it already
holds in a :class:`GroupReportInputs` (the predictions and evaluation tables, the paths of the
figures it wrote, the failure records, the participant labels); the report reads nothing else
except, for the mean explanation maps and the links, a bounded number of files in ``output_dir``.
Called with ``inputs=None`` it reads the group files from ``output_dir`` (so a report can be rebuilt
without the input dataset, then without labels).

Size: the page has no per-participant rows and no per-participant figures. Lists (QC-flagged
images, failures) hold at most :data:`MAX_LISTED` rows each, worst first, with the total counts;
the mean explanation maps average at most :data:`MAX_MEAN_MAPS` maps per class (a seeded random
sample), and say so.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from .. import RESEARCH_USE_NOTICE, __version__
from .._io import write_text
from ..derivatives import SPACE
from ..errors import NoInputError
from ..metrics import METRIC_NAMES
from . import figures, html, methods, readers
from .participant_report import NOT_VALIDATED_WARNING, SYNTHETIC_WARNING

__all__ = ["GROUP_REPORT", "MAX_LISTED", "MAX_MEAN_MAPS", "FailureLike", "GroupReportInputs", "write_group_report"]

logger = logging.getLogger(__name__)

GROUP_REPORT = "group_report.html"
#: at most this many rows in each list of images (QC-flagged, failed); the counts are always complete
MAX_LISTED = 200
#: at most this many maps are averaged per class for a mean explanation map
MAX_MEAN_MAPS = 25

_FIGURE_ORDER = ("scores", "roc", "mmse")
_FIGURE_CAPTIONS = {
    "roc": "ROC curves of every model against the labels in participants.tsv (one point per participant).",
    "scores": (
        "Scores by true label (participant means); dashed line: the decision threshold. Large groups are drawn as "
        "distributions (violins) with their box plots."
    ),
    "mmse": "AD score against MMSE, coloured by diagnosis, with Spearman's rank correlation.",
}
_FIGURE_FILES = {"roc": "group_roc.png", "scores": "group_scores.png", "mmse": "group_mmse.png"}
_METRIC_HEADERS = {
    "accuracy": "ACC",
    "sensitivity": "SEN",
    "specificity": "SPE",
    "balanced_accuracy": "BAC",
    "roc_auc": "AUC",
}
#: task -> (label column of the labels table, positive class, negative class)
_TASK_LABELS = {"sex": ("sex", "male", "female"), "ad": ("diagnosis", "AD", "CN")}


class FailureLike(Protocol):
    """What the report needs of a failure record (:class:`bids_app.outputs.FailureRecord` has it)."""

    @property
    def path(self) -> Path: ...
    @property
    def participant_id(self) -> str: ...
    @property
    def reason(self) -> str: ...


@dataclass(frozen=True)
class GroupReportInputs:
    """Everything the group report shows, passed in by the group level.

    Attributes
    ----------
    predictions : DataFrame
        The group predictions table (columns of :data:`bids_app.derivatives.PREDICTION_COLUMNS`).
    evaluation : DataFrame or None
        The evaluation table (:data:`bids_app.group.EVALUATION_COLUMNS`); None without labels.
    evaluation_descriptions : mapping
        The evaluation table's JSON sidecar (column -> {"Description": ...}); header tooltips.
    figures : mapping
        Figure kind (``scores``, ``roc``, ``mmse``) -> the PNG the group level wrote.
    failures : sequence
        Failure records of the T1w images without predictions.
    labels : DataFrame or None
        Participant labels indexed by ``participant_id`` with columns ``sex``, ``diagnosis``,
        ``mmse`` (:attr:`bids_app.labels.ParticipantLabels.table`); used for the classes of the mean
        explanation maps (without it, predicted classes are used and the caption says so).
    """

    predictions: pd.DataFrame
    evaluation: pd.DataFrame | None = None
    evaluation_descriptions: Mapping[str, Any] = field(default_factory=dict)
    figures: Mapping[str, Path] = field(default_factory=dict)
    failures: Sequence[FailureLike] = ()
    labels: pd.DataFrame | None = None
    #: predictions tables the group level could not use (anything with ``path``, ``participant_id``, ``reason``)
    problems: Sequence[FailureLike] = ()
    #: further group tables by file name (group_confusion.tsv, group_brain_age_summary.tsv, group_mci.tsv)
    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)


def _truthy(series: pd.Series) -> pd.Series:
    """True only for a recorded True (a bool, or the text 'true' in any case); hash lookups, fast at 10^5 rows."""
    if series.dtype == bool:
        return series
    return series.isin([True, "True", "true", "TRUE"]).astype(bool)


def _with_interval(row: pd.Series, name: str) -> str:
    v, lo, hi = row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"]
    if pd.isna(v):
        return "n/a"
    if pd.isna(lo) or pd.isna(hi):
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _model_name(name: Any, version: Any) -> str:
    return f"{name} {version}" if version is not None and not pd.isna(version) and str(version) else str(name)


# -- reading the group files (used when the caller passes no inputs) -------------------------------
def _inputs_from_files(output_dir: Path) -> GroupReportInputs:
    from ..derivatives import read_predictions

    pred_path = output_dir / "group_predictions.tsv"
    if not pred_path.is_file():
        raise NoInputError(f"{pred_path} not found; run the group level first")
    evaluation, descriptions = None, {}
    eval_path = output_dir / "group_evaluation.tsv"
    if eval_path.is_file():
        evaluation = pd.read_csv(eval_path, sep="\t", na_values=["n/a"], keep_default_na=False,
                                 dtype={"model_version": "string"})
        descriptions = readers.read_json(eval_path.with_suffix(".json")) or {}
    from ..outputs import GROUP_BRAIN_AGE_SUMMARY, GROUP_CONFUSION, GROUP_MCI, collect_failures

    tables = {
        name: pd.read_csv(output_dir / name, sep="\t", na_values=["n/a"], keep_default_na=False,
                          dtype={"model_version": "string"})
        for name in (GROUP_CONFUSION, GROUP_BRAIN_AGE_SUMMARY, GROUP_MCI) if (output_dir / name).is_file()
    }
    return GroupReportInputs(
        predictions=read_predictions(pred_path),
        evaluation=evaluation,
        tables=tables,
        evaluation_descriptions=descriptions,
        figures={k: output_dir / n for k, n in _FIGURE_FILES.items() if (output_dir / n).is_file()},
        failures=collect_failures(output_dir),
    )


# -- sections ---------------------------------------------------------------------------------------
def _notices(pred: pd.DataFrame) -> list[str]:
    out = [html.notice(RESEARCH_USE_NOTICE, "danger")]
    if pred.empty:
        return out
    synthetic = sorted(pred.loc[_truthy(pred["model_trained_on_synthetic"]), "model_name"].astype(str).unique())
    if synthetic:
        out.append(html.notice(SYNTHETIC_WARNING + " Models: " + ", ".join(synthetic) + ".", "danger"))
    not_validated = pred[~_truthy(pred["validated_input"])]
    if len(not_validated):
        reasons = not_validated["warnings"].dropna().astype(str).value_counts().head(5)
        text = "; ".join(f"{r} ({n:,})" for r, n in reasons.items()) or "not recorded"
        out.append(html.notice(f"{len(not_validated):,} of {len(pred):,} predictions: " + NOT_VALIDATED_WARNING + text,
                               "warn"))
    return out


def _images(pred: pd.DataFrame) -> pd.DataFrame:
    """One row per T1w image (the QC columns are the same on every model's row of an image)."""
    cols = ["participant_id", "session_id", "run_id", "source_file", "qc_pass", "qc_flags",
            "qc_gmv_template_correlation", "preproc_backend", "preproc_backend_version"]
    return pred[cols].drop_duplicates(subset=["participant_id", "session_id", "run_id", "source_file"])


def _overview(pred: pd.DataFrame, images: pd.DataFrame, failures: Sequence[FailureLike]) -> str:
    models = pred[["target", "model_name", "model_version"]].drop_duplicates()
    backends = images["preproc_backend"].fillna("n/a").value_counts()
    qc_pass = _truthy(images["qc_pass"])
    items = {
        "participants with predictions": f"{pred['participant_id'].nunique():,}",
        "T1w images with predictions": f"{len(images):,}",
        "T1w images that failed": f"{len(failures):,}",
        "T1w images with failed QC": f"{int((~qc_pass).sum()):,}"
        + (f" ({(~qc_pass).mean():.1%})" if len(images) else ""),
        "models": ", ".join(f"{t}: {_model_name(n, v)}" for t, n, v in models.itertuples(index=False)),
        "preprocessing": ", ".join(f"{b} ({n:,})" for b, n in backends.items()),
    }
    return html.section("Overview", html.key_value_table(items), anchor="overview")


def _unused_tables(problems: Sequence[FailureLike]) -> str:
    """Predictions tables the group level could not use (unreadable, wrong columns, header only)."""
    rows = [{"participant": p.participant_id, "table": str(p.path), "problem": p.reason} for p in problems[:MAX_LISTED]]
    more = len(problems) - len(rows)
    note = html.notice(
        f"{len(problems):,} predictions table(s) could not be used and are left out of every figure and table"
        + (f"; the first {MAX_LISTED} are listed" if more > 0 else "") + ".",
        "warn",
    )
    return html.section("Predictions tables not used", note + html.table(rows, ["participant", "table", "problem"]),
                        anchor="unused")


def _evaluation(evaluation: pd.DataFrame | None, descriptions: Mapping[str, Any]) -> str:
    if evaluation is None or evaluation.empty:
        return html.section(
            "Evaluation",
            html.notice(
                "No evaluation table: participants.tsv had no usable labels (sex, diagnosis, MMSE), or there "
                "were no predictions; predictions are not evaluated."
            ),
            anchor="evaluation",
        )
    kinds = evaluation["head_kind"].fillna("binary") if "head_kind" in evaluation else pd.Series("binary",
                                                                                              index=evaluation.index)
    others = evaluation[kinds != "binary"]
    evaluation = evaluation[kinds == "binary"]
    if evaluation.empty:
        return html.section("Evaluation", _other_heads(others), anchor="evaluation")
    rows = []
    for _, r in evaluation.iterrows():
        row: dict[str, Any] = {
            "model": f"{r['target']}: {_model_name(r['model_name'], r['model_version'])}",
            "subset": r["subset"],
            "threshold": r["threshold"],
            "participants": int(r["n_participants"]),
            "labelled (+/-)": f"{int(r['n_labelled'])} ({int(r['n_positive'])}/{int(r['n_negative'])})",
            "unlabelled": int(r["n_unlabelled"]),
            "other class": int(r["n_other_class"]),
        }
        for name in METRIC_NAMES:
            row[_METRIC_HEADERS[name]] = _with_interval(r, name)
        rho = r["spearman_r_mmse"]
        row["Spearman r (MMSE)"] = (
            "n/a" if pd.isna(rho) else f"{rho:.2f} (p={r['spearman_p_mmse']:.2g}, n={int(r['n_mmse'])})"
        )
        rows.append(row)
    columns = list(rows[0])
    source = {"participants": "n_participants", "unlabelled": "n_unlabelled", "other class": "n_other_class",
              "subset": "subset", "threshold": "threshold"}
    titles = {c: descriptions[s]["Description"] for c, s in source.items() if isinstance(descriptions.get(s), dict)}
    titles.update({_METRIC_HEADERS[n]: descriptions.get(n, {}).get("Description", "") for n in METRIC_NAMES})
    ci_text = descriptions.get("accuracy_ci_low", {}).get("Description", "")
    return html.section(
        "Evaluation",
        html.table(rows, columns, titles=titles),
        f"<p>Metric cells: value [95% interval]. {html.esc(ci_text.split('. ', 1)[-1])}</p>",
        "<p>Rows <em>validated</em> use only predictions made under the model's validated conditions; rows "
        "<em>all</em> use every prediction. One score per participant (mean over their T1w). Participants "
        "without a usable label are counted, never guessed.</p>",
        _other_heads(others),
        anchor="evaluation",
    )


def _num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{float(value):.{digits}f}"


def _ci(row: pd.Series, name: str) -> str:
    value = _num(row[name])
    lo, hi = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    return value if value == "n/a" or pd.isna(lo) or pd.isna(hi) else f"{value} [{_num(lo)}, {_num(hi)}]"


def _other_heads(evaluation: pd.DataFrame) -> str:
    """Multi-class and regression heads: their own metrics, one row per head and subset."""
    if evaluation.empty:
        return ""
    rows = []
    for _, r in evaluation.iterrows():
        if r["head_kind"] == "multiclass":
            figures = {"metrics": f"macro AUC {_ci(r, 'macro_roc_auc')}; BAC {_ci(r, 'balanced_accuracy')}; "
                                  f"ACC {_ci(r, 'accuracy')}",
                       "detail": f"per class AUC: {r['per_class_roc_auc']}"}
        else:
            unit = "" if pd.isna(r.get("value_unit")) else f" {r['value_unit']}"
            figures = {"metrics": f"MAE {_ci(r, 'mae')}{unit}; r {_ci(r, 'pearson_r')}; R^2 {_ci(r, 'r2')}",
                       "detail": "per visit (participant and session)"}
        rows.append({"head": f"{r['target']}: {_model_name(r['model_name'], r['model_version'])}",
                     "kind": r["head_kind"], "subset": r["subset"], "labelled": int(r["n_labelled"]),
                     "unlabelled": int(r["n_unlabelled"]), **figures})
    return "<h3>Multi-class and regression heads</h3>" + html.table(rows, list(rows[0]))


def _head_tables(tables: Mapping[str, pd.DataFrame]) -> str:
    """Confusion matrices, the brain-age gap by diagnosis and the AD model on MCI, when written."""
    parts = []
    confusion = tables.get("group_confusion.tsv")
    if confusion is not None and len(confusion):
        for (name, version, head), g in confusion[confusion["subset"] == "all"].groupby(
                ["model_name", "model_version", "head"], sort=True, dropna=False):
            order = list(dict.fromkeys(g["true"]))
            m = g.pivot(index="true", columns="predicted", values="n").reindex(index=order, columns=order)
            rows = [{"true / predicted": t, **{p: int(m.loc[t, p]) for p in order}} for t in order]
            parts += [f"<h3>Confusion matrix: {html.esc(head)}: {html.esc(_model_name(name, version))} (all)</h3>",
                      html.table(rows, list(rows[0]))]
    summary = tables.get("group_brain_age_summary.tsv")
    if summary is not None and len(summary):
        rows = [{"head": f"{r.head}: {_model_name(r.model_name, r.model_version)}", "subset": r.subset,
                 "diagnosis": r.diagnosis, "n": int(r.n), "mean age": _num(r.mean_age, 1),
                 "gap (raw)": f"{_num(r.mean_gap, 2)} (sd {_num(r.sd_gap, 2)})",
                 "gap (corrected)": f"{_num(r.mean_corrected_gap, 2)} [{_num(r.corrected_gap_ci_low, 2)}, "
                                    f"{_num(r.corrected_gap_ci_high, 2)}]",
                 "bias fit": f"a={_num(r.bias_slope)}, b={_num(r.bias_intercept, 2)}, n={int(r.n_bias_fit)}"}
                for r in summary.itertuples(index=False)]
        from ..cohort_analyses import BIAS_CORRECTION

        parts += ["<h3>Brain-age gap by diagnosis (years)</h3>", html.table(rows, list(rows[0])),
                  f"<p>{html.esc(BIAS_CORRECTION)}</p>"]
    mci = tables.get("group_mci.tsv")
    if mci is not None and len(mci):
        rows = [{"head": f"{r.head}: {_model_name(r.model_name, r.model_version)}", "subset": r.subset,
                 "statistic": r.statistic, "term": r.term, "threshold": _num(r.threshold, 2), "n": int(r.n),
                 "value [95% CI]": f"{_num(r.value)} [{_num(r.ci_low)}, {_num(r.ci_high)}]",
                 "p": _num(r.p_value, 4)} for r in mci.itertuples(index=False)]
        parts += ["<h3>AD model applied to MCI (pMCI / sMCI)</h3>", html.table(rows, list(rows[0])),
                  "<p>Shares called AD at the recorded and the screening (0.3) threshold, Wilson intervals; "
                  "the ROC AUC of pMCI against sMCI; OLS score ~ group + age + sex (statsmodels).</p>"]
    if not parts:
        return ""
    return html.section("Heads by kind", *parts, anchor="heads")


def _score_summary(pred: pd.DataFrame) -> str:
    if pred.empty:
        return html.section("Scores", html.notice("No predictions.", "warn"), anchor="scores")
    df = pred.assign(
        _score=pd.to_numeric(pred["score"], errors="coerce"),
        _threshold=pd.to_numeric(pred["threshold"], errors="coerce"),
        _validated=_truthy(pred["validated_input"]),
        _version=pred["model_version"].astype("string").fillna(""),
    )
    rows = []
    for (task, name, version), g in df.groupby(["target", "model_name", "_version"], sort=True):
        s = g["_score"].dropna()
        q = s.quantile([0.25, 0.5, 0.75]) if len(s) else pd.Series([math.nan] * 3, index=[0.25, 0.5, 0.75])
        positive = (g["_score"] >= g["_threshold"]).sum()
        rows.append(
            {
                "model": f"{task}: {_model_name(name, version)}",
                "T1w": f"{len(g):,}",
                "mean score": float(s.mean()) if len(s) else None,
                "median [IQR]": f"{q[0.5]:.3f} [{q[0.25]:.3f}, {q[0.75]:.3f}]" if len(s) else "n/a",
                "at or above threshold": f"{int(positive):,} ({positive / max(len(g), 1):.1%})",
                "threshold": float(g["_threshold"].median()),
                "not validated": f"{int((~g['_validated']).sum()):,}",
            }
        )
    return html.section("Scores", html.table(rows, list(rows[0])), anchor="scores")


def _figures(paths: Mapping[str, Path]) -> str:
    parts = []
    for kind in [*_FIGURE_ORDER, *sorted(set(paths) - set(_FIGURE_ORDER))]:
        path = paths.get(kind)
        if path is None or not Path(path).is_file():
            continue
        parts.append(html.image(Path(path).read_bytes(), f"group figure {kind}", _FIGURE_CAPTIONS.get(kind, "")))
    if not parts:
        return html.section("Figures", html.notice("No group figures: there were no labels to draw them against."),
                            anchor="figures")
    return html.section("Figures", *parts, anchor="figures")


def _report_link(output_dir: Path, source_file: Any) -> str:
    if source_file is None or pd.isna(source_file):
        return "n/a"
    _, prefix = readers.unit_location(output_dir, str(source_file))
    name = f"{prefix}_report.html"
    return f'<a href="reports/{html.esc(name)}">report</a>' if (output_dir / "reports" / name).is_file() else "n/a"


def _qc(output_dir: Path, images: pd.DataFrame, failures: Sequence[FailureLike]) -> str:
    from ..qc import GMV_CORRELATION_THRESHOLD

    parts = []
    passed = _truthy(images["qc_pass"])
    flags = images["qc_flags"].dropna().astype(str).str.split(";").explode()
    flags = flags[flags.str.len() > 0].value_counts()
    counts = [{"check": "every check passed", "T1w": f"{int(passed.sum()):,}"}]
    counts += [{"check": f"<code>{html.esc(f)}</code> failed", "T1w": f"{n:,}"} for f, n in flags.items()]
    counts.append({"check": "processing failed (no maps, no predictions)", "T1w": f"{len(failures):,}"})
    parts.append(html.table(counts, ["check", "T1w"], raw=("check",)))
    corr = pd.to_numeric(images["qc_gmv_template_correlation"], errors="coerce").to_numpy(dtype=float)
    if np.isfinite(corr).any():
        fig = figures.qc_distribution_figure(corr, GMV_CORRELATION_THRESHOLD)
        parts.append(html.image(figures.figure_png(fig), "QC distribution",
                                "GMV-template correlation of every T1w image; red: below the QC threshold."))
    flagged = images[~passed].assign(
        corr_value=pd.to_numeric(images.loc[~passed, "qc_gmv_template_correlation"], errors="coerce")
    ).sort_values("corr_value", na_position="first", kind="stable")
    if len(flagged):
        shown = flagged.head(MAX_LISTED)
        rows = [
            {
                "participant": r.participant_id,
                "session": r.session_id,
                "run": r.run_id,
                "failed checks": r.qc_flags,
                "GMV-template r": r.corr_value,
                "report": _report_link(output_dir, r.source_file),
            }
            for r in shown.itertuples(index=False)
        ]
        noun = "T1w image" if len(flagged) == 1 else "T1w images"
        note = (f"<p>{len(flagged):,} {noun} failed QC" + (f"; the {MAX_LISTED} with the lowest GMV-template "
                f"correlation are listed." if len(flagged) > MAX_LISTED else ", worst first.") + "</p>")
        parts += ["<h3>Images that failed QC</h3>", note,
                  html.table(rows, list(rows[0]), raw=("report",))]
    if failures:
        reasons = pd.Series([str(f.reason) for f in failures]).value_counts().head(10)
        parts += ["<h3>Images that failed processing</h3>",
                  html.table([{"reason": r, "T1w": f"{n:,}"} for r, n in reasons.items()], ["reason", "T1w"])]
        rows = []
        for f in list(failures)[:MAX_LISTED]:
            try:
                record = Path(f.path).relative_to(output_dir).as_posix()
            except ValueError:
                record = Path(f.path).name
            prefix = Path(f.path).name[: -len("_failure.json")] if Path(f.path).name.endswith("_failure.json") else ""
            report = output_dir / "reports" / f"{prefix}_report.html"
            rows.append(
                {
                    "participant": f.participant_id,
                    "record": f'<a href="{html.esc(record)}">{html.esc(Path(record).name)}</a>',
                    "reason": f.reason,
                    "report": f'<a href="reports/{html.esc(report.name)}">report</a>' if prefix and report.is_file()
                    else "n/a",
                }
            )
        if len(failures) > MAX_LISTED:
            parts.append(f"<p>{len(failures):,} failure records; the first {MAX_LISTED} are listed.</p>")
        parts.append(html.table(rows, ["participant", "record", "reason", "report"], raw=("record", "report")))
    return html.section("Quality control", *parts, anchor="qc")


def _mean_explanations(
    output_dir: Path, pred: pd.DataFrame, labels: pd.DataFrame | None
) -> tuple[str, list[dict[str, Any]]]:
    """Mean explanation map per class, for every kind of map found (a bounded sample per class)."""
    from ..grid import SPM_AFFINE

    if pred.empty:
        return "", []
    images = pred.drop_duplicates(subset=["source_file"])
    # which kinds of maps exist: look in the folders of the first few images only
    kinds: dict[str, readers.ExplanationMap] = {}
    for source in images["source_file"].head(20):
        folder, prefix = readers.unit_location(output_dir, str(source))
        for item in readers.find_explanations(folder, prefix):
            kinds.setdefault(item.desc, item)
    parts, sidecars = [], []
    rng = np.random.default_rng(0)
    for desc, example in sorted(kinds.items()):
        task = example.task or ""
        task_rows = pred[pred["target"] == task].drop_duplicates(subset=["source_file"])
        if task_rows.empty:
            task_rows = images
        column, positive, negative = _TASK_LABELS.get(task, ("", "", ""))
        if labels is not None and column in labels:
            truth = labels[column].reindex(task_rows["participant_id"]).to_numpy(dtype=object)
            classes = np.array([v if isinstance(v, str) and v in (positive, negative) else "" for v in truth], dtype=object)
            by = "true label (participants.tsv)"
        else:
            classes = task_rows["predicted_label"].astype("string").fillna("").to_numpy(dtype=object)
            by = "predicted label"
        rows, texts = [], []
        for cls in [c for c in (positive, negative) if c] or sorted(set(classes) - {""}):
            members = task_rows[classes == cls]
            if members.empty:
                continue
            order = rng.permutation(len(members))
            total, n = None, 0
            for i in order[: 4 * MAX_MEAN_MAPS]:
                folder, prefix = readers.unit_location(output_dir, str(members["source_file"].iloc[i]))
                data = readers.load_volume(folder / f"{prefix}_space-{SPACE}_desc-{desc}_explanation.nii.gz")
                if data is None:
                    continue
                total = data.astype(np.float64) if total is None else total + data
                n += 1
                if n >= MAX_MEAN_MAPS:
                    break
            if total is None:
                continue
            rows.append((cls, (total / n).astype(np.float32)))
            texts.append(f"{cls}: mean of {n} map{'s' if n != 1 else ''} ({len(members):,} participants in the class)")
        if not rows:
            continue
        overall = np.mean([r[1] for r in rows], axis=0)
        cut = figures.peak_voxel(overall)
        vmax = max(float(np.percentile(np.abs(r[1][np.abs(r[1]) > 0]), 99.5)) if (np.abs(r[1]) > 0).any() else 0.0
                   for r in rows) or None
        symmetric = any(float(r[1].min()) < 0 for r in rows)
        overlays = [figures.Overlay(f"{cls}", data, label=example.title, symmetric=symmetric, vmax=vmax, cut=cut,
                                    relative_threshold=0.1, cmap="plasma") for cls, data in rows]
        fig = figures.overlay_figure(overlays, readers.template_t1(), SPM_AFFINE)
        caption = (
            f"Mean {example.title} map per class, classes by {by}; same slices (through the peak of the classes' "
            f"average) and colour scale for every class; values within 10% of its maximum of 0 transparent. "
            + "; ".join(texts)
            + f". At most {MAX_MEAN_MAPS} maps per class are averaged (a seeded random sample)."
        )
        parts.append(html.image(figures.figure_png(fig), f"mean explanation map {desc}", caption))
        sidecars.append(example.sidecar)
    if not parts:
        return "", []
    return html.section("Mean explanation maps", *parts, anchor="explanations"), sidecars


def _methods(
    output_dir: Path, pred: pd.DataFrame, images: pd.DataFrame, inputs: GroupReportInputs, explanations: list
) -> str:
    backends: dict[str, tuple[int, str]] = {}
    provenance: dict[str, dict[str, Any]] = {}
    for backend, g in images.groupby(images["preproc_backend"].fillna("n/a"), sort=True):
        versions = sorted(g["preproc_backend_version"].dropna().astype(str).unique())
        backends[str(backend)] = (len(g), "; ".join(versions[:5]) + (" and others" if len(versions) > 5 else ""))
        for source in g["source_file"].dropna().head(3):  # the parameters, from one image's map sidecar
            folder, prefix = readers.unit_location(output_dir, str(source))
            side = readers.read_json(folder / f"{prefix}_space-{SPACE}_label-GM_desc-modulated_probseg.json")
            if side and isinstance(side.get("Provenance"), dict):
                provenance[str(backend)] = side["Provenance"]
                break
    models = pred.drop_duplicates(subset=["target", "model_name", "model_version"]).to_dict(orient="records")
    paragraphs, references = methods.group_methods(
        backends=backends,
        models=models,
        n_images=len(images),
        n_participants=int(pred["participant_id"].nunique()),
        n_failed=len(inputs.failures),
        evaluated=inputs.evaluation is not None and not inputs.evaluation.empty,
        explanations=explanations,
        provenance=provenance,
    )
    return html.section(
        "Methods",
        "<p class=\"muted\">Generated from this run's outputs; paste into a paper and keep the references.</p>",
        html.methods_block(paragraphs, references),
        anchor="methods",
    )


def _provenance(pred: pd.DataFrame, inputs: GroupReportInputs) -> str:
    models = pred.drop_duplicates(subset=["target", "model_name", "model_version"])
    shas = {f"{r.target}: {_model_name(r.model_name, r.model_version)}": r.model_sha256
            for r in models.itertuples(index=False)}
    files = {k: Path(p).name for k, p in inputs.figures.items()}
    return html.section(
        "Provenance",
        html.details(
            "Models and files",
            html.key_value_table(shas),
            html.key_value_table({"group figures": ", ".join(files.values()) or "none",
                                  "report made by": f"vbm-predict {__version__}"}),
        ),
        anchor="provenance",
    )


def write_group_report(output_dir: Path, inputs: GroupReportInputs | None = None, *,
                       problems: Sequence[FailureLike] = ()) -> Path:
    """Write ``output_dir/group_report.html`` and return its path.

    ``inputs`` is what the group level computed; None reads the group files in ``output_dir``
    (raises :class:`~bids_app.errors.NoInputError` when ``group_predictions.tsv`` is missing), with
    ``problems`` (predictions tables the group level could not use) listed.
    """
    output_dir = Path(output_dir)
    if inputs is None:
        inputs = dataclasses.replace(_inputs_from_files(output_dir), problems=tuple(problems))
    pred = inputs.predictions
    images = _images(pred)
    explain_html, explain_sides = _mean_explanations(output_dir, pred, inputs.labels)
    heads = _head_tables(inputs.tables)
    body = [
        *_notices(pred),
        _overview(pred, images, inputs.failures),
        _evaluation(inputs.evaluation, inputs.evaluation_descriptions),
        *([heads] if heads else []),
        _figures(inputs.figures),
        _score_summary(pred),
    ]
    if explain_html:
        body.append(explain_html)
    if inputs.problems:
        body.append(_unused_tables(inputs.problems))
    body += [_qc(output_dir, images, inputs.failures), _methods(output_dir, pred, images, inputs, explain_sides),
             _provenance(pred, inputs)]
    anchors = [("overview", "Overview"), ("evaluation", "Evaluation")]
    if heads:
        anchors.append(("heads", "Heads"))
    anchors += [("figures", "Figures"), ("scores", "Scores")]
    if explain_html:
        anchors.append(("explanations", "Explanations"))
    anchors += [("qc", "QC"), ("methods", "Methods"), ("provenance", "Provenance")]
    body.insert(0, html.nav(anchors))
    document = html.page(
        "vbm-predict group report",
        body,
        footer=f"vbm-predict {html.esc(__version__)}. {html.esc(RESEARCH_USE_NOTICE)}",
    )
    out = output_dir / GROUP_REPORT
    write_text(out, document)
    return out

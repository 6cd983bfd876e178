"""The group HTML report, built only from the group files in ``output_dir``.

Reads ``group_predictions.tsv``, ``group_evaluation.tsv`` and its JSON sidecar (column
descriptions become header tooltips), the ``group_*.png`` figures and the failure records, so it
can be rebuilt at any time without the input dataset. Written to ``output_dir/group_report.html``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .. import RESEARCH_USE_NOTICE, __version__
from .._io import write_text
from ..errors import NoInputError
from ..metrics import METRIC_NAMES
from ..outputs import GROUP_FIGURES, FailureRecord, TableProblem, collect_failures
from . import html
from .participant_report import NOT_VALIDATED_WARNING, SYNTHETIC_WARNING

__all__ = ["GROUP_REPORT", "write_group_report"]

GROUP_REPORT = "group_report.html"

#: tables longer than this are summarised (per model / per failing step) instead of listed row by
#: row: a biobank's 100,000 rows would make a page no browser can use; the TSV has every row
MAX_LISTED_ROWS = 1000

_FIGURE_CAPTIONS = {
    "group_roc.png": "ROC curves of every model against the labels in participants.tsv (one point per participant).",
    "group_scores.png": "Scores by true label; dashed line: the decision threshold. Unlabelled participants shown apart.",
    "group_mmse.png": "AD score against MMSE, coloured by diagnosis, with Spearman's rank correlation.",
}

_METRIC_HEADERS = {
    "accuracy": "ACC",
    "sensitivity": "SEN",
    "specificity": "SPE",
    "balanced_accuracy": "BAC",
    "roc_auc": "AUC",
}


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() == "true"


def _with_interval(row: pd.Series, name: str) -> str:
    v, lo, hi = row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"]
    if pd.isna(v):
        return "n/a"
    if pd.isna(lo) or pd.isna(hi):
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _evaluation_section(output_dir: Path) -> str:
    path = output_dir / "group_evaluation.tsv"
    if not path.is_file():
        return html.section(
            "Evaluation",
            html.notice(
                "No evaluation table: participants.tsv had no usable labels (sex, diagnosis, MMSE), or there "
                "were no predictions; predictions are not evaluated."
            ),
        )
    table = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"model_version": "string"})
    sidecar_path = path.with_suffix(".json")
    descriptions = json.loads(sidecar_path.read_text(encoding="utf-8")) if sidecar_path.is_file() else {}
    rows = []
    for _, r in table.iterrows():
        row: dict[str, Any] = {
            "model": f"{r['target']}: {r['model_name']} {'' if pd.isna(r['model_version']) else r['model_version']}",
            "subset": r["subset"],
            "threshold": r["threshold"],
            "n_participants": int(r["n_participants"]),
            "labelled (+/-)": f"{int(r['n_labelled'])} ({int(r['n_positive'])}/{int(r['n_negative'])})",
            "n_unlabelled": int(r["n_unlabelled"]),
            "n_other_class": int(r["n_other_class"]),
            "n_images_not_validated": int(r["n_images_not_validated"]),
        }
        for name in METRIC_NAMES:
            row[_METRIC_HEADERS[name]] = _with_interval(r, name)
        rho = r["spearman_r_mmse"]
        row["Spearman r (MMSE)"] = (
            "n/a" if pd.isna(rho) else f"{rho:.2f} (p={r['spearman_p_mmse']:.2g}, n={int(r['n_mmse'])})"
        )
        rows.append(row)
    columns = list(rows[0]) if rows else []
    titles = {c: descriptions[c]["Description"] for c in columns if isinstance(descriptions.get(c), dict)}
    titles.update({_METRIC_HEADERS[n]: descriptions.get(n, {}).get("Description", "") for n in METRIC_NAMES})
    ci_text = descriptions.get("accuracy_ci_low", {}).get("Description", "")
    return html.section(
        "Evaluation",
        html.table(rows, columns, titles=titles),
        f"<p>Metric cells: value [95% interval]. {html.esc(ci_text.split('. ', 1)[-1])}</p>",
        "<p>Rows <em>validated</em> use only predictions made under the model's validated conditions; rows "
        "<em>all</em> use every prediction. One score per participant (mean over their T1w). Participants "
        "without a usable label are counted, never guessed.</p>",
        anchor="evaluation",
    )


def _truthy_column(table: pd.DataFrame, column: str) -> pd.Series:
    return table[column].astype("string").str.strip().str.lower().eq("true").fillna(False).astype(bool)


def _prediction_summary(predictions: pd.DataFrame) -> str:
    """Per model: counts, predicted labels and the score distribution (for tables too long to list)."""
    table = predictions.assign(
        _score=pd.to_numeric(predictions["score"], errors="coerce"),
        _nv=~_truthy_column(predictions, "validated_input"),
        _qc=~_truthy_column(predictions, "qc_pass"),
    )
    rows = []
    for (task, name, version), g in table.groupby(["target", "model_name", "model_version"], sort=True, dropna=False):
        q = g["_score"].quantile([0.05, 0.25, 0.5, 0.75, 0.95]).to_numpy()
        labels = g["predicted_label"].value_counts()
        rows.append({
            "model": f"{task}: {name} {'' if pd.isna(version) else version}".strip(),
            "predictions": len(g),
            "participants": int(g["participant_id"].nunique()),
            "predicted labels": ", ".join(f"{k} {v}" for k, v in labels.items()),
            "score 5 / 25 / 50 / 75 / 95%": " / ".join(f"{v:.3f}" for v in q),
            "not validated": int(g["_nv"].sum()),
            "QC failed": int(g["_qc"].sum()),
        })
    return html.table(rows, list(rows[0]) if rows else ["model"])


def write_group_report(
    output_dir: Path,
    *,
    failures: Sequence[FailureRecord] | None = None,
    problems: Sequence[TableProblem] = (),
) -> Path:
    """Write ``output_dir/group_report.html`` from the group files and return its path.

    ``failures`` (default: read from ``output_dir``) and ``problems`` (predictions tables the group
    level could not use) are listed; beyond :data:`MAX_LISTED_ROWS` rows, predictions and failures
    are summarised instead of listed. Raises :class:`~bids_app.errors.NoInputError` when
    ``group_predictions.tsv`` is missing (run the group level first).
    """
    from ..derivatives import read_predictions

    output_dir = Path(output_dir)
    pred_path = output_dir / "group_predictions.tsv"
    if not pred_path.is_file():
        raise NoInputError(f"{pred_path} not found; run the group level first")
    predictions = read_predictions(pred_path)
    listed = predictions.iloc[:MAX_LISTED_ROWS]
    rows = listed.astype(object).where(listed.notna(), None).to_dict(orient="records")

    body = [html.notice(RESEARCH_USE_NOTICE, "danger")]
    synthetic = sorted(set(predictions.loc[_truthy_column(predictions, "model_trained_on_synthetic"), "model_name"].astype(str)))
    if synthetic:
        body.append(html.notice(SYNTHETIC_WARNING + " Models: " + ", ".join(synthetic) + ".", "danger"))
    not_validated = predictions[~_truthy_column(predictions, "validated_input")]
    if len(not_validated):
        reasons = sorted(set(not_validated["warnings"].dropna().astype(str)))
        shown = "; ".join(reasons[:10]) + (f"; and {len(reasons) - 10} other reasons" if len(reasons) > 10 else "")
        body.append(
            html.notice(
                f"{len(not_validated)} of {len(predictions)} predictions: " + NOT_VALIDATED_WARNING + (shown or "not recorded"),
                "warn",
            )
        )

    failures = tuple(collect_failures(output_dir) if failures is None else failures)
    images = predictions[["participant_id", "session_id", "run_id", "source_file"]].drop_duplicates()
    models = predictions[["target", "model_name", "model_version"]].drop_duplicates()
    overview = {
        "participants with predictions": int(predictions["participant_id"].nunique()),
        "T1w images with predictions": len(images),
        "models": ", ".join(f"{t}: {n} {'' if pd.isna(v) else v}".strip() for t, n, v in models.itertuples(index=False)),
        "T1w images that failed": len(failures),
    }
    if problems:
        overview["predictions tables not used"] = len(problems)
    body.append(html.section("Overview", html.key_value_table(overview), anchor="overview"))
    body.append(_evaluation_section(output_dir))

    figs = []
    for name in GROUP_FIGURES.values():
        path = output_dir / name
        if path.is_file():
            figs.append(html.image(path.read_bytes(), name, _FIGURE_CAPTIONS.get(name, "")))
    if figs:
        body.append(html.section("Figures", *figs, anchor="figures"))

    if failures:
        frows = [
            {"participant": f.participant_id, "record": str(f.path.relative_to(output_dir)), "reason": f.reason}
            for f in failures[:MAX_LISTED_ROWS]
        ]
        parts = [html.table(frows, ["participant", "record", "reason"])]
        if len(failures) > MAX_LISTED_ROWS:
            steps = pd.Series([str(f.record.get("step") or "not recorded") for f in failures]).value_counts()
            parts.insert(0, html.notice(
                f"{len(failures)} failed T1w; the first {MAX_LISTED_ROWS} are listed. By step: "
                + ", ".join(f"{k} {v}" for k, v in steps.items()), "warn"))
        body.append(html.section("Failures", *parts, anchor="failures"))
    if problems:
        trows = [{"participant": t.participant_id, "table": str(t.path.relative_to(output_dir)), "problem": t.reason}
                 for t in problems[:MAX_LISTED_ROWS]]
        body.append(html.section(
            "Predictions tables not used",
            html.notice("These tables are not in group_predictions.tsv: rerun the participant level for them.", "warn"),
            html.table(trows, ["participant", "table", "problem"]),
            anchor="problems",
        ))

    prow = []
    for r in rows:
        prefix = Path(str(r.get("source_file") or "")).name.split("_T1w")[0]
        report = output_dir / "reports" / f"{prefix}_report.html"
        link = f'<a href="reports/{html.esc(report.name)}">report</a>' if prefix and report.is_file() else "n/a"
        score = r.get("score")
        prow.append(
            {
                "participant_id": r["participant_id"],
                "session_id": r.get("session_id"),
                "run_id": r.get("run_id"),
                "target": r["target"],
                "model_name": r["model_name"],
                "score": float(score) if score is not None and not math.isnan(float(score)) else None,
                "predicted_label": r.get("predicted_label"),
                "validated_input": r.get("validated_input"),
                "qc_pass": r.get("qc_pass"),
                "report": link,
            }
        )
    if len(predictions) > MAX_LISTED_ROWS:
        body.append(html.section(
            "Predictions",
            html.notice(f"{len(predictions)} predictions: summarised per model; every row is in group_predictions.tsv."),
            _prediction_summary(predictions),
            anchor="predictions",
        ))
    else:
        body.append(
            html.section(
                "Predictions",
                html.table(prow, list(prow[0]) if prow else ["participant_id"], raw=("report",)),
                anchor="predictions",
            )
        )
    document = html.page(
        "vbm-predict group report",
        body,
        footer=f"vbm-predict {html.esc(__version__)}. {html.esc(RESEARCH_USE_NOTICE)}",
    )
    out = output_dir / GROUP_REPORT
    write_text(out, document)
    return out

"""Per-T1w HTML report, built only from the files the participant level wrote into ``output_dir``.

Shows, for one T1w: the research-use notice (and the synthetic-model warning when a model was
trained on synthetic data), the predictions with each model's name, version and sha256, QC
metrics and flags, the preprocessing backend, slices of the GMD and GMV maps with the outline of
the brain mask used to build the model input, and the failure record when the T1w failed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from .. import RESEARCH_USE_NOTICE, __version__
from .._io import safe_join, tsv_bool, write_text
from ..derivatives import PREDICTION_COLUMNS, failure_path, map_path, predictions_path, read_predictions
from ..types import T1wUnit
from . import figures, html

__all__ = ["participant_report_path", "write_participant_report", "SYNTHETIC_WARNING", "NOT_VALIDATED_WARNING"]

logger = logging.getLogger(__name__)

SYNTHETIC_WARNING = (
    "At least one model here was trained on synthetic data only (a demonstration model). Its scores say "
    "nothing about real people: do not interpret them."
)
NOT_VALIDATED_WARNING = (
    "Some predictions were made outside the model's validated conditions (different preprocessing from "
    "the model's training, or failed QC); treat them with extra caution. Reasons: "
)

_PRED_COLUMNS = [
    "target",
    "model_name",
    "model_version",
    "score",
    "predicted_label",
    "threshold",
    "n_folds",
    "fold_scores",
    "fold_score_sd",
    "validated_input",
    "model_trained_on_synthetic",
    "model_sha256",
]


def participant_report_path(output_dir: Path, unit: T1wUnit) -> Path:
    """``output_dir/reports/<entities>_report.html`` (``reports/`` is in ``.bidsignore``)."""
    return safe_join(output_dir, "reports", f"{unit.prefix}_report.html")


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning("%s: unreadable JSON (%s); left out of the report", path, exc)
        return None
    return data if isinstance(data, dict) else {"value": data}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = "; ".join(str(x) for x in v)
        else:
            out[key] = v
    return out


def _maps_section(output_dir: Path, unit: T1wUnit) -> tuple[str, dict[str, dict[str, Any]]]:
    import nibabel as nib

    from ..grid import brain_mask

    loaded = []
    sidecars: dict[str, dict[str, Any]] = {}
    for kind in ("GMD", "GMV"):
        path = map_path(output_dir, unit, kind)
        if not path.is_file():
            continue
        try:
            img = nib.load(path)
            loaded.append((kind, img.get_fdata(dtype="float32"), img.affine))
        except Exception as exc:  # any unreadable map is reported, not fatal to the report
            logger.warning("%s: cannot be read (%s); left out of the report", path, exc)
            continue
        side = _read_json(path.with_name(path.name.replace(".nii.gz", ".json")))
        if side is not None:
            sidecars[kind] = side
    if not loaded:
        return html.notice("No grey-matter maps were found for this T1w.", "warn"), sidecars
    affine = loaded[0][2]
    mask = None
    try:
        m = brain_mask()
        if m.shape == loaded[0][1].shape:
            mask = m
    except Exception as exc:  # the outline is a visual aid; its absence is logged
        logger.warning("brain mask unavailable for the report outline (%s)", exc)
    fig = figures.gm_slices_figure([(k, d) for k, d, _ in loaded], affine, mask, title=unit.prefix)
    caption = (
        "Grey-matter density (GMD, unmodulated) and volume (GMV, modulated) on the SPM 1.5 mm MNI grid, "
        "neurological convention (left on the left)."
        + (" Red: outline of the brain mask applied to the model input." if mask is not None else "")
    )
    return html.image(figures.figure_png(fig), f"GM maps of {unit.prefix}", caption), sidecars


def write_participant_report(output_dir: Path, unit: T1wUnit) -> Path:
    """Write the self-contained HTML report of one T1w and return its path.

    Reads only ``output_dir``: the unit's predictions TSV, GM maps and their sidecars, and its
    failure record. Works for failed units too (the report then shows why).
    """
    output_dir = Path(output_dir)
    body: list[str] = [html.notice(RESEARCH_USE_NOTICE, "danger")]
    pred_file = predictions_path(output_dir, unit)
    predictions = read_predictions(pred_file) if pred_file.is_file() else pd.DataFrame(columns=list(PREDICTION_COLUMNS))
    rows = predictions.astype(object).where(predictions.notna(), None).to_dict(orient="records")

    if any(tsv_bool(r.get("model_trained_on_synthetic")) for r in rows):
        body.append(html.notice(SYNTHETIC_WARNING, "danger"))
    reasons = sorted({str(r.get("warnings")) for r in rows if not tsv_bool(r.get("validated_input")) and r.get("warnings")})
    if any(not tsv_bool(r.get("validated_input")) for r in rows):
        body.append(html.notice(NOT_VALIDATED_WARNING + ("; ".join(reasons) or "not recorded"), "warn"))

    failure = _read_json(failure_path(output_dir, unit))
    if failure is not None and not rows:
        body.append(html.section("Failure", html.notice("This T1w could not be processed.", "danger"),
                                 html.key_value_table(_flatten(failure)), anchor="failure"))

    first = rows[0] if rows else {}
    overview = {
        "participant": f"sub-{unit.subject}",
        "session": f"ses-{unit.session}" if unit.session else "n/a",
        "run_id": unit.run or "n/a",
        "source file": first.get("source_file") or unit.path.name,
        "preprocessing backend": first.get("preproc_backend"),
        "backend version": first.get("preproc_backend_version"),
    }
    body.append(html.section("Overview", html.key_value_table(overview), anchor="overview"))

    if rows:
        titles = {c: PREDICTION_COLUMNS[c]["Description"] for c in _PRED_COLUMNS}
        table_rows = [dict(r, model_sha256=f"<code>{html.esc(r.get('model_sha256') or 'n/a')}</code>") for r in rows]
        body.append(
            html.section(
                "Predictions",
                html.table(table_rows, _PRED_COLUMNS, titles=titles, raw=("model_sha256",)),
                "<p>Score = mean over folds of the sigmoid output (P(male) for sex, P(AD) for AD); "
                "label = score &ge; threshold.</p>",
                anchor="predictions",
            )
        )
        qc = {
            "QC passed": first.get("qc_pass"),
            "failed checks": first.get("qc_flags") or "none",
            "GMV-template correlation": first.get("qc_gmv_template_correlation"),
        }
    else:
        body.append(html.section("Predictions", html.notice("No predictions file for this T1w.", "warn")))
        qc = {}

    maps_html, sidecars = _maps_section(output_dir, unit)
    for kind, side in sidecars.items():
        for key, value in _flatten(side).items():
            if "qc" in key.lower():
                qc[f"{kind} {key}"] = value
    if qc:
        body.append(html.section("Quality control", html.key_value_table(qc), anchor="qc"))
    body.append(html.section("Grey-matter maps", maps_html, anchor="maps"))
    for kind, side in sidecars.items():
        body.append(html.section(f"{kind} map provenance (sidecar)", html.key_value_table(_flatten(side))))

    document = html.page(
        f"vbm-predict report: {unit.prefix}",
        body,
        footer=f"vbm-predict {html.esc(__version__)}. {html.esc(RESEARCH_USE_NOTICE)}",
    )
    out = participant_report_path(output_dir, unit)
    write_text(out, document)
    return out

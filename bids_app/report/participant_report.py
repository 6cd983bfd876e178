"""Per-T1w HTML report, built only from the files the participant level wrote into ``output_dir``.

Read top to bottom, it answers what a researcher asks of one image, in that order:

1. the research-use notice, and warnings when a model is synthetic or the input is outside its
   validated conditions (or, for a failed T1w, why it failed);
2. the scores: each model's score against its threshold with the spread of the folds;
3. the registration check, as fMRIPrep shows it: template outlines over the image in template space
   (the warped T1w when the backend wrote one, otherwise the subject's GM density map; the caption
   says which);
4. the GM density and volume maps over the template;
5. quality control as one table: metric, value, threshold, verdict and what the metric means;
6. the explanation maps, when they were computed: slices through each map's peak, with a colour bar
   and the atlas regions;
7. a methods paragraph to paste into a paper, and the provenance (sidecars) folded away.

Figures come from :mod:`.figures`, file reading from :mod:`.readers`, the methods text from
:mod:`.methods`; this module only decides what goes where.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import RESEARCH_USE_NOTICE, __version__
from .._io import safe_join, write_text
from ..derivatives import (
    PREDICTION_COLUMNS,
    failure_path,
    map_path,
    predictions_path,
    read_predictions,
)
from ..types import T1wUnit
from . import figures, html, methods, readers

__all__ = [
    "participant_report_path",
    "write_participant_report",
    "qc_rows",
    "QC_MEANINGS",
    "SYNTHETIC_WARNING",
    "NOT_VALIDATED_WARNING",
]

logger = logging.getLogger(__name__)

SYNTHETIC_WARNING = (
    "At least one model here was trained on synthetic data only (a demonstration model). Its scores say "
    "nothing about real people: do not interpret them."
)
NOT_VALIDATED_WARNING = (
    "Some predictions were made outside the model's validated conditions (different preprocessing from "
    "the model's training, or failed QC); treat them with extra caution. Reasons: "
)

#: what each QC metric tells the reader (metrics not listed are backend checks shown as they are)
QC_MEANINGS: dict[str, str] = {
    "gmv_template_correlation": (
        "Spatial correlation of the GM volume map with a reference mean GMV map; the reference system's check. "
        "Low values: failed segmentation or registration, or unusual anatomy."
    ),
    "gm_template_dice": (
        "Overlap (Dice) of GM density > 0.5 with the template's GM > 0.5; a shifted or flipped map loses it."
    ),
    "gm_inside_brain_fraction": (
        "Share of the GM density inside the template brain mask; GM outside means a failed warp."
    ),
    "total_gmv_ml": "Total GM volume in ml; outside the adult range means a failed segmentation or a non-head input.",
    "registration_t1_correlation": "Correlation of the warped T1w with the template T1; low means the warp failed.",
    "mtl_t1_correlation": (
        "The same inside the medial temporal lobe, where the AD models look; low means the warp did not follow "
        "the local anatomy there."
    ),
    "mtl_gm_dice": (
        "Overlap (Dice) of GM density > 0.5 with the template's GM inside the medial temporal lobe; lowered both by "
        "a poor local warp and by the atrophy the AD models look for, so reported only."
    ),
    "modulation_volume_ratio": "Total GMV over native GM volume: the Jacobian bookkeeping of modulation (ideal 1).",
    "jacobian_min": "Smallest Jacobian determinant of the warp; zero or below means the warp folded.",
    "brain_mask_dice": "Overlap of the subject's brain mask with the template's after registration.",
}

_METHODS_NOTE = '<p class="muted">Generated from this run\'s parameters; paste it into a paper with its references.</p>'
_TASK_NAMES = {"ad": "Alzheimer's disease", "sex": "sex"}

#: the slices of the GM maps go through the left hippocampus (MNI mm), where AD atrophy shows
_GM_CUT_MM = (-26.0, -20.0, -14.0)


def participant_report_path(output_dir: Path, unit: T1wUnit) -> Path:
    """``output_dir/reports/<entities>_report.html`` (``reports/`` is in ``.bidsignore``)."""
    return safe_join(output_dir, "reports", f"{unit.prefix}_report.html")


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() == "true"


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = "; ".join(str(x) for x in v)
        else:
            out[key] = v
    return out


def _threshold_text(name: str, thresholds: Mapping[str, Any]) -> str | None:
    """The pass rule of a QC metric as text (None when the metric has none)."""
    from ..qc import THRESHOLDS

    lo, hi = thresholds.get(f"{name}_min"), thresholds.get(f"{name}_max")
    if lo is not None and hi is not None:
        return f"{html.fmt(float(lo), 2)} to {html.fmt(float(hi), 2)}"
    if name in THRESHOLDS:
        op, bound = THRESHOLDS[name]
        value = thresholds.get(name, bound)
        return f"{'≥' if op == '>=' else '>'} {html.fmt(float(value))}"
    if name in thresholds:
        return f"≥ {html.fmt(float(thresholds[name]))}"
    return None


def qc_rows(qc: Mapping[str, Any] | None, prediction: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per QC metric: metric, value, threshold, verdict (True/False/None) and meaning.

    ``qc`` is the ``QC`` block of a map sidecar (``Metrics``, ``Flags``, ``Thresholds``); without
    it the row of a predictions table (``qc_pass``, ``qc_flags``, ``qc_gmv_template_correlation``)
    gives what it can.
    """
    if qc and isinstance(qc.get("Metrics"), Mapping):
        metrics = dict(qc["Metrics"])
        flags = set(qc.get("Flags") or [])
        thresholds = dict(qc.get("Thresholds") or {})
    elif prediction:
        corr = prediction.get("qc_gmv_template_correlation")
        metrics = {"gmv_template_correlation": corr} if corr is not None else {}
        flags = {f for f in str(prediction.get("qc_flags") or "").split(";") if f}
        from ..qc import GMV_CORRELATION_THRESHOLD

        thresholds = {"gmv_template_correlation": GMV_CORRELATION_THRESHOLD}
    else:
        return []
    known = list(QC_MEANINGS)
    order = sorted(metrics, key=lambda m: (known.index(m) if m in known else len(known), m))
    rows = []
    for name in order:
        rule = _threshold_text(name, thresholds)
        verdict: bool | None = False if name in flags else (True if rule is not None else None)
        rows.append(
            {
                "metric": name,
                "value": metrics[name],
                "threshold": rule or "reported only",
                "verdict": verdict,
                "meaning": QC_MEANINGS.get(name, "Check reported by the preprocessing backend."),
            }
        )
    for name in sorted(flags - set(metrics)):
        rows.append(
            {"metric": name, "value": None, "threshold": "n/a", "verdict": False, "meaning": QC_MEANINGS.get(name, "")}
        )
    return rows


def _warnings(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    if any(_truthy(r.get("model_trained_on_synthetic")) for r in rows):
        out.append(html.notice(SYNTHETIC_WARNING, "danger"))
    not_validated = [r for r in rows if not _truthy(r.get("validated_input"))]
    if not_validated:
        reasons = sorted({str(r.get("warnings")) for r in not_validated if r.get("warnings")})
        out.append(html.notice(NOT_VALIDATED_WARNING + ("; ".join(reasons) or "not recorded"), "warn"))
    return out


def _fold_scores(row: Mapping[str, Any]) -> list[float]:
    out = []
    for part in str(row.get("fold_scores") or "").split(";"):
        try:
            out.append(float(part))
        except ValueError:
            continue
    return out


def _scores_section(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return html.section("Scores", html.notice("No predictions file for this T1w.", "warn"), anchor="scores")
    table = []
    fig_rows = []
    for r in rows:
        folds = _fold_scores(r)
        score = float(r["score"]) if r.get("score") is not None else float("nan")
        threshold = float(r["threshold"]) if r.get("threshold") is not None else 0.5
        sha = [s for s in str(r.get("model_sha256") or "").split(";") if s]
        if len(folds) > 1:
            spread = f"SD {np.std(folds):.3f}; {min(folds):.3f} to {max(folds):.3f} ({len(folds)} folds)"
        else:
            spread = "single model"
        version = r.get("model_version")
        name = f"{r.get('model_name')} {version}" if version else str(r.get("model_name"))
        table.append(
            {
                "model": html.esc(name),
                "predicts": html.esc(_TASK_NAMES.get(str(r.get("target")), r.get("target"))),
                "score": score,
                "threshold": threshold,
                "label": r.get("predicted_label"),
                "fold spread": spread,
                "validated input": html.badge(_truthy(r.get("validated_input"))),
                "weights sha256": "".join(f'<code title="{html.esc(s)}">{html.esc(s[:12])}</code> ' for s in sha)
                or "n/a",
            }
        )
        if np.isfinite(score):
            fig_rows.append((f"{r.get('target')}: {r.get('model_name')}", score, threshold, folds))
    columns = ["model", "predicts", "score", "threshold", "label", "fold spread", "validated input", "weights sha256"]
    titles = {
        "score": PREDICTION_COLUMNS["score"]["Description"],
        "threshold": PREDICTION_COLUMNS["threshold"]["Description"],
        "fold spread": PREDICTION_COLUMNS["fold_score_sd"]["Description"],
        "validated input": PREDICTION_COLUMNS["validated_input"]["Description"],
        "weights sha256": (
            "First 12 hex digits of each fold's weights checksum (hover for all; full values under Provenance)."
        ),
    }
    parts = [html.table(table, columns, titles=titles, raw=("model", "predicts", "validated input", "weights sha256"))]
    if fig_rows:
        parts.append(
            html.image(
                figures.figure_png(figures.scores_figure(fig_rows)),
                "scores against thresholds",
                "Each model's score (diamond; red at or above the threshold, blue below), its decision threshold "
                "(black bar) and the scores of its folds (grey dots): how far the score is from the threshold and "
                "how much the folds agree.",
            )
        )
    parts.append(
        "<p class=\"muted\">Score = mean over folds of the sigmoid output (P(male) for sex, P(AD) for AD); "
        "label = score &ge; threshold.</p>"
    )
    return html.section("Scores", *parts, anchor="scores")


def _registration_section(output_dir: Path, unit: T1wUnit, gmd: np.ndarray | None) -> str:
    from ..grid import SPM_AFFINE, brain_mask, template_gm

    unit_dir = output_dir / unit.subdir
    warped = readers.load_volume(readers.warped_t1w_path(unit_dir, unit.prefix))
    if warped is not None:
        background, what = warped, "the T1w warped to the template (MNI152, IXI549Space grid)"
    elif gmd is not None:
        background, what = gmd, (
            "the subject's GM density map in template space (this backend wrote no warped T1w)"
        )
    else:
        return html.section("Registration check", html.notice("No image in template space to check.", "warn"),
                            anchor="registration")
    outlines = [
        ("template brain mask", brain_mask(), "#ff3b30"),
        ("template GM (p > 0.5)", template_gm() > 0.5, "#00e5ff"),
    ]
    fig = figures.registration_figure(background, outlines, SPM_AFFINE)
    caption = (
        f"Outlines of the MNI152 template's brain mask (red) and grey matter (cyan) over {what}, in evenly "
        "spaced sagittal, coronal and axial cuts (neurological convention: left on the left). After a good "
        "registration the red outline follows the brain's edge and the cyan one the cortical ribbon and the "
        "deep GM in every cut."
    )
    source = "warped T1w" if warped is not None else "GM density map"
    return html.section(
        "Registration check",
        f"<p>Shown over: <strong>{html.esc(source)}</strong>.</p>",
        html.image(figures.figure_png(fig), f"registration check over the {source}", caption),
        anchor="registration",
    )


def _gm_section(maps: Sequence[tuple[str, np.ndarray]]) -> str:
    from ..grid import SPM_AFFINE

    if not maps:
        return html.section("Grey-matter maps", html.notice("No grey-matter maps were found for this T1w.", "warn"),
                            anchor="maps")
    voxel = np.linalg.solve(SPM_AFFINE, np.array([*_GM_CUT_MM, 1.0]))[:3].round().astype(int)
    cut = tuple(int(v) for v in voxel)
    fig = figures.gm_slices_figure(maps, SPM_AFFINE, readers.template_t1(), cut=cut)  # type: ignore[arg-type]
    caption = (
        "Grey-matter density (GMD, unmodulated, 0-1) and volume (GMV, modulated by the Jacobian) over the MNI152 "
        "template on the SPM 1.5 mm grid, cut through the left hippocampus (MNI -26, -20, -14 mm); values below "
        "0.1 transparent; neurological convention."
    )
    return html.section("Grey-matter maps", html.image(figures.figure_png(fig), "GM maps over the template", caption),
                        anchor="maps")


def _qc_section(qc: Mapping[str, Any] | None, first: Mapping[str, Any] | None) -> str:
    rows = qc_rows(qc, first)
    if not rows:
        return html.section("Quality control", html.notice("No QC record for this T1w.", "warn"), anchor="qc")
    passed = all(r["verdict"] is not False for r in rows)
    table = [dict(r, metric=f"<code>{html.esc(r['metric'])}</code>", verdict=html.badge(r["verdict"])) for r in rows]
    summary = (
        html.notice("Every QC check passed.", "info")
        if passed
        else html.notice(
            "QC failed: " + ", ".join(r["metric"] for r in rows if r["verdict"] is False)
            + ". Predictions from this image are marked as outside the models' validated conditions.",
            "warn",
        )
    )
    return html.section(
        "Quality control",
        summary,
        html.table(table, ["metric", "value", "threshold", "verdict", "meaning"], raw=("metric", "verdict")),
        anchor="qc",
    )


def _explanations_section(output_dir: Path, unit: T1wUnit) -> tuple[str, list[dict[str, Any]]]:
    from ..grid import SPM_AFFINE

    found = readers.find_explanations(output_dir / unit.subdir, unit.prefix)
    parts = []
    sidecars = []
    for item in found:
        data = readers.read_explanation(item)
        if data is None:
            continue
        sidecars.append(dict(item.sidecar, _file=item.path.name))
        finite = data[np.isfinite(data)]
        symmetric = bool(finite.size and finite.min() < -0.05 * max(abs(float(finite.max())), 1e-12))
        label = str(item.sidecar.get("Units") or item.sidecar.get("Description") or "importance")[:60]
        peak = figures.peak_voxel(data)
        mm = (SPM_AFFINE @ np.array([*peak, 1.0]))[:3]
        overlay = figures.Overlay(item.title, data, label=label, symmetric=symmetric, relative_threshold=0.1,
                                  cmap="plasma")
        fig = figures.overlay_figure([overlay], readers.template_t1(), SPM_AFFINE)
        params = item.sidecar.get("Parameters") or {}
        ptxt = ", ".join(f"{k} {v}" for k, v in params.items() if not isinstance(v, (dict, list)))
        caption = (
            f"{item.title}: orthogonal slices through the map's peak (MNI {mm[0]:.0f}, {mm[1]:.0f}, {mm[2]:.0f} mm) "
            "over the MNI152 template; values within 10% of the colour scale's maximum of 0 are transparent"
            + (f"; parameters: {ptxt}" if ptxt else "") + "."
        )
        parts.append(f"<h3>{html.esc(item.title)}</h3>")
        parts.append(html.image(figures.figure_png(fig), f"explanation map {item.desc}", caption))
        regions = readers.read_regions(item)
        if regions:
            cols = list(regions[0])
            parts.append(html.table(regions, cols))
        elif item.regions_path.is_file():
            parts.append(html.notice("The atlas summary of this map could not be read.", "warn"))
    if not parts:
        return "", sidecars
    intro = (
        "<p>Where in the brain the score came from. Occlusion: the change of the score when a cube of the input is "
        "blanked out; Grad-CAM: gradient-weighted activations of an inner layer. Both show what the network used, "
        "not where disease is.</p>"
    )
    return html.section("Explanation maps", intro, *parts, anchor="explanations"), sidecars


def _failure_section(failure: Mapping[str, Any], output_dir: Path, unit: T1wUnit) -> str:
    from ..derivatives import log_path

    record = _flatten(failure)
    log = log_path(output_dir, unit)
    if log.is_file() and "log" not in record:
        record["log"] = str(log.relative_to(output_dir))
    return html.section(
        "Failure",
        html.notice("This T1w could not be processed: no maps or predictions were written for it.", "danger"),
        html.key_value_table(record),
        anchor="failure",
    )


def write_participant_report(output_dir: Path, unit: T1wUnit) -> Path:
    """Write the self-contained HTML report of one T1w and return its path.

    Reads only ``output_dir``: the unit's predictions TSV, GM maps and their sidecars, its
    explanation maps, the warped T1w when present, and its failure record. Works for failed units
    too (the report then shows why).
    """
    output_dir = Path(output_dir)
    pred_file = predictions_path(output_dir, unit)
    predictions = read_predictions(pred_file) if pred_file.is_file() else pd.DataFrame(columns=list(PREDICTION_COLUMNS))
    rows = predictions.astype(object).where(predictions.notna(), None).to_dict(orient="records")
    first = rows[0] if rows else {}

    maps: list[tuple[str, np.ndarray]] = []
    sidecars: dict[str, dict[str, Any]] = {}
    for kind in ("GMD", "GMV"):
        path = map_path(output_dir, unit, kind)
        data = readers.load_volume(path)
        if data is None:
            continue
        maps.append((kind, data))
        side = readers.read_json(path.with_name(path.name.replace(".nii.gz", ".json")))
        if side is not None:
            sidecars[kind] = side
    main_side = sidecars.get("GMV") or sidecars.get("GMD") or {}
    qc = main_side.get("QC") if isinstance(main_side.get("QC"), Mapping) else None

    body: list[str] = [html.notice(RESEARCH_USE_NOTICE, "danger"), *_warnings(rows)]
    failure = readers.read_json(failure_path(output_dir, unit))
    if failure is not None and not rows:
        body.append(_failure_section(failure, output_dir, unit))

    backend = first.get("preproc_backend") or main_side.get("PreprocBackend")
    backend_version = first.get("preproc_backend_version") or main_side.get("PreprocBackendVersion")
    overview = {
        "participant": f"sub-{unit.subject}",
        "session": f"ses-{unit.session}" if unit.session else "n/a",
        "run": unit.run or "n/a",
        "source file": first.get("source_file") or unit.path.name,
        "preprocessing": f"{backend} ({backend_version})" if backend and backend_version else (backend or "n/a"),
    }
    body.append(html.key_value_table(overview))
    failed_only = failure is not None and not rows and not maps
    explain_html, explain_sides = ("", []) if failed_only else _explanations_section(output_dir, unit)
    anchors = [("failure", "Failure")] if failure is not None and not rows else []
    if not failed_only:  # a T1w that failed before any output has nothing more to show
        body.append(_scores_section(rows))
        body.append(_registration_section(output_dir, unit, dict(maps).get("GMD")))
        body.append(_gm_section(maps))
        body.append(_qc_section(qc, first))
        if explain_html:
            body.append(explain_html)
        paragraphs, references = methods.participant_methods(
            backend=backend,
            backend_version=backend_version,
            provenance=main_side.get("Provenance") if isinstance(main_side.get("Provenance"), Mapping) else {},
            qc=qc,
            models=rows,
            explanations=explain_sides,
        )
        body.append(
            html.section(
                "Methods",
                _METHODS_NOTE,
                html.methods_block(paragraphs, references),
                anchor="methods",
            )
        )
        anchors += [("scores", "Scores"), ("registration", "Registration"), ("maps", "GM maps"), ("qc", "QC")]
        if explain_html:
            anchors.append(("explanations", "Explanations"))
        anchors.append(("methods", "Methods"))

    provenance = []
    for kind, side in sidecars.items():
        provenance.append(html.details(f"{kind} map sidecar", html.pre(json.dumps(side, indent=2, default=str))))
    if rows:
        shas = {
            f"{r.get('target')}: {r.get('model_name')} {r.get('model_version') or ''}".strip(): r.get("model_sha256")
            for r in rows
        }
        provenance.append(html.details("Model weights sha256", html.key_value_table(shas)))
    for side in explain_sides:
        provenance.append(html.details(f"{side['_file']} sidecar",
                                       html.pre(json.dumps({k: v for k, v in side.items() if k != "_file"}, indent=2,
                                                           default=str))))
    if failure is not None and rows:
        provenance.append(html.details("Earlier failure record (stale: a later run succeeded)",
                                       html.pre(json.dumps(failure, indent=2, default=str))))
    provenance.append(f"<p class=\"muted\">Report made by vbm-predict {html.esc(__version__)} from the files in the "
                      "output directory; it reads nothing else.</p>")
    body.append(html.section("Provenance", html.details("Sidecars and checksums", *provenance), anchor="provenance"))

    anchors.append(("provenance", "Provenance"))
    body.insert(0, html.nav(anchors))
    document = html.page(
        f"vbm-predict report: {unit.prefix}",
        body,
        footer=f"vbm-predict {html.esc(__version__)}. {html.esc(RESEARCH_USE_NOTICE)}",
    )
    out = participant_report_path(output_dir, unit)
    write_text(out, document)
    return out

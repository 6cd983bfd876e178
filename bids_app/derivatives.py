"""BIDS-Derivatives output: names, sidecars, ``dataset_description.json``, ``.bidsignore``.

The output directory is a BIDS-Derivatives dataset (BIDS 1.10, "derivative" dataset type) that the
official validator accepts and pybids indexes. Standard files (GM maps) follow the BIDS entity
order ``sub-X[_ses-Y][_acq-..][_ce-..][_rec-..][_run-..]_space-IXI549Space_label-GM[_desc-..]_probseg``;
app-specific files (predictions, logs, failure records, group tables, reports) are listed in
``.bidsignore``. Every file is written atomically (:mod:`bids_app._io`).

The columns of the predictions tables are described once, in :data:`PREDICTION_COLUMNS`; the TSV
sidecars are generated from it, so table and description cannot drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np
import pandas as pd

from . import RESEARCH_USE_NOTICE, __version__
from ._io import atomic_path, safe_join, write_json, write_text
from .errors import OutputError
from .grid import SPM_AFFINE, SPM_SHAPE
from .types import T1wUnit

__all__ = [
    "SPACE",
    "BIDS_VERSION",
    "CODE_URL",
    "PREDICTION_COLUMNS",
    "BIDSIGNORE",
    "map_path",
    "predictions_path",
    "failure_path",
    "log_path",
    "init_dataset",
    "write_map",
    "write_table",
    "write_predictions",
    "read_predictions",
    "column_sidecar",
]

SPACE = "IXI549Space"
BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/vbm-predict/vbm-predict"

#: app-specific outputs the BIDS validator must not judge
BIDSIGNORE = [
    "*_predictions.tsv",
    "*_predictions.json",
    "*_failure.json",
    "*.log",
    "group_*",
    "reports",  # no trailing slash: bids-validator-deno (2.x) flags the directory itself for "reports/"
    "logs/",
    "*.html",
]

#: Every column of ``*_predictions.tsv`` and ``group_predictions.tsv``: name -> description
#: (and units / levels). One row per (T1w, model).
PREDICTION_COLUMNS: dict[str, dict[str, Any]] = {
    "participant_id": {"Description": "Participant label with its sub- prefix."},
    "session_id": {"Description": "Session label with its ses- prefix; n/a without sessions."},
    "run_id": {"Description": "Run index of the T1w (run- entity); n/a when the name has none."},
    "source_file": {"Description": "The T1w file, relative to the input BIDS dataset."},
    "target": {
        "Description": "What the model predicts.",
        "Levels": {"sex": "biological sex (score = P(male))", "ad": "Alzheimer's disease (score = P(AD))"},
    },
    "model_name": {"Description": "Name of the model package (model.json 'name')."},
    "model_version": {"Description": "Version of the model package."},
    "model_sha256": {"Description": "sha256 of the model's weights, one per fold joined by ';' in fold order."},
    "model_trained_on_synthetic": {
        "Description": "True when the model was trained on synthetic data only (demo models): not for any real use."
    },
    "score": {"Description": "Mean over folds of the sigmoid output (0..1).", "Units": "probability"},
    "predicted_label": {
        "Description": "Predicted class: score >= threshold.",
        "Levels": {"male": "sex model", "female": "sex model", "AD": "AD model", "CN": "AD model"},
    },
    "threshold": {"Description": "Decision threshold applied to score (--ad-threshold for AD)."},
    "n_folds": {"Description": "Number of fold models averaged."},
    "fold_scores": {"Description": "Per-fold sigmoid outputs joined by ';' in fold order."},
    "fold_score_sd": {"Description": "Standard deviation of the per-fold scores (ensemble spread)."},
    "qc_pass": {"Description": "True when every quality-control check passed."},
    "qc_flags": {"Description": "Names of failed QC checks joined by ';'; n/a when none failed."},
    "qc_gmv_template_correlation": {
        "Description": "Spatial Pearson correlation of the GMV map with the reference mean GMV template."
    },
    "preproc_backend": {
        "Description": "Preprocessing backend that made the GM maps.",
        "Levels": {
            "clinica": "Clinica t1-volume with SPM (closest to the reference system's SPM/DPARSF maps)",
            "ants": "SPM-free ANTs/nilearn chain",
            "derivatives": "maps reused from an existing derivatives directory",
        },
    },
    "preproc_backend_version": {"Description": "Versions of the preprocessing tools."},
    "validated_input": {
        "Description": (
            "True when the input matches what the model was validated on: the model's training "
            "preprocessing and a passed QC. False means the prediction was made outside the model's "
            "validated conditions; see 'warnings'."
        )
    },
    "warnings": {"Description": "Reasons the prediction may not be valid, joined by ';'; n/a when none."},
    "notice": {"Description": "Research-use-only notice."},
}


#: columns of the predictions tables that hold text (kept as strings when read back)
_TEXT_PREDICTION_COLUMNS = (
    "participant_id", "session_id", "run_id", "source_file", "target", "model_name", "model_version",
    "model_sha256", "predicted_label", "fold_scores", "qc_flags", "preproc_backend", "preproc_backend_version",
    "warnings", "notice",
)


def _entities_prefix(unit: T1wUnit) -> str:
    return unit.prefix


def _unit_dir(output_dir: Path, unit: T1wUnit) -> Path:
    return safe_join(output_dir, unit.subdir)


def map_path(output_dir: Path, unit: T1wUnit, kind: str) -> Path:
    """Path of a GM map: ``kind`` is ``GMD`` (unmodulated) or ``GMV`` (modulated)."""
    desc = {"GMD": "", "GMV": "_desc-modulated"}[kind]
    name = f"{_entities_prefix(unit)}_space-{SPACE}_label-GM{desc}_probseg.nii.gz"
    return _unit_dir(output_dir, unit) / name


def predictions_path(output_dir: Path, unit: T1wUnit) -> Path:
    return _unit_dir(output_dir, unit) / f"{_entities_prefix(unit)}_predictions.tsv"


def failure_path(output_dir: Path, unit: T1wUnit) -> Path:
    return _unit_dir(output_dir, unit) / f"{_entities_prefix(unit)}_failure.json"


def log_path(output_dir: Path, unit: T1wUnit) -> Path:
    return safe_join(output_dir, "logs", f"{_entities_prefix(unit)}.log")


def init_dataset(
    output_dir: Path,
    bids_dir: Path,
    *,
    container: Mapping[str, str] | None = None,
) -> None:
    """Create ``output_dir`` as a derivative dataset (idempotent, safe for concurrent jobs).

    ``dataset_description.json`` and ``.bidsignore`` are written only when absent or different,
    always atomically, so parallel participant jobs starting together all see complete files.
    """
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output directory {output_dir}: {exc.strerror}") from exc
    generated_by: dict[str, Any] = {
        "Name": "vbm-predict",
        "Version": __version__,
        "CodeURL": CODE_URL,
        "Description": "VBM grey-matter maps and sex / Alzheimer's disease predictions. " + RESEARCH_USE_NOTICE,
    }
    if container:
        generated_by["Container"] = dict(container)
    description = {
        "Name": "vbm-predict outputs",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [{"URL": Path(bids_dir).resolve().as_uri()}],
    }
    _write_if_changed(output_dir / "dataset_description.json", json.dumps(description, indent=2) + "\n")
    _write_if_changed(output_dir / ".bidsignore", "\n".join(BIDSIGNORE) + "\n")
    (output_dir / "logs").mkdir(exist_ok=True)  # here, once, not by the first of many jobs to log


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    write_text(path, text)


def write_map(path: Path, data: np.ndarray, sidecar: Mapping[str, Any]) -> Path:
    """Write a float32 map on the SPM grid plus its JSON sidecar, both atomically."""
    if data.shape != SPM_SHAPE:
        raise ValueError(f"maps must be on the SPM grid {SPM_SHAPE}; got {data.shape}")
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), SPM_AFFINE)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(SPM_AFFINE, code=4)  # 4 = MNI
    img.header.set_sform(SPM_AFFINE, code=4)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)
    write_json(path.with_name(path.name.replace(".nii.gz", ".json")), dict(sidecar))
    return path


def column_sidecar(columns: Sequence[str], spec: Mapping[str, Mapping[str, Any]] = PREDICTION_COLUMNS) -> dict:
    """JSON sidecar for a TSV with ``columns``, taken from ``spec`` (unknown columns refused)."""
    missing = [c for c in columns if c not in spec]
    if missing:
        raise KeyError(f"columns without a description: {missing}")
    return {c: dict(spec[c]) for c in columns}


def write_table(path: Path, table: pd.DataFrame, spec: Mapping[str, Mapping[str, Any]] = PREDICTION_COLUMNS) -> Path:
    """Write a TSV (``n/a`` for missing values) and its column-describing JSON sidecar."""
    sidecar = column_sidecar(list(table.columns), spec)
    with atomic_path(path, suffix=".tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    write_json(path.with_suffix(".json"), sidecar)
    return path


def write_predictions(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write one T1w's prediction rows with the columns of :data:`PREDICTION_COLUMNS`, in order."""
    table = pd.DataFrame(list(rows))
    unknown = set(table.columns) - set(PREDICTION_COLUMNS)
    if unknown:
        raise KeyError(f"prediction rows carry undocumented columns: {sorted(unknown)}")
    table = table.reindex(columns=list(PREDICTION_COLUMNS))
    return write_table(path, table)


def read_predictions(path: Path) -> pd.DataFrame:
    """Read a predictions TSV written by :func:`write_predictions` (``n/a`` -> NaN)."""
    # Text columns stay text: without this, a model_version "1.10" would come back as the float 1.1.
    text = {c: "string" for c in _TEXT_PREDICTION_COLUMNS}
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype=text)

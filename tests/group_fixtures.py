"""Builders for group / report tests: a real input BIDS dataset and a real output dataset.

Every file is written with the app's own writers (:func:`bids_app.derivatives.write_predictions`,
:func:`~bids_app.derivatives.write_map`, :func:`~bids_app.derivatives.init_dataset`), so the tests
read exactly what the participant level writes. The input datasets come from
:func:`tests.conftest.make_bids`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from bids_app import RESEARCH_USE_NOTICE
from bids_app.derivatives import (
    PREDICTION_COLUMNS,
    init_dataset,
    map_path,
    predictions_path,
    write_map,
    write_predictions,
)
from bids_app.types import T1wUnit

__all__ = [
    "make_unit",
    "prediction_row",
    "multiclass_row",
    "regression_row",
    "LEGACY_COLUMNS",
    "write_legacy_unit",
    "write_unit",
    "write_maps",
    "init_output",
]


def make_unit(bids_dir: Path, sub: str, ses: str | None = None, run: str | None = None) -> T1wUnit:
    entities = {"sub": sub}
    if ses:
        entities["ses"] = ses
    if run:
        entities["run"] = run
    unit = T1wUnit(path=Path(), entities=entities)
    return T1wUnit(path=bids_dir / unit.subdir / f"{unit.prefix}_T1w.nii.gz", entities=entities)


def prediction_row(
    unit: T1wUnit,
    bids_dir: Path,
    task: str,
    score: float,
    *,
    model_name: str | None = None,
    model_version: str = "1.10",
    threshold: float = 0.5,
    validated: bool = True,
    synthetic: bool = False,
    qc_pass: bool = True,
) -> dict[str, Any]:
    folds = [score] if task == "sex" else [score - 0.02, score + 0.02, score, score - 0.01, score + 0.01]
    folds = [min(1.0, max(0.0, f)) for f in folds]
    label = {"sex": ("male", "female"), "ad": ("AD", "CN")}[task][0 if score >= threshold else 1]
    row = {
        "participant_id": f"sub-{unit.subject}",
        "session_id": f"ses-{unit.session}" if unit.session else None,
        "run_id": unit.run,
        "source_file": str(unit.path.relative_to(bids_dir)),
        "target": task,
        "head": task,
        "head_kind": "binary",
        "model_name": model_name or f"test-{task}",
        "model_family": "brainimagenet",
        "model_version": model_version,
        "model_sha256": "ab" * 32 if task == "sex" else ";".join(["cd" * 32] * 5),
        "model_trained_on_synthetic": synthetic,
        "score": score,
        "predicted_label": label,
        "probabilities": None,
        "predicted_value": None,
        "value_unit": None,
        "threshold": threshold,
        "n_folds": len(folds),
        "fold_scores": ";".join(f"{f:.4f}" for f in folds),
        "fold_score_sd": float(np.std(folds)),
        "qc_pass": qc_pass,
        "qc_flags": None if qc_pass else "gmv_template_correlation",
        "qc_gmv_template_correlation": 0.82 if qc_pass else 0.41,
        "preproc_backend": "clinica" if validated else "ants",
        "preproc_backend_version": "clinica 0.12.0; SPM25 25.01.02" if validated else "antspyx 0.5",
        "inference_engine": "torch-fused 2.13.0+cpu fp32",
        "model_input_mask": "derived",
        "validated_input": validated,
        "warnings": None if validated else "preprocessing differs from the model's training (ants)",
        "notice": RESEARCH_USE_NOTICE,
    }
    assert set(row) == set(PREDICTION_COLUMNS)
    return row


def multiclass_row(
    unit: T1wUnit,
    bids_dir: Path,
    probabilities: dict[str, float],
    *,
    head: str = "diagnosis",
    model_name: str = "test-liu-mox",
    validated: bool = True,
) -> dict[str, Any]:
    """A multi-class head's row as the contract of issue 15 has it (one fold per class shift)."""
    row = prediction_row(unit, bids_dir, "ad", 0.5, model_name=model_name, validated=validated)
    best = max(probabilities, key=lambda c: probabilities[c])
    folds = [probabilities[best] + d for d in (-0.01, 0.0, 0.01)]
    row.update({
        "target": head, "head": head, "head_kind": "multiclass", "model_family": "liu_mox",
        "score": probabilities[best], "predicted_label": best,
        "probabilities": ";".join(f"{c}={p:.6f}" for c, p in probabilities.items()),
        "threshold": None, "n_folds": len(folds), "fold_scores": ";".join(f"{f:.6f}" for f in folds),
        "fold_score_sd": float(np.std(folds)), "model_sha256": ";".join(["ef" * 32] * len(folds)),
    })
    return row


def regression_row(
    unit: T1wUnit,
    bids_dir: Path,
    value: float,
    *,
    head: str = "age",
    value_unit: str = "years",
    model_name: str = "test-sfcn",
    validated: bool = True,
) -> dict[str, Any]:
    """A regression head's row as the contract of issue 15 has it: score, label and threshold n/a."""
    row = prediction_row(unit, bids_dir, "sex", 0.5, model_name=model_name, validated=validated)
    folds = [value - 1.0, value, value + 1.0]
    row.update({
        "target": head, "head": head, "head_kind": "regression", "model_family": "sfcn",
        "score": None, "predicted_label": None, "threshold": None,
        "predicted_value": value, "value_unit": value_unit,
        "n_folds": len(folds), "fold_scores": ";".join(f"{f:.4f}" for f in folds),
        "fold_score_sd": float(np.std(folds)),
    })
    return row


#: the columns of the predictions tables before issue 15 (no heads): old outputs must still be read
LEGACY_COLUMNS = [c for c in PREDICTION_COLUMNS if c not in {
    "head", "head_kind", "model_family", "probabilities", "predicted_value", "value_unit"}]


def write_legacy_unit(out_dir: Path, unit: T1wUnit, rows: Iterable[dict[str, Any]]) -> Path:
    """A predictions table with the pre-heads header (written as the app wrote it then: TSV, n/a)."""
    path = predictions_path(out_dir, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(list(rows)).reindex(columns=LEGACY_COLUMNS).to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


def write_unit(out_dir: Path, unit: T1wUnit, rows: Iterable[dict[str, Any]]) -> Path:
    return write_predictions(predictions_path(out_dir, unit), list(rows))


def write_maps(out_dir: Path, unit: T1wUnit, seed: int = 0) -> tuple[Path, Path]:
    """GMD and GMV maps: the nilearn MNI152 GM template on the SPM grid, with mild noise."""
    from bids_app.grid import template_gm

    rng = np.random.default_rng(seed)
    gmd = np.clip(template_gm() + rng.normal(0, 0.02, template_gm().shape), 0, 1).astype(np.float32)
    gmv = (gmd * 1.1).astype(np.float32)
    side = {
        "SkullStripped": False,
        "Sources": [f"bids:raw:{unit.path.name}"],
        "Type": "Brain",
        "Space": "IXI549Space",
    }
    a = write_map(map_path(out_dir, unit, "GMD"), gmd, dict(side, Description="GM density (unmodulated)"))
    b = write_map(map_path(out_dir, unit, "GMV"), gmv, dict(side, Description="GM volume (modulated)"))
    return a, b


def init_output(out_dir: Path, bids_dir: Path) -> Path:
    init_dataset(out_dir, bids_dir)
    return out_dir

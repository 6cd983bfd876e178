"""One T1w through the stages: preprocessing -> QC -> model input -> models -> derivatives.

:func:`process_unit` is the whole participant-level work for one :class:`~bids_app.types.T1wUnit`.
It never touches other units' files, writes every output atomically, and caches the preprocessing
result in the unit's private work directory, so a run that was killed resumes where it stopped.
Orchestration over many units (discovery, validation, model loading, the summary) lives in
:mod:`bids_app.workflows`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import RESEARCH_USE_NOTICE, __version__
from ._io import atomic_path, write_json
from .derivatives import SPACE, map_path, predictions_path, write_map, write_predictions
from .grid import MASK_PROVENANCE, SPM_AFFINE, SPM_SHAPE, make_model_input
from .types import GMMaps, PreprocBackend, QCResult, T1wUnit

__all__ = ["UnitOptions", "UnitResult", "process_unit", "prediction_rows", "cached_preprocessing"]

_log = logging.getLogger("bids_app.participant")


@dataclass(frozen=True)
class UnitOptions:
    """Per-run options every unit shares (validated once by the caller)."""

    bids_dir: Path
    output_dir: Path
    work_dir: Path
    ad_threshold: float = 0.5
    device: str = "auto"
    write_report: bool = True
    #: explanation maps (:class:`bids_app.explain.ExplainOptions`); None = none
    explain: Any = None


@dataclass
class UnitResult:
    unit: T1wUnit
    ok: bool
    step: str = ""
    error: str = ""
    exit_code: int = 0
    outputs: list[Path] = field(default_factory=list)
    seconds: float = 0.0


# -- preprocessing with a resumable cache ------------------------------------------------------
_CACHE_FILES = ("gmd.nii.gz", "gmv.nii.gz", "maps.json")


def cached_preprocessing(backend: PreprocBackend, unit: T1wUnit, work_dir: Path) -> GMMaps:
    """Run ``backend`` on ``unit`` unless ``work_dir`` already holds its finished maps.

    The cache is written atomically after the backend returns, so a kill during preprocessing
    leaves no cache (the backend may still reuse its own finished steps) and a kill afterwards
    leaves a complete one.
    """
    import nibabel as nib

    cache = work_dir / "maps"
    meta_path = cache / "maps.json"
    if all((cache / f).exists() for f in _CACHE_FILES):
        meta = json.loads(meta_path.read_text())
        if meta.get("backend") == backend.name and meta.get("source") == str(unit.path):
            _log.info("%s: reusing finished preprocessing from %s", unit.prefix, cache)
            return GMMaps(
                gmd=np.asarray(nib.load(cache / "gmd.nii.gz").dataobj, dtype=np.float32),
                gmv=np.asarray(nib.load(cache / "gmv.nii.gz").dataobj, dtype=np.float32),
                backend=meta["backend"],
                backend_version=meta["backend_version"],
                provenance=meta["provenance"],
                qc=meta["qc"],
                source_files=tuple(Path(p) for p in meta["source_files"]),
            )
    maps = backend.run(unit, work_dir)
    for name, data in (("gmd.nii.gz", maps.gmd), ("gmv.nii.gz", maps.gmv)):
        with atomic_path(cache / name, suffix=".nii.gz") as tmp:
            nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), SPM_AFFINE), tmp)
    write_json(
        meta_path,
        {
            "backend": maps.backend,
            "backend_version": maps.backend_version,
            "provenance": dict(maps.provenance),
            "qc": dict(maps.qc),
            "source_files": [str(p) for p in maps.source_files],
            "source": str(unit.path),
        },
    )
    return maps


# -- predictions -------------------------------------------------------------------------------
def _effective_backend(maps: GMMaps) -> str:
    """The preprocessing that really made the maps (reused maps keep their origin)."""
    if maps.backend == "derivatives":
        return str(maps.provenance.get("OriginalBackend", "unknown"))
    return maps.backend


def prediction_rows(
    unit: T1wUnit,
    bids_dir: Path,
    maps: GMMaps,
    qc: QCResult,
    scored: Sequence[tuple[Any, Any]],
    *,
    ad_threshold: float,
) -> list[dict[str, Any]]:
    """Rows of the predictions TSV, one per model package (see ``PREDICTION_COLUMNS``).

    ``scored`` holds ``(package, ModelScores)`` pairs for this single T1w.
    """
    rows = []
    origin = _effective_backend(maps)
    for package, scores in scored:
        threshold = ad_threshold if package.task == "ad" else float(package.thresholds["default"])
        score = float(scores.mean[0])
        folds = scores.fold_scores[0]
        warnings: list[str] = []
        validated = set(package.validated_preprocessing)
        backend_ok = origin in validated or (origin == "spm" and "clinica" in validated)
        if not backend_ok:
            warnings.append(
                f"preprocessing '{origin}' is not the preprocessing the model was validated on "
                f"({', '.join(sorted(validated)) or 'unspecified'})"
            )
        if not qc.passed:
            warnings.append(f"QC failed: {', '.join(qc.flags)}")
        if package.trained_on_synthetic:
            warnings.append("model trained on synthetic data only: not for any real use")
        rows.append(
            {
                "participant_id": f"sub-{unit.subject}",
                "session_id": f"ses-{unit.session}" if unit.session else None,
                "run_id": unit.run,
                "source_file": str(unit.path.relative_to(bids_dir)) if unit.path.is_relative_to(bids_dir) else str(unit.path),
                "target": package.task,
                "model_name": package.name,
                "model_version": package.version,
                "model_sha256": ";".join(package.sha256),
                "model_trained_on_synthetic": bool(package.trained_on_synthetic),
                "score": round(score, 6),
                "predicted_label": package.positive_label if score >= threshold else package.negative_label,
                "threshold": threshold,
                "n_folds": int(folds.size),
                "fold_scores": ";".join(f"{s:.6f}" for s in folds),
                "fold_score_sd": round(float(folds.std()), 6),
                "qc_pass": qc.passed,
                "qc_flags": ";".join(qc.flags) or None,
                "qc_gmv_template_correlation": qc.metrics.get("gmv_template_correlation"),
                "preproc_backend": maps.backend,
                "preproc_backend_version": maps.backend_version,
                "validated_input": backend_ok and qc.passed and not package.trained_on_synthetic,
                "warnings": "; ".join(warnings) or None,
                "notice": RESEARCH_USE_NOTICE,
            }
        )
    return rows


def _map_sidecar(unit: T1wUnit, bids_dir: Path, maps: GMMaps, qc: QCResult, kind: str) -> dict[str, Any]:
    source = unit.path.relative_to(bids_dir) if unit.path.is_relative_to(bids_dir) else unit.path
    meaning = {
        "GMD": "Grey-matter density (probability of GM in template space, unmodulated; SPM 'wc1').",
        "GMV": "Grey-matter volume (GM probability modulated by the Jacobian determinant; SPM 'mwc1').",
    }[kind]
    return {
        "Description": meaning,
        "Sources": [f"bids::{source}"],
        "SpatialReference": SPACE,
        "Grid": {"Shape": list(SPM_SHAPE), "Affine": SPM_AFFINE.tolist(), "VoxelSizeMM": 1.5},
        "PreprocBackend": maps.backend,
        "PreprocBackendVersion": maps.backend_version,
        "Provenance": dict(maps.provenance),
        "QC": {"Metrics": dict(qc.metrics), "Flags": list(qc.flags), "Thresholds": dict(qc.thresholds), "Passed": qc.passed},
        "ModelInputMask": MASK_PROVENANCE,
        "GeneratedBy": f"vbm-predict {__version__}",
    }


def _remove_stale_partials(output_dir: Path, unit: T1wUnit) -> None:
    """Delete temporary files a killed earlier attempt of *this* unit left beside its outputs.

    Only this unit's own final names are matched, so jobs working on other units in the same
    folder (e.g. other runs) keep their in-flight files.
    """
    finals = [map_path(output_dir, unit, "GMD"), map_path(output_dir, unit, "GMV"), predictions_path(output_dir, unit)]
    names = [f.name for f in finals] + [f.name.replace(".nii.gz", ".json").replace(".tsv", ".json") for f in finals]
    folder = finals[0].parent
    if folder.is_dir():
        for name in names:
            for stale in folder.glob(f".{name}.*.part*"):
                stale.unlink(missing_ok=True)


def process_unit(
    unit: T1wUnit,
    backend: PreprocBackend,
    packages: Sequence[Any],
    options: UnitOptions,
    *,
    load_t1w: Any = None,
    compute_qc: Any = None,
    predict: Any = None,
    result: UnitResult | None = None,
) -> UnitResult:
    """Run one T1w through every stage and write its outputs.

    ``load_t1w``, ``compute_qc`` and ``predict`` default to the app's implementations; they are
    parameters so that the library can be driven with other stages (e.g. in notebooks).
    Exceptions propagate: :mod:`bids_app.workflows` turns them into failure records; pass your
    own ``result`` to see which ``step`` was running when one was raised.
    """
    from .models import predict as _predict
    from .preproc.inputs import load_t1w as _load_t1w
    from .qc import compute_qc as _compute_qc

    load_t1w = load_t1w or _load_t1w
    compute_qc = compute_qc or _compute_qc
    predict = predict or _predict
    work = options.work_dir / unit.prefix
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = result if result is not None else UnitResult(unit=unit, ok=False)

    _remove_stale_partials(options.output_dir, unit)
    result.step = "input"
    if backend.name != "derivatives":
        load_t1w(unit.path)  # clear errors for unusable files before any long step

    result.step = f"preprocessing ({backend.name})"
    _log.info("%s: %s", unit.prefix, result.step)
    maps = cached_preprocessing(backend, unit, work)

    result.step = "qc"
    qc = compute_qc(maps)
    if not qc.passed:
        _log.warning("%s: QC flags %s", unit.prefix, ", ".join(qc.flags))

    result.step = "writing maps"
    for kind, data in (("GMD", maps.gmd), ("GMV", maps.gmv)):
        path = map_path(options.output_dir, unit, kind)
        write_map(path, data, _map_sidecar(unit, options.bids_dir, maps, qc, kind))
        result.outputs.append(path)

    result.step = "models"
    x = make_model_input(maps.gmd, maps.gmv)[None]
    scored = []
    for package in packages:
        _log.info("%s: scoring with %s (%s, %d fold(s))", unit.prefix, package.name, package.task, len(package.sha256))
        scored.append((package, predict(package, x, device=options.device)))

    result.step = "writing predictions"
    rows = prediction_rows(unit, options.bids_dir, maps, qc, scored, ad_threshold=options.ad_threshold)
    result.outputs.append(write_predictions(predictions_path(options.output_dir, unit), rows))

    if options.explain is not None and options.explain.methods:
        result.step = "explanations"
        from .explain import write_explanations

        result.outputs.extend(
            write_explanations(options.output_dir, unit, packages, x[0], options.explain,
                               device=options.device, cache_dir=work / "explain")
        )

    if options.write_report:
        result.step = "report"
        try:
            from .report import write_participant_report
        except ImportError:  # reports are optional for library users without matplotlib
            write_participant_report = None
        if write_participant_report is not None:
            result.outputs.append(write_participant_report(options.output_dir, unit))

    result.step = "done"
    result.ok = True
    result.seconds = time.perf_counter() - t0
    return result

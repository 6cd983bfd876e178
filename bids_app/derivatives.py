"""BIDS-Derivatives output: names, sidecars, ``dataset_description.json``, ``.bidsignore``.

The output directory is a BIDS-Derivatives dataset (BIDS 1.10, "derivative" dataset type) that the
official validator accepts and pybids indexes. Standard files (GM maps) follow the BIDS entity
order: every entity of the source T1w name (``sub``, ``ses``, ``task``, ``acq``, ``ce``, ``rec``, ``run``,
``echo``, ``flip``, ``inv``, ``mt``, ``part``, ``chunk``, ...; BIDS-Derivatives keeps source entities, and
that is what keeps two T1w images from sharing an output), then ``_space-IXI549Space_label-GM[_desc-..]_probseg``;
app-specific files (predictions, logs, failure records, group tables, reports) are listed in
``.bidsignore``. Every file is written atomically (:mod:`bids_app._io`).

The records written for each T1w (the rows of the predictions table, the map sidecars, the failure
record) are built here too, so the stage runner (:mod:`bids_app.participant`) only decides what to
write.

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
from .errors import OutputError, UsageError
from .grid import MNI1MM_AFFINE, MNI1MM_SHAPE, SPM_AFFINE, SPM_SHAPE, model_input_mask
from .types import GMMaps, QCResult, T1wUnit

__all__ = [
    "SPACE",
    "BIDS_VERSION",
    "CODE_URL",
    "PREDICTION_COLUMNS",
    "BIDSIGNORE",
    "map_path",
    "t1w_mni_path",
    "t1w_mni_space",
    "t1w_mni_sidecar",
    "write_t1w_mni",
    "remove_t1w_mni",
    "T1W_MNI_DEFAULT_SPACE",
    "predictions_path",
    "explanation_path",
    "failure_path",
    "log_path",
    "unit_output_names",
    "SOURCE_RECORD",
    "check_output_dataset",
    "record_source",
    "effective_backend",
    "preprocessing_validated",
    "init_dataset",
    "prediction_rows",
    "map_sidecar",
    "failure_record",
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
    "*_explanation.nii.gz",  # explanation maps (occlusion, Grad-CAM) and their atlas summaries
    "*_explanation.json",
    "*_regions.tsv",
    "*_regions.json",
]

#: Every column of ``*_predictions.tsv`` and ``group_predictions.tsv``: name -> description
#: (and units / levels). One row per (T1w, model, head).
PREDICTION_COLUMNS: dict[str, dict[str, Any]] = {
    "participant_id": {"Description": "Participant label with its sub- prefix."},
    "session_id": {"Description": "Session label with its ses- prefix; n/a without sessions."},
    "run_id": {"Description": "Run index of the T1w (run- entity); n/a when the name has none."},
    "source_file": {"Description": "The T1w file, relative to the input BIDS dataset."},
    "target": {
        "Description": "What the row predicts: the name of the model's head (model.json 'heads'; schema-1 "
                       "packages: their task), e.g. sex, ad, diagnosis, age, pmci.",
        "Levels": {"sex": "biological sex (score = P(male))", "ad": "Alzheimer's disease (score = P(AD))"},
    },
    "head": {"Description": "Name of the model head the row comes from (a package may have several)."},
    "head_kind": {
        "Description": "What kind of prediction the head makes.",
        "Levels": {
            "binary": "two classes: score = P(positive label), predicted_label = score >= threshold",
            "multiclass": "several classes: predicted_label = the most probable class, score = its probability, "
                          "probabilities = every class's",
            "regression": "a value: predicted_value in value_unit (score, predicted_label, threshold n/a)",
        },
    },
    "model_name": {"Description": "Name of the model package (model.json 'name')."},
    "model_family": {
        "Description": "Model family of the package (model.json 'family'; schema-1 packages: brainimagenet).",
        "Levels": {
            "brainimagenet": "BrainImageNet 3D Inception-ResNet-V2 (Lu et al. 2022)",
            "cnn": "transferable 3D CNN-5/7/10/12",
            "liu_mox": "Liu et al. 2022 CNN + MLP as reproduced with Clinica t1-volume maps (MOX)",
            "sfcn": "SFCN (Peng et al. 2021), multi-task pretraining (Leonardsen et al.)",
            "regional": "regional GM volume baseline (scikit-learn linear models)",
        },
    },
    "model_version": {"Description": "Version of the model package."},
    "model_sha256": {"Description": "sha256 of the model's weights, one per fold joined by ';' in fold order."},
    "model_trained_on_synthetic": {
        "Description": "True when the model was trained on synthetic data only (demo models): not for any real use."
    },
    "score": {
        "Description": "Binary head: mean over folds of the sigmoid output, P(positive label). Multiclass head: "
                       "the mean probability of the predicted class. n/a for a regression head.",
        "Units": "probability",
    },
    "predicted_label": {
        "Description": "Predicted class: binary head score >= threshold; multiclass head the class of highest "
                       "mean probability; n/a for a regression head.",
        "Levels": {"male": "sex model", "female": "sex model", "AD": "AD model", "CN": "AD model"},
    },
    "probabilities": {
        "Description": "Multiclass head: mean probability of every class over folds, 'label=p' joined by ';' "
                       "in the head's label order (e.g. CN=0.100000;MCI=0.300000;AD=0.600000); n/a otherwise."
    },
    "predicted_value": {"Description": "Regression head: mean over folds of the predicted value, in value_unit; "
                                       "n/a otherwise."},
    "value_unit": {"Description": "Unit of predicted_value and of a regression head's fold_scores (e.g. years)."},
    "threshold": {"Description": "Decision threshold applied to a binary head's score (--ad-threshold for the AD "
                                 "head); n/a for multiclass and regression heads."},
    "n_folds": {"Description": "Number of fold models averaged."},
    "fold_scores": {"Description": "Per-fold outputs joined by ';' in fold order: binary P(positive label), "
                                   "multiclass the probability of the predicted class, regression the value."},
    "fold_score_sd": {"Description": "Standard deviation of the per-fold outputs (ensemble spread)."},
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
    "inference_engine": {
        "Description": (
            "Engine and precision that computed the scores, e.g. 'openvino 2026.4.1 fp32' (each engine is "
            "checked against PyTorch FP32 on a reference input before use; see docs/inference.md)."
        )
    },
    "model_input_mask": {
        "Description": "Brain mask applied to the maps before the model (sidecars' ModelInputMask has its details).",
        "Levels": {
            "published": "the BrainImageNet authors' prediction mask (Reslice_BrainMask_05_91x109x91)",
            "derived": "the documented equivalent derived from nilearn's MNI152 brain mask (> 0.5)",
            "none": "no mask multiplied the model input (a GM-map package with input mask 'none', or the "
                    "T1w input, skull-stripped during preprocessing)",
        },
    },
    "warnings": {"Description": "Reasons the prediction may not be valid, joined by ';'; n/a when none."},
    "notice": {"Description": "Research-use-only notice."},
}


#: columns of the predictions tables that hold text (kept as strings when read back)
_TEXT_PREDICTION_COLUMNS = (
    "participant_id", "session_id", "run_id", "source_file", "target", "head", "head_kind", "model_name",
    "model_family", "model_version", "model_sha256", "predicted_label", "probabilities", "value_unit",
    "fold_scores", "qc_flags", "preproc_backend", "preproc_backend_version", "inference_engine",
    "model_input_mask", "warnings", "notice",
)


def _entities_prefix(unit: T1wUnit) -> str:
    return unit.prefix


def _unit_dir(output_dir: Path, unit: T1wUnit) -> Path:
    return safe_join(output_dir, unit.subdir)


def map_path(output_dir: Path, unit: T1wUnit, kind: str) -> Path:
    """Path of a GM map: ``kind`` is ``GMD`` (unmodulated) or ``GMV`` (modulated)."""
    desc = {"GMD": "", "GMV": "_desc-modulated"}[kind]
    name = f"{unit.with_space(SPACE)}_label-GM{desc}_probseg.nii.gz"
    return _unit_dir(output_dir, unit) / name


#: space of the T1w in MNI space when the maps do not name one (``T1wMNISpace`` in their provenance):
#: the ANTs backend registers to nilearn's MNI152 2009a symmetric template
T1W_MNI_DEFAULT_SPACE = "MNI152NLin2009aSym"
#: the name's end after the space: the 1 mm grid (:data:`bids_app.grid.MNI1MM_SHAPE`), preprocessed T1w
_T1W_MNI_TAIL = "_res-1_desc-preproc_T1w"


def t1w_mni_space(maps: GMMaps) -> str:
    """The BIDS space label of ``maps.t1w_mni``: what the backend recorded, else the ANTs template's."""
    return str(maps.provenance.get("T1wMNISpace", T1W_MNI_DEFAULT_SPACE))


def t1w_mni_path(output_dir: Path, unit: T1wUnit, space: str = T1W_MNI_DEFAULT_SPACE) -> Path:
    """Path of the T1w in MNI space (SFCN's input before crop and normalisation):
    ``..._space-<space>_res-1_desc-preproc_T1w.nii.gz``."""
    if not space.isalnum():
        raise UsageError(f"a space label must be alphanumeric; got {space!r}")
    return _unit_dir(output_dir, unit) / f"{unit.with_space(space)}{_T1W_MNI_TAIL}.nii.gz"


def predictions_path(output_dir: Path, unit: T1wUnit) -> Path:
    return _unit_dir(output_dir, unit) / f"{_entities_prefix(unit)}_predictions.tsv"


def explanation_path(output_dir: Path, unit: T1wUnit, desc: str, suffix: str = "explanation") -> Path:
    """Explanation map ``..._space-IXI549Space_desc-<method><Model>_explanation.nii.gz`` (``suffix``
    ``explanation``) or its atlas summary ``..._regions.tsv`` (``suffix`` ``regions``)."""
    if not desc.isalnum():
        raise UsageError(f"a desc label must be alphanumeric; got {desc!r}")
    ext = {"explanation": ".nii.gz", "regions": ".tsv"}[suffix]
    return _unit_dir(output_dir, unit) / f"{unit.with_space(SPACE)}_desc-{desc}_{suffix}{ext}"


def failure_path(output_dir: Path, unit: T1wUnit) -> Path:
    return _unit_dir(output_dir, unit) / f"{_entities_prefix(unit)}_failure.json"


def log_path(output_dir: Path, unit: T1wUnit) -> Path:
    return safe_join(output_dir, "logs", f"{_entities_prefix(unit)}.log")


def unit_output_names(unit: T1wUnit) -> list[str]:
    """File names (in the unit's folder) of every output this unit may write: maps, sidecars, tables."""
    prefix = _entities_prefix(unit)
    names = []
    for desc in ("", "_desc-modulated"):
        base = f"{unit.with_space(SPACE)}_label-GM{desc}_probseg"
        names += [f"{base}.nii.gz", f"{base}.json"]
    names += [f"{prefix}_predictions.tsv", f"{prefix}_predictions.json", f"{prefix}_failure.json"]
    return names


#: hidden file (ignored by the BIDS validator) recording which input dataset the outputs came from
SOURCE_RECORD = ".vbm-predict-source.json"


def _source_identity(bids_dir: Path) -> dict[str, Any]:
    import hashlib

    desc_path = Path(bids_dir) / "dataset_description.json"
    try:
        raw = desc_path.read_bytes()
        name = json.loads(raw).get("Name")
    except (OSError, ValueError, AttributeError):
        raw, name = b"", None
    return {"URL": Path(bids_dir).resolve().as_uri(), "Name": name,
            "DescriptionSha256": hashlib.sha256(raw).hexdigest()}


def check_output_dataset(output_dir: Path, bids_dir: Path) -> list[str]:
    """Refuse an output dir that holds another dataset's outputs; return warnings for doubtful reuse.

    The first run records the input's identity (location, ``Name``, sha256 of its
    ``dataset_description.json``) in :data:`SOURCE_RECORD`. A later run from an input with another
    ``Name``, or another location *and* another description, is refused with
    :class:`~bids_app.errors.UsageError` (exit 64): merging two datasets' outputs would mix their
    participants. One changed property alone (a moved dataset, an edited description) is a warning.
    An output dir that is another program's dataset (``GeneratedBy`` without vbm-predict) is refused.
    """
    output_dir = Path(output_dir)
    desc = output_dir / "dataset_description.json"
    if desc.is_file():
        try:
            generated = json.loads(desc.read_text(encoding="utf-8")).get("GeneratedBy") or []
        except (OSError, ValueError, AttributeError):
            generated = []
        names = {g.get("Name") for g in generated if isinstance(g, dict)}
        if "vbm-predict" not in names:
            raise UsageError(
                f"{output_dir} already holds a dataset that vbm-predict did not make "
                f"({desc}); choose an empty or new output directory"
            )
    record = output_dir / SOURCE_RECORD
    try:
        old = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    new = _source_identity(bids_dir)
    if not isinstance(old, dict):
        return []
    if old.get("Name") != new["Name"] or (old.get("URL") != new["URL"] and
                                          old.get("DescriptionSha256") != new["DescriptionSha256"]):
        raise UsageError(
            f"{output_dir} holds outputs of another dataset ({old.get('Name')!r} at {old.get('URL')}), not of "
            f"{new['Name']!r} at {new['URL']}; use another output directory so the two are not mixed"
        )
    warnings = []
    if old.get("URL") != new["URL"]:
        warnings.append(f"the input dataset {new['Name']!r} moved from {old.get('URL')} to {new['URL']}")
    elif old.get("DescriptionSha256") != new["DescriptionSha256"]:
        warnings.append(f"the dataset_description.json of {new['URL']} changed since the outputs were first written")
    return warnings


def record_source(output_dir: Path, bids_dir: Path) -> None:
    """Write :data:`SOURCE_RECORD` once (the first run's input stays the reference)."""
    record = Path(output_dir) / SOURCE_RECORD
    if not record.exists():
        write_json(record, _source_identity(bids_dir))


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


def _write_on_grid(path: Path, data: np.ndarray, sidecar: Mapping[str, Any], shape: tuple[int, ...],
                   affine: np.ndarray, what: str) -> Path:
    """Write a float32 image on a known MNI grid (q/sform code 4) plus its JSON sidecar, both atomically."""
    if data.shape != shape:
        raise OutputError(f"{path}: {what} {shape}; got {data.shape}")
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=4)  # 4 = MNI
    img.header.set_sform(affine, code=4)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)
    write_json(path.with_name(path.name.replace(".nii.gz", ".json")), dict(sidecar))
    return path


def write_map(path: Path, data: np.ndarray, sidecar: Mapping[str, Any]) -> Path:
    """Write a float32 map on the SPM grid plus its JSON sidecar, both atomically."""
    return _write_on_grid(path, data, sidecar, SPM_SHAPE, SPM_AFFINE, "maps must be on the SPM grid")


def write_t1w_mni(path: Path, data: np.ndarray, sidecar: Mapping[str, Any]) -> Path:
    """Write the T1w in MNI space (float32 on the 1 mm grid) plus its JSON sidecar, both atomically."""
    return _write_on_grid(path, data, sidecar, MNI1MM_SHAPE, MNI1MM_AFFINE,
                          "the T1w in MNI space must be on the 1 mm grid")


def remove_t1w_mni(output_dir: Path, unit: T1wUnit, keep: Path | None = None) -> None:
    """Remove this T1w's MNI-space T1w outputs (any space, image and sidecar) but ``keep``'s: a run
    that makes none, or makes one in another space, must not leave an earlier run's beside its maps."""
    import re

    folder = _unit_dir(output_dir, unit)
    name = re.compile(re.escape(unit.with_space("SPACE")).replace("SPACE", "[A-Za-z0-9]+")
                      + re.escape(_T1W_MNI_TAIL) + r"\.(?:nii\.gz|json)$")
    keep_stem = keep.name.replace(".nii.gz", "") if keep is not None else None
    for path in folder.iterdir() if folder.is_dir() else []:
        if name.match(path.name) and path.name.rsplit(".json", 1)[0].replace(".nii.gz", "") != keep_stem:
            path.unlink(missing_ok=True)


def t1w_mni_sidecar(unit: T1wUnit, bids_dir: Path, maps: GMMaps,
                    inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """JSON sidecar of the T1w in MNI space: what it is, its sources, grid, space and backend."""
    sidecar: dict[str, Any] = {
        "Description": "The T1w, N4 bias-corrected, skull-stripped (0 outside the brain) and registered to MNI152 "
                       "at 1 mm: the input of SFCN packages before their centre crop and mean normalisation.",
        "Sources": [f"bids::{_source_relative(unit, bids_dir)}"],
        "SpatialReference": t1w_mni_space(maps),
        "Resolution": "1 mm isotropic, 182 x 218 x 182 voxels (FSL's MNI152 1 mm grid)",
        "Grid": {"Shape": list(MNI1MM_SHAPE), "Affine": MNI1MM_AFFINE.tolist(), "VoxelSizeMM": 1.0},
        "SkullStripped": True,
        "PreprocBackend": maps.backend,
        "PreprocBackendVersion": maps.backend_version,
        "Provenance": dict(maps.provenance),
        "GeneratedBy": f"vbm-predict {__version__}",
    }
    if inputs is not None:
        sidecar["InputFingerprint"] = dict(inputs)
    return sidecar


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


# -- the records written for one T1w ---------------------------------------------------------------
#: preprocessing names that stand for the same chain: a model validated on Clinica's SPM maps is
#: valid on SPM / DPARSF maps reused from elsewhere, and the other way round
PREPROCESSING_EQUIVALENTS: dict[str, frozenset[str]] = {
    "clinica": frozenset({"clinica", "spm", "dparsf"}),
    "spm": frozenset({"clinica", "spm", "dparsf"}),
    "dparsf": frozenset({"clinica", "spm", "dparsf"}),
}


def effective_backend(maps: GMMaps) -> str:
    """The preprocessing that really made the maps (reused maps keep their origin)."""
    return str(maps.provenance.get("OriginalBackend", maps.backend))


def preprocessing_validated(origin: str, validated: Sequence[str]) -> bool:
    """True when maps made by ``origin`` are what a model trained on ``validated`` expects."""
    same = PREPROCESSING_EQUIVALENTS.get(origin, frozenset({origin}))
    return bool(same & set(validated))


def _source_relative(unit: T1wUnit, bids_dir: Path) -> Path:
    return unit.path.relative_to(bids_dir) if unit.path.is_relative_to(bids_dir) else unit.path


def _engine_label(scores: Any) -> str | None:
    """'engine version precision' of the inference engine that made ``scores`` (None when unknown)."""
    info = getattr(scores, "engine", None) or {}
    parts = [str(info[k]) for k in ("Engine", "EngineVersion", "Precision") if info.get(k)]
    return " ".join(parts) or None


def _input_mask_level(package: Any) -> str:
    """``model_input_mask`` of a package's rows: what multiplied its input."""
    spec = getattr(package, "input", None) or {}
    kind = getattr(package, "input_kind", "gm_crop2")
    if kind == "t1w_mni1mm" or (kind == "gm_spm1" and spec.get("mask") == "none"):
        return "none"
    return str(model_input_mask()[1]["Mask"])


def _head_values(head: Any, outputs: Any, ad_threshold: float) -> dict[str, Any]:
    """The columns that depend on the head's kind, for the first input of ``outputs`` (HeadScores)."""
    folds = outputs.fold_outputs[0]  # F x K
    mean = outputs.mean[0]
    na: dict[str, Any] = {"score": None, "predicted_label": None, "probabilities": None, "predicted_value": None,
                          "value_unit": None, "threshold": None}
    if head.kind == "binary":
        threshold = ad_threshold if head.name == "ad" else float(head.thresholds["default"])
        score = float(mean[0])
        per_fold = folds[:, 0]
        return na | {"score": round(score, 6), "threshold": threshold,
                     "predicted_label": head.labels[1] if score >= threshold else head.labels[0],
                     "fold_scores": per_fold}
    if head.kind == "multiclass":
        best = int(np.argmax(mean))
        return na | {"score": round(float(mean[best]), 6), "predicted_label": head.labels[best],
                     "probabilities": ";".join(f"{lab}={p:.6f}" for lab, p in zip(head.labels, mean)),
                     "fold_scores": folds[:, best]}
    return na | {"predicted_value": round(float(mean[0]), 6), "value_unit": head.unit, "fold_scores": folds[:, 0]}


def prediction_rows(
    unit: T1wUnit,
    bids_dir: Path,
    maps: GMMaps,
    qc: QCResult,
    scored: Sequence[tuple[Any, Any]],
    *,
    ad_threshold: float,
) -> list[dict[str, Any]]:
    """Rows of the predictions TSV, one per model package and head (see :data:`PREDICTION_COLUMNS`).

    ``scored`` holds ``(package, ModelScores)`` pairs for this single T1w. Every row carries the
    model's identity, the preprocessing, QC, the validated-input verdict, its warnings and the
    research-use notice, whatever the head's kind.
    """
    rows = []
    origin = effective_backend(maps)
    for package, scores in scored:
        warnings: list[str] = []
        validated = tuple(package.validated_preprocessing)
        backend_ok = preprocessing_validated(origin, validated)
        if not backend_ok:
            warnings.append(
                f"preprocessing '{origin}' is not the preprocessing the model was validated on "
                f"({', '.join(sorted(validated)) or 'unspecified'})"
            )
        if not qc.passed:
            warnings.append(f"QC failed: {', '.join(qc.flags)}")
        if package.trained_on_synthetic:
            warnings.append("model trained on synthetic data only: not for any real use")
        mask_level = _input_mask_level(package)
        for head in package.heads:
            values = _head_values(head, scores.head(head.name), ad_threshold)
            folds = np.asarray(values.pop("fold_scores"), dtype=np.float64)
            rows.append(
                {
                    "participant_id": f"sub-{unit.subject}",
                    "session_id": f"ses-{unit.session}" if unit.session else None,
                    "run_id": unit.run,
                    "source_file": str(_source_relative(unit, bids_dir)),
                    "target": head.name,
                    "head": head.name,
                    "head_kind": head.kind,
                    "model_name": package.name,
                    "model_family": getattr(package, "family", "brainimagenet"),
                    "model_version": package.version,
                    "model_sha256": ";".join(package.sha256),
                    "model_trained_on_synthetic": bool(package.trained_on_synthetic),
                    **values,
                    "n_folds": int(folds.size),
                    "fold_scores": ";".join(f"{s:.6f}" for s in folds),
                    "fold_score_sd": round(float(folds.std()), 6),
                    "qc_pass": qc.passed,
                    "qc_flags": ";".join(qc.flags) or None,
                    "qc_gmv_template_correlation": qc.metrics.get("gmv_template_correlation"),
                    "preproc_backend": maps.backend,
                    "preproc_backend_version": maps.backend_version,
                    "inference_engine": _engine_label(scores),
                    "model_input_mask": mask_level,
                    "validated_input": backend_ok and qc.passed and not package.trained_on_synthetic,
                    "warnings": "; ".join(warnings) or None,
                    "notice": RESEARCH_USE_NOTICE,
                }
            )
    return rows


def map_sidecar(unit: T1wUnit, bids_dir: Path, maps: GMMaps, qc: QCResult, kind: str,
                inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """JSON sidecar of a GM map (``kind`` GMD or GMV): meaning, sources, grid, backend, QC.

    ``inputs`` is the fingerprint of the files and parameters the maps were made from (see
    :func:`bids_app.participant.cache_key`), recorded as ``InputFingerprint``.
    """
    meaning = {
        "GMD": "Grey-matter density (probability of GM in template space, unmodulated; SPM 'wc1').",
        "GMV": "Grey-matter volume (GM probability modulated by the Jacobian determinant; SPM 'mwc1').",
    }[kind]
    sidecar = {
        "Description": meaning,
        "Sources": [f"bids::{_source_relative(unit, bids_dir)}"],
        "SpatialReference": SPACE,
        "Grid": {"Shape": list(SPM_SHAPE), "Affine": SPM_AFFINE.tolist(), "VoxelSizeMM": 1.5},
        "PreprocBackend": maps.backend,
        "PreprocBackendVersion": maps.backend_version,
        "Provenance": dict(maps.provenance),
        "QC": {"Metrics": dict(qc.metrics), "Flags": list(qc.flags), "Thresholds": dict(qc.thresholds),
               "Passed": qc.passed},
        "ModelInputMask": model_input_mask()[1],
        "GeneratedBy": f"vbm-predict {__version__}",
    }
    if inputs is not None:
        sidecar["InputFingerprint"] = dict(inputs)
    return sidecar


def failure_record(unit: T1wUnit, *, step: str, error_type: str, message: str, exit_code: int,
                   log: Path | str | None) -> dict[str, Any]:
    """The ``*_failure.json`` record of a T1w that failed: which step, what error, which log."""
    return {
        "participant_id": f"sub-{unit.subject}",
        "session_id": f"ses-{unit.session}" if unit.session else None,
        "source_file": str(unit.path),
        "step": step,
        "error_type": error_type,
        "message": message,
        "exit_code": exit_code,
        "log": str(log) if log is not None else None,
        "vbm_predict_version": __version__,
    }

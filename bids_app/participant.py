"""One T1w through the stages: input check, preprocessing, QC gate, model input, models, outputs.

:func:`process_unit` is the whole participant-level work for one :class:`~bids_app.types.T1wUnit`.
It never touches other units' files, writes every output atomically, and caches the preprocessing
result in the unit's private work directory, so a run that was killed resumes where it stopped.
The cache is valid only for the same inputs and parameters (:func:`cache_key`: the T1w's size,
mtime and sha256, the backend, its version and parameters); anything else recomputes and says why.
The records written (prediction rows, sidecars) are built by :mod:`bids_app.derivatives`.
Orchestration over many units (discovery, validation, model loading, failure records, the summary)
lives in :mod:`bids_app.workflows`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ._io import atomic_path, remove_stale_partials, sha256_file, write_json
from .derivatives import (
    map_path,
    map_sidecar,
    prediction_rows,
    predictions_path,
    unit_output_names,
    write_map,
    write_predictions,
)
from .errors import InputDataError, ModelPackageError, NoInputError
from .grid import SPM_AFFINE, make_model_input, model_input_mask
from .types import GMMaps, PreprocBackend, QCResult, T1wUnit, reuses_existing_maps

__all__ = [
    "UnitOptions",
    "UnitResult",
    "HARD_QC_LIMITS",
    "process_unit",
    "prediction_rows",
    "cache_key",
    "cached_preprocessing",
    "hard_qc_failures",
    "model_inputs",
    "check_inputs_provided",
]

_log = logging.getLogger("bids_app.participant")


@dataclass(frozen=True)
class UnitOptions:
    """Per-run options every unit shares (validated once by the caller; plain, picklable values)."""

    bids_dir: Path
    output_dir: Path
    work_dir: Path
    ad_threshold: float = 0.5
    device: str = "auto"
    write_report: bool = True
    #: delete the unit's scratch (all but the small finished-maps cache) once its outputs are written
    clean_scratch: bool = True
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
#: how the cache key describes a file: enough to notice a replaced file even with an equal mtime
_FILE_KEYS = ("path", "size", "mtime_ns", "sha256")


def _file_fingerprint(path: Path) -> dict[str, Any]:
    st = Path(path).stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}


#: backend attributes that do not change the maps (so a change must not invalidate the cache)
_NOT_PARAMETERS = ("nprocs", "env")


def _backend_parameters(backend: PreprocBackend) -> Any:
    """The backend's parameters: its ``params`` dataclass when it has one, else its public plain
    attributes (paths as text), without those that only change speed (:data:`_NOT_PARAMETERS`)."""
    params = getattr(backend, "params", None)
    if params is not None and dataclasses.is_dataclass(params) and not isinstance(params, type):
        return json.loads(json.dumps(dataclasses.asdict(params), default=str))
    plain = {k: str(v) if isinstance(v, Path) else v for k, v in vars(backend).items()
             if not k.startswith("_") and k not in _NOT_PARAMETERS
             and isinstance(v, (str, int, float, bool, type(None), Path))}
    return plain


def cache_key(backend: PreprocBackend, unit: T1wUnit) -> dict[str, Any]:
    """What the finished maps depend on: the T1w's content, the backend, its version and parameters."""
    return {
        "t1w": _file_fingerprint(unit.path),
        "backend": backend.name,
        "backend_version": backend.version(),
        "parameters": _backend_parameters(backend),
    }


def _why_stale(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    if old.get("t1w", {}).get("sha256") != new["t1w"]["sha256"] or old.get("t1w", {}).get("size") != new["t1w"]["size"]:
        return f"the T1w {new['t1w']['path']} changed (sha256 {new['t1w']['sha256'][:12]}...)"
    if old.get("t1w", {}).get("path") != new["t1w"]["path"]:
        return f"the T1w is now {new['t1w']['path']}"
    for key in ("backend", "backend_version", "parameters"):
        if old.get(key) != new[key]:
            return f"the {key.replace('_', ' ')} changed ({old.get(key)!r} -> {new[key]!r})"
    return None


def _load_cache(cache: Path) -> GMMaps:
    import nibabel as nib

    meta = json.loads((cache / "maps.json").read_text())
    return GMMaps(
        gmd=np.asarray(nib.load(cache / "gmd.nii.gz").dataobj, dtype=np.float32),
        gmv=np.asarray(nib.load(cache / "gmv.nii.gz").dataobj, dtype=np.float32),
        backend=meta["backend"],
        backend_version=meta["backend_version"],
        provenance=meta["provenance"],
        qc=meta["qc"],
        source_files=tuple(Path(p) for p in meta["source_files"]),
    )


def cached_preprocessing(backend: PreprocBackend, unit: T1wUnit, work_dir: Path,
                         key: Mapping[str, Any] | None = None) -> GMMaps:
    """Run ``backend`` on ``unit`` unless ``work_dir`` holds maps made from the same inputs.

    A backend that reuses existing maps is never cached (its maps are re-read, so another
    ``--derivatives`` folder or a replaced map always counts). The cache is written atomically
    after the backend returns, so a kill during preprocessing leaves no cache (the backend may
    still reuse its own finished steps) and a kill afterwards leaves a complete one.
    """
    import nibabel as nib

    if reuses_existing_maps(backend):
        return backend.run(unit, work_dir)
    key = dict(key) if key is not None else cache_key(backend, unit)
    cache = work_dir / "maps"
    remove_stale_partials(cache)
    if all((cache / f).exists() for f in _CACHE_FILES):
        try:
            old = json.loads((cache / "maps.json").read_text()).get("key", {})
        except (OSError, ValueError):
            old = {}
        reason = _why_stale(old, key) if old else "the cache was written by an older version without a key"
        if reason is None:
            try:
                maps = _load_cache(cache)
                _log.info("%s: reusing finished preprocessing from %s (same T1w, backend and parameters)",
                          unit.prefix, cache)
                return maps
            except (OSError, ValueError, KeyError) as exc:
                reason = f"the cache could not be read ({exc})"
        _log.info("%s: recomputing the preprocessing: %s", unit.prefix, reason)
    maps = backend.run(unit, work_dir)
    for name, data in (("gmd.nii.gz", maps.gmd), ("gmv.nii.gz", maps.gmv)):
        with atomic_path(cache / name, suffix=".nii.gz") as tmp:
            nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), SPM_AFFINE), tmp)
    write_json(
        cache / "maps.json",
        {
            "backend": maps.backend,
            "backend_version": maps.backend_version,
            "provenance": dict(maps.provenance),
            "qc": dict(maps.qc),
            "source_files": [str(p) for p in maps.source_files],
            "source": str(unit.path),
            "key": key,
        },
    )
    return maps


# -- the post-preprocessing gate ---------------------------------------------------------------
#: QC metric -> the bound below which the maps are not a brain at all (registration or segmentation
#: failed outright). Far below the soft QC thresholds of :mod:`bids_app.qc` (which only mark
#: predictions as not validated): a map that fails one of these gets no prediction.
HARD_QC_LIMITS: dict[str, float] = {
    "gmv_template_correlation": 0.3,
    "gm_template_dice": 0.2,
    "gm_inside_brain_fraction": 0.6,
}


def hard_qc_failures(qc: QCResult) -> list[str]:
    """Names and values of the hard QC limits that ``qc`` breaks (empty: predictions may be made)."""
    out = []
    for name, bound in HARD_QC_LIMITS.items():
        value = qc.metrics.get(name)
        if value is None:
            continue
        if not np.isfinite(value) or value < bound:
            out.append(f"{name} = {value:.3f} < {bound}")
    return out


def _input_key(package: Any) -> str:
    """Packages whose inputs are made alike share one input: its kind and the card's recipe."""
    spec = dict(getattr(package, "input", None) or {})
    kind = getattr(package, "input_kind", "gm_crop2")
    recipe = {k: spec.get(k) for k in ("channels", "mask", "crop", "shape")} if kind != "gm_crop2" else {}
    return json.dumps({"kind": kind, **recipe}, sort_keys=True)


def check_inputs_provided(packages: Sequence[Any], backend: PreprocBackend) -> None:
    """Refuse, before any preprocessing, packages whose input kind ``backend`` cannot make.

    A backend lists what it makes in its ``provides`` class attribute (input kinds); one without it
    makes the maps of the BrainImageNet crop (``gm_crop2``) only.
    """
    provides = getattr(backend, "provides", None)
    can = frozenset(provides) if provides is not None else frozenset({"gm_crop2"})
    missing = [p for p in packages if getattr(p, "input_kind", "gm_crop2") not in can]
    if missing:
        which = "; ".join(f"{p.path}: model {p.name} reads {p.input_kind}" for p in missing)
        raise ModelPackageError(
            f"the {backend.name} preprocessing cannot make the input these models read ({which}); it makes "
            f"{', '.join(sorted(can))}. Choose another --preproc or leave these packages out of --models"
        )


_CROP_KEY = json.dumps({"kind": "gm_crop2"}, sort_keys=True)


def model_inputs(packages: Sequence[Any], maps: GMMaps) -> dict[str, np.ndarray]:
    """Every model input the packages need, each made once: input key -> 1 x C x ... float32.

    ``gm_crop2`` (the BrainImageNet crop) is made here exactly as before: the maps times the model
    input mask, cropped, stacked (GMD, GMV). Other kinds come from ``bids_app.model_input.make_input``
    (kind, maps, the card's ``input`` section); an installation without it refuses them with
    :class:`~bids_app.errors.ModelPackageError` naming the package.
    """
    out: dict[str, np.ndarray] = {}
    for package in packages:
        key = _input_key(package)
        if key in out:
            continue
        kind = getattr(package, "input_kind", "gm_crop2")
        if kind == "gm_crop2":
            mask, _ = model_input_mask()
            out[key] = make_model_input(maps.gmd, maps.gmv, mask=mask)[None]
            continue
        try:
            from .model_input import make_input  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise ModelPackageError(
                f"{package.path}: model {package.name} reads the {kind} input, which this installation "
                "cannot make (bids_app.model_input is missing)"
            ) from None
        out[key] = np.asarray(make_input(kind, maps, dict(package.input)), dtype=np.float32)[None]
    return out


def _remove_unit_predictions(output_dir: Path, unit: T1wUnit) -> None:
    """A T1w that now gets no prediction must not keep one from an earlier run (a stale result)."""
    table = predictions_path(output_dir, unit)
    for path in (table, table.with_suffix(".json")):
        path.unlink(missing_ok=True)


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
    Exceptions propagate: :func:`bids_app.workflows.run_unit` turns them into failure records; pass
    your own ``result`` to see which ``step`` was running when one was raised.

    Refuses (:class:`~bids_app.errors.InputDataError`, exit 65), without writing a prediction, a
    T1w that is not a head and maps that fail :data:`HARD_QC_LIMITS`; the maps of the latter are
    still written, for inspection.
    """
    from ._io import safe_mkdir
    from .models import predict as _predict
    from .preproc.inputs import check_t1w_header
    from .preproc.inputs import load_t1w as _load_t1w
    from .qc import compute_qc as _compute_qc

    load_t1w = load_t1w or _load_t1w
    compute_qc = compute_qc or _compute_qc
    predict = predict or _predict
    t0 = time.perf_counter()
    result = result if result is not None else UnitResult(unit=unit, ok=False)

    result.step = "work directory"
    work = safe_mkdir(options.work_dir, unit.prefix)
    remove_stale_partials(map_path(options.output_dir, unit, "GMD").parent, unit_output_names(unit))

    result.step = "input"
    reuses = reuses_existing_maps(backend)
    try:
        if reuses:  # the maps stand for this T1w: it must at least be a readable 3D NIfTI image
            check_t1w_header(unit.path)
        else:
            load_t1w(unit.path)  # clear errors for unusable files (and non-heads) before any long step
        key = None if reuses else cache_key(backend, unit)
    except (InputDataError, NoInputError):
        _remove_unit_predictions(options.output_dir, unit)
        raise

    result.step = f"preprocessing ({backend.name})"
    _log.info("%s: %s", unit.prefix, result.step)
    maps = cached_preprocessing(backend, unit, work, key)

    result.step = "qc"
    qc = compute_qc(maps)
    if not qc.passed:
        _log.warning("%s: QC flags %s", unit.prefix, ", ".join(qc.flags))
    hard = hard_qc_failures(qc)

    result.step = "writing maps"
    fingerprint: dict[str, Any] = key if key is not None else {
        "backend": backend.name, "backend_version": backend.version(),
        "maps": {k: maps.provenance.get(k) for k in ("GMDFile", "GMDSha256", "GMVFile", "GMVSha256")},
    }
    written: list[Path] = []
    try:
        for kind, data in (("GMD", maps.gmd), ("GMV", maps.gmv)):
            path = map_path(options.output_dir, unit, kind)
            write_map(path, data, map_sidecar(unit, options.bids_dir, maps, qc, kind, fingerprint))
            written.append(path)
    except BaseException:  # never a GMD without its GMV (e.g. the disk filled up in between)
        for kind in ("GMD", "GMV"):
            path = map_path(options.output_dir, unit, kind)
            for stale in (path, path.with_name(path.name.replace(".nii.gz", ".json"))):
                stale.unlink(missing_ok=True)
        raise
    result.outputs.extend(written)

    result.step = "qc gate"
    if hard:
        _remove_unit_predictions(options.output_dir, unit)
        raise InputDataError(
            f"{unit.path}: the GM maps fail hard QC limits ({'; '.join(hard)}): registration or segmentation "
            "failed, or the image is not a brain; no prediction is written (the maps are kept for inspection)"
        )

    result.step = "model inputs"
    inputs = model_inputs(packages, maps)

    result.step = "models"
    scored = []
    for package in packages:
        _log.info("%s: scoring with %s (%s, %d fold(s))", unit.prefix, package.name, package.task, len(package.sha256))
        scored.append((package, predict(package, inputs[_input_key(package)], device=options.device)))

    result.step = "writing predictions"
    rows = prediction_rows(unit, options.bids_dir, maps, qc, scored, ad_threshold=options.ad_threshold)
    result.outputs.append(write_predictions(predictions_path(options.output_dir, unit), rows))

    if options.explain is not None and options.explain.methods:
        result.step = "explanations"
        from .explain import write_explanations

        crop = inputs.get(_CROP_KEY)
        if crop is None:  # explanation maps are made on the BrainImageNet crop only
            _log.info("%s: no explanation maps: no applied model reads the gm_crop2 input", unit.prefix)
        else:
            result.outputs.extend(
                write_explanations(options.output_dir, unit, packages, crop[0], options.explain,
                                   device=options.device, cache_dir=work / "explain")
            )

    if options.write_report:
        result.step = "report"
        try:
            from .report import write_participant_report
        except ImportError:  # reports are optional for library users without matplotlib
            write_participant_report = None  # type: ignore[assignment]
        if write_participant_report is not None:
            result.outputs.append(write_participant_report(options.output_dir, unit))

    if options.clean_scratch:
        result.step = "cleaning scratch"
        _clean_scratch(work)

    result.step = "done"
    result.ok = True
    result.seconds = time.perf_counter() - t0
    return result


def _clean_scratch(work: Path) -> None:
    """Remove the unit's scratch once its outputs are written; keep the small finished-maps cache
    (two maps and their key, about 3 MB) so that a rerun with the same inputs skips preprocessing."""
    import shutil

    for child in list(work.iterdir()) if work.is_dir() else []:
        if child.name in ("maps", ".lock"):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)

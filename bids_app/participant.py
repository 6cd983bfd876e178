"""One T1w through the stages: input check, preprocessing, QC gate, model input, models, outputs.

:func:`process_unit` is the whole participant-level work for one :class:`~bids_app.types.T1wUnit`.
It never touches other units' files, writes every output atomically, and caches the preprocessing
result in the unit's private work directory, so a run that was killed resumes where it stopped.
The cache is valid only for the same inputs and parameters (:func:`cache_key`: the T1w's size,
mtime and sha256, the backend, its version and parameters, and the extra maps asked of it, e.g. the
T1w in MNI space for SFCN); anything else recomputes and says why. A cache that holds more maps than
a run needs is reused; one that lacks a map the run needs is not.
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
    remove_t1w_mni,
    t1w_mni_path,
    t1w_mni_sidecar,
    t1w_mni_space,
    unit_output_names,
    write_map,
    write_predictions,
    write_t1w_mni,
)
from .errors import InputDataError, NoInputError
from .grid import MNI1MM_AFFINE, SPM_AFFINE, make_model_input, model_input_mask
from .model_input import make_input
from .types import GMMaps, PreprocBackend, QCResult, T1wUnit, reuses_existing_maps

__all__ = [
    "UnitOptions",
    "UnitResult",
    "HARD_QC_LIMITS",
    "process_unit",
    "prediction_rows",
    "cache_key",
    "extra_outputs",
    "cached_preprocessing",
    "hard_qc_failures",
    "model_inputs",
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
#: cached only when the backend made it (``make_t1w_mni``): the T1w in MNI152 1 mm space
_T1W_MNI_FILE = "t1w_mni.nii.gz"
#: how the cache key describes a file: enough to notice a replaced file even with an equal mtime
_FILE_KEYS = ("path", "size", "mtime_ns", "sha256")


def _file_fingerprint(path: Path) -> dict[str, Any]:
    st = Path(path).stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}


#: backend attributes that do not change the maps (so a change must not invalidate the cache); the extra
#: maps asked for (``make_t1w_mni``) enter the key as ``outputs`` instead (see :func:`extra_outputs`)
_NOT_PARAMETERS = ("nprocs", "env", "make_t1w_mni")


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


def extra_outputs(backend: PreprocBackend) -> list[str]:
    """The maps beyond GMD and GMV that ``backend`` is asked to make (``t1w_mni`` with ``make_t1w_mni``)."""
    return ["t1w_mni"] if getattr(backend, "make_t1w_mni", False) else []


def cache_key(backend: PreprocBackend, unit: T1wUnit) -> dict[str, Any]:
    """What the finished maps depend on: the T1w's content, the backend, its version and parameters,
    and the extra maps it is asked for (``outputs``)."""
    return {
        "t1w": _file_fingerprint(unit.path),
        "backend": backend.name,
        "backend_version": backend.version(),
        "parameters": _backend_parameters(backend),
        "outputs": extra_outputs(backend),
    }


def _why_stale(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    if old.get("t1w", {}).get("sha256") != new["t1w"]["sha256"] or old.get("t1w", {}).get("size") != new["t1w"]["size"]:
        return f"the T1w {new['t1w']['path']} changed (sha256 {new['t1w']['sha256'][:12]}...)"
    if old.get("t1w", {}).get("path") != new["t1w"]["path"]:
        return f"the T1w is now {new['t1w']['path']}"
    for key in ("backend", "backend_version", "parameters"):
        if old.get(key) != new[key]:
            return f"the {key.replace('_', ' ')} changed ({old.get(key)!r} -> {new[key]!r})"
    missing = [name for name in new.get("outputs", []) if name not in old.get("outputs", [])]
    if missing:  # a cache with more maps than needed is fine; one without a needed map is not
        return f"a model package needs {', '.join(missing)}, which the cached preprocessing did not make"
    return None


def _load_cache(cache: Path, outputs: Sequence[str] = ()) -> GMMaps:
    """The cached maps; of the extra maps only those in ``outputs`` (what this run asks for)."""
    import nibabel as nib

    meta = json.loads((cache / "maps.json").read_text())
    t1w_mni = None
    if "t1w_mni" in outputs:
        t1w_mni = np.asarray(nib.load(cache / _T1W_MNI_FILE).dataobj, dtype=np.float32)
    return GMMaps(
        gmd=np.asarray(nib.load(cache / "gmd.nii.gz").dataobj, dtype=np.float32),
        gmv=np.asarray(nib.load(cache / "gmv.nii.gz").dataobj, dtype=np.float32),
        backend=meta["backend"],
        backend_version=meta["backend_version"],
        provenance=meta["provenance"],
        qc=meta["qc"],
        source_files=tuple(Path(p) for p in meta["source_files"]),
        t1w_mni=t1w_mni,
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
                maps = _load_cache(cache, key.get("outputs", ()))
                _log.info("%s: reusing finished preprocessing from %s (same T1w, backend and parameters)",
                          unit.prefix, cache)
                return maps
            except (OSError, ValueError, KeyError) as exc:
                reason = f"the cache could not be read ({exc})"
        _log.info("%s: recomputing the preprocessing: %s", unit.prefix, reason)
    maps = backend.run(unit, work_dir)
    # the key goes first: a kill while the maps are replaced must leave no key that vouches for them
    (cache / "maps.json").unlink(missing_ok=True)
    images = [("gmd.nii.gz", maps.gmd, SPM_AFFINE), ("gmv.nii.gz", maps.gmv, SPM_AFFINE)]
    if maps.t1w_mni is not None:
        images.append((_T1W_MNI_FILE, maps.t1w_mni, MNI1MM_AFFINE))
    else:  # never leave an earlier T1w's MNI image beside these maps
        (cache / _T1W_MNI_FILE).unlink(missing_ok=True)
    for name, data, affine in images:
        with atomic_path(cache / name, suffix=".nii.gz") as tmp:
            nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), tmp)
    write_json(
        cache / "maps.json",
        {
            "backend": maps.backend,
            "backend_version": maps.backend_version,
            "provenance": dict(maps.provenance),
            "qc": dict(maps.qc),
            "source_files": [str(p) for p in maps.source_files],
            "source": str(unit.path),
            "key": {**key, "outputs": ["t1w_mni"] if maps.t1w_mni is not None else []},
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


_CROP_KEY = json.dumps({"kind": "gm_crop2"}, sort_keys=True)


def model_inputs(packages: Sequence[Any], maps: GMMaps) -> dict[str, np.ndarray]:
    """Every model input the packages need, each made once: input key -> 1 x C x ... float32.

    ``gm_crop2`` (the BrainImageNet crop) is made here exactly as before: the maps times the model
    input mask, cropped, stacked (GMD, GMV). Other kinds come from ``bids_app.model_input.make_input``
    (kind, maps, the card's ``input`` section).
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
    if maps.t1w_mni is not None:  # made only when a package reads it (input kind t1w_mni1mm)
        path = t1w_mni_path(options.output_dir, unit, t1w_mni_space(maps))
        result.outputs.append(write_t1w_mni(path, maps.t1w_mni, t1w_mni_sidecar(unit, options.bids_dir, maps,
                                                                                  fingerprint)))
        remove_t1w_mni(options.output_dir, unit, keep=path)
    else:
        remove_t1w_mni(options.output_dir, unit)

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

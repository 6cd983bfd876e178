"""The two analysis levels as library functions (the CLI is a thin layer over these).

:func:`run_participant_level` validates the input, finds the T1w images, loads the model packages
once per process, runs every T1w through :func:`bids_app.participant.process_unit` -- several at
once in worker processes when the CPUs allow (:mod:`bids_app.parallel`) --, records failures per
T1w while the others go on, and ends with a summary. :func:`run_group_level` reads only what the
participant level wrote (see :mod:`bids_app.group`).
"""

from __future__ import annotations

import functools
import logging
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from ._io import write_json, write_text
from .derivatives import failure_path, init_dataset, log_path
from .errors import (
    EXIT_FAILURE,
    EXIT_OK,
    ModelPackageError,
    NoInputError,
    NoMatchError,
    OutputError,
    UsageError,
    VBMPredictError,
)
from .parallel import FULL_SIZE_MODELS_GB, UNIT_MEMORY_GB, plan_resources, run_units
from .participant import UnitOptions, UnitResult, process_unit
from .types import T1wUnit

__all__ = [
    "DEMO_MODELS",
    "RunSummary",
    "check_paths",
    "resolve_models_dir",
    "run_participant_level",
    "run_group_level",
]

_log = logging.getLogger("bids_app.workflows")

#: synthetic-data demo models shipped inside the package (``--models demo``)
DEMO_MODELS = Path(__file__).parent / "data" / "demo_models"
#: where the container puts the converted published models
MODELS_ENV = "VBM_PREDICT_MODELS"


@dataclass
class RunSummary:
    """What a participant-level run did; ``exit_code`` is what the CLI returns."""

    output_dir: Path
    results: list[UnitResult] = field(default_factory=list)

    @property
    def failed(self) -> list[UnitResult]:
        return [r for r in self.results if not r.ok]

    @property
    def succeeded(self) -> list[UnitResult]:
        return [r for r in self.results if r.ok]

    @property
    def exit_code(self) -> int:
        codes = {r.exit_code for r in self.failed}
        if not codes:
            return EXIT_OK
        return codes.pop() if len(codes) == 1 else EXIT_FAILURE

    def text(self) -> str:
        lines = [f"vbm-predict {__version__}: {len(self.succeeded)} of {len(self.results)} T1w image(s) succeeded"]
        for r in self.results:
            status = f"ok ({r.seconds:.1f} s)" if r.ok else f"FAILED at {r.step}: {r.error}"
            lines.append(f"  {r.unit.prefix}: {status}")
        lines.append(f"Outputs: {self.output_dir}")
        if self.failed:
            lines.append(f"Failure records: {self.output_dir}/sub-*/**/*_failure.json; logs: {self.output_dir / 'logs'}")
        return "\n".join(lines)


def check_paths(bids_dir: Path, output_dir: Path, work_dir: Path | None) -> None:
    """Refuse output or work directories inside the input dataset (it is never written to)."""
    bids = Path(bids_dir).resolve()
    for what, path in (("output directory", output_dir), ("work directory", work_dir)):
        if path is None:
            continue
        p = Path(path).resolve()
        if p == bids or bids in p.parents:
            raise UsageError(
                f"the {what} {p} is inside the BIDS input {bids}; the input is never written to. "
                f"Choose a {what} outside it."
            )


def resolve_models_dir(models: str | Path | None) -> Path:
    """``--models``: a directory of packages, ``demo`` for the synthetic demo models, or the
    container's converted published models (``$VBM_PREDICT_MODELS``) when omitted."""
    if models is None:
        env = os.environ.get(MODELS_ENV)
        if not env:
            raise NoInputError(
                "no model packages: pass --models DIR (directories with model.json), or --models demo "
                "for the demo models trained on synthetic data (not for real use); the container "
                f"sets ${MODELS_ENV} to the converted published models"
            )
        models = env
    if str(models) == "demo":
        return DEMO_MODELS
    path = Path(models)
    if not path.is_dir():
        raise NoInputError(f"--models {path}: no such directory")
    return path


def _load_packages(models_dir: Path, device: str, *, quiet: bool = False) -> list[Any]:
    from .models import find_packages, load_package

    found = find_packages(models_dir)
    if not found:
        raise ModelPackageError(f"no model package (a directory with model.json) in {models_dir}")
    packages = [load_package(p, device="cpu") for p in found]
    for p in [] if quiet else packages:
        _log.info("model %s %s (%s, %d fold(s)) from %s", p.name, p.version, p.task, len(p.sha256), p.path)
        if p.trained_on_synthetic:
            _log.warning("model %s was trained on synthetic data only: its predictions mean nothing for real data", p.name)
    return packages


def _record_failure(output_dir: Path, result: UnitResult, exc: BaseException, log_file: Path) -> None:
    result.ok = False
    result.error = f"{type(exc).__name__}: {exc}"
    result.exit_code = exc.exit_code if isinstance(exc, VBMPredictError) else EXIT_FAILURE
    write_json(
        failure_path(output_dir, result.unit),
        {
            "participant_id": f"sub-{result.unit.subject}",
            "session_id": f"ses-{result.unit.session}" if result.unit.session else None,
            "source_file": str(result.unit.path),
            "step": result.step,
            "error_type": type(exc).__name__,
            "message": str(exc),
            "exit_code": result.exit_code,
            "log": str(log_file),
            "vbm_predict_version": __version__,
        },
    )


class _UnitLog:
    """Collect the unit's log records; written atomically to ``logs/<prefix>.log`` at the end."""

    def __init__(self, final: Path):
        self.final = final
        self.lines: list[str] = []
        self.handler = logging.Handler(level=logging.DEBUG)
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.handler.emit = lambda record: self.lines.append(fmt.format(record))  # type: ignore[method-assign]

    def __enter__(self) -> "_UnitLog":
        logging.getLogger("bids_app").addHandler(self.handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger("bids_app").removeHandler(self.handler)
        write_text(self.final, "\n".join(self.lines) + "\n")


def select_t1w(units: Sequence[T1wUnit], bids_dir: Path, t1w_files: Sequence[str | Path]) -> list[T1wUnit]:
    """The units whose T1w is one of ``t1w_files`` (paths relative to ``bids_dir``, or absolute);
    used by SLURM tasks that process one T1w each. A file that is not a selected T1w is refused."""
    wanted = {(bids_dir / f).resolve() if not Path(f).is_absolute() else Path(f).resolve() for f in t1w_files}
    chosen = [u for u in units if Path(u.path).resolve() in wanted]
    missing = wanted - {Path(u.path).resolve() for u in chosen}
    if missing:
        raise NoMatchError(
            "--t1w: not a T1w of the selected participants / sessions: " + ", ".join(sorted(map(str, missing)))
        )
    return chosen


def unit_memory_gb(backend_name: str, packages: Sequence[Any]) -> float:
    """Peak memory of one T1w (GB) for planning: the backend's measured figure, or the full-size
    models' when any package holds full-size networks (more than 50 MB of weights)."""
    figure = UNIT_MEMORY_GB.get(backend_name, max(UNIT_MEMORY_GB.values()))
    weights = sum(Path(f).stat().st_size for p in packages for f in Path(p.path).glob("*.safetensors"))
    return max(figure, FULL_SIZE_MODELS_GB) if weights > 50e6 else figure


def run_participant_level(
    bids_dir: Path,
    output_dir: Path,
    *,
    participant_labels: Sequence[str] = (),
    session_labels: Sequence[str] = (),
    work_dir: Path | None = None,
    preproc: str = "auto",
    derivatives_dir: Path | None = None,
    models: str | Path | None = None,
    device: str = "auto",
    ad_threshold: float = 0.5,
    nprocs: int | None = None,
    omp_nthreads: int | None = None,
    mem_gb: float | None = None,
    t1w_files: Sequence[str | Path] = (),
    skip_validation: bool = False,
    dartel_template: Path | None = None,
    write_report: bool = True,
) -> RunSummary:
    """Process every selected T1w; failures are recorded per T1w and the others go on.

    ``nprocs`` (CPUs of the whole run, default: all usable), ``omp_nthreads`` (threads of one T1w)
    and ``mem_gb`` (memory budget) decide how many T1w run at once (:mod:`bids_app.parallel`);
    ``t1w_files`` restricts the run to those T1w files (relative to ``bids_dir``).

    Raises :class:`~bids_app.errors.VBMPredictError` subclasses for problems that stop the whole
    run (bad arguments, invalid dataset, no match, no models); per-T1w problems end up in the
    returned :class:`RunSummary` and in ``*_failure.json`` records.
    """
    from .discovery import discover_units
    from .preproc import get_backend, resolve_backend_name

    bids_dir = Path(bids_dir).resolve()
    output_dir = Path(output_dir).resolve()
    if not 0.0 < ad_threshold < 1.0:
        raise UsageError(f"--ad-threshold must lie strictly between 0 and 1; got {ad_threshold}")
    work_dir = Path(work_dir).resolve() if work_dir else output_dir.parent / f".{output_dir.name}-work"
    check_paths(bids_dir, output_dir, work_dir)
    if not skip_validation:
        from .validation import validate_dataset

        if not (bids_dir / "dataset_description.json").is_file():
            discover_units(bids_dir)  # raises the friendly missing-description error
        validate_dataset(bids_dir)
    units = discover_units(bids_dir, participant_labels=participant_labels, session_labels=session_labels)
    if t1w_files:
        units = select_t1w(units, bids_dir, t1w_files)
    models_dir = resolve_models_dir(models)
    packages = _load_packages(models_dir, device)
    backend_name = resolve_backend_name(preproc, derivatives_dir=derivatives_dir)
    plan = plan_resources(len(units), nprocs=nprocs, omp_nthreads=omp_nthreads, mem_gb=mem_gb,
                          unit_mem_gb=unit_memory_gb(backend_name, packages),
                          prefer_threads=backend_name == "derivatives")
    backend = get_backend(preproc, derivatives_dir=derivatives_dir, nprocs=plan.omp_nthreads,
                          dartel_template=dartel_template)
    _log.info("preprocessing backend: %s (%s)", backend.name, backend.version())
    try:
        init_dataset(output_dir, bids_dir, container=_container_info())
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {work_dir}: {exc}") from exc

    options = UnitOptions(bids_dir=bids_dir, output_dir=output_dir, work_dir=work_dir,
                          ad_threshold=ad_threshold, device=device, write_report=write_report)
    context = _UnitContext(backend=backend, packages=tuple(packages), options=options)
    setup = functools.partial(_worker_context, preproc=backend.name, derivatives_dir=derivatives_dir,
                              dartel_template=dartel_template, models_dir=models_dir, device=device,
                              omp_nthreads=plan.omp_nthreads, options=options)
    if plan.workers > 1:
        del context, packages  # every worker loads its own copy; do not hold one here as well
        context = None
    results = run_units(units, _process_one, plan=plan, setup=setup, context=context,
                        lost=functools.partial(_lost_unit, output_dir=output_dir), label=lambda u: u.prefix)
    return RunSummary(output_dir=output_dir, results=list(results))


@dataclass(frozen=True)
class _UnitContext:
    """What every T1w of a run shares: built once per process (the run's, or each worker's)."""

    backend: Any
    packages: tuple[Any, ...]
    options: UnitOptions


def _worker_context(*, preproc: str, derivatives_dir: Path | None, dartel_template: Path | None, models_dir: Path,
                    device: str, omp_nthreads: int, options: UnitOptions) -> _UnitContext:
    """A worker's context: the backend with its share of threads and its own model packages."""
    from .preproc import get_backend

    backend = get_backend(preproc, derivatives_dir=derivatives_dir, nprocs=omp_nthreads, dartel_template=dartel_template)
    return _UnitContext(backend=backend, packages=tuple(_load_packages(models_dir, device, quiet=True)), options=options)


def _process_one(unit: T1wUnit, context: _UnitContext) -> UnitResult:
    """One T1w, start to end, never raising: its log file, its outputs or its failure record."""
    output_dir = context.options.output_dir
    log_file = log_path(output_dir, unit)
    with _UnitLog(log_file):
        result = UnitResult(unit=unit, ok=False)
        try:
            process_unit(unit, context.backend, context.packages, context.options, result=result)
            stale = failure_path(output_dir, unit)
            if stale.exists():  # an earlier failed attempt of this unit now succeeded
                stale.unlink()
        except Exception as exc:  # one T1w failing must not stop the others
            _log.error("%s failed at %s: %s\n%s", unit.prefix, result.step, exc, traceback.format_exc())
            _record_failure(output_dir, result, exc, log_file)
    return result


def _lost_unit(unit: T1wUnit, reason: str, *, output_dir: Path) -> UnitResult:
    """The result and failure record of a T1w whose worker process died (no exception to record)."""
    result = UnitResult(unit=unit, ok=False, step="worker process")
    _record_failure(output_dir, result, RuntimeError(reason), log_path(output_dir, unit))
    return result


def _container_info() -> dict[str, str] | None:
    if os.path.exists("/.dockerenv") or os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        kind = "apptainer" if (os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")) else "docker"
        return {"Type": kind, "Tag": os.environ.get("VBM_PREDICT_IMAGE", f"vbm-predict:{__version__}")}
    return None


def run_group_level(bids_dir: Path, output_dir: Path) -> Any:
    """Group level: reads only ``output_dir`` (and labels from the input's participants.tsv)."""
    from .group import run_group_level as _run

    return _run(Path(bids_dir), Path(output_dir))

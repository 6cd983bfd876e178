"""The two analysis levels as library functions (the CLI is a thin layer over these).

:func:`run_participant_level` checks every path and option first (nothing is written before that),
validates the input, finds the T1w images, loads the model packages once, runs every T1w through
:func:`run_unit`, and ends with a summary. :func:`run_unit` processes one T1w and never raises:
any failure, expected or not, becomes that T1w's failure record (step, error, log) and an exit code,
and the other T1w go on. It is a module-level function of plain, picklable arguments, so a process
pool can call it. :func:`run_group_level` checks its paths the same way, then reads only what the
participant level wrote (see :mod:`bids_app.group`).

Exit codes of failures nobody planned for: :data:`~bids_app.errors.EXIT_CANT_CREATE` (73) for a
full disk or quota, :data:`~bids_app.errors.EXIT_NO_INPUT` (66) for a permission problem,
:data:`~bids_app.errors.EXIT_SOFTWARE` (70) for anything else (see docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from . import __version__
from ._io import safe_join, safe_mkdir, write_json, write_text
from .derivatives import check_output_dataset, failure_path, failure_record, init_dataset, log_path, record_source
from .errors import (
    EXIT_CANT_CREATE,
    EXIT_FAILURE,
    EXIT_NO_INPUT,
    EXIT_OK,
    EXIT_SOFTWARE,
    NoInputError,
    NoMatchError,
    OutputError,
    UsageError,
    VBMPredictError,
)
from .parallel import FULL_SIZE_MODELS_GB, UNIT_MEMORY_GB, plan_resources, run_units
from .participant import UnitOptions, UnitResult, process_unit
from .types import DeviceName, PreprocBackend, PreprocName, T1wUnit, backend_provides

__all__ = [
    "DEMO_MODELS",
    "WORK_DIR_NAME",
    "RunSummary",
    "check_paths",
    "check_input_kinds",
    "demo_packages_for",
    "package_input_kind",
    "default_work_dir",
    "exit_code_for",
    "resolve_models_dir",
    "run_unit",
    "run_participant_level",
    "run_group_level",
]

_log = logging.getLogger("bids_app.workflows")

#: synthetic-data demo models shipped inside the package (``--models demo``)
DEMO_MODELS = Path(__file__).parent / "data" / "demo_models"
#: where the container puts the converted published models
MODELS_ENV = "VBM_PREDICT_MODELS"
#: the default work dir's name inside the output dir (hidden: the BIDS validator skips dot-folders)
WORK_DIR_NAME = ".work"


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
            lines.append(f"Failure records: {self.output_dir}/sub-*/**/*_failure.json; "
                         f"logs: {self.output_dir / 'logs'}")
        return "\n".join(lines)


def default_work_dir(output_dir: Path) -> Path:
    """``<output_dir>/.work``: writable wherever the outputs are (read-only containers, clusters)."""
    return Path(output_dir) / WORK_DIR_NAME


def check_paths(bids_dir: Path, output_dir: Path, work_dir: Path | None) -> None:
    """Refuse output or work directories inside the input dataset (it is never written to).

    Paths are compared after resolving symlinks, so a link that leads into the input is refused
    too. Raises :class:`UsageError` (exit 64).
    """
    bids = Path(bids_dir).resolve()
    for what, path in (("output directory", output_dir), ("work directory", work_dir)):
        if path is None:
            continue
        p = Path(path).resolve()
        if p == bids or bids in p.parents:
            raise UsageError(
                f"the {what} {Path(path)} is inside the BIDS input {bids}"
                + (f" (it resolves to {p})" if p != Path(path).absolute() else "")
                + f"; the input is never written to. Choose a {what} outside it."
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
    """Every package in ``models_dir``, verified and loaded on ``device``; copies applied once."""
    from .models.package import find_packages, load_package, unique_packages

    found = find_packages(models_dir)
    if not found:
        raise NoInputError(f"no model package (a directory with model.json) in {models_dir}")
    packages = unique_packages([load_package(p, device=device) for p in found])
    for p in [] if quiet else packages:
        _log.info("model %s %s (%s, %d fold(s)) from %s", p.name, p.version, p.task, len(p.sha256), p.path)
        if p.trained_on_synthetic:
            _log.warning("model %s was trained on synthetic data only: its predictions mean nothing for real data",
                         p.name)
    return packages


def package_input_kind(package: Any) -> str:
    """The input kind a loaded package reads: its card's ``input.kind`` (``gm_crop2`` for v1 cards)."""
    from .model_input import input_kind

    card = getattr(package, "card", None) or {}
    return input_kind(card.get("input", {}))


def demo_packages_for(packages: Sequence[Any], backend: PreprocBackend) -> list[Any]:
    """``--models demo``: the bundled demo packages whose input ``backend`` can make.

    The demo bundle holds one package per family, among them SFCN, which reads the T1w in MNI space;
    a ``--preproc derivatives`` folder of GM maps alone cannot feed it. For the bundle (not for a
    user's ``--models DIR``, where every package is asked for and a missing input is refused by
    :func:`check_input_kinds`) the others run and the left-out ones are named in the log.
    """
    provides = backend_provides(backend)
    kept = [p for p in packages if package_input_kind(p) in provides]
    for p in packages:
        if p not in kept:
            _log.warning("demo model %s left out: it reads input kind %r, which the %r backend cannot make here",
                         getattr(p, "name", "?"), package_input_kind(p), backend.name)
    return kept or list(packages)  # none usable: check_input_kinds explains


def check_input_kinds(packages: Sequence[Any], backend: PreprocBackend) -> None:
    """Refuse (:class:`UsageError`, exit 64) packages whose input kind ``backend`` cannot make.

    Called once the packages are loaded and the backend chosen, before anything is written or
    preprocessed: a run that cannot feed one of its packages stops at once instead of after hours of
    preprocessing. The message names each package, its kind and the backend, and what would work.
    """
    provides = backend_provides(backend)
    refused = [(p, kind) for p in packages if (kind := package_input_kind(p)) not in provides]
    if not refused:
        return
    listed = "; ".join(f"model package {getattr(p, 'name', '?')} ({getattr(p, 'path', '?')}) reads input kind "
                       f"{kind!r}" for p, kind in refused)
    hint = "use --preproc ants (it makes every input kind) or leave these packages out of --models"
    if backend.name == "derivatives":
        hint = ("the derivatives backend provides t1w_mni1mm only when the --derivatives folder holds T1w "
                "images in MNI space ('sub-*/[ses-*/]anat/*_space-MNI152<...>[_res-1]_desc-preproc_T1w.nii.gz'); "
                + hint)
    raise UsageError(
        f"{listed}, which the {backend.name!r} preprocessing backend cannot make (it makes "
        f"{', '.join(sorted(provides))}); {hint}. Nothing was preprocessed or written."
    )


def exit_code_for(exc: BaseException) -> int:
    """The exit code a failure stands for: a domain error's own, 73 for a full disk, 66 for a
    permission problem, 70 for anything unexpected."""
    if isinstance(exc, VBMPredictError):
        return exc.exit_code
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):
            return EXIT_CANT_CREATE
        if exc.errno in (errno.EACCES, errno.EPERM):
            return EXIT_NO_INPUT
    return EXIT_SOFTWARE


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on the device{f' writing {exc.filename}' if exc.filename else ''} ({exc})"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{f' on {exc.filename}' if exc.filename else ''} ({exc})"
    return str(exc)


def _record_failure(output_dir: Path, result: UnitResult, exc: BaseException, log_file: Path | None) -> None:
    """Fill ``result`` and write the failure record; never raises.

    The record goes beside the unit's outputs; when that folder cannot be written (a planted
    symlink, a full disk), to ``logs/<prefix>_failure.json``; when that fails too, the record is
    logged (and so printed) instead.
    """
    result.ok = False
    result.error = f"{type(exc).__name__}: {_describe(exc)}"
    result.exit_code = exit_code_for(exc)
    record = failure_record(result.unit, step=result.step, error_type=type(exc).__name__,
                            message=_describe(exc), exit_code=result.exit_code, log=log_file)
    attempts = [lambda: failure_path(output_dir, result.unit),
                lambda: safe_join(output_dir, "logs", f"{result.unit.prefix}_failure.json")]
    for where in attempts:
        try:
            write_json(where(), record)
            return
        except Exception as write_exc:  # the record must never take the run down
            _log.error("%s: could not write the failure record: %s", result.unit.prefix, write_exc)
    _log.error("%s: failure record (not written): %s", result.unit.prefix, record)


class _UnitLog:
    """Collect the unit's log records; written atomically to ``logs/<prefix>.log`` at the end.

    Writing the log never raises: a log that cannot be written (full disk, planted symlink) is
    reported on the console instead.
    """

    def __init__(self, output_dir: Path, unit: T1wUnit):
        self.unit = unit
        try:
            self.final: Path | None = log_path(output_dir, unit)
        except Exception as exc:
            _log.error("%s: no log file: %s", unit.prefix, exc)
            self.final = None
        self.lines: list[str] = []
        self.handler = logging.Handler(level=logging.DEBUG)
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.handler.emit = lambda record: self.lines.append(fmt.format(record))  # type: ignore[method-assign]

    def note(self, text: str) -> None:
        """Add ``text`` to this unit's log only (e.g. a traceback: not for the console)."""
        self.lines.append(text)

    def __enter__(self) -> _UnitLog:
        logging.getLogger("bids_app").addHandler(self.handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger("bids_app").removeHandler(self.handler)
        if self.final is None:
            return
        try:
            write_text(self.final, "\n".join(self.lines) + "\n")
        except Exception as write_exc:
            _log.error("%s: could not write the log %s: %s", self.unit.prefix, self.final, write_exc)


@contextlib.contextmanager
def _unit_lock(work: Path, unit: T1wUnit) -> Iterator[None]:
    """One job at a time per T1w: a second job on the same T1w waits, then finds the cache."""
    import fcntl

    try:
        fh = open(work / ".lock", "a+")  # noqa: SIM115 - held open for the lock's lifetime, closed below
    except OSError as exc:
        _log.warning("%s: no lock file in %s (%s); go on without", unit.prefix, work, exc.strerror)
        yield
        return
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log.info("%s: another job is processing this T1w; waiting for it", unit.prefix)
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. ENOLCK on a file system without locks
            _log.warning("%s: cannot lock %s (%s); go on without", unit.prefix, work, exc.strerror)
        yield
    finally:
        fh.close()


def run_unit(unit: T1wUnit, backend: PreprocBackend, packages: Sequence[Any], options: UnitOptions) -> UnitResult:
    """Process one T1w and return its result; never raises (for loops and process pools alike).

    Every exception becomes a failure record with the step that was running, the error and the log
    path, and the result's ``exit_code`` (:func:`exit_code_for`). A stale failure record of an
    earlier attempt is removed when this one succeeds. Expected errors (the app's own) are logged
    as one clear line; unexpected ones with their traceback in the unit's log.
    """
    result = UnitResult(unit=unit, ok=False)
    try:
        unit_log: _UnitLog | contextlib.nullcontext[None] = _UnitLog(options.output_dir, unit)
    except Exception:  # pragma: no cover - building it only computes a path
        unit_log = contextlib.nullcontext()
    log_file = getattr(unit_log, "final", None)
    with unit_log:
        try:
            result.step = "work directory"
            work = safe_mkdir(options.work_dir, unit.prefix)
            with _unit_lock(work, unit):
                process_unit(unit, backend, packages, options, result=result)
            for stale in (failure_path(options.output_dir, unit),  # an earlier failed attempt now succeeded
                          safe_join(options.output_dir, "logs", f"{unit.prefix}_failure.json")):
                stale.unlink(missing_ok=True)
        except Exception as exc:  # one T1w failing must not stop the others
            if isinstance(exc, VBMPredictError):
                _log.error("%s failed at %s: %s", unit.prefix, result.step, exc)
            else:
                _log.error("%s failed at %s with an unexpected %s: %s (traceback in %s)", unit.prefix,
                           result.step, type(exc).__name__, _describe(exc), log_file)
            if isinstance(unit_log, _UnitLog):  # the traceback goes to the unit's log, not the console
                unit_log.note(traceback.format_exc())
            _record_failure(options.output_dir, result, exc, log_file)
    return result


def _as_domain_error(exc: Exception, what: str) -> VBMPredictError:
    """A run-level failure nobody planned for, as a domain error with its exit code (no traceback)."""
    code = exit_code_for(exc)
    message = f"{what}: {type(exc).__name__}: {_describe(exc)}"
    if code == EXIT_CANT_CREATE:
        return OutputError(message)
    if code == EXIT_NO_INPUT:
        return NoInputError(message)
    err = VBMPredictError(f"{message} (an internal error; run with -vv for the traceback and report it)")
    err.exit_code = EXIT_SOFTWARE
    return err


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
    bids_filters: Mapping[str, Any] | None = None,
    work_dir: Path | None = None,
    preproc: PreprocName = "auto",
    derivatives_dir: Path | None = None,
    models: str | Path | None = None,
    device: DeviceName = "auto",
    ad_threshold: float = 0.5,
    nprocs: int | None = None,
    omp_nthreads: int | None = None,
    mem_gb: float | None = None,
    t1w_files: Sequence[str | Path] = (),
    skip_validation: bool = False,
    dartel_template: Path | None = None,
    write_report: bool = True,
    explain: Any = None,
) -> RunSummary:
    """Process every selected T1w; failures are recorded per T1w and the others go on.

    ``nprocs`` (CPUs of the whole run, default: all usable), ``omp_nthreads`` (threads of one T1w)
    and ``mem_gb`` (memory budget) decide how many T1w run at once (:mod:`bids_app.parallel`);
    ``t1w_files`` restricts the run to those T1w files (relative to ``bids_dir``).

    Raises :class:`~bids_app.errors.VBMPredictError` subclasses for problems that stop the whole
    run (bad arguments, invalid dataset, no match, colliding output names, no models, unusable
    device, an output dir of another dataset), all before anything is written; per-T1w problems end
    up in the returned :class:`RunSummary` and in ``*_failure.json`` records. ``work_dir`` defaults
    to :func:`default_work_dir`.
    """
    try:
        return _run_participant_level(
            bids_dir, output_dir, participant_labels=participant_labels, session_labels=session_labels,
            bids_filters=bids_filters, work_dir=work_dir, preproc=preproc, derivatives_dir=derivatives_dir,
            models=models, device=device, ad_threshold=ad_threshold, nprocs=nprocs, omp_nthreads=omp_nthreads,
            mem_gb=mem_gb, t1w_files=t1w_files, skip_validation=skip_validation, dartel_template=dartel_template, write_report=write_report,
            explain=explain,
        )
    except VBMPredictError:
        raise
    except Exception as exc:  # the run-level catch-all: a code and a message, never a bare traceback
        _log.debug("run-level failure", exc_info=True)
        raise _as_domain_error(exc, "the participant level stopped") from exc


def _run_participant_level(
    bids_dir: Path,
    output_dir: Path,
    *,
    participant_labels: Sequence[str],
    session_labels: Sequence[str],
    bids_filters: Mapping[str, Any] | None,
    work_dir: Path | None,
    preproc: str,
    derivatives_dir: Path | None,
    models: str | Path | None,
    device: str,
    ad_threshold: float,
    nprocs: int | None,
    omp_nthreads: int | None,
    mem_gb: float | None,
    t1w_files: Sequence[str | Path],
    skip_validation: bool,
    dartel_template: Path | None,
    write_report: bool,
    explain: Any,
) -> RunSummary:
    from .discovery import discover_units
    from .model_input import needed_outputs
    from .models.device import resolve_device
    from .preproc import get_backend, resolve_backend_name

    # 1. every check that needs no reading of the data, before anything is written
    if not 0.0 < ad_threshold < 1.0:
        raise UsageError(f"--ad-threshold must lie strictly between 0 and 1; got {ad_threshold}")
    for name, value in (("--nprocs", nprocs), ("--omp-nthreads", omp_nthreads)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1; got {value}")
    if mem_gb is not None and not mem_gb > 0:
        raise UsageError(f"--mem-gb must be positive; got {mem_gb}")
    bids_dir = Path(bids_dir).resolve()
    output_dir = Path(output_dir).absolute()
    work_dir = Path(work_dir).absolute() if work_dir else default_work_dir(output_dir)
    check_paths(bids_dir, output_dir, work_dir)
    output_dir = output_dir.resolve()
    run_device = str(resolve_device(device))
    # 2. the input, the models, the backend (read only)
    if not skip_validation:
        from .validation import validate_dataset

        if not (bids_dir / "dataset_description.json").is_file():
            discover_units(bids_dir)  # raises the friendly missing-description error
        validate_dataset(bids_dir)
    units = discover_units(bids_dir, participant_labels=participant_labels, session_labels=session_labels,
                           bids_filters=bids_filters)
    if t1w_files:
        units = select_t1w(units, bids_dir, t1w_files)
    models_dir = resolve_models_dir(models)
    packages = _load_packages(models_dir, run_device)
    # only the maps the packages read are made (e.g. the T1w in MNI space only for SFCN packages)
    outputs = needed_outputs({package_input_kind(p) for p in packages})
    backend_name = resolve_backend_name(preproc, derivatives_dir=derivatives_dir)
    plan = plan_resources(len(units), nprocs=nprocs, omp_nthreads=omp_nthreads, mem_gb=mem_gb,
                          unit_mem_gb=unit_memory_gb(backend_name, packages),
                          prefer_threads=backend_name == "derivatives")
    backend = get_backend(preproc, derivatives_dir=derivatives_dir, nprocs=plan.omp_nthreads,
                          dartel_template=dartel_template, outputs=outputs)
    if Path(models_dir) == DEMO_MODELS:
        kept = demo_packages_for(packages, backend)
        if len(kept) < len(packages):  # the backend was asked for maps only the left-out packages read
            packages = kept
            outputs = needed_outputs({package_input_kind(p) for p in packages})
            backend = get_backend(preproc, derivatives_dir=derivatives_dir, nprocs=plan.omp_nthreads,
                                  dartel_template=dartel_template, outputs=outputs)
    check_input_kinds(packages, backend)
    _log.info("preprocessing backend: %s (%s)", backend.name, backend.version())
    for warning in check_output_dataset(output_dir, bids_dir):
        _log.warning("%s", warning)
    # 3. the outputs
    init_dataset(output_dir, bids_dir, container=_container_info())
    try:
        record_source(output_dir, bids_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {work_dir}: {exc.strerror or exc}") from exc
    work_dir = work_dir.resolve()
    check_paths(bids_dir, output_dir, work_dir)  # again: a symlink may have appeared meanwhile

    options = UnitOptions(bids_dir=bids_dir, output_dir=output_dir, work_dir=work_dir,
                          ad_threshold=ad_threshold, device=run_device, write_report=write_report,
                          explain=_explain_options(explain))
    context: _UnitContext | None = _UnitContext(backend=backend, packages=tuple(packages), options=options)
    setup = functools.partial(_worker_context, preproc=backend.name, derivatives_dir=derivatives_dir,
                              dartel_template=dartel_template, models_dir=models_dir, device=run_device,
                              omp_nthreads=plan.omp_nthreads, options=options, outputs=outputs)
    if plan.workers > 1:
        del packages  # every worker loads its own copy; do not hold one here as well
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
                    device: str, omp_nthreads: int, options: UnitOptions,
                    outputs: frozenset[str] = frozenset()) -> _UnitContext:
    """A worker's context: the backend with its share of threads (asked for the run's ``outputs``) and
    its own model packages."""
    from .preproc import get_backend

    backend = get_backend(preproc, derivatives_dir=derivatives_dir, nprocs=omp_nthreads, dartel_template=dartel_template,
                          outputs=outputs)
    return _UnitContext(backend=backend, packages=tuple(_load_packages(models_dir, device, quiet=True)), options=options)


def _process_one(unit: T1wUnit, context: _UnitContext) -> UnitResult:
    """One T1w in this process (the run's or a worker's): :func:`run_unit`, which never raises."""
    return run_unit(unit, context.backend, context.packages, replace(context.options))


def _lost_unit(unit: T1wUnit, reason: str, *, output_dir: Path) -> UnitResult:
    """The result and failure record of a T1w whose worker process died (no exception to record)."""
    result = UnitResult(unit=unit, ok=False, step="worker process")
    _record_failure(output_dir, result, RuntimeError(reason), log_path(output_dir, unit))
    return result


def _explain_options(explain: Any) -> Any:
    """``explain``: None, an ``--explain`` choice (none / occlusion / gradcam / all) or ExplainOptions."""
    if explain is None or explain == "none":
        return None
    from .explain import ExplainOptions

    return explain if isinstance(explain, ExplainOptions) else ExplainOptions.from_choice(str(explain))


def _container_info() -> dict[str, str] | None:
    """What container this runs in, for ``GeneratedBy.Container``: Docker (``/.dockerenv``), Podman
    (``/run/.containerenv``) or Apptainer/Singularity (``APPTAINER_NAME`` / ``SINGULARITY_NAME``, also
    the older ``*_CONTAINER``); None outside a container."""
    env = os.environ
    apptainer = env.get("APPTAINER_NAME") or env.get("SINGULARITY_NAME") or env.get("APPTAINER_CONTAINER") \
        or env.get("SINGULARITY_CONTAINER")
    if apptainer:
        kind = "apptainer" if (env.get("APPTAINER_NAME") or env.get("APPTAINER_CONTAINER")) else "singularity"
    elif os.path.exists("/run/.containerenv"):
        kind = "podman"
    elif os.path.exists("/.dockerenv"):
        kind = "docker"
    else:
        return None
    return {"Type": kind, "Tag": env.get("VBM_PREDICT_IMAGE", f"vbm-predict:{__version__}")}


def run_group_level(bids_dir: Path, output_dir: Path) -> Any:
    """Group level: reads only ``output_dir`` (and labels from the input's participants.tsv).

    The same path rules as the participant level, checked before anything is read or written: a
    missing ``bids_dir`` (or one without ``dataset_description.json``) is refused with
    :class:`NoInputError` (exit 66), an ``output_dir`` inside the input with :class:`UsageError`
    (exit 64), and a missing ``output_dir`` (no participant level ran) with :class:`NoInputError`.
    """
    from .group import run_group_level as _run

    bids = Path(bids_dir)
    if not bids.is_dir():
        raise NoInputError(f"the BIDS directory {bids} does not exist")
    if not (bids / "dataset_description.json").is_file():
        raise NoInputError(f"{bids} has no dataset_description.json, so it is not a BIDS dataset")
    check_paths(bids, Path(output_dir), None)
    out = Path(output_dir)
    if not (out / "dataset_description.json").is_file():
        raise NoInputError(f"{out} holds no participant-level outputs (no dataset_description.json); "
                           "run the participant level first")
    return _run(bids, out)

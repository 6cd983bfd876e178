"""The two analysis levels as library functions (the CLI is a thin layer over these).

:func:`run_participant_level` validates the input, finds the T1w images, loads the model packages
once, runs every T1w through :func:`bids_app.participant.process_unit`, records failures per T1w
while the others go on, and ends with a summary. :func:`run_group_level` reads only what the
participant level wrote (see :mod:`bids_app.group`).
"""

from __future__ import annotations

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
    OutputError,
    UsageError,
    VBMPredictError,
)
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


def _load_packages(models_dir: Path, device: str) -> list[Any]:
    from .models import find_packages, load_package

    found = find_packages(models_dir)
    if not found:
        raise ModelPackageError(f"no model package (a directory with model.json) in {models_dir}")
    packages = [load_package(p, device="cpu") for p in found]
    for p in packages:
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
    nprocs: int = 1,
    skip_validation: bool = False,
    dartel_template: Path | None = None,
    write_report: bool = True,
    explain: Any = None,
) -> RunSummary:
    """Process every selected T1w; failures are recorded per T1w and the others go on.

    Raises :class:`~bids_app.errors.VBMPredictError` subclasses for problems that stop the whole
    run (bad arguments, invalid dataset, no match, no models); per-T1w problems end up in the
    returned :class:`RunSummary` and in ``*_failure.json`` records.
    """
    from .discovery import discover_units
    from .preproc import get_backend

    bids_dir = Path(bids_dir).resolve()
    output_dir = Path(output_dir).resolve()
    if not 0.0 < ad_threshold < 1.0:
        raise UsageError(f"--ad-threshold must lie strictly between 0 and 1; got {ad_threshold}")
    if nprocs < 1:
        raise UsageError(f"--nprocs must be at least 1; got {nprocs}")
    work_dir = Path(work_dir).resolve() if work_dir else output_dir.parent / f".{output_dir.name}-work"
    check_paths(bids_dir, output_dir, work_dir)
    if not skip_validation:
        from .validation import validate_dataset

        if not (bids_dir / "dataset_description.json").is_file():
            discover_units(bids_dir)  # raises the friendly missing-description error
        validate_dataset(bids_dir)
    units = discover_units(bids_dir, participant_labels=participant_labels, session_labels=session_labels)
    models_dir = resolve_models_dir(models)
    packages = _load_packages(models_dir, device)
    backend = get_backend(preproc, derivatives_dir=derivatives_dir, nprocs=nprocs, dartel_template=dartel_template)
    _log.info("preprocessing backend: %s (%s)", backend.name, backend.version())
    try:
        init_dataset(output_dir, bids_dir, container=_container_info())
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {work_dir}: {exc}") from exc

    options = UnitOptions(bids_dir=bids_dir, output_dir=output_dir, work_dir=work_dir,
                          ad_threshold=ad_threshold, device=device, write_report=write_report,
                          explain=_explain_options(explain))
    summary = RunSummary(output_dir=output_dir)
    for i, unit in enumerate(units, start=1):
        _log.info("[%d/%d] %s (%d left after this one)", i, len(units), unit.prefix, len(units) - i)
        log_file = log_path(output_dir, unit)
        with _UnitLog(log_file):
            result = UnitResult(unit=unit, ok=False)
            try:
                process_unit(unit, backend, packages, options, result=result)
                stale = failure_path(output_dir, unit)
                if stale.exists():  # an earlier failed attempt of this unit now succeeded
                    stale.unlink()
            except Exception as exc:  # one T1w failing must not stop the others
                _log.error("%s failed at %s: %s\n%s", unit.prefix, result.step, exc, traceback.format_exc())
                _record_failure(output_dir, result, exc, log_file)
        summary.results.append(result)
    return summary


def _explain_options(explain: Any) -> Any:
    """``explain``: None, an ``--explain`` choice (none / occlusion / gradcam / all) or ExplainOptions."""
    if explain is None or explain == "none":
        return None
    from .explain import ExplainOptions

    return explain if isinstance(explain, ExplainOptions) else ExplainOptions.from_choice(str(explain))


def _container_info() -> dict[str, str] | None:
    if os.path.exists("/.dockerenv") or os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        kind = "apptainer" if (os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")) else "docker"
        return {"Type": kind, "Tag": os.environ.get("VBM_PREDICT_IMAGE", f"vbm-predict:{__version__}")}
    return None


def run_group_level(bids_dir: Path, output_dir: Path) -> Any:
    """Group level: reads only ``output_dir`` (and labels from the input's participants.tsv)."""
    from .group import run_group_level as _run

    return _run(Path(bids_dir), Path(output_dir))

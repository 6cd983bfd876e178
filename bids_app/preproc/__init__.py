"""VBM preprocessing backends: one T1w in, GM density and GM volume on the SPM grid out.

Every backend implements :class:`bids_app.types.PreprocBackend` in a module of its own:

* ``clinica``     Clinica ``t1-volume`` with SPM25 standalone (the container's default);
* ``ants``        SPM-free chain from antspyx and nilearn's MNI152 templates;
* ``derivatives`` (:mod:`~bids_app.preproc.existing`) reuse maps that already exist (Clinica CAPS,
  BIDS-derivatives ``label-GM`` probseg maps, DPARSF ``wc1*``/``mwc1*`` files).

Backends know nothing of the models; :func:`get_backend` is the only way the workflows choose one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Collection

from ..errors import BackendUnavailableError, UsageError
from ..types import BACKEND_NAMES, PreprocBackend

__all__ = ["BACKENDS", "get_backend", "resolve_backend_name"]

BACKENDS = BACKEND_NAMES

_log = logging.getLogger("bids_app.preproc")


def resolve_backend_name(name: str, *, derivatives_dir: Path | None = None) -> str:
    """Turn ``auto`` into a concrete backend name.

    ``auto`` picks ``derivatives`` when ``--derivatives`` was given, ``clinica`` when SPM standalone
    is configured (``MCR_HOME`` set and ``SPMSTANDALONE_HOME`` an existing folder), and ``ants`` otherwise.
    """
    if name != "auto":
        if name not in BACKENDS:
            raise UsageError(f"--preproc must be one of auto, {', '.join(BACKENDS)}; got {name!r}")
        return name
    if derivatives_dir is not None:
        chosen = "derivatives"
    elif os.environ.get("MCR_HOME") and Path(os.environ.get("SPMSTANDALONE_HOME") or "/nonexistent").is_dir():
        # the image sets these variables in every flavour; the folder exists only where SPM was installed
        chosen = "clinica"
    else:
        chosen = "ants"
    _log.info("--preproc auto chose the %r backend", chosen)
    return chosen


def get_backend(
    name: str,
    *,
    derivatives_dir: Path | None = None,
    nprocs: int = 1,
    dartel_template: Path | None = None,
    outputs: Collection[str] = (),
) -> PreprocBackend:
    """Build the backend called ``name`` (``auto`` resolved first) with the run's options.

    ``outputs`` names the maps the run's model packages are built from
    (:func:`bids_app.model_input.needed_outputs`): a backend that can make the T1w in MNI space makes it
    only when ``t1w_mni`` is among them. GMD and GMV are always made (QC reads them)."""
    name = resolve_backend_name(name, derivatives_dir=derivatives_dir)
    make_t1w_mni = "t1w_mni" in outputs
    if name == "derivatives":
        if derivatives_dir is None:
            raise UsageError("--preproc derivatives needs --derivatives DIR")
        from .existing import DerivativesBackend

        return DerivativesBackend(derivatives_dir, make_t1w_mni=make_t1w_mni)
    if name == "ants":
        from .ants import AntsBackend

        return AntsBackend(nprocs=nprocs, make_t1w_mni=make_t1w_mni)
    from .clinica import ClinicaBackend

    backend = ClinicaBackend(nprocs=nprocs, dartel_template=dartel_template)
    if not backend.available():
        raise BackendUnavailableError(
            "--preproc clinica needs SPM standalone: set SPMSTANDALONE_HOME (the unpacked SPM25 "
            "standalone with run_spm25.sh) and MCR_HOME (MATLAB Runtime R2024b), or use "
            "--preproc ants for the SPM-free backend"
        )
    return backend

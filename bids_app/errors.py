"""One exception hierarchy for the whole app, each class tied to a BIDS-Apps exit code.

Every class also inherits the matching built-in exception, so library users can catch
``ValueError`` / ``FileNotFoundError`` as usual, while :func:`bids_app.cli.main.main` maps
:class:`VBMPredictError` subclasses to the exit codes of the BIDS-Apps execution spec.
"""

from __future__ import annotations

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_VALIDATION",
    "EXIT_UNKNOWN_LEVEL",
    "EXIT_NO_MATCH",
    "EXIT_USAGE",
    "EXIT_DATA",
    "EXIT_NO_INPUT",
    "EXIT_CANT_CREATE",
    "EXIT_SOFTWARE",
    "VBMPredictError",
    "UsageError",
    "ValidationError",
    "NoMatchError",
    "InputDataError",
    "NoInputError",
    "OutputError",
    "BackendUnavailableError",
    "InstallationError",
    "ModelPackageError",
    "KerasImportError",
    "PreprocessingError",
]

EXIT_OK = 0
EXIT_FAILURE = 1  # at least one T1w failed; the others were written
EXIT_VALIDATION = 16  # BIDS validation failed
EXIT_UNKNOWN_LEVEL = 17  # analysis level not one of participant / group
EXIT_NO_MATCH = 18  # the participant / session filters selected no T1w
EXIT_USAGE = 64  # wrong command-line usage
EXIT_DATA = 65  # input data malformed
EXIT_NO_INPUT = 66  # input missing or unreadable
EXIT_SOFTWARE = 70  # internal error or a required tool is missing
EXIT_CANT_CREATE = 73  # output or work directory cannot be created


class VBMPredictError(Exception):
    """Base class; ``exit_code`` is what the command line returns for it."""

    exit_code: int = EXIT_SOFTWARE


class UsageError(VBMPredictError, ValueError):
    """Arguments that cannot work together (e.g. an output dir inside the BIDS input)."""

    exit_code = EXIT_USAGE


class ValidationError(VBMPredictError, ValueError):
    """The BIDS validator reported errors on the input dataset."""

    exit_code = EXIT_VALIDATION


class NoMatchError(VBMPredictError, LookupError):
    """Participant / session filters matched nothing, or a requested label does not exist."""

    exit_code = EXIT_NO_MATCH


class InputDataError(VBMPredictError, ValueError):
    """An input file exists but cannot be used (corrupt, 4D, NaN-only, no head in view...)."""

    exit_code = EXIT_DATA


class NoInputError(VBMPredictError, FileNotFoundError):
    """An input that must exist does not (dataset, dataset_description.json, derivatives dir)."""

    exit_code = EXIT_NO_INPUT


class OutputError(VBMPredictError, OSError):
    """The output or work directory cannot be created or written."""

    exit_code = EXIT_CANT_CREATE


class BackendUnavailableError(VBMPredictError, RuntimeError):
    """A preprocessing backend's tools are not installed (e.g. SPM standalone for Clinica)."""

    exit_code = EXIT_SOFTWARE


class InstallationError(VBMPredictError, RuntimeError):
    """A file the installed package should contain is missing (e.g. the bundled demo models)."""

    exit_code = EXIT_SOFTWARE


class ModelPackageError(VBMPredictError, ValueError):
    """A model package is malformed, tampered with, or does not match the app's input spec."""

    exit_code = EXIT_DATA


class KerasImportError(ModelPackageError):
    """A Keras H5 file cannot be imported (unsupported layer or option, missing or extra weights...)."""


class PreprocessingError(VBMPredictError, RuntimeError):
    """A preprocessing step failed for one T1w; the message names the step and the log."""

    exit_code = EXIT_FAILURE

"""Validation of datasets with the official BIDS validator (``bids-validator-deno``).

pybids' ``validate=True`` only filters files while indexing; it does not validate a dataset. The
official validator (a Deno program redistributed on PyPI) runs offline and reports issues as JSON.
The app runs it on the input (unless ``--skip-bids-validation``) and the tests run it on the
outputs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import BackendUnavailableError, ValidationError

__all__ = ["ValidatorIssue", "ValidationReport", "find_validator", "run_validator", "validate_dataset"]

_log = logging.getLogger("bids_app.validation")


@dataclass(frozen=True)
class ValidatorIssue:
    code: str
    severity: str
    location: str
    message: str

    def __str__(self) -> str:
        text = f"[{self.severity.upper()}] {self.code}"
        if self.location:
            text += f" at {self.location}"
        if self.message:
            text += f": {self.message.strip().splitlines()[0]}"
        return text


@dataclass(frozen=True)
class ValidationReport:
    dataset: Path
    issues: tuple[ValidatorIssue, ...]

    @property
    def errors(self) -> list[ValidatorIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[ValidatorIssue]:
        return [i for i in self.issues if i.severity == "warning"]


def find_validator() -> str:
    """Path of the ``bids-validator-deno`` executable (next to this Python first, then PATH)."""
    here = Path(sys.executable).parent / "bids-validator-deno"
    if here.exists():
        return str(here)
    found = shutil.which("bids-validator-deno")
    if not found:
        raise BackendUnavailableError(
            "bids-validator-deno was not found; install it with `pip install bids-validator-deno` "
            "or pass --skip-bids-validation"
        )
    return found


def run_validator(dataset: Path, *, dataset_types: tuple[str, ...] = (), timeout: float = 600) -> ValidationReport:
    """Run the official validator on ``dataset`` and parse its JSON report.

    Deno's cache goes to a temporary directory, so this works with a read-only or missing HOME
    (Apptainer) and writes nothing into the dataset.
    """
    cmd = [find_validator(), str(dataset), "--format", "json"]
    for dtype in dataset_types:
        cmd += ["--datasetTypes", dtype]
    with tempfile.TemporaryDirectory(prefix="vbm-deno-") as deno_dir:
        env = {**os.environ, "DENO_DIR": deno_dir, "DENO_NO_UPDATE_CHECK": "1", "NO_COLOR": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=deno_dir)
    try:
        payload = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise BackendUnavailableError(
            f"bids-validator-deno gave no JSON report for {dataset} (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[:500]}"
        ) from exc
    issues = tuple(
        ValidatorIssue(
            code=str(i.get("code", "")),
            severity=str(i.get("severity", "")),
            location=str(i.get("location", "")),
            message=str(i.get("issueMessage", "") or i.get("subCode", "")),
        )
        for i in payload.get("issues", {}).get("issues", [])
    )
    return ValidationReport(Path(dataset), issues)


def validate_dataset(dataset: Path) -> ValidationReport:
    """Validate the input dataset; log every issue and raise :class:`ValidationError` on errors."""
    report = run_validator(dataset)
    for issue in report.warnings:
        _log.debug("BIDS validator: %s", issue)
    if report.warnings:
        _log.info("BIDS validator: %d warning(s) (shown with -vv)", len(report.warnings))
    if report.errors:
        listing = "\n".join(f"  {i}" for i in report.errors[:50])
        more = "" if len(report.errors) <= 50 else f"\n  ... and {len(report.errors) - 50} more"
        raise ValidationError(
            f"the BIDS validator found {len(report.errors)} error(s) in {dataset}:\n{listing}{more}\n"
            "Fix the dataset, or pass --skip-bids-validation to run anyway."
        )
    _log.info("BIDS validation of %s passed", dataset)
    return report

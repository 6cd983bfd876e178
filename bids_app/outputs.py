"""Reading what the participant level wrote: predictions tables, failure records, group file names.

The group level and the reports read the output dataset only through this module. The names of
the per-T1w files themselves are made in :mod:`bids_app.derivatives` (the writer); this module
finds and reads them back, and names the group-level files.

Built for biobank-sized output folders (100,000 participants): the folders are walked once with
:func:`os.scandir` (no recursive glob), and predictions tables whose header is the current one are
parsed in one pass of pandas' C reader over their concatenated rows instead of one ``read_csv``
call per file. Tables with another header (older versions, hand-edited files) are read one by one.

Nothing here drops a file silently: a table that cannot be read, lacks required columns or holds
only its header becomes a :class:`TableProblem`, which the group level reports beside the failure
records and counts in its exit code.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from .derivatives import PREDICTION_COLUMNS, read_predictions
from .errors import EXIT_DATA, EXIT_FAILURE

__all__ = [
    "GROUP_PREDICTIONS",
    "GROUP_EVALUATION",
    "GROUP_FIGURES",
    "GROUP_CONFUSION",
    "GROUP_BRAIN_AGE",
    "GROUP_BRAIN_AGE_SUMMARY",
    "GROUP_MCI",
    "PREDICTIONS_SUFFIX",
    "FAILURE_SUFFIX",
    "REQUIRED_PREDICTION_COLUMNS",
    "FailureRecord",
    "TableProblem",
    "ParticipantOutputs",
    "iter_unit_files",
    "read_participant_outputs",
    "collect_predictions",
    "collect_failures",
]

logger = logging.getLogger(__name__)

GROUP_PREDICTIONS = "group_predictions.tsv"
GROUP_EVALUATION = "group_evaluation.tsv"
GROUP_FIGURES = {"roc": "group_roc.png", "scores": "group_scores.png", "mmse": "group_mmse.png"}
GROUP_CONFUSION = "group_confusion.tsv"
GROUP_BRAIN_AGE = "group_brain_age.tsv"
GROUP_BRAIN_AGE_SUMMARY = "group_brain_age_summary.tsv"
GROUP_MCI = "group_mci.tsv"

PREDICTIONS_SUFFIX = "_predictions.tsv"
FAILURE_SUFFIX = "_failure.json"
#: columns without which a predictions table cannot be used by the group level
REQUIRED_PREDICTION_COLUMNS = ("participant_id", "target", "model_name", "score")

_HEADER = ("\t".join(PREDICTION_COLUMNS) + "\n").encode("utf-8")
_SORT_KEYS = ["participant_id", "session_id", "run_id", "source_file", "target", "model_name"]


@dataclass(frozen=True)
class FailureRecord:
    """A T1w the participant level could not finish (from its ``*_failure.json``)."""

    path: Path
    participant_id: str
    reason: str
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """The participant level's exit code for this T1w (1 when the record does not say)."""
        code = self.record.get("exit_code")
        return code if isinstance(code, int) and not isinstance(code, bool) and code > 0 else EXIT_FAILURE


@dataclass(frozen=True)
class TableProblem:
    """A predictions table the group level could not use (unreadable, wrong columns, no rows)."""

    path: Path
    participant_id: str
    reason: str
    exit_code: int = EXIT_DATA


@dataclass(frozen=True)
class ParticipantOutputs:
    """Everything the group level reads from an output dataset."""

    predictions: pd.DataFrame
    failures: tuple[FailureRecord, ...]
    problems: tuple[TableProblem, ...]
    n_tables: int


def _walk(folder: str, found: list[str]) -> None:
    """Append the predictions tables and failure records below ``folder`` to ``found``; hidden
    entries (temporaries, ``.work``) and their contents are skipped. Plain strings, no Path
    objects: at 100,000 participants object creation is what a directory walk costs."""
    try:
        entries = os.scandir(folder)
    except OSError as exc:
        logger.warning("%s: cannot be listed (%s); its files are not read", folder, exc.strerror)
        return
    with entries:
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            if name.endswith(PREDICTIONS_SUFFIX) or name.endswith(FAILURE_SUFFIX):
                found.append(entry.path)
            elif "." not in name and entry.is_dir(follow_symlinks=False):
                _walk(entry.path, found)


def iter_unit_files(output_dir: Path) -> Iterator[tuple[str, str]]:
    """``(participant folder, path)`` of every predictions table and failure record below the
    ``sub-*`` folders of ``output_dir``, in sorted order, hidden files and folders left out."""
    try:
        with os.scandir(output_dir) as it:
            subjects = sorted(e.name for e in it if e.name.startswith("sub-") and e.is_dir())
    except OSError:
        return
    root = str(output_dir)
    for sub in subjects:
        found: list[str] = []
        _walk(os.path.join(root, sub), found)
        for path in sorted(found):
            yield sub, path


def _failure_record(path: str, participant: str) -> FailureRecord:
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        record = {"unreadable": str(exc)}
    if not isinstance(record, dict):
        record = {"record": record}
    reason = next((str(record[k]) for k in ("reason", "error", "message", "exception") if record.get(k)), "")
    if reason and record.get("error_type") and str(record["error_type"]) not in reason:
        reason = f"{record['error_type']}: {reason}"
    if reason and record.get("step"):
        reason = f"at {record['step']}: {reason}"
    if not reason and record.get("unreadable"):
        reason = f"unreadable failure record: {record['unreadable']}"
    reason = reason or "no reason recorded"
    return FailureRecord(path=Path(path), participant_id=participant, reason=reason, record=record)


def _read_one(path: Path) -> pd.DataFrame:
    """One table the slow way (another header): read, checked, put into the current columns."""
    table = read_predictions(path)
    missing = [c for c in REQUIRED_PREDICTION_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"lacks the columns {missing}")
    return table.reindex(columns=list(PREDICTION_COLUMNS))


def _parse_rows(bodies: list[bytes]) -> pd.DataFrame:
    """Rows of many tables that share the current header, parsed in one pass (the same reader and
    column types as one table: :func:`~bids_app.derivatives.read_predictions` accepts a buffer)."""
    return read_predictions(io.BytesIO(_HEADER + b"".join(bodies)))  # type: ignore[arg-type]


def _scan(output_dir: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Predictions tables and live failure records (stale ones logged and left out)."""
    tables: list[tuple[str, str]] = []
    failures: list[tuple[str, str]] = []
    for participant, path in iter_unit_files(output_dir):
        if path.endswith(PREDICTIONS_SUFFIX):
            tables.append((participant, path))
        else:
            failures.append((participant, path))
    with_table = {p[: -len(PREDICTIONS_SUFFIX)] for _, p in tables}
    live = []
    for participant, path in failures:
        if path[: -len(FAILURE_SUFFIX)] in with_table:
            logger.info("%s: a predictions file of the same T1w exists; the failure record is stale", path)
            continue
        live.append((participant, path))
    return tables, live


def read_participant_outputs(output_dir: Path) -> ParticipantOutputs:
    """Every ``sub-*/**/*_predictions.tsv`` (concatenated, sorted) and every live failure record.

    A failure record next to a predictions table of the same T1w is stale (a later run succeeded)
    and is skipped with a log message. A table that cannot be used becomes a
    :class:`TableProblem` (and its rows, if any, are left out): never dropped silently.
    """
    tables, failures = _scan(Path(output_dir))
    problems: list[TableProblem] = []
    bodies: list[bytes] = []
    others: list[pd.DataFrame] = []
    for participant, name in tables:
        try:
            with open(name, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            problems.append(TableProblem(Path(name), participant, f"cannot be read ({exc.strerror})"))
            continue
        if data.startswith(_HEADER) and b'"' not in data and b"\r" not in data:
            body = data[len(_HEADER):]
            if not body.strip():
                problems.append(TableProblem(Path(name), participant, "holds only its header: no prediction rows"))
                continue
            bodies.append(body if body.endswith(b"\n") else body + b"\n")
            continue
        path = Path(name)
        try:  # another header, quoting or line ends: read this one on its own
            table = _read_one(path)
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            problems.append(TableProblem(path, participant, f"cannot be read as a predictions table ({exc})"))
            continue
        if table.empty:
            problems.append(TableProblem(path, participant, "holds only its header: no prediction rows"))
            continue
        others.append(table)
    parts = ([_parse_rows(bodies)] if bodies else []) + others
    if parts:
        table = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        table = table.sort_values(_SORT_KEYS, na_position="first", kind="stable").reset_index(drop=True)
    else:
        table = pd.DataFrame({c: pd.Series(dtype=object) for c in PREDICTION_COLUMNS})
    for problem in problems:
        logger.warning("%s: %s; its predictions are not in the group table", problem.path, problem.reason)

    records = tuple(_failure_record(path, participant) for participant, path in failures)
    return ParticipantOutputs(predictions=table, failures=records, problems=tuple(problems), n_tables=len(tables))


def collect_predictions(output_dir: Path) -> pd.DataFrame:
    """All usable ``sub-*/**/*_predictions.tsv`` under ``output_dir``, concatenated and sorted."""
    return read_participant_outputs(output_dir).predictions


def collect_failures(output_dir: Path) -> tuple[FailureRecord, ...]:
    """``*_failure.json`` records under ``output_dir`` whose T1w has no predictions file (the
    tables themselves are not read)."""
    _, failures = _scan(Path(output_dir))
    return tuple(_failure_record(path, participant) for participant, path in failures)

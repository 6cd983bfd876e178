"""Participant labels from the input dataset's ``participants.tsv`` (sex, diagnosis, MMSE).

The group level compares predictions with what the dataset says about each participant. Datasets
spell the same fact many ways (``M``, ``male``, ``Male``; ``CN``, ``NC``, ``HC``, ``control``...),
so this module maps known spellings onto a small vocabulary:

* ``sex``: ``male`` / ``female`` / ``other`` (BIDS' recommended levels and their usual variants);
* ``diagnosis``: ``AD`` / ``CN`` / ``MCI`` (MCI is kept as its own class: it is neither case nor
  control for the AD model, so it is left out of the AD evaluation and counted);
* ``mmse``: a number in 0..30.

Rules that keep the evaluation honest:

* a value this module does not recognise becomes missing, is counted in
  :attr:`ParticipantLabels.unrecognised`, and is logged once per distinct value with the column
  and file -- it is never guessed;
* numeric codes (``1``/``2``, ``0``/``1``) are ambiguous between datasets and are only accepted
  when ``participants.json`` declares them under the column's ``Levels`` (e.g.
  ``{"1": "male", "2": "female"}``); the level descriptions are parsed with the same rules.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from .errors import InputDataError

__all__ = [
    "SEX_COLUMNS",
    "DIAGNOSIS_COLUMNS",
    "MMSE_COLUMNS",
    "ParticipantLabels",
    "parse_sex",
    "parse_diagnosis",
    "read_participant_labels",
]

logger = logging.getLogger(__name__)

#: column names (lower-cased) recognised for each label, first match wins
SEX_COLUMNS: tuple[str, ...] = ("sex", "gender", "sex_at_birth", "biological_sex")
DIAGNOSIS_COLUMNS: tuple[str, ...] = (
    "diagnosis",
    "dx",
    "dx_group",
    "diagnosis_group",
    "diagnostic_group",
    "clinical_diagnosis",
    "group",
)
MMSE_COLUMNS: tuple[str, ...] = ("mmse", "mmse_score", "mmse_total", "mmsescore", "mmse_tot")

#: cells meaning "no value" (BIDS uses n/a): missing, but not "unrecognised"
_MISSING = {"", "n/a", "na", "nan", "none", "null", "unknown", "-", "?"}

_SEX = {
    "male": "male",
    "m": "male",
    "man": "male",
    "female": "female",
    "f": "female",
    "woman": "female",
    "other": "other",
    "o": "other",
}

_AD = {
    "ad",
    "alzheimer's disease",
    "alzheimers disease",
    "alzheimer disease",
    "alzheimer's",
    "alzheimers",
    "alzheimer",
    "alzheimer's dementia",
    "alzheimer dementia",
    "probable ad",
    "dat",
    "dementia of alzheimer's type",
    "dementia of the alzheimer's type",
}
_CN = {
    "cn",
    "nc",
    "hc",
    "cu",
    "ctrl",
    "ctl",
    "con",
    "control",
    "controls",
    "healthy",
    "healthy control",
    "healthy controls",
    "healthy volunteer",
    "normal",
    "normal control",
    "cognitively normal",
    "cognitively unimpaired",
}
_MCI = {"mci", "emci", "lmci", "smci", "pmci", "mild cognitive impairment"}


def _normalise(value: Any) -> str:
    """Lower case, straight apostrophes, ``_``/``-`` as spaces, single spaces."""
    text = str(value).strip().lower().replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"[_\-]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return _normalise(value) in _MISSING


def parse_sex(value: Any) -> str | None:
    """``male`` / ``female`` / ``other`` for a known spelling, else None (no numeric codes here)."""
    return _SEX.get(_normalise(value))


def parse_diagnosis(value: Any) -> str | None:
    """``AD`` / ``CN`` / ``MCI`` for a known spelling, else None (no numeric codes here)."""
    text = _normalise(value)
    if text in _AD:
        return "AD"
    if text in _CN:
        return "CN"
    if text in _MCI:
        return "MCI"
    return None


@dataclass(frozen=True)
class ParticipantLabels:
    """Labels of every participant listed in ``participants.tsv``.

    Attributes
    ----------
    table : DataFrame
        Index ``participant_id`` (with ``sub-``); columns ``sex`` (male/female/other or NA),
        ``diagnosis`` (AD/CN/MCI or NA), ``mmse`` (float or NaN).
    source : Path or None
        The ``participants.tsv`` read; None when the dataset has none.
    columns : dict
        label -> the participants.tsv column it came from (labels without a column are absent).
    unrecognised : dict
        label -> Counter of raw values that were not recognised (and became missing).
    """

    table: pd.DataFrame
    source: Path | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    unrecognised: Mapping[str, Counter] = field(default_factory=dict)

    @property
    def has_labels(self) -> bool:
        """True when at least one participant has a usable sex, diagnosis or MMSE."""
        t = self.table
        return bool(len(t)) and bool(t["sex"].notna().any() or t["diagnosis"].notna().any() or t["mmse"].notna().any())

    def n_unrecognised(self, label: str) -> int:
        return int(sum(self.unrecognised.get(label, Counter()).values()))


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame(
        {"sex": pd.Series(dtype="string"), "diagnosis": pd.Series(dtype="string"), "mmse": pd.Series(dtype=float)},
        index=pd.Index([], name="participant_id", dtype="string"),
    )


def _find_column(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    lower = {c.lower().strip(): c for c in columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    return None


def _levels_map(sidecar: Mapping[str, Any], column: str, parse: Callable[[Any], str | None]) -> dict[str, str]:
    """Codes declared in participants.json ``Levels`` whose descriptions (or codes) parse."""
    entry = sidecar.get(column)
    levels = entry.get("Levels") if isinstance(entry, Mapping) else None
    if not isinstance(levels, Mapping):
        return {}
    out: dict[str, str] = {}
    for code, description in levels.items():
        parsed = parse(description) if isinstance(description, str) else None
        if parsed is None:
            parsed = parse(code)
        if parsed is not None:
            out[_normalise(code)] = parsed
    return out


def _code_key(value: Any) -> str:
    """Normalised cell text, with ``1.0`` read as ``1`` (pandas may have parsed codes as floats)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = _normalise(value)
    return re.sub(r"^(-?\d+)\.0+$", r"\1", text)


def _parse_column(
    values: pd.Series,
    parse: Callable[[Any], str | None],
    levels: Mapping[str, str],
) -> tuple[list[str | None], Counter]:
    out: list[str | None] = []
    unknown: Counter = Counter()
    seen: dict[Any, str | None] = {}  # a column holds few distinct spellings: parse each once
    for raw in values:
        if raw not in seen:
            if _is_missing(raw):
                seen[raw] = None
            else:
                key = _code_key(raw)
                seen[raw] = levels.get(key) if key in levels else parse(raw)
        parsed = seen[raw]
        if parsed is None and not _is_missing(raw):
            unknown[str(raw)] += 1
        out.append(parsed)
    return out, unknown


def _parse_mmse(values: pd.Series) -> tuple[list[float], Counter]:
    out: list[float] = []
    unknown: Counter = Counter()
    for raw in values:
        if _is_missing(raw):
            out.append(math.nan)
            continue
        try:
            number = float(str(raw).strip())
        except ValueError:
            number = math.nan
        if not (0.0 <= number <= 30.0):  # also catches NaN and inf
            unknown[str(raw)] += 1
            out.append(math.nan)
        else:
            out.append(number)
    return out, unknown


def _read_sidecar(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputDataError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputDataError(f"{path}: expected a JSON object describing the columns of participants.tsv")
    return data


def read_participant_labels(bids_dir: Path) -> ParticipantLabels:
    """Read and normalise the labels in ``bids_dir/participants.tsv`` (+ ``participants.json``).

    A dataset without ``participants.tsv``, or without label columns, gives an empty / all-missing
    table: the group level then writes predictions but no evaluation. Raises
    :class:`~bids_app.errors.InputDataError` (naming the file) for an unreadable table, a table
    without ``participant_id``, or a participant listed twice.
    """
    bids_dir = Path(bids_dir)
    path = bids_dir / "participants.tsv"
    if not path.is_file():
        logger.info("no participants.tsv in %s: predictions will not be evaluated", bids_dir)
        return ParticipantLabels(table=_empty_table())
    try:
        raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputDataError(f"{path}: cannot be read as a tab-separated table ({exc})") from exc
    if "participant_id" not in raw.columns:
        raise InputDataError(
            f"{path}: no 'participant_id' column (columns found: {list(raw.columns)}); BIDS requires it first"
        )
    ids = raw["participant_id"].str.strip()
    ids = ids.where(ids.str.startswith("sub-"), "sub-" + ids)
    duplicated = sorted(set(ids[ids.duplicated()]))
    if duplicated:
        raise InputDataError(f"{path}: participants listed more than once: {duplicated}")
    sidecar = _read_sidecar(bids_dir / "participants.json")

    table = _empty_table().reindex(pd.Index(ids, name="participant_id", dtype="string"))
    columns: dict[str, str] = {}
    unrecognised: dict[str, Counter] = {}
    for label, candidates, parse in (
        ("sex", SEX_COLUMNS, parse_sex),
        ("diagnosis", DIAGNOSIS_COLUMNS, parse_diagnosis),
    ):
        col = _find_column(list(raw.columns), candidates)
        if col is None:
            continue
        columns[label] = col
        parsed, unknown = _parse_column(raw[col], parse, _levels_map(sidecar, col, parse))
        table[label] = pd.array(parsed, dtype="string")
        unrecognised[label] = unknown
    col = _find_column(list(raw.columns), MMSE_COLUMNS)
    if col is not None:
        columns["mmse"] = col
        values, unknown = _parse_mmse(raw[col])
        table["mmse"] = values
        unrecognised["mmse"] = unknown

    for label, unknown in unrecognised.items():
        for value, count in sorted(unknown.items()):
            hint = (
                "; numeric codes need 'Levels' in participants.json"
                if label != "mmse" and re.fullmatch(r"-?\d+(\.\d+)?", value.strip())
                else ""
            )
            what = "is not a number in 0..30" if label == "mmse" else "is not a recognised spelling"
            logger.warning(
                "%s: column %r value %r %s (%d participant%s); treated as missing%s",
                path,
                columns[label],
                value,
                what,
                count,
                "" if count == 1 else "s",
                hint,
            )
    return ParticipantLabels(table=table, source=path, columns=columns, unrecognised=unrecognised)

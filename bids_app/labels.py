"""Labels from the input dataset's ``participants.tsv`` and ``sub-*/sub-*_sessions.tsv``.

The group level compares predictions with what the dataset says about each participant, and
training reads its targets from the same tables. Datasets spell the same fact many ways (``M``,
``male``, ``Male``; ``CN``, ``NC``, ``HC``, ``control``...), so this module maps known spellings
onto a small vocabulary:

* ``sex``: ``male`` / ``female`` / ``other`` (BIDS' recommended levels and their usual variants);
* ``diagnosis``: ``AD`` / ``CN`` / ``MCI`` (MCI is kept as its own class: it is neither case nor
  control for the AD model, so it is left out of the AD evaluation and counted);
* ``mmse``: a number in 0..30;
* ``age``: years, a number in 0..130;
* ``mci_progression``: ``pMCI`` (progressive: converts to AD within 36 months) / ``sMCI`` (stable);
* ``site``: the acquisition site, as written.

Longitudinal datasets describe each visit in ``sub-<label>/sub-<label>_sessions.tsv`` (BIDS): a
value given there for a session (``age``, ``diagnosis``, ``mmse``, ``mci_progression``, any label
column) overrides the participant's for that session; an ``n/a`` there keeps the participant's.
:attr:`ParticipantLabels.sessions` is that table, keyed by ``participant_id`` + ``session_id``, and
:meth:`ParticipantLabels.lookup` gives the labels of any (participant, session) pair.

Rules that keep the evaluation honest:

* a value this module does not recognise becomes missing, is counted in
  :attr:`ParticipantLabels.unrecognised`, and is logged once per distinct value with the column
  and file -- it is never guessed;
* numeric codes (``1``/``2``, ``0``/``1``) are ambiguous between datasets and are only accepted
  when ``participants.json`` (``sessions.json`` for a sessions table) declares them under the
  column's ``Levels`` (e.g. ``{"1": "male", "2": "female"}``); the level descriptions are parsed
  with the same rules;
* an unrecognised value in a sessions table makes that session's label missing (it does not fall
  back to the participant's value, which may describe another visit).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from .errors import InputDataError

__all__ = [
    "AGE_COLUMNS",
    "DIAGNOSIS_COLUMNS",
    "LABEL_COLUMNS",
    "MCI_PROGRESSION_COLUMNS",
    "MMSE_COLUMNS",
    "SEX_COLUMNS",
    "SITE_COLUMNS",
    "ParticipantLabels",
    "parse_age",
    "parse_diagnosis",
    "parse_mci_progression",
    "parse_sex",
    "read_labels",
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
AGE_COLUMNS: tuple[str, ...] = ("age", "age_years", "age_at_scan", "age_at_visit", "age_at_session", "age_yrs")
MCI_PROGRESSION_COLUMNS: tuple[str, ...] = ("mci_progression", "mci_conversion", "mci_status", "mci_course",
                                            "progression")
SITE_COLUMNS: tuple[str, ...] = ("site", "site_id", "centre", "center", "scanner", "dataset")
#: the columns of every labels table, in order
LABEL_COLUMNS: tuple[str, ...] = ("sex", "diagnosis", "mmse", "age", "mci_progression", "site")
_NUMERIC = {"mmse": (0.0, 30.0), "age": (0.0, 130.0)}

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
_PMCI = {
    "pmci",
    "p mci",
    "progressive mci",
    "mci progressive",
    "progressive",
    "progressor",
    "converter",
    "mci converter",
    "mci c",
    "mcic",
    "cmci",
    "c mci",
    "converted",
}
_SMCI = {
    "smci",
    "s mci",
    "stable mci",
    "mci stable",
    "stable",
    "non converter",
    "nonconverter",
    "mci non converter",
    "mci nc",
    "mcinc",
    "ncmci",
    "nc mci",
    "not converted",
}


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


def parse_mci_progression(value: Any) -> str | None:
    """``pMCI`` / ``sMCI`` for a known spelling (``progressive``, ``converter``, ``stable``...), else None."""
    text = _normalise(value)
    if text in _PMCI:
        return "pMCI"
    if text in _SMCI:
        return "sMCI"
    return None


def parse_age(value: Any) -> float | None:
    """Age in years for a number in 0..130, else None (``89+`` and other censored values included)."""
    return _parse_number(value, _NUMERIC["age"])


def _parse_number(value: Any, bounds: tuple[float, float]) -> float | None:
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    lo, hi = bounds
    return number if lo <= number <= hi else None  # also refuses NaN and inf


@dataclass(frozen=True)
class ParticipantLabels:
    """Labels of every participant listed in ``participants.tsv``.

    Attributes
    ----------
    table : DataFrame
        Index ``participant_id`` (with ``sub-``); columns :data:`LABEL_COLUMNS`: ``sex``
        (male/female/other or NA), ``diagnosis`` (AD/CN/MCI or NA), ``mmse`` (float or NaN),
        ``age`` (years, float or NaN), ``mci_progression`` (pMCI/sMCI or NA), ``site`` (text or NA).
        The participant's own values (in a longitudinal dataset usually those of the baseline).
    source : Path or None
        The ``participants.tsv`` read; None when the dataset has none.
    columns : dict
        label -> the participants.tsv column it came from (labels without a column are absent).
    unrecognised : dict
        label -> Counter of raw participants.tsv values that were not recognised (and became missing).
    sessions : DataFrame
        Index (``participant_id``, ``session_id`` with ``ses-``), columns :data:`LABEL_COLUMNS`: one
        row per row of every ``sub-*/sub-*_sessions.tsv``, the participant's values overridden by
        the session's. Empty for a dataset without sessions tables.
    session_sources : tuple of Path
        The sessions tables read.
    session_unrecognised : dict
        label -> Counter of raw sessions-table values that were not recognised (and became missing).
    """

    table: pd.DataFrame
    source: Path | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    unrecognised: Mapping[str, Counter] = field(default_factory=dict)
    sessions: pd.DataFrame = field(default_factory=lambda: _empty_table(sessions=True))
    session_sources: tuple[Path, ...] = ()
    session_unrecognised: Mapping[str, Counter] = field(default_factory=dict)

    @property
    def has_labels(self) -> bool:
        """True when a participant or session has a usable sex, diagnosis or MMSE.

        These are what the group's binary evaluations (sex, AD) are made against; whether there is
        anything for another kind of target (``age``, ``mci_progression``) is :meth:`has_label`.
        """
        return any(self.has_label(c) for c in ("sex", "diagnosis", "mmse"))

    def has_label(self, column: str) -> bool:
        """True when a participant or session has a usable value of ``column`` (one of LABEL_COLUMNS)."""
        if column not in LABEL_COLUMNS:
            raise KeyError(f"{column!r} is not a label column; known: {', '.join(LABEL_COLUMNS)}")
        return any(bool(t[column].notna().any()) for t in (self.table, self.sessions))

    def n_unrecognised(self, label: str) -> int:
        """Values of ``label`` not recognised, in participants.tsv and the sessions tables together."""
        counters = (self.unrecognised.get(label, Counter()), self.session_unrecognised.get(label, Counter()))
        return int(sum(sum(c.values()) for c in counters))

    def lookup(self, participant_ids: Sequence[Any], session_ids: Sequence[Any] | None = None) -> pd.DataFrame:
        """The labels (columns :data:`LABEL_COLUMNS`) of each (participant, session) pair, in order.

        ``session_ids`` as in the app's tables (``ses-M12`` or ``M12``; None / NA / ``n/a`` for
        none). A pair listed in a sessions table gets that session's row; any other pair (no
        session, or a session its table does not list) the participant's values; a participant in
        neither table gets missing values.
        """
        pids = [_participant_id(p) for p in participant_ids]
        sids = [None] * len(pids) if session_ids is None else [_session_id(s) for s in session_ids]
        if len(sids) != len(pids):
            raise ValueError(f"{len(pids)} participant ids but {len(sids)} session ids")
        out = self.table.reindex(pd.Index(pids, dtype="string")).reset_index(drop=True)
        if len(self.sessions):
            keys = pd.MultiIndex.from_arrays([pd.array(pids, dtype="string"),
                                              pd.array([s if s is not None else "" for s in sids], dtype="string")])
            found = self.sessions.reindex(keys).reset_index(drop=True)
            listed = pd.Series(keys.isin(self.sessions.index))
            for col in LABEL_COLUMNS:
                out[col] = out[col].where(~listed, found[col])
        return out


def _empty_table(sessions: bool = False) -> pd.DataFrame:
    columns = {c: pd.Series(dtype=float if c in _NUMERIC else "string") for c in LABEL_COLUMNS}
    if sessions:
        index: pd.Index = pd.MultiIndex.from_arrays(
            [pd.array([], dtype="string"), pd.array([], dtype="string")], names=["participant_id", "session_id"]
        )
    else:
        index = pd.Index([], name="participant_id", dtype="string")
    return pd.DataFrame(columns, index=index)


def _participant_id(value: Any) -> str:
    text = str(value).strip()
    return text if text.startswith("sub-") else f"sub-{text}"


def _session_id(value: Any) -> str | None:
    if _is_missing(value):
        return None
    text = str(value).strip()
    return text if text.startswith("ses-") else f"ses-{text}"


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


#: (label, recognised column names, parser) of the labels held as text
_TEXT_LABELS: tuple[tuple[str, tuple[str, ...], Callable[[Any], str | None]], ...] = (
    ("sex", SEX_COLUMNS, parse_sex),
    ("diagnosis", DIAGNOSIS_COLUMNS, parse_diagnosis),
    ("mci_progression", MCI_PROGRESSION_COLUMNS, parse_mci_progression),
)
_NUMBER_LABELS: tuple[tuple[str, tuple[str, ...]], ...] = (("mmse", MMSE_COLUMNS), ("age", AGE_COLUMNS))


@dataclass(frozen=True)
class _Parsed:
    """The labels of one table's rows (positional index) and which cells held a value at all."""

    values: pd.DataFrame
    given: pd.DataFrame
    columns: dict[str, str]
    unrecognised: dict[str, Counter]


def _parse_numbers(values: pd.Series, bounds: tuple[float, float]) -> tuple[list[float], Counter]:
    out: list[float] = []
    unknown: Counter = Counter()
    for raw in values:
        if _is_missing(raw):
            out.append(math.nan)
            continue
        number = _parse_number(raw, bounds)
        if number is None:
            unknown[str(raw)] += 1
            out.append(math.nan)
        else:
            out.append(number)
    return out, unknown


def _parse_labels(raw: pd.DataFrame, sidecar: Mapping[str, Any]) -> _Parsed:
    values = _empty_table().reset_index(drop=True).reindex(range(len(raw)))
    given = pd.DataFrame(False, index=values.index, columns=list(LABEL_COLUMNS))
    columns: dict[str, str] = {}
    unrecognised: dict[str, Counter] = {}
    names = [c for c in raw.columns if c not in ("participant_id", "session_id")]
    for label, candidates, parse in _TEXT_LABELS:
        col = _find_column(names, candidates)
        if col is None:
            continue
        columns[label] = col
        parsed, unknown = _parse_column(raw[col], parse, _levels_map(sidecar, col, parse))
        values[label] = pd.array(parsed, dtype="string")
        unrecognised[label] = unknown
    for label, candidates in _NUMBER_LABELS:
        col = _find_column(names, candidates)
        if col is None:
            continue
        columns[label] = col
        numbers, unknown = _parse_numbers(raw[col], _NUMERIC[label])
        values[label] = numbers
        unrecognised[label] = unknown
    col = _find_column(names, SITE_COLUMNS)
    if col is not None:
        columns["site"] = col
        values["site"] = pd.array([None if _is_missing(v) else str(v).strip() for v in raw[col]], dtype="string")
    for label, col in columns.items():
        given[label] = [not _is_missing(v) for v in raw[col]]
    return _Parsed(values=values, given=given, columns=columns, unrecognised=unrecognised)


def _read_sidecar(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputDataError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputDataError(f"{path}: expected a JSON object describing the columns of its table")
    return data


def _read_tsv(path: Path, key: str) -> pd.DataFrame:
    try:
        raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputDataError(f"{path}: cannot be read as a tab-separated table ({exc})") from exc
    if key not in raw.columns:
        raise InputDataError(f"{path}: no {key!r} column (columns found: {list(raw.columns)}); BIDS requires it first")
    return raw


def _what(label: str) -> str:
    if label in _NUMERIC:
        lo, hi = _NUMERIC[label]
        return f"is not a number in {lo:g}..{hi:g}"
    return "is not a recognised spelling"


def _hint(label: str, value: str, sidecar_name: str) -> str:
    if label in _NUMERIC or label == "site" or not re.fullmatch(r"-?\d+(\.\d+)?", value.strip()):
        return ""
    return f"; numeric codes need 'Levels' in {sidecar_name}"


def _warn_unrecognised(path: Path, columns: Mapping[str, str], unrecognised: Mapping[str, Counter]) -> None:
    for label, unknown in unrecognised.items():
        for value, count in sorted(unknown.items()):
            logger.warning(
                "%s: column %r value %r %s (%d participant%s); treated as missing%s",
                path,
                columns[label],
                value,
                _what(label),
                count,
                "" if count == 1 else "s",
                _hint(label, value, "participants.json"),
            )


def _read_sessions(bids_dir: Path, participants: pd.DataFrame, listed: bool) -> tuple[
    pd.DataFrame, tuple[Path, ...], dict[str, Counter]
]:
    """Every ``sub-*/sub-*_sessions.tsv`` as one table, participant values overridden per session."""
    root_sidecar = _read_sidecar(bids_dir / "sessions.json")  # inherited by every sessions table
    frames: list[pd.DataFrame] = []
    sources: list[Path] = []
    unrecognised: dict[str, Counter] = {}
    first_seen: dict[tuple[str, str, str], Path] = {}
    for path in sorted(bids_dir.glob("sub-*/sub-*_sessions.tsv")):
        pid = path.parent.name
        if path.name != f"{pid}_sessions.tsv":
            logger.warning("%s: a sessions table must be named %s_sessions.tsv in its folder; ignored", path, pid)
            continue
        raw = _read_tsv(path, "session_id")
        sids = [_session_id(v) for v in raw["session_id"]]
        if any(s is None for s in sids):
            raise InputDataError(f"{path}: every row needs a session_id (ses-<label>); some are empty or n/a")
        duplicated = sorted({s for s in sids if sids.count(s) > 1 and s is not None})
        if duplicated:
            raise InputDataError(f"{path}: sessions listed more than once: {duplicated}")
        own = path.with_suffix(".json")
        parsed = _parse_labels(raw, _read_sidecar(own) if own.is_file() else root_sidecar)
        if listed and pid not in participants.index:
            logger.warning("%s: participant %s is not in participants.tsv; only its sessions' values are used",
                           path, pid)
        merged = participants.reindex(pd.Index([pid] * len(raw), dtype="string")).reset_index(drop=True)
        for col in LABEL_COLUMNS:
            merged[col] = merged[col].where(~parsed.given[col], parsed.values[col])
        merged.index = pd.MultiIndex.from_arrays(
            [pd.array([pid] * len(raw), dtype="string"), pd.array(sids, dtype="string")],
            names=["participant_id", "session_id"],
        )
        frames.append(merged)
        sources.append(path)
        for label, unknown in parsed.unrecognised.items():
            unrecognised.setdefault(label, Counter()).update(unknown)
            for value in unknown:
                first_seen.setdefault((label, parsed.columns[label], value), path)
    for (label, col, value), path in sorted(first_seen.items(), key=lambda kv: kv[0]):
        count = unrecognised[label][value]
        logger.warning(
            "sessions tables: column %r value %r %s (%d session%s, first in %s); treated as missing for the "
            "session%s",
            col, value, _what(label), count, "" if count == 1 else "s", path,
            _hint(label, value, "the sessions table's JSON sidecar"),
        )
    if not frames:
        return _empty_table(sessions=True), (), {}
    return pd.concat(frames), tuple(sources), unrecognised


def read_labels(bids_dir: Path) -> ParticipantLabels:
    """Read and normalise the labels in ``participants.tsv`` and every ``sub-*/sub-*_sessions.tsv``.

    A dataset without ``participants.tsv``, or without label columns, gives an empty / all-missing
    table: the group level then writes predictions but no evaluation. Raises
    :class:`~bids_app.errors.InputDataError` (naming the file) for an unreadable table, a table
    without ``participant_id`` (``session_id`` for a sessions table), a participant or a session
    listed twice, or an unreadable JSON sidecar.
    """
    bids_dir = Path(bids_dir)
    path = bids_dir / "participants.tsv"
    if not path.is_file():
        logger.info("no participants.tsv in %s: participants have no labels of their own", bids_dir)
        table, source, columns, unrecognised = _empty_table(), None, {}, {}
    else:
        raw = _read_tsv(path, "participant_id")
        ids = [_participant_id(v) for v in raw["participant_id"]]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise InputDataError(f"{path}: participants listed more than once: {duplicated}")
        parsed = _parse_labels(raw, _read_sidecar(bids_dir / "participants.json"))
        table = parsed.values
        table.index = pd.Index(ids, name="participant_id", dtype="string")
        source, columns, unrecognised = path, parsed.columns, parsed.unrecognised
        _warn_unrecognised(path, columns, unrecognised)
    sessions, session_sources, session_unrecognised = _read_sessions(bids_dir, table, listed=source is not None)
    return ParticipantLabels(
        table=table,
        source=source,
        columns=columns,
        unrecognised=unrecognised,
        sessions=sessions,
        session_sources=session_sources,
        session_unrecognised=session_unrecognised,
    )


#: the name today's callers use: the same reader (participants.tsv and the sessions tables)
read_participant_labels = read_labels

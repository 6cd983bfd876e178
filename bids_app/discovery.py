"""Find the T1w images to process, with pybids.

Every T1w (any session, run or other entity, ``.nii`` or ``.nii.gz``) of the selected participants
and sessions, optionally narrowed by a ``--bids-filter-file``, is one
:class:`~bids_app.types.T1wUnit` carrying every entity of its name, so that no two T1w images share
an output name. Two files that would (a ``.nii`` and a ``.nii.gz`` twin) are refused before anything
runs. The index lives in memory: nothing is written into the input dataset.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import InputDataError, NoInputError, NoMatchError, UsageError
from .types import T1wUnit

__all__ = ["ENTITY_KEYS", "strip_prefix", "read_labels", "load_bids_filters", "find_collisions", "discover_units"]

_log = logging.getLogger("bids_app.discovery")

#: pybids entity names -> BIDS short keys used in file names (every entity of pybids' BIDS config)
ENTITY_KEYS: dict[str, str] = {
    "subject": "sub",
    "session": "ses",
    "sample": "sample",
    "task": "task",
    "tracksys": "tracksys",
    "acquisition": "acq",
    "nucleus": "nuc",
    "volume": "voi",
    "ceagent": "ce",
    "staining": "stain",
    "tracer": "trc",
    "reconstruction": "rec",
    "direction": "dir",
    "run": "run",
    "modality": "mod",
    "echo": "echo",
    "flip": "flip",
    "inv": "inv",
    "mt": "mt",
    "part": "part",
    "proc": "proc",
    "recording": "recording",
    "chunk": "chunk",
}
#: query keys a filter file may not change: the app reads anatomical T1w NIfTI images only
_FIXED_QUERY = ("suffix", "datatype", "extension")
#: top-level folders pybids does not index (its default ignore list), so their permissions do not matter
_NOT_INDEXED = ("derivatives", "sourcedata", "code", "stimuli", "models")
#: the image types a ``--bids-filter-file`` may select (NiPreps-style keys)
FILTER_KEYS = ("t1w",)


def strip_prefix(label: str, prefix: str) -> str:
    """``sub-01`` -> ``01`` (for ``prefix='sub'``); labels must be alphanumeric after that."""
    label = label.strip()
    if label.startswith(f"{prefix}-"):
        label = label[len(prefix) + 1 :]
    if not label or not label.isalnum():
        raise NoMatchError(f"invalid {prefix} label {label!r}: BIDS labels are alphanumeric")
    return label


def read_labels(values: Iterable[str], prefix: str) -> list[str]:
    """Labels from the command line; ``@FILE`` adds one label per line of FILE (``#`` comments).

    A plain value is always a label, even when a file of that name exists in the current folder:
    only the explicit ``@`` reads a file, so ``--participant-label 01`` never reads ``./01``.
    """
    labels: list[str] = []
    for value in values:
        if value.startswith("@"):
            path = Path(value[1:])
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise NoInputError(f"{value}: cannot read the label file {path} ({exc.strerror or exc})") from exc
            lines = [ln.strip() for ln in text.splitlines()]
            labels += [strip_prefix(ln, prefix) for ln in lines if ln and not ln.startswith("#")]
        else:
            try:
                labels.append(strip_prefix(value, prefix))
            except NoMatchError as exc:
                if Path(value).is_file():
                    raise NoMatchError(f"{exc}; to read labels from the file {value}, write @{value}") from None
                raise
    return sorted(dict.fromkeys(labels))


def load_bids_filters(path: Path | None) -> dict[str, Any]:
    """Read and check a ``--bids-filter-file``: ``{"t1w": {entity: value | [values] | null}}``.

    Entities are pybids names (``acquisition``, ``reconstruction``, ``run``, ...) or BIDS short keys
    (``acq``, ``rec``); ``null`` means "the entity must be absent", ``"*"`` "present, any value".
    Raises :class:`UsageError` naming the unknown key or entity, with the closest valid name.
    """
    if path is None:
        return {}
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise NoInputError(f"--bids-filter-file {path}: cannot read it ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise UsageError(f"--bids-filter-file {path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise UsageError(f"--bids-filter-file {path}: must hold a JSON object such as "
                         '{"t1w": {"acquisition": "mprage"}}')
    filters: dict[str, Any] = {}
    short_to_long = {v: k for k, v in ENTITY_KEYS.items()}
    for key, query in raw.items():
        if key.lower() not in FILTER_KEYS:
            raise UsageError(f"--bids-filter-file {path}: unknown image type {key!r}; this app reads only "
                             f"{', '.join(repr(k) for k in FILTER_KEYS)}")
        if not isinstance(query, dict):
            raise UsageError(f"--bids-filter-file {path}: {key!r} must map entities to values")
        for entity, value in query.items():
            name = short_to_long.get(entity, entity)
            if name in _FIXED_QUERY:
                raise UsageError(f"--bids-filter-file {path}: {entity!r} cannot be changed (the app reads "
                                 "anat *_T1w.nii[.gz] images)")
            if name not in ENTITY_KEYS:
                close = difflib.get_close_matches(entity, [*ENTITY_KEYS, *short_to_long], n=1, cutoff=0.5)
                raise UsageError(
                    f"--bids-filter-file {path}: unknown BIDS entity {entity!r} in {key!r}"
                    + (f" (did you mean {close[0]!r}?)" if close else "")
                    + f"; known entities: {', '.join(ENTITY_KEYS)}"
                )
            values = value if isinstance(value, list) else [value]
            if not all(v is None or isinstance(v, (str, int)) for v in values) or not values:
                raise UsageError(f"--bids-filter-file {path}: {key}.{entity} must be a string, a number, "
                                 f"null or a list of those; got {value!r}")
            filters[name] = value
    return filters


def _pybids_query(filters: Mapping[str, Any]) -> dict[str, Any]:
    from bids.layout import Query

    def convert(v: Any) -> Any:
        if v is None:
            return Query.NONE
        if v == "*":
            return Query.ANY
        return v

    return {k: [convert(x) for x in v] if isinstance(v, list) else convert(v) for k, v in filters.items()}


def _unreadable_dirs(bids_dir: Path) -> list[Path]:
    """Folders below ``bids_dir`` the app cannot list (pybids would crash on them)."""
    bad: list[Path] = []

    def onerror(exc: OSError) -> None:
        bad.append(Path(exc.filename) if exc.filename else bids_dir)

    for root, dirs, _files in os.walk(bids_dir, onerror=onerror):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _NOT_INDEXED]
        for d in dirs:
            full = Path(root, d)
            if not os.access(full, os.R_OK | os.X_OK):
                bad.append(full)
    return sorted(set(bad))


def find_collisions(units: Sequence[T1wUnit]) -> list[tuple[T1wUnit, ...]]:
    """Groups of units that would write the same outputs (same entities: e.g. ``.nii`` + ``.nii.gz``)."""
    by_prefix: dict[str, list[T1wUnit]] = {}
    for u in units:
        by_prefix.setdefault(u.prefix, []).append(u)
    return [tuple(group) for group in by_prefix.values() if len(group) > 1]


def _check_requested(requested: Sequence[str], available: Sequence[str], what: str, bids_dir: Path) -> None:
    missing = [lab for lab in requested if lab not in available]
    if not missing:
        return
    hints = []
    for lab in missing:
        close = difflib.get_close_matches(lab, available, n=1, cutoff=0.5)
        hints.append(f"{lab!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
    raise NoMatchError(
        f"{what} label(s) {', '.join(hints)} not found in {bids_dir}; available: {shown or 'none'}"
    )


def discover_units(
    bids_dir: Path,
    *,
    participant_labels: Sequence[str] = (),
    session_labels: Sequence[str] = (),
    bids_filters: Mapping[str, Any] | None = None,
) -> list[T1wUnit]:
    """All T1w images of the selected participants / sessions, sorted by their entities.

    ``bids_filters`` are pybids entity filters for the T1w images (see :func:`load_bids_filters`).
    Raises :class:`NoInputError` when ``bids_dir`` is not a BIDS dataset or a folder of a selected
    participant cannot be read, :class:`NoMatchError` when a requested label does not exist or the
    filters select nothing, and :class:`InputDataError` when two T1w images would share outputs.
    """
    from bids import BIDSLayout

    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise NoInputError(f"the BIDS directory {bids_dir} does not exist")
    if not (bids_dir / "dataset_description.json").is_file():
        raise NoInputError(
            f"{bids_dir} has no dataset_description.json, so it is not a BIDS dataset. Add one, e.g. "
            '{"Name": "My study", "BIDSVersion": "1.10.0", "DatasetType": "raw"}'
        )
    unreadable = _unreadable_dirs(bids_dir)
    wanted = {f"sub-{lab}" for lab in participant_labels}
    blocking = [d for d in unreadable if not wanted or set(d.relative_to(bids_dir).parts) & wanted
                or not d.relative_to(bids_dir).parts[0].startswith("sub-")]
    if blocking:
        raise NoInputError(
            f"cannot read {', '.join(str(d) for d in blocking[:5])} (permission denied); give the app's "
            "user read and execute permission there, or leave that participant out with --participant-label"
        )
    extra: dict[str, Any] = {}
    if unreadable:
        from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

        for d in unreadable:
            _log.warning("skipping the unreadable folder %s (no selected participant in it)", d)
        from bids.layout import BIDSLayoutIndexer

        skip = [re.compile("^/" + re.escape(d.relative_to(bids_dir).as_posix()) + "(/|$)") for d in unreadable]
        extra["indexer"] = BIDSLayoutIndexer(ignore=[*DEFAULT_LOCATIONS_TO_IGNORE, *skip])
    try:
        layout = BIDSLayout(str(bids_dir), validate=False, derivatives=False, **extra)
    except PermissionError as exc:
        raise NoInputError(f"cannot read {exc.filename or bids_dir}: {exc.strerror}") from exc
    subjects = sorted(layout.get_subjects())
    if participant_labels:
        _check_requested(participant_labels, subjects, "participant", bids_dir)
    query: dict = {**_pybids_query(bids_filters or {}),
                   "suffix": "T1w", "datatype": "anat", "extension": [".nii", ".nii.gz"]}
    if participant_labels:
        query["subject"] = list(participant_labels)
    if session_labels:
        sessions = sorted(layout.get_sessions(**({"subject": list(participant_labels)} if participant_labels else {})))
        _check_requested(session_labels, sessions, "session", bids_dir)
        query["session"] = list(session_labels)
    units: list[T1wUnit] = []
    for bfile in layout.get(**query):
        ents = bfile.get_entities()
        entities = {key: str(ents[name]) for name, key in ENTITY_KEYS.items() if ents.get(name) is not None}
        try:
            metadata = dict(bfile.get_metadata())
        except Exception as exc:  # broken sidecar JSON: keep going, the unit records it
            _log.warning("could not read the JSON sidecar of %s: %s", bfile.path, exc)
            metadata = {}
        units.append(T1wUnit(path=Path(bfile.path), entities=entities, metadata=metadata))
    units.sort(key=lambda u: u.prefix)
    if not units:
        filters = []
        if participant_labels:
            filters.append(f"participants {', '.join(participant_labels)}")
        if session_labels:
            filters.append(f"sessions {', '.join(session_labels)}")
        if bids_filters:
            filters.append(f"the filter file's {json.dumps(dict(bids_filters))}")
        raise NoMatchError(
            f"no T1w image (anat/*_T1w.nii[.gz]) found in {bids_dir}"
            + (f" for {' and '.join(filters)}" if filters else "")
        )
    collisions = find_collisions(units)
    if collisions:
        shown = "; ".join(" and ".join(str(u.path) for u in group) for group in collisions[:5])
        raise InputDataError(
            f"{len(collisions)} group(s) of T1w images carry the same BIDS entities and would overwrite "
            f"each other's outputs: {shown}. Keep one file of each group (e.g. delete the .nii twin of a "
            ".nii.gz), or select one with --bids-filter-file"
        )
    _log.info("found %d T1w image(s) of %d participant(s)", len(units), len({u.subject for u in units}))
    return units

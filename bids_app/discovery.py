"""Find the T1w images to process, with pybids.

Every T1w (any session, run, ``acq-``/``ce-``/``rec-`` entity, ``.nii`` or ``.nii.gz``) of the
selected participants and sessions is one :class:`~bids_app.types.T1wUnit`. The index lives in
memory: nothing is written into the input dataset.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Iterable, Sequence

from .errors import NoInputError, NoMatchError
from .types import T1wUnit

__all__ = ["strip_prefix", "read_labels", "discover_units"]

_log = logging.getLogger("bids_app.discovery")

#: pybids entity names -> BIDS short keys used in file names
_ENTITY_KEYS = {
    "subject": "sub",
    "session": "ses",
    "acquisition": "acq",
    "ceagent": "ce",
    "reconstruction": "rec",
    "run": "run",
}


def strip_prefix(label: str, prefix: str) -> str:
    """``sub-01`` -> ``01`` (for ``prefix='sub'``); labels must be alphanumeric after that."""
    label = label.strip()
    if label.startswith(f"{prefix}-"):
        label = label[len(prefix) + 1 :]
    if not label or not label.isalnum():
        raise NoMatchError(f"invalid {prefix} label {label!r}: BIDS labels are alphanumeric")
    return label


def read_labels(values: Iterable[str], prefix: str) -> list[str]:
    """Labels from the command line; a value naming an existing file contributes one label per line."""
    labels: list[str] = []
    for value in values:
        path = Path(value)
        if path.is_file():
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            labels += [strip_prefix(ln, prefix) for ln in lines if ln and not ln.startswith("#")]
        else:
            labels.append(strip_prefix(value, prefix))
    return sorted(dict.fromkeys(labels))


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
) -> list[T1wUnit]:
    """All T1w images of the selected participants / sessions, sorted by their entities.

    Raises :class:`NoInputError` when ``bids_dir`` is not a BIDS dataset and
    :class:`NoMatchError` when a requested label does not exist or the filters select nothing.
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
    layout = BIDSLayout(str(bids_dir), validate=False, derivatives=False)
    subjects = sorted(layout.get_subjects())
    if participant_labels:
        _check_requested(participant_labels, subjects, "participant", bids_dir)
    query: dict = {"suffix": "T1w", "datatype": "anat", "extension": [".nii", ".nii.gz"]}
    if participant_labels:
        query["subject"] = list(participant_labels)
    if session_labels:
        sessions = sorted(layout.get_sessions(**({"subject": list(participant_labels)} if participant_labels else {})))
        _check_requested(session_labels, sessions, "session", bids_dir)
        query["session"] = list(session_labels)
    units: list[T1wUnit] = []
    for bfile in layout.get(**query):
        ents = bfile.get_entities()
        entities = {key: str(ents[name]) for name, key in _ENTITY_KEYS.items() if ents.get(name) is not None}
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
        raise NoMatchError(
            f"no T1w image (anat/*_T1w.nii[.gz]) found in {bids_dir}"
            + (f" for {' and '.join(filters)}" if filters else "")
        )
    _log.info("found %d T1w image(s) of %d participant(s)", len(units), len({u.subject for u in units}))
    return units

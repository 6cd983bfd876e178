"""Training data: GM maps found in a derivatives directory, labels and sites from participants.tsv.

Why a table first, arrays second: the folds are decided on participants and sites (never on
files), so :func:`collect_cohort` returns one row per map pair with the participant's labels and
site, and :func:`load_inputs` turns any subset of rows into model inputs only when needed.

Maps are found by the app's own output names (``..._space-IXI549Space_label-GM_probseg.nii.gz``
and ``..._label-GM_desc-modulated_probseg.nii.gz``), so the same code reads an app output
directory, a BIDS-derivatives dataset made by another tool with those names, or the ground truth
of a simulated cohort.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import pandas as pd

from ..derivatives import SPACE
from ..errors import InputDataError, NoInputError
from ..grid import is_on_grid, make_model_input, to_grid
from ..labels import read_participant_labels

__all__ = ["SITE_COLUMNS", "collect_cohort", "load_inputs", "maps_origin"]

_log = logging.getLogger("bids_app.train")

#: participants.tsv columns (lower-cased) that name the acquisition site, first match wins
SITE_COLUMNS: tuple[str, ...] = ("site", "site_id", "centre", "center", "scanner", "dataset")
_GMD_RE = re.compile(
    rf"^(?P<prefix>sub-[A-Za-z0-9]+(?:_[a-z]+-[A-Za-z0-9]+)*)_space-{SPACE}_label-GM_probseg\.nii(\.gz)?$"
)


def collect_cohort(derivatives_dir: Path, participants_tsv: Path) -> pd.DataFrame:
    """One row per (GMD, GMV) map pair with the participant's sex, diagnosis and site.

    Columns: ``participant_id``, ``prefix`` (entity part of the names), ``gmd``, ``gmv`` (paths),
    ``sex`` (male/female or NA), ``diagnosis`` (AD/CN/MCI or NA), ``site``. Maps of participants
    missing from the table are dropped with a warning; a table without a site column is refused
    (leave-sites-out validation needs sites).
    """
    derivatives_dir = Path(derivatives_dir)
    participants_tsv = Path(participants_tsv)
    if not derivatives_dir.is_dir():
        raise NoInputError(f"{derivatives_dir}: the derivatives directory does not exist")
    if not participants_tsv.is_file():
        raise NoInputError(f"{participants_tsv}: participants table not found")
    if participants_tsv.name != "participants.tsv":
        raise InputDataError(f"{participants_tsv}: the participants table must be named participants.tsv (BIDS)")
    labels = read_participant_labels(participants_tsv.parent).table
    raw = pd.read_csv(participants_tsv, sep="\t", dtype=str, keep_default_na=False)
    lower = {c.lower(): c for c in raw.columns}
    site_col = next((lower[c] for c in SITE_COLUMNS if c in lower), None)
    if site_col is None:
        raise InputDataError(
            f"{participants_tsv}: no site column (looked for {', '.join(SITE_COLUMNS)}); "
            "leave-sites-out cross-validation needs the acquisition site of every participant"
        )
    ids = raw["participant_id"].str.strip()
    ids = ids.where(ids.str.startswith("sub-"), "sub-" + ids)
    sites = dict(zip(ids, raw[site_col].str.strip()))

    rows = []
    for gmd in sorted(derivatives_dir.glob(f"sub-*/**/*_space-{SPACE}_label-GM_probseg.nii*")):
        m = _GMD_RE.match(gmd.name)
        if not m:
            continue
        prefix = m.group("prefix")
        ext = ".nii.gz" if gmd.name.endswith(".nii.gz") else ".nii"
        gmv = gmd.with_name(f"{prefix}_space-{SPACE}_label-GM_desc-modulated_probseg{ext}")
        if not gmv.is_file():
            _log.warning("%s has no modulated (GMV) partner %s; skipped", gmd, gmv.name)
            continue
        pid = prefix.split("_")[0]
        if pid not in sites:
            _log.warning("%s: participant %s is not in %s; skipped", gmd, pid, participants_tsv)
            continue
        site = sites[pid]
        if site in ("", "n/a"):
            raise InputDataError(f"{participants_tsv}: participant {pid} has no site (column {site_col!r})")
        rows.append(
            {
                "participant_id": pid,
                "prefix": prefix,
                "gmd": gmd,
                "gmv": gmv,
                "sex": labels.loc[pid, "sex"] if pid in labels.index else pd.NA,
                "diagnosis": labels.loc[pid, "diagnosis"] if pid in labels.index else pd.NA,
                "site": site,
            }
        )
    if not rows:
        raise NoInputError(
            f"{derivatives_dir}: no GM map pairs named *_space-{SPACE}_label-GM_probseg.nii.gz and "
            f"*_space-{SPACE}_label-GM_desc-modulated_probseg.nii.gz for participants in {participants_tsv}"
        )
    return pd.DataFrame(rows)


def _read_map(path: Path) -> np.ndarray:
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for damaged files
        raise InputDataError(f"{path}: cannot be read as NIfTI ({exc})") from exc
    data = to_grid(img) if not is_on_grid(img) else np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)
    if not np.isfinite(data).any():
        raise InputDataError(f"{path}: holds no finite values")
    return data.reshape(data.shape[:3])


def load_inputs(rows: pd.DataFrame, *, progress: bool = False) -> np.ndarray:
    """Model inputs (N x 2 x 96 x 120 x 86, float16 as the reference stored them) for ``rows``."""
    out = np.empty((len(rows), 2, 96, 120, 86), dtype=np.float16)
    it: Sequence = list(rows.itertuples(index=False))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="load maps", unit="map pair")
    for i, r in enumerate(it):
        out[i] = make_model_input(_read_map(Path(r.gmd)), _read_map(Path(r.gmv)), dtype=np.float16)
    return out


def maps_origin(derivatives_dir: Path) -> tuple[str, bool]:
    """(origin label, synthetic?) of the maps in ``derivatives_dir`` from its dataset_description.

    The origin goes into the card's ``training.preprocessing``: the app warns when a model is used
    on maps from another preprocessing. Maps written by ``vbm-predict simulate`` are synthetic.
    """
    desc = Path(derivatives_dir) / "dataset_description.json"
    try:
        meta = json.loads(desc.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "unknown", False
    gen = meta.get("GeneratedBy") or [{}]
    name = str(gen[0].get("Name", "unknown")) if isinstance(gen, list) and gen else "unknown"
    if name == "vbm-predict simulate":
        return "synthetic-ground-truth", True
    return name, False

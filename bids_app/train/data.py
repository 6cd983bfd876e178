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
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import pandas as pd

from ..derivatives import SPACE
from ..errors import InputDataError, NoInputError
from ..grid import is_on_grid, make_model_input, to_grid
from ..labels import SITE_COLUMNS, read_participant_labels

__all__ = ["SITE_COLUMNS", "collect_cohort", "load_inputs", "maps_origin", "INPUT_KINDS_LOADABLE"]

#: input kinds :func:`load_inputs` builds
INPUT_KINDS_LOADABLE: tuple[str, ...] = ("gm_crop2", "gm_spm1", "t1w_mni1mm")

_log = logging.getLogger("bids_app.train")

_GMD_RE = re.compile(
    rf"^(?P<prefix>sub-[A-Za-z0-9]+(?:_[a-z]+-[A-Za-z0-9]+)*)_space-{SPACE}_label-GM_probseg\.nii(\.gz)?$"
)


def collect_cohort(derivatives_dir: Path, participants_tsv: Path) -> pd.DataFrame:
    """One row per (GMD, GMV) map pair with the participant's labels and site.

    Columns: ``participant_id``, ``prefix`` (entity part of the names), ``gmd``, ``gmv`` (paths),
    ``sex`` (male/female or NA), ``diagnosis`` (AD/CN/MCI or NA), ``site``, ``age`` (years or NaN),
    ``mci_progression`` (pMCI / sMCI or NA; a session's row in ``sessions.tsv`` overrides the
    participant's age, diagnosis and progression), ``t1w_mni`` (path of a registered 1 mm MNI T1w
    next to the maps, or NA). Maps of participants
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
    labels = read_participant_labels(participants_tsv.parent)
    site_col = labels.columns.get("site")
    if site_col is None:
        raise InputDataError(
            f"{participants_tsv}: no site column (looked for {', '.join(SITE_COLUMNS)}); "
            "leave-sites-out cross-validation needs the acquisition site of every participant"
        )
    sites = labels.table["site"]

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
        if pid not in sites.index:
            _log.warning("%s: participant %s is not in %s; skipped", gmd, pid, participants_tsv)
            continue
        site = sites.loc[pid]
        if pd.isna(site):
            raise InputDataError(f"{participants_tsv}: participant {pid} has no site (column {site_col!r})")
        session = next((e for e in prefix.split("_")[1:] if e.startswith("ses-")), None)
        rows.append({"participant_id": pid, "prefix": prefix, "gmd": gmd, "gmv": gmv, "session_id": session,
                     "site": str(site)})
    if not rows:
        raise NoInputError(
            f"{derivatives_dir}: no GM map pairs named *_space-{SPACE}_label-GM_probseg.nii.gz and "
            f"*_space-{SPACE}_label-GM_desc-modulated_probseg.nii.gz for participants in {participants_tsv}"
        )
    table = pd.DataFrame(rows)
    # the participant's labels, a session's own values (sessions.tsv) overriding them for that session
    found = labels.lookup(table["participant_id"], table.pop("session_id"))
    table = table.assign(sex=found["sex"].astype("string").to_numpy(),
                         diagnosis=found["diagnosis"].astype("string").to_numpy(),
                         age=found["age"].astype(float).to_numpy(),
                         mci_progression=found["mci_progression"].astype("string").to_numpy())
    table = table[["participant_id", "prefix", "gmd", "gmv", "sex", "diagnosis", "site", "age", "mci_progression"]]
    return table.assign(t1w_mni=[_t1w_mni_next_to(Path(r.gmd), str(r.prefix)) for r in table.itertuples(index=False)])


def _t1w_mni_next_to(gmd: Path, prefix: str) -> Any:
    """The registered 1 mm MNI T1w beside a GMD map (``<prefix>_space-MNI152*_desc-preproc_T1w``), or NA."""
    found = sorted(gmd.parent.glob(f"{prefix}_space-MNI152*_desc-preproc_T1w.nii*"))
    return found[0] if found else pd.NA


def _read_map(path: Path) -> np.ndarray:
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for damaged files
        raise InputDataError(f"{path}: cannot be read as NIfTI ({exc})") from exc
    data = to_grid(img) if not is_on_grid(img) else np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)
    if not np.isfinite(data).any():
        raise InputDataError(f"{path}: holds no finite values")
    return data.reshape(data.shape[:3])


_SHAPES: dict[str, tuple[int, ...]] = {"gm_crop2": (2, 96, 120, 86), "gm_spm1": (1, 121, 145, 121),
                                       "t1w_mni1mm": (1, 160, 192, 160)}


def _t1w_input(path: Path) -> np.ndarray:
    """SEAM: the SFCN input of a registered T1w; the lead points this at ``bids_app.model_input.make_input``."""
    import importlib

    from ..types import GMMaps

    try:
        model_input = importlib.import_module("bids_app.model_input")
    except ImportError as exc:
        raise InputDataError(f"{path}: the t1w_mni1mm input needs bids_app.model_input, missing in this build") from exc
    img = nib.load(str(path))
    fields: dict[str, Any] = {"gmd": np.zeros((1, 1, 1), np.float32), "gmv": np.zeros((1, 1, 1), np.float32),
                              "t1w_mni": np.asarray(img.get_fdata(dtype=np.float32)), "backend": "derivatives",
                              "backend_version": "", "source_files": (path,)}
    return np.asarray(model_input.make_input("t1w_mni1mm", GMMaps(**fields), {"kind": "t1w_mni1mm"}))


def load_inputs(rows: pd.DataFrame, *, kind: str = "gm_crop2", progress: bool = False) -> np.ndarray:
    """Model inputs of ``kind`` for ``rows``, float16 as the reference stored them.

    * ``gm_crop2``: N x 2 x 96 x 120 x 86, GMD and GMV brain-masked and cropped (BrainImageNet);
    * ``gm_spm1``: N x 1 x 121 x 145 x 121, the GMV map on the SPM grid, uncropped, unmasked, NaN -> 0
      (Clinica t1-volume's modulated GM, as ClinicaDL and the MOX reproduction read it);
    * ``t1w_mni1mm``: N x 1 x 160 x 192 x 160 from the ``t1w_mni`` column (SFCN).
    """
    if kind not in _SHAPES:
        raise InputDataError(f"input kind {kind!r} cannot be built for training; known: {', '.join(_SHAPES)}")
    out = np.empty((len(rows), *_SHAPES[kind]), dtype=np.float16)
    it: Sequence = list(rows.itertuples(index=False))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"load {kind}", unit="input")
    for i, r in enumerate(it):
        if kind == "gm_crop2":
            out[i] = make_model_input(_read_map(Path(r.gmd)), _read_map(Path(r.gmv)), dtype=np.float16)
        elif kind == "gm_spm1":
            out[i, 0] = np.nan_to_num(_read_map(Path(r.gmv)), nan=0.0, posinf=0.0, neginf=0.0)
        else:
            t1 = getattr(r, "t1w_mni", pd.NA)
            if pd.isna(t1):
                raise InputDataError(f"{r.gmd}: no registered 1 mm MNI T1w (*_space-MNI152*_desc-preproc_T1w.nii.gz) "
                                     "next to the maps; the sfcn family needs it")
            out[i] = _t1w_input(Path(t1))
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
    names = [str(g.get("Name", "unknown")) for g in gen if isinstance(g, dict)] if isinstance(gen, list) else []
    name = names[0] if names else "unknown"
    if name == "vbm-predict simulate":
        return "synthetic-ground-truth", True
    # maps derived from a simulated cohort (bids_app.train.shift): synthetic, labelled by their first step
    return name, "vbm-predict simulate" in names[1:]

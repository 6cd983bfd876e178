"""The ``derivatives`` backend: reuse GM maps that already exist, so predictions need no preprocessing.

(The module is called ``existing`` so that it is not mistaken for :mod:`bids_app.derivatives`, the
writer of this app's own outputs.) The T1w a pair of maps stands for is still checked: it must be a
readable 3D NIfTI image (:func:`bids_app.preproc.inputs.check_t1w_header`, called by the stage
runner for every backend that reuses maps), so a T1w that is really a text file gets no predictions.

Three layouts are recognised, tried in this order for each T1w:

``caps``
    A Clinica CAPS directory (``DIR/subjects`` exists):
    ``subjects/sub-X/ses-Y/t1/spm/segmentation/normalized_space/<src>_segm-graymatter_space-Ixi549Space_modulated-{off,on}_probability.nii.gz``
    (``t1-volume-tissue-segmentation``), or the DARTEL route's unsmoothed
    ``subjects/sub-X/ses-Y/t1/spm/dartel/group-*/<src>_segm-graymatter_space-Ixi549Space_modulated-{off,on}_probability.nii.gz``.
``bids``
    A BIDS-derivatives dataset with ``label-GM`` probseg maps in an MNI space, unmodulated (no
    ``desc``) and modulated (``desc-modulated``), named with the T1w's entities, e.g. this app's own
    outputs or the synthetic cohort's ground truth.
``dparsf``
    DPARSF / SPM ``wc1*`` (GMD) and ``mwc1*`` (GMV) files in a folder named after the participant
    (``T1ImgNewSegment/sub-01/wc1*.nii``); sessions in folders or names carrying ``ses-Y``.

Maps on another grid are resampled (trilinear) onto the SPM 1.5 mm grid and say so in provenance.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from .._io import sha256_file
from ..errors import InputDataError, NoInputError, NoMatchError
from ..grid import SPM_SHAPE, is_on_grid, to_grid
from ..types import GMMaps, T1wUnit

__all__ = ["DerivativesBackend", "load_map"]


def load_map(path: Path) -> tuple[np.ndarray, bool]:
    """Load a GM map as float32 on the SPM grid; returns (data, resampled?).

    Raises :class:`InputDataError` naming the file when it is unreadable, not 3D or empty.
    """
    try:
        img = nib.load(str(path))
        shape = img.shape
        if len(shape) == 4 and shape[3] == 1:
            img = nib.funcs.squeeze_image(img)
        if len(img.shape) != 3:
            raise InputDataError(f"{path}: a GM map must be a 3D image, got shape {tuple(img.shape)}")
        on_grid = is_on_grid(img)
        data = to_grid(img)
    except InputDataError:
        raise
    except (OSError, EOFError, ValueError, ImageFileError) as exc:
        raise InputDataError(f"{path}: cannot read this GM map ({exc})") from exc
    if not np.isfinite(data).any() or not np.nanmax(np.abs(data)) > 0:
        raise InputDataError(f"{path}: the GM map is empty (all zero or NaN) on the SPM grid")
    return data, not on_grid


def _sidecar_backend(path: Path) -> str:
    """The backend recorded in a BIDS map's JSON sidecar (``PreprocBackend``), else ``unknown``."""
    sidecar = path.with_name(re.sub(r"\.nii(\.gz)?$", ".json", path.name))
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unknown"
    backend = meta.get("PreprocBackend", "unknown") if isinstance(meta, dict) else "unknown"
    if backend == "derivatives":  # maps this app reused earlier keep their first origin
        backend = meta.get("Provenance", {}).get("OriginalBackend", "unknown")
    return str(backend)


class DerivativesBackend:
    """Read GMD / GMV maps from an existing derivatives directory (see module docstring)."""

    name = "derivatives"
    #: maps are read, not made: no T1w processing, no cache (the maps are re-read on every run)
    reuses_existing_maps = True

    def __init__(self, derivatives_dir: Path):
        self.root = Path(derivatives_dir)
        if not self.root.is_dir():
            raise NoInputError(f"--derivatives {self.root}: no such directory")

    def available(self) -> bool:
        return True

    def version(self) -> str:
        return f"reused maps from {self.root}"

    # -- layout finders: each returns (layout name, gmd path, gmv path) or None ------------------
    def _find_caps(self, unit: T1wUnit) -> tuple[str, Path, Path] | None:
        subj_dir = self.root / "subjects" / f"sub-{unit.subject}"
        if not subj_dir.is_dir():
            return None
        if unit.session:
            ses_dirs = [subj_dir / f"ses-{unit.session}"]
        else:  # CAPS always has sessions; a session-less input maps to its only session
            ses_dirs = sorted(p for p in subj_dir.glob("ses-*") if p.is_dir())
            if len(ses_dirs) > 1:
                raise NoMatchError(
                    f"{subj_dir}: several sessions ({', '.join(p.name for p in ses_dirs)}) for a T1w without "
                    "a session; pass --session-label or a CAPS with one session"
                )
        run_re = f"_run-{unit.run}_" if unit.run else ""
        for ses_dir in ses_dirs:
            for sub in ("t1/spm/segmentation/normalized_space", "t1/spm/dartel/group-*"):
                caps = f"{sub}/*segm-graymatter_space-Ixi549Space_modulated-{{}}_probability.nii*"
                off = self._one(ses_dir, caps.format("off"), run_re)
                on = self._one(ses_dir, caps.format("on"), run_re)
                if off and on:
                    return ("caps", off, on)
        return None

    def _find_bids(self, unit: T1wUnit) -> tuple[str, Path, Path] | None:
        anat = self.root.joinpath(unit.subdir)
        if not anat.is_dir():
            return None
        # the BIDS place of space (before chunk: this app's outputs), or after every source entity
        entities = re.escape(unit.with_space("SPACE")).replace("SPACE", "[A-Za-z0-9]+")
        legacy = re.escape(unit.prefix) + r"_space-[A-Za-z0-9]+"
        pattern = re.compile(
            f"(?:{entities}|{legacy})"
            + r"(?:_res-[A-Za-z0-9]+)?_label-GM(?P<desc>_desc-[A-Za-z0-9]+)?_probseg\.nii(?:\.gz)?$"
        )
        gmd = gmv = None
        for path in sorted(anat.iterdir()):
            m = pattern.match(path.name)
            if not m:
                continue
            desc = m.group("desc")
            if desc is None or desc == "_desc-unmodulated":
                gmd = gmd or path
            elif desc == "_desc-modulated":
                gmv = gmv or path
        return ("bids", gmd, gmv) if gmd and gmv else None

    def _find_dparsf(self, unit: T1wUnit) -> tuple[str, Path, Path] | None:
        def matches(path: Path) -> bool:
            parts = set(path.relative_to(self.root).parts[:-1])
            names = {f"sub-{unit.subject}", unit.subject}
            in_name = f"sub-{unit.subject}_" in path.name or f"sub-{unit.subject}." in path.name
            if not (parts & names or in_name):
                return False
            if unit.session:
                text = str(path.relative_to(self.root))
                if f"ses-{unit.session}" not in text:
                    return False
            return not (unit.run and f"run-{unit.run}" not in path.name)

        gmd = [p for p in self.root.rglob("wc1*.nii*") if matches(p)]
        gmv = [p for p in self.root.rglob("mwc1*.nii*") if matches(p)]
        if not gmd and not gmv:
            return None
        if len(gmd) != 1 or len(gmv) != 1:
            raise NoMatchError(
                f"{self.root}: expected one wc1* and one mwc1* file for {unit.prefix}, found "
                f"{len(gmd)} and {len(gmv)}: {[str(p) for p in gmd + gmv][:6]}"
            )
        return ("dparsf", gmd[0], gmv[0])

    @staticmethod
    def _one(base: Path, pattern: str, must_contain: str) -> Path | None:
        hits = sorted(p for p in base.glob(pattern) if must_contain in p.name)
        return hits[0] if hits else None

    def run(self, unit: T1wUnit, work_dir: Path) -> GMMaps:
        found = self._find_caps(unit) or self._find_bids(unit) or self._find_dparsf(unit)
        if found is None:
            raise NoInputError(
                f"no GM maps for {unit.prefix} in {self.root} (looked for a Clinica CAPS tree, "
                f"BIDS-derivatives '{unit.prefix}_space-*_label-GM[_desc-modulated]_probseg.nii.gz', "
                "and DPARSF wc1*/mwc1* files)"
            )
        layout, gmd_path, gmv_path = found
        gmd, gmd_resampled = load_map(gmd_path)
        gmv, gmv_resampled = load_map(gmv_path)
        if gmd.shape != SPM_SHAPE or gmv.shape != SPM_SHAPE:
            raise InputDataError(f"{gmd_path}: maps could not be brought onto the SPM grid {SPM_SHAPE}")
        origin = {"caps": "clinica", "dparsf": "spm"}.get(layout) or _sidecar_backend(gmv_path)
        return GMMaps(
            gmd=gmd,
            gmv=gmv,
            backend=self.name,
            backend_version=f"{layout} layout",
            provenance={
                "Layout": layout,
                "GMDFile": str(gmd_path),
                "GMVFile": str(gmv_path),
                "GMDSha256": sha256_file(gmd_path),
                "GMVSha256": sha256_file(gmv_path),
                "ResampledToSPMGrid": bool(gmd_resampled or gmv_resampled),
                "OriginalBackend": origin,
            },
            source_files=(gmd_path, gmv_path),
        )

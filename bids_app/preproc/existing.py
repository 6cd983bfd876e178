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

The T1w in MNI space (input kind ``t1w_mni1mm``, SFCN). The backend provides it only when the
derivatives hold at least one T1w in an MNI152 space, named as fMRIPrep and this app name theirs, in
the unit's ``anat`` folder with the T1w's entities:

    ``<entities>_space-<MNI152 space>[_res-<label>]_desc-preproc_T1w.nii[.gz]``

``<MNI152 space>`` is one of :data:`MNI_SPACES` (BIDS template identifiers); ``res-1`` is preferred
when several resolutions exist. Another grid is resampled (linear) onto the 1 mm grid
(:data:`bids_app.grid.MNI1MM_SHAPE`). A sibling ``..._desc-brain_mask.nii[.gz]`` of the same space and
resolution (fMRIPrep writes one; its preproc T1w keeps the skull) is applied; without one the image must
already be skull-stripped: more than :data:`SKULL_FRACTION` of its intensity outside the (dilated)
template brain is refused, naming the file. The image is used as it is registered: fMRIPrep's are
nonlinearly normalised, not affinely as SFCN's training images were (provenance names the file).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from .._io import sha256_file
from ..errors import InputDataError, NoInputError, NoMatchError
from ..grid import SPM_SHAPE, is_on_grid, mni1mm_brain_mask, to_grid, to_mni1mm
from ..types import GMMaps, T1wUnit

__all__ = ["DerivativesBackend", "MNI_SPACES", "SKULL_FRACTION", "load_map", "load_t1w_mni"]

#: BIDS template identifiers accepted for a T1w in MNI space (``space-<label>``)
MNI_SPACES: tuple[str, ...] = (
    "MNI152Lin", "MNI152NLin6Asym", "MNI152NLin6Sym", "MNI152NLin2009aAsym", "MNI152NLin2009aSym",
    "MNI152NLin2009bAsym", "MNI152NLin2009bSym", "MNI152NLin2009cAsym", "MNI152NLin2009cSym",
)
#: share of a maskless MNI T1w's intensity allowed outside the template brain dilated by 6 mm; a head with
#: its skull holds far more there
SKULL_FRACTION = 0.1
_MNI_T1W = re.compile(
    r"_space-(?P<space>" + "|".join(MNI_SPACES) + r")(?P<res>_res-[A-Za-z0-9]+)?_desc-preproc_T1w\.nii(?:\.gz)?$"
)


@functools.lru_cache(maxsize=1)
def _wide_brain() -> np.ndarray:
    """The template brain on the 1 mm grid dilated by 6 mm: where a skull-stripped T1w ends."""
    from scipy import ndimage

    wide = ndimage.binary_dilation(mni1mm_brain_mask(), iterations=6)
    wide.setflags(write=False)
    return wide


def load_t1w_mni(path: Path, mask_path: Path | None = None) -> np.ndarray:
    """A skull-stripped T1w in MNI space as float32 on the 1 mm grid, 0 outside the brain.

    ``mask_path`` (a brain mask in the same space) is applied when given; otherwise the image must be
    skull-stripped already (:data:`SKULL_FRACTION`). Raises :class:`InputDataError` naming the file."""
    try:
        data = to_mni1mm(nib.load(str(path)))
        mask = None if mask_path is None else to_mni1mm(nib.load(str(mask_path))) > 0.5
    except (OSError, EOFError, ValueError, ImageFileError) as exc:
        raise InputDataError(f"{path}: cannot read this T1w in MNI space ({exc})") from exc
    data = np.clip(np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    if mask is not None:
        data = np.where(mask, data, np.float32(0.0))
    total = float(data.sum(dtype=np.float64))
    if not total > 0:
        raise InputDataError(f"{path}: the T1w in MNI space is empty (all zero or NaN) on the 1 mm grid")
    if mask is None:
        outside = float(data[~_wide_brain()].sum(dtype=np.float64)) / total
        if outside > SKULL_FRACTION:
            raise InputDataError(
                f"{path}: {outside:.0%} of this T1w's intensity lies outside the MNI brain, so it is not "
                "skull-stripped, and no '_desc-brain_mask' of the same space lies beside it"
            )
    return np.ascontiguousarray(data, dtype=np.float32)


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
    #: GM maps only; an instance adds ``t1w_mni1mm`` when the folder holds a T1w in MNI space
    provides: frozenset[str] = frozenset({"gm_crop2", "gm_spm1"})

    def __init__(self, derivatives_dir: Path, *, make_t1w_mni: bool = False):
        self.root = Path(derivatives_dir)
        if not self.root.is_dir():
            raise NoInputError(f"--derivatives {self.root}: no such directory")
        #: read the T1w in MNI space into :attr:`GMMaps.t1w_mni` (only when a package needs it)
        self.make_t1w_mni = make_t1w_mni
        if any(_MNI_T1W.search(p.name) for p in self.root.glob("sub-*/**/*_T1w.nii*")):
            self.provides = DerivativesBackend.provides | {"t1w_mni1mm"}

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

    def _find_t1w_mni(self, unit: T1wUnit) -> tuple[Path, Path | None] | None:
        """The unit's T1w in MNI space and its brain mask (or None), see the module docstring."""
        anat = self.root.joinpath(unit.subdir)
        if not anat.is_dir():
            return None
        entities = re.escape(unit.with_space("SPACE")).replace("SPACE", "[A-Za-z0-9]+")
        legacy = re.escape(unit.prefix) + r"_space-[A-Za-z0-9]+"
        pattern = re.compile(
            f"(?:{entities}|{legacy})" + r"(?P<res>_res-[A-Za-z0-9]+)?_desc-preproc_T1w\.nii(?:\.gz)?$"
        )
        hits = []
        for path in sorted(anat.iterdir()):
            m = pattern.match(path.name)
            space = re.search(r"_space-([A-Za-z0-9]+)", path.name)
            if m and space and space.group(1) in MNI_SPACES:
                rank = {"_res-1": 0, None: 1}.get(m.group("res"), 2)  # res-1 first, then no res, then others
                hits.append((rank, path.name, path))
        if not hits:
            return None
        path = min(hits)[2]
        stem = re.sub(r"_desc-preproc_T1w\.nii(?:\.gz)?$", "_desc-brain_mask", path.name)
        masks = [p for p in (anat / f"{stem}.nii.gz", anat / f"{stem}.nii") if p.is_file()]
        return path, (masks[0] if masks else None)

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
        t1w_mni = None
        mni_provenance: dict[str, str | None] = {}
        sources: tuple[Path, ...] = (gmd_path, gmv_path)
        if self.make_t1w_mni:
            mni = self._find_t1w_mni(unit)
            if mni is None:
                raise NoInputError(
                    f"no T1w in MNI space for {unit.prefix} in {self.root / unit.subdir} (a model package reads "
                    f"t1w_mni1mm; looked for '{unit.prefix}_space-<{'|'.join(MNI_SPACES[:2])}|...>[_res-1]"
                    "_desc-preproc_T1w.nii.gz')"
                )
            t1w_mni = load_t1w_mni(*mni)
            space = re.search(r"_space-([A-Za-z0-9]+)", mni[0].name)
            mni_provenance = {"T1wMNIFile": str(mni[0]), "T1wMNISha256": sha256_file(mni[0]),
                              "T1wMNISpace": space.group(1) if space else None,
                              "T1wMNIBrainMask": str(mni[1]) if mni[1] else None}
            sources += tuple(p for p in mni if p is not None)
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
                **mni_provenance,
            },
            source_files=sources,
            t1w_mni=t1w_mni,
        )

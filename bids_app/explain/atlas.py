"""Atlas summaries of explanation maps: the regions of a labelled atlas where a map is strongest.

The atlas is AAL (Tzourio-Mazoyer et al. 2002, 116 regions) as Debian's ``mricron-data`` ships it
(``/usr/share/mricron/templates/aal.nii.gz``, 1 mm MNI, labels in ``aal.nii.txt``: index, name,
code), installed in the container and by ``scripts/install.sh``. It is read from disk only:
nilearn's atlas fetchers download at run time and are not used. ``$VBM_PREDICT_ATLAS_DIR`` points
elsewhere. The labels are resampled (nearest neighbour) onto the SPM 1.5 mm grid once per process.

Without the atlas the maps are still written; :func:`load_atlas` raises :class:`AtlasUnavailable`
with the reason, which the summary records.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import grid

__all__ = [
    "ATLAS_ENV",
    "DEFAULT_ATLAS_DIR",
    "REGION_COLUMNS",
    "Atlas",
    "AtlasUnavailable",
    "load_atlas",
    "top_regions",
]

ATLAS_ENV = "VBM_PREDICT_ATLAS_DIR"
DEFAULT_ATLAS_DIR = Path("/usr/share/mricron/templates")

#: columns of ``*_regions.tsv`` (one row per region, strongest first)
REGION_COLUMNS: dict[str, dict[str, str]] = {
    "rank": {"Description": "Rank of the region by the absolute mean of the map inside it (1 = strongest)."},
    "atlas_index": {"Description": "Label value of the region in the atlas image."},
    "region": {"Description": "Region name in the atlas (AAL: _L / _R = left / right hemisphere)."},
    "n_voxels": {"Description": "Voxels of the region inside the brain mask on the 1.5 mm grid."},
    "mean_value": {"Description": "Mean of the map over those voxels (units of the map)."},
    "max_value": {"Description": "Largest value of the map inside the region."},
    "share_positive": {
        "Description": (
            "Share of the map's positive mass (sum over the brain mask of its positive part) that lies in the region."
        )
    },
}


class AtlasUnavailable(RuntimeError):
    """The atlas files are missing or unreadable; the message says which and how to get them."""


@dataclass(frozen=True)
class Atlas:
    name: str
    labels: np.ndarray  # int32 on the SPM grid
    names: dict[int, str]
    source: str


def _atlas_dir() -> Path:
    return Path(os.environ.get(ATLAS_ENV) or DEFAULT_ATLAS_DIR)


def load_atlas() -> Atlas:
    """AAL on the SPM grid; raises :class:`AtlasUnavailable` naming the missing file."""
    return _load_atlas(str(_atlas_dir()))


@functools.lru_cache(maxsize=2)
def _load_atlas(folder: str) -> Atlas:
    import nibabel as nib
    from nilearn.image import resample_img

    img_path = Path(folder) / "aal.nii.gz"
    txt_path = Path(folder) / "aal.nii.txt"
    for p in (img_path, txt_path):
        if not p.is_file():
            raise AtlasUnavailable(
                f"atlas file {p} not found: install Debian's mricron-data (apt-get install mricron-data) "
                f"or set ${ATLAS_ENV} to a folder with aal.nii.gz and aal.nii.txt"
            )
    names: dict[int, str] = {}
    try:
        for line in txt_path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                names[int(parts[0])] = parts[1]
        img: Any = nib.load(img_path)
        data = np.asarray(img.dataobj).reshape(img.shape[:3])
        src = nib.Nifti1Image(np.rint(data).astype(np.int32), img.affine)
        out = resample_img(
            src,
            target_affine=grid.SPM_AFFINE,
            target_shape=grid.SPM_SHAPE,
            interpolation="nearest",
            force_resample=True,
            copy_header=True,
        )
    except (OSError, ValueError, EOFError) as exc:
        raise AtlasUnavailable(f"atlas {img_path} cannot be read: {exc}") from exc
    if not names:
        raise AtlasUnavailable(f"atlas labels {txt_path} hold no 'index name' lines")
    labels = np.rint(np.asarray(out.dataobj)).astype(np.int32)
    labels.setflags(write=False)
    return Atlas(name="AAL", labels=labels, names=names, source=f"{img_path} (Debian mricron-data)")


def top_regions(values: np.ndarray, atlas: Atlas, mask: np.ndarray | None = None, n: int = 10) -> pd.DataFrame:
    """The ``n`` atlas regions with the largest absolute mean of ``values`` (a map on the SPM grid)."""
    if values.shape != grid.SPM_SHAPE:
        raise ValueError(f"the map must be on the SPM grid {grid.SPM_SHAPE}; got {values.shape}")
    m = grid.brain_mask() if mask is None else np.asarray(mask, dtype=bool)
    v = np.asarray(values, dtype=np.float64)
    lab = np.where(m, atlas.labels, 0)
    positive_total = float(np.clip(v[m], 0, None).sum())
    rows = []
    for idx in np.unique(lab):
        if idx == 0:
            continue
        sel = lab == idx
        vals = v[sel]
        rows.append(
            {
                "atlas_index": int(idx),
                "region": atlas.names.get(int(idx), f"label {int(idx)}"),
                "n_voxels": int(sel.sum()),
                "mean_value": float(vals.mean()),
                "max_value": float(vals.max()),
                "share_positive": float(np.clip(vals, 0, None).sum() / positive_total) if positive_total > 0 else 0.0,
            }
        )
    table = pd.DataFrame(rows, columns=[c for c in REGION_COLUMNS if c != "rank"])
    if len(table):
        table = table.reindex(table["mean_value"].abs().sort_values(ascending=False, kind="stable").index).head(n)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)

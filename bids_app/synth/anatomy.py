"""Real anatomy the simulator starts from, on one 1 mm MNI grid.

Why these sources: the app has no internet and no labelled MRI, but nilearn (a dependency) ships
the ICBM 2009 MNI152 GM / WM probability maps and brain mask, and Debian's ``mricron-data``
(where installed) ships the Colin27 head (``ch2.nii.gz``: one real subject, with skull and
scalp, in MNI space) and the AAL atlas (hippocampus, parahippocampal gyrus, amygdala labels).
nilearn's T1 template is brain-only, so the non-brain part of the synthetic head comes from
Colin27; where that file is absent a layered scalp / skull / CSF shell is built from distances to
the brain mask, and the medial temporal lobe from ellipsoids at published MNI coordinates.

Everything is cached per process (:func:`template_anatomy`) because every subject reuses it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..templates import MTL_ELLIPSOIDS_MM, ellipsoid_mask, mni152_brain_mask, mni152_gm, mni152_wm

__all__ = [
    "MRICRON_DIR",
    "TEMPLATE_NAME",
    "AAL_MTL_LABELS",
    "TemplateAnatomy",
    "template_anatomy",
]

#: where Debian's mricron-data puts Colin27 and AAL
MRICRON_DIR = Path("/usr/share/mricron/templates")
#: BIDS template identifier of nilearn's MNI152 (ICBM 2009a nonlinear symmetric)
TEMPLATE_NAME = "MNI152NLin2009aSym"
#: AAL (mricron numbering) labels of the medial temporal lobe: hippocampus, parahippocampal gyrus,
#: amygdala, left and right
AAL_MTL_LABELS: tuple[int, ...] = (37, 38, 39, 40, 41, 42)

@dataclass(frozen=True)
class TemplateAnatomy:
    """Tissue maps of the template head on one 1 mm grid (nilearn's MNI152 grid).

    Attributes
    ----------
    affine : voxel -> MNI mm of every array here.
    gm, wm, csf : tissue probabilities inside the brain (0..1, float32; csf = brain - gm - wm).
    head : T1w intensity of non-brain tissue relative to WM = 1 (0 inside the brain).
    head_mask : voxels of the head (brain, skull, scalp), for the field of view.
    mtl_weight : 0..1 smooth weight of the medial-temporal atrophy region.
    ventricle_centre : MNI mm of the lateral ventricles' centroid.
    sources : human-readable provenance of each map.
    """

    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    head: np.ndarray
    head_mask: np.ndarray
    mtl_weight: np.ndarray
    ventricle_centre: np.ndarray
    sources: dict


def _world_grid(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    return (affine[:3, :3] @ idx + affine[:3, 3:4]).astype(np.float32)


def _resample_to(src: nib.Nifti1Image, shape: tuple[int, ...], affine: np.ndarray, order: int) -> np.ndarray:
    """Resample ``src`` onto (shape, affine) by pulling voxel coordinates (no nilearn caching)."""
    world = _world_grid(shape, affine)
    vox = np.linalg.inv(src.affine)
    coords = vox[:3, :3] @ world + vox[:3, 3:4]
    data = np.asarray(src.dataobj, dtype=np.float32)
    out = ndimage.map_coordinates(data, coords, order=order, mode="constant", cval=0.0, prefilter=False)
    return out.reshape(shape).astype(np.float32)


def _ellipsoid_mtl(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """Fallback MTL region when AAL is not installed: ellipsoids at the structures' MNI positions."""
    return ellipsoid_mask(shape, affine, MTL_ELLIPSOIDS_MM)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=1)
def template_anatomy(use_mricron: bool = True) -> TemplateAnatomy:
    """Build (once per process) the template head the simulator deforms.

    ``use_mricron=False`` forces the fallbacks (for tests of machines without mricron-data).
    """
    gm_img = mni152_gm()
    shape = tuple(int(s) for s in gm_img.shape[:3])
    affine = np.asarray(gm_img.affine, dtype=np.float64)
    gm = np.clip(np.asarray(gm_img.dataobj, dtype=np.float32), 0, 1)
    wm = np.clip(np.asarray(mni152_wm().dataobj, dtype=np.float32), 0, 1)
    brain = np.asarray(mni152_brain_mask(0.2).dataobj, dtype=np.float32) > 0.5
    brain = ndimage.binary_fill_holes(brain | (gm + wm > 0.3))
    # Soft brain edge so that CSF fills the space between tissue and skull.
    brain_p = np.clip(ndimage.gaussian_filter(brain.astype(np.float32), 0.7), 0, 1)
    total = gm + wm
    scale = np.where(total > brain_p, brain_p / np.maximum(total, 1e-6), 1.0).astype(np.float32)
    gm *= scale
    wm *= scale
    csf = np.clip(brain_p - gm - wm, 0, 1).astype(np.float32)

    sources = {"GM": "nilearn MNI152 2009 GM probability (1 mm)", "WM": "nilearn MNI152 2009 WM probability (1 mm)"}
    ch2 = MRICRON_DIR / "ch2.nii.gz"
    aal = MRICRON_DIR / "aal.nii.gz"
    dist_out = ndimage.distance_transform_edt(~brain).astype(np.float32)
    if use_mricron and ch2.is_file():
        head_t1 = _resample_to(nib.load(str(ch2)), shape, affine, order=1)
        wm_ref = float(np.median(head_t1[wm > 0.9]))
        head_t1 /= max(wm_ref, 1e-6)
        head_mask = ndimage.binary_fill_holes(ndimage.binary_closing(head_t1 > 0.12, iterations=3)) | brain
        # Colin27 outside the brain, with a thin dark CSF rim to smooth the join.
        rim = np.clip(1.0 - (dist_out - 1.0) / 3.0, 0, 1)
        head = np.where(brain, 0.0, head_t1 * (1 - rim) + 0.15 * rim) * head_mask
        sources["Head"] = f"Colin27 single-subject head ({ch2}), non-brain voxels, scaled to WM = 1"
    else:
        # Layered shell: CSF rim 0-3 mm, skull 3-8 mm (dark), scalp 8-14 mm (bright fat / skin).
        head = np.zeros(shape, dtype=np.float32)
        head[(dist_out > 0) & (dist_out <= 3)] = 0.15
        head[(dist_out > 3) & (dist_out <= 8)] = 0.08
        head[(dist_out > 8) & (dist_out <= 14)] = 0.85
        head = ndimage.gaussian_filter(head, 0.8)
        head_mask = dist_out <= 14
        head[brain] = 0.0
        sources["Head"] = "synthetic scalp / skull / CSF shell from distances to the MNI152 brain mask"
    head = head.astype(np.float32)

    if use_mricron and aal.is_file():
        labels = _resample_to(nib.load(str(aal)), shape, affine, order=0)
        region = np.isin(labels.astype(np.int32), AAL_MTL_LABELS)
        sources["MTL"] = f"AAL hippocampus, parahippocampal gyrus and amygdala ({aal})"
    else:
        region = _ellipsoid_mtl(shape, affine)
        sources["MTL"] = "ellipsoids at MNI coordinates of hippocampus, parahippocampal gyrus, amygdala"
    mtl_weight = np.clip(ndimage.gaussian_filter(region.astype(np.float32), 1.5) * 1.6, 0, 1).astype(np.float32)

    # Lateral ventricles: CSF-filled voxels in a central box; their centroid anchors the expansion.
    world = _world_grid(shape, affine).reshape(3, *shape)
    box = (np.abs(world[0]) < 25) & (world[1] > -45) & (world[1] < 25) & (world[2] > -5) & (world[2] < 32)
    vent = box & (csf > 0.6) & brain
    centre = world[:, vent].mean(axis=1) if vent.any() else np.array([0.0, -15.0, 12.0])

    for arr in (gm, wm, csf, head, mtl_weight):
        arr.setflags(write=False)
    return TemplateAnatomy(
        affine=affine,
        gm=gm,
        wm=wm,
        csf=csf,
        head=head,
        head_mask=head_mask,
        mtl_weight=mtl_weight,
        ventricle_centre=np.asarray(centre, dtype=np.float64),
        sources=sources,
    )

"""The MNI152 (ICBM 2009) template images every part of the app starts from, loaded in one place.

nilearn ships, offline, the MNI152 2009 symmetric T1 (skull-stripped), GM and WM probability maps
and a brain mask at 1 mm (197 x 233 x 189). The model-input grid (:mod:`bids_app.grid`), the ANTs
backend's registration targets and priors (:mod:`bids_app.preproc._templates`) and the simulator's
anatomy (:mod:`bids_app.synth.anatomy`) all read them through this module, so they agree on what the
template is and each file is read once per process. This module imports nothing from the app.

nilearn ships no CSF map, so the CSF prior is derived as ``clip(brain_probability - GM - WM, 0, 1)``:
what is inside the brain but neither grey nor white.
"""

from __future__ import annotations

import functools

import nibabel as nib
import numpy as np

__all__ = [
    "TEMPLATE_PROVENANCE",
    "mni152_t1",
    "mni152_gm",
    "mni152_wm",
    "mni152_brain_mask",
    "template_t1_1mm",
    "template_priors_1mm",
    "MTL_ELLIPSOIDS_MM",
    "ellipsoid_mask",
    "MTL_DILATION_MM",
    "mtl_region",
]

TEMPLATE_PROVENANCE = {
    "Template": "MNI152 2009 (nilearn.datasets.load_mni152_template, resolution=1)",
    "Priors": "nilearn MNI152 GM and WM probability maps; CSF = clip(brain mask probability - GM - WM, 0, 1)",
    "TargetGrid": "SPM 1.5 mm grid (121 x 145 x 121), x axis in RAS order during registration",
}


def _float_image(img: nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
    out = nib.Nifti1Image(np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32), img.affine)
    out.header.set_xyzt_units("mm")
    return out


@functools.lru_cache(maxsize=1)
def mni152_t1() -> nib.Nifti1Image:
    """nilearn's skull-stripped MNI152 2009 T1 at 1 mm (float32)."""
    from nilearn.datasets import load_mni152_template

    return _float_image(load_mni152_template(resolution=1))


@functools.lru_cache(maxsize=1)
def mni152_gm() -> nib.Nifti1Image:
    """nilearn's MNI152 2009 GM probability at 1 mm (float32)."""
    from nilearn.datasets import load_mni152_gm_template

    return _float_image(load_mni152_gm_template(resolution=1))


@functools.lru_cache(maxsize=1)
def mni152_wm() -> nib.Nifti1Image:
    """nilearn's MNI152 2009 WM probability at 1 mm (float32)."""
    from nilearn.datasets import load_mni152_wm_template

    return _float_image(load_mni152_wm_template(resolution=1))


@functools.lru_cache(maxsize=4)
def mni152_brain_mask(threshold: float = 0.0) -> nib.Nifti1Image:
    """nilearn's MNI152 2009 brain mask at 1 mm (0/1 float32), at nilearn's ``threshold``."""
    from nilearn.datasets import load_mni152_brain_mask

    return _float_image(load_mni152_brain_mask(resolution=1, threshold=threshold))


#: the name the ANTs backend has always used for the template T1
template_t1_1mm = mni152_t1


@functools.lru_cache(maxsize=1)
def template_priors_1mm() -> dict[str, nib.Nifti1Image]:
    """GM, WM, CSF and brain probability maps at 1 mm on the template's own grid."""
    from scipy.ndimage import gaussian_filter

    gm_img = mni152_gm()
    affine = gm_img.affine
    gm = np.asarray(gm_img.dataobj, dtype=np.float32)
    wm = np.asarray(mni152_wm().dataobj, dtype=np.float32)
    brain = np.asarray(mni152_brain_mask(0.0).dataobj, dtype=np.float32)
    # the shipped brain mask is binary; smooth it a little so the CSF prior has soft edges
    brain_p = np.clip(gaussian_filter(brain, 1.0), 0.0, 1.0)
    csf = np.clip(brain_p - gm - wm, 0.0, 1.0)
    return {
        name: nib.Nifti1Image(arr.astype(np.float32), affine)
        for name, arr in (("GM", gm), ("WM", wm), ("CSF", csf), ("brain", brain_p))
    }


#: Medial temporal lobe in MNI152 mm, as ellipsoids (centre, semi-axes): hippocampi, amygdalae and
#: parahippocampal gyri at their MNI positions (hippocampal body near (+-28, -22, -14)). The models'
#: AD evidence sits here; QC checks the registration there (:mod:`bids_app.qc`).
MTL_ELLIPSOIDS_MM: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((-27.0, -22.0, -13.0), (7.0, 18.0, 7.0)),
    ((28.0, -22.0, -13.0), (7.0, 18.0, 7.0)),
    ((-23.0, -4.0, -19.0), (7.0, 7.0, 7.0)),
    ((24.0, -4.0, -19.0), (7.0, 7.0, 7.0)),
    ((-24.0, -30.0, -20.0), (6.0, 14.0, 5.0)),
    ((25.0, -30.0, -20.0), (6.0, 14.0, 5.0)),
)


def ellipsoid_mask(shape: tuple[int, int, int], affine: np.ndarray, ellipsoids=MTL_ELLIPSOIDS_MM) -> np.ndarray:
    """Boolean mask of the union of ``ellipsoids`` (mm) on the grid (``shape``, ``affine``)."""
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = (np.asarray(affine[:3, :3], np.float32) @ ijk + np.asarray(affine[:3, 3:4], np.float32)).reshape(3, *shape)
    out = np.zeros(shape, bool)
    for centre, radii in ellipsoids:
        out |= sum(((xyz[i] - centre[i]) / radii[i]) ** 2 for i in range(3)) <= 1.0
    return out


#: margin around :data:`MTL_ELLIPSOIDS_MM` of the medial-temporal QC region (a registration error of a
#: few mm moves tissue across the ellipsoids' edges, where the checks must see it)
MTL_DILATION_MM: float = 3.0


def mtl_region(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """The medial-temporal QC region on a grid: :data:`MTL_ELLIPSOIDS_MM` dilated by
    :data:`MTL_DILATION_MM` (rounded to whole voxels of the grid's smallest spacing). One definition
    for the map QC (:mod:`bids_app.qc`) and the backends' own registration checks."""
    from scipy import ndimage

    voxel = float(np.min(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)))
    steps = max(int(round(MTL_DILATION_MM / voxel)), 1)
    return ndimage.binary_dilation(ellipsoid_mask(shape, affine), iterations=steps)

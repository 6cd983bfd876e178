"""Template images the SPM-free backend registers to, all derived from nilearn's MNI152 (2009) files.

nilearn ships, offline, the MNI152 2009 symmetric T1 (skull-stripped), GM and WM probability maps
and a brain mask at 1 mm (197 x 233 x 189). It ships no CSF map, so the CSF prior is derived as
``clip(brain_probability - GM - WM, 0, 1)``: what is inside the brain but neither grey nor white.

Registration targets live on :data:`RAS_GRID_AFFINE`, the SPM 1.5 mm grid with its x axis turned
back to RAS (SPM's grid stores x flipped). A map warped onto that grid becomes an SPM-grid array by
reversing axis 0 (:func:`ras_to_spm`), with no resampling.
"""

from __future__ import annotations

import functools

import nibabel as nib
import numpy as np

from ..grid import SPM_AFFINE, SPM_SHAPE, to_grid

__all__ = [
    "RAS_GRID_AFFINE",
    "TEMPLATE_PROVENANCE",
    "ras_to_spm",
    "spm_to_ras",
    "template_t1_1mm",
    "template_priors_1mm",
    "template_on_grid",
]

#: the SPM grid in RAS voxel order: voxel i along x of this grid is voxel 120 - i of SPM's
RAS_GRID_AFFINE: np.ndarray = np.array(
    [
        [1.5, 0.0, 0.0, SPM_AFFINE[0, 3] + SPM_AFFINE[0, 0] * (SPM_SHAPE[0] - 1)],
        [0.0, 1.5, 0.0, SPM_AFFINE[1, 3]],
        [0.0, 0.0, 1.5, SPM_AFFINE[2, 3]],
        [0.0, 0.0, 0.0, 1.0],
    ]
)

TEMPLATE_PROVENANCE = {
    "Template": "MNI152 2009 (nilearn.datasets.load_mni152_template, resolution=1)",
    "Priors": "nilearn MNI152 GM and WM probability maps; CSF = clip(brain mask probability - GM - WM, 0, 1)",
    "TargetGrid": "SPM 1.5 mm grid (121 x 145 x 121), x axis in RAS order during registration",
}


def ras_to_spm(volume: np.ndarray) -> np.ndarray:
    """Array on :data:`RAS_GRID_AFFINE` -> the same voxels in SPM's storage order."""
    return np.ascontiguousarray(volume[::-1, :, :])


def spm_to_ras(volume: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ras_to_spm`."""
    return np.ascontiguousarray(volume[::-1, :, :])


@functools.lru_cache(maxsize=1)
def template_t1_1mm() -> nib.Nifti1Image:
    """nilearn's skull-stripped MNI152 T1 at 1 mm."""
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=1)
    return nib.Nifti1Image(img.get_fdata(dtype=np.float32), img.affine)


@functools.lru_cache(maxsize=1)
def template_priors_1mm() -> dict[str, nib.Nifti1Image]:
    """GM, WM, CSF and brain probability maps at 1 mm on the template's own grid."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_gm_template, load_mni152_wm_template

    gm_img = load_mni152_gm_template(resolution=1)
    affine = gm_img.affine
    gm = gm_img.get_fdata(dtype=np.float32)
    wm = load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    brain = load_mni152_brain_mask(resolution=1, threshold=0.0).get_fdata(dtype=np.float32)
    # the shipped brain mask is binary; smooth it a little so the CSF prior has soft edges
    from scipy.ndimage import gaussian_filter

    brain_p = np.clip(gaussian_filter(brain, 1.0), 0.0, 1.0)
    csf = np.clip(brain_p - gm - wm, 0.0, 1.0)
    return {
        name: nib.Nifti1Image(arr.astype(np.float32), affine)
        for name, arr in (("GM", gm), ("WM", wm), ("CSF", csf), ("brain", brain_p))
    }


@functools.lru_cache(maxsize=1)
def template_on_grid() -> dict[str, np.ndarray]:
    """T1, GM, WM and brain probability on the RAS-ordered SPM grid (read-only float32)."""
    out = {"T1": spm_to_ras(to_grid(template_t1_1mm()))}
    for name, img in template_priors_1mm().items():
        out[name] = spm_to_ras(to_grid(img))
    for arr in out.values():
        arr.setflags(write=False)
    return out

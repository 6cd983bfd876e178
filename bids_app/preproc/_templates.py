"""The SPM-free backend's registration targets: the MNI152 templates (:mod:`bids_app.templates`)
on the SPM grid.

Registration targets live on :data:`RAS_GRID_AFFINE`, the SPM 1.5 mm grid with its x axis turned
back to RAS (SPM's grid stores x flipped). A map warped onto that grid becomes an SPM-grid array by
reversing axis 0 (:func:`ras_to_spm`), with no resampling.
"""

from __future__ import annotations

import functools

import numpy as np

from ..grid import SPM_AFFINE, SPM_SHAPE, to_grid
from ..templates import TEMPLATE_PROVENANCE, mtl_region, template_priors_1mm, template_t1_1mm

__all__ = [
    "RAS_GRID_AFFINE",
    "TEMPLATE_PROVENANCE",
    "ras_to_spm",
    "spm_to_ras",
    "template_t1_1mm",
    "template_priors_1mm",
    "template_on_grid",
    "mtl_on_grid",
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


def ras_to_spm(volume: np.ndarray) -> np.ndarray:
    """Array on :data:`RAS_GRID_AFFINE` -> the same voxels in SPM's storage order."""
    return np.ascontiguousarray(volume[::-1, :, :])


def spm_to_ras(volume: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ras_to_spm`."""
    return np.ascontiguousarray(volume[::-1, :, :])


@functools.lru_cache(maxsize=1)
def template_on_grid() -> dict[str, np.ndarray]:
    """T1, GM, WM and brain probability on the RAS-ordered SPM grid (read-only float32)."""
    out = {"T1": spm_to_ras(to_grid(template_t1_1mm()))}
    for name, img in template_priors_1mm().items():
        out[name] = spm_to_ras(to_grid(img))
    for arr in out.values():
        arr.setflags(write=False)
    return out


@functools.lru_cache(maxsize=1)
def mtl_on_grid() -> np.ndarray:
    """The medial-temporal QC region (:func:`bids_app.templates.mtl_region`) on the RAS-ordered SPM
    grid, read-only: computed once per process, not once per T1w."""
    mask = mtl_region(SPM_SHAPE, RAS_GRID_AFFINE)
    mask.setflags(write=False)
    return mask

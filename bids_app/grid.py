"""The reference input space: SPM's 1.5 mm MNI grid, the brain / grey masks, the crop, resampling.

The BrainImageNet models were trained on SPM/DPARSF VBM maps (``wc1``, ``mwc1``) on SPM's
121 x 145 x 121 grid of 1.5 mm voxels, masked, NaN set to 0, and cropped to 96 x 120 x 86 voxels
(Lu et al., J Big Data 2022; code: Chaogan-Yan/BrainImageNet). Everything that must match that
recipe exactly lives here, so every backend and model sees the same space.

Masks. The reference brain mask (``Reslice_BrainMask_05_...``) and grey mask
(``Reslice_GreyMask_02_...``) are not public. We derive equivalents from the MNI152 2009 templates
shipped with nilearn, resampled (trilinear) onto the SPM grid:

* brain mask = voxels where nilearn's MNI152 brain-mask probability > 0.5 (threshold 0.5 after
  the reference file name);
* grey mask = voxels where the MNI152 GM probability > 0.2 (threshold 0.2 after the file name).

Outputs record which masks were used (:data:`MASK_PROVENANCE`).

The authors' prediction mask itself (``Reslice_BrainMask_05_91x109x91.img/.hdr``) sits beside their
weights in the ``cgyan/brainimagenet`` image; a container build that finds it copies it into the image
and names it in ``$VBM_PREDICT_BRAIN_MASK``. When that file exists, :func:`model_input_mask` returns it
(and says so) instead of the derived brain mask.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from nibabel.spatialimages import SpatialImage

__all__ = [
    "SPM_SHAPE",
    "SPM_AFFINE",
    "SPM_VOXEL_VOLUME_MM3",
    "CROP",
    "MODEL_INPUT_SHAPE",
    "CHANNELS",
    "MNI1MM_SHAPE",
    "MNI1MM_AFFINE",
    "MASK_PROVENANCE",
    "BRAIN_MASK_ENV",
    "model_input_mask",
    "is_on_grid",
    "to_grid",
    "brain_mask",
    "grey_mask",
    "template_gm",
    "crop",
    "uncrop",
    "make_model_input",
    "SFCN_CROP",
    "SFCN_INPUT_SHAPE",
    "to_mni1mm",
    "mni1mm_brain_mask",
]

#: SPM12/SPM25 1.5 mm MNI (IXI549Space) grid used by DARTEL/segment "normalised" outputs.
SPM_SHAPE: tuple[int, int, int] = (121, 145, 121)
SPM_AFFINE: np.ndarray = np.array(
    [
        [-1.5, 0.0, 0.0, 90.0],
        [0.0, 1.5, 0.0, -126.0],
        [0.0, 0.0, 1.5, -72.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
SPM_VOXEL_VOLUME_MM3: float = 1.5**3

#: 0-based, end-exclusive voxel ranges of the reference crop (x 12:108, y 13:133, z 16:102).
CROP: tuple[slice, slice, slice] = (slice(12, 108), slice(13, 133), slice(16, 102))
MODEL_INPUT_SHAPE: tuple[int, int, int, int] = (2, 96, 120, 86)
#: Channel order of the model input: channel 0 = GM density (wc1), channel 1 = GM volume (mwc1).
CHANNELS: tuple[str, str] = ("GMD", "GMV")

#: FSL's MNI152 1 mm grid (182 x 218 x 182, x axis flipped as in SPM's grid): the grid of the T1w that
#: SFCN reads (Peng et al. 2021: FSL FLIRT affine registration to MNI152 at 1 mm).
MNI1MM_SHAPE: tuple[int, int, int] = (182, 218, 182)
MNI1MM_AFFINE: np.ndarray = np.array(
    [
        [-1.0, 0.0, 0.0, 90.0],
        [0.0, 1.0, 0.0, -126.0],
        [0.0, 0.0, 1.0, -72.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
#: SFCN's centre crop of the 1 mm grid, 0-based and end-exclusive: 160 x 192 x 160 voxels.
SFCN_CROP: tuple[slice, slice, slice] = (slice(11, 171), slice(13, 205), slice(11, 171))
SFCN_INPUT_SHAPE: tuple[int, int, int, int] = (1, 160, 192, 160)

MASK_PROVENANCE = {
    "BrainMask": "nilearn MNI152 (2009) brain mask, trilinear to the SPM 1.5 mm grid, > 0.5",
    "GreyMask": "nilearn MNI152 (2009) GM probability, trilinear to the SPM 1.5 mm grid, > 0.2",
    "Note": "The reference system's mask files are not public; these are documented equivalents.",
}


#: Environment variable naming the authors' brain mask file (set in the container image).
BRAIN_MASK_ENV = "VBM_PREDICT_BRAIN_MASK"


def model_input_mask() -> tuple[np.ndarray, dict[str, Any]]:
    """The brain mask applied before the models, and what it is (for sidecars and predictions).

    The authors' mask when ``$VBM_PREDICT_BRAIN_MASK`` names an existing file, else the derived
    :func:`brain_mask`. Raises ``ValueError`` when the named file is not a 3D mask that fits the grid.
    """
    path = os.environ.get(BRAIN_MASK_ENV, "")
    if path and Path(path).is_file():
        return _published_mask(str(Path(path).resolve()))
    provenance: dict[str, Any] = {"Mask": "derived", **MASK_PROVENANCE}
    if path:
        provenance["Note"] += f" ${BRAIN_MASK_ENV} names {path}, which does not exist."
    return brain_mask(), provenance


@functools.lru_cache(maxsize=2)
def _published_mask(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    from ._io import sha256_file

    img = nib.load(path)
    if not isinstance(img, SpatialImage):
        raise ValueError(f"{path}: not an image nibabel can place on a grid")
    if tuple(img.shape[:3]) == SPM_SHAPE and len(img.shape) == 3:
        # on the model grid already: used voxel for voxel, as the authors' script multiplies the arrays
        data = np.asarray(img.dataobj, dtype=np.float32)
        how = "used voxel for voxel (already on the SPM 1.5 mm grid)"
    else:
        data = to_grid(img, interpolation="nearest")
        how = f"resampled (nearest neighbour) from {tuple(img.shape)} to the SPM 1.5 mm grid"
    mask = np.nan_to_num(data) > 0.5
    if not mask.any():
        raise ValueError(f"{path}: the brain mask is empty on the model grid")
    mask.setflags(write=False)
    source = Path(path)
    files = [source]
    if source.suffix == ".hdr" and source.with_suffix(".img").is_file():  # Analyze: header + image file
        files.append(source.with_suffix(".img"))
    provenance = {
        "Mask": "published",
        "BrainMask": f"{source.stem} (the BrainImageNet authors' prediction mask), {how}, > 0.5",
        "Files": {f.name: sha256_file(f) for f in files},
        "Voxels": int(mask.sum()),
    }
    return mask, provenance


def is_on_grid(img: SpatialImage, atol: float = 1e-3) -> bool:
    """True when ``img`` already has the SPM grid's shape and affine (no resampling needed)."""
    return tuple(img.shape[:3]) == SPM_SHAPE and np.allclose(img.affine, SPM_AFFINE, atol=atol)


def to_grid(
    img: SpatialImage,
    interpolation: Literal["continuous", "linear", "nearest"] = "linear",
) -> np.ndarray:
    """Return ``img``'s data on the SPM grid as float32 (resampled only when needed).

    Values outside the source field of view become 0. Raises ``ValueError`` for images that are
    not 3D or whose affine cannot be inverted.
    """
    from nilearn.image import resample_img

    if len(img.shape) != 3 and not (len(img.shape) == 4 and img.shape[3] == 1):
        raise ValueError(f"expected a 3D image, got shape {tuple(img.shape)}")
    if is_on_grid(img):
        return np.asarray(img.dataobj, dtype=np.float32).reshape(SPM_SHAPE)
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
    if np.linalg.matrix_rank(img.affine[:3, :3]) < 3:
        raise ValueError("the image affine is singular; the image cannot be placed in MNI space")
    src = nib.Nifti1Image(np.nan_to_num(data, nan=0.0), img.affine)
    out = resample_img(
        src,
        target_affine=SPM_AFFINE,
        target_shape=SPM_SHAPE,
        interpolation=interpolation,
        fill_value=0.0,
        force_resample=True,
        copy_header=True,
    )
    return np.asarray(out.get_fdata(dtype=np.float32), dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _template_probabilities() -> tuple[np.ndarray, np.ndarray]:
    import warnings

    from .templates import mni152_brain_mask, mni152_gm

    with warnings.catch_warnings():  # the binary mask is resampled linearly on purpose, then thresholded
        warnings.filterwarnings("ignore", message="Resampling binary images")
        brain = to_grid(mni152_brain_mask(0.0))
    gm = to_grid(mni152_gm())
    brain.setflags(write=False)
    gm.setflags(write=False)
    return brain, gm


def template_gm() -> np.ndarray:
    """MNI152 (2009) GM probability on the SPM grid (read-only float32)."""
    return _template_probabilities()[1]


def brain_mask() -> np.ndarray:
    """Boolean brain mask on the SPM grid (see module docstring for its derivation)."""
    return _template_probabilities()[0] > 0.5


def grey_mask() -> np.ndarray:
    """Boolean grey-matter mask on the SPM grid (GM probability > 0.2)."""
    return _template_probabilities()[1] > 0.2


def crop(volume: np.ndarray) -> np.ndarray:
    """Crop the last three axes of ``volume`` (on the SPM grid) to the model's 96 x 120 x 86."""
    return volume[(Ellipsis,) + CROP]


def uncrop(volume: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Place a 96 x 120 x 86 array (e.g. an explanation map) back on the full SPM grid."""
    out = np.full(SPM_SHAPE, fill, dtype=volume.dtype)
    out[CROP] = volume
    return out


def make_model_input(
    gmd: np.ndarray,
    gmv: np.ndarray,
    mask: np.ndarray | None = None,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Build one model input exactly as the reference system did.

    Both maps are multiplied by the brain mask, NaN set to 0, cropped to 96 x 120 x 86 and stacked
    as channels (GMD, GMV). Returns an array of shape :data:`MODEL_INPUT_SHAPE`.
    """
    for name, vol in (("gmd", gmd), ("gmv", gmv)):
        if vol.shape != SPM_SHAPE:
            raise ValueError(f"{name} must be on the SPM grid {SPM_SHAPE}, got shape {vol.shape}")
    m = brain_mask() if mask is None else mask.astype(bool)
    stacked = np.stack([gmd, gmv]).astype(np.float32) * m
    stacked = np.nan_to_num(stacked, nan=0.0, posinf=0.0, neginf=0.0)
    return np.ascontiguousarray(crop(stacked), dtype=dtype)


def to_mni1mm(img: SpatialImage) -> np.ndarray:
    """``img``'s data on the MNI152 1 mm grid (:data:`MNI1MM_SHAPE`) as float32, resampled (linear)
    only when it is not on that grid already; outside the source field of view 0. Raises ``ValueError``
    for an image that is not 3D or whose affine is singular."""
    from nilearn.image import resample_img

    if len(img.shape) != 3 and not (len(img.shape) == 4 and img.shape[3] == 1):
        raise ValueError(f"expected a 3D image, got shape {tuple(img.shape)}")
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
    if tuple(img.shape[:3]) == MNI1MM_SHAPE and np.allclose(img.affine, MNI1MM_AFFINE, atol=1e-3):
        return data
    if np.linalg.matrix_rank(img.affine[:3, :3]) < 3:
        raise ValueError("the image affine is singular; the image cannot be placed in MNI space")
    shifted = _reindexed(data, img.affine, MNI1MM_AFFINE, MNI1MM_SHAPE)
    if shifted is not None:
        return shifted
    out = resample_img(
        nib.Nifti1Image(np.nan_to_num(data, nan=0.0), img.affine),
        target_affine=MNI1MM_AFFINE, target_shape=MNI1MM_SHAPE, interpolation="linear",
        fill_value=0.0, force_resample=True, copy_header=True,
    )
    return np.asarray(out.get_fdata(dtype=np.float32), dtype=np.float32)


def _reindexed(data: np.ndarray, affine: np.ndarray, target_affine: np.ndarray,
               target_shape: tuple[int, int, int]) -> np.ndarray | None:
    """``data`` on the target grid by voxel indexing alone when the two grids share their voxels (same
    axes up to a flip, same spacing, whole-voxel offsets: e.g. nilearn's 1 mm MNI152 files and the MNI
    1 mm grid), which interpolation would only reproduce more slowly; None when they do not."""
    to_source = np.linalg.inv(affine) @ target_affine
    lin, off = to_source[:3, :3], to_source[:3, 3]
    signs = np.diag(lin)
    if not (np.allclose(lin, np.diag(signs), atol=1e-6) and np.allclose(np.abs(signs), 1.0, atol=1e-6)
            and np.allclose(off, np.round(off), atol=1e-4)):
        return None
    index = [np.round(signs[a]).astype(int) * np.arange(target_shape[a]) + int(round(off[a])) for a in range(3)]
    inside = [(i >= 0) & (i < data.shape[a]) for a, i in enumerate(index)]
    out = np.zeros(target_shape, dtype=np.float32)
    out[np.ix_(*inside)] = data[np.ix_(*(i[m] for i, m in zip(index, inside)))]
    return out


@functools.lru_cache(maxsize=1)
def mni1mm_brain_mask() -> np.ndarray:
    """Boolean MNI152 (2009) brain mask on the 1 mm grid (nilearn's mask probability > 0.5; read-only)."""
    import warnings

    from .templates import mni152_brain_mask

    with warnings.catch_warnings():  # the binary mask is resampled linearly on purpose, then thresholded
        warnings.filterwarnings("ignore", message="Resampling binary images")
        mask = to_mni1mm(mni152_brain_mask(0.0)) > 0.5
    mask.setflags(write=False)
    return mask

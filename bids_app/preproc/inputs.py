"""Load and check one T1w image before any backend sees it.

Every backend fails in its own obscure way on bad input (SPM on uncentred images, ANTs on a 4D
series, Atropos on a constant image). The app therefore calls :func:`load_t1w` first, so that each
T1w either yields a clean 3D image or an :class:`~bids_app.errors.InputDataError` that names the file,
the rule it broke and what was found. What is accepted, on purpose:

* any orientation and oblique affines (backends resample through the affine);
* voxel sizes from :data:`VOXEL_SIZE_RANGE_MM` (0.4-3.0 mm: the validated 0.7-1.5 mm plus margin);
* ``.nii`` and ``.nii.gz``; a 4D file holding a single volume (squeezed to 3D);
* some non-finite voxels (set to 0), as long as the image holds a head.

What "holds a head" means (:func:`head_evidence`; measured on Colin27, nilearn's MNI152, the
simulated heads of :mod:`bids_app.synth`, pure noise of four distributions, smooth noise and a
uniform sphere phantom, see docs/reliability.md): the bright class of an Otsu split, after a
morphological opening that erases isolated bright voxels, holds one connected object of at least
:data:`MIN_HEAD_VOLUME_ML`; the border of the field of view is dark compared with that object
(air around the head: ratio <= :data:`MAX_BORDER_RATIO`); and the object is not uniform inside
(grey matter, white matter, CSF and skull differ: spread >= :data:`MIN_TISSUE_SPREAD`). Noise fails
the first test, smooth noise the second, a phantom the third.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputDataError, NoInputError

__all__ = [
    "VOXEL_SIZE_RANGE_MM",
    "MIN_EXTENT_MM",
    "MIN_HEAD_VOLUME_ML",
    "MAX_BORDER_RATIO",
    "MIN_TISSUE_SPREAD",
    "HeadEvidence",
    "head_evidence",
    "load_t1w",
    "check_t1w_header",
]

#: smallest and largest accepted voxel edge (mm)
VOXEL_SIZE_RANGE_MM: tuple[float, float] = (0.4, 3.0)
#: smallest field of view along every voxel axis (mm); an adult brain is ~140 x 170 x 120 mm
MIN_EXTENT_MM: float = 100.0
#: smallest volume of bright (head) voxels (ml); an adult brain alone is ~1,100 ml
MIN_HEAD_VOLUME_ML: float = 400.0
#: largest median intensity of the field-of-view border relative to the head's median (heads: <= 0.07,
#: smooth noise: 0.99)
MAX_BORDER_RATIO: float = 0.3
#: smallest (p90 - p10) / p50 of the intensities inside the head (heads: >= 0.40, a uniform phantom: 0.06)
MIN_TISSUE_SPREAD: float = 0.2


@dataclass(frozen=True)
class HeadEvidence:
    """The measurements behind the head check (all in the docstring of this module)."""

    object_ml: float
    border_ratio: float
    tissue_spread: float

    def problems(self) -> list[str]:
        out = []
        if self.object_ml < MIN_HEAD_VOLUME_ML:
            out.append(
                f"no connected bright object of head size: the largest holds {self.object_ml:.0f} ml "
                f"(a head covers well over {MIN_HEAD_VOLUME_ML:.0f} ml; noise has none)"
            )
            return out
        if self.border_ratio > MAX_BORDER_RATIO:
            out.append(
                f"the border of the field of view is as bright as the object ({self.border_ratio:.2f} of its "
                f"median, a head in air is below {MAX_BORDER_RATIO})"
            )
        if self.tissue_spread < MIN_TISSUE_SPREAD:
            out.append(
                f"the object is uniform inside (intensity spread {self.tissue_spread:.2f}, a head's tissues "
                f"give >= {MIN_TISSUE_SPREAD}): a phantom?"
            )
        return out

def load_t1w(path: Path) -> nib.Nifti1Image:
    """Read ``path`` and return a 3D float32 NIfTI image with the file's affine, or raise.

    Raises
    ------
    NoInputError
        The file does not exist.
    InputDataError
        The file is empty, truncated, not gzip/NIfTI, not a single 3D volume, holds no finite or only
        constant values, has a singular affine, implausible voxel sizes, or a field of view that
        cannot contain a head. The message always starts with the file's path.
    """
    path = Path(path)
    if not path.is_file():
        raise NoInputError(f"{path}: T1w file not found")
    _check_readable(path)
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise InputDataError(f"{path}: expected a NIfTI file (.nii or .nii.gz)")
    if path.stat().st_size == 0:
        raise InputDataError(f"{path}: the file is empty (0 bytes)")
    if name.endswith(".nii.gz"):
        _check_gzip(path)

    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several unrelated types for bad headers
        raise InputDataError(f"{path}: not a readable NIfTI header ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputDataError(f"{path}: not a NIfTI-1/2 image (nibabel read it as {type(img).__name__})")

    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 4:
        raise InputDataError(
            f"{path}: a 4D image with {shape[3]} volumes; a T1w must be one 3D volume "
            "(split the series or keep one run per file)"
        )
    if len(shape) != 3 or min(shape) < 2:
        raise InputDataError(f"{path}: a T1w must be a 3D volume; got shape {tuple(img.shape)}")

    affine = np.asarray(img.affine, dtype=np.float64)
    lin = affine[:3, :3]
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(lin)) < 1e-6:
        raise InputDataError(
            f"{path}: the affine (sform/qform) is singular or not finite, so the image cannot be placed "
            f"in space; fix the header. Affine rows: {np.round(lin, 4).tolist()}"
        )
    voxel = np.sqrt((lin**2).sum(axis=0))
    lo, hi = VOXEL_SIZE_RANGE_MM
    if np.any(voxel < lo) or np.any(voxel > hi):
        raise InputDataError(
            f"{path}: voxel sizes {np.round(voxel, 3).tolist()} mm are outside the accepted range "
            f"{lo}-{hi} mm (the models were validated on 0.7-1.5 mm T1w images)"
        )
    extent = voxel * np.asarray(shape)
    if np.any(extent < MIN_EXTENT_MM):
        raise InputDataError(
            f"{path}: the field of view {np.round(extent, 1).tolist()} mm is too small to hold a head "
            f"(at least {MIN_EXTENT_MM:.0f} mm along every axis is needed)"
        )

    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except (EOFError, OSError, ValueError, zlib.error) as exc:
        raise InputDataError(
            f"{path}: the image data cannot be read; the file is truncated or corrupt ({exc})"
        ) from exc

    finite = np.isfinite(data)
    if not finite.any():
        raise InputDataError(f"{path}: every voxel is NaN or infinite; the image holds no data")
    values = data[finite]
    if float(values.max() - values.min()) <= 0.0:
        raise InputDataError(f"{path}: every voxel has the same value ({values[0]:g}); the image holds no head")
    data = np.where(finite, data, 0.0).astype(np.float32)

    head_ml = _bright_volume_ml(data, float(np.prod(voxel)))
    if head_ml < MIN_HEAD_VOLUME_ML:
        raise InputDataError(
            f"{path}: only {head_ml:.0f} ml of the field of view is brighter than the background; "
            f"a head covers well over {MIN_HEAD_VOLUME_ML:.0f} ml. Is this a T1w of a whole head?"
        )
    problems = head_evidence(data, voxel).problems()
    if problems:
        raise InputDataError(f"{path}: this does not look like a head: {'; '.join(problems)}")

    out = nib.Nifti1Image(data, affine)
    out.header.set_xyzt_units("mm")
    return out


def head_evidence(data: np.ndarray, voxel_mm: np.ndarray | tuple[float, float, float]) -> HeadEvidence:
    """Measure what tells a head from noise, smooth noise, a phantom (see the module docstring).

    Works on a copy subsampled to voxels of at least 2 mm (fast on 1 mm heads; the thresholds do
    not depend on it).
    """
    from scipy import ndimage

    voxel = np.asarray(voxel_mm, dtype=np.float64)
    step = np.maximum(1, np.floor(2.0 / voxel)).astype(int)
    small = np.ascontiguousarray(data[:: step[0], :: step[1], :: step[2]], dtype=np.float32)
    voxel_ml = float(np.prod(voxel * step)) / 1000.0
    bright = small > _otsu(small.ravel())
    opened = ndimage.binary_opening(bright, structure=np.ones((3, 3, 3), bool))
    labels, n = ndimage.label(opened)
    if n == 0:
        return HeadEvidence(0.0, float("inf"), 0.0)
    sizes = np.bincount(labels.ravel())[1:]
    obj = labels == (int(np.argmax(sizes)) + 1)
    obj_median = float(np.median(small[obj]))
    border = np.ones(small.shape, bool)
    border[2:-2, 2:-2, 2:-2] = False
    ratio = float(np.median(small[border])) / obj_median if obj_median > 0 else float("inf")
    inner = ndimage.binary_erosion(obj, iterations=1)
    values = small[inner] if inner.any() else small[obj]
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    spread = float((p90 - p10) / p50) if p50 > 0 else 0.0
    return HeadEvidence(float(sizes.max()) * voxel_ml, ratio, spread)


def check_t1w_header(path: Path) -> None:
    """The light check for a T1w whose maps are reused: it exists and is a readable 3D NIfTI image.

    Raises :class:`NoInputError` (missing) or :class:`InputDataError` (not a NIfTI, not 3D), naming
    the file; the voxel data are not read.
    """
    path = Path(path)
    if not path.is_file():
        raise NoInputError(f"{path}: T1w file not found (or a broken symlink)")
    _check_readable(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several unrelated types for bad headers
        raise InputDataError(f"{path}: not a readable NIfTI image ({type(exc).__name__}: {exc})") from exc
    shape = tuple(int(s) for s in getattr(img, "shape", ()))
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)) or not (
        len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)
    ):
        raise InputDataError(f"{path}: the T1w must be one 3D NIfTI volume; got {type(img).__name__} {shape}")


def _check_readable(path: Path) -> None:
    """A file the app's user may not read is a missing input (exit 66), not a corrupt one."""
    try:
        with open(path, "rb"):
            pass
    except PermissionError as exc:
        raise NoInputError(f"{path}: cannot read the T1w (permission denied); give the app's user read access") from exc


def _check_gzip(path: Path) -> None:
    """Decompress the whole file once so a corrupt or truncated gzip stream is named as such."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise InputDataError(
            f"{path}: the gzip stream is corrupt or truncated ({type(exc).__name__}: {exc}); "
            "re-export or re-download the file"
        ) from exc


def _bright_volume_ml(data: np.ndarray, voxel_mm3: float) -> float:
    """Volume (ml) of the bright class of an Otsu split of the intensity histogram.

    Every head MRI splits into dark background and a bright head; a T1w whose bright class is tiny
    is a phantom, a localiser or an image without a head in view.
    """
    sample = data[:: 2, :: 2, :: 2].ravel() if data.size > 8_000_000 else data.ravel()
    threshold = _otsu(sample)
    return float(np.count_nonzero(data > threshold)) * voxel_mm3 / 1000.0


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut of the histogram that maximises the between-class variance."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])

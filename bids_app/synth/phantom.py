"""Synthetic T1w heads with known grey matter, for testing and benchmarking the preprocessing.

A phantom is nilearn's MNI152 (2009) brain, given a scalp and skull, moved into a "native" space by a
known affine plus a smooth random displacement, sampled on an oblique grid in a non-RAS voxel order,
with a smooth multiplicative bias field and Rician noise. Because the subject is the template seen
through a known map psi (native -> template), the truth is exact:

* native GM probability = template GM at psi(y) (so the native GM volume is known in ml);
* template-space GM density = the template GM itself;
* an injected hippocampal atrophy of fraction ``a`` is a local contraction: around each hippocampus
  (AAL labels 37/38 from Debian's mricron-data when present, else an ellipsoid at the hippocampi's
  MNI position) the native -> template map gets an outward displacement ``alpha (x - c) w(x)`` (``w``
  a Gaussian bump at the hippocampus' centroid), so the subject's hippocampus is smaller and its
  surroundings larger. ``alpha`` makes the bump's core shrink by ``a``; the loss actually injected
  into the hippocampus is measured on the phantom and returned
  (``true_hippocampal_gm_ml``). Volume loss seen through the Jacobian is what SPM's modulation
  measures in real atrophy; an intensity-only model (GM -> CSF in place) is ambiguous for a
  single-channel segmentation in the GM/WM-mixed hippocampus and was dropped.

This is deliberately easier than real anatomy (the registration target is the phantom's own source),
so the benchmark also runs on the real Colin27 head. It is a test fixture, not a cohort generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .._io import atomic_path
from ..grid import to_grid
from ..templates import template_priors_1mm, template_t1_1mm

__all__ = ["AAL_PATH", "Phantom", "hippocampus_mask_1mm", "make_phantom"]

AAL_PATH = Path("/usr/share/mricron/templates/aal.nii.gz")
_I_GM, _I_CSF = 0.65, 0.30  # mean template T1 intensity in GM > 0.8 and in CSF (measured on nilearn's T1)


@dataclass(frozen=True)
class Phantom:
    """A phantom written to ``path`` and its truth (SPM-grid arrays in SPM storage order)."""

    path: Path
    true_gm_ml: float  # native GM volume
    true_hippocampal_gm_ml: float  # native GM volume inside the (warped) hippocampus mask
    true_gmd: np.ndarray  # template-space GM probability on the SPM grid
    hippocampus: np.ndarray  # bool, SPM grid
    atrophy: float
    hippocampus_source: str


def hippocampus_mask_1mm() -> tuple[np.ndarray, str]:
    """Boolean hippocampus mask on nilearn's 1 mm template grid and where it came from."""
    ref = template_t1_1mm()
    if AAL_PATH.is_file():
        from nilearn.image import resample_to_img

        aal = nib.load(str(AAL_PATH))
        lab = resample_to_img(aal, ref, interpolation="nearest", force_resample=True, copy_header=True)
        data = np.asarray(lab.dataobj)
        return np.isin(np.rint(data), (37, 38)), "AAL labels 37/38 (mricron-data aal.nii.gz)"
    ijk = np.indices(ref.shape, dtype=np.float32)
    xyz = np.tensordot(ref.affine[:3, :3], ijk, axes=1) + ref.affine[:3, 3, None, None, None]
    mask = np.zeros(ref.shape, bool)
    for cx in (-26.0, 26.0):
        r = ((xyz[0] - cx) / 7.0) ** 2 + ((xyz[1] + 22.0) / 17.0) ** 2 + ((xyz[2] + 13.0) / 7.0) ** 2
        mask |= r <= 1.0
    gm = template_priors_1mm()["GM"].get_fdata()
    return mask & (gm > 0.2), "ellipsoids at the MNI hippocampi (AAL not installed)"


def _padded_template(pad: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    t1 = template_t1_1mm()
    pri = template_priors_1mm()
    arrays = {"T1": t1.get_fdata(dtype=np.float32), "GM": pri["GM"].get_fdata(dtype=np.float32)}
    arrays["brain"] = pri["brain"].get_fdata(dtype=np.float32)
    hip, _ = hippocampus_mask_1mm()
    arrays["H"] = hip.astype(np.float32)
    arrays = {k: np.pad(v, pad) for k, v in arrays.items()}
    affine = t1.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    return arrays, affine


#: the bump is much wider than a hippocampus, so the whole structure sits in its near-uniform core
_BUMP_SIGMA_MM = np.array([14.0, 28.0, 14.0])


def _atrophy_bumps(arrays: dict[str, np.ndarray], t_aff: np.ndarray, atrophy: float) -> list:
    """(centre, sigma, alpha) of each hippocampus' contraction.

    At the bump's centre the map x -> x + alpha (x - c) w(x) scales by 1 + alpha, so the native
    volume there shrinks by (1 + alpha)^-3; alpha = (1 - atrophy)^(-1/3) - 1. Towards the edge of
    the structure w < 1 and the loss is smaller: the loss actually injected is measured on the
    phantom (``Phantom.true_hippocampal_gm_ml``), never assumed.
    """
    H = arrays["H"] > 0.5
    alpha = (1.0 - atrophy) ** (-1.0 / 3.0) - 1.0
    out = []
    half = H.shape[0] // 2
    for sl in (slice(0, half), slice(half, None)):
        part = np.zeros_like(H)
        part[sl] = H[sl]
        if not part.any():
            continue
        idx = np.argwhere(part)
        c = (t_aff[:3, :3] @ idx.T + t_aff[:3, 3:4]).T.mean(axis=0)
        out.append((c, _BUMP_SIGMA_MM, alpha))
    return out


def _add_head(arrays: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """T1 of a head: the template brain, a thin CSF rim, dark skull and bright textured scalp."""
    brain = arrays["brain"] > 0.5
    dist = ndimage.distance_transform_edt(~brain)
    t1 = arrays["T1"].copy()
    t1[(dist > 0) & (dist <= 2)] = _I_CSF
    t1[(dist > 2) & (dist <= 7)] = 0.08
    scalp = (dist > 7) & (dist <= 13)
    texture = ndimage.gaussian_filter(rng.standard_normal(t1.shape).astype(np.float32), 2.0)
    t1[scalp] = 0.75 + 0.5 * texture[scalp]
    return t1


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def make_phantom(
    out_path: Path,
    *,
    voxel_mm: float = 1.0,
    atrophy: float = 0.0,
    seed: int = 0,
    displacement_mm: float = 3.0,
    noise: float = 0.02,
) -> Phantom:
    """Write a phantom T1w to ``out_path`` (``.nii`` or ``.nii.gz``) and return it with its truth.

    ``seed`` fixes the deformation, bias and noise, so two phantoms that differ only in ``atrophy``
    are the same subject before and after atrophy (the regional loss is then measured directly).
    """
    rng = np.random.default_rng(seed)
    pad = 16
    arrays, t_aff = _padded_template(pad)
    head = _add_head(arrays, np.random.default_rng(seed + 1000))
    H = arrays["H"]
    gm_t = arrays["GM"]
    bumps = _atrophy_bumps(arrays, t_aff, atrophy) if atrophy > 0 else []

    # native -> template map psi(y) = M (y - c) + c + u(y): scale + rotation about the head centre
    centre = np.array([0.0, -18.0, 12.0])
    scale = np.diag(1.0 / np.array([1.06, 0.95, 1.03]))
    M = scale @ _rotation(np.deg2rad(8.0), np.deg2rad(-4.0), np.deg2rad(5.0)).T
    # native grid: sagittal-like voxel order (i: A->P, j: S->I, k: L->R), slightly oblique
    perm = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    lin = _rotation(np.deg2rad(6.0), 0.0, np.deg2rad(-3.0)) @ perm * voxel_mm
    extent_mm = np.array([245.0, 235.0, 200.0])  # along i (y), j (z), k (x)
    shape = tuple(int(np.ceil(e / voxel_mm)) for e in extent_mm)
    origin = centre - lin @ ((np.array(shape) - 1) / 2.0)
    n_aff = np.eye(4)
    n_aff[:3, :3] = lin
    n_aff[:3, 3] = origin

    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = lin @ ijk + origin[:, None]
    # smooth displacement: random vectors on a coarse 12 mm lattice, smoothed and upsampled
    coarse_shape = tuple(max(int(np.ceil(s * voxel_mm / 12.0)), 2) for s in shape)
    disp = []
    for _ in range(3):
        field = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 1.0)
        field *= displacement_mm / max(np.abs(field).max(), 1e-6)
        zoom = [s / c for s, c in zip(shape, coarse_shape)]
        disp.append(ndimage.zoom(field, zoom, order=3)[: shape[0], : shape[1], : shape[2]].reshape(-1))
    tmpl_world = M @ (world - centre[:, None]) + centre[:, None] + np.stack(disp)
    for c, sig, alpha in bumps:
        rel = tmpl_world - c[:, None]
        w = np.exp(-0.5 * ((rel / sig[:, None]) ** 2).sum(axis=0))
        tmpl_world = tmpl_world + alpha * rel * w
    t_inv = np.linalg.inv(t_aff)
    t_vox = t_inv[:3, :3] @ tmpl_world + t_inv[:3, 3:4]
    del world, tmpl_world, ijk

    def sample(arr: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(arr, t_vox, order=1, mode="constant", cval=0.0).reshape(shape)

    t1 = sample(head)
    gm_native = sample(gm_t)
    hip_native = sample(H)

    # bias field (+-15%) and Rician noise
    bias_coarse = ndimage.gaussian_filter(rng.standard_normal((4, 4, 4)), 0.8)
    bias_coarse *= 0.15 / max(np.abs(bias_coarse).max(), 1e-6)
    bias = np.exp(ndimage.zoom(bias_coarse, [s / 4 for s in shape], order=3)[: shape[0], : shape[1], : shape[2]])
    t1 = t1 * bias
    n1 = rng.standard_normal(shape).astype(np.float32) * noise
    n2 = rng.standard_normal(shape).astype(np.float32) * noise
    t1 = np.sqrt((t1 + n1) ** 2 + n2**2)
    data = np.clip(t1 * 1000.0, 0, 32767).astype(np.int16)

    img = nib.Nifti1Image(data, n_aff)
    img.header.set_xyzt_units("mm")
    img.set_qform(n_aff, code=1)
    img.set_sform(n_aff, code=1)
    out_path = Path(out_path)
    suffix = ".nii.gz" if out_path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(out_path, suffix=suffix) as tmp:
        nib.save(img, tmp)

    true_gmd = to_grid(nib.Nifti1Image(gm_t[pad:-pad, pad:-pad, pad:-pad], template_t1_1mm().affine))
    hip_spm = to_grid(nib.Nifti1Image(H[pad:-pad, pad:-pad, pad:-pad], template_t1_1mm().affine)) > 0.5
    _, source = hippocampus_mask_1mm()
    return Phantom(
        path=out_path,
        true_gm_ml=float(gm_native.sum(dtype=np.float64) * voxel_mm**3 / 1000.0),
        true_hippocampal_gm_ml=float((gm_native * hip_native).sum(dtype=np.float64) * voxel_mm**3 / 1000.0),
        true_gmd=true_gmd,
        hippocampus=hip_spm,
        atrophy=atrophy,
        hippocampus_source=source,
    )

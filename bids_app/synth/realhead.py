"""Real single-subject heads under known deformations and focal atrophy: the cases of the fidelity benchmark.

Why. A backend that registers to MNI152 looks better than it is on heads made from MNI152 itself
(:mod:`bids_app.synth.phantom`): there the registration only has to undo a smooth warp of its own
target. Here the starting anatomy is a real head that is *not* the template:

* ``colin27``: Colin Holmes' 27-scan average (Debian ``mricron-data`` ``ch2.nii.gz``, 1 mm, with
  skull and scalp), its own brain (``ch2bet.nii.gz``) and AAL, which was drawn on this very head;
* ``mni152``: nilearn's MNI152 2009 T1 (brain) with Colin27's scalp and skull outside it
  (:func:`bids_app.synth.anatomy.template_anatomy`), AAL resampled onto it; the easier case, kept
  as a control.

Each case is the base head seen through a known map ``psi`` (native mm -> base mm): a random scale,
rotation and translation, a smooth random displacement, and, for atrophy, local contractions
(``psi(x) <- psi(x) + alpha (psi(x) - c) w(psi(x))`` with ``w`` a Gaussian bump at the structure's
centroid, so the native structure is smaller and nothing else changes). It is sampled on a scanner
grid (voxel size, axis order, obliquity), with a smooth multiplicative bias and Rician noise. The
truth is computed on that native grid, by the same sampling:

* native GM = reference GM at ``psi(x)``; total GM and the GM inside every structure (AAL labels at
  ``psi(x)``) in ml;
* template-space GM density = the reference GM on the SPM grid: both base heads lie in MNI space, so
  their own GM is where a registration to MNI152 should put it, up to the residual difference
  between Colin27's and the template's anatomy (which bounds the GMD correlation below 1 even for a
  perfect registration);
* structure masks on the SPM grid (AAL labels resampled, nearest neighbour).

Reference GM. MNI152: nilearn's GM probability. Colin27: no tissue map ships, so its GM is the
partial-volume GM fraction of the noise-free (27-scan average) 1 mm head inside ``ch2bet``'s brain,
linear between tissue levels taken from the head itself (GM and WM: a three-class intensity mixture;
CSF: the lateral ventricles), without spatial priors: this head's own intensities decide its tissue
boundaries, not the template's (deep GM nuclei, between GM and WM in T1, count partly).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from scipy import ndimage

from .._io import atomic_path
from ..grid import to_grid
from .anatomy import MRICRON_DIR, template_anatomy

__all__ = [
    "BASE_HEADS",
    "STRUCTURES",
    "BaseHead",
    "Case",
    "base_head",
    "make_case",
    "reference_margin_sensitivity",
    "structure_mask_spm",
    "true_gmd_spm",
]

BaseName = Literal["colin27", "mni152"]
BASE_HEADS: tuple[str, ...] = ("colin27", "mni152")

#: structure -> (AAL label groups, one contraction bump per group; bump sigma in mm along x, y, z)
STRUCTURES: dict[str, tuple[tuple[tuple[int, ...], ...], tuple[float, float, float]]] = {
    "hippocampus": (((37,), (38,)), (11.0, 20.0, 11.0)),
    "precuneus": (((67, 68),), (15.0, 18.0, 15.0)),
}


@dataclass(frozen=True)
class BaseHead:
    """A real head on its own 1 mm grid in MNI space (arrays float32 / int16)."""

    name: str
    affine: np.ndarray
    t1: np.ndarray  # WM ~ 1
    gm: np.ndarray  # reference GM probability
    labels: np.ndarray  # AAL labels on this grid
    sources: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One simulated T1w and its truth."""

    path: Path
    base: str
    seed: int
    atrophy: dict  # structure -> contraction strength
    gm_path: Path  # true native GM probability on the T1w's grid
    structures_path: Path  # native structure index (1 + position in STRUCTURES) on the T1w's grid
    true_gm_ml: float  # native GM volume
    true_structure_gm_ml: dict  # structure -> native GM volume inside it
    voxel_size: tuple[float, float, float]
    axcodes: str


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: install Debian's mricron-data (apt-get install mricron-data)")
    return path


def _load(path: Path) -> nib.Nifti1Image:
    img = nib.load(str(_require(path)))
    assert isinstance(img, nib.Nifti1Image), path
    return img


def _pull(img: nib.spatialimages.SpatialImage, shape: tuple[int, ...], affine: np.ndarray, order: int) -> np.ndarray:
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    m = np.linalg.inv(img.affine) @ affine
    coords = m[:3, :3].astype(np.float32) @ idx + m[:3, 3:4].astype(np.float32)
    data = np.asarray(img.dataobj, dtype=np.float32)
    return ndimage.map_coordinates(data, coords, order=order, mode="constant", cval=0.0).reshape(shape)


def _partial_volume_gm(t1: np.ndarray, brain: np.ndarray, ventricles: np.ndarray,
                       levels: dict | None = None) -> tuple[np.ndarray, dict]:
    """GM fraction of a high-SNR T1 from its own intensities: a voxel between two tissue levels is a
    linear mixture of those two tissues. Returns (GM fraction, levels).

    GM and WM levels: the upper two means of a 3-class Gaussian mixture over the brain. CSF level: the
    median inside the lateral ventricles (``ventricles``), not the mixture's lowest class. ``ch2bet``
    holds little pure CSF, so that class is a broad mixture of CSF and GM (on Colin27 its mean is 0.62
    of WM, SD 0.18, against 0.30 in the ventricles); taken as pure CSF it called every voxel up to 62%
    of WM GM-free and the reference lost about a quarter of the cortex's partial-volume GM.

    ``levels`` (``{"CSF", "GM", "WM"}``) skips the estimation: the levels are the head's, so a
    different mask over the same head keeps them.
    """
    from sklearn.mixture import GaussianMixture

    values = t1[brain].astype(np.float64)
    if levels is not None:
        csf, gm_mu, wm = levels["CSF"], levels["GM"], levels["WM"]
    else:
        sample = np.random.default_rng(0).choice(values, size=min(200_000, values.size), replace=False)
        gmm = GaussianMixture(3, means_init=np.percentile(sample, (10, 50, 90))[:, None], random_state=0)
        _, gm_mu, wm = np.sort(gmm.fit(sample[:, None]).means_.ravel())
        csf = float(np.median(t1[ventricles & brain]))
    if not csf < gm_mu < wm:
        raise ValueError(f"tissue levels out of order: CSF {csf:.1f}, GM {gm_mu:.1f}, WM {wm:.1f}")
    frac = np.where(values <= gm_mu, (values - csf) / (gm_mu - csf), (wm - values) / (wm - gm_mu))
    out = np.zeros(t1.shape, np.float32)
    out[brain] = np.clip(frac, 0.0, 1.0)
    return out, {"CSF": csf, "GM": float(gm_mu), "WM": float(wm)}


def _ventricles(brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The lateral ventricles of a head in MNI space: the template's CSF probability above 0.9,
    deeper than 20 mm inside the head's own brain mask (sulcal CSF lies nearer the surface)."""
    from ..templates import template_priors_1mm

    csf = _pull(template_priors_1mm()["CSF"], brain.shape, affine, 1)
    depth = ndimage.distance_transform_edt(brain, sampling=np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    return (csf > 0.9) & (depth > 20.0)


@functools.lru_cache(maxsize=2)
def base_head(name: BaseName) -> BaseHead:
    """The base head ``name`` (see module docstring); cached per process."""
    from ..templates import mni152_gm, mni152_t1

    aal = _load(MRICRON_DIR / "aal.nii.gz")
    if name == "colin27":
        ch2 = _load(MRICRON_DIR / "ch2.nii.gz")
        bet = _load(MRICRON_DIR / "ch2bet.nii.gz")
        affine = ch2.affine
        t1 = np.asarray(ch2.dataobj, dtype=np.float32)
        brain = ndimage.binary_fill_holes(np.asarray(bet.dataobj) > 0)
        gm, levels = _partial_volume_gm(t1, brain, _ventricles(brain, affine))
        wm_level = levels["WM"]
        labels = np.rint(np.asarray(aal.dataobj)).astype(np.int16)
        sources = {
            "T1": "Colin27 ch2.nii.gz (mricron-data)",
            "GM": "partial-volume GM fraction of ch2 inside ch2bet between tissue levels "
            "(GM, WM: 3-class intensity mixture; CSF: lateral ventricles), no priors",
            "Labels": "AAL (drawn on Colin27)",
        }
    elif name == "mni152":
        t1_img = mni152_t1()
        affine = t1_img.affine
        gm = np.asarray(mni152_gm().dataobj, dtype=np.float32)
        brain_t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
        wm_level = float(np.median(brain_t1[template_anatomy().wm > 0.9]))
        t1 = (brain_t1 + template_anatomy().head * wm_level).astype(np.float32)
        labels = np.rint(_pull(aal, t1.shape, affine, 0)).astype(np.int16)
        sources = {
            "T1": "nilearn MNI152 2009 T1 + Colin27 non-brain (synth.anatomy)",
            "GM": "nilearn MNI152 2009 GM probability",
            "Labels": "AAL resampled (nearest)",
        }
    else:
        raise ValueError(f"unknown base head {name!r}; choose from {BASE_HEADS}")
    t1 = (t1 / max(wm_level, 1e-6)).astype(np.float32)
    for arr in (t1, gm, labels):
        arr.setflags(write=False)
    return BaseHead(name=name, affine=np.asarray(affine, float), t1=t1, gm=gm, labels=labels, sources=sources)


def reference_margin_sensitivity(name: BaseName, voxels: tuple[int, ...] = (-2, -1, 0, 1, 2)) -> dict[int, dict]:
    """How much the reference's total GM depends on where its brain edge is drawn.

    Why. Where the brain ends is a convention, not a measurement: at the edge, a voxel between the CSF
    and GM intensities is partial-volume cortex or dura, and the T1 alone cannot say which. Colin27's
    reference stops at ``ch2bet``; the MNI152 head's is a population probability that fades out
    across the same margin. The total-GM error of a backend is only meaningful to within what moving
    that edge by a voxel changes, which this measures on the base head's own 1 mm grid.

    For each ``n`` in ``voxels`` the head's brain mask (``ch2bet`` for Colin27, the nonzero MNI152
    brain for ``mni152``) is dilated (``n`` > 0) or eroded (``n`` < 0) by ``|n|`` voxels and the
    partial-volume rule of the Colin27 reference (:func:`_partial_volume_gm`, with the tissue levels
    of the unchanged mask) applied inside it. The MNI152 T1 is zero outside its brain, so there only
    erosion moves anything.
    Returns ``{n: {"brain_ml", "pv_gm_ml", "reference_gm_in_mask_ml"}}``; the last is the shipped
    reference (MNI152: the probability map) summed inside the mask, for comparison with the rule.
    """
    from ..templates import mni152_t1

    if name == "colin27":
        img = _load(MRICRON_DIR / "ch2.nii.gz")
        brain0 = ndimage.binary_fill_holes(np.asarray(_load(MRICRON_DIR / "ch2bet.nii.gz").dataobj) > 0)
    elif name == "mni152":
        img = mni152_t1()
        brain0 = ndimage.binary_fill_holes(np.asarray(img.dataobj) > 0)
    else:
        raise ValueError(f"unknown base head {name!r}; choose from {BASE_HEADS}")
    t1 = np.asarray(img.dataobj, dtype=np.float32)
    ventricles = _ventricles(brain0, img.affine)
    voxel_ml = abs(float(np.linalg.det(img.affine[:3, :3]))) / 1000.0
    reference = np.asarray(base_head(name).gm, dtype=np.float64)
    _, levels = _partial_volume_gm(t1, brain0, ventricles)
    out: dict[int, dict] = {}
    for n in voxels:
        if n > 0:
            brain = ndimage.binary_dilation(brain0, iterations=n)
        elif n < 0:
            brain = ndimage.binary_erosion(brain0, iterations=-n)
        else:
            brain = brain0
        pv, _ = _partial_volume_gm(t1, brain, ventricles, levels)
        out[n] = {"brain_ml": float(brain.sum()) * voxel_ml, "pv_gm_ml": float(pv.sum(dtype=np.float64)) * voxel_ml,
                  "reference_gm_in_mask_ml": float(reference[brain].sum()) * voxel_ml}
    return out


def structure_mask_spm(name: BaseName, structure: str) -> np.ndarray:
    """Boolean mask of ``structure`` (:data:`STRUCTURES`) on the SPM grid, from the base head's labels."""
    head = base_head(name)
    groups, _ = STRUCTURES[structure]
    sel = np.isin(head.labels, [lab for g in groups for lab in g]).astype(np.float32)
    return to_grid(nib.Nifti1Image(sel, head.affine)) >= 0.5


def true_gmd_spm(name: BaseName) -> np.ndarray:
    """The template-space truth of GMD: the base head's reference GM on the SPM grid."""
    head = base_head(name)
    return to_grid(nib.Nifti1Image(np.asarray(head.gm), head.affine))


def _rotation(deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


_AXCODES = ("RAS", "LPS", "PSR", "LAS", "RPI", "ASL")


def _axcodes_matrix(axcodes: str) -> np.ndarray:
    m = np.zeros((3, 3))
    for i, code in enumerate(axcodes):
        axis = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}[code]
        m[axis, i] = 1.0 if code in "RAS" else -1.0
    return m


def make_case(
    out_path: Path,
    base: BaseName,
    *,
    seed: int,
    atrophy: dict | None = None,
    warp_mm: float = 3.0,
) -> Case:
    """Write one simulated T1w of ``base`` to ``out_path`` and return it with its truth.

    ``seed`` fixes everything but the atrophy (placement, warp, scanner grid, bias, noise), so two
    cases with the same seed and different ``atrophy`` ({structure: strength}, strength s removes
    about a fraction s of the bump core's volume) are one subject before and after atrophy.
    """
    head = base_head(base)
    atrophy = dict(atrophy or {})
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF1D]))
    # scanner: voxel size (in-plane, slab), axis order, obliquity; head placement and size
    inplane = float(rng.uniform(0.9, 1.2))
    vox = np.array([inplane, inplane, float(rng.uniform(0.9, 1.3))])
    axcodes = _AXCODES[int(rng.integers(len(_AXCODES)))]
    direction = _rotation(rng.uniform(-8, 8, 3)) @ _axcodes_matrix(axcodes)
    scale = float(rng.normal(1.0, 0.05)) * (1.0 + rng.normal(0, 0.02, 3))
    m = _rotation(rng.uniform(-10, 10, 3)) @ np.diag(1.0 / scale)  # native -> base, linear part
    centre = np.array([0.0, -18.0, 12.0])
    shift = rng.normal(0, 5, 3)

    # native grid: the base head's bounding box seen from the native side, plus a margin
    fg = np.argwhere(head.t1 > 0.1)
    lo, hi = fg.min(0), fg.max(0)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float).T
    base_mm = head.affine[:3, :3] @ corners + head.affine[:3, 3:4]
    native_mm = np.linalg.inv(m) @ (base_mm - centre[:, None] - shift[:, None]) + centre[:, None]
    a3 = direction @ np.diag(vox)
    g = np.linalg.inv(a3) @ native_mm
    lo_g, hi_g = g.min(1) - 12.0 / vox, g.max(1) + 12.0 / vox
    shape = tuple(int(np.ceil(h - lo)) for lo, h in zip(lo_g, hi_g))
    n_aff = np.eye(4)
    n_aff[:3, :3] = a3
    n_aff[:3, 3] = a3 @ np.floor(lo_g)

    # psi: native mm -> base mm
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    x = a3.astype(np.float32) @ ijk + n_aff[:3, 3:4].astype(np.float32)
    del ijk
    y = (m @ (x - centre[:, None]).astype(np.float64)).astype(np.float32) + (centre + shift)[:, None].astype(np.float32)
    coarse = tuple(max(int(np.ceil(s * v / 12.0)), 2) for s, v in zip(shape, vox))
    for k in range(3):
        f = ndimage.gaussian_filter(rng.standard_normal(coarse), 1.0)
        f *= warp_mm / max(np.abs(f).max(), 1e-6)
        up = ndimage.zoom(f, [s / c for s, c in zip(shape, coarse)], order=3)[: shape[0], : shape[1], : shape[2]]
        y[k] += up.reshape(-1).astype(np.float32)
    del x
    for structure, strength in atrophy.items():
        groups, sigma = STRUCTURES[structure]
        alpha = (1.0 - strength) ** (-1.0 / 3.0) - 1.0
        for labs in groups:
            idx = np.argwhere(np.isin(head.labels, labs))
            c = (head.affine[:3, :3] @ idx.T + head.affine[:3, 3:4]).mean(axis=1).astype(np.float32)
            rel = y - c[:, None]
            w = np.exp(-0.5 * ((rel / np.asarray(sigma, np.float32)[:, None]) ** 2).sum(axis=0))
            y += np.float32(alpha) * rel * w
            del rel, w
    inv = np.linalg.inv(head.affine).astype(np.float32)
    coords = inv[:3, :3] @ y + inv[:3, 3:4]
    del y

    def sample(arr: np.ndarray, order: int = 1) -> np.ndarray:
        out = ndimage.map_coordinates(arr, coords, order=order, mode="constant", cval=0.0, prefilter=False)
        return out.reshape(shape)

    t1 = sample(head.t1)
    gm = sample(head.gm)
    labels = sample(head.labels.astype(np.float32), order=0).astype(np.int16)
    voxel_ml = float(np.prod(vox)) / 1000.0
    true_structures = {}
    index = np.zeros(shape, np.uint8)
    for k, (structure, (groups, _)) in enumerate(STRUCTURES.items()):
        sel = np.isin(labels, [lab for g_ in groups for lab in g_])
        index[sel] = k + 1
        true_structures[structure] = float(gm[sel].sum(dtype=np.float64) * voxel_ml)
    del labels

    # bias (+-20%) and Rician noise (SD 2-3% of WM)
    bias_c = ndimage.gaussian_filter(rng.standard_normal((4, 4, 4)), 0.8)
    bias_c *= float(rng.uniform(0.1, 0.2)) / max(np.abs(bias_c).max(), 1e-6)
    bias = np.exp(ndimage.zoom(bias_c, [s / 4 for s in shape], order=3)[: shape[0], : shape[1], : shape[2]])
    noise = float(rng.uniform(0.02, 0.03))
    t1 = t1 * bias.astype(np.float32)
    t1 = np.sqrt((t1 + rng.standard_normal(shape).astype(np.float32) * noise) ** 2
                 + (rng.standard_normal(shape).astype(np.float32) * noise) ** 2)
    data = np.clip(t1 * 1000.0, 0, 32767).astype(np.int16)
    out_path = Path(out_path)
    stem = out_path.name.split(".nii")[0]
    gm_path = out_path.with_name(f"{stem}_truth-GM.nii.gz")
    structures_path = out_path.with_name(f"{stem}_truth-structures.nii.gz")
    for path, arr in ((out_path, data), (gm_path, gm.astype(np.float32)), (structures_path, index)):
        out_img = nib.Nifti1Image(arr, n_aff)
        out_img.header.set_xyzt_units("mm")
        out_img.set_qform(n_aff, code=1)
        out_img.set_sform(n_aff, code=1)
        with atomic_path(path, suffix=".nii.gz" if path.name.endswith(".nii.gz") else ".nii") as tmp:
            nib.save(out_img, tmp)
    return Case(
        path=out_path,
        gm_path=gm_path,
        structures_path=structures_path,
        base=base,
        seed=seed,
        atrophy=atrophy,
        true_gm_ml=float(gm.sum(dtype=np.float64) * voxel_ml),
        true_structure_gm_ml=true_structures,
        voxel_size=tuple(float(v) for v in vox),  # type: ignore[arg-type]
        axcodes=axcodes,
    )


"""Simulate a BIDS dataset of synthetic T1w heads whose grey matter is known exactly.

Why: the app must be tested and trained without downloadable labelled MRI. Each synthetic subject
is the real template head of :mod:`bids_app.synth.anatomy` changed in ways whose effect on grey
matter is known, so the preprocessing backends can be scored against the truth and the training
code has labels that are really in the images.

Generative model of one subject (template mm ``y`` -> subject mm ``x``)::

    x = M (y + u(y))         M: head size (by sex), tilt, position;  u: smooth random warp
                             plus a radial expansion around the lateral ventricles (disease, age)
    GM_s(y) = clip(GM(y) * thickness(y) * (1 - loss(y)))
    loss(y) = global_gm_loss + (mtl_gm_loss + mtl_age_loss) * w_MTL(y)
    T1(x)   = [mu_gm GM_s + mu_wm WM + mu_csf CSF_s + head](y(x)) * bias(x) (+ Rician noise)

so the truth of what a perfect VBM pipeline returns is known in closed form:

* GMD on the SPM grid (``wc1``) = ``GM_s(y)``;
* GMV (``mwc1``) = ``GM_s(y) * det(M) * det(I + du/dy)``, whose sum times 1.5^3 mm^3 is the
  subject's native GM volume.

The effects, with their documented sizes (module constants below):

* **age** (years after :data:`AGE_REFERENCE_YEARS` = 50): ``global_gm_loss`` = 0.25 % of the GM per
  year everywhere (:data:`GLOBAL_GM_LOSS_PER_YEAR`), ``mtl_age_loss`` = a further 0.5 % per year times
  the medial-temporal weight ``w_MTL`` (1 at the core of hippocampus, parahippocampal gyrus and
  amygdala: 0.75 % per year there in all; :data:`MTL_GM_LOSS_PER_YEAR`), and the ventricles expand by
  0.002 per year (:data:`VENTRICLE_EXPANSION_PER_YEAR`). Losses are fractions of the template's GM,
  so a 20-year age difference removes 5 % of the GM away from the MTL and 15 % at its core.
* **disease** (severity ``s = clip((30 - MMSE) / 20, 0, 1)``): ``mtl_gm_loss = 0.45 s`` (+ a small
  per-participant deviation) and ventricular expansion ``0.12 s``. MMSE is drawn by diagnosis:
  CN ~ N(29, 1) in 26..30, MCI ~ N(27, 1.5) in 23..30 when stable (sMCI) and N(25.5, 1.5) in 21..28
  when progressive (pMCI), AD ~ N(21, 4) in 10..26; so MCI atrophy lies between CN's and AD's.
* **progression** over sessions ``ses-M00, ses-M12, ...`` (12 months apart, :func:`subject_at`):
  age advances (and with it the age losses); CN and sMCI keep their severity; AD severity grows by
  0.10 per year; pMCI severity grows linearly from its baseline to 0.40 (MMSE 22, AD-like atrophy)
  at its conversion visit (month 12, 24 or 36, drawn per participant), and on at the AD rate after;
  the diagnosis becomes AD from the conversion visit on. ``mci_progression`` (pMCI: converts to AD
  within 36 months; sMCI) is a participant label and does not change.

Site effects (scanner vendor, field strength, voxel size 0.9-1.3 mm, orientation and obliquity of
the voxel grid, bias field, noise, contrast, intensity scale) are drawn per site. Every random
draw comes from ``numpy.random.SeedSequence(seed)`` spawned per site / subject, so one seed gives
the same dataset whatever the number of worker processes.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from .. import RESEARCH_USE_NOTICE, __version__
from .._io import atomic_path, write_json, write_text
from ..derivatives import BIDS_VERSION, SPACE, T1W_MNI_DEFAULT_SPACE, write_map, write_t1w_mni
from ..errors import OutputError, UsageError
from ..grid import MNI1MM_AFFINE, MNI1MM_SHAPE, SPM_AFFINE, SPM_SHAPE, SPM_VOXEL_VOLUME_MM3
from .anatomy import TEMPLATE_NAME, TemplateAnatomy, template_anatomy

__all__ = [
    "AD_SEVERITY_PER_YEAR",
    "AGE_REFERENCE_YEARS",
    "CONVERSION_MONTHS",
    "CONVERSION_SEVERITY",
    "GLOBAL_GM_LOSS_PER_YEAR",
    "MTL_GM_LOSS_PER_YEAR",
    "SESSION_INTERVAL_MONTHS",
    "VENTRICLE_EXPANSION_PER_YEAR",
    "SiteParams",
    "SubjectParams",
    "TRUTH_DIR",
    "draw_sites",
    "draw_subjects",
    "session_months",
    "simulate_dataset",
    "subject_at",
    "truth_paths",
    "truth_t1w_mni_path",
]

_log = logging.getLogger("bids_app.synth")

#: ground truth lives here, relative to the simulated dataset
TRUTH_DIR = Path("derivatives") / "ground-truth"
_GRID_MM = 3.0  # spacing of the deformation grid
_INVERSE_ITERATIONS = 8  # fixed-point steps inverting the warp (residual << 0.1 mm for these warps)
_AXCODES = (("R", "A", "S"), ("L", "A", "S"), ("L", "P", "S"), ("P", "S", "R"), ("R", "P", "I"))
#: age model: GM fractions lost per year after AGE_REFERENCE_YEARS (everywhere; extra in the MTL core)
AGE_REFERENCE_YEARS = 50.0
GLOBAL_GM_LOSS_PER_YEAR = 0.0025
MTL_GM_LOSS_PER_YEAR = 0.005
VENTRICLE_EXPANSION_PER_YEAR = 0.002
#: disease model: MTL GM loss and ventricular expansion per unit of severity
MTL_LOSS_PER_SEVERITY = 0.45
VENTRICLE_EXPANSION_PER_SEVERITY = 0.12
#: progression: AD severity per year; pMCI reaches CONVERSION_SEVERITY at its conversion visit
AD_SEVERITY_PER_YEAR = 0.10
CONVERSION_SEVERITY = 0.40
PMCI_MIN_SEVERITY_PER_YEAR = 0.05
CONVERSION_MONTHS: tuple[int, ...] = (12, 24, 36)
SESSION_INTERVAL_MONTHS = 12
_VENDORS = (("Siemens", "Prisma"), ("GE", "DISCOVERY MR750"), ("Philips", "Ingenia"), ("Siemens", "Avanto"))


@dataclass(frozen=True)
class SiteParams:
    """Acquisition of one site: what differs between scanners and protocols."""

    site: str
    manufacturer: str
    model: str
    field_strength: float
    voxel_size: tuple[float, float, float]
    axcodes: tuple[str, str, str]
    obliquity_deg: tuple[float, float, float]
    bias_amplitude: float
    noise_sd: float  # relative to WM intensity
    gm_contrast: float  # GM intensity relative to WM
    csf_contrast: float
    gain: float
    ad_fraction: float
    repetition_time: float
    inversion_time: float
    echo_time: float
    flip_angle: float


@dataclass(frozen=True)
class SubjectParams:
    """Demographics and the truth of one subject's anatomy."""

    participant_id: str
    site: str
    index: int
    age: float
    sex: str  # "M" / "F"
    diagnosis: str  # "CN" / "MCI" / "AD" (at this visit)
    mmse: int
    severity: float  # 0..1, from MMSE
    head_scale: float
    mtl_gm_loss: float  # fraction of GM lost at the centre of the MTL region
    global_gm_loss: float  # age-related fraction, everywhere
    ventricle_expansion: float  # linear expansion factor - 1 at the ventricles' centre
    warp_mm: float  # SD of the random smooth displacement
    mtl_age_loss: float = 0.0  # age-related fraction removed at the MTL core, on top of global_gm_loss
    mci_progression: str = "n/a"  # "pMCI" / "sMCI" for MCI participants
    conversion_months: int | None = None  # pMCI: the visit (months after baseline) diagnosed AD first
    session_id: str | None = None  # "M00", "M12", ... in a longitudinal cohort; None: no sessions
    months: int = 0  # months since the baseline visit


def _three(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c


def draw_sites(sites: int, seed: int) -> list[SiteParams]:
    """Draw ``sites`` acquisition protocols from ``seed`` (deterministic)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA11]))
    out = []
    for s in range(sites):
        vendor, model = _VENDORS[int(rng.integers(len(_VENDORS)))]
        field = float(rng.choice([1.5, 3.0], p=[0.35, 0.65]))
        inplane = float(np.round(rng.uniform(0.9, 1.2), 3))
        slab = float(np.round(rng.uniform(0.9, 1.3), 3))
        axc = _AXCODES[s % len(_AXCODES)] if s else _AXCODES[0]
        vox = (inplane, inplane, slab)  # the third voxel axis is the slice / partition axis
        out.append(
            SiteParams(
                site=f"S{s + 1:02d}",
                manufacturer=vendor,
                model=model,
                field_strength=field,
                voxel_size=_three(vox),
                axcodes=axc,
                obliquity_deg=_three(np.round(rng.uniform(-6, 6, 3), 2)),
                bias_amplitude=float(rng.uniform(0.05, 0.25 if field > 2 else 0.15)),
                noise_sd=float(rng.uniform(0.015, 0.03) * (1.5 if field < 2 else 1.0)),
                gm_contrast=float(rng.uniform(0.55, 0.68) + (0.04 if field < 2 else 0.0)),
                csf_contrast=float(rng.uniform(0.12, 0.28)),
                gain=float(rng.uniform(0.6, 1.6)),
                ad_fraction=float(rng.uniform(0.3, 0.6)),
                repetition_time=float(round(rng.uniform(1.9, 2.4) if field > 2 else rng.uniform(2.0, 2.8), 3)),
                inversion_time=float(round(rng.uniform(0.85, 1.1), 3)),
                echo_time=float(round(rng.uniform(0.0025, 0.0035), 5)),
                flip_angle=float(rng.choice([8.0, 9.0, 12.0])),
            )
        )
    return out


def _age_losses(age: float) -> tuple[float, float]:
    """(global, MTL-core) GM fractions lost to age: the documented linear model, no threshold."""
    years = max(age - AGE_REFERENCE_YEARS, 0.0)
    return (round(float(np.clip(GLOBAL_GM_LOSS_PER_YEAR * years, 0, 0.3)), 4),
            round(float(np.clip(MTL_GM_LOSS_PER_YEAR * years, 0, 0.3)), 4))


def _ventricle_expansion(severity: float, age: float) -> float:
    return round(float(VENTRICLE_EXPANSION_PER_SEVERITY * severity
                       + VENTRICLE_EXPANSION_PER_YEAR * max(age - AGE_REFERENCE_YEARS, 0.0)), 4)


def draw_subjects(
    participants: int,
    site_list: list[SiteParams],
    seed: int,
    *,
    mci_fraction: float = 0.0,
    pmci_fraction: float = 0.5,
) -> list[SubjectParams]:
    """Draw demographics, diagnosis, MMSE and the anatomy truth of every participant (at baseline).

    Every site gets at least one participant (two when there are enough), the rest are allocated
    with Dirichlet-distributed site sizes, so sites differ in size as real ones do. A share
    ``mci_fraction`` of the participants is MCI, of whom a share ``pmci_fraction`` is progressive
    (pMCI, converting at month 12, 24 or 36); the others are AD with the site's AD fraction, else
    CN. The MCI draws come from a stream of their own, so ``mci_fraction=0`` gives the same cohort
    as a simulator without MCI.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B1]))
    mci_rng = np.random.default_rng(np.random.SeedSequence([seed, 0x3C1]))
    n_sites = len(site_list)
    base = 2 if participants >= 2 * n_sites else 1
    assign = [i for i in range(n_sites) for _ in range(base)][:participants]
    weights = rng.dirichlet(np.full(n_sites, 4.0))
    assign += list(rng.choice(n_sites, size=participants - len(assign), p=weights))
    assign = list(rng.permutation(assign))
    subjects = []
    for i, s in enumerate(assign):
        site = site_list[int(s)]
        is_ad = rng.random() < site.ad_fraction
        sex = "M" if rng.random() < 0.5 else "F"
        u_mci, u_progression, u_conversion = mci_rng.random(3)
        progression, conversion = "n/a", None
        if u_mci < mci_fraction:
            diagnosis = "MCI"
            progression = "pMCI" if u_progression < pmci_fraction else "sMCI"
            age = float(np.clip(rng.normal(73, 7), 55, 92))
            if progression == "pMCI":
                mmse = int(np.clip(np.round(rng.normal(25.5, 1.5)), 21, 28))
                conversion = CONVERSION_MONTHS[min(int(u_conversion * len(CONVERSION_MONTHS)), 2)]
            else:
                mmse = int(np.clip(np.round(rng.normal(27, 1.5)), 23, 30))
        elif is_ad:
            diagnosis = "AD"
            age = float(np.clip(rng.normal(75, 7), 55, 92))
            mmse = int(np.clip(np.round(rng.normal(21, 4)), 10, 26))
        else:
            diagnosis = "CN"
            age = float(np.clip(rng.normal(71, 7), 55, 92))
            mmse = int(np.clip(np.round(rng.normal(29, 1)), 26, 30))
        severity = float(np.clip((30 - mmse) / 20.0, 0.0, 1.0))
        head_scale = float(rng.normal(1.018 if sex == "M" else 0.982, 0.025))
        age = round(age, 1)
        global_loss, mtl_age_loss = _age_losses(age)
        mtl_loss = float(np.clip(MTL_LOSS_PER_SEVERITY * severity + rng.normal(0, 0.02), 0, 0.6))
        subjects.append(
            SubjectParams(
                participant_id=f"sub-{i + 1:03d}",
                site=site.site,
                index=i,
                age=age,
                sex=sex,
                diagnosis=diagnosis,
                mmse=mmse,
                severity=round(severity, 4),
                head_scale=round(head_scale, 4),
                mtl_gm_loss=round(mtl_loss, 4),
                global_gm_loss=global_loss,
                ventricle_expansion=_ventricle_expansion(severity, age),
                warp_mm=round(float(rng.uniform(1.0, 2.0)), 3),
                mtl_age_loss=mtl_age_loss,
                mci_progression=progression,
                conversion_months=conversion,
            )
        )
    return subjects


def session_months(sessions: int) -> list[int]:
    """Months after baseline of ``sessions`` visits: 0, 12, 24, ... (session labels M00, M12, ...)."""
    return [SESSION_INTERVAL_MONTHS * k for k in range(sessions)]


def _severity_at(subj: SubjectParams, years: float) -> float:
    s0 = subj.severity
    if subj.mci_progression == "pMCI" and subj.conversion_months:
        to_conversion = subj.conversion_months / 12.0
        rate = max((CONVERSION_SEVERITY - s0) / to_conversion, PMCI_MIN_SEVERITY_PER_YEAR)
        after = max(years - to_conversion, 0.0)  # after conversion: at the AD rate
        return min(s0 + rate * (years - after) + AD_SEVERITY_PER_YEAR * after, 1.0)
    if subj.diagnosis == "AD":
        return min(s0 + AD_SEVERITY_PER_YEAR * years, 1.0)
    return s0  # CN and sMCI: no disease progression


def subject_at(subj: SubjectParams, months: int) -> SubjectParams:
    """The baseline participant ``subj`` at the visit ``months`` later (the truth of that session).

    The same person (anatomy, head, site, random warp): only age, severity (and with it MMSE, MTL
    loss, ventricles) and, for pMCI from the conversion visit on, the diagnosis change.
    """
    if subj.months:
        raise ValueError("subject_at takes the baseline visit")
    years = months / 12.0
    age = round(subj.age + years, 1)
    severity = _severity_at(subj, years)
    changed = severity != subj.severity
    mmse = int(np.clip(np.round(30 - 20 * severity), 0, 30)) if changed else subj.mmse
    mtl_loss = float(np.clip(subj.mtl_gm_loss + MTL_LOSS_PER_SEVERITY * (severity - subj.severity), 0, 0.6))
    converted = subj.conversion_months is not None and months >= subj.conversion_months
    global_loss, mtl_age_loss = _age_losses(age)
    return replace(
        subj,
        age=age,
        diagnosis="AD" if converted else subj.diagnosis,
        mmse=mmse,
        severity=round(severity, 4),
        mtl_gm_loss=round(mtl_loss, 4),
        global_gm_loss=global_loss,
        mtl_age_loss=mtl_age_loss,
        ventricle_expansion=_ventricle_expansion(severity, age),
        session_id=f"M{months:02d}",
        months=months,
    )


# ---------------------------------------------------------------------------------------------
# geometry helpers


def _rotation(deg: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(np.asarray(deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _axcodes_matrix(axcodes: tuple[str, str, str]) -> np.ndarray:
    """3x3 matrix whose column i is the world direction of voxel axis i."""
    m = np.zeros((3, 3))
    for i, code in enumerate(axcodes):
        axis = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}[code]
        m[axis, i] = 1.0 if code in "RAS" else -1.0
    return m


def _to_vox(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Voxel coordinates (float32) in the grid of ``affine`` of mm ``points`` (3, N)."""
    inv = np.linalg.inv(affine).astype(np.float32)
    out = inv[:3, :3] @ points
    out += inv[:3, 3:4]
    return out


def _interp(volume: np.ndarray, coords: np.ndarray, cval: float = 0.0) -> np.ndarray:
    return ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=cval, prefilter=False)


def _sample(volume: np.ndarray, affine: np.ndarray, points: np.ndarray, cval: float = 0.0) -> np.ndarray:
    """Trilinear value of ``volume`` (voxel->mm ``affine``) at mm ``points`` (3, N)."""
    return _interp(volume, _to_vox(affine, points), cval)


def _grid_points(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    return (affine[:3, :3].astype(np.float32) @ idx + affine[:3, 3:4].astype(np.float32)).astype(np.float32)


@dataclass
class _Warp:
    """Displacement ``u`` (template mm) on a 3 mm grid, its inverse and its Jacobian determinant."""

    affine: np.ndarray
    u: np.ndarray  # (3, X, Y, Z)
    v: np.ndarray  # inverse displacement, same grid, in "z = M^-1 x" coordinates
    jac: np.ndarray  # det(I + du/dy)


def _make_warp(tmpl: TemplateAnatomy, subj: SubjectParams, rng: np.random.Generator) -> _Warp:
    shape_mm = np.array(tmpl.gm.shape) * np.abs(np.diag(tmpl.affine)[:3])
    origin = tmpl.affine[:3, 3] - 10.0
    shape = tuple(int(np.ceil((s + 20.0) / _GRID_MM)) + 1 for s in shape_mm)
    affine = np.eye(4)
    affine[:3, :3] *= _GRID_MM
    affine[:3, 3] = origin
    pts = _grid_points(shape, affine).reshape(3, *shape)

    sigma = 20.0 / _GRID_MM  # smooth enough that local volume changes stay realistic (det J SD ~0.1)
    u = np.empty((3, *shape), dtype=np.float32)
    for k in range(3):
        field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
        u[k] = field / max(float(field.std()), 1e-6) * subj.warp_mm
    # Ventricular enlargement: radial displacement around the ventricles' centre, anisotropic
    # Gaussian envelope (ventricles are long in y). Jacobian ~ (1 + a)^3 at the centre.
    c = tmpl.ventricle_centre.astype(np.float32)
    d = pts - c[:, None, None, None]
    env = np.exp(-0.5 * ((d[0] / 16.0) ** 2 + (d[1] / 28.0) ** 2 + (d[2] / 16.0) ** 2))
    u += subj.ventricle_expansion * d * env[None]

    grads = [np.gradient(u[k], _GRID_MM) for k in range(3)]
    j = np.empty((3, 3, *shape), dtype=np.float32)
    for a in range(3):
        for b in range(3):
            j[a, b] = grads[a][b] + (1.0 if a == b else 0.0)
    jac = np.linalg.det(np.moveaxis(j, (0, 1), (-2, -1))).astype(np.float32)
    if float(jac.min()) <= 0.1:
        raise RuntimeError(f"simulated warp of {subj.participant_id} folds (min Jacobian {jac.min():.2f})")

    # Inverse by fixed point: y + u(y) = z  <=>  v(z) = -u(z + v(z)).
    v = np.zeros_like(u)
    flat_pts = pts.reshape(3, -1)
    for _ in range(_INVERSE_ITERATIONS):
        q = _to_vox(affine, flat_pts + v.reshape(3, -1))
        v = np.stack([-_interp(u[k], q) for k in range(3)]).reshape(u.shape)
    return _Warp(affine=affine, u=u, v=v, jac=jac)


def _placement(subj: SubjectParams, rng: np.random.Generator) -> np.ndarray:
    """M: template mm -> subject mm (head size, tilt, position in the scanner)."""
    scale = subj.head_scale * (1.0 + rng.normal(0, 0.015, 3))
    m = np.eye(4)
    m[:3, :3] = _rotation(rng.uniform(-8, 8, 3)) @ np.diag(scale)
    m[:3, 3] = rng.normal(0, 6, 3) + np.array([0.0, 15.0, 10.0])
    return m


def _native_grid(tmpl: TemplateAnatomy, site: SiteParams, m: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
    """Voxel grid of the acquisition: site orientation, obliquity and voxel size, head in view."""
    mask_idx = np.argwhere(tmpl.head_mask)
    lo, hi = mask_idx.min(0), mask_idx.max(0)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float).T
    world = tmpl.affine[:3, :3] @ corners + tmpl.affine[:3, 3:4]
    subj = m[:3, :3] @ world + m[:3, 3:4]
    direction = _rotation(site.obliquity_deg) @ _axcodes_matrix(site.axcodes)
    vox = np.diag(site.voxel_size)
    a3 = direction @ vox
    in_grid = np.linalg.inv(a3) @ subj
    lo_g = in_grid.min(1) - 4.0 / np.array(site.voxel_size)
    hi_g = in_grid.max(1) + 4.0 / np.array(site.voxel_size)
    shape = tuple(int(np.ceil(hi - lo)) for lo, hi in zip(lo_g, hi_g))
    affine = np.eye(4)
    affine[:3, :3] = a3
    affine[:3, 3] = a3 @ np.floor(lo_g)
    return shape, affine  # type: ignore[return-value]


def _bias(shape: tuple[int, ...], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field: exp of a random quadratic polynomial over the field of view."""
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = [x, y, z, x * y, x * z, y * z, x * x - 0.33, y * y - 0.33, z * z - 0.33]
    coef = rng.normal(0, 1, len(terms))
    coef *= amplitude / np.sqrt(np.sum(coef**2) / 3.0)
    log_field = sum(c * t for c, t in zip(coef, terms))
    return np.exp(np.broadcast_to(log_field, shape)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# one subject


def _unit(participant_id: str, session_id: str | None) -> tuple[Path, str]:
    """(folder relative to a dataset root, file name prefix) of one participant / session."""
    if session_id is None:
        return Path(participant_id), participant_id
    return Path(participant_id) / f"ses-{session_id}", f"{participant_id}_ses-{session_id}"


def truth_paths(out: Path, participant_id: str, session_id: str | None = None) -> dict[str, Path]:
    """Where the ground truth of ``participant_id`` (at session ``session_id``, e.g. ``"M12"``) lives."""
    folder, p = _unit(participant_id, session_id)
    d = Path(out) / TRUTH_DIR / folder / "anat"
    return {
        "gm_native": d / f"{p}_label-GM_probseg.nii.gz",
        "gmd": d / f"{p}_space-{SPACE}_label-GM_probseg.nii.gz",
        "gmv": d / f"{p}_space-{SPACE}_label-GM_desc-modulated_probseg.nii.gz",
        "atrophy_mask": d / f"{p}_space-{SPACE}_desc-atrophy_mask.nii.gz",
        "warp": d / f"{p}_from-{TEMPLATE_NAME}_to-T1w_mode-points_xfm.nii.gz",
    }


def truth_t1w_mni_path(out: Path, participant_id: str, session_id: str | None = None) -> Path:
    """Where ``simulate --t1w-mni`` writes the true T1w in MNI space (beside the GM maps, as the app names it)."""
    folder, p = _unit(participant_id, session_id)
    return Path(out) / TRUTH_DIR / folder / "anat" / f"{p}_space-{T1W_MNI_DEFAULT_SPACE}_res-1_desc-preproc_T1w.nii.gz"


def _save_nifti(path: Path, img: nib.Nifti1Image) -> None:
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)


def _simulate_subject(
    out: Path, site: SiteParams, subj: SubjectParams, seed: int, maps_only: bool = False, t1w_mni: bool = False
) -> dict[str, Any]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B7, subj.index]))
    tmpl = template_anatomy()
    warp = _make_warp(tmpl, subj, rng)
    m = _placement(subj, rng)

    # Subject's own tissue maps in template space.
    shape_t = tmpl.gm.shape
    thick_coarse = ndimage.gaussian_filter(rng.standard_normal(warp.jac.shape).astype(np.float32), 8.0 / _GRID_MM)
    thick_coarse = 1.0 + 0.08 * thick_coarse / max(float(thick_coarse.std()), 1e-6)
    thickness = _sample(thick_coarse, warp.affine, _grid_points(shape_t, tmpl.affine), cval=1.0).reshape(shape_t)
    loss = np.clip((subj.mtl_gm_loss + subj.mtl_age_loss) * tmpl.mtl_weight + subj.global_gm_loss, 0, 0.9)
    gm_s = np.minimum(tmpl.gm * thickness * (1.0 - loss), tmpl.gm + tmpl.csf).astype(np.float32)
    csf_s = (tmpl.csf + tmpl.gm - gm_s).astype(np.float32)
    t1_t = (site.gm_contrast * gm_s + tmpl.wm + site.csf_contrast * csf_s + tmpl.head).astype(np.float32)

    # Truth on the SPM grid: GMD = GM_s(y); GMV = GMD * det(M) * det(I + du/dy).
    spm_pts = _grid_points(SPM_SHAPE, SPM_AFFINE)
    gmd = _sample(gm_s, tmpl.affine, spm_pts).reshape(SPM_SHAPE)
    jac = _sample(warp.jac, warp.affine, spm_pts, cval=1.0).reshape(SPM_SHAPE)
    gmv = (gmd * jac * abs(np.linalg.det(m[:3, :3]))).astype(np.float32)
    mtl = _sample(tmpl.mtl_weight, tmpl.affine, spm_pts).reshape(SPM_SHAPE)

    if subj.session_id is not None:
        # a later visit of the same person: same anatomy, a new placement in the scanner, new noise
        acq_rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B7, subj.index, 1 + subj.months]))
        reposition = np.eye(4)
        reposition[:3, :3] = _rotation(acq_rng.uniform(-4, 4, 3))
        reposition[:3, 3] = acq_rng.normal(0, 3, 3)
        m = reposition @ m
        rng = acq_rng
    pid = subj.participant_id
    folder, prefix = _unit(pid, subj.session_id)
    paths = truth_paths(out, pid, subj.session_id)
    common = {
        "Sources": [f"bids:raw:{folder.as_posix()}/anat/{prefix}_T1w.nii.gz"],
        "Template": TEMPLATE_NAME,
        "Note": (
            "Ground truth of a synthetic subject: the template's GM after this subject's atrophy, "
            f"resampled from {TEMPLATE_NAME} (1 mm) onto the SPM 1.5 mm IXI549Space grid. "
            "Named like the app's outputs so the derivatives backend and train can read it."
        ),
    }
    write_map(paths["gmd"], gmd, {**common, "Description": "True GM density (unmodulated, wc1-like)."})
    write_map(
        paths["gmv"],
        gmv,
        {
            **common,
            "Description": "True GM volume (modulated, mwc1-like): GMD times the Jacobian determinant "
            "of the template-to-subject map, so sum * 3.375 mm^3 = native GM volume.",
        },
    )
    mimg = nib.Nifti1Image((mtl >= 0.5).astype(np.uint8), SPM_AFFINE)
    mimg.header.set_sform(SPM_AFFINE, code=4)
    mimg.header.set_qform(SPM_AFFINE, code=4)
    _save_nifti(paths["atrophy_mask"], mimg)
    write_json(
        paths["atrophy_mask"].with_name(paths["atrophy_mask"].name.replace(".nii.gz", ".json")),
        {
            "Description": "Medial-temporal atrophy region (weight >= 0.5); GM was multiplied by "
            "1 - GlobalGMLoss - (MTLGMLoss + MTLAgeLoss) * weight (weight 1 at the region's core, 0 outside).",
            "MTLGMLoss": subj.mtl_gm_loss,
            "MTLAgeLoss": subj.mtl_age_loss,
            "GlobalGMLoss": subj.global_gm_loss,
            "Source": tmpl.sources["MTL"],
        },
    )
    wimg = nib.Nifti1Image(np.moveaxis(warp.u, 0, -1)[:, :, :, None, :], warp.affine)
    wimg.header.set_intent("vector")
    _save_nifti(paths["warp"], wimg)
    write_json(
        paths["warp"].with_name(paths["warp"].name.replace(".nii.gz", ".json")),
        {
            "Description": "Template-to-subject map: x_subject_mm = M @ (y + u(y)), u (mm) stored here on a "
            "3 mm grid over the template; M below (4x4, mm).",
            "M": m.tolist(),
            "VentricleCentre": tmpl.ventricle_centre.tolist(),
            "VentricleExpansion": subj.ventricle_expansion,
        },
    )
    if t1w_mni:
        brain_t = (site.gm_contrast * gm_s + tmpl.wm + site.csf_contrast * csf_s).astype(np.float32)
        brain_t[(tmpl.gm + tmpl.wm + tmpl.csf) < 0.5] = 0.0  # skull-stripped: 0 outside the template's tissue
        write_t1w_mni(truth_t1w_mni_path(out, pid, subj.session_id), _affine_registered_t1w(brain_t, tmpl, warp), {
            **common,
            "Description": "True T1w in MNI152 space at 1 mm, affinely registered (the subject's head size, tilt "
            "and position undone, its own smooth shape kept), skull-stripped (brain tissue only, 0 outside), "
            "without bias field or noise: the site's GM / CSF contrast relative to WM = 1. What input kind "
            "t1w_mni1mm (SFCN) reads.",
            "SpatialReference": T1W_MNI_DEFAULT_SPACE,
            "SkullStripped": True,
        })
    if maps_only:
        native_gm_ml, native_shape = math.nan, "n/a"
    else:
        native_gm_ml, native_shape = _write_native(out, site, subj, tmpl, warp, m, t1_t, gm_s, rng)
    return {
        "participant_id": pid,
        "session_id": subj.session_id,
        "native_gm_volume_ml": round(native_gm_ml, 3),
        "truth_gmv_total_ml": round(float(gmv.sum() * SPM_VOXEL_VOLUME_MM3 / 1000.0), 3),
        "truth_mtl_gmv_ml": round(float(gmv[mtl >= 0.5].sum() * SPM_VOXEL_VOLUME_MM3 / 1000.0), 3),
        "native_shape": native_shape,
    }


def _affine_registered_t1w(brain_t: np.ndarray, tmpl: TemplateAnatomy, warp: _Warp) -> np.ndarray:
    """The subject's brain T1 as an affine registration to MNI shows it, on the 1 mm MNI grid.

    The subject is ``x = M (y + u(y))``; undoing the affine ``M`` leaves ``z = y + u(y)``, so the
    image at MNI point ``z`` is the template-space tissue at ``y = z + v(z)`` (``v`` the inverse of ``u``).
    """
    z = _grid_points(MNI1MM_SHAPE, MNI1MM_AFFINE)
    zc = _to_vox(warp.affine, z)
    for k in range(3):
        z[k] += _interp(warp.v[k], zc)
    del zc
    return _interp(brain_t, _to_vox(tmpl.affine, z)).reshape(MNI1MM_SHAPE).astype(np.float32)


def _write_native(out: Path, site: SiteParams, subj: SubjectParams, tmpl: TemplateAnatomy, warp: _Warp, m: np.ndarray,
                  t1_t: np.ndarray, gm_s: np.ndarray, rng: np.random.Generator) -> tuple[float, str]:
    """Acquire the T1w (and the true native GM map) on the site's voxel grid; return (GM mL, shape)."""
    # Native acquisition: for each voxel x, y = z + v(z) with z = M^-1 x.
    shape_n, aff_n = _native_grid(tmpl, site, m)
    x = _grid_points(shape_n, aff_n)
    m_inv = np.linalg.inv(m).astype(np.float32)
    z = m_inv[:3, :3] @ x
    z += m_inv[:3, 3:4]
    del x
    zc = _to_vox(warp.affine, z)
    for k in range(3):
        z[k] += _interp(warp.v[k], zc)
    del zc
    yc = _to_vox(tmpl.affine, z)
    del z
    t1 = _interp(t1_t, yc).reshape(shape_n)
    gm_native = _interp(gm_s, yc).reshape(shape_n)
    del yc
    t1 *= _bias(shape_n, site.bias_amplitude, rng)
    sd = site.noise_sd
    real = t1 + rng.normal(0, sd, shape_n).astype(np.float32)
    imag = rng.normal(0, sd, shape_n).astype(np.float32)
    t1 = np.sqrt(real**2 + imag**2)
    t1 = np.clip(np.round(t1 * 1000.0 * site.gain), 0, 32767).astype(np.int16)

    pid = subj.participant_id
    folder, prefix = _unit(pid, subj.session_id)
    anat = out / folder / "anat"
    img = nib.Nifti1Image(t1, aff_n)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(aff_n, code=1)
    img.header.set_sform(aff_n, code=1)
    _save_nifti(anat / f"{prefix}_T1w.nii.gz", img)
    write_json(
        anat / f"{prefix}_T1w.json",
        {
            "Manufacturer": site.manufacturer,
            "ManufacturersModelName": site.model,
            "MagneticFieldStrength": site.field_strength,
            "InstitutionName": f"Synthetic site {site.site}",
            "RepetitionTime": site.repetition_time,
            "InversionTime": site.inversion_time,
            "EchoTime": site.echo_time,
            "FlipAngle": site.flip_angle,
        },
    )

    paths = truth_paths(out, pid, subj.session_id)
    gimg = nib.Nifti1Image(np.round(gm_native * 1000).astype(np.int16), aff_n)
    gimg.header.set_slope_inter(1e-3, 0.0)
    gimg.header.set_xyzt_units("mm")
    _save_nifti(paths["gm_native"], gimg)
    write_json(
        paths["gm_native"].with_name(paths["gm_native"].name.replace(".nii.gz", ".json")),
        {"Description": "True GM probability on the T1w's own voxel grid (what the T1w was made from)."},
    )
    native_gm_ml = float(gm_native.sum() * abs(np.linalg.det(aff_n[:3, :3])) / 1000.0)
    return native_gm_ml, "x".join(map(str, shape_n))


# ---------------------------------------------------------------------------------------------
# the dataset

_DIAGNOSIS_LEVELS = {
    "CN": "cognitively normal",
    "MCI": "mild cognitive impairment (simulated atrophy between CN and AD)",
    "AD": "Alzheimer's disease (simulated atrophy)",
}
_MCI_PROGRESSION = {
    "Description": "Course of an MCI participant: pMCI converts to AD within 36 months (at the visit in "
    "derivatives/ground-truth participants.tsv conversion_months), sMCI stays MCI; n/a for CN and AD.",
    "Levels": {"pMCI": "progressive MCI (converts to AD within 36 months)", "sMCI": "stable MCI"},
}


def _participants_json(longitudinal: bool) -> dict[str, dict[str, Any]]:
    when = "at the first session (ses-M00); per session in sub-*/sub-*_sessions.tsv" if longitudinal else "at scan"
    return {
        "participant_id": {"Description": "Participant label."},
        "age": {"Description": f"Age {when}.", "Units": "year"},
        "sex": {"Description": "Biological sex.", "Levels": {"M": "male", "F": "female"}},
        "diagnosis": {"Description": f"Simulated diagnosis {when}.", "Levels": _DIAGNOSIS_LEVELS},
        "mmse": {"Description": f"Simulated Mini-Mental State Examination score (0-30) {when}; sets atrophy "
                 "severity."},
        "mci_progression": _MCI_PROGRESSION,
        "site": {"Description": "Simulated acquisition site (scanner and protocol)."},
    }


_SESSIONS_JSON = {
    "session_id": {"Description": "Visit label: ses-M<months after the baseline visit>."},
    "age": {"Description": "Age at this session.", "Units": "year"},
    "diagnosis": {"Description": "Simulated diagnosis at this session (pMCI becomes AD at conversion).",
                  "Levels": _DIAGNOSIS_LEVELS},
    "mmse": {"Description": "Simulated Mini-Mental State Examination score (0-30) at this session."},
}

_TRUTH_COLUMNS = {
    "participant_id": {"Description": "Participant label."},
    "session_id": {"Description": "Visit label (ses-M<months>); n/a in a cohort without sessions."},
    "site": {"Description": "Simulated site."},
    "severity": {"Description": "Atrophy severity 0..1 = clip((30 - MMSE) / 20)."},
    "head_scale": {"Description": "Linear head scale relative to the template (sex-dependent)."},
    "mtl_gm_loss": {"Description": "Disease-related fraction of GM removed at the core of the medial temporal "
                    "region (0.45 x severity + a per-participant deviation)."},
    "mtl_age_loss": {"Description": "Age-related fraction of GM removed at the core of the medial temporal region, "
                     "on top of global_gm_loss: 0.005 per year after age 50."},
    "global_gm_loss": {"Description": "Age-related fraction of GM removed everywhere: 0.0025 per year after age 50."},
    "ventricle_expansion": {"Description": "Radial expansion factor - 1 at the lateral ventricles' centre "
                            "(0.12 x severity + 0.002 per year after age 50)."},
    "warp_mm": {"Description": "SD of the random smooth displacement.", "Units": "mm"},
    "conversion_months": {"Description": "pMCI: months after baseline of the first visit diagnosed AD; n/a otherwise.",
                          "Units": "month"},
    "months": {"Description": "Months after the baseline visit.", "Units": "month"},
    "age": {"Description": "Age at this session.", "Units": "year"},
    "diagnosis": {"Description": "Simulated diagnosis at this session.", "Levels": _DIAGNOSIS_LEVELS},
    "mmse": {"Description": "Simulated MMSE at this session."},
    "native_gm_volume_ml": {"Description": "True native GM volume (n/a with --maps-only).", "Units": "mL"},
    "truth_gmv_total_ml": {"Description": "Sum of the true GMV map times the voxel volume.", "Units": "mL"},
    "truth_mtl_gmv_ml": {"Description": "True GMV inside the atrophy mask.", "Units": "mL"},
    "truth_gmv_total_change_pct": {"Description": "True change of the whole-brain GMV since the first session.",
                                   "Units": "%"},
    "truth_mtl_gmv_change_pct": {"Description": "True change of the GMV inside the atrophy mask (medial temporal "
                                 "lobe) since the first session.", "Units": "%"},
    "native_shape": {"Description": "Voxel grid of the T1w."},
}
_TRUTH_PARTICIPANT_COLUMNS = ("participant_id", "site", "severity", "head_scale", "mtl_gm_loss", "mtl_age_loss",
                              "global_gm_loss", "ventricle_expansion", "warp_mm", "conversion_months")
_TRUTH_SESSION_COLUMNS = ("session_id", "months", "age", "diagnosis", "mmse", "severity", "mtl_gm_loss",
                          "mtl_age_loss", "global_gm_loss", "ventricle_expansion")
_RESULT_COLUMNS = ("native_gm_volume_ml", "truth_gmv_total_ml", "truth_mtl_gmv_ml", "native_shape")

#: the README's account of the simulated effects (their sizes are the module constants)
_MODEL_TEXT = (
    "Simulated effects on grey matter (GM), as fractions of the template's GM: age removes "
    f"{100 * GLOBAL_GM_LOSS_PER_YEAR:.2f}% per year after age {AGE_REFERENCE_YEARS:.0f} everywhere and a further "
    f"{100 * MTL_GM_LOSS_PER_YEAR:.2f}% per year in the medial temporal lobe (MTL) core; disease removes "
    f"{MTL_LOSS_PER_SEVERITY:.2f} x severity in the MTL core (severity = (30 - MMSE) / 20; MMSE drawn by diagnosis, "
    "MCI between CN and AD) and enlarges the ventricles.\n"
)


def _write_tsv(path: Path, table: pd.DataFrame, sidecar: dict[str, Any]) -> None:
    with atomic_path(path, suffix=".tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    write_json(path.with_suffix(".json"), {c: sidecar[c] for c in table.columns})


def _with_changes(rows: pd.DataFrame) -> pd.DataFrame:
    """Add the true GMV change (%) since the participant's first session, whole brain and MTL."""
    first = rows.iloc[0]
    rows = rows.copy()
    rows["truth_gmv_total_change_pct"] = (100 * (rows["truth_gmv_total_ml"] / first["truth_gmv_total_ml"] - 1)).round(3)
    rows["truth_mtl_gmv_change_pct"] = (100 * (rows["truth_mtl_gmv_ml"] / first["truth_mtl_gmv_ml"] - 1)).round(3)
    return rows


def simulate_dataset(
    out: Path,
    *,
    participants: int,
    sites: int,
    seed: int,
    nprocs: int = 1,
    progress: bool = False,
    maps_only: bool = False,
    mci_fraction: float = 0.0,
    pmci_fraction: float = 0.5,
    sessions: int | None = None,
    t1w_mni: bool = False,
) -> Path:
    """Write a synthetic BIDS dataset with ground truth to ``out`` and return ``out``.

    Parameters
    ----------
    out : the dataset root; created, and must be empty if it exists.
    participants : number of participants (>= 1), each with one T1w per session.
    sites : number of sites (1 <= sites <= participants).
    seed : every random draw derives from it: same seed, same dataset.
    nprocs : worker processes (results do not depend on it).
    progress : show a progress bar.
    maps_only : write only the ground truth and the participants table, no T1w (several times
        faster; for training on the true SPM-grid maps). The truth is identical to a full run's.
    mci_fraction : share of MCI participants (0..1; 0: CN and AD only, as without this option).
    pmci_fraction : share of the MCI participants that are progressive (pMCI).
    sessions : None for a cross-sectional dataset without session folders; else the number of
        visits, ``ses-M00``, ``ses-M12``, ... (12 months apart) per participant, with
        ``sub-*/sub-*_sessions.tsv`` (age, diagnosis, MMSE per session).
    t1w_mni : also write the true T1w affinely registered to MNI152 at 1 mm, skull-stripped
        (``*_space-MNI152NLin2009aSym_res-1_desc-preproc_T1w.nii.gz`` beside the GM maps: the input of
        the SFCN family); off by default (about 30 MB a visit uncompressed, seconds to make).
    """
    if participants < 1:
        raise UsageError(f"the number of participants (--n-participants) must be >= 1, got {participants}")
    if not 1 <= sites <= participants:
        raise UsageError(f"--sites must be between 1 and the number of participants ({participants}), got {sites}")
    for name, value in (("--mci-fraction", mci_fraction), ("--pmci-fraction", pmci_fraction)):
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"{name} must be between 0 and 1, got {value}")
    if sessions is not None and sessions < 1:
        raise UsageError(f"--sessions must be >= 1, got {sessions}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise OutputError(f"{out} exists and is not empty; simulate writes a new dataset")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror}") from exc

    site_list = draw_sites(sites, seed)
    subjects = draw_subjects(participants, site_list, seed, mci_fraction=mci_fraction, pmci_fraction=pmci_fraction)
    by_site = {s.site: s for s in site_list}
    tmpl = template_anatomy()  # built before forking so workers share it
    visits = {s.participant_id: [s] if sessions is None else [subject_at(s, m) for m in session_months(sessions)]
              for s in subjects}

    jobs = [(out, by_site[s.site], v, seed, maps_only, t1w_mni) for s in subjects for v in visits[s.participant_id]]
    if nprocs > 1:
        with ProcessPoolExecutor(max_workers=nprocs) as pool:
            futures = [pool.submit(_simulate_subject, *j) for j in jobs]
            results = [f.result() for f in _progress(futures, progress, total=len(jobs), as_futures=True)]
    else:
        results = [_simulate_subject(*j) for j in _progress(jobs, progress, total=len(jobs))]

    write_json(
        out / "dataset_description.json",
        {
            "Name": f"vbm-predict synthetic cohort (seed {seed})",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["vbm-predict simulate"],
            "GeneratedBy": [{"Name": "vbm-predict simulate", "Version": __version__}],
        },
    )
    options = f"participants={participants}, sites={sites}, seed={seed}"
    if mci_fraction:
        options += f", mci_fraction={mci_fraction}, pmci_fraction={pmci_fraction}"
    if sessions is not None:
        options += f", sessions={sessions}"
    write_text(
        out / "README",
        f"Synthetic T1w dataset made by `vbm-predict simulate` ({options}).\n"
        "Heads are built from real template anatomy (nilearn MNI152 2009 tissue maps; "
        f"non-brain: {tmpl.sources['Head']}) with random deformations, sex-dependent head size, "
        "age-related GM loss, MMSE-graded medial temporal atrophy and ventricular enlargement, and per-site "
        "scanner effects.\n"
        + _MODEL_TEXT
        + ("Sessions ses-M00, ses-M12, ... are visits 12 months apart: age advances, pMCI atrophy progresses "
           "towards AD (diagnosis AD from the conversion visit on), sMCI and CN only age.\n"
           if sessions is not None else "")
        + "Ground truth: derivatives/ground-truth/. "
        + ("Maps only: no T1w images were written (training data for the true maps). " if maps_only else "")
        + ("The truth includes each visit's T1w affinely registered to MNI152 at 1 mm, skull-stripped, without "
           "bias or noise (space-MNI152NLin2009aSym_res-1_desc-preproc_T1w). " if t1w_mni else "")
        + "No real person's data; "
        + RESEARCH_USE_NOTICE
        + "\n",
    )
    table = pd.DataFrame(
        [
            {"participant_id": s.participant_id, "age": s.age, "sex": s.sex, "diagnosis": s.diagnosis,
             "mmse": s.mmse, "mci_progression": s.mci_progression, "site": s.site}
            for s in subjects
        ]
    )
    with atomic_path(out / "participants.tsv", suffix=".tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    write_json(out / "participants.json", _participants_json(sessions is not None))

    truth = out / TRUTH_DIR
    write_json(
        truth / "dataset_description.json",
        {
            "Name": "Ground truth of the synthetic cohort",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": [
                {"Name": "vbm-predict simulate", "Version": __version__,
                 "Description": f"seed={seed}; anatomy: " + "; ".join(f"{k}: {v}" for k, v in tmpl.sources.items())}
            ],
            "DatasetLinks": {"raw": "../../"},
            "SourceDatasets": [{"URL": "bids:raw:"}],
        },
    )
    res_by = {(r["participant_id"], r["session_id"]): r for r in results}
    rows = []
    for s in subjects:
        d = asdict(s)
        per_visit = pd.DataFrame(
            [{k: asdict(v)[k] for k in _TRUTH_SESSION_COLUMNS}
             | {k: res_by[(v.participant_id, v.session_id)][k] for k in _RESULT_COLUMNS}
             for v in visits[s.participant_id]]
        )
        per_visit = _with_changes(per_visit)
        if sessions is not None:
            pid = s.participant_id
            per_visit["session_id"] = "ses-" + per_visit["session_id"]
            _write_tsv(out / pid / f"{pid}_sessions.tsv", per_visit[["session_id", "age", "diagnosis", "mmse"]],
                       _SESSIONS_JSON)
            truth_visits = per_visit[[*_TRUTH_SESSION_COLUMNS, *_RESULT_COLUMNS[:3], "truth_gmv_total_change_pct",
                                      "truth_mtl_gmv_change_pct", "native_shape"]]
            _write_tsv(truth / pid / f"{pid}_sessions.tsv", truth_visits, _TRUTH_COLUMNS)
        rows.append({k: d[k] for k in _TRUTH_PARTICIPANT_COLUMNS}
                    | {k: per_visit.iloc[0][k] for k in _RESULT_COLUMNS})
    truth_table = pd.DataFrame(rows)
    truth_table["conversion_months"] = truth_table["conversion_months"].astype("Int64")
    with atomic_path(truth / "participants.tsv", suffix=".tsv") as tmp:
        truth_table.to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    write_json(truth / "participants.json", {c: _TRUTH_COLUMNS[c] for c in truth_table.columns})
    write_json(truth / "sites.json", {s.site: asdict(s) for s in site_list})
    write_text(truth / ".bidsignore", "sites.json\n*_xfm.*\n")
    _log.info("simulated %d participants at %d sites (%d images) in %s", participants, sites, len(jobs), out)
    return out


def _progress(items: list, enabled: bool, total: int, as_futures: bool = False):
    if as_futures:
        from concurrent.futures import as_completed

        if enabled:
            from tqdm import tqdm

            for _ in tqdm(as_completed(items), total=total, desc="simulate", unit="subject"):
                pass
        return items
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc="simulate", unit="subject")

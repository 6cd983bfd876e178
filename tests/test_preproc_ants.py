"""ANTs backend: unit tests of its parts, and real end-to-end runs (slow) on phantoms with known truth
and on the real Colin27 head."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bids_app.grid import MNI1MM_SHAPE, SPM_AFFINE, SPM_SHAPE, SPM_VOXEL_VOLUME_MM3, brain_mask
from bids_app.preproc._templates import RAS_GRID_AFFINE, ras_to_spm, template_on_grid
from bids_app.preproc.ants import AntsBackend, AntsParams, em_segment
from bids_app.qc import compute_qc
from bids_app.types import GMMaps, PreprocBackend, T1wUnit

#: the T1w in MNI space vs the template T1 (brain-masked Pearson r) must exceed these, and beat the same
#: image shifted 6 mm by the margin. Measured: the backend on the control phantom 0.927 (0.518 shifted;
#: 1.6e-8 of its intensity beyond the dilated brain; SFCN input brain mean 1.003). Colin27 only through
#: step 7 with the head affine of step 3 and no skull stripping (a lower bound): 0.650 (0.504 shifted):
#: affine only, a real head keeps its own folding, so its r stays below SyN's 0.84. The Colin27 case of
#: tests/test_fidelity_real.py (seed 0: scanner grid, noise, its own brain mask since session 8): 0.597
#: (0.473 shifted; 2 ITK threads, AMD EPYC, 2026-12-03), so its bound is 0.55, above any shifted figure
T1W_MNI_MIN_R_PHANTOM = 0.85
T1W_MNI_MIN_R_COLIN = 0.55
T1W_MNI_SHIFT_MARGIN = {"phantom": 0.1, "colin27": 0.05}


def test_backend_contract():
    b = AntsBackend(nprocs=2)
    assert isinstance(b, PreprocBackend) and b.name == "ants" and b.available()
    assert "antspyx" in b.version() and "nilearn" in b.version()


def test_params_key_names_the_cache():
    assert AntsParams().key() == AntsParams().key()
    assert AntsParams(syn_iterations=(10, 0, 0)).key() != AntsParams().key()
    assert AntsParams(affine_plausible_ratio=(0.4, 1.6)).key() != AntsParams().key()


def test_ras_grid_is_the_spm_grid_mirrored():
    ijk = np.array([[0, 0, 0, 1], [120, 144, 120, 1], [37, 50, 60, 1]], float).T
    spm_ijk = ijk.copy()
    spm_ijk[0] = SPM_SHAPE[0] - 1 - ijk[0]
    np.testing.assert_allclose(RAS_GRID_AFFINE @ ijk, SPM_AFFINE @ spm_ijk)
    vol = np.zeros(SPM_SHAPE)
    vol[3, 4, 5] = 1
    assert ras_to_spm(vol)[SPM_SHAPE[0] - 1 - 3, 4, 5] == 1


def test_template_on_grid_matches_mask():
    t = template_on_grid()
    assert t["T1"].shape == SPM_SHAPE
    dice = 2 * ((ras_to_spm(t["brain"]) > 0.5) & brain_mask()).sum() / ((t["brain"] > 0.5).sum() + brain_mask().sum())
    assert dice > 0.99
    assert np.all(t["CSF"] >= 0) and np.all(t["GM"] + t["WM"] + t["CSF"] <= 1.0 + 1e-4)


def _tissue_sample(seed: int, n: int, noise: float, prior_low: float, prior_high: float, k: int = 3):
    """``n`` voxels of GM, WM and CSF (intensities 0.65, 0.85, 0.3 with Gaussian ``noise``) and priors
    of ``k`` rows that give each voxel's own tissue ``prior_high`` and every other row ``prior_low``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    x = np.array([0.65, 0.85, 0.3])[labels] + rng.normal(0, noise, n)
    priors = np.full((k, n), prior_low)
    priors[labels, np.arange(n)] = prior_high
    return rng, labels, x, priors


def test_em_segment_recovers_classes():
    _, labels, x, priors = _tissue_sample(0, 30000, 0.05, 0.15, 0.7)
    post = em_segment(x, priors, iterations=15)
    assert post.shape == (3, len(x)) and np.allclose(post.sum(axis=0), 1, atol=1e-5)
    assert (post.argmax(axis=0) == labels).mean() > 0.97


def test_em_segment_lets_the_image_overrule_the_prior():
    """Atrophy: the prior says GM but the intensity is CSF; the posterior must follow the image."""
    rng, labels, x, priors = _tissue_sample(1, 20000, 0.04, 0.05, 0.9)
    atrophic = np.arange(200)
    labels[atrophic] = 2
    x[atrophic] = 0.3 + rng.normal(0, 0.04, 200)
    priors[:, atrophic] = [[0.8], [0.1], [0.1]]  # template says GM
    post = em_segment(x, priors, iterations=15)
    assert post[0, atrophic].mean() < 0.2 and post[2, atrophic].mean() > 0.8


def test_em_segment_nonbrain_class_takes_the_margin_from_gm():
    """The optional fourth class: dura at GM-like intensity in the brain's margin, where the template's
    brain probability is low, goes to non-brain, not GM; inside the brain the tissues are as before."""
    rng, labels, x, priors = _tissue_sample(2, 30000, 0.04, 0.05, 0.85, k=4)
    margin = np.arange(3000)  # dura: broad intensities around GM's, brain probability 0.3
    x[margin] = rng.uniform(0.4, 0.8, margin.size)
    priors[:, margin] = [[0.25], [0.05], [0.0], [0.7]]
    three = em_segment(x, priors[:3], iterations=15)
    four = em_segment(x, priors, iterations=15)
    assert four.shape == (4, len(x)) and np.allclose(four.sum(axis=0), 1, atol=1e-5)
    assert three[0, margin].mean() > 0.5  # without the class the margin reads as GM
    # measured: GM 0.68 -> 0.37 of the margin, non-brain 0.46
    assert four[0, margin].mean() < 0.6 * three[0, margin].mean() and four[3, margin].mean() > 0.35
    inside = np.arange(margin.size, len(x))
    assert (four[:3, inside].argmax(axis=0) == labels[inside]).mean() > 0.97
    with pytest.raises(ValueError, match="3 or 4"):
        em_segment(x, priors[:2])


# ---------------------------------------------------------------------------------------- slow


@pytest.fixture(scope="module")
def phantom_pair(tmp_path_factory):
    """The same phantom subject without and with a 20% hippocampal atrophy, through the backend.

    1.5 mm phantoms keep CI within budget; bench/preproc.py measures the 1 mm case. The control is also
    asked for the T1w in MNI space (one resampling more), the atrophy run is not."""
    from bids_app.synth.phantom import make_phantom

    base = tmp_path_factory.mktemp("ants_pair")
    out = {}
    for name, atrophy in (("control", 0.0), ("atrophy", 0.3)):
        ph = make_phantom(base / f"{name}.nii.gz", atrophy=atrophy, seed=3, voxel_mm=1.5)
        t0 = time.perf_counter()
        backend = AntsBackend(nprocs=2, make_t1w_mni=name == "control")
        maps = backend.run(T1wUnit(ph.path, {"sub": name}), base / f"work-{name}")
        out[name] = (ph, maps, time.perf_counter() - t0, base / f"work-{name}")
    return out


@pytest.mark.slow
def test_phantom_fidelity(phantom_pair):
    ph, maps, wall, _ = phantom_pair["control"]
    assert maps.gmd.shape == SPM_SHAPE and maps.gmd.dtype == np.float32 and maps.gmv.dtype == np.float32
    mask = brain_mask()
    r = np.corrcoef(maps.gmd[mask], ph.true_gmd[mask])[0, 1]
    assert r >= 0.9, r
    gmv_ml = maps.gmv.sum() * SPM_VOXEL_VOLUME_MM3 / 1000
    assert gmv_ml == pytest.approx(ph.true_gm_ml, rel=0.05)
    assert maps.provenance["Backend"] == "ants" and maps.backend == "ants"


@pytest.mark.slow
def test_modulation_preserves_native_gm_volume(phantom_pair):
    """GMV = GMD x |det J|: the GMV total equals the GM volume segmented in native space."""
    for name in ("control", "atrophy"):
        _, maps, _, _ = phantom_pair[name]
        gmv_ml = maps.gmv.sum(dtype=np.float64) * SPM_VOXEL_VOLUME_MM3 / 1000
        assert gmv_ml == pytest.approx(maps.qc["native_gm_volume_ml"], rel=0.03), name


@pytest.mark.slow
def test_hippocampal_atrophy_is_recovered(phantom_pair):
    """A contraction that removes ~20% of the native hippocampal GM shows as >= 10% regional GMV loss."""
    from scipy import ndimage

    ph_c, m_c, _, _ = phantom_pair["control"]
    ph_a, m_a, _, _ = phantom_pair["atrophy"]
    hip = ph_c.hippocampus
    injected = 1 - ph_a.true_hippocampal_gm_ml / ph_c.true_hippocampal_gm_ml
    measured = 1 - m_a.gmv[hip].sum() / m_c.gmv[hip].sum()
    assert 0.15 <= injected <= 0.27, injected
    assert measured >= 0.10, (measured, injected)
    # far from the hippocampi (> 45 mm) the two runs agree: the loss is regional
    far = brain_mask() & (ndimage.distance_transform_edt(~hip) * 1.5 > 45)
    assert abs(1 - m_a.gmv[far].sum() / m_c.gmv[far].sum()) < 0.03


@pytest.mark.slow
def test_qc_passes_good_and_flags_shifted_output(phantom_pair):
    _, maps, _, _ = phantom_pair["control"]
    qc = compute_qc(maps)
    assert qc.passed, (qc.flags, qc.metrics)
    shifted = GMMaps(
        gmd=np.roll(maps.gmd, 8, axis=0), gmv=np.roll(maps.gmv, 8, axis=0), backend="ants", backend_version="x"
    )
    assert "gmv_template_correlation" in compute_qc(shifted).flags


def _template_correlation(t1w_mni: np.ndarray) -> tuple[float, float]:
    """Pearson r of a T1w in MNI space with the MNI152 template T1 inside the template brain, as it
    is and shifted 6 mm forward (a misplaced image would not lose much by the shift)."""
    from bids_app.grid import mni1mm_brain_mask, to_mni1mm
    from bids_app.templates import mni152_t1

    brain, template = mni1mm_brain_mask(), to_mni1mm(mni152_t1())
    r = float(np.corrcoef(t1w_mni[brain], template[brain])[0, 1])
    shifted = float(np.corrcoef(np.roll(t1w_mni, 6, axis=1)[brain], template[brain])[0, 1])
    return r, shifted


@pytest.mark.slow
def test_t1w_in_mni_space_is_skull_stripped_and_placed_by_the_affine(phantom_pair):
    """Step 7 (SFCN's input): made only when asked, on the MNI 1 mm grid, in MNI space, no skull."""
    from scipy import ndimage

    from bids_app.grid import mni1mm_brain_mask
    from bids_app.model_input import make_input

    ph, maps, _, work = phantom_pair["control"]
    assert phantom_pair["atrophy"][1].t1w_mni is None
    assert not list(phantom_pair["atrophy"][3].rglob("t1w_mni.nii.gz"))
    t1 = maps.t1w_mni
    assert t1 is not None and t1.shape == MNI1MM_SHAPE and t1.dtype == np.float32
    assert "affine part" in maps.provenance["T1wMNI"] and maps.provenance["T1wMNISpace"] == "MNI152NLin2009aSym"
    r, shifted = _template_correlation(t1)
    assert r > T1W_MNI_MIN_R_PHANTOM and r - shifted > T1W_MNI_SHIFT_MARGIN["phantom"], (r, shifted)
    # skull-stripped: (almost) no intensity beyond the template brain dilated by 6 mm
    outside = ~ndimage.binary_dilation(mni1mm_brain_mask(), iterations=6)
    assert t1[outside].sum() < 0.02 * t1.sum()
    x = make_input("t1w_mni1mm", maps, {})
    assert x.shape == (1, 160, 192, 160) and x[0][x[0] > 0].mean() == pytest.approx(1.0, rel=0.02)


@pytest.mark.slow
def test_resume_reuses_finished_steps(phantom_pair):
    ph, maps, _, work = phantom_pair["control"]
    t0 = time.perf_counter()
    again = AntsBackend(nprocs=2).run(T1wUnit(ph.path, {"sub": "control"}), work)
    assert time.perf_counter() - t0 < 30
    assert all(v == 0.0 for v in again.provenance["StepSeconds"].values())
    np.testing.assert_array_equal(again.gmv, maps.gmv)


@pytest.mark.slow
def test_affine_finds_the_brain_where_the_plain_affine_grew_it_over_the_skull(tmp_path, caplog, monkeypatch):
    """The demo's earlier cohort (seed 31) holds a head (sub-004) where the 12-parameter affine from the
    centre of mass placed 2.0x the template brain volume on the head (warped-T1 r 0.25; every later
    step failed QC), with the backend's seeded sampling on one ITK thread. Whether the plain affine
    fails depends on that sampling, so the staged restart is forced here (every ratio but 1 counts as
    implausible) and must find the brain on this head."""
    import ants
    import ants.config

    from bids_app.preproc import ants as ants_backend
    from bids_app.synth import simulate_dataset

    bids = tmp_path / "bids"
    simulate_dataset(bids, participants=4, sites=2, seed=31, nprocs=2, mci_fraction=0.25)  # the earlier demo defaults
    backend = AntsBackend(nprocs=2, params=AntsParams(affine_plausible_ratio=(1.0, 1.0)))
    monkeypatch.setattr(ants.config, "_random_seed", backend.params.random_seed)  # as run() sets it
    t1, n4, aff = tmp_path / "t1.nii.gz", tmp_path / "n4.nii.gz", tmp_path / "affine.mat"
    backend._reorient(next(bids.glob("sub-004/anat/*_T1w.nii.gz")), t1)
    backend._n4(t1, n4)
    with caplog.at_level("INFO", logger="bids_app.preproc.ants"):
        backend._affine(n4, aff)
    assert "restarting rigid -> similarity -> affine" in caplog.text and "staged affine:" in caplog.text
    ratio = ants_backend.affine_volume_ratio(aff)
    assert 0.8 <= ratio <= 1.25, ratio  # measured 1.05 staged (2.01 from the plain affine)
    grid = template_on_grid()
    warped = ants.apply_transforms(fixed=AntsBackend._grid_image(grid["T1"]), moving=AntsBackend._moving_15mm(n4),
                                   transformlist=[str(aff)]).numpy()
    brain = grid["brain"] > 0.5
    r = float(np.corrcoef(warped[brain], grid["T1"][brain])[0, 1])
    assert r > 0.7, r  # measured 0.78 staged, 0.25 from the plain affine


def test_to_ants_is_quiet_about_unitless_headers(capfd):
    """ANTsPy prints a units warning for every header without units; the backend's images say mm."""
    import nibabel as nib

    from bids_app.preproc.ants import to_ants

    img = nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.diag([1.5, 1.5, 1.5, 1.0]))
    assert img.header.get_xyzt_units() == ("unknown", "unknown")
    ants_img = to_ants(img)
    out = capfd.readouterr()
    assert "unknown" not in out.out + out.err
    assert ants_img.shape == (4, 5, 6) and ants_img.spacing == (1.5, 1.5, 1.5)
    assert img.header.get_xyzt_units() == ("unknown", "unknown")  # the caller's header is untouched

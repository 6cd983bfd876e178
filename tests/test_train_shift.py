"""The measured backend shift (bids_app.train.shift): its fit recovers a known shift; its datasets read as synthetic."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bids_app.derivatives import SPACE
from bids_app.grid import SPM_AFFINE, SPM_SHAPE
from bids_app.train.data import maps_origin
from bids_app.train.shift import SHIFT_ORIGIN, MapShift, ShiftModel, _fit_kind, noise_weights, shift_dataset


def _subjects(n: int, shape=(24, 28, 24), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.random(shape), 2.0).astype(np.float32)
    noise = [ndimage.gaussian_filter(rng.normal(0, 0.2, shape), 1.0) for _ in range(n)]
    return np.stack([np.clip(base * rng.normal(1, 0.1) + e, 0, None) for e in noise]).astype(np.float32)


def test_fit_recovers_a_known_scale_smoothing_and_offset() -> None:
    truth = _subjects(8)
    offset = np.linspace(0, 0.3, truth[0].size, dtype=np.float32).reshape(truth[0].shape)
    backend = np.stack([1.45 * ndimage.gaussian_filter(t, 1.5) + offset for t in truth])
    shift = _fit_kind("gmv", backend, truth)
    assert shift.sigma == 1.5
    assert shift.scale == pytest.approx(1.45, rel=1e-3)
    np.testing.assert_allclose(shift.offset, offset, atol=1e-3)
    assert shift.explained[1.5] > 0.999 > shift.explained[0.0]
    np.testing.assert_allclose(shift.apply(truth[0]), backend[0], atol=1e-3)


def test_fit_with_noise_still_prefers_the_true_smoothing() -> None:
    truth = _subjects(8, seed=1)
    rng = np.random.default_rng(2)
    backend = np.stack([0.8 * ndimage.gaussian_filter(t, 1.0) + rng.normal(0, 0.02, t.shape) for t in truth])
    shift = _fit_kind("gmd", backend, truth)
    assert shift.sigma == 1.0 and shift.scale == pytest.approx(0.8, rel=0.05)


def test_shifted_dataset_has_the_truth_names_and_reads_as_synthetic(tmp_path: Path) -> None:
    truth = tmp_path / "truth" / "sub-001" / "anat"
    truth.mkdir(parents=True)
    gm = np.zeros(SPM_SHAPE, np.float32)
    gm[50:70, 60:80, 50:70] = 0.5
    names = {"gmd": f"sub-001_space-{SPACE}_label-GM_probseg.nii.gz",
             "gmv": f"sub-001_space-{SPACE}_label-GM_desc-modulated_probseg.nii.gz"}
    for name in names.values():
        nib.save(nib.Nifti1Image(gm, SPM_AFFINE), truth / name)
    (truth / "sub-001_space-MNI152NLin2009aSym_res-1_desc-preproc_T1w.nii.gz").write_bytes(b"copied as is")
    model = ShiftModel({k: MapShift(k, 2.0, 0.0, np.full(SPM_SHAPE, 0.1, np.float32)) for k in ("gmd", "gmv")},
                       ["sub-009"], {})
    model = ShiftModel.load(model.save(tmp_path / "shift.npz"))
    out = tmp_path / "shifted"
    assert shift_dataset(model, tmp_path / "truth", out) == 1
    for name in names.values():
        data = np.asarray(nib.load(str(out / "sub-001" / "anat" / name)).dataobj)
        assert data[60, 70, 60] == pytest.approx(1.1) and data[0, 0, 0] == pytest.approx(0.1)
    assert (out / "sub-001" / "anat" / "sub-001_space-MNI152NLin2009aSym_res-1_desc-preproc_T1w.nii.gz").read_bytes() \
        == b"copied as is"
    assert maps_origin(out) == (SHIFT_ORIGIN, True)
    desc = json.loads((out / "dataset_description.json").read_text())
    assert "scale 2.000" in desc["GeneratedBy"][0]["Description"]


def test_residual_draws_carry_the_backends_own_noise_and_repeat_per_participant() -> None:
    """What the truth does not predict (``e_i``) is kept and redrawn: a model trained on the emulated
    maps must see the backend's between-participant noise, or it reads that noise as signal."""
    truth = _subjects(8, seed=3)
    rng = np.random.default_rng(4)
    noise = np.stack([ndimage.gaussian_filter(rng.normal(0, 0.3, truth[0].shape), 1.0) for _ in truth])
    backend = np.stack([0.9 * t + 0.05 for t in truth]) + noise
    shift = _fit_kind("gmv", backend, truth)
    assert shift.residuals is not None and shift.residuals.shape == backend.shape
    np.testing.assert_allclose(shift.residuals.sum(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(shift.apply(truth[0]) + shift.residuals[0], backend[0], atol=0.02)  # clip aside
    # one participant: the same draw every time, for every map kind; two participants: different draws
    w1, w2 = noise_weights(8, "sub-001"), noise_weights(8, "sub-002")
    np.testing.assert_array_equal(w1, noise_weights(8, "sub-001"))
    assert not np.allclose(w1, w2) and not np.allclose(w1, noise_weights(8, "sub-001", seed=1))
    # over many draws, the noise has the residuals' voxel variance (the sample covariance's diagonal)
    draws = np.stack([np.tensordot(noise_weights(8, f"sub-{i:03d}"), shift.residuals, axes=1) for i in range(400)])
    expected = (shift.residuals**2).sum(0) / 7
    ratio = draws.var(0).mean() / expected.mean()
    assert 0.85 < ratio < 1.15
    noisy = shift.apply(truth[0], w1)
    assert 0.5 * noise.std() < (noisy - shift.apply(truth[0])).std() < 2 * noise.std()


def test_noise_needs_fitted_residuals() -> None:
    shift = MapShift("gmd", 1.0, 0.0, np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="without residual maps"):
        shift.apply(np.zeros((4, 4, 4), np.float32), np.ones(3))


def test_saved_shift_keeps_its_residuals_and_the_dataset_says_it_drew_them(tmp_path: Path) -> None:
    truth = tmp_path / "truth" / "sub-001" / "anat"
    truth.mkdir(parents=True)
    gm = np.zeros(SPM_SHAPE, np.float32)
    gm[50:70, 60:80, 50:70] = 0.5
    for suffix in ("probseg", "desc-modulated_probseg"):
        nib.save(nib.Nifti1Image(gm, SPM_AFFINE), truth / f"sub-001_space-{SPACE}_label-GM_{suffix}.nii.gz")
    rng = np.random.default_rng(0)
    resid = rng.normal(0, 0.05, (3, *SPM_SHAPE)).astype(np.float32)
    resid -= resid.mean(0)
    model = ShiftModel({k: MapShift(k, 1.0, 0.0, np.zeros(SPM_SHAPE, np.float32), {}, resid) for k in ("gmd", "gmv")},
                       ["sub-007", "sub-008", "sub-009"], {})
    loaded = ShiftModel.load(model.save(tmp_path / "shift.npz"))
    np.testing.assert_allclose(loaded.shifts["gmv"].residuals, resid, atol=1e-4)
    shift_dataset(loaded, tmp_path / "truth", tmp_path / "noisy", seed=5)
    shift_dataset(loaded, tmp_path / "truth", tmp_path / "plain", noise=False)
    name = f"sub-001/anat/sub-001_space-{SPACE}_label-GM_probseg.nii.gz"
    noisy, plain = (np.asarray(nib.load(str(tmp_path / d / name)).dataobj) for d in ("noisy", "plain"))
    kept = loaded.shifts["gmd"].residuals  # stored as float16
    expected = np.clip(gm + np.tensordot(noise_weights(3, "sub-001", 5).astype(np.float32), kept, axes=1), 0, None)
    np.testing.assert_allclose(noisy, expected, atol=1e-4)
    np.testing.assert_allclose(plain, gm, atol=1e-6)
    assert "residual maps per participant (seed 5)" in json.loads(
        (tmp_path / "noisy" / "dataset_description.json").read_text())["GeneratedBy"][0]["Description"]

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
from bids_app.train.shift import SHIFT_ORIGIN, MapShift, ShiftModel, _fit_kind, shift_dataset


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

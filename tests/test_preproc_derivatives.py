"""The derivatives backend finds existing maps in CAPS, BIDS-derivatives and DPARSF layouts."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_app.errors import InputDataError, NoInputError, NoMatchError
from bids_app.grid import SPM_SHAPE
from bids_app.preproc import get_backend, resolve_backend_name
from bids_app.types import T1wUnit

from .conftest import write_grid_map

CAPS_NAME = "{src}_segm-graymatter_space-Ixi549Space_modulated-{m}_probability.nii.gz"


def _unit(tmp_path, **ents):
    return T1wUnit(path=tmp_path / "x_T1w.nii.gz", entities=ents)


def make_caps(root, sub, ses, gmd, gmv, run=None):
    src = f"sub-{sub}_ses-{ses}" + (f"_run-{run}" if run else "") + "_T1w"
    d = root / "subjects" / f"sub-{sub}" / f"ses-{ses}" / "t1/spm/segmentation/normalized_space"
    write_grid_map(d / CAPS_NAME.format(src=src, m="off"), gmd)
    write_grid_map(d / CAPS_NAME.format(src=src, m="on"), gmv)
    return root


def test_caps_layout(tmp_path, mni_gm_maps):
    gmd, gmv = mni_gm_maps
    caps = make_caps(tmp_path / "caps", "01", "M000", gmd, gmv)
    backend = get_backend("derivatives", derivatives_dir=caps)
    maps = backend.run(_unit(tmp_path, sub="01", ses="M000"), tmp_path / "w")
    np.testing.assert_allclose(maps.gmd, gmd, atol=1e-6)
    np.testing.assert_allclose(maps.gmv, gmv, atol=1e-6)
    assert maps.provenance["Layout"] == "caps" and maps.provenance["OriginalBackend"] == "clinica"
    assert not maps.provenance["ResampledToSPMGrid"]
    # a session-less T1w maps to the subject's only CAPS session
    assert backend.run(_unit(tmp_path, sub="01"), tmp_path / "w").gmd.shape == SPM_SHAPE


def test_caps_sessionless_ambiguous(tmp_path, mni_gm_maps):
    caps = make_caps(tmp_path / "caps", "01", "M000", *mni_gm_maps)
    make_caps(caps, "01", "M012", *mni_gm_maps)
    with pytest.raises(NoMatchError, match="several sessions"):
        get_backend("derivatives", derivatives_dir=caps).run(_unit(tmp_path, sub="01"), tmp_path)


def test_bids_layout_with_runs_and_resampling(tmp_path, mni_gm_maps):
    gmd, gmv = mni_gm_maps
    root = tmp_path / "deriv"
    anat = root / "sub-02" / "anat"
    for run, scale in (("1", 1.0), ("2", 0.5)):
        write_grid_map(anat / f"sub-02_run-{run}_space-IXI549Space_label-GM_probseg.nii.gz", gmd * scale)
        write_grid_map(anat / f"sub-02_run-{run}_space-IXI549Space_label-GM_desc-modulated_probseg.nii.gz", gmv * scale)
    backend = get_backend("derivatives", derivatives_dir=root)
    m2 = backend.run(_unit(tmp_path, sub="02", run="2"), tmp_path)
    np.testing.assert_allclose(m2.gmd, gmd * 0.5, atol=1e-6)
    # a 2 mm map in MNI space is resampled onto the SPM grid
    from nilearn.image import resample_img

    from bids_app.grid import SPM_AFFINE

    img = nib.Nifti1Image(gmd, SPM_AFFINE)
    coarse = resample_img(img, target_affine=np.diag([2.0, 2.0, 2.0]), interpolation="linear", force_resample=True,
                          copy_header=True)
    nib.save(coarse, anat / "sub-02_run-1_space-MNI152NLin2009cAsym_label-GM_probseg.nii.gz")
    anat3 = root / "sub-03" / "anat"
    anat3.mkdir(parents=True)
    nib.save(coarse, anat3 / "sub-03_space-MNI152NLin2009cAsym_label-GM_probseg.nii.gz")
    nib.save(coarse, anat3 / "sub-03_space-MNI152NLin2009cAsym_label-GM_desc-modulated_probseg.nii.gz")
    m3 = backend.run(_unit(tmp_path, sub="03"), tmp_path)
    assert m3.provenance["ResampledToSPMGrid"] is True
    inside = gmd > 0.3
    assert np.corrcoef(m3.gmd[inside], gmd[inside])[0, 1] > 0.9


def test_dparsf_layout(tmp_path, mni_gm_maps):
    gmd, gmv = mni_gm_maps
    root = tmp_path / "dparsf"
    write_grid_map(root / "T1ImgNewSegment" / "sub-05" / "wc1co20200101_T1.nii", gmd)
    write_grid_map(root / "T1ImgNewSegment" / "sub-05" / "mwc1co20200101_T1.nii", gmv)
    maps = get_backend("derivatives", derivatives_dir=root).run(_unit(tmp_path, sub="05"), tmp_path)
    np.testing.assert_allclose(maps.gmv, gmv, atol=1e-6)
    assert maps.provenance["OriginalBackend"] == "spm"


def test_missing_and_broken_maps_named(tmp_path, mni_gm_maps):
    root = tmp_path / "deriv"
    anat = root / "sub-01" / "anat"
    write_grid_map(anat / "sub-01_space-IXI549Space_label-GM_probseg.nii.gz", np.zeros(SPM_SHAPE))
    write_grid_map(anat / "sub-01_space-IXI549Space_label-GM_desc-modulated_probseg.nii.gz", mni_gm_maps[1])
    backend = get_backend("derivatives", derivatives_dir=root)
    with pytest.raises(InputDataError, match=r"sub-01_space-IXI549Space_label-GM_probseg.nii.gz: the GM map is empty"):
        backend.run(_unit(tmp_path, sub="01"), tmp_path)
    with pytest.raises(NoInputError, match="no GM maps for sub-09"):
        backend.run(_unit(tmp_path, sub="09"), tmp_path)


def test_auto_backend_choice(monkeypatch, tmp_path):
    monkeypatch.delenv("SPMSTANDALONE_HOME", raising=False)
    assert resolve_backend_name("auto") == "ants"
    assert resolve_backend_name("auto", derivatives_dir=tmp_path) == "derivatives"
    monkeypatch.setenv("SPMSTANDALONE_HOME", str(tmp_path))
    monkeypatch.setenv("MCR_HOME", str(tmp_path))
    assert resolve_backend_name("auto") == "clinica"


def test_bids_layout_keeps_the_recorded_origin(tmp_path, mni_gm_maps):
    import json

    anat = tmp_path / "d" / "sub-01" / "anat"
    write_grid_map(anat / "sub-01_space-IXI549Space_label-GM_probseg.nii.gz", mni_gm_maps[0])
    gmv = write_grid_map(anat / "sub-01_space-IXI549Space_label-GM_desc-modulated_probseg.nii.gz", mni_gm_maps[1])
    backend = get_backend("derivatives", derivatives_dir=tmp_path / "d")
    assert backend.run(_unit(tmp_path, sub="01"), tmp_path).provenance["OriginalBackend"] == "unknown"
    gmv.with_name(gmv.name.replace(".nii.gz", ".json")).write_text(json.dumps({"PreprocBackend": "ants"}))
    assert backend.run(_unit(tmp_path, sub="01"), tmp_path).provenance["OriginalBackend"] == "ants"

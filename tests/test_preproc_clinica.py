"""Clinica backend: everything that runs without SPM (the view, the TSV, what Clinica receives, CAPS ->
GMMaps, crash reports, the errors), and real Clinica 0.12 (no SPM) selecting the view's T1w in a dry run.
Clinica is found like the app finds it: CLINICA_PYTHON (the repository's .venv-clinica made by
`scripts/install.sh --test`, which tests/conftest.py points it to), else the container's
/opt/clinica-venv. Nothing here runs or imitates SPM."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.errors import BackendUnavailableError, InputDataError, PreprocessingError
from bids_app.grid import SPM_AFFINE, SPM_SHAPE, SPM_VOXEL_VOLUME_MM3, template_gm
from bids_app.preproc import get_backend
from bids_app.preproc.clinica import (
    DEFAULT_SESSION,
    ClinicaBackend,
    caps_map_paths,
    caps_to_gmmaps,
    clinica_python,
    crash_summary,
    link_dartel_template,
    make_session_view,
    run_driver,
    spm_standalone_status,
    write_subjects_sessions_tsv,
)
from bids_app.types import T1wUnit


def _bids(tmp_path: Path, *, session: str | None = None, run: str | None = None, version: str = "1.8.0") -> T1wUnit:
    root = tmp_path / "bids"
    parts = [root, "sub-01"] + ([f"ses-{session}"] if session else []) + ["anat"]
    anat = Path(*parts)
    anat.mkdir(parents=True)
    ents = {"sub": "01"} | ({"ses": session} if session else {}) | ({"run": run} if run else {})
    stem = "_".join(f"{k}-{v}" for k, v in ents.items())
    t1 = anat / f"{stem}_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20), dtype=np.float32), np.eye(4)), str(t1))
    (anat / f"{stem}_T1w.json").write_text('{"MagneticFieldStrength": 3}')
    (root / "dataset_description.json").write_text(json.dumps({"Name": "toy", "BIDSVersion": version}))
    return T1wUnit(t1, ents)


def test_view_adds_session_and_description(tmp_path):
    unit = _bids(tmp_path)
    view = make_session_view(unit, tmp_path / "work" / "bids")
    assert view.session_added and view.session_id == f"ses-{DEFAULT_SESSION}"
    expect = tmp_path / "work/bids/sub-01/ses-M000/anat/sub-01_ses-M000_T1w.nii.gz"
    assert view.t1w == expect and expect.is_symlink()
    assert expect.resolve() == unit.path.resolve()
    assert (expect.parent / "sub-01_ses-M000_T1w.json").resolve() == unit.path.with_name("sub-01_T1w.json").resolve()
    desc = json.loads((tmp_path / "work/bids/dataset_description.json").read_text())
    assert desc["DatasetType"] == "raw" and desc["BIDSVersion"] == "1.8.0"
    assert (tmp_path / "work/bids/participants.tsv").read_text().splitlines() == ["participant_id", "sub-01"]
    # idempotent: a resumed job rebuilds the same view
    again = make_session_view(unit, tmp_path / "work" / "bids")
    assert again == view


def test_view_keeps_existing_session_and_entities(tmp_path):
    unit = _bids(tmp_path, session="2", run="3")
    view = make_session_view(unit, tmp_path / "v")
    assert not view.session_added and view.session_id == "ses-2"
    assert view.t1w.name == "sub-01_ses-2_run-3_T1w.nii.gz"


def test_view_missing_file(tmp_path):
    with pytest.raises(InputDataError, match="not found"):
        make_session_view(T1wUnit(tmp_path / "sub-01_T1w.nii.gz", {"sub": "01"}), tmp_path / "v")


def test_subjects_sessions_tsv(tmp_path):
    view = make_session_view(_bids(tmp_path), tmp_path / "v")
    tsv = write_subjects_sessions_tsv(tmp_path / "ss.tsv", view)
    assert tsv.read_text() == "participant_id\tsession_id\nsub-01\tses-M000\n"


def test_parameters_clinica_receives(tmp_path):
    view = make_session_view(_bids(tmp_path), tmp_path / "bids")
    tsv = write_subjects_sessions_tsv(tmp_path / "ss.tsv", view)
    reqs = ClinicaBackend(nprocs=3).requests(view, tsv, tmp_path, None)
    assert [r["pipeline"] for r in reqs] == ["segmentation"]
    seg = reqs[0]
    assert seg["parameters"] == {
        "tissue_classes": [1, 2, 3],
        "dartel_tissues": [1, 2, 3],
        "tissue_probability_maps": None,
        "save_warped_unmodulated": True,
        "save_warped_modulated": True,
    }
    assert seg["n_procs"] == 3 and seg["tsv"] == str(tsv) and seg["caps_dir"] == str(tmp_path / "caps")
    dartel = ClinicaBackend(dartel_template=tmp_path / "tmpl").requests(view, tsv, tmp_path, None)
    assert [r["pipeline"] for r in dartel] == ["segmentation", "register_dartel", "dartel2mni", "dartel2mni"]
    assert [r["parameters"].get("modulate") for r in dartel[2:]] == [False, True]
    assert all(r["parameters"]["smooth"] == [] for r in dartel[2:])
    assert len({r["base_dir"] for r in dartel}) == 4  # one nipype work dir per run


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return path


def test_caps_to_gmmaps_on_a_caps_tree(tmp_path):
    view = make_session_view(_bids(tmp_path), tmp_path / "bids")
    paths = caps_map_paths(tmp_path / "caps", view)
    assert paths["gmd"].name == "sub-01_ses-M000_T1w_segm-graymatter_space-Ixi549Space_modulated-off_probability.nii.gz"
    assert "t1/spm/segmentation/normalized_space" in str(paths["gmd"])
    gm = np.asarray(template_gm())
    _write(paths["gmd"], gm, SPM_AFFINE)
    _write(paths["gmv"], gm * 1.1, SPM_AFFINE)
    maps = caps_to_gmmaps(paths, backend_version="clinica 0.12.0; SPM25")
    assert maps.backend == "clinica" and maps.gmd.shape == SPM_SHAPE and maps.gmd.dtype == np.float32
    np.testing.assert_allclose(maps.gmd, gm, atol=1e-6)
    assert maps.gmv.sum() * SPM_VOXEL_VOLUME_MM3 == pytest.approx(gm.sum() * 1.1 * SPM_VOXEL_VOLUME_MM3, rel=1e-5)
    assert maps.source_files == (paths["gmd"], paths["gmv"])


def test_caps_maps_off_grid_are_resampled(tmp_path):
    from nilearn.datasets import load_mni152_gm_template

    view = make_session_view(_bids(tmp_path), tmp_path / "bids")
    paths = caps_map_paths(tmp_path / "caps", view, dartel=True)
    assert "t1/spm/dartel/group-" in str(paths["gmv"])
    src = load_mni152_gm_template(resolution=2)
    for p in paths.values():
        _write(p, src.get_fdata(), src.affine)
    maps = caps_to_gmmaps(paths, backend_version="x")
    r = np.corrcoef(maps.gmd.ravel(), np.asarray(template_gm()).ravel())[0, 1]
    assert maps.gmd.shape == SPM_SHAPE and r > 0.95


def test_caps_missing_map(tmp_path):
    view = make_session_view(_bids(tmp_path), tmp_path / "bids")
    paths = caps_map_paths(tmp_path / "caps", view)
    with pytest.raises(PreprocessingError, match=r"did not write the expected map .*modulated-off"):
        caps_to_gmmaps(paths, backend_version="x")


def test_crash_summary_names_node_without_unpickling(tmp_path):
    crash = tmp_path / "crash"
    crash.mkdir()
    name = "crash-20250101-120000-user-segmentation_node-0b9a7d2e-1c2f-4e5a-8b9c-0d1e2f3a4b5c.pklz"
    (crash / name).write_bytes(b"not a pickle: must never be loaded")
    msg = crash_summary([crash, tmp_path / "absent"])
    assert "node 'segmentation_node'" in msg and name in msg
    assert crash_summary([tmp_path / "absent"]) == "no nipype crash file was found"


def test_dartel_template_links(tmp_path):
    tdir = tmp_path / "tmpl"
    tdir.mkdir()
    for i in range(1, 7):
        (tdir / f"group-AD_iteration-{i}_template.nii.gz").write_bytes(b"x")
    with pytest.raises(InputDataError, match="incomplete; missing final"):
        link_dartel_template(tdir, tmp_path / "caps")
    (tdir / "group-AD_template.nii.gz").write_bytes(b"x")
    links = link_dartel_template(tdir, tmp_path / "caps")
    assert len(links) == 7 and all(p.is_symlink() for p in links)
    assert (tmp_path / "caps/groups/group-vbmpredict/t1/group-vbmpredict_iteration-3_template.nii.gz").is_symlink()


def test_spm_status_reports_what_is_missing(tmp_path):
    st = spm_standalone_status({})
    assert not st.ok and any("SPMSTANDALONE_HOME is not set" in p for p in st.problems)
    assert any("MCR_HOME is not set" in p for p in st.problems)
    (tmp_path / "spm").mkdir()
    st = spm_standalone_status({"SPMSTANDALONE_HOME": str(tmp_path / "spm"), "MCR_HOME": str(tmp_path / "nope")})
    assert any("exactly one run_spm*.sh" in p for p in st.problems)
    assert any("exactly one TPM.nii" in p for p in st.problems)
    assert any("is not a folder" in p for p in st.problems)


def test_without_spm_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SPMSTANDALONE_HOME", raising=False)
    monkeypatch.delenv("MCR_HOME", raising=False)
    backend = ClinicaBackend(env={})
    assert not backend.available()
    with pytest.raises(BackendUnavailableError, match=r"SPMSTANDALONE_HOME is not set.*--preproc ants"):
        backend.run(_bids(tmp_path), tmp_path / "work")
    with pytest.raises(BackendUnavailableError, match="--preproc ants"):
        get_backend("clinica")


def test_clinica_dry_run_selects_the_view(tmp_path):
    """Real Clinica (no SPM): its own input selection finds exactly our T1w in the view."""
    py = clinica_python()
    if py is None or not py.is_file():
        pytest.skip(f"no Clinica installation (CLINICA_PYTHON={os.environ.get('CLINICA_PYTHON')}, no "
                    "/opt/clinica-venv); `scripts/install.sh --test` makes .venv-clinica")
    view = make_session_view(_bids(tmp_path), tmp_path / "work" / "bids")
    tsv = write_subjects_sessions_tsv(tmp_path / "work" / "ss.tsv", view)
    (tmp_path / "work" / "crash").mkdir()
    req = ClinicaBackend().requests(view, tsv, tmp_path / "work", None)[0] | {"dry_run": True}
    result = run_driver(req, tmp_path / "work", py, timeout_s=300)
    assert result["ok"], result.get("traceback")
    assert result["subjects"] == ["sub-01"] and result["sessions"] == ["ses-M000"]
    assert result["parameters"]["save_warped_modulated"] is True

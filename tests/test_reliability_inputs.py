"""What goes in: the head check, the cache that is valid only for the same inputs, the hard-QC gate,
the T1w behind reused maps, label files only with ``@``, ``--bids-filter-file``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bids_app.cli.main import main
from bids_app.discovery import discover_units, load_bids_filters, read_labels
from bids_app.errors import EXIT_DATA, EXIT_USAGE, InputDataError, UsageError
from bids_app.preproc.inputs import load_t1w
from bids_app.types import GMMaps

from .conftest import make_bids, write_grid_map
from .test_app_end_to_end import write_bids_derivatives

CH2 = Path("/usr/share/mricron/templates/ch2.nii.gz")


def _require_colin27() -> None:
    if not CH2.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail("mricron-data (Colin27 ch2.nii.gz) must be installed in CI (.ci/reliability.sh)")
        pytest.skip("mricron-data (Colin27 ch2.nii.gz) not installed")


def _save(path: Path, data: np.ndarray, voxel: float = 1.0) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([voxel, voxel, voxel, 1.0])), str(path))
    return path


# -- the head check -----------------------------------------------------------------------------
def test_real_heads_pass(tmp_path):
    from nilearn.datasets import load_mni152_template

    _require_colin27()
    assert load_t1w(CH2).shape == (181, 217, 181)
    mni = tmp_path / "mni.nii.gz"
    nib.save(load_mni152_template(resolution=1), str(mni))
    assert load_t1w(mni).ndim == 3


@pytest.mark.slow
def test_simulated_head_passes(tmp_path):
    from bids_app.synth.simulate import simulate_dataset

    out = simulate_dataset(tmp_path / "synth", participants=1, sites=1, seed=3)
    (t1w,) = sorted(out.rglob("*_T1w.nii*"))
    assert load_t1w(t1w).ndim == 3


@pytest.mark.parametrize("kind", ["uniform", "gaussian", "rician", "smooth", "phantom"])
def test_non_heads_are_refused(tmp_path, kind):
    rng = np.random.default_rng(0)
    shape = (150, 170, 150)
    if kind == "uniform":
        data = rng.random(shape) * 1000
    elif kind == "gaussian":
        data = rng.normal(500, 100, shape)
    elif kind == "rician":
        data = np.hypot(rng.normal(0, 50, shape), rng.normal(0, 50, shape))
    elif kind == "smooth":  # blobs everywhere, no background
        data = ndimage.gaussian_filter(rng.random(shape), 3) * 1000
    else:  # a uniform ellipsoid in air: big and bright, but no tissues
        ijk = np.indices(shape, dtype=np.float32)
        r = sum(((ijk[a] - (shape[a] - 1) / 2) / rad) ** 2 for a, rad in zip(range(3), (60, 70, 60), strict=True))
        data = np.where(r < 1, 800.0, 5.0) + rng.normal(0, 20, shape)
    path = _save(tmp_path / f"{kind}.nii.gz", data)
    with pytest.raises(InputDataError, match=rf"{kind}\.nii\.gz: .*(does not look like a head|brighter than)"):
        load_t1w(path)


def test_pure_noise_gets_no_prediction_and_exit_65(tmp_path, tiny_models):
    bids = make_bids(tmp_path / "bids", ["sub-01"])
    t1w = next(bids.rglob("*_T1w.nii.gz"))
    _save(t1w, np.random.default_rng(1).random((150, 170, 150)) * 1000)
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--skip-bids-validation", "--preproc", "ants",
                 "--models", str(tiny_models), "--no-reports"])
    assert code == EXIT_DATA
    assert not list(out.rglob("*_predictions.tsv"))
    record = json.loads(next(out.rglob("*_failure.json")).read_text())
    assert record["step"] == "input" and "does not look like a head" in record["message"]


# -- the post-preprocessing gate ----------------------------------------------------------------
def test_maps_that_fail_hard_qc_get_no_prediction(tmp_path, mni_gm_maps, tiny_models):
    bids = make_bids(tmp_path / "bids", ["sub-01", "sub-02"])
    maps = write_bids_derivatives(tmp_path / "maps", mni_gm_maps[0], units=["sub-01", "sub-02"])
    out = tmp_path / "out"
    args = [str(bids), str(out), "participant", "--skip-bids-validation", "--preproc", "derivatives",
            "--derivatives", str(maps), "--models", str(tiny_models), "--no-reports"]
    assert main(args) == 0
    noise = np.random.default_rng(2).random(mni_gm_maps[0].shape).astype(np.float32)  # registration gone wrong
    anat = maps / "sub-02" / "anat"
    write_grid_map(anat / "sub-02_space-IXI549Space_label-GM_probseg.nii.gz", noise)
    write_grid_map(anat / "sub-02_space-IXI549Space_label-GM_desc-modulated_probseg.nii.gz", noise)
    assert main(args) == EXIT_DATA
    assert [p.name for p in out.rglob("*_predictions.tsv")] == ["sub-01_predictions.tsv"]  # the stale one is gone
    record = json.loads(next(out.rglob("sub-02_failure.json")).read_text())
    assert record["step"] == "qc gate" and "hard QC limits" in record["message"] and record["exit_code"] == EXIT_DATA
    sidecar = json.loads((out / "sub-02" / "anat" / "sub-02_space-IXI549Space_label-GM_probseg.json").read_text())
    assert sidecar["InputFingerprint"]["maps"]["GMDSha256"]  # the maps kept for inspection name their source


def test_derivatives_backend_checks_the_t1w_it_stands_for(tmp_path, mni_gm_maps, tiny_models):
    bids = make_bids(tmp_path / "bids", ["sub-01", "sub-02"])
    maps = write_bids_derivatives(tmp_path / "maps", mni_gm_maps[0], units=["sub-01", "sub-02"])
    t1w = next((bids / "sub-02").rglob("*_T1w.nii.gz"))
    t1w.unlink()
    (tmp_path / "notes.txt").write_text("not an image\n")
    t1w.symlink_to(tmp_path / "notes.txt")
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--skip-bids-validation", "--preproc", "derivatives",
                 "--derivatives", str(maps), "--models", str(tiny_models), "--no-reports"])
    assert code == EXIT_DATA
    assert [p.name for p in out.rglob("*_predictions.tsv")] == ["sub-01_predictions.tsv"]


# -- the cache ----------------------------------------------------------------------------------
class TemplateBackend:
    """A backend that makes maps from the T1w's mean intensity (cheap, deterministic, real files)."""

    name = "template"

    def __init__(self, gmd: np.ndarray, version: str = "1"):
        self._gmd, self._version, self._calls = gmd, version, 0
        self.smoothing_mm = 0.0  # a parameter: part of the cache key

    @property
    def calls(self) -> int:
        return self._calls

    def available(self) -> bool:
        return True

    def version(self) -> str:
        return self._version

    def run(self, unit, work_dir):
        self._calls += 1
        level = float(np.asarray(nib.load(unit.path).dataobj).mean())
        return GMMaps(gmd=self._gmd, gmv=self._gmd * np.float32(level / 100.0), backend=self.name,
                      backend_version=self._version, provenance={"level": level})


def test_cache_is_valid_only_for_the_same_t1w_and_backend(tmp_path, mni_gm_maps, caplog):
    from bids_app.participant import cached_preprocessing

    bids = make_bids(tmp_path / "bids", ["sub-01"])
    (unit,) = discover_units(bids)
    backend = TemplateBackend(mni_gm_maps[0])
    work = tmp_path / "work"
    first = cached_preprocessing(backend, unit, work)
    assert cached_preprocessing(backend, unit, work).provenance == first.provenance and backend.calls == 1
    # the T1w replaced at the same path, same size, same mtime: still noticed (content hash)
    st = unit.path.stat()
    img = nib.load(unit.path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 2, img.affine, img.header), str(unit.path))
    os.utime(unit.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with caplog.at_level(logging.INFO, logger="bids_app"):
        second = cached_preprocessing(backend, unit, work)
    assert backend.calls == 2 and second.provenance["level"] != first.provenance["level"]
    assert "recomputing the preprocessing: the T1w" in caplog.text
    with caplog.at_level(logging.INFO, logger="bids_app"):
        cached_preprocessing(TemplateBackend(mni_gm_maps[0], version="2"), unit, work)  # another version
        assert "the backend version changed" in caplog.text
        changed = TemplateBackend(mni_gm_maps[0], version="2")
        changed.smoothing_mm = 4.0
        cached_preprocessing(changed, unit, work)  # another parameter
        assert "the parameters changed" in caplog.text and changed.calls == 1


def test_another_derivatives_folder_is_never_served_from_the_cache(tmp_path, mni_gm_maps, tiny_models):
    bids = make_bids(tmp_path / "bids", ["sub-01"])
    a = write_bids_derivatives(tmp_path / "a", mni_gm_maps[0], units=["sub-01"])
    b = write_bids_derivatives(tmp_path / "b", mni_gm_maps[0] * np.float32(0.9), units=["sub-01"])
    out = tmp_path / "out"
    for maps in (a, b):
        assert main([str(bids), str(out), "participant", "--skip-bids-validation", "--preproc", "derivatives",
                     "--derivatives", str(maps), "--models", str(tiny_models), "--no-reports"]) == 0
        sidecar = json.loads(next(out.rglob("*_label-GM_probseg.json")).read_text())
        assert sidecar["Provenance"]["GMDFile"].startswith(str(maps))


# -- selecting images ---------------------------------------------------------------------------
def test_a_label_never_reads_a_file_silently(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("01").write_text("02\n03\n")
    assert read_labels(["01"], "sub") == ["01"]
    assert read_labels(["@01"], "sub") == ["02", "03"]


def test_bids_filter_file(tmp_path, capsys, tiny_models):
    bids = make_bids(tmp_path / "bids", ["sub-01_acq-mprage", "sub-01_acq-mprage_rec-norm", "sub-01_acq-spgr"])
    good = tmp_path / "filter.json"
    good.write_text(json.dumps({"t1w": {"acquisition": "mprage", "reconstruction": None}}))
    units = discover_units(bids, bids_filters=load_bids_filters(good))
    assert [u.prefix for u in units] == ["sub-01_acq-mprage"]
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"t1w": {"acq": ["mprage", "spgr"], "rec": None}}))
    assert len(discover_units(bids, bids_filters=load_bids_filters(short))) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"t1w": {"acquisiton": "mprage"}}))
    hint = "unknown BIDS entity 'acquisiton' in 't1w' \\(did you mean 'acquisition'\\?\\)"
    with pytest.raises(UsageError, match=hint):
        load_bids_filters(bad)
    code = main([str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                 "--models", str(tiny_models), "--bids-filter-file", str(bad)])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "acquisiton" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    other = tmp_path / "bold.json"
    other.write_text(json.dumps({"bold": {"task": "rest"}}))
    with pytest.raises(UsageError, match="unknown image type 'bold'"):
        load_bids_filters(other)

"""Model inputs by kind: the arrays each kind builds, the maps each needs, the backends that can make them,
the refusal before any preprocessing, the cache that notices a newly needed T1w in MNI space, and the
derivatives backend's T1w in MNI 1 mm space."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.cli.main import main
from bids_app.discovery import discover_units
from bids_app.errors import EXIT_USAGE, InputDataError, ModelPackageError, NoInputError, UsageError
from bids_app.grid import (
    MNI1MM_AFFINE,
    MNI1MM_SHAPE,
    SFCN_CROP,
    SPM_SHAPE,
    make_model_input,
    mni1mm_brain_mask,
    model_input_mask,
    to_mni1mm,
)
from bids_app.model_input import INPUT_SHAPES, make_input, needed_outputs
from bids_app.preproc import get_backend
from bids_app.preproc.ants import AntsBackend
from bids_app.preproc.clinica import ClinicaBackend
from bids_app.preproc.existing import DerivativesBackend
from bids_app.types import INPUT_KINDS, GMMaps, T1wUnit, backend_provides
from bids_app.workflows import check_input_kinds

from .conftest import make_bids
from .test_app_end_to_end import write_bids_derivatives


def _maps(gmd: np.ndarray, t1w_mni: np.ndarray | None = None) -> GMMaps:
    return GMMaps(gmd=gmd, gmv=gmd * np.float32(1.3), backend="test", backend_version="1", t1w_mni=t1w_mni)


@pytest.fixture(scope="module")
def template_t1_1mm() -> np.ndarray:
    """nilearn's skull-stripped MNI152 T1 on the 1 mm grid (real anatomy, 0 outside the brain)."""
    from bids_app.templates import mni152_t1

    return np.clip(to_mni1mm(mni152_t1()), 0.0, None)


# -- the arrays ---------------------------------------------------------------------------------
def test_input_kinds_and_shapes_agree():
    assert set(INPUT_SHAPES) == set(INPUT_KINDS) == {"gm_crop2", "gm_spm1", "t1w_mni1mm"}
    assert INPUT_SHAPES["gm_crop2"] == (2, 96, 120, 86)
    assert INPUT_SHAPES["gm_spm1"] == (1, 121, 145, 121)
    assert INPUT_SHAPES["t1w_mni1mm"] == (1, 160, 192, 160)
    assert MNI1MM_SHAPE == (182, 218, 182)
    np.testing.assert_array_equal(MNI1MM_AFFINE, [[-1, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])


def test_gm_crop2_is_the_reference_recipe(mni_gm_maps):
    maps = _maps(mni_gm_maps[0])
    x = make_input("gm_crop2", maps, {"kind": "gm_crop2", "channels": ["GMD", "GMV"]})
    assert x.shape == (2, 96, 120, 86) and x.dtype == np.float32
    np.testing.assert_array_equal(x, make_model_input(maps.gmd, maps.gmv, mask=model_input_mask()[0]))
    with pytest.raises(ModelPackageError, match="channels"):
        make_input("gm_crop2", maps, {"channels": ["GMV", "GMD"]})


def test_gm_spm1_one_map_uncropped_channel_and_mask_from_the_spec(mni_gm_maps):
    gmd = mni_gm_maps[0].copy()
    gmd[0, 0, 0] = np.nan  # outside the brain: NaN becomes 0
    gmd[1, 1, 1] = 0.25  # outside the brain, kept without a mask
    maps = _maps(gmd)
    gmv = make_input("gm_spm1", maps, {"kind": "gm_spm1", "channels": ["GMV"], "mask": "none"})
    assert gmv.shape == (1, *SPM_SHAPE) and gmv.dtype == np.float32
    assert gmv[0, 0, 0, 0] == 0 and gmv[0, 1, 1, 1] == pytest.approx(0.25 * 1.3)
    np.testing.assert_allclose(gmv[0][model_input_mask()[0]], maps.gmv[model_input_mask()[0]])
    gmd_in = make_input("gm_spm1", maps, {"channels": ["GMD"], "mask": "brain"})
    mask = model_input_mask()[0]
    assert gmd_in[0, 1, 1, 1] == 0 and not gmd_in[0][~mask].any()
    np.testing.assert_array_equal(gmd_in[0][mask], np.nan_to_num(gmd)[mask])
    # the default: modulated GM (Clinica's mwc1), unmasked
    np.testing.assert_array_equal(make_input("gm_spm1", maps, {}), gmv)
    with pytest.raises(ModelPackageError, match="one map"):
        make_input("gm_spm1", maps, {"channels": ["GMD", "GMV"]})
    with pytest.raises(ModelPackageError, match=r"input\.mask"):
        make_input("gm_spm1", maps, {"channels": ["GMV"], "mask": "grey"})
    with pytest.raises(InputDataError, match="SPM grid"):
        make_input("gm_spm1", _maps(np.zeros((91, 109, 91), np.float32)), {})


def test_t1w_mni1mm_is_cropped_and_divided_by_its_brain_mean(template_t1_1mm):
    t1 = template_t1_1mm * np.float32(537.0)  # the scale of the scanner's units must not matter
    x = make_input("t1w_mni1mm", _maps(np.zeros(SPM_SHAPE, np.float32), t1), {"kind": "t1w_mni1mm"})
    assert x.shape == (1, 160, 192, 160) and x.dtype == np.float32
    brain = t1 > 0
    assert brain[SFCN_CROP].sum() > 0.995 * brain.sum()  # the crop keeps (almost) the whole brain
    mean = t1[brain].mean(dtype=np.float64)  # over the whole brain, before the crop
    np.testing.assert_allclose(x[0], t1[SFCN_CROP] / mean, rtol=1e-5)
    assert x[0, 70, 90, 75] == pytest.approx(t1[81, 103, 86] / mean, rel=1e-5)
    assert x[0][brain[SFCN_CROP]].mean(dtype=np.float64) == pytest.approx(1.0, rel=0.01)
    np.testing.assert_allclose(x, make_input("t1w_mni1mm", _maps(np.zeros(SPM_SHAPE, np.float32), template_t1_1mm),
                                             {}), rtol=1e-5)


def test_t1w_mni1mm_without_the_image_is_a_clear_error(template_t1_1mm):
    gm = np.zeros(SPM_SHAPE, np.float32)
    with pytest.raises(NoInputError, match="test backend's maps hold no T1w in MNI152 1 mm space"):
        make_input("t1w_mni1mm", _maps(gm), {})
    with pytest.raises(InputDataError, match=r"1 mm grid \(182, 218, 182\)"):
        make_input("t1w_mni1mm", _maps(gm, template_t1_1mm[:-1]), {})
    with pytest.raises(InputDataError, match="empty"):
        make_input("t1w_mni1mm", _maps(gm, np.zeros(MNI1MM_SHAPE, np.float32)), {})
    with pytest.raises(ModelPackageError, match="unknown input kind 'pet'"):
        make_input("pet", _maps(gm), {})


def test_needed_outputs():
    assert needed_outputs(["gm_crop2"]) == needed_outputs(["gm_spm1"]) == {"gmd", "gmv"}
    assert needed_outputs(["t1w_mni1mm"]) == {"t1w_mni"}
    assert needed_outputs(["gm_crop2", "t1w_mni1mm"]) == {"gmd", "gmv", "t1w_mni"}
    assert needed_outputs([]) == frozenset()
    with pytest.raises(ModelPackageError, match="unknown input kind"):
        needed_outputs(["t2w"])


# -- the backends -------------------------------------------------------------------------------
def test_what_each_backend_provides_and_is_asked_for(tmp_path):
    assert backend_provides(AntsBackend()) == set(INPUT_KINDS)
    assert backend_provides(ClinicaBackend()) == {"gm_crop2", "gm_spm1"}
    assert backend_provides(DerivativesBackend(tmp_path)) == {"gm_crop2", "gm_spm1"}
    assert not get_backend("ants", outputs={"gmd", "gmv"}).make_t1w_mni
    assert get_backend("ants", outputs=needed_outputs(["t1w_mni1mm"])).make_t1w_mni
    assert get_backend("derivatives", derivatives_dir=tmp_path, outputs={"t1w_mni"}).make_t1w_mni


class _Package:
    """What the refusal reads of a loaded package: its name, path and card."""

    def __init__(self, name: str, kind: str | None):
        self.name, self.path = name, Path(f"/models/{name}")
        self.card = {"input": {} if kind is None else {"kind": kind}}


def test_a_kind_the_backend_cannot_make_is_refused_naming_package_kind_and_backend(tmp_path):
    v1, sfcn = _Package("irv2-sex", None), _Package("sfcn-age", "t1w_mni1mm")
    check_input_kinds([v1, sfcn], AntsBackend())
    check_input_kinds([v1, _Package("cnn5-ad", "gm_spm1")], ClinicaBackend())
    with pytest.raises(UsageError, match=r"sfcn-age \(/models/sfcn-age\) reads input kind 't1w_mni1mm', which the "
                                         r"'clinica' preprocessing backend cannot make") as err:
        check_input_kinds([v1, sfcn], ClinicaBackend())
    assert err.value.exit_code == EXIT_USAGE and "irv2-sex" not in str(err.value)
    with pytest.raises(UsageError, match=r"'derivatives' preprocessing backend.*_desc-preproc_T1w"):
        check_input_kinds([sfcn], DerivativesBackend(tmp_path))


def test_refused_before_any_preprocessing_or_output(tmp_path, mni_gm_maps, tiny_models, monkeypatch, capsys):
    """A real run: the packages load, the backend is chosen, and the run stops with 64 before it
    writes the output dataset or touches the work dir."""
    import bids_app.workflows as workflows

    real_load = workflows._load_packages

    def load_with_an_sfcn_card(*args, **kwargs):
        packages = real_load(*args, **kwargs)
        packages[0].card["input"] = {**packages[0].card["input"], "kind": "t1w_mni1mm"}
        return packages

    monkeypatch.setattr(workflows, "_load_packages", load_with_an_sfcn_card)
    bids = make_bids(tmp_path / "bids", ["sub-01"])
    maps = write_bids_derivatives(tmp_path / "maps", mni_gm_maps[0], units=["sub-01"])
    out, work = tmp_path / "out", tmp_path / "work"
    code = main([str(bids), str(out), "participant", "--skip-bids-validation", "--preproc", "derivatives",
                 "--derivatives", str(maps), "--models", str(tiny_models), "-w", str(work), "--no-reports"])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "reads input kind 't1w_mni1mm'" in err and "'derivatives' preprocessing backend" in err
    assert "Traceback" not in err
    assert not out.exists() and not work.exists()


# -- the cache ----------------------------------------------------------------------------------
class MNIBackend:
    """A cheap backend with real files that can also make a T1w in MNI space (``make_t1w_mni``)."""

    name = "mni-test"
    provides = frozenset(INPUT_KINDS)

    def __init__(self, gmd: np.ndarray, t1: np.ndarray, make_t1w_mni: bool = False):
        self._gmd, self._t1, self.make_t1w_mni, self._calls = gmd, t1, make_t1w_mni, 0
        self.smoothing_mm = 0.0  # a parameter: part of the cache key

    @property
    def calls(self) -> int:
        return self._calls

    def available(self) -> bool:
        return True

    def version(self) -> str:
        return "1"

    def run(self, unit, work_dir):
        self._calls += 1
        return GMMaps(gmd=self._gmd, gmv=self._gmd, backend=self.name, backend_version="1",
                      t1w_mni=self._t1 if self.make_t1w_mni else None)


def test_the_cache_is_not_reused_when_a_package_newly_needs_the_t1w_in_mni_space(tmp_path, mni_gm_maps, caplog):
    from bids_app.participant import cache_key, cached_preprocessing

    bids = make_bids(tmp_path / "bids", ["sub-01"])
    (unit,) = discover_units(bids)
    t1 = np.zeros(MNI1MM_SHAPE, np.float32)
    t1[40:140, 50:170, 40:140] = 3.0
    work = tmp_path / "work"
    gm_only = MNIBackend(mni_gm_maps[0], t1)
    assert cached_preprocessing(gm_only, unit, work).t1w_mni is None and gm_only.calls == 1
    assert not (work / "maps" / "t1w_mni.nii.gz").exists()
    assert cache_key(gm_only, unit)["parameters"] == cache_key(MNIBackend(mni_gm_maps[0], t1, True), unit)["parameters"]

    sfcn = MNIBackend(mni_gm_maps[0], t1, make_t1w_mni=True)
    with caplog.at_level(logging.INFO, logger="bids_app"):
        made = cached_preprocessing(sfcn, unit, work)
    assert sfcn.calls == 1 and made.t1w_mni is not None
    assert "a model package needs t1w_mni, which the cached preprocessing did not make" in caplog.text
    saved = nib.load(work / "maps" / "t1w_mni.nii.gz")
    assert saved.shape == MNI1MM_SHAPE and np.allclose(saved.affine, MNI1MM_AFFINE)

    again = MNIBackend(mni_gm_maps[0], t1, make_t1w_mni=True)
    reloaded = cached_preprocessing(again, unit, work)  # the cache now holds it: reused
    assert again.calls == 0
    np.testing.assert_array_equal(reloaded.t1w_mni, t1)
    fewer = MNIBackend(mni_gm_maps[0], t1)  # the cache holds more than this run needs: reused, without the extra map
    assert cached_preprocessing(fewer, unit, work).t1w_mni is None and fewer.calls == 0
    assert (work / "maps" / "t1w_mni.nii.gz").exists()

    changed = MNIBackend(mni_gm_maps[0] * np.float32(0.5), t1)
    changed.smoothing_mm = 2.0  # another parameter, no T1w in MNI space asked: the old one must not stay
    assert cached_preprocessing(changed, unit, work).t1w_mni is None and changed.calls == 1
    assert not (work / "maps" / "t1w_mni.nii.gz").exists()
    assert json.loads((work / "maps" / "maps.json").read_text())["key"]["outputs"] == []


# -- the derivatives backend's T1w in MNI space ---------------------------------------------------
def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), path)
    return path


def test_derivatives_find_a_t1w_in_mni_1mm_space(tmp_path, mni_gm_maps, template_t1_1mm):
    from bids_app.templates import mni152_t1

    root = write_bids_derivatives(tmp_path / "deriv", mni_gm_maps[0], units=["sub-01", "sub-02"])
    anat = root / "sub-01" / "anat"
    # fMRIPrep's name on the template's own grid (197 x 233 x 189), and a res-1 file on the 1 mm grid: res-1 wins
    _write(anat / "sub-01_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz", np.asarray(mni152_t1().dataobj) * 2,
           mni152_t1().affine)
    _write(anat / "sub-01_space-MNI152Lin_res-1_desc-preproc_T1w.nii", template_t1_1mm, MNI1MM_AFFINE)
    _write(anat / "sub-01_space-IXI549Space_desc-preproc_T1w.nii", template_t1_1mm, MNI1MM_AFFINE)  # not MNI152

    assert "t1w_mni1mm" in backend_provides(DerivativesBackend(root))
    assert DerivativesBackend(root).run(T1wUnit(Path("t1.nii.gz"), {"sub": "01"}), tmp_path).t1w_mni is None
    maps = DerivativesBackend(root, make_t1w_mni=True).run(T1wUnit(Path("t1.nii.gz"), {"sub": "01"}), tmp_path)
    assert maps.t1w_mni is not None and maps.t1w_mni.shape == MNI1MM_SHAPE and maps.t1w_mni.dtype == np.float32
    assert maps.provenance["T1wMNIFile"].endswith("sub-01_space-MNI152Lin_res-1_desc-preproc_T1w.nii")
    np.testing.assert_allclose(maps.t1w_mni, template_t1_1mm, atol=1e-3)
    assert make_input("t1w_mni1mm", maps, {}).shape == (1, 160, 192, 160)

    # without the res-1 file: the template-grid file, resampled onto the 1 mm grid
    (anat / "sub-01_space-MNI152Lin_res-1_desc-preproc_T1w.nii").unlink()
    other_grid = DerivativesBackend(root, make_t1w_mni=True).run(T1wUnit(Path("t1.nii.gz"), {"sub": "01"}), tmp_path)
    np.testing.assert_allclose(other_grid.t1w_mni, 2 * template_t1_1mm, rtol=1e-5, atol=1e-4)
    assert other_grid.provenance["T1wMNISpace"] == "MNI152NLin2009cAsym"
    # another participant without one: a clear per-T1w error
    with pytest.raises(NoInputError, match="no T1w in MNI space for sub-02"):
        DerivativesBackend(root, make_t1w_mni=True).run(T1wUnit(Path("t1.nii.gz"), {"sub": "02"}), tmp_path)


def test_derivatives_t1w_in_mni_space_must_be_skull_stripped_or_come_with_a_mask(tmp_path, mni_gm_maps,
                                                                                  template_t1_1mm):
    root = write_bids_derivatives(tmp_path / "deriv", mni_gm_maps[0], units=["sub-01"])
    anat = root / "sub-01" / "anat"
    brain = mni1mm_brain_mask()
    i, j, k = np.ogrid[:182, :218, :182]
    radius = np.sqrt(((i - 91) / 88) ** 2 + ((j - 112) / 106) ** 2 + ((k - 80) / 95) ** 2)
    shell = (radius > 0.93) & (radius < 1.0) & ~brain  # a bright skull around the brain
    assert shell.sum() > 0.2 * brain.sum()
    head = template_t1_1mm + np.float32(template_t1_1mm[brain].mean()) * shell
    name = "sub-01_space-MNI152NLin6Asym_res-1_desc-preproc_T1w.nii"
    _write(anat / name, head, MNI1MM_AFFINE)
    unit = T1wUnit(Path("t1.nii.gz"), {"sub": "01"})
    with pytest.raises(InputDataError, match=f"{name}: .* not skull-stripped"):
        DerivativesBackend(root, make_t1w_mni=True).run(unit, tmp_path)
    _write(anat / "sub-01_space-MNI152NLin6Asym_res-1_desc-brain_mask.nii", brain.astype(np.float32), MNI1MM_AFFINE)
    maps = DerivativesBackend(root, make_t1w_mni=True).run(unit, tmp_path)
    assert not maps.t1w_mni[~brain].any() and maps.provenance["T1wMNIBrainMask"].endswith("desc-brain_mask.nii")


def test_a_run_whose_package_reads_the_t1w_in_mni_space_writes_it_and_a_later_run_removes_it(
        tmp_path, mni_gm_maps, template_t1_1mm, tiny_models, monkeypatch):
    """The participant level asks the backend for the T1w in MNI space only when a package reads it, and
    writes it as a BIDS derivative (the validator accepts it); a run whose packages do not read it
    leaves no earlier one behind."""
    import bids_app.workflows as workflows
    from bids_app.validation import run_validator

    bids = make_bids(tmp_path / "bids", ["sub-01"])
    maps = write_bids_derivatives(tmp_path / "maps", mni_gm_maps[0], units=["sub-01"])
    _write(maps / "sub-01" / "anat" / "sub-01_space-MNI152NLin6Asym_res-1_desc-preproc_T1w.nii.gz",
           template_t1_1mm, MNI1MM_AFFINE)
    out = tmp_path / "out"
    args = [str(bids), str(out), "participant", "--skip-bids-validation", "--preproc", "derivatives",
            "--derivatives", str(maps), "--models", str(tiny_models), "--no-reports"]
    real_load = workflows._load_packages

    def load_with_an_sfcn_card(*a, **k):
        packages = real_load(*a, **k)
        packages[0].card["input"] = {**packages[0].card["input"], "kind": "t1w_mni1mm"}
        return packages

    with monkeypatch.context() as m:
        m.setattr(workflows, "_load_packages", load_with_an_sfcn_card)
        assert main(args) == 0
    written = out / "sub-01" / "anat" / "sub-01_space-MNI152NLin6Asym_res-1_desc-preproc_T1w.nii.gz"
    img = nib.load(written)
    assert img.shape == MNI1MM_SHAPE and np.allclose(img.affine, MNI1MM_AFFINE) and int(img.header["sform_code"]) == 4
    np.testing.assert_allclose(np.asarray(img.dataobj), template_t1_1mm, atol=1e-3)
    sidecar = json.loads(written.with_name(written.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["SpatialReference"] == "MNI152NLin6Asym" and sidecar["SkullStripped"] is True
    assert sidecar["Sources"] == ["bids::sub-01/anat/sub-01_T1w.nii.gz"]
    report = run_validator(out)
    assert not report.errors, report.errors
    assert main(args) == 0  # no package reads it now: the earlier one must not stay
    assert not list((out / "sub-01" / "anat").glob("*_desc-preproc_T1w.*"))

"""Synthetic cohorts: valid BIDS, deterministic, and the simulated effects are really in the truth maps."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app.grid import SPM_AFFINE, SPM_SHAPE, SPM_VOXEL_VOLUME_MM3
from bids_app.synth import draw_sites, draw_subjects, simulate_dataset, truth_paths, truth_t1w_mni_path
from bids_app.synth.anatomy import template_anatomy
from bids_app.synth.simulate import (
    AGE_REFERENCE_YEARS,
    GLOBAL_GM_LOSS_PER_YEAR,
    MTL_GM_LOSS_PER_YEAR,
    _grid_points,
    _sample,
    _simulate_subject,
    subject_at,
)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 participants at 2 sites with T1w images (the full simulator)."""
    return simulate_dataset(tmp_path_factory.mktemp("sim") / "ds", participants=2, sites=2, seed=11)


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))


@pytest.mark.slow
def test_dataset_layout_and_tables(small_dataset: Path) -> None:
    ds = small_dataset
    table = pd.read_csv(ds / "participants.tsv", sep="\t")
    assert list(table.columns) == ["participant_id", "age", "sex", "diagnosis", "mmse", "mci_progression", "site"]
    assert len(table) == 2 and set(table["site"]) == {"S01", "S02"}
    assert set(table["sex"]) <= {"M", "F"} and set(table["diagnosis"]) <= {"CN", "AD"}
    assert table["mci_progression"].isna().all()  # n/a: no MCI without --mci-fraction
    assert not list(ds.glob("sub-*/ses-*")) and not list(ds.glob("sub-*/*_sessions.tsv"))
    assert table["mmse"].between(0, 30).all()
    described = json.loads((ds / "participants.json").read_text())
    assert set(table.columns) <= set(described)
    truth_desc = json.loads((ds / "derivatives/ground-truth/dataset_description.json").read_text())
    assert truth_desc["DatasetType"] == "derivative"
    sites = json.loads((ds / "derivatives/ground-truth/sites.json").read_text())
    for pid, site in zip(table["participant_id"], table["site"]):
        side = json.loads((ds / pid / "anat" / f"{pid}_T1w.json").read_text())
        assert side["Manufacturer"] == sites[site]["manufacturer"]
        assert side["MagneticFieldStrength"] in (1.5, 3.0)
        img = nib.load(str(ds / pid / "anat" / f"{pid}_T1w.nii.gz"))
        zooms = np.array(img.header.get_zooms()[:3])
        assert np.all((zooms >= 0.89) & (zooms <= 1.31)), zooms
        assert nib.aff2axcodes(img.affine) is not None
        for key, p in truth_paths(ds, pid).items():
            assert p.is_file(), (key, p)
        gmd = nib.load(str(truth_paths(ds, pid)["gmd"]))
        assert gmd.shape == SPM_SHAPE and np.allclose(gmd.affine, SPM_AFFINE)


def test_sites_differ_in_orientation_and_voxel_size() -> None:
    sites = draw_sites(4, seed=3)
    assert len({s.axcodes for s in sites}) == 4
    assert len({s.voxel_size for s in sites}) == 4
    assert all(0.9 <= v <= 1.3 for s in sites for v in s.voxel_size)


@pytest.mark.slow
def test_passes_the_bids_validator(small_dataset: Path) -> None:
    """The official validator (a dependency: its entry point is installed next to this Python)."""
    from bids_app.validation import run_validator

    report = run_validator(small_dataset, timeout=300)
    assert not report.errors, [str(i) for i in report.errors[:5]]


@pytest.mark.slow
def test_true_gmv_sums_to_native_gm_volume(small_dataset: Path) -> None:
    """Modulation is exact: the SPM-grid GMV integrates to the GM volume of the native image."""
    truth = pd.read_csv(small_dataset / "derivatives/ground-truth/participants.tsv", sep="\t")
    for row in truth.itertuples():
        paths = truth_paths(small_dataset, row.participant_id)
        gmv_ml = _load(paths["gmv"]).sum() * SPM_VOXEL_VOLUME_MM3 / 1000
        native = nib.load(str(paths["gm_native"]))
        native_ml = _load(paths["gm_native"]).sum() * abs(np.linalg.det(native.affine[:3, :3])) / 1000
        assert gmv_ml == pytest.approx(native_ml, rel=0.01)
        assert 600 < native_ml < 1400


@pytest.mark.slow
def test_same_seed_same_dataset(tmp_path: Path) -> None:
    a = simulate_dataset(tmp_path / "a", participants=2, sites=1, seed=4, maps_only=True)
    b = simulate_dataset(tmp_path / "b", participants=1, sites=1, seed=5, maps_only=True, t1w_mni=True)
    c = simulate_dataset(tmp_path / "c", participants=2, sites=1, seed=4, maps_only=True, nprocs=2)
    for pid in ("sub-001", "sub-002"):
        for key in ("gmd", "gmv", "atrophy_mask"):
            assert np.array_equal(_load(truth_paths(a, pid)[key]), _load(truth_paths(c, pid)[key]))
    assert (a / "participants.tsv").read_bytes() == (c / "participants.tsv").read_bytes()
    assert not np.array_equal(_load(truth_paths(a, "sub-001")["gmv"]), _load(truth_paths(b, "sub-001")["gmv"]))
    assert not truth_t1w_mni_path(a, "sub-001").exists()  # only when asked for
    _affine_t1w_checks(b)


def _affine_t1w_checks(ds: Path) -> None:
    """The true T1w in MNI space (``t1w_mni=True``): on the 1 mm grid, named as the app names it,
    skull-stripped as the derivatives backend requires, WM near 1 (the site contrasts, no bias)."""
    from bids_app.grid import MNI1MM_AFFINE, MNI1MM_SHAPE, mni1mm_brain_mask
    from bids_app.preproc.existing import load_t1w_mni

    path = truth_t1w_mni_path(ds, "sub-001")
    img = nib.load(str(path))
    assert img.shape == MNI1MM_SHAPE and np.allclose(img.affine, MNI1MM_AFFINE)
    assert path.name == "sub-001_space-MNI152NLin2009aSym_res-1_desc-preproc_T1w.nii.gz"
    t1 = load_t1w_mni(path)  # refuses a T1w with > 10 % of its intensity outside the dilated template brain
    brain = mni1mm_brain_mask()
    assert 0.95 < float(np.percentile(t1[brain], 95)) <= 1.01
    # the subject's own brain (masked at its tissue) covers the template's brain mask but for an edge
    # where its shape differs (measured 99.2 %); outside its tissue the image is 0 (skull-stripped)
    assert float(t1[brain].sum() / t1.sum()) > 0.9 and (t1[brain] > 0).mean() > 0.98
    assert 1.2e6 < int((t1 > 0).sum()) < 2.2e6  # voxels (ml) of brain at 1 mm, not the whole field of view


def test_refuses_bad_arguments(tmp_path: Path) -> None:
    from bids_app.errors import OutputError, UsageError

    with pytest.raises(UsageError, match="--sites must be between 1"):
        simulate_dataset(tmp_path / "x", participants=2, sites=3, seed=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        simulate_dataset(tmp_path / "full", participants=1, sites=1, seed=0)


# --- effects measured on the truth maps: the same subject (same random anatomy) with one factor changed


@pytest.fixture(scope="module")
def paired_truth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, np.ndarray]]:
    out = tmp_path_factory.mktemp("pairs")
    site = draw_sites(1, seed=9)[0]
    base = dataclasses.replace(draw_subjects(1, [site], seed=9)[0], sex="F", diagnosis="CN", mmse=30, severity=0.0,
                               mtl_gm_loss=0.0, ventricle_expansion=0.01, head_scale=0.98)
    variants = {
        "cn_f": base,
        "ad_f": dataclasses.replace(base, diagnosis="AD", mmse=16, severity=0.7, mtl_gm_loss=0.315,
                                    ventricle_expansion=0.09),
        "cn_m": dataclasses.replace(base, sex="M", head_scale=1.03),
    }
    # the same person as MCI (MMSE 26), stable or progressive (converting at month 24), and 24 months on
    # (subject_at(..., 0): the baseline visit, its ventricles from the model like every later visit's)
    mci = subject_at(dataclasses.replace(base, diagnosis="MCI", mmse=26, severity=0.2, mtl_gm_loss=0.09,
                                         mci_progression="sMCI"), 0)
    pmci = dataclasses.replace(mci, mci_progression="pMCI", conversion_months=24)
    variants |= {"mci_f": mci, "smci_m24": subject_at(mci, 24), "pmci_m24": subject_at(pmci, 24)}
    maps = {}
    for name, subj in variants.items():
        root = out / name
        _simulate_subject(root, site, subj, seed=9, maps_only=True)
        p = truth_paths(root, subj.participant_id, subj.session_id)
        maps[name] = {k: _load(p[k]) for k in ("gmd", "gmv", "atrophy_mask")}
        maps[name]["params"] = subj  # type: ignore[assignment]
    return maps


def test_atrophy_is_in_the_medial_temporal_lobe(paired_truth: dict) -> None:
    cn, ad = paired_truth["cn_f"], paired_truth["ad_f"]
    mask = cn["atrophy_mask"] > 0
    assert mask.sum() > 500  # hippocampus + parahippocampus + amygdala, both sides, at 1.5 mm
    ratio = ad["gmd"][mask].sum() / cn["gmd"][mask].sum()
    assert 0.65 < ratio < 0.85  # 31.5% loss at the core, graded towards the edge
    far = (cn["gmd"] > 0.2) & ~ndilate(mask, 6)
    assert ad["gmd"][far].sum() / cn["gmd"][far].sum() == pytest.approx(1.0, abs=0.01)
    mtl_gmv_ratio = ad["gmv"][mask].sum() / cn["gmv"][mask].sum()
    assert mtl_gmv_ratio < 0.85


def test_ventricles_enlarge_with_severity(paired_truth: dict) -> None:
    """GMV near the ventricles is pushed outward: the local Jacobian exceeds the CN subject's."""
    cn, ad = paired_truth["cn_f"], paired_truth["ad_f"]
    # world (0, -15, 12) mm is between the lateral ventricles
    ijk = np.round(np.linalg.inv(SPM_AFFINE) @ np.array([0.0, -15.0, 12.0, 1.0]))[:3].astype(int)
    sl = tuple(slice(i - 6, i + 7) for i in ijk)
    gm = cn["gmd"][sl] > 0.05
    jac_ad = ad["gmv"][sl][gm] / np.maximum(ad["gmd"][sl][gm], 1e-6)
    jac_cn = cn["gmv"][sl][gm] / np.maximum(cn["gmd"][sl][gm], 1e-6)
    assert np.median(jac_ad / jac_cn) > 1.1


def test_head_size_differs_by_sex(paired_truth: dict) -> None:
    f, m = paired_truth["cn_f"], paired_truth["cn_m"]
    assert np.array_equal(f["gmd"], m["gmd"])  # density does not see size
    ratio = m["gmv"].sum() / f["gmv"].sum()
    assert ratio == pytest.approx((1.03 / 0.98) ** 3, rel=0.03)


def test_cohort_draws_tie_atrophy_to_mmse_and_head_to_sex() -> None:
    sites = draw_sites(5, seed=1)
    subs = pd.DataFrame([dataclasses.asdict(s) for s in draw_subjects(400, sites, seed=1)])
    assert subs.groupby("sex")["head_scale"].mean()["M"] > subs.groupby("sex")["head_scale"].mean()["F"] + 0.02
    assert subs.groupby("diagnosis")["mmse"].mean()["AD"] < 24 < subs.groupby("diagnosis")["mmse"].mean()["CN"]
    assert np.corrcoef(subs["mmse"], subs["mtl_gm_loss"])[0, 1] < -0.9
    assert subs["site"].nunique() == 5 and subs.groupby("site").size().min() >= 2


def test_simulate_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A longitudinal pMCI cohort from the command line; its sessions.tsv labels read back by the app."""
    from bids_app.cli import simulate_cmd
    from bids_app.labels import read_labels

    parser = argparse.ArgumentParser()
    simulate_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["simulate", str(tmp_path / "d"), "--n-participants", "1", "--sites", "1", "--seed", "2",
                              "--maps-only", "--mci-fraction", "1", "--pmci-fraction", "1", "--sessions", "2"])
    assert args.func(args) == 0
    ds = tmp_path / "d"
    assert "ground truth" in capsys.readouterr().out
    for ses in ("M00", "M12"):
        assert truth_paths(ds, "sub-001", ses)["gmv"].is_file()
    assert not truth_paths(ds, "sub-001")["gmv"].exists()
    truth = pd.read_csv(ds / "derivatives/ground-truth/sub-001/sub-001_sessions.tsv", sep="\t")
    assert truth["session_id"].tolist() == ["ses-M00", "ses-M12"] and truth["months"].tolist() == [0, 12]
    assert truth.loc[0, "truth_mtl_gmv_change_pct"] == 0 == truth.loc[0, "truth_gmv_total_change_pct"]
    assert truth.loc[1, "truth_mtl_gmv_change_pct"] < truth.loc[1, "truth_gmv_total_change_pct"] < 0
    labels = read_labels(ds)
    baseline = labels.table.loc["sub-001"]
    assert baseline["diagnosis"] == "MCI" and baseline["mci_progression"] == "pMCI"
    s = labels.sessions
    assert s.loc[("sub-001", "ses-M12"), "age"] == pytest.approx(labels.table.loc["sub-001", "age"] + 1)
    assert s.xs("sub-001")["diagnosis"].tolist() == truth["diagnosis"].tolist()
    assert s.xs("sub-001")["mmse"].tolist() == truth["mmse"].tolist()
    assert (s["mci_progression"] == "pMCI").all() and (s["sex"] == labels.table.loc["sub-001", "sex"]).all()
    sidecar = json.loads((ds / "sub-001" / "sub-001_sessions.json").read_text())
    assert sidecar["age"]["Units"] == "year" and set(sidecar["diagnosis"]["Levels"]) == {"CN", "MCI", "AD"}
    described = json.loads((ds / "participants.json").read_text())
    assert set(described["mci_progression"]["Levels"]) == {"pMCI", "sMCI"}
    assert "0.25% per year" in (ds / "README").read_text()
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", str(tmp_path / "e"), "--mci-fraction", "1.5"])


@pytest.mark.slow
def test_longitudinal_dataset_passes_the_bids_validator(tmp_path: Path) -> None:
    """T1w per session in ses-M00 / ses-M12, sessions.tsv with its sidecar: valid BIDS."""
    from bids_app.validation import run_validator

    ds = simulate_dataset(tmp_path / "ds", participants=1, sites=1, seed=12, mci_fraction=1.0, sessions=2)
    for ses in ("M00", "M12"):
        assert (ds / "sub-001" / f"ses-{ses}" / "anat" / f"sub-001_ses-{ses}_T1w.nii.gz").is_file()
        assert truth_paths(ds, "sub-001", ses)["gm_native"].is_file()
    a, b = (_load(ds / "sub-001" / f"ses-{s}" / "anat" / f"sub-001_ses-{s}_T1w.nii.gz") for s in ("M00", "M12"))
    assert a.shape != b.shape or not np.array_equal(a, b)  # a new scan, not a copy
    report = run_validator(ds, timeout=300)
    assert not report.errors, [str(i) for i in report.errors[:5]]


def _mtl_weight_spm() -> np.ndarray:
    tmpl = template_anatomy()
    return _sample(tmpl.mtl_weight, tmpl.affine, _grid_points(SPM_SHAPE, SPM_AFFINE)).reshape(SPM_SHAPE)


# --- age, MCI and progression


def test_age_model_in_the_draws_is_linear_and_documented() -> None:
    """Truth: 0.25 % of GM per year everywhere and 0.5 % more per year at the MTL core, from age 50."""
    subs = pd.DataFrame([dataclasses.asdict(s) for s in draw_subjects(300, draw_sites(3, seed=2), seed=2,
                                                                      mci_fraction=0.3)])
    years = subs["age"] - AGE_REFERENCE_YEARS
    assert subs["age"].between(55, 92).all() and subs["age"].std() > 5
    assert np.allclose(subs["global_gm_loss"], GLOBAL_GM_LOSS_PER_YEAR * years, atol=6e-5)
    assert np.allclose(subs["mtl_age_loss"], MTL_GM_LOSS_PER_YEAR * years, atol=6e-5)
    assert (GLOBAL_GM_LOSS_PER_YEAR, MTL_GM_LOSS_PER_YEAR) == (0.0025, 0.005)
    by_age = subs.sort_values("age")
    assert by_age["global_gm_loss"].is_monotonic_increasing and by_age["mtl_age_loss"].is_monotonic_increasing
    # across visits of one participant the age losses grow by exactly the yearly rates
    s = draw_subjects(1, draw_sites(1, seed=2), seed=2)[0]
    visits = [subject_at(s, m) for m in (0, 12, 24, 36)]
    assert [v.session_id for v in visits] == ["M00", "M12", "M24", "M36"]
    assert np.allclose(np.diff([v.age for v in visits]), 1.0)
    assert np.allclose(np.diff([v.global_gm_loss for v in visits]), GLOBAL_GM_LOSS_PER_YEAR, atol=1e-4)
    assert np.allclose(np.diff([v.mtl_age_loss for v in visits]), MTL_GM_LOSS_PER_YEAR, atol=1e-4)


def test_age_effect_in_the_maps_has_the_documented_size(paired_truth: dict) -> None:
    """Same person, two years on, no disease progression (sMCI): only the age losses change the GM."""
    before, after = paired_truth["mci_f"], paired_truth["smci_m24"]
    p0, p1 = before["params"], after["params"]
    assert p1.age == pytest.approx(p0.age + 2) and p1.severity == p0.severity and p1.mtl_gm_loss == p0.mtl_gm_loss
    weight = _mtl_weight_spm()
    far = (before["gmd"] > 0.2) & (weight == 0) & ~ndilate(before["atrophy_mask"] > 0, 6)
    core = (before["gmd"] > 0.2) & (weight > 0.99)
    assert core.sum() > 200
    # GM = template GM x thickness x (1 - global - (disease + age MTL) x weight), capped at GM + CSF:
    # voxel by voxel the ratio is exact wherever the cap is not reached (most voxels: the median)
    ratio = after["gmd"] / np.maximum(before["gmd"], 1e-6)
    far_ratio, core_ratio = float(np.median(ratio[far])), float(np.median(ratio[core]))
    assert far_ratio == pytest.approx((1 - p1.global_gm_loss) / (1 - p0.global_gm_loss), abs=2e-4)
    expected_core = (1 - p1.global_gm_loss - p1.mtl_gm_loss - p1.mtl_age_loss) / (
        1 - p0.global_gm_loss - p0.mtl_gm_loss - p0.mtl_age_loss)
    assert core_ratio == pytest.approx(expected_core, abs=1e-3)
    # in template-GM terms: 0.25 %/year everywhere, 0.75 %/year at the MTL core
    assert (1 - far_ratio) * (1 - p0.global_gm_loss) / 2 == pytest.approx(0.0025, abs=2e-4)
    core_before = 1 - p0.global_gm_loss - p0.mtl_gm_loss - p0.mtl_age_loss
    assert (1 - core_ratio) * core_before / 2 == pytest.approx(0.0075, abs=5e-4)
    # the whole maps: less GM everywhere, and more lost in the medial temporal lobe than elsewhere
    mask = before["atrophy_mask"] > 0
    mtl_change = after["gmd"][mask].sum() / before["gmd"][mask].sum() - 1
    far_change = after["gmd"][far].sum() / before["gmd"][far].sum() - 1
    assert mtl_change < far_change < 0


def test_mci_atrophy_lies_between_cn_and_ad(paired_truth: dict) -> None:
    mask = paired_truth["cn_f"]["atrophy_mask"] > 0
    mtl = {k: paired_truth[k]["gmd"][mask].sum() for k in ("cn_f", "mci_f", "ad_f")}
    assert mtl["cn_f"] > mtl["mci_f"] > mtl["ad_f"]
    assert 0.85 < mtl["mci_f"] / mtl["cn_f"] < 0.97  # 9 % loss at the core vs 31.5 % for this AD
    # in the cohort draws: MTL loss and MMSE by diagnosis (and pMCI starts worse than sMCI)
    subs = pd.DataFrame([dataclasses.asdict(s) for s in draw_subjects(600, draw_sites(4, seed=5), seed=5,
                                                                      mci_fraction=0.4)])
    loss = subs.groupby("diagnosis")["mtl_gm_loss"].mean()
    mmse = subs.groupby("diagnosis")["mmse"].mean()
    assert loss["CN"] + 0.03 < loss["MCI"] < loss["AD"] - 0.05
    assert mmse["CN"] > mmse["MCI"] > mmse["AD"]
    mci = subs[subs["diagnosis"] == "MCI"]
    assert set(mci["mci_progression"]) == {"pMCI", "sMCI"} and (subs["diagnosis"] != "MCI").sum() > 200
    assert (subs.loc[subs["diagnosis"] != "MCI", "mci_progression"] == "n/a").all()
    assert mci.groupby("mci_progression")["mtl_gm_loss"].mean().diff().iloc[-1] < 0  # sMCI < pMCI
    assert 0.35 < (mci["mci_progression"] == "pMCI").mean() < 0.65
    assert set(mci.loc[mci["mci_progression"] == "pMCI", "conversion_months"]) == {12, 24, 36}


def test_mci_fraction_zero_keeps_the_cohort_of_cn_and_ad() -> None:
    sites = draw_sites(2, seed=8)
    plain = draw_subjects(30, sites, seed=8)
    assert draw_subjects(30, sites, seed=8, mci_fraction=0.0, pmci_fraction=0.9) == plain
    with_mci = draw_subjects(30, sites, seed=8, mci_fraction=0.5)
    same = [a for a, b in zip(plain, with_mci) if b.diagnosis != "MCI"]
    assert same and all(a == b for a, b in zip(plain, with_mci) if b.diagnosis != "MCI")


def test_pmci_progresses_and_smci_does_not() -> None:
    """The truth over four yearly visits: pMCI atrophy grows and it converts to AD; sMCI and CN only age."""
    subs = draw_subjects(200, draw_sites(2, seed=6), seed=6, mci_fraction=0.6)
    seen = set()
    for s in subs:
        visits = [subject_at(s, m) for m in (0, 12, 24, 36)]
        loss = np.array([v.mtl_gm_loss for v in visits])
        diagnoses = [v.diagnosis for v in visits]
        if s.mci_progression == "pMCI":
            assert np.all(np.diff(loss) > 0.02) or loss[-1] == 0.6
            first_ad = diagnoses.index("AD")
            assert diagnoses[:first_ad] == ["MCI"] * first_ad and set(diagnoses[first_ad:]) == {"AD"}
            assert 12 * first_ad == s.conversion_months <= 36
            assert visits[first_ad].severity >= 0.4 - 1e-9  # AD-like atrophy at conversion
            assert np.all(np.diff([v.mmse for v in visits]) <= 0) and visits[-1].mmse < s.mmse
        elif s.diagnosis in ("CN", "MCI"):
            assert np.all(loss == loss[0]) and diagnoses == [s.diagnosis] * 4
            assert all(v.mmse == s.mmse for v in visits)
        else:  # AD keeps progressing
            assert np.all(np.diff(loss) >= 0) and (visits[-1].severity > s.severity or s.severity == 1.0)
        seen.add(s.mci_progression if s.diagnosis == "MCI" else s.diagnosis)
    assert seen == {"CN", "AD", "pMCI", "sMCI"}


def test_pmci_progresses_in_the_maps_and_smci_does_not(paired_truth: dict) -> None:
    """24 months after the same baseline: the pMCI's MTL loses far more GMV than the sMCI's (age only)."""
    mask = paired_truth["cn_f"]["atrophy_mask"] > 0
    base = paired_truth["mci_f"]["gmv"][mask].sum()
    smci = paired_truth["smci_m24"]["gmv"][mask].sum() / base - 1
    pmci = paired_truth["pmci_m24"]["gmv"][mask].sum() / base - 1
    assert paired_truth["pmci_m24"]["params"].diagnosis == "AD"
    assert paired_truth["smci_m24"]["params"].diagnosis == "MCI"
    assert -0.04 < smci < 0  # two years of ageing: about 1.5 %/year at the MTL core
    assert pmci < -0.08 and pmci < 3 * smci


def ndilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=iterations)

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
from bids_app.synth import draw_sites, draw_subjects, simulate_dataset, truth_paths
from bids_app.synth.simulate import _simulate_subject


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
    assert list(table.columns) == ["participant_id", "age", "sex", "diagnosis", "mmse", "site"]
    assert len(table) == 2 and set(table["site"]) == {"S01", "S02"}
    assert set(table["sex"]) <= {"M", "F"} and set(table["diagnosis"]) <= {"CN", "AD"}
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
    b = simulate_dataset(tmp_path / "b", participants=1, sites=1, seed=5, maps_only=True)
    c = simulate_dataset(tmp_path / "c", participants=2, sites=1, seed=4, maps_only=True, nprocs=2)
    for pid in ("sub-001", "sub-002"):
        for key in ("gmd", "gmv", "atrophy_mask"):
            assert np.array_equal(_load(truth_paths(a, pid)[key]), _load(truth_paths(c, pid)[key]))
    assert (a / "participants.tsv").read_bytes() == (c / "participants.tsv").read_bytes()
    assert not np.array_equal(_load(truth_paths(a, "sub-001")["gmv"]), _load(truth_paths(b, "sub-001")["gmv"]))


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
    maps = {}
    for name, subj in variants.items():
        root = out / name
        _simulate_subject(root, site, subj, seed=9, maps_only=True)
        p = truth_paths(root, subj.participant_id)
        maps[name] = {k: _load(p[k]) for k in ("gmd", "gmv", "atrophy_mask")}
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
    from bids_app.cli import simulate_cmd

    parser = argparse.ArgumentParser()
    simulate_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["simulate", str(tmp_path / "d"), "--n-participants", "1", "--sites", "1", "--seed", "2",
                              "--maps-only"])
    assert args.func(args) == 0
    assert truth_paths(tmp_path / "d", "sub-001")["gmv"].is_file()
    assert "ground truth" in capsys.readouterr().out


def ndilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=iterations)

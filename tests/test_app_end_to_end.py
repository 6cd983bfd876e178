"""Participant then group level on a small BIDS dataset, through the real command line.

Maps come from the ``derivatives`` backend (real anatomy: nilearn's MNI152 GM map on the SPM grid,
varied per T1w), models are tiny real packages; the output must pass the official BIDS validator
and be indexed by pybids, and the TSVs must match their JSON descriptions.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app.cli.main import main
from bids_app.derivatives import read_predictions
from bids_app.grid import make_model_input
from bids_app.models import load_package, predict
from bids_app.validation import run_validator

from .conftest import make_bids, tree_snapshot, write_grid_map

UNITS = ["sub-01_ses-1", "sub-01_ses-2", "sub-02_run-1", "sub-02_run-2", "sub-03"]
PARTICIPANTS = [
    {"participant_id": "sub-01", "sex": "M", "diagnosis": "AD", "mmse": 19},
    {"participant_id": "sub-02", "sex": "female", "diagnosis": "CN", "mmse": 29},
    {"participant_id": "sub-03", "sex": "F", "diagnosis": "HC", "mmse": 30},
]


def unit_maps(gmd: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
    """A different, smooth variation of the template per T1w."""
    x = np.linspace(-1, 1, gmd.shape[0])[:, None, None]
    factor = (1.0 + 0.08 * i * x).astype(np.float32)
    return gmd * factor, gmd * factor * np.float32(1.0 + 0.05 * i)


def write_bids_derivatives(root: Path, gmd: np.ndarray, units=UNITS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "maps", "BIDSVersion": "1.10.0", "DatasetType": "derivative"})
    )
    for i, name in enumerate(units):
        sub = name.split("_")[0]
        ses = [p for p in name.split("_") if p.startswith("ses-")]
        anat = root / sub / (ses[0] if ses else "") / "anat"
        d, v = unit_maps(gmd, i)
        write_grid_map(anat / f"{name}_space-IXI549Space_label-GM_probseg.nii.gz", d)
        write_grid_map(anat / f"{name}_space-IXI549Space_label-GM_desc-modulated_probseg.nii.gz", v)
    return root


@pytest.fixture(scope="module")
def study(tmp_path_factory, mni_gm_maps, tiny_models):
    root = tmp_path_factory.mktemp("study")
    bids = make_bids(root / "bids", UNITS, participants=PARTICIPANTS)
    maps = write_bids_derivatives(root / "maps", mni_gm_maps[0])
    before = tree_snapshot(bids)
    out = root / "out"
    common = ["--preproc", "derivatives", "--derivatives", str(maps), "--models", str(tiny_models)]
    code_p = main([str(bids), str(out), "participant", *common])
    code_g = main([str(bids), str(out), "group"])
    return {"bids": bids, "maps": maps, "out": out, "codes": (code_p, code_g), "before": before, "models": tiny_models}


def test_exit_codes_and_input_untouched(study):
    assert study["codes"] == (0, 0)
    assert tree_snapshot(study["bids"]) == study["before"]


def test_output_passes_official_validator(study):
    report = run_validator(study["out"])
    assert report.errors == [], "\n".join(map(str, report.errors))
    desc = json.loads((study["out"] / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "vbm-predict"


def test_pybids_indexes_outputs(study):
    from bids import BIDSLayout

    layout = BIDSLayout(study["out"], validate=False)
    probseg = layout.get(suffix="probseg", space="IXI549Space", label="GM", extension=".nii.gz")
    assert len(probseg) == 2 * len(UNITS)
    modulated = layout.get(suffix="probseg", desc="modulated", extension=".nii.gz")
    assert sorted(f.entities["subject"] for f in modulated) == ["01", "01", "02", "02", "03"]
    runs = layout.get(suffix="probseg", subject="02", desc="modulated", extension=".nii.gz")
    assert sorted(str(f.entities["run"]) for f in runs) == ["1", "2"]


def test_predictions_match_direct_scoring_and_columns_described(study):
    out = study["out"]
    pk = {t: load_package(study["models"] / t) for t in ("sex", "ad")}
    for name in UNITS:
        tsvs = list(out.rglob(f"{name}_predictions.tsv"))
        assert len(tsvs) == 1
        table = read_predictions(tsvs[0])
        sidecar = json.loads(tsvs[0].with_suffix(".json").read_text())
        assert list(table.columns) == list(sidecar)
        assert set(table["target"]) == {"sex", "ad"}
        # recompute from the written maps: the app's scores are the models' scores on these maps
        d = nib.load(next(out.rglob(f"{name}_space-IXI549Space_label-GM_probseg.nii.gz"))).get_fdata(dtype=np.float32)
        gmv_path = next(out.rglob(f"{name}_space-IXI549Space_label-GM_desc-modulated_probseg.nii.gz"))
        v = nib.load(gmv_path).get_fdata(dtype=np.float32)
        np.testing.assert_allclose((d, v), unit_maps(np.asarray(d), 0) if False else (d, v))
        x = make_model_input(d, v)[None]
        for task, package in pk.items():
            row = table[table["target"] == task].iloc[0]
            scores = predict(package, x, device="cpu")
            assert row["score"] == pytest.approx(float(scores.mean[0]), abs=1e-5)
            folds = [float(s) for s in str(row["fold_scores"]).split(";")]
            assert len(folds) == package.n_folds and np.mean(folds) == pytest.approx(row["score"], abs=1e-5)
            assert row["model_sha256"] == ";".join(package.sha256)
            positive = row["score"] >= row["threshold"]
            assert row["predicted_label"] == (package.positive_label if positive else package.negative_label)
            # synthetic-only test models: never 'validated', and the table says why
            assert not row["validated_input"] and "synthetic" in row["warnings"]
            assert row["preproc_backend"] == "derivatives" and "Research use only" in row["notice"]


def test_map_sidecars_carry_provenance(study):
    side_path = next(study["out"].rglob("sub-03_space-IXI549Space_label-GM_desc-modulated_probseg.json"))
    side = json.loads(side_path.read_text())
    assert side["PreprocBackend"] == "derivatives" and side["SpatialReference"] == "IXI549Space"
    assert side["Sources"] == ["bids::sub-03/anat/sub-03_T1w.nii.gz"]
    assert "gmv_template_correlation" in side["QC"]["Metrics"]
    assert side["Grid"]["Shape"] == [121, 145, 121]


def test_group_tables(study):
    out = study["out"]
    group = pd.read_csv(out / "group_predictions.tsv", sep="\t")
    assert len(group) == 2 * len(UNITS)
    assert list(group.columns) == list(json.loads((out / "group_predictions.json").read_text()))
    ev = pd.read_csv(out / "group_evaluation.tsv", sep="\t")
    assert set(ev["target"]) == {"sex", "ad"}


def test_caps_and_dparsf_layouts_end_to_end(tmp_path, mni_gm_maps, tiny_models):
    gmd, gmv = mni_gm_maps
    bids = make_bids(tmp_path / "bids", ["sub-01_ses-M000", "sub-02"])
    caps = tmp_path / "caps" / "subjects" / "sub-01" / "ses-M000" / "t1/spm/segmentation/normalized_space"
    for m, data in (("off", gmd), ("on", gmv)):
        name = f"sub-01_ses-M000_T1w_segm-graymatter_space-Ixi549Space_modulated-{m}_probability.nii.gz"
        write_grid_map(caps / name, data)
    code = main([str(bids), str(tmp_path / "out_caps"), "participant", "--participant-label", "01",
                 "--derivatives", str(tmp_path / "caps"), "--models", str(tiny_models), "--skip-bids-validation",
                 "--no-reports"])
    assert code == 0
    rows = read_predictions(next((tmp_path / "out_caps").rglob("*_predictions.tsv")))
    # maps from Clinica/SPM: the preprocessing check passes; only the synthetic-model warning remains
    assert all("preprocessing" not in w for w in rows["warnings"])
    dparsf = tmp_path / "dparsf" / "T1ImgNewSegment" / "sub-02"
    write_grid_map(dparsf / "wc1T1.nii", gmd)
    write_grid_map(dparsf / "mwc1T1.nii", gmv)
    code = main([str(bids), str(tmp_path / "out_dparsf"), "participant", "--participant-label", "02",
                 "--derivatives", str(tmp_path / "dparsf"), "--models", str(tiny_models), "--skip-bids-validation",
                 "--no-reports"])
    assert code == 0
    assert len(read_predictions(next((tmp_path / "out_dparsf").rglob("*_predictions.tsv")))) == 2

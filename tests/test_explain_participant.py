"""``--explain`` at participant level: files, sidecars, atlas summaries, the predictions JSON, the validator."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app import grid
from bids_app.cli.main import main
from bids_app.cli.parser import build_parser, explain_options
from bids_app.explain import atlas as atlas_mod
from bids_app.validation import run_validator

from .conftest import make_bids
from .test_app_end_to_end import write_bids_derivatives

DESCS = {
    f"{m}{model}"
    for model in ("Sex", "AD")
    for m in ("occlusion", "gradcam", "gradcamThrPercentile", "gradcamThrOtsu", "gradcamThrMeanSD")
}


@pytest.fixture(scope="module")
def explained(tmp_path_factory, mni_gm_maps, tiny_models):
    root = tmp_path_factory.mktemp("explain")
    bids = make_bids(root / "bids", ["sub-01"])
    maps = write_bids_derivatives(root / "maps", mni_gm_maps[0], units=["sub-01"])
    out = root / "out"
    code = main(
        [
            str(bids),
            str(out),
            "participant",
            "--preproc",
            "derivatives",
            "--derivatives",
            str(maps),
            "--models",
            str(tiny_models),
            "--no-reports",
            "--skip-bids-validation",
            "--explain",
            "all",
            "--occlusion-cube",
            "27",
            "--occlusion-step",
            "27",
        ]
    )
    return {"out": out, "code": code, "anat": out / "sub-01" / "anat"}


def test_every_map_sidecar_and_summary_is_written(explained):
    assert explained["code"] == 0
    anat = explained["anat"]
    found = {p.name.split("_desc-")[1].split("_")[0] for p in anat.glob("*_explanation.nii.gz")}
    assert found == DESCS
    for desc in DESCS:
        path = anat / f"sub-01_space-IXI549Space_desc-{desc}_explanation.nii.gz"
        img = nib.load(path)
        assert img.shape == grid.SPM_SHAPE and np.allclose(img.affine, grid.SPM_AFFINE)
        assert int(img.header["sform_code"]) == 4
        data = np.asarray(img.dataobj)
        assert np.isfinite(data).all() and np.abs(data).max() > 0
        side = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert side["Model"] in ("test-sex", "test-ad") and side["ModelVersion"] == "0.0.1"
        assert len(side["ModelSha256"]) == (3 if side["ModelTask"] == "ad" else 1)
        assert side["Sources"][0].startswith("bids::sub-01/anat/sub-01_space-IXI549Space_label-GM")
        params = side["Parameters"]
        if desc.startswith("occlusion"):
            assert side["Method"] == "occlusion"
            assert (params["CubeMM"], params["CubeVoxels"], params["StepMM"], params["StepVoxels"]) == (
                27.0,
                18,
                27.0,
                18,
            )
            assert (
                params["BaselineValue"] == 0.0 and 0 < params["WindowPositionsEvaluated"] <= params["WindowPositions"]
            )
        else:
            assert params["Layer"] == "concatenate_3"
        if "Thr" in desc:
            assert side["Threshold"]["Method"] in ("percentile", "otsu", "meansd") and "Value" in side["Threshold"]
        regions = pd.read_csv(anat / f"sub-01_space-IXI549Space_desc-{desc}_regions.tsv", sep="\t")
        rside = json.loads((anat / f"sub-01_space-IXI549Space_desc-{desc}_regions.json").read_text())
        assert list(regions.columns) == [c for c in rside if c in regions.columns] == list(atlas_mod.REGION_COLUMNS)
        if rside["Atlas"] is not None:
            assert len(regions) == 10 and regions["rank"].tolist() == list(range(1, 11))
            assert regions["mean_value"].abs().is_monotonic_decreasing
        else:
            assert "AtlasMissing" in rside


def test_predictions_json_lists_the_explanations(explained):
    side = json.loads((explained["anat"] / "sub-01_predictions.json").read_text())
    entries = side["Explanations"]
    assert {e["Desc"] for e in entries} == DESCS
    for e in entries:
        assert (explained["out"] / e["File"]).is_file() and (explained["out"] / e["Regions"]).is_file()
    assert "score" in side  # the column descriptions are kept


def test_output_passes_the_official_validator(explained):
    report = run_validator(explained["out"])
    assert report.errors == [], "\n".join(map(str, report.errors))


def test_aal_summary_names_real_regions(mni_gm_maps):
    try:
        atlas = atlas_mod.load_atlas()
    except atlas_mod.AtlasUnavailable as exc:
        import os

        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(exc))
    value = np.zeros(grid.SPM_SHAPE, dtype=np.float32)
    hippo = next(i for i, n in atlas.names.items() if n == "Hippocampus_L")
    value[atlas.labels == hippo] = 1.0
    table = atlas_mod.top_regions(value, atlas, n=3)
    assert table.iloc[0]["region"] == "Hippocampus_L" and table.iloc[0]["share_positive"] == pytest.approx(1.0)


def test_missing_atlas_still_writes_maps_and_says_why(tmp_path, monkeypatch, mni_gm_maps, tiny_models):
    monkeypatch.setenv(atlas_mod.ATLAS_ENV, str(tmp_path / "no-atlas"))
    bids = make_bids(tmp_path / "bids", ["sub-01"])
    maps = write_bids_derivatives(tmp_path / "maps", mni_gm_maps[0], units=["sub-01"])
    out = tmp_path / "out"
    code = main(
        [
            str(bids),
            str(out),
            "participant",
            "--preproc",
            "derivatives",
            "--derivatives",
            str(maps),
            "--models",
            str(tiny_models / "sex"),
            "--no-reports",
            "--skip-bids-validation",
            "--explain",
            "gradcam",
        ]
    )
    assert code == 0
    anat = out / "sub-01" / "anat"
    assert (anat / "sub-01_space-IXI549Space_desc-gradcamSex_explanation.nii.gz").is_file()
    rside = json.loads((anat / "sub-01_space-IXI549Space_desc-gradcamSex_regions.json").read_text())
    assert rside["Atlas"] is None and "mricron-data" in rside["AtlasMissing"] and "no-atlas" in rside["AtlasMissing"]
    assert len(pd.read_csv(anat / "sub-01_space-IXI549Space_desc-gradcamSex_regions.tsv", sep="\t")) == 0


def test_cli_defaults_and_bad_values():
    args = build_parser().parse_args(["bids", "out", "participant"])
    assert args.explain == "none" and explain_options(args) is None
    args = build_parser().parse_args(["bids", "out", "participant", "--explain", "occlusion"])
    opts = explain_options(args)
    assert opts.methods == ("occlusion",) and (opts.occlusion_params().cube, opts.occlusion_params().step) == (12, 6)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bids", "out", "participant", "--occlusion-cube", "10"])


def test_demo_sets_explain():
    import argparse

    from bids_app.cli import demo_cmd

    parser = argparse.ArgumentParser()
    demo_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["demo", "out"])
    assert args.explain == "all" and args.occlusion_step == 18.0

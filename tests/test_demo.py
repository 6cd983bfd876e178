"""The bundled demo models of every family and the ``demo`` command's parts.

The full demo (minutes of ANTs preprocessing per T1w) is not run here; its time and group evaluation
are in the README and docs/demo_models.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.cli import demo_cmd
from bids_app.model_input import make_input
from bids_app.models import find_packages, load_package, predict
from bids_app.synth import simulate_dataset, truth_paths, truth_t1w_mni_path
from bids_app.train.shift import SHIFT_ORIGIN
from bids_app.types import GMMaps

#: package folder -> (family, task, head kinds)
EXPECTED = {
    "sex": ("brainimagenet", "sex", ("binary",)),
    "ad": ("brainimagenet", "ad", ("binary",)),
    "cnn_ad": ("cnn", "ad", ("binary",)),
    "liu_mox_cn_mci_ad": ("liu_mox", "cn_mci_ad", ("multiclass",)),
    "sfcn_brain_age": ("sfcn", "brain_age", ("regression",)),
    "regional_ad": ("regional", "ad", ("binary",)),
}


def _family(pkg) -> str:
    return str(pkg.card.get("family", "brainimagenet"))


def test_every_family_is_bundled_small_and_honest() -> None:
    root = demo_cmd.demo_models_dir()
    assert sorted(p.name for p in find_packages(root)) == sorted(EXPECTED) == sorted(demo_cmd.DEMO_PACKAGES)
    # what the repository stores (git compresses): the regional folds hold the AAL label volume, 4.2 MB
    # each on disk but 90 KB compressed (docs/demo_models.md)
    files = [f for f in root.rglob("*") if f.is_file()]
    assert sum(len(gzip.compress(f.read_bytes(), 6)) for f in files) < 2 * 1024**2
    assert sum(f.stat().st_size for f in files if "regional" not in str(f)) < 2 * 1024**2
    for name, (family, task, kinds) in EXPECTED.items():
        pkg = load_package(root / name)
        assert (_family(pkg), pkg.task) == (family, task)
        assert tuple(h.kind for h in pkg.heads) == kinds
        if family != "regional":
            assert sum(f.stat().st_size for f in (root / name).glob("fold*.safetensors")) < 1024**2, name
        assert pkg.trained_on_synthetic and "demo" in pkg.name and pkg.n_folds >= 2
        assert pkg.card["training"]["data"].startswith("trained on synthetic data; not for any real use")
        assert "synthetic" in pkg.card["licence"]
        # trained on the truth carried through the measured ANTs shift (docs/demo_models.md)
        assert pkg.validated_preprocessing == (SHIFT_ORIGIN,)
        metrics = {m["name"]: m for m in pkg.card["metrics"]}
        main = {"binary": "pooled_roc_auc", "multiclass": "pooled_macro_auc", "regression": "pooled_mae"}[kinds[0]]
        assert "leave-sites-out" in metrics[main]["source"]
        assert np.isfinite(metrics[main]["value"])
        if kinds[0] != "regression":
            assert 0.0 <= metrics[main]["value"] <= 1.0
        # the same figures on ANTs-made maps of held-out simulated participants
        ants = [m for m in pkg.card["metrics"] if m["name"].startswith("ants_heldout_")]
        assert ants and all("ANTs-made maps" in m["source"] for m in ants), name


@pytest.fixture(scope="module")
def synthetic_maps(tmp_path_factory) -> GMMaps:
    ds = simulate_dataset(tmp_path_factory.mktemp("demo") / "ds", participants=1, sites=1, seed=123, maps_only=True,
                          t1w_mni=True)
    p = truth_paths(ds, "sub-001")
    load = lambda key: np.asarray(nib.load(str(p[key])).dataobj, np.float32)  # noqa: E731
    t1w_mni = np.asarray(nib.load(str(truth_t1w_mni_path(ds, "sub-001"))).dataobj, np.float32)
    return GMMaps(gmd=load("gmd"), gmv=load("gmv"), t1w_mni=t1w_mni, backend="derivatives",
                  backend_version="", source_files=(p["gmd"],))


def test_every_demo_model_scores_a_synthetic_input_of_its_kind(synthetic_maps: GMMaps) -> None:
    root = demo_cmd.demo_models_dir()
    for name, (_, _, kinds) in EXPECTED.items():
        pkg = load_package(root / name)
        x = make_input(pkg.input_kind, synthetic_maps, dict(pkg.input))
        scores = predict(pkg, x, device="cpu")
        out = scores.heads[0].fold_outputs
        assert np.all(np.isfinite(out)), name
        if kinds[0] == "binary":
            assert np.all((out > 0) & (out < 1)), name
        elif kinds[0] == "multiclass":
            assert out.shape[-1] == 3 and np.allclose(out.sum(-1), 1.0, atol=1e-4), name
        else:  # an age in years, within the simulator's range give or take a poor demo model's error
            assert scores.heads[0].unit == "years" and np.all((out > 30) & (out < 120)), (name, out)


def test_the_truth_t1w_in_mni_space_is_a_skull_stripped_brain(synthetic_maps: GMMaps) -> None:
    from bids_app.grid import MNI1MM_SHAPE
    from bids_app.preproc.existing import SKULL_FRACTION, _wide_brain

    t1 = synthetic_maps.t1w_mni
    assert t1 is not None and t1.shape == MNI1MM_SHAPE
    brain = t1 > 0
    assert 1.2e6 < brain.sum() < 2.2e6  # ml of brain at 1 mm
    assert t1[~_wide_brain()].sum() / t1.sum() < SKULL_FRACTION
    # T1 contrast: where the true GM map is high the T1w is darker than the brain's bright (WM) part
    from bids_app.grid import MNI1MM_AFFINE, SPM_AFFINE
    from bids_app.synth.simulate import _grid_points, _sample

    gm = _sample(synthetic_maps.gmd, SPM_AFFINE, _grid_points(MNI1MM_SHAPE, MNI1MM_AFFINE)).reshape(MNI1MM_SHAPE)
    assert np.median(t1[gm > 0.8]) < 0.8 * np.percentile(t1[brain], 90)


def test_demo_parser_defaults() -> None:
    parser = argparse.ArgumentParser()
    demo_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["demo", "out"])
    assert (args.n_participants, args.nprocs, args.seed, args.mci_fraction) == (4, 2, 37, 0.25)
    assert args.func is demo_cmd.run


def test_the_demo_cohort_has_both_sexes_and_every_diagnosis_and_the_sex_effect() -> None:
    """The defaults' participants give every demo model both classes in the group evaluation."""
    from bids_app.synth.simulate import draw_sites, draw_subjects

    parser = argparse.ArgumentParser()
    demo_cmd.add_parser(parser.add_subparsers())
    a = parser.parse_args(["demo", "out"])
    subjects = draw_subjects(a.n_participants, draw_sites(min(2, a.n_participants), a.seed), a.seed,
                             mci_fraction=a.mci_fraction)
    assert {s.sex for s in subjects} == {"M", "F"}
    assert {s.diagnosis for s in subjects} == {"CN", "MCI", "AD"}
    # the sex models read head size through GM volume: the demo's men carry more GM than its women
    gm = {s.participant_id: (s.sex, s.head_scale**3 * (1 - s.global_gm_loss)) for s in subjects}
    assert min(v for sex, v in gm.values() if sex == "M") > max(v for sex, v in gm.values() if sex == "F"), gm


def test_make_demo_models_script_names_every_package() -> None:
    script = (Path(__file__).parents[1] / "scripts" / "make_demo_models.sh").read_text()
    for name, (family, task, _) in EXPECTED.items():
        assert name in script
        if family != "brainimagenet":
            assert f"--family {family} --task {task}" in script
    card = json.loads((demo_cmd.demo_models_dir() / "sex" / "model.json").read_text())
    assert card["version"] in script


def test_demo_bundle_leaves_out_what_a_maps_only_folder_cannot_feed(tmp_path: Path) -> None:
    """``--models demo`` with ``--preproc derivatives`` on GM maps alone: SFCN is left out, the rest run."""
    from bids_app.preproc.existing import DerivativesBackend
    from bids_app.workflows import check_input_kinds, demo_packages_for

    packages = [load_package(p) for p in find_packages(demo_cmd.demo_models_dir())]
    backend = DerivativesBackend(tmp_path, make_t1w_mni=True)
    kept = demo_packages_for(packages, backend)
    assert sorted(p.input_kind for p in kept) == ["gm_crop2", "gm_crop2", "gm_spm1", "gm_spm1", "gm_spm1"]
    check_input_kinds(kept, backend)  # no refusal
    anat = tmp_path / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-01_space-MNI152NLin2009aSym_res-1_desc-preproc_T1w.nii.gz").write_bytes(b"")
    assert len(demo_packages_for(packages, DerivativesBackend(tmp_path, make_t1w_mni=True))) == len(packages)

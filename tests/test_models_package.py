"""Model packages (save, verify, load, find) and the predictor (folds, precision, determinism)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bids_app.errors import ModelPackageError
from bids_app.models import find_packages, load_package, predict, save_package
from bids_app.models.predict import PRECISIONS
from bids_app.types import ModelScores

from .models_fixtures import demo_card, gm_like_inputs, make_package


@pytest.fixture(scope="module")
def ad_pkg(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("pkgs") / "ad", n_folds=2)


@pytest.fixture(scope="module")
def inputs():
    return gm_like_inputs(2, seed=1)


def test_save_writes_card_with_checksums(ad_pkg):
    card = json.loads((ad_pkg / "model.json").read_text())
    assert [f["file"] for f in card["folds"]] == ["fold0.safetensors", "fold1.safetensors"]
    assert all(len(f["sha256"]) == 64 for f in card["folds"])
    assert card["input"]["shape"] == [2, 96, 120, 86]
    assert card["input"]["crop"] == [[12, 108], [13, 133], [16, 102]]
    assert card["input"]["channels"] == ["GMD", "GMV"]
    assert card["training"]["synthetic"] is True
    assert not list(ad_pkg.glob(".*part*"))  # no temporary files left behind


def test_load_roundtrip(ad_pkg):
    pkg = load_package(ad_pkg)
    assert pkg.name == "demo-ad" and pkg.task == "ad" and pkg.version == "0.1.0"
    assert pkg.positive_label == "AD" and pkg.negative_label == "CN"
    assert pkg.thresholds == {"default": 0.5, "screening": 0.3}
    assert pkg.trained_on_synthetic is True
    assert pkg.validated_preprocessing == ("ants",)
    assert len(pkg.folds) == 2 and len(pkg.sha256) == 2
    assert all(not f.training for f in pkg.folds)
    # fold weights differ and were restored exactly
    w0 = pkg.folds[0].layers["conv3d_1"].weight
    w1 = pkg.folds[1].layers["conv3d_1"].weight
    assert not torch.equal(w0, w1)


def test_predict_scores_all_folds(ad_pkg, inputs):
    pkg = load_package(ad_pkg)
    s = predict(pkg, inputs, precision="fp32")
    assert isinstance(s, ModelScores)
    assert s.fold_scores.shape == (2, 2)
    assert ((s.fold_scores > 0) & (s.fold_scores < 1)).all()
    np.testing.assert_allclose(s.mean, s.fold_scores.mean(axis=1))
    # scores equal the sigmoid of each fold network's logits
    with torch.no_grad():
        logit = pkg.folds[1](torch.from_numpy(inputs[:1]))
    assert abs(float(torch.sigmoid(logit)) - s.fold_scores[0, 1]) < 1e-6
    # a single 4D input is one participant
    one = predict(pkg, inputs[0], precision="fp32")
    np.testing.assert_allclose(one.fold_scores[0], s.fold_scores[0], atol=1e-6)


def test_predict_is_deterministic_on_cpu(ad_pkg, inputs):
    pkg = load_package(ad_pkg)
    a = predict(pkg, inputs, device="cpu").fold_scores
    b = predict(pkg, inputs, device="cpu").fold_scores
    assert np.array_equal(a, b)


@pytest.mark.parametrize("precision,tol", [("fast", 1e-5), ("fused", 1e-5), ("bf16", 1e-2), ("auto", 1e-3)])
def test_precisions_agree_with_fp32(ad_pkg, inputs, precision, tol):
    pkg = load_package(ad_pkg)
    ref = predict(pkg, inputs, precision="fp32").fold_scores
    got = predict(pkg, inputs, precision=precision, batch_size=2).fold_scores
    assert np.abs(got - ref).max() < tol


def test_predict_rejects_bad_arguments(ad_pkg, inputs):
    pkg = load_package(ad_pkg)
    with pytest.raises(ValueError, match=r"model input must have shape N x 2 x 96 x 120 x 86"):
        predict(pkg, inputs[:, :, :95])
    with pytest.raises(ValueError, match=re.escape(f"precision must be one of {', '.join(PRECISIONS)}; got 'fp64'")):
        predict(pkg, inputs, precision="fp64")
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        predict(pkg, inputs, batch_size=0)
    bad = inputs.copy()
    bad[0, 0, 50, 50, 50] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        predict(pkg, bad)


def test_tampered_weights_are_refused(tmp_path):
    pkg = make_package(tmp_path / "ad", n_folds=1)
    f = pkg / "fold0.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match=r"fold0\.safetensors: sha256 .* does not match model.json"):
        load_package(pkg)


def test_missing_weights_file_is_refused(tmp_path):
    pkg = make_package(tmp_path / "ad", n_folds=2)
    (pkg / "fold1.safetensors").unlink()
    with pytest.raises(ModelPackageError, match=r"fold1\.safetensors: weights file listed in model.json is missing"):
        load_package(pkg)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda c: c["input"].update(crop=[[0, 96], [13, 133], [16, 102]]), "input crop"),
        (lambda c: c["input"].update(channels=["GMV", "GMD"]), "input channels"),
        (lambda c: c["input"]["grid"].update(affine=np.eye(4).tolist()), "SPM 1.5 mm affine"),
        (lambda c: c.update(task="age"), "task must be one of"),
        (lambda c: c["output"].update(positive_label="CN"), "positive_label='AD'"),
        (lambda c: c["thresholds"].update(default=1.5), "threshold 'default' must be a number in"),
        (lambda c: c.pop("licence"), "missing required key 'licence'"),
        (lambda c: c["architecture"].update(name="vgg"), "unknown architecture 'vgg'"),
    ],
)
def test_bad_cards_are_refused(tmp_path, edit, match):
    """Schema-1 cards (the demo package as written before schema 2, tests/data/schema1_packages) keep their checks."""
    pkg = tmp_path / "ad"
    shutil.copytree(Path(__file__).resolve().parent / "data" / "schema1_packages" / "ad", pkg)
    card = json.loads((pkg / "model.json").read_text())
    edit(card)
    (pkg / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelPackageError, match=match) as info:
        load_package(pkg)
    assert "model.json" in str(info.value)


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path):
    pkg = make_package(tmp_path / "ad", n_folds=1)
    card = json.loads((pkg / "model.json").read_text())
    card["architecture"]["params"]["width"] = 0.25
    (pkg / "model.json").write_text(json.dumps(card))
    # the card pins itself through its weights, so the edit is caught before the tensor shapes are
    with pytest.raises(ModelPackageError, match=r"model\.json: the card was edited after the weights were written"):
        load_package(pkg)


def test_save_refuses_mismatched_state_dict(tmp_path):
    card = demo_card()
    with pytest.raises(ValueError, match="does not fit irv2_ad_optimised"):
        save_package(tmp_path / "x", card, [{"layers.conv3d_1.weight": torch.zeros(1)}])
    assert not (tmp_path / "x" / "model.json").exists()


def test_not_a_package(tmp_path):
    with pytest.raises(ModelPackageError, match=r"no model\.json here"):
        load_package(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelPackageError, match="not valid JSON"):
        load_package(tmp_path)


def test_find_packages(tmp_path):
    make_package(tmp_path / "models" / "sex", task="sex", n_folds=1, architecture="irv2_sex")
    make_package(tmp_path / "models" / "ad", n_folds=1)
    (tmp_path / "models" / "empty").mkdir()
    assert find_packages(tmp_path / "models") == [tmp_path / "models" / "ad", tmp_path / "models" / "sex"]
    assert find_packages(tmp_path / "nothing") == []


def test_float16_package_roundtrip(tmp_path, inputs):
    card = demo_card()
    ref = make_package(tmp_path / "a", n_folds=1)
    state = load_package(ref).folds[0].state_dict()
    half = save_package(tmp_path / "b", card, [state], dtype=torch.float16)
    assert json.loads((half / "model.json").read_text())["weights_dtype"] == "float16"
    a = predict(load_package(ref), inputs[:1], precision="fp32").fold_scores
    b = predict(load_package(half), inputs[:1], precision="fp32").fold_scores
    assert np.abs(a - b).max() < 5e-3

"""``vbm-predict models import-keras / score / info`` through the subcommand module."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bids_app.cli import models_cmd
from bids_app.errors import InputDataError, ModelPackageError, NoInputError
from bids_app.models import load_package, predict

from .models_fixtures import gm_like_inputs, make_package

ROOT = Path(__file__).resolve().parents[1]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vbm-predict")
    sub = parser.add_subparsers(dest="command")
    models_cmd.add_parser(sub)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("cli") / "ad", n_folds=2)


def test_info_prints_card_with_parameter_counts(pkg, capsys):
    assert models_cmd.run(parse(["models", "info", str(pkg)])) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "demo-ad" and out["task"] == "ad"
    p = out["parameters"]
    assert p["folds"] == 2
    assert p["total_per_fold"] == p["trainable_per_fold"] + p["non_trainable_per_fold"]
    assert p["non_trainable_per_fold"] > 0  # BN moving statistics, as Keras counts them


@pytest.mark.parametrize("channels_last", [False, True])
def test_score_prints_per_fold_and_mean(pkg, tmp_path, capsys, channels_last):
    x = gm_like_inputs(2, seed=4)
    arr = np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1)) if channels_last else x
    np.save(tmp_path / "x.npy", arr)
    argv = ["models", "score", str(pkg), "--input", str(tmp_path / "x.npy"), "--precision", "fp32"]
    if channels_last:
        argv.append("--channels-last")
    assert models_cmd.run(parse(argv)) == 0
    out = json.loads(capsys.readouterr().out)
    ref = predict(load_package(pkg), x, precision="fp32")
    assert out["folds"] == 2 and len(out["scores"]) == 2
    for i, row in enumerate(out["scores"]):
        assert row["folds"] == pytest.approx(list(ref.fold_scores[i]), abs=1e-7)
        assert row["mean"] == pytest.approx(float(ref.mean[i]), abs=1e-7)


def test_score_refuses_pickled_and_misshaped_arrays(pkg, tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputDataError, match=r"obj\.npy: not a readable \.npy array without pickles"):
        models_cmd.run(parse(["models", "score", str(pkg), "--input", str(tmp_path / "obj.npy")]))
    np.save(tmp_path / "bad.npy", np.zeros((1, 2, 10, 10, 10), dtype=np.float32))
    with pytest.raises(InputDataError, match=r"bad\.npy: model input must have shape"):
        models_cmd.run(parse(["models", "score", str(pkg), "--input", str(tmp_path / "bad.npy")]))
    with pytest.raises(InputDataError, match="--channels-last expects"):
        models_cmd.run(parse(["models", "score", str(pkg), "--input", str(tmp_path / "bad.npy"), "--channels-last"]))
    with pytest.raises(NoInputError, match="input array not found"):
        models_cmd.run(parse(["models", "score", str(pkg), "--input", str(tmp_path / "none.npy")]))


def test_info_on_a_broken_package(tmp_path):
    with pytest.raises(ModelPackageError, match=r"no model\.json here"):
        models_cmd.run(parse(["models", "info", str(tmp_path)]))


def test_usage_errors_exit_through_argparse():
    with pytest.raises(SystemExit):
        parse(["models", "import-keras", "a.h5", "--task", "age", "--out", "x"])
    with pytest.raises(SystemExit):
        parse(["models", "score", "pkg", "--input", "x.npy", "--batch-size", "0"])


def test_import_keras_command(tmp_path, capsys):
    keras = pytest.importorskip("tf_keras")
    from .keras_reference import build_keras, randomise_bn

    m = build_keras(keras, "irv2_ad_optimised", width=0.125, seed=5)
    randomise_bn(m, seed=6)
    m.save(tmp_path / "f0.h5")
    argv = ["models", "import-keras", str(tmp_path / "f0.h5"), "--task", "ad", "--out", str(tmp_path / "pkg"),
            "--name", "mine", "--version", "3", "--synthetic", "--preprocessing", "ants"]
    assert models_cmd.run(parse(argv)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["architecture"] == "irv2_ad_optimised" and out["name"] == "mine"
    p = load_package(tmp_path / "pkg")
    assert p.trained_on_synthetic and p.validated_preprocessing == ("ants",) and p.version == "3"
    with pytest.raises(NoInputError, match="Keras H5 file not found"):
        models_cmd.run(parse(["models", "import-keras", str(tmp_path / "nope.h5"), "--task", "ad",
                              "--out", str(tmp_path / "x")]))


def test_convert_weights_script_fails_loudly_on_a_missing_file(tmp_path):
    res = subprocess.run(["bash", str(ROOT / "docker" / "convert_weights.sh"), str(tmp_path), str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert "published weights file missing or empty" in res.stderr
    assert "20200427_Phase4_FromScratch_Gender_IncepResN_lr01_AllIn.h5" in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_convert_weights_script_builds_both_packages(tmp_path):
    keras = pytest.importorskip("tf_keras")
    from .keras_reference import build_keras, randomise_bn, to_keras224

    src = tmp_path / "tf"
    src.mkdir()
    names = ["20200427_Phase4_FromScratch_Gender_IncepResN_lr01_AllIn.h5"] + [
        f"20200504_Phase4_Trans_AD_IncepResN_lr0003_Lfso_Fold{k}.h5" for k in range(5)
    ]
    for i, name in enumerate(names):
        arch = "irv2_sex" if i == 0 else "irv2_ad_optimised"
        m = build_keras(keras, arch, width=0.0625, blocks=(1, 1, 1), seed=i)
        randomise_bn(m, seed=i)
        m.save(tmp_path / "tmp.h5")
        to_keras224(tmp_path / "tmp.h5", src / name)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHON=os.sys.executable)
    res = subprocess.run(["bash", str(ROOT / "docker" / "convert_weights.sh"), str(src), str(tmp_path / "models")],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    sex = load_package(tmp_path / "models" / "brainimagenet-sex")
    ad = load_package(tmp_path / "models" / "brainimagenet-ad")
    assert sex.architecture == "irv2_sex" and len(sex.folds) == 1
    assert ad.architecture == "irv2_ad_optimised" and len(ad.folds) == 5
    assert ad.validated_preprocessing == ("clinica",) and "research purpose only" in ad.card["licence"]
    sums = (tmp_path / "models" / "SOURCE_SHA256SUMS").read_text()
    assert all(n in sums for n in names)
    card = json.loads((tmp_path / "models" / "brainimagenet-ad" / "model.json").read_text())
    assert card["provenance"]["imported_from"][0]["sha256"] in sums

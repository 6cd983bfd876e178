"""The Keras importer, proven against Keras itself.

The same networks are built in tf-keras (Keras 2 API on TensorFlow 2), in Keras 3, and as files
rewritten into the Keras 2.2.4 layout of the published models; each is saved as a full-model H5
file, imported with h5py only, and its sigmoid scores compared with Keras' own to 1e-5.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from bids_app.errors import ModelPackageError
from bids_app.models import load_package, predict
from bids_app.models.keras_import import (
    KerasImportError,
    identify_architecture,
    import_keras,
    read_keras_h5,
)

from .keras_reference import build_keras, randomise_bn, to_keras224
from .models_fixtures import gm_like_inputs

h5py = pytest.importorskip("h5py")

SEX_SMALL = {"width": 0.125, "blocks": (1, 1, 2), "input_spatial": (48, 60, 43)}
AD_SMALL = {"width": 0.125, "input_spatial": (72, 80, 72)}


def _tfk():
    return pytest.importorskip("tf_keras")


def _k3():
    keras = pytest.importorskip("keras")
    if not keras.__version__.startswith("3"):
        pytest.skip("Keras 3 not installed")
    return keras


def _keras_scores(model, x_cl: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x_cl, verbose=0, batch_size=1), dtype=np.float64).ravel()


def _our_scores(path, x_cl: np.ndarray) -> np.ndarray:
    net = read_keras_h5(path).network()
    with torch.no_grad():
        logits = net(torch.from_numpy(np.ascontiguousarray(x_cl.transpose(0, 4, 1, 2, 3))))
    return torch.sigmoid(logits).double().numpy()


def _save(keras, model, path) -> None:
    if keras.__version__.startswith("3"):
        keras.saving.save_model(model, path)
    else:
        model.save(path)


def _inputs(spatial, n=2, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n, *spatial, 2), dtype=np.float32)


@pytest.fixture(scope="module")
def tf_files(tmp_path_factory):
    keras = _tfk()
    d = tmp_path_factory.mktemp("tfk")
    out = {}
    for arch, kw in (("irv2_sex", SEX_SMALL), ("irv2_ad_optimised", AD_SMALL), ("irv2_ad_intact", SEX_SMALL)):
        m = build_keras(keras, arch, seed=1, **kw)
        randomise_bn(m, seed=2)
        p = d / f"{arch}.h5"
        _save(keras, m, str(p))
        x = _inputs(kw["input_spatial"])
        out[arch] = (p, x, _keras_scores(m, x))
    return out


@pytest.mark.parametrize("arch", ["irv2_sex", "irv2_ad_optimised", "irv2_ad_intact"])
def test_tf_keras_files_import_exactly(tf_files, arch):
    path, x, ref = tf_files[arch]
    got = _our_scores(path, x)
    assert np.abs(got - ref).max() < 1e-5
    km = read_keras_h5(path)
    assert km.keras_version.startswith("2.")
    name, params, _ = identify_architecture(km, task="sex" if arch == "irv2_sex" else "ad")
    assert name == arch
    assert params["width"] == 0.125


@pytest.mark.parametrize("arch", ["irv2_sex", "irv2_ad_optimised"])
def test_keras_224_layout_imports_exactly(tf_files, tmp_path, arch):
    src, x, ref = tf_files[arch]
    dst = tmp_path / "k224.h5"
    to_keras224(src, dst)
    km = read_keras_h5(dst)
    assert km.keras_version == "2.2.4"
    assert km.nodes[0].name == "input_1"
    # Keras 2.2.4 numbers auto names from 1: no bare "conv3d" / "activation" as tf-keras writes
    assert not any(n.name in ("conv3d", "batch_normalization", "activation", "concatenate", "dense") for n in km.nodes)
    assert np.abs(_our_scores(dst, x) - ref).max() < 1e-5
    assert identify_architecture(km, task="sex" if arch == "irv2_sex" else "ad")[0] == arch


@pytest.mark.parametrize("arch,kw", [("irv2_sex", SEX_SMALL), ("irv2_ad_optimised", AD_SMALL)])
def test_keras3_files_import_exactly(tmp_path, arch, kw):
    keras = _k3()
    m = build_keras(keras, arch, seed=3, **kw)
    randomise_bn(m, seed=4)
    p = tmp_path / "m.h5"
    _save(keras, m, str(p))
    x = _inputs(kw["input_spatial"], seed=5)
    ref = _keras_scores(m, x)
    assert np.abs(_our_scores(p, x) - ref).max() < 1e-5
    km = read_keras_h5(p)
    assert km.keras_version.startswith("3.")
    assert identify_architecture(km, task="sex" if arch == "irv2_sex" else "ad")[0] == arch


def test_import_builds_a_package_that_scores_like_keras(tmp_path):
    keras = _tfk()
    files, refs = [], []
    x = gm_like_inputs(2, seed=3)
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1))
    for k in range(2):
        m = build_keras(keras, "irv2_ad_optimised", width=0.125, seed=10 + k)
        randomise_bn(m, seed=20 + k)
        p = tmp_path / f"fold{k}.h5"
        _save(keras, m, str(p))
        files.append(p)
        refs.append(_keras_scores(m, x_cl))
    pkg_dir = import_keras(files, task="ad", out_dir=tmp_path / "pkg", name="test-ad", version="1.2.3")
    card = json.loads((pkg_dir / "model.json").read_text())
    assert card["architecture"]["name"] == "irv2_ad_optimised"
    assert card["training"]["synthetic"] is False and card["training"]["preprocessing"] == []
    assert [e["file"] for e in card["provenance"]["imported_from"]] == ["fold0.h5", "fold1.h5"]
    pkg = load_package(pkg_dir)
    s = predict(pkg, x, precision="fp32")
    assert np.abs(s.fold_scores - np.stack(refs, axis=1)).max() < 1e-5
    fast = predict(pkg, x).fold_scores
    assert np.abs(fast - np.stack(refs, axis=1)).max() < 1e-3


def test_folds_of_different_networks_are_refused(tf_files, tmp_path):
    keras = _tfk()
    a = build_keras(keras, "irv2_ad_optimised", width=0.125, seed=1)
    b = build_keras(keras, "irv2_ad_optimised", width=0.25, seed=1)
    _save(keras, a, str(tmp_path / "a.h5"))
    _save(keras, b, str(tmp_path / "b.h5"))
    with pytest.raises(KerasImportError, match="all folds must be the same network"):
        import_keras([tmp_path / "a.h5", tmp_path / "b.h5"], task="ad", out_dir=tmp_path / "pkg")


def test_unknown_graph_is_kept_as_keras_graph(tmp_path):
    keras = _tfk()
    L = keras.layers
    inp = L.Input((96, 120, 86, 2))
    x = L.Conv3D(4, 3, strides=2, padding="same")(inp)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    y = L.AveragePooling3D(3, strides=2, padding="same")(x)
    z = L.MaxPooling3D(2, padding="same")(x)
    x = L.Add()([y, z])
    x = L.MaxPooling3D(4)(x)
    x = L.Flatten()(x)
    out = L.Dense(1, activation="sigmoid")(x)
    m = keras.Model(inp, out)
    randomise_bn(m)
    p = tmp_path / "odd.h5"
    m.save(p)
    xin = gm_like_inputs(1, seed=7)
    ref = _keras_scores(m, np.ascontiguousarray(xin.transpose(0, 2, 3, 4, 1)))
    pkg = import_keras([p], task="sex", out_dir=tmp_path / "pkg")
    card = json.loads((pkg / "model.json").read_text())
    assert card["architecture"]["name"] == "keras_graph"
    got = predict(load_package(pkg), xin, precision="fp32").fold_scores[:, 0]
    assert np.abs(got - ref).max() < 1e-5


# ----------------------------------------------------------------------------- refusals
def _tiny(keras, extra=None):
    L = keras.layers
    inp = L.Input((8, 8, 8, 2))
    x = L.Conv3D(2, 3)(inp)
    if extra is not None:
        x = extra(x)
    x = L.GlobalAveragePooling3D()(x)
    out = L.Dense(1, activation="sigmoid")(x)
    return keras.Model(inp, out)


def test_unknown_layer_is_refused(tmp_path):
    keras = _tfk()
    m = _tiny(keras, keras.layers.LayerNormalization(name="ln"))
    m.save(tmp_path / "m.h5")
    with pytest.raises(KerasImportError, match=r"m\.h5: layer 'ln' of class 'LayerNormalization' is not supported"):
        read_keras_h5(tmp_path / "m.h5")


def test_other_lambda_is_refused(tmp_path):
    keras = _tfk()
    m = _tiny(keras, keras.layers.Lambda(lambda t, k: t * k, arguments={"k": 2.0}, name="times"))
    m.save(tmp_path / "m.h5")
    with pytest.raises(KerasImportError, match=r"Lambda layer 'times' is not the reference residual Lambda"):
        read_keras_h5(tmp_path / "m.h5")


def test_unsupported_option_is_refused(tmp_path):
    keras = _tfk()
    m = _tiny(keras, keras.layers.Activation("softmax", name="sm"))
    m.save(tmp_path / "m.h5")
    with pytest.raises(KerasImportError, match=r"layer 'sm': activation 'softmax' is not supported"):
        read_keras_h5(tmp_path / "m.h5")


def _edit_copy(src, dst, fn):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        fn(f)
    return dst


def _conv_group(f, name="conv3d_1"):
    names = [n for n in f["model_weights"].attrs["layer_names"] if str(n).startswith("conv3d")]
    return f["model_weights"][names[0]]


def test_missing_weight_is_refused(tf_files, tmp_path):
    src = tf_files["irv2_ad_optimised"][0]

    def drop(f):
        g = f["model_weights"]["conv1_bn"]
        names = [n for n in g.attrs["weight_names"] if "moving_variance" not in str(n)]
        for n in list(g.attrs["weight_names"]):
            if "moving_variance" in str(n):
                del g[n]
        g.attrs["weight_names"] = names

    p = _edit_copy(src, tmp_path / "m.h5", drop)
    with pytest.raises(KerasImportError, match=r"layer 'conv1_bn': missing weight 'moving_variance'"):
        read_keras_h5(p)


def test_wrong_shape_is_refused(tf_files, tmp_path):
    src = tf_files["irv2_ad_optimised"][0]

    def reshape(f):
        g = f["model_weights"]["conv2"]
        wname = next(n for n in g.attrs["weight_names"] if "kernel" in str(n))
        arr = g[wname][()]
        del g[wname]
        g.create_dataset(wname, data=arr[:2])

    p = _edit_copy(src, tmp_path / "m.h5", reshape)
    expected = r"layer 'conv2': weight 'kernel' has shape \(2, 3, 3, 32, 32\), expected \(3, 3, 3, 32, 32\)"
    with pytest.raises(KerasImportError, match=expected):
        read_keras_h5(p)


def test_extra_weight_is_refused(tf_files, tmp_path):
    src = tf_files["irv2_ad_optimised"][0]

    def add(f):
        g = f["model_weights"]["conv2"]
        g.create_dataset("conv2/gamma:0", data=np.ones(32, dtype=np.float32))
        g.attrs["weight_names"] = list(g.attrs["weight_names"]) + ["conv2/gamma:0"]

    p = _edit_copy(src, tmp_path / "m.h5", add)
    with pytest.raises(KerasImportError, match=r"layer 'conv2': stored weights \['gamma'\] were not used"):
        read_keras_h5(p)


def test_weights_only_file_is_refused(tf_files, tmp_path):
    p = _edit_copy(tf_files["irv2_ad_optimised"][0], tmp_path / "m.h5", lambda f: f.attrs.__delitem__("model_config"))
    with pytest.raises(ModelPackageError, match="no model_config attribute"):
        read_keras_h5(p)


def test_wrong_input_shape_for_a_package_is_refused(tf_files, tmp_path):
    with pytest.raises(KerasImportError, match=r"input shape \(C, D, H, W\) \(2, 48, 60, 43\) is not the model input"):
        import_keras([tf_files["irv2_sex"][0]], task="sex", out_dir=tmp_path / "pkg")


# ----------------------------------------------------------------------------- full size
@pytest.mark.slow
def test_full_size_sex_network_matches_tf_keras(tmp_path):
    keras = _tfk()
    m = build_keras(keras, "irv2_sex", seed=0)
    randomise_bn(m, seed=1)
    assert m.count_params() == 54_054_623
    p = tmp_path / "sex.h5"
    m.save(p)
    x = gm_like_inputs(1, seed=11)
    ref = _keras_scores(m, np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1)))
    del m
    keras.backend.clear_session()
    pkg = load_package(import_keras([p], task="sex", out_dir=tmp_path / "pkg"))
    assert pkg.architecture == "irv2_sex" and pkg.n_parameters == 54_054_623
    got = predict(pkg, x, precision="fp32").fold_scores[:, 0]
    assert np.abs(got - ref).max() < 1e-5


@pytest.fixture(scope="module")
def full_size_ad_folds(tmp_path_factory):
    """Five full-size AD networks built in tf-keras (tf layout H5 files) and their Keras scores on one
    input: the 2020 ensemble test and the 2021 generation test read the same files (each network
    takes tens of seconds to build and score on CI's two cores)."""
    keras = _tfk()
    root = tmp_path_factory.mktemp("full_size_ad")
    x = gm_like_inputs(1, seed=12)
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1))
    files, refs = [], []
    for k in range(5):
        m = build_keras(keras, "irv2_ad_optimised", seed=100 + k)
        randomise_bn(m, seed=200 + k)
        assert m.count_params() == 10_166_049
        files.append(root / f"tf_fold{k}.h5")
        m.save(files[-1])
        refs.append(_keras_scores(m, x_cl))
        del m
        keras.backend.clear_session()
    return {"x": x, "files": files, "refs": refs}


@pytest.mark.slow
def test_full_size_ad_ensemble_in_keras_224_layout_matches_tf_keras(full_size_ad_folds, tmp_path):
    x, refs, files = full_size_ad_folds["x"], full_size_ad_folds["refs"], []
    for k, tf_file in enumerate(full_size_ad_folds["files"]):
        p = tmp_path / f"20200504_Phase4_Trans_AD_IncepResN_lr0003_Lfso_Fold{k}.h5"
        to_keras224(tf_file, p)
        files.append(p)
    pkg_dir = import_keras(files, task="ad", out_dir=tmp_path / "pkg")
    pkg = load_package(pkg_dir)
    # recognised by the published file names: the published card, SPM-validated only
    assert pkg.name == "brainimagenet-ad" and pkg.validated_preprocessing == ("clinica",)
    assert pkg.thresholds == {"default": 0.5, "screening": 0.3} and not pkg.trained_on_synthetic
    ref = np.stack(refs, axis=1)
    got = predict(pkg, x, precision="fp32")
    assert np.abs(got.fold_scores - ref).max() < 1e-5
    assert np.abs(got.mean - ref.mean(axis=1)).max() < 1e-5
    assert np.abs(predict(pkg, x).mean - ref.mean(axis=1)).max() < 1e-3


@pytest.mark.slow
def test_full_size_2021_simplified_ad_network_matches_tf_keras(full_size_ad_folds, tmp_path):
    """The AD generation the authors' script loads since 2021 (sex stem up to StemEnd + conv/pool head),
    a full-size tf-keras network (tf layout) under its published name: imported, recognised, and scored alike."""
    p = tmp_path / "20210106_0_Phase4_Trans_AD_IncepResN_lr0003_Lfso_Fold0.h5"
    shutil.copyfile(full_size_ad_folds["files"][0], p)
    pkg_dir = import_keras([p], task="ad", out_dir=tmp_path / "pkg")
    card = json.loads((pkg_dir / "model.json").read_text())
    assert card["provenance"]["generation"]["id"] == "2021"
    pkg = load_package(pkg_dir)
    assert (pkg.name, pkg.version, pkg.architecture) == ("brainimagenet-ad", "2021.01.06", "irv2_ad_optimised")
    got = predict(pkg, full_size_ad_folds["x"], precision="fp32").fold_scores[:, 0]
    assert np.abs(got - full_size_ad_folds["refs"][0]).max() < 1e-5


def _published_names(generation: str) -> dict[str, list[str]]:
    from bids_app.models.keras_import import published_info

    return next(g["files"] for g in published_info()["generations"] if g["id"] == generation)


def test_convert_weights_takes_the_newest_complete_generation_and_the_mask(tmp_path):
    """docker/convert_weights.sh on a source folder laid out like the authors' image (small networks
    under the published names): the 2021 AD folds win over a complete 2020 set, the conversion record
    names the generation, the mask is kept, and the model input then uses that mask."""
    import subprocess
    import sys
    from pathlib import Path

    import nibabel as nib

    from bids_app import grid

    keras = _tfk()
    src = tmp_path / "tf"
    src.mkdir()
    sex = build_keras(keras, "irv2_sex", width=0.125, blocks=(1, 1, 2), seed=1)
    sex.save(src / _published_names("2021")["sex"][0])
    ad = build_keras(keras, "irv2_ad_optimised", width=0.125, seed=2)
    for gen in ("2021", "2020"):
        for name in _published_names(gen)["ad"]:
            ad.save(src / name)
    keras.backend.clear_session()
    # the mask as an Analyze pair on the model grid, smaller than the derived one
    mask = np.zeros(grid.SPM_SHAPE, dtype=np.uint8)
    mask[20:100, 20:125, 20:100] = 1
    nib.save(nib.AnalyzeImage(mask, grid.SPM_AFFINE), src / "Reslice_BrainMask_05_91x109x91.img")
    out = tmp_path / "models"
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(repo)}
    res = subprocess.run(["bash", str(repo / "docker" / "convert_weights.sh"), str(src), str(out)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    record = json.loads((out / "CONVERSION.json").read_text())
    assert record["generation"] == "2021"
    assert sorted(record["source_sha256"]) == sorted(_published_names("2021")["sex"] + _published_names("2021")["ad"])
    assert set(record["mask"]) == {"Reslice_BrainMask_05_91x109x91.hdr", "Reslice_BrainMask_05_91x109x91.img"}
    ad_pkg = load_package(out / "brainimagenet-ad")
    assert (ad_pkg.version, len(ad_pkg.folds)) == ("2021.01.06", 5)
    assert load_package(out / "brainimagenet-sex").version == "2020.04.27"

    os.environ[grid.BRAIN_MASK_ENV] = str(out / "brain_mask" / "Reslice_BrainMask_05_91x109x91.hdr")
    try:
        used, provenance = grid.model_input_mask()
    finally:
        del os.environ[grid.BRAIN_MASK_ENV]
    assert provenance["Mask"] == "published" and int(used.sum()) == int(mask.sum())
    assert np.array_equal(used, mask.astype(bool))
    derived, dprov = grid.model_input_mask()
    assert dprov["Mask"] == "derived" and not np.array_equal(derived, used)


def test_convert_weights_fails_loudly_without_a_complete_generation(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    src = tmp_path / "tf"
    src.mkdir()
    (src / _published_names("2020")["ad"][0]).write_bytes(b"x")
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(repo)}
    res = subprocess.run(["bash", str(repo / "docker" / "convert_weights.sh"), str(src), str(tmp_path / "out")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "no complete generation of the published weights" in res.stderr
    assert "20210106_0_Phase4_Trans_AD_IncepResN_lr0003_Lfso_Fold0.h5" in res.stderr

"""Schema-2 model packages: every task kind (binary, multiclass, regression, multi-task) and input kind.

The networks are tiny real torch modules registered under a test-only architecture name through
``bids_app.models.package.EXTRA_ARCHITECTURES`` (the other families' networks live in
``bids_app.models.architectures``); everything else (writer, loader, predictor, engines, rows) is
the app's own code.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from bids_app import RESEARCH_USE_NOTICE
from bids_app.derivatives import prediction_rows, read_predictions, write_predictions
from bids_app.errors import ModelPackageError
from bids_app.models import load_package, predict, save_package
from bids_app.models import package as package_mod
from bids_app.models.engines import TOLERANCE, candidates, prepare_engine
from bids_app.models.export import reference_input_for
from bids_app.models.package import input_spec, upgrade_card, validate_card
from bids_app.types import GMMaps, QCResult, T1wUnit

DEMO = Path(__file__).resolve().parents[1] / "bids_app" / "data" / "demo_models"
SCHEMA1 = Path(__file__).resolve().parent / "data" / "schema1_packages"  # the demo packages as written before schema 2


class TinyHeads(nn.Module):
    """conv (stride 4) + ReLU + 2^3 average pool + linear: (N, n_outputs) raw outputs."""

    def __init__(self, n_outputs: int, in_channels: int = 1, input_shape: Any = None) -> None:
        super().__init__()
        self.n_outputs = int(n_outputs)
        self.conv = nn.Conv3d(in_channels, 4, kernel_size=3, stride=4)
        self.pool = nn.AdaptiveAvgPool3d(2)
        self.fc = nn.Linear(32, self.n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


@pytest.fixture(scope="module", autouse=True)
def tiny_architecture():
    package_mod.EXTRA_ARCHITECTURES["tiny_heads"] = TinyHeads
    yield
    package_mod.EXTRA_ARCHITECTURES.pop("tiny_heads", None)


AD_HEAD = {"name": "ad", "kind": "binary", "target": "diagnosis", "outputs": [0, 1], "labels": ["CN", "AD"],
           "thresholds": {"default": 0.5, "screening": 0.3}}
DX_HEAD = {"name": "diagnosis", "kind": "multiclass", "target": "diagnosis", "outputs": [0, 3],
           "labels": ["CN", "MCI", "AD"]}
AGE_HEAD = {"name": "age", "kind": "regression", "target": "age", "outputs": [0, 1], "unit": "years",
            "scale": 10.0, "offset": 60.0}
#: task kind -> (family, task, input kind, heads, n_outputs)
KINDS: dict[str, tuple[str, str, str, list[dict[str, Any]], int]] = {
    "binary": ("cnn", "ad", "gm_spm1", [AD_HEAD], 1),
    "multiclass": ("liu_mox", "cn_mci_ad", "gm_spm1", [DX_HEAD], 3),
    "regression": ("sfcn", "brain_age", "t1w_mni1mm", [AGE_HEAD], 1),
    "multitask": ("sfcn", "multitask", "t1w_mni1mm", [
        AGE_HEAD,
        {"name": "sex", "kind": "binary", "target": "sex", "outputs": [1, 2], "labels": ["female", "male"],
         "thresholds": {"default": 0.5}},
        {**DX_HEAD, "outputs": [2, 5]},
    ], 6),
}


def v2_card(kind: str, **over: Any) -> dict[str, Any]:
    family, task, input_kind, heads, n_out = KINDS[kind]
    spec = input_spec(mask="none" if input_kind == "gm_spm1" else "brain", kind=input_kind)
    card = {
        "schema_version": 2, "name": f"test-{task}", "family": family, "task": task, "version": "0.1.0",
        "architecture": {"name": "tiny_heads",
                         "params": {"n_outputs": n_out, "in_channels": 1, "input_shape": spec["shape"]}},
        "input": spec, "heads": json.loads(json.dumps(heads)),
        "training": {"data": "random weights for tests", "synthetic": True, "preprocessing": ["ants"]},
        "metrics": [], "licence": "Apache-2.0",
    }
    card.update(over)
    return card


def tiny_states(card: dict[str, Any], n_folds: int = 2) -> list[nn.Module]:
    nets = []
    for k in range(n_folds):
        torch.manual_seed(10 + k)
        nets.append(package_mod.network_from_architecture(card["architecture"]).eval())
    return nets


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return {kind: reference_input_for(input_spec(mask="none" if kind == "gm_spm1" else "brain", kind=kind),
                                      seed=3, n=2)
            for kind in ("gm_spm1", "t1w_mni1mm")}


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, tuple[Path, list[nn.Module]]]:
    root = tmp_path_factory.mktemp("heads")
    out = {}
    for kind in KINDS:
        card = v2_card(kind)
        nets = tiny_states(card)
        out[kind] = (save_package(root / kind, card, [n.state_dict() for n in nets]), nets)
    return out


def test_reference_inputs_per_kind(inputs):
    spm = inputs["gm_spm1"]
    assert spm.shape == (2, 1, 121, 145, 121) and spm.dtype == np.float32 and np.isfinite(spm).all()
    assert 0 < spm.max() <= 1.5 and not np.array_equal(spm[0], spm[1])
    t1 = inputs["t1w_mni1mm"]
    assert t1.shape == (2, 1, 160, 192, 160) and np.isfinite(t1).all()
    brain = t1[0, 0] > 0
    assert brain.mean() > 0.2  # the crop holds the brain
    assert 0.9 < t1[0, 0][brain].mean() < 1.1  # divided by its mean over the brain


def _expected(nets: list[nn.Module], x: np.ndarray, heads: list[dict[str, Any]]) -> list[np.ndarray]:
    """N x F x K per head, computed independently from the networks kept in memory."""
    with torch.no_grad():
        raw = torch.stack([n(torch.from_numpy(x)) for n in nets], dim=1)  # N x F x K
    out = []
    for h in heads:
        a, b = h["outputs"]
        t = raw[..., a:b]
        if h["kind"] == "binary":
            out.append(torch.sigmoid(t).double().numpy())
        elif h["kind"] == "multiclass":
            out.append(torch.softmax(t, dim=-1).double().numpy())
        else:
            out.append((t * h["scale"] + h["offset"]).double().numpy())
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_task_kind_round_trips(packages, inputs, kind):
    path, nets = packages[kind]
    family, task, input_kind, heads, _ = KINDS[kind]
    card = json.loads((path / "model.json").read_text())
    assert card["schema_version"] == 2 and card["heads"] == heads and card["input"]["kind"] == input_kind
    pkg = load_package(path)
    assert (pkg.family, pkg.task, pkg.input_kind, pkg.n_folds) == (family, task, input_kind, 2)
    assert [h.name for h in pkg.heads] == [h["name"] for h in heads]
    assert pkg.input_shape == tuple(card["input"]["shape"])
    x = inputs[input_kind]
    scores = predict(pkg, x, device="cpu", precision="fp32")
    for got, want, spec in zip(scores.heads, _expected(nets, x, heads), heads):
        assert got.name == spec["name"] and got.kind == spec["kind"]
        assert got.fold_outputs.shape == want.shape == (2, 2, spec["outputs"][1] - spec["outputs"][0])
        # batches of 1 in predict, of 2 here: equal up to float32 rounding
        np.testing.assert_allclose(got.fold_outputs, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.mean, want.mean(axis=1), rtol=1e-5, atol=1e-6)
        if spec["kind"] == "multiclass":
            np.testing.assert_allclose(got.fold_outputs.sum(axis=-1), 1.0, atol=1e-6)
    assert not np.allclose(scores.heads[0].fold_outputs[0], scores.heads[0].fold_outputs[1])  # depends on input
    if kind == "binary":
        assert pkg.positive_label == "AD" and pkg.thresholds == {"default": 0.5, "screening": 0.3}
        np.testing.assert_array_equal(scores.fold_scores, scores.heads[0].fold_outputs[:, :, 0])
    else:
        assert pkg.positive_label is None and pkg.thresholds == {}
        with pytest.raises(ValueError, match="fold_scores / mean / spread exist for a single binary head only"):
            _ = scores.fold_scores


def test_float16_weights_round_trip(tmp_path, packages, inputs):
    path, nets = packages["multitask"]
    half = save_package(tmp_path / "half", v2_card("multitask"), [n.state_dict() for n in nets], dtype=torch.float16)
    a = predict(load_package(path), inputs["t1w_mni1mm"], precision="fp32")
    b = predict(load_package(half), inputs["t1w_mni1mm"], precision="fp32")
    for ha, hb in zip(a.heads, b.heads):
        assert np.abs(ha.fold_outputs - hb.fold_outputs).max() < 5e-2 * (10.0 if ha.kind == "regression" else 1.0)


def test_schema1_demo_packages_load_as_one_binary_head(tmp_path):
    for task, (target, labels) in {"ad": ("diagnosis", ("CN", "AD")), "sex": ("sex", ("female", "male"))}.items():
        card = json.loads((SCHEMA1 / task / "model.json").read_text())
        assert card.get("schema_version", 1) == 1  # packages written before schema 2, unchanged
        pkg = load_package(SCHEMA1 / task)
        assert (pkg.schema_version, pkg.family, pkg.input_kind) == (1, "brainimagenet", "gm_crop2")
        (head,) = pkg.heads
        got = (head.name, head.kind, head.target, head.outputs, head.labels)
        assert got == (task, "binary", target, (0, 1), labels)
        assert pkg.positive_label == labels[1] and pkg.negative_label == labels[0]
        assert head.thresholds == pkg.thresholds == {k: float(v) for k, v in card["thresholds"].items()}
        up = upgrade_card(card)
        assert up["schema_version"] == 2 and "output" not in up and "thresholds" not in up
        assert up["heads"] == [head.as_card()] and up["input"]["kind"] == "gm_crop2"
        validate_card(up)
        # re-saved, a schema-1 package becomes schema 2 and scores exactly as before
        states = [f.state_dict() for f in pkg.folds]
        again = load_package(save_package(tmp_path / task, card, states))
        assert again.schema_version == 2 and again.heads == pkg.heads and again.family == "brainimagenet"
        x = np.random.default_rng(0).random((1, *pkg.input_shape), dtype=np.float32)
        np.testing.assert_array_equal(predict(again, x, precision="fp32").fold_scores,
                                      predict(pkg, x, precision="fp32").fold_scores)


def _dx(card: dict[str, Any]) -> dict[str, Any]:
    return card["heads"][0]


@pytest.mark.parametrize(
    "kind,edit,match",
    [
        ("multiclass", lambda c: _dx(c).update(kind="ordinal"), "unknown head kind 'ordinal'"),
        ("multiclass", lambda c: _dx(c).pop("labels"), "head 'diagnosis' needs 'labels'"),
        ("multiclass", lambda c: _dx(c).update(labels=["CN", "AD"]), "needs 3 labels, got 2"),
        ("binary", lambda c: _dx(c).update(outputs=[1, 2]), r"reads outputs \[1, 2\], but the network gives 1"),
        ("multiclass", lambda c: _dx(c).update(outputs=[2, 1]), "outputs must be"),
        ("multitask", lambda c: c["heads"][1].update(outputs=[0, 1]), "overlap in outputs"),
        ("multitask", lambda c: c["heads"][2].update(name="age"), "head names must be unique"),
        ("binary", lambda c: _dx(c).pop("thresholds"), "head 'ad' thresholds must contain 'default'"),
        ("binary", lambda c: _dx(c).update(labels=["AD"]), "needs 2 labels"),
        ("regression", lambda c: _dx(c).pop("unit"), r"head 'age' \(regression\) needs 'unit'"),
        ("regression", lambda c: _dx(c).update(scale="ten"), "scale must be a finite number"),
        ("binary", lambda c: c.update(heads=[]), "heads must list at least one head"),
        ("binary", lambda c: c["input"].update(kind="dwi"), "input kind 'dwi' is not one this app can make"),
        ("binary", lambda c: c["input"].update(channels=["GMD", "GMV"]), "input channels"),
        ("binary", lambda c: c["input"].update(mask="grey"), "input mask for gm_spm1 must be one of none, brain"),
        ("binary", lambda c: c["input"].update(crop=[[12, 108], [13, 133], [16, 102]]), "input crop"),
        ("regression", lambda c: c["input"]["grid"].update(affine=np.eye(4).tolist()), "MNI 1 mm affine"),
        ("regression", lambda c: c["input"].update(shape=[1, 182, 218, 182]), "input shape"),
        ("binary", lambda c: c.update(family="resnet"), "family must be one of"),
        ("binary", lambda c: c.update(task="Brain-Age"), "task must match"),
        ("binary", lambda c: c.update(schema_version=3), "schema_version must be one of 1, 2"),
        ("binary", lambda c: c.pop("heads"), "missing required key 'heads'"),
    ],
)
def test_bad_schema2_cards_are_refused(packages, tmp_path, kind, edit, match):
    pkg = tmp_path / "pkg"
    shutil.copytree(packages[kind][0], pkg)
    card = json.loads((pkg / "model.json").read_text())
    edit(card)
    (pkg / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelPackageError, match=match) as info:
        load_package(pkg)
    assert str(pkg / "model.json") in str(info.value)


def test_architecture_of_another_family_needs_its_module(tmp_path):
    card = v2_card("binary")
    card["architecture"] = {"name": "cnn", "params": {"n_outputs": 1}}
    validate_card(upgrade_card(card), require_folds=False)  # the other families' names are part of the schema
    try:
        from bids_app.models import architectures  # noqa: F401
    except ImportError:
        with pytest.raises(ModelPackageError, match=r"bids_app\.models\.architectures, which this installation lacks"):
            save_package(tmp_path / "x", card, [{}])
        assert not (tmp_path / "x" / "model.json").exists()


def test_auto_engine_for_a_multi_output_network(packages, inputs):
    """(N, K) outputs of a non-graph network: engines that cannot run it are skipped with their reason,
    the one chosen passes the self-check on the heads' values and agrees with FP32."""
    pkg = load_package(packages["multitask"][0])
    x = inputs["t1w_mni1mm"][:1]
    ref = predict(pkg, x, precision="fp32")
    got = predict(pkg, x, precision="auto")
    info = got.engine
    assert info["Engine"] in ("torch-fast", "torch-eager")
    # bf16 on a CPU with native bf16 (auto tries it first there), FP32 elsewhere
    assert info["Engine"] == "torch-eager" or \
        info["SelfCheck"]["MaxScoreDiffVsPyTorchFP32"] <= TOLERANCE[info["Precision"]]
    for reason in info["Fallbacks"]:
        assert "GraphNet" in reason or "compile" in reason
    for a, b in zip(got.heads, ref.heads):
        tol = 1e-4 * (10.0 if a.kind == "regression" else 1.0) * (100.0 if info["Precision"] == "bf16" else 1.0)
        assert np.abs(a.fold_outputs - b.fold_outputs).max() < tol


def test_engine_without_a_possible_self_check_runs_eager_and_says_why(packages):
    pkg = load_package(packages["regression"][0])
    order, rule = candidates(torch.device("cpu"))
    prepared = prepare_engine(pkg.folds, torch.device("cpu"), order, rule=rule, name=pkg.name,
                              no_check_reason="no self-check input for input kind 'x'")
    assert prepared.info.engine == "torch-eager" and prepared.info.self_check_tolerance is None
    assert len(prepared.info.fallbacks) == len(order) - 1
    assert all(f.endswith("no self-check input for input kind 'x'") for f in prepared.info.fallbacks)


def test_predict_checks_the_card_input_shape(packages, inputs):
    pkg = load_package(packages["binary"][0])
    with pytest.raises(ValueError, match=r"must have shape N x 1 x 121 x 145 x 121 \(channels first: GMV\)"):
        predict(pkg, inputs["t1w_mni1mm"], precision="fp32")


def test_prediction_rows_per_head_kind(packages, inputs, tmp_path):
    bids = tmp_path / "bids"
    unit = T1wUnit(path=bids / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz",
                   entities={"sub": "01", "ses": "1"})
    maps = GMMaps(gmd=np.zeros((1, 1, 1), np.float32), gmv=np.zeros((1, 1, 1), np.float32), backend="ants",
                  backend_version="antspyx 0.5")
    qc = QCResult(metrics={"gmv_template_correlation": 0.8})
    scored = []
    for kind in ("binary", "multiclass", "multitask"):
        pkg = load_package(packages[kind][0])
        scored.append((pkg, predict(pkg, inputs[pkg.input_kind][:1], precision="fp32")))
    rows = prediction_rows(unit, bids, maps, qc, scored, ad_threshold=0.3)
    assert [(r["model_name"], r["head"]) for r in rows] == [
        ("test-ad", "ad"), ("test-cn_mci_ad", "diagnosis"),
        ("test-multitask", "age"), ("test-multitask", "sex"), ("test-multitask", "diagnosis")]
    table = read_predictions(write_predictions(tmp_path / "sub-01_ses-1_predictions.tsv", rows))
    assert len(table) == 5
    for col in ("score", "predicted_value", "threshold", "fold_score_sd"):
        assert table[col].dtype == np.float64, col
    for col in ("head", "head_kind", "model_family", "probabilities", "value_unit", "predicted_label", "target"):
        assert str(table[col].dtype) == "string", col
    assert (table["notice"] == RESEARCH_USE_NOTICE).all() and not table["validated_input"].any()
    assert table["warnings"].str.contains("synthetic data only").all()
    assert (table["target"] == table["head"]).all()
    by = {(r.model_name, r.head): r for r in table.itertuples()}

    ad = by[("test-ad", "ad")]
    p_ad = scored[0][1].heads[0]
    assert ad.head_kind == "binary" and ad.model_family == "cnn" and ad.threshold == 0.3  # --ad-threshold
    assert ad.score == pytest.approx(float(p_ad.mean[0, 0]), abs=1e-6)
    assert ad.predicted_label == ("AD" if ad.score >= 0.3 else "CN")
    assert pd_na(ad.probabilities) and pd_na(ad.predicted_value) and ad.model_input_mask == "none"

    dx = by[("test-cn_mci_ad", "diagnosis")]
    probs = scored[1][1].heads[0].mean[0]
    best = int(np.argmax(probs))
    assert dx.head_kind == "multiclass" and dx.predicted_label == ["CN", "MCI", "AD"][best]
    assert dx.score == pytest.approx(float(probs[best]), abs=1e-6) and pd_na(dx.threshold)
    parsed = dict(p.split("=") for p in dx.probabilities.split(";"))
    assert list(parsed) == ["CN", "MCI", "AD"]
    np.testing.assert_allclose([float(v) for v in parsed.values()], probs, atol=1e-6)
    folds = [float(v) for v in dx.fold_scores.split(";")]
    np.testing.assert_allclose(folds, scored[1][1].heads[0].fold_outputs[0, :, best], atol=1e-6)

    age = by[("test-multitask", "age")]
    values = scored[2][1].head("age").fold_outputs[0, :, 0]
    assert age.head_kind == "regression" and age.value_unit == "years" and age.model_family == "sfcn"
    assert age.predicted_value == pytest.approx(float(values.mean()), abs=1e-5)
    assert pd_na(age.score) and pd_na(age.predicted_label) and pd_na(age.threshold)
    np.testing.assert_allclose([float(v) for v in age.fold_scores.split(";")], values, atol=1e-5)
    assert age.fold_score_sd == pytest.approx(float(values.std()), abs=1e-5)
    assert age.model_input_mask == "none"
    sex = by[("test-multitask", "sex")]
    assert sex.head_kind == "binary" and sex.threshold == 0.5 and sex.predicted_label in ("female", "male")


def pd_na(v: Any) -> bool:
    import pandas as pd

    return bool(pd.isna(v))


def test_a_package_whose_input_the_backend_cannot_make_is_refused_before_any_work(packages, tmp_path):
    from bids_app.errors import UsageError
    from bids_app.preproc import get_backend
    from bids_app.workflows import check_input_kinds as check_inputs_provided

    backend = get_backend("derivatives", derivatives_dir=tmp_path)
    crop = load_package(DEMO / "ad")
    spm = load_package(packages["multiclass"][0])
    provides = getattr(backend, "provides", frozenset({"gm_crop2"}))
    check_inputs_provided([crop], backend)  # every backend makes the BrainImageNet crop
    if "gm_spm1" in provides:
        check_inputs_provided([crop, spm], backend)
    else:
        with pytest.raises(UsageError, match=r"test-cn_mci_ad .*reads input kind 'gm_spm1'.*Nothing was preprocessed"):
            check_inputs_provided([crop, spm], backend)
    t1w = load_package(packages["regression"][0])
    if "t1w_mni1mm" not in provides:  # derivatives without a registered T1w cannot make the SFCN input
        with pytest.raises(UsageError, match=re.escape(str(t1w.path))):
            check_inputs_provided([t1w], backend)

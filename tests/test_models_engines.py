"""Inference engines: the per-machine rules, and the self-check that refuses an engine which changes a score."""

from __future__ import annotations

import importlib
import os
import warnings

import numpy as np
import pytest
import torch

from bids_app.models import load_package, predict
from bids_app.models.engines import (
    TOLERANCE,
    CPUFeatures,
    EngineCandidate,
    EngineCheckError,
    candidates,
    describe_engine_choice,
    make_runner,
    parse_cpuinfo,
    prepare_engine,
    self_check,
)
from bids_app.models.export import export_onnx, reference_input
from bids_app.workflows import DEMO_MODELS

CI = os.environ.get("CI", "").lower() == "true"


def require(module: str):
    """Import an engine library; in CI a missing one fails the test instead of skipping it."""
    if CI:
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} not installed (pip install .[engines])")


@pytest.fixture(scope="module")
def ad_pkg():
    return load_package(DEMO_MODELS / "ad")


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return reference_input(seed=3, n=2)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VBM_PREDICT_CACHE", str(tmp_path / "cache"))


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile
processor\t: 1
model name\t: ignored
"""


def test_cpuinfo_is_parsed_and_levels_are_ranked():
    model, flags = parse_cpuinfo(CPUINFO)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"avx512_bf16", "amx_bf16"} <= flags
    assert CPUFeatures(model, flags, "AVX512").level == "amx"
    assert CPUFeatures("x", frozenset({"avx2", "avx512f", "avx512_vnni"}), "AVX512").level == "avx512"
    assert not CPUFeatures("x", frozenset({"avx2", "avx512f"}), "AVX512").native_bf16
    assert CPUFeatures("x", frozenset({"avx2"}), "AVX2").level == "avx2"


def test_rules_per_cpu_kind():
    cpu = torch.device("cpu")
    everything = ["torch-eager", "torch-fast", "torch-fused", "openvino", "onnxruntime"]
    bf16 = CPUFeatures("EPYC 9004", frozenset({"avx2", "avx512f", "avx512_bf16"}), "AVX512")
    order, rule = candidates(cpu, bf16, everything)
    assert rule == "cpu-native-bf16"
    assert order[0] == EngineCandidate("openvino", "bf16") and order[1] == EngineCandidate("torch-fast", "bf16")
    avx2 = CPUFeatures("EPYC 7003", frozenset({"avx2"}), "AVX2")
    order, rule = candidates(cpu, avx2, everything)
    assert rule == "cpu-fp32" and all(c.precision == "fp32" for c in order)
    assert [c.engine for c in order] == ["openvino", "torch-fused", "torch-fast", "torch-eager"]
    # without OpenVINO the fused oneDNN executor leads; torch-eager is always the last resort
    order, _ = candidates(cpu, avx2, ["torch-eager", "torch-fast", "torch-fused"])
    assert order[0] == EngineCandidate("torch-fused", "fp32") and order[-1] == EngineCandidate("torch-eager", "fp32")
    # without native bf16 no bf16 candidate is ever tried (emulated bf16 is 2.7x slower than FP32)
    assert not any(c.precision == "bf16" for c in candidates(cpu, CPUFeatures("Cascade Lake", frozenset(
        {"avx2", "avx512f", "avx512_vnni"}), "AVX512"), everything)[0])


def test_describe_engine_choice_names_cpu_engines_and_order():
    d = describe_engine_choice("cpu")
    assert d["cpu"]["model"] and d["cpu"]["level"] in ("amx", "avx512_bf16", "avx512", "avx2", "baseline")
    assert "torch-eager" in d["installed_engines"]
    assert d["candidates"][-1] == "torch-eager fp32"
    assert d["self_check_tolerance"]["fp32"] == 1e-5


@pytest.mark.parametrize("precision", ["fused", "openvino", "onnxruntime"])
def test_fp32_engines_match_pytorch_fp32_and_say_what_ran(ad_pkg, x, precision):
    if precision == "openvino":
        require("openvino")
    if precision == "onnxruntime":
        require("onnxruntime")
    ref = predict(ad_pkg, x, precision="fp32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = predict(ad_pkg, x, precision=precision)
    assert not [w for w in caught if "inference engine not used" in str(w.message)]  # no fallback for a correct engine
    assert ref.fold_scores.std() > 1e-3, "trained demo model: scores should depend on the input"
    np.testing.assert_allclose(got.fold_scores, ref.fold_scores, atol=1e-5, rtol=0)
    e = got.engine
    assert e["Precision"] == "fp32" and e["Fallbacks"] == []
    assert e["SelfCheck"]["Tolerance"] == 1e-5 and e["SelfCheck"]["MaxScoreDiffVsPyTorchFP32"] <= 1e-5
    assert e["Engine"] == {"fused": "torch-fused", "openvino": "openvino", "onnxruntime": "onnxruntime"}[precision]
    assert ref.engine["Engine"] == "torch-eager" and ref.engine["SelfCheck"] is None


def test_auto_runs_this_cpus_first_faithful_candidate_and_says_why_not_the_others(ad_pkg, x):
    """auto follows this CPU's rule (bf16 first where bf16 is native, FP32 engines otherwise): the first
    candidate that passes its self-check runs, each one before it is in Fallbacks with its reason, and
    the scores agree with FP32 within the chosen precision's tolerance."""
    ref = predict(ad_pkg, x, precision="fp32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = predict(ad_pkg, x, precision="auto")
    e, choice = got.engine, describe_engine_choice("cpu")
    tol = TOLERANCE[e["Precision"]]
    assert e["SelfCheck"]["Tolerance"] == tol and e["SelfCheck"]["MaxScoreDiffVsPyTorchFP32"] <= tol
    np.testing.assert_allclose(got.fold_scores, ref.fold_scores, atol=tol, rtol=0)
    position = choice["candidates"].index(f"{e['Engine']} {e['Precision']}")
    assert [f.split(":")[0] for f in e["Fallbacks"]] == choice["candidates"][:position]
    assert len([w for w in caught if "inference engine not used" in str(w.message)]) == position
    if choice["rule"] == "cpu-fp32":  # the FP32 engines are exact on this model: the first one runs
        assert position == 0 and e["Precision"] == "fp32"


def _perturbed_onnx(net, path, factor=1.02):
    """Export ``net`` and scale one convolution weight of the ONNX graph by ``factor`` (a faulty export)."""
    onnx = require("onnx")
    from onnx import numpy_helper

    export_onnx(net, path)
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    conv_w = next(n.input[1] for n in model.graph.node if n.op_type == "Conv")
    w = numpy_helper.to_array(inits[conv_w]) * np.float32(factor)
    inits[conv_w].CopyFrom(numpy_helper.from_array(w, conv_w))
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_a_perturbed_export_is_refused_and_falls_back_with_a_warning(ad_pkg, x, tmp_path, engine):
    require(engine)
    nets = ad_pkg.folds
    paths = [_perturbed_onnx(net, tmp_path / f"fold{k}.onnx") for k, net in enumerate(nets)]
    order = [EngineCandidate(engine, "fp32"), EngineCandidate("torch-eager", "fp32")]
    with pytest.warns(RuntimeWarning, match=f"{engine} fp32: .*differ from PyTorch FP32 by .* refused"):
        prepared = prepare_engine(nets, torch.device("cpu"), order, rule="test", name="demo-ad", onnx_paths=paths)
    assert prepared.info.engine == "torch-eager"
    assert len(prepared.info.fallbacks) == 1 and "refused" in prepared.info.fallbacks[0]
    # the runner it fell back to scores exactly like the reference
    ref = predict(ad_pkg, x, precision="fp32").fold_scores
    got = np.stack([torch.sigmoid(torch.from_numpy(r(x)[:, 0])).double().numpy() for r in prepared.runners], axis=1)
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)  # batch of 2 here, batches of 1 in predict


def test_a_wrong_precision_engine_is_refused_at_the_fp32_bound(ad_pkg, x):
    net = ad_pkg.folds[0]
    bf16 = make_runner(net, "torch-fast", "bf16", torch.device("cpu"))
    # bf16 passes (or not) at its own bound; at the FP32 bound it must be refused
    with pytest.raises(EngineCheckError, match="torch-fast bf16 scores differ from PyTorch FP32"):
        self_check(bf16, net, x, what="demo-ad fold 0", tolerance=1e-5)
    fp32 = make_runner(net, "torch-fused", "fp32", torch.device("cpu"))
    assert self_check(fp32, net, x, what="demo-ad fold 0") <= 1e-5


def test_an_engine_that_fails_to_build_falls_back(ad_pkg):
    order = [EngineCandidate("torch-fused", "bf16"), EngineCandidate("torch-eager", "fp32")]  # no such combination
    with pytest.warns(RuntimeWarning, match="torch-fused bf16: engine 'torch-fused' runs FP32 only"):
        prepared = prepare_engine(ad_pkg.folds, torch.device("cpu"), order, rule="test", name="demo-ad")
    assert prepared.info.engine == "torch-eager"


def test_reference_scores_are_cached_by_weights(ad_pkg, tmp_path, x):
    order = [EngineCandidate("torch-fused", "fp32")]
    prepare_engine(ad_pkg.folds[:1], torch.device("cpu"), order, rule="t", name="a", weights_sha256=ad_pkg.sha256[:1])
    files = list((tmp_path / "cache" / "reference-scores").glob("*.json"))
    assert len(files) == 1
    import json

    data = json.loads(files[0].read_text())
    assert data["key"].startswith(ad_pkg.sha256[0])
    with torch.inference_mode():
        ref = torch.sigmoid(ad_pkg.folds[0](torch.from_numpy(reference_input(seed=0, n=1)))).double().numpy()
    np.testing.assert_allclose(np.asarray(data["scores"])[:, 0], ref, atol=1e-12)  # cached N x K (K = 1 here)

"""The fused oneDNN CPU executor: same numbers as the reference graph, every conv fused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_app.models import build_network, load_package
from bids_app.models.fast import OneDNNGraphNet, onednn_available
from bids_app.workflows import DEMO_MODELS

from .models_fixtures import gm_like_inputs, randomise_bn

pytestmark = pytest.mark.skipif(not onednn_available(), reason="PyTorch built without oneDNN")


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return torch.from_numpy(gm_like_inputs(3, seed=4))


@pytest.mark.parametrize("task", ["sex", "ad"])
def test_fused_logits_match_the_reference_graph_on_trained_models(task, inputs):
    # The bundled demo models are trained, so their logits depend on the input (random-weight
    # networks often give the same logit for every input, which would hide a wrong fusion).
    pkg = load_package(DEMO_MODELS / task)
    for net in pkg.folds:
        with torch.inference_mode():
            ref = net.float().eval()(inputs)
            fused = OneDNNGraphNet(net)
            got = fused(inputs)
            one = fused(inputs[1:2])
        assert ref.std() > 1e-3, "logits should differ between inputs"
        assert torch.allclose(got, ref, atol=1e-5, rtol=0)
        assert torch.allclose(one, ref[1:2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["irv2_sex", "irv2_ad_optimised", "irv2_ad_intact"])
def test_every_conv_runs_fused(arch):
    net = randomise_bn(build_network(arch, width=0.125, blocks=(1, 1, 2)), seed=2).eval()
    fused = OneDNNGraphNet(net)
    steps = fused._steps
    n_conv = sum(n.op == "conv3d" for n in net.nodes)
    n_bn = sum(n.op == "batchnorm" for n in net.nodes)
    n_res = sum(n.op == "residual" for n in net.nodes)
    conv_steps = [s for s in steps if s.kind in ("conv", "conv_sum")]
    # every residual absorbs its block's conv, so one step per conv
    assert len(conv_steps) == n_conv
    assert sum(s.kind == "conv_sum" for s in steps) == n_res
    # no BatchNorm, and no separate ReLU after a conv, is left to run on its own
    assert not any(s.node.op == "batchnorm" for s in steps)
    assert n_bn > 0
    assert sum(s.unary == "relu" for s in conv_steps) >= n_conv - n_res - 1
    x = torch.from_numpy(gm_like_inputs(2, seed=5))
    with torch.inference_mode():
        assert torch.allclose(fused(x), net(x), atol=1e-5, rtol=0)


def test_fused_executor_checks_its_input():
    net = build_network("irv2_ad_optimised", width=0.125).eval()
    fused = OneDNNGraphNet(net)
    with pytest.raises(ValueError, match="expected input N x 2 x 96 x 120 x 86"):
        fused(torch.zeros(1, 2, 96, 120, 85))
    with pytest.raises(ValueError, match="float32 CPU tensors only"):
        fused(torch.zeros(1, 2, 96, 120, 86, dtype=torch.float64))


def test_fused_is_refused_off_the_cpu(tmp_path):
    from bids_app.models.predict import prepare

    pkg = load_package(DEMO_MODELS / "ad")
    with pytest.raises(ValueError, match="'fused' runs on the CPU only"):
        prepare(pkg, torch.device("meta"), "fused")


def test_auto_on_cpu_is_an_exact_fp32_engine_unless_bf16_is_native():
    from bids_app.models.engines import cpu_features
    from bids_app.models.predict import default_precision

    first = default_precision(torch.device("cpu"))
    if not cpu_features().native_bf16:
        assert first.endswith(" fp32") and first.split()[0] in ("openvino", "torch-fused", "torch-fast")
    assert default_precision(torch.device("cuda")).startswith("torch-fast ")


def test_fused_scores_are_deterministic(inputs):
    from bids_app.models import predict

    pkg = load_package(DEMO_MODELS / "sex")
    a = predict(pkg, inputs.numpy(), precision="fused").fold_scores
    b = predict(pkg, inputs.numpy(), precision="fused").fold_scores
    assert np.array_equal(a, b)

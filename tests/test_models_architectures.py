"""The architecture registry and the CNN-5/7/10/12, Liu/MOX and SFCN families.

Parameter counts are computed here from the papers' layer lists by formula, independently of the
builders; full-size output shapes run the real ``forward`` on PyTorch's ``meta`` device (shapes
without arithmetic), so they cost nothing on a 2-core machine; arithmetic is checked at small widths.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from bids_app.errors import ModelPackageError
from bids_app.models import irv2
from bids_app.models.architectures import ARCHITECTURES, architecture_spec, build_network
from bids_app.models.blocks import BatchNorm3d, fold_conv_batchnorm
from bids_app.models.engines.runners import make_runner
from bids_app.models.fast import fold_for_inference

GM_SPM1 = (121, 145, 121)  # input kind gm_spm1: 1 x 121 x 145 x 121
T1W_MNI1MM = (160, 192, 160)  # input kind t1w_mni1mm: 1 x 160 x 192 x 160


def n_weights(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def conv_params(c_in: int, c_out: int, k: int, bias: bool) -> int:
    return c_in * c_out * k**3 + (c_out if bias else 0)


def linear_params(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def cnn_count(filters: list[int], n_features: int, n_outputs: int = 1) -> int:
    """CNN-k: 3^3 convs without bias, BN gamma + beta, FC F -> 128 -> 64 -> n_outputs."""
    chans = [1, *filters]
    convs = sum(conv_params(a, b, 3, False) + 2 * b for a, b in itertools.pairwise(chans))
    return convs + linear_params(n_features, 128) + linear_params(128, 64) + linear_params(64, n_outputs)


# After five 2/2 pools of padded convs: 121 -> 60 -> 30 -> 15 -> 7 -> 3, 145 -> 72 -> 36 -> 18 -> 9 -> 4.
CNN_FEATURES_GM_SPM1 = 3 * 4 * 3


def randomise_bn(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.channels, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.channels, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.channels, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.channels, generator=g) * 0.1)
    return net.eval()


# ------------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(("preset", "filters"), [
    ("cnn5", [8, 16, 32, 64, 128]),
    ("cnn7", [8, 16, 32, 64, 64, 128, 128]),
    ("cnn10", [8, 8, 16, 16, 32, 32, 64, 64, 128, 128]),
    ("cnn12", [8, 8, 16, 16, 32, 32, 64, 64, 64, 128, 128, 128]),
])
def test_cnn_presets_parameter_counts(preset, filters):
    net = build_network("cnn", filters=preset)
    assert net.params["filters"] == filters
    assert n_weights(net) == cnn_count(filters, 128 * CNN_FEATURES_GM_SPM1)
    assert net.feature_shape == (128, 3, 4, 3)


def test_cnn5_by_hand_and_width_multipliers():
    # CNN-5, width 1, one logit: convs 27 * 10,888 = 293,976; BN 496; FC 589,952 + 8,256 + 65.
    assert n_weights(build_network("cnn", filters="cnn5")) == 892_745
    for w in (1, 2, 4, 5):
        filters = [8 * w, 16 * w, 32 * w, 64 * w, 128 * w]
        net = build_network("cnn", filters="cnn5", width=w, n_outputs=2)
        assert [b.conv.out_channels for b in net.blocks] == filters
        assert n_weights(net) == cnn_count(filters, 128 * w * CNN_FEATURES_GM_SPM1, n_outputs=2)


def test_cnn_pool_placement_follows_runs_of_equal_widths():
    assert build_network("cnn", filters="cnn5").params["pool_after"] == [0, 1, 2, 3, 4]
    assert build_network("cnn", filters="cnn7").params["pool_after"] == [0, 1, 2, 4, 6]
    assert build_network("cnn", filters="cnn10").params["pool_after"] == [1, 3, 5, 7, 9]
    assert build_network("cnn", filters="cnn12").params["pool_after"] == [1, 3, 5, 8, 11]
    # A pool after every one of CNN-7's convs takes the 121-voxel axis to 0 (why the default differs).
    with pytest.raises(ModelPackageError, match=r"'cnn'.*input_shape \[121, 145, 121\] is too small"):
        build_network("cnn", filters="cnn7", pool_after=list(range(7)))
    # An explicit list is honoured (the module doc's override).
    net = build_network("cnn", filters=[4, 4], pool_after=[1], input_shape=(8, 8, 8))
    assert net.feature_shape == (4, 4, 4, 4)


def test_liu_mox_reproduces_the_reports_weight_count():
    # MOX report: 24,736,067 weights = biased convs, InstanceNorm without affine, F = 512 (1 x 1 x 1 map).
    convs = (conv_params(1, 32, 1, True) + conv_params(32, 256, 3, True) + conv_params(256, 512, 5, True)
             + conv_params(512, 512, 3, True))
    mlp_without_first = linear_params(1024, 512) + linear_params(512, 3)
    assert convs + linear_params(512, 1024) + mlp_without_first == 24_736_067
    small_input = build_network("liu_mox", input_shape=(96, 96, 96))
    assert small_input.feature_shape == (512, 1, 1, 1)
    assert n_weights(small_input) == 24_736_067
    # The app's full gm_spm1 input leaves 512 x 3 x 4 x 3.
    full = build_network("liu_mox")
    assert full.feature_shape == (512, 3, 4, 3)
    assert n_weights(full) == convs + linear_params(512 * 36, 1024) + mlp_without_first == 43_086_147
    assert not any(isinstance(m, torch.nn.Dropout) for m in full.modules())


def test_sfcn_parameter_count_matches_peng():
    chans = [1, 32, 64, 128, 256, 256]
    backbone = sum(conv_params(a, b, 3, True) + 2 * b for a, b in itertools.pairwise(chans))
    backbone += conv_params(256, 64, 1, True) + 2 * 64
    # Peng et al.'s 40 age bins: about 3 M parameters.
    peng = build_network("sfcn", n_outputs=40)
    assert n_weights(peng) == backbone + conv_params(64, 40, 1, True) == 2_952_936
    multitask = build_network("sfcn", n_outputs=6)
    assert n_weights(multitask) == backbone + conv_params(64, 6, 1, True)
    assert peng.feature_shape == (64, 5, 6, 5)
    assert isinstance(peng.classifier.average_pool, torch.nn.AvgPool3d)
    assert tuple(peng.classifier.average_pool.kernel_size) == (5, 6, 5)


def test_irv2_names_still_build_through_the_registry():
    # Same count as the IRv2 tests (BN moving statistics included there: state_dict, not parameters).
    net = build_network("irv2_ad_optimised")
    assert sum(t.numel() for t in net.state_dict().values()) == 10_166_049
    assert set(irv2.ARCHITECTURES) <= set(ARCHITECTURES)
    assert architecture_spec("irv2_sex").output == "logit"
    assert architecture_spec("sfcn").output == "vector"


# ------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(("name", "params", "input_shape", "n_out"), [
    ("cnn", {"filters": "cnn5"}, GM_SPM1, 1),
    ("cnn", {"filters": "cnn7", "n_outputs": 2}, GM_SPM1, 2),
    ("cnn", {"filters": "cnn10"}, GM_SPM1, 1),
    ("cnn", {"filters": "cnn12", "width": 5}, GM_SPM1, 1),
    ("liu_mox", {}, GM_SPM1, 3),
    ("sfcn", {"n_outputs": 6}, T1W_MNI1MM, 6),
])
def test_full_size_output_shapes_per_input_kind(name, params, input_shape, n_out):
    # The real forward on meta tensors: every layer's shape rule runs, no arithmetic is done.
    with torch.device("meta"):
        net = build_network(name, input_shape=list(input_shape), **params)
        features = (net.feature_extractor if name == "sfcn" else net.blocks)(torch.empty(2, 1, *input_shape))
        out = net(torch.empty(2, 1, *input_shape))
    assert tuple(features.shape[1:]) == net.feature_shape
    assert tuple(out.shape) == (2, n_out)


def test_wrong_input_size_is_refused_with_the_expected_shape():
    net = build_network("cnn", filters=[2, 2], input_shape=(8, 8, 8))
    with pytest.raises(ValueError, match=r"expected input N x 1 x 8 x 8 x 8, got \(1, 1, 8, 8, 9\)"):
        net(torch.zeros(1, 1, 8, 8, 9))


# ------------------------------------------------------------------------------- arithmetic at small widths

SMALL = [
    ("cnn", {"filters": "cnn10", "width": 0.25, "n_outputs": 2, "input_shape": [32, 40, 32]}),
    ("liu_mox", {"channels": [2, 4, 8, 8], "hidden": [16, 8], "input_shape": [88, 104, 88]}),
    ("sfcn", {"channels": [2, 4, 4, 8, 8, 4], "n_outputs": 3, "input_shape": [32, 64, 32]}),
]


@pytest.mark.parametrize(("name", "params"), SMALL)
def test_small_width_forward_and_backward(name, params):
    torch.manual_seed(0)
    net = build_network(name, **params).train()
    x = torch.randn(2, 1, *params["input_shape"])
    out = net(x)
    assert out.shape == (2, net.n_outputs)
    out.square().mean().backward()
    for key, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
    # Every layer receives gradient (the head's output layer at least, and the first conv).
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
    assert first_conv.weight.grad.abs().sum() > 0
    assert net.params == build_network(name, **net.params).params  # the card's params rebuild it


def test_state_dict_keys_are_documented_and_float():
    cnn = build_network("cnn", filters=[2, 2], input_shape=(8, 8, 8))
    assert sorted(cnn.state_dict()) == sorted([
        "blocks.0.conv.weight", "blocks.0.norm.weight", "blocks.0.norm.bias", "blocks.0.norm.running_mean",
        "blocks.0.norm.running_var", "blocks.1.conv.weight", "blocks.1.norm.weight", "blocks.1.norm.bias",
        "blocks.1.norm.running_mean", "blocks.1.norm.running_var", "classifier.fc0.weight", "classifier.fc0.bias",
        "classifier.fc1.weight", "classifier.fc1.bias", "classifier.fc2.weight", "classifier.fc2.bias",
    ])
    liu = build_network("liu_mox", channels=[2, 2, 2, 2], hidden=[4, 4], input_shape=(88, 88, 88))
    assert sorted(liu.state_dict()) == sorted(
        [f"blocks.{i}.conv.{p}" for i in range(4) for p in ("weight", "bias")]
        + [f"classifier.fc{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    )
    sfcn = build_network("sfcn", channels=[2, 2], input_shape=(4, 4, 4))
    assert sorted(sfcn.state_dict()) == sorted([
        "feature_extractor.conv_0.0.weight", "feature_extractor.conv_0.0.bias",
        "feature_extractor.conv_0.1.weight", "feature_extractor.conv_0.1.bias",
        "feature_extractor.conv_0.1.running_mean", "feature_extractor.conv_0.1.running_var",
        "feature_extractor.conv_1.0.weight", "feature_extractor.conv_1.0.bias",
        "feature_extractor.conv_1.1.weight", "feature_extractor.conv_1.1.bias",
        "feature_extractor.conv_1.1.running_mean", "feature_extractor.conv_1.1.running_var",
        "classifier.conv_2.weight", "classifier.conv_2.bias",
    ])
    for net in (cnn, liu, sfcn):
        assert all(t.is_floating_point() for t in net.state_dict().values())


# ------------------------------------------------------------------------------- fast CPU path


@pytest.mark.parametrize(("name", "params"), [SMALL[0], SMALL[2]])
def test_batchnorm_folding_matches_eager(name, params):
    net = randomise_bn(build_network(name, **params), seed=1)
    folded = fold_for_inference(net)
    assert not any(isinstance(m, BatchNorm3d) for m in folded.modules())
    assert any(isinstance(m, BatchNorm3d) for m in net.modules())  # the original is untouched
    x = torch.randn(2, 1, *params["input_shape"], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = net(x)
        fast = folded.to(memory_format=torch.channels_last_3d)(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    # The engine runner the predictor uses takes the same path (N x K outputs there).
    run = make_runner(net, "torch-fast", "fp32", torch.device("cpu"))
    torch.testing.assert_close(torch.from_numpy(run(x.numpy())), ref, rtol=1e-5, atol=1e-5)


def test_fused_engine_is_refused_for_plain_networks():
    with pytest.raises(ValueError, match=r"'torch-fused' runs layer-graph networks \(GraphNet\) only; SFCN is not one"):
        make_runner(build_network("sfcn", channels=[2, 2], input_shape=(4, 4, 4)), "torch-fused", "fp32",
                    torch.device("cpu"))


def test_instance_norm_is_not_folded():
    net = build_network("liu_mox", **SMALL[1][1])
    folded = fold_conv_batchnorm(net)
    assert sum(isinstance(m, torch.nn.InstanceNorm3d) for m in folded.modules()) == 4
    x = torch.randn(1, 1, 88, 104, 88)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net.eval()(x), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------- refusals


def test_unknown_architecture_is_refused_listing_the_known_ones():
    with pytest.raises(ModelPackageError, match=r"unknown architecture 'resnet'; known: irv2_sex, .*sfcn"):
        build_network("resnet")


@pytest.mark.parametrize(("name", "params", "match"), [
    ("cnn", {"depth": 5}, r"'cnn': unknown parameter\(s\) \['depth'\]; allowed: \['dropout', 'filters'"),
    ("cnn", {"filters": "cnn6"}, r"filters preset must be one of cnn5, cnn7, cnn10, cnn12; got 'cnn6'"),
    ("cnn", {"filters": [8, 0]}, r"filters must be a list of at least 1 integers in \[1, 4096\]; got \[8, 0\]"),
    ("cnn", {"width": 0}, r"width must be a number in \(0, 8\]; got 0"),
    ("cnn", {"dropout": 1.0}, r"dropout must be a number in \[0, 1\); got 1.0"),
    ("cnn", {"pool_after": [0, 9]}, r"pool_after must list distinct conv indices in \[0, 4\]"),
    ("cnn", {"input_shape": [121, 145]}, r"input_shape must be 3 positive integers"),
    ("liu_mox", {"channels": [32, 256, 512]}, r"channels must be a list of at least 4 integers"),
    ("liu_mox", {"input_shape": [40, 40, 40]}, r"'liu_mox': input_shape \[40, 40, 40\] is too small"),
    ("sfcn", {"n_outputs": 0}, r"'sfcn': n_outputs must be an integer in \[1, 10000\]; got 0"),
    ("sfcn", {"n_outputs": True}, r"n_outputs must be an integer"),
    ("irv2_sex", {"width": 9}, r"'irv2_sex': width \(channel multiplier\) must be a number in \[0.01, 4\]"),
])
def test_bad_parameters_are_refused_naming_rule_and_value(name, params, match):
    with pytest.raises(ModelPackageError, match=match):
        build_network(name, **params)

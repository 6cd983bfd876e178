"""Behaviour of the BrainImageNet networks: sizes, names, Keras numerics, validation, transfer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bids_app.models import ARCHITECTURES, KerasBatchNorm3d, SameConv3d, build_network
from bids_app.models.fast import fold_batchnorm
from bids_app.models.graph import _same_pads

SMALL = {"width": 0.125, "blocks": (1, 1, 2)}


def n_params(net: torch.nn.Module) -> int:
    return sum(t.numel() for t in net.state_dict().values())


def randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, KerasBatchNorm3d):
            m.running_mean.copy_(torch.randn(m.channels, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.channels, generator=g) * 1.5 + 0.5)
            if m.bias is not None:
                m.bias.data.copy_(torch.randn(m.channels, generator=g) * 0.1)
    return net.eval()


def test_full_size_parameter_counts_match_the_reference():
    # Keras' count_params() of the same networks (BN moving statistics included, no gamma).
    assert n_params(build_network("irv2_sex")) == 54_054_623
    assert n_params(build_network("irv2_ad_intact")) == 54_054_623
    assert n_params(build_network("irv2_ad_optimised")) == 10_166_049


def test_full_size_feature_map_shapes():
    sex = build_network("irv2_sex")
    assert sex.shapes[sex.stem_names[-1]] == (512, 21, 27, 19)
    assert sex.shapes["mixed_6a"] == (1280, 10, 13, 9)
    assert sex.shapes["mixed_7a"] == (2272, 4, 6, 4)
    assert sex.shapes["conv_7b_ac"] == (1536, 4, 6, 4)
    ad = build_network("irv2_ad_optimised")
    assert ad.shapes["conv1_ac"] == (256, 8, 11, 7)
    # TF 'same' with stride 2: ceil(size / 2)
    assert ad.shapes["conv2_ac"] == (256, 4, 6, 4)
    assert ad.shapes["conc1"] == (512, 1, 2, 1)


def test_keras_224_layer_names():
    sex = build_network("irv2_sex", **SMALL)
    names = [n.name for n in sex.nodes]
    assert names[:4] == ["input_1", "conv3d_1", "batch_normalization_1", "activation_1"]
    for expected in ("StemEnd", "block35_1", "block35_1_conv", "block35_1_ac", "mixed_6a", "block17_1", "mixed_7a",
                     "block8_2", "conv_7b", "conv_7b_bn", "avg_pool", "dropout_1", "dense_1"):
        assert expected in names
    assert "block8_2_ac" not in names  # the last block8 has no activation
    assert sex.node("block8_2").config["scale"] == 1.0
    assert sex.node("block8_1").config["scale"] == 0.2
    ad = build_network("irv2_ad_optimised", width=0.125)
    names = [n.name for n in ad.nodes]
    assert names[-8:] == ["mpool2", "conv3", "conv3_bn", "conv3_ac", "conc1", "apool1", "dropout1", "dense_1"]
    assert "mpool1" in names and "conv1" in names
    assert ad.node("conv2").config["padding"] == "same" and ad.node("conv2").config["strides"] == [2, 2, 2]
    intact = build_network("irv2_ad_intact", **SMALL)
    assert [n.name for n in intact.nodes][-2:] == ["dropout1", "dense_1"]


def test_keras_batchnorm_numerics():
    net = build_network("irv2_sex", **SMALL)
    bns = [m for m in net.modules() if isinstance(m, KerasBatchNorm3d)]
    assert bns and all(m.epsilon == 1e-3 and m.weight is None and m.bias is not None for m in bns)
    bn = KerasBatchNorm3d(3).eval()
    bn.running_var.fill_(0.0)
    x = torch.ones(1, 3, 2, 2, 2)
    # With variance 0, eps decides the result: 1 / sqrt(1e-3)
    assert torch.allclose(bn(x), torch.full_like(x, 1 / np.sqrt(1e-3)), rtol=1e-6)


@pytest.mark.parametrize("size,expected", [(8, (0, 1)), (11, (1, 1)), (7, (1, 1)), (4, (0, 1))])
def test_tf_same_padding_is_asymmetric_for_stride_2(size, expected):
    assert _same_pads(size, 3, 2) == expected


def test_same_conv_stride2_matches_explicit_end_padding():
    torch.manual_seed(0)
    conv = SameConv3d(2, 3, (3, 3, 3), (2, 2, 2), "same")
    x = torch.randn(1, 2, 8, 11, 7)
    want = F.conv3d(F.pad(x, (1, 1, 1, 1, 0, 1)), conv.weight, None, stride=2)
    got = conv(x)
    assert got.shape == (1, 3, 4, 6, 4)
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_returns_logits_of_shape_n(arch):
    net = build_network(arch, **SMALL).eval()
    x = torch.rand(2, *net.input_shape)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2,)
    assert torch.isfinite(y).all()
    with pytest.raises(ValueError, match="expected input N x 2 x 96 x 120 x 86"):
        net(torch.rand(1, 2, 96, 120, 85))


def test_training_step_runs_and_changes_weights():
    net = build_network("irv2_ad_optimised", width=0.125).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.rand(2, 2, 96, 120, 86)
    before = net.layers["dense_1"].weight.detach().clone()
    loss = F.binary_cross_entropy_with_logits(net(x), torch.tensor([0.0, 1.0]))
    loss.backward()
    opt.step()
    assert not torch.equal(before, net.layers["dense_1"].weight)
    # BN moving statistics update in training mode (Keras momentum 0.99)
    assert not torch.equal(net.layers["batch_normalization_1"].running_mean, torch.zeros(8))


def test_stem_transfer_from_sex_to_ad():
    sex = randomise(build_network("irv2_sex", width=0.125), seed=1)
    ad = build_network("irv2_ad_optimised", width=0.125)
    ad.stem.load_state_dict(sex.stem.state_dict())
    for key, value in sex.stem.state_dict().items():
        assert torch.equal(ad.stem.state_dict()[key], value)
    assert "StemEnd" in ad.stem_names and "conv1" not in ad.stem_names
    assert len(ad.stem) == 22  # 11 conv + 11 BN in the stem
    intact = build_network("irv2_ad_intact", width=0.125, blocks=(5, 10, 5))
    intact.load_state_dict(sex.state_dict())  # the intact AD net is the sex net with a new head


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"width": 0}, r"width \(channel multiplier\) must be a number in \[0.01, 4\]; got 0"),
        ({"blocks": (1, 2)}, r"blocks must be 3 integers"),
        ({"blocks": (1, 1, 0)}, r"block8 >= 1"),
        ({"in_channels": 0}, r"in_channels must be a positive integer; got 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\); got 1.0"),
        ({"depth": 3}, r"unknown parameter\(s\) \['depth'\]"),
    ],
)
def test_bad_hyper_parameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_network("irv2_sex", **kwargs)


def test_unknown_architecture_is_refused():
    expected = "architecture must be one of irv2_sex, irv2_ad_optimised, irv2_ad_intact; got 'resnet'"
    with pytest.raises(ValueError, match=expected):
        build_network("resnet")


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="too small"):
        build_network("irv2_ad_optimised", width=0.125, input_spatial=(48, 60, 43))


def test_batchnorm_folding_is_exact():
    net = randomise(build_network("irv2_sex", **SMALL), seed=3)
    folded = fold_batchnorm(net)
    assert not any(n.op == "batchnorm" for n in folded.nodes)
    x = torch.rand(2, *net.input_shape)
    with torch.no_grad():
        a, b = net(x), folded(x)
    assert torch.allclose(a, b, atol=1e-5)
    # the original network is untouched
    assert any(n.op == "batchnorm" for n in net.nodes)


def test_public_api_surface():
    import bids_app.models as m

    for name in ("build_network", "save_package", "load_package", "find_packages", "ModelPackage", "predict",
                 "import_keras", "read_keras_h5", "ARCHITECTURES"):
        assert name in m.__all__ and hasattr(m, name)
    import subprocess
    import sys

    code = ("import sys, bids_app.models; "
            "print('tensorflow' in sys.modules, 'bids' in sys.modules, 'bids_app.cli' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]

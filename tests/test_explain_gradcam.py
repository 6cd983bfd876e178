"""Grad-CAM: the default layer, its placement on the input grid, the map itself, thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_app import grid
from bids_app.explain import ExplainOptions, explain_package
from bids_app.explain.gradcam import (
    default_layer,
    gradcam,
    layer_placement,
    otsu_threshold,
    threshold_map,
    threshold_value,
    upsample_to_input,
)
from bids_app.models import GraphNet, Node, build_network, load_package
from bids_app.workflows import DEMO_MODELS

from .models_fixtures import gm_like_inputs, randomise_bn


def test_default_layer_is_the_stem_output_in_every_architecture():
    for arch in ("irv2_sex", "irv2_ad_optimised", "irv2_ad_intact"):
        net = build_network(arch, width=0.0625, blocks=(1, 1, 1))
        layer = default_layer(net)
        node = net.node(layer)
        assert node.op == "concat" and "StemEnd" in node.inputs
        assert net.shapes[layer][1:] == (21, 27, 19)


def test_placement_follows_an_impulse_through_the_stem():
    """A voxel of the layer is centred on the input voxels that reach it (independent check of a, b)."""
    torch.manual_seed(0)
    net = randomise_bn(build_network("irv2_sex", width=0.0625, blocks=(1, 1, 1))).eval()
    layer = default_layer(net)
    a, b = layer_placement(net, layer)
    assert a.tolist() == [4.0, 4.0, 4.0]  # two stride-2 stages in the stem
    index = {n.name: i for i, n in enumerate(net.nodes)}

    def layer_output(x):
        vals = {net.nodes[0].name: x}
        for n in net.nodes[1 : index[layer] + 1]:
            vals[n.name] = net.run_node(n, [vals[s] for s in n.inputs], final=False)
        return vals[layer][0]

    with torch.no_grad():
        zero = layer_output(torch.zeros(1, *net.input_shape))
        for vox in [(40, 60, 43), (47, 52, 30)]:
            x = torch.zeros(1, *net.input_shape)
            x[0, :, vox[0], vox[1], vox[2]] = 5.0
            changed = (layer_output(x) - zero).abs().amax(dim=0) > 0
            idx = np.argwhere(changed.numpy())
            assert len(idx)
            # the centres of the reached layer voxels lie around the impulse, within half a layer voxel
            centres = idx * a + b
            mid = (centres.min(axis=0) + centres.max(axis=0)) / 2.0
            assert np.all(np.abs(mid - np.asarray(vox)) <= a / 2 + 1e-9), (mid, vox)


def test_upsampling_places_a_hot_voxel_at_its_centre():
    cam = np.zeros((21, 27, 19))
    cam[10, 5, 12] = 1.0
    a, b = np.array([4.0, 4.0, 4.0]), np.array([3.0, 5.0, 2.0])
    up = upsample_to_input(cam, a, b, (96, 120, 86))
    peak = np.unravel_index(np.argmax(up), up.shape)
    want = a * np.array([10, 5, 12]) + b
    assert tuple(int(v) for v in peak) == tuple(int(v) for v in want) == (43, 25, 50)
    assert up.max() == pytest.approx(1.0)
    assert up[43 + 2, 25, 50] == pytest.approx(0.5)  # halfway to the next layer voxel: linear
    assert up.shape == (96, 120, 86) and up.dtype == np.float32


def test_gradcam_on_a_linear_head_equals_the_closed_form():
    """layer -> global average -> dense: dlogit/dA_c = w_c / n, so cam = relu(sum_c w_c A_c / n)."""
    nodes = [
        Node("in", "input"),
        Node(
            "c1",
            "conv3d",
            ("in",),
            {"filters": 5, "kernel_size": 3, "strides": 2, "padding": "valid", "activation": "relu", "use_bias": True},
        ),
        Node("gap", "gap3d", ("c1",)),
        Node("out", "dense", ("gap",), {"units": 1, "activation": "sigmoid", "use_bias": True}),
    ]
    torch.manual_seed(3)
    net = GraphNet(nodes, (2, 17, 15, 13)).eval()
    x = np.random.default_rng(0).random((2, 17, 15, 13), dtype=np.float32)
    res = gradcam(net, x, "c1")
    with torch.no_grad():
        act = net.run_node(nodes[1], [torch.as_tensor(x[None])], final=False)[0]
    w = net.layers["out"].weight[0].detach()
    n = act[0].numel()
    want = torch.relu((w[:, None, None, None] * act).sum(0) / n).numpy()
    np.testing.assert_allclose(res.layer_map, want, rtol=1e-5, atol=1e-7)
    assert res.input_map.shape == (17, 15, 13)
    a, b = res.placement
    assert a.tolist() == [2.0, 2.0, 2.0] and b.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="not a spatial layer"):
        gradcam(net, x, "gap")


def test_thresholds():
    rng = np.random.default_rng(0)
    bimodal = np.concatenate([rng.normal(0.2, 0.03, 5000), rng.normal(0.8, 0.03, 1000)])
    t = otsu_threshold(bimodal)
    assert 0.35 < t < 0.65
    assert threshold_value(bimodal, "percentile", percentile=90) == pytest.approx(np.percentile(bimodal, 90))
    assert threshold_value(bimodal, "meansd", k=2.0) == pytest.approx(bimodal.mean() + 2 * bimodal.std())
    cam = rng.random((10, 12, 8)).astype(np.float32)
    mask = np.zeros(cam.shape, dtype=bool)
    mask[2:8, 2:10, 1:7] = True
    out, value = threshold_map(cam, "percentile", mask, percentile=80)
    assert np.all(out[~mask] == 0) and np.all(out[mask & (cam < value)] == 0)
    assert np.array_equal(out[mask & (cam >= value)], cam[mask & (cam >= value)])
    assert (out[mask] > 0).mean() == pytest.approx(0.2, abs=0.02)
    with pytest.raises(ValueError, match="threshold method"):
        threshold_value(bimodal, "triangle")


def test_demo_models_give_placed_normalised_maps_with_thresholded_variants():
    x = gm_like_inputs(1, seed=1)[0]
    package = load_package(DEMO_MODELS / "ad")
    maps = explain_package(package, x, ExplainOptions(methods=("gradcam",)))
    assert [m.desc for m in maps] == ["gradcamAD", "gradcamThrPercentileAD", "gradcamThrOtsuAD", "gradcamThrMeanSDAD"]
    cam = maps[0].data
    assert cam.shape == grid.SPM_SHAPE and cam.max() == pytest.approx(1.0) and cam.min() >= 0
    outside = np.ones(grid.SPM_SHAPE, dtype=bool)
    outside[grid.CROP] = False
    assert np.all(cam[outside] == 0)
    assert maps[0].parameters["LayerShape"] == [21, 27, 19]
    for m in maps[1:]:
        assert m.threshold is not None and (m.data > 0).sum() < (cam > 0).sum()
        assert np.all((m.data == 0) | (m.data == cam))

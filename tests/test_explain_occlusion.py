"""Fast occlusion equals the naive definition (one full forward pass per window position).

Networks: full-size BrainImageNet graphs with random weights (slow), the shipped demo models, small
odd-sized variants of all three architectures (every border position), and hand-made graphs with
the operators the BrainImageNet graphs do not use (same-padded average pooling, dilation,
same-padded max pooling, add, flatten, an unfolded BatchNorm). Random networks barely react to a cube, so the tests
"calibrate" the head: the output layer is scaled and shifted so that the unoccluded logit is about
0 and occlusions move the score by 1e-3 .. 1e-1; the comparison at 1e-4 is then meaningful.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_app import grid
from bids_app.explain.occlusion import (
    OcclusionEngine,
    OcclusionParams,
    drops_to_map,
    occlusion_fast,
    occlusion_naive,
    window_positions,
    window_starts,
)
from bids_app.models import GraphNet, Node, build_network, load_package
from bids_app.workflows import DEMO_MODELS

from .models_fixtures import gm_like_inputs, randomise_bn


def calibrate(net: GraphNet, x: np.ndarray, gain: float = 300.0) -> GraphNet:
    """Scale the output layer by ``gain`` and centre the unoccluded logit at about 0.3."""
    dense = net.layers[net.logit_node]
    with torch.no_grad():
        dense.weight.mul_(gain)
        dense.bias.mul_(gain)
        logit = float(net(torch.as_tensor(x[None])))
        dense.bias.sub_(logit - 0.3)
    return net


def check_fast_equals_naive(
    net: GraphNet, x: np.ndarray, starts: np.ndarray, params: OcclusionParams, min_effect: float = 1e-3
) -> float:
    base, naive = occlusion_naive(net, x, starts, cube=params.cube, baseline=params.baseline, batch_size=4)
    engine = OcclusionEngine(net, params)
    # BatchNorm folding (exact algebra, float rounding) times the calibrated head's gain: about 1e-5 at full size
    assert engine.set_input(x) == pytest.approx(base, abs=1e-4)
    fast = engine.scores(starts)
    assert np.abs(naive - base).max() > min_effect, "occlusion does not change the score: the test would be void"
    np.testing.assert_allclose(fast, naive, atol=1e-4, rtol=0)
    return float(np.abs(fast - naive).max())


def border_and_random(shape, cube, step, n_random, seed=0, n_corners=8, n_border=6):
    """Corners of the position grid (first and last windows: the last one clipped), other border
    positions, and random inner ones."""
    starts, _ = window_positions(shape, cube, step)
    lo, hi = starts.min(axis=0), starts.max(axis=0)
    border = np.any((starts == lo) | (starts == hi), axis=1)
    corners = np.flatnonzero(np.all((starts == lo) | (starts == hi), axis=1))
    rng = np.random.default_rng(seed)
    pick = {int(corners[0]), int(corners[-1])} | set(rng.choice(corners, min(n_corners, len(corners)), replace=False))
    pick |= set(rng.choice(np.flatnonzero(border & ~np.isin(np.arange(len(starts)), corners)), n_border, replace=False))
    pick |= set(rng.choice(np.flatnonzero(~border), n_random, replace=False))
    return starts[sorted(pick)]


# ------------------------------------------------------------------------------------- positions
def test_window_starts_cover_each_axis_with_clipped_last_window():
    assert window_starts(96, 12, 6).tolist() == list(range(0, 85, 6))
    assert window_starts(86, 12, 6).tolist() == list(range(0, 79, 6))  # the last cube 78..89 is clipped at 86
    assert window_starts(120, 12, 6)[-1] == 108
    assert window_starts(5, 12, 6).tolist() == [0]
    assert window_starts(86, 12, 18).tolist() == [0, 18, 36, 54, 72]
    # the paper's setting on the model grid: about 4,000 positions
    assert len(window_positions(grid.MODEL_INPUT_SHAPE[1:], 12, 6)[0]) == 15 * 19 * 14
    with pytest.raises(ValueError, match="must be >= 1"):
        window_starts(10, 0, 2)


def test_mask_keeps_exactly_the_windows_touching_it():
    rng = np.random.default_rng(3)
    mask = np.zeros((23, 17, 19), dtype=bool)
    mask[rng.integers(0, 23, 6), rng.integers(0, 17, 6), rng.integers(0, 19, 6)] = True
    starts, kept = window_positions(mask.shape, 5, 3, mask)
    brute = [mask[i : i + 5, j : j + 5, k : k + 5].any() for i, j, k in starts]
    assert kept.tolist() == brute and 0 < kept.sum() < len(kept)


def test_map_is_the_mean_drop_of_the_covering_windows():
    rng = np.random.default_rng(0)
    shape = (11, 9, 7)
    starts, _ = window_positions(shape, 4, 3)
    drops = rng.normal(size=len(starts))
    got = drops_to_map(shape, starts, drops, 4)
    for v in [(0, 0, 0), (10, 8, 6), (5, 4, 3), (3, 3, 3)]:
        cover = [d for s, d in zip(starts, drops) if all(s[a] <= v[a] < s[a] + 4 for a in range(3))]
        assert got[v] == pytest.approx(np.mean(cover), abs=1e-6)


def test_params_are_checked():
    with pytest.raises(ValueError, match="cube must be a positive whole number"):
        OcclusionParams(cube=0)
    with pytest.raises(ValueError, match="baseline must be a finite"):
        OcclusionParams(baseline=float("nan"))


# ------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("architecture", ["irv2_sex", "irv2_ad_optimised", "irv2_ad_intact"])
def test_small_odd_sized_networks_every_border_position(architecture):
    torch.manual_seed(1)
    shape = (81, 77, 79) if architecture == "irv2_ad_optimised" else (63, 61, 59)
    net = randomise_bn(build_network(architecture, width=0.0625, blocks=(1, 1, 1), input_spatial=shape)).eval()
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    calibrate(net, x, gain=3000.0)
    # the paper's cube/step, and a step larger than the cube (gaps, odd offsets)
    for cube, step in ((12, 6), (7, 10)):
        params = OcclusionParams(cube=cube, step=step, batch_size=5)
        starts = border_and_random(shape, cube, step, 2, n_corners=4, n_border=3)
        check_fast_equals_naive(net, x, starts, params)


def test_demo_networks_match_on_the_real_input_grid():
    x = gm_like_inputs(1, seed=2)[0]
    for task in ("sex", "ad"):
        net = load_package(DEMO_MODELS / task).folds[0]
        starts = border_and_random(x.shape[1:], 12, 6, 3, seed=4, n_corners=2, n_border=2)
        # trained networks react to occlusion by themselves: no calibration
        check_fast_equals_naive(net, x, starts, OcclusionParams(batch_size=8), min_effect=1e-4)


def _graph(nodes, shape):
    return GraphNet([Node(*n) for n in nodes], shape)


def test_hand_made_graph_with_other_operators_whole_map_with_mask():
    conv = lambda f, k, s=1, p="same", d=1, a="linear": {  # noqa: E731 - a table of layer configs
        "filters": f,
        "kernel_size": k,
        "strides": s,
        "padding": p,
        "dilation_rate": d,
        "activation": a,
        "use_bias": True,
    }
    nodes = [
        ("in", "input", (), {}),
        ("c1", "conv3d", ("in",), conv(4, 3, 2, "same", a="relu")),
        ("p1", "avgpool3d", ("c1",), {"pool_size": 3, "strides": 2, "padding": "same"}),
        # a BatchNorm that is not after a convolution stays unfolded (the engine's affine rule)
        ("bn", "batchnorm", ("p1",), {"epsilon": 1e-3, "center": True, "scale": True}),
        ("c2", "conv3d", ("c1",), conv(4, 3, 1, "same", d=2, a="tanh")),
        ("p2", "maxpool3d", ("c2",), {"pool_size": 2, "strides": 2, "padding": "same"}),
        ("sum", "add", ("bn", "p2"), {}),
        ("c3", "conv3d", ("sum",), conv(3, [1, 3, 1], 1, "valid", a="elu")),
        ("flat", "flatten", ("c3",), {}),
        ("out", "dense", ("flat",), {"units": 1, "activation": "sigmoid", "use_bias": True}),
    ]
    shape = (2, 21, 19, 17)
    torch.manual_seed(0)
    net = randomise_bn(_graph(nodes, shape)).eval()
    assert any(n.op == "batchnorm" for n in OcclusionEngine(net).net.nodes)
    rng = np.random.default_rng(1)
    x = rng.random(shape, dtype=np.float32)
    mask = np.zeros(shape[1:], dtype=bool)
    mask[4:17, 3:15, 2:16] = True
    x[:, ~mask] = 0.0
    calibrate(net, x, gain=30.0)
    params = OcclusionParams(cube=4, step=3, batch_size=7)
    res = occlusion_fast(net, x, params, mask=mask)
    base, naive = occlusion_naive(net, x, res.starts, cube=4, batch_size=16)
    assert res.evaluated.sum() < len(res.starts)
    assert np.abs(naive - base).max() > 1e-3
    # skipped windows (outside the mask, input already at the baseline) have exactly no effect
    np.testing.assert_allclose(naive[~res.evaluated], base, atol=1e-6)
    np.testing.assert_allclose(res.drops, base - naive, atol=1e-4)
    np.testing.assert_allclose(res.map, drops_to_map(shape[1:], res.starts, base - naive, 4), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["irv2_ad_optimised", "irv2_sex"])
def test_full_size_networks(architecture):
    torch.manual_seed(0)
    net = randomise_bn(build_network(architecture)).eval()
    x = gm_like_inputs(1, seed=5)[0]
    calibrate(net, x, gain=3000.0)
    starts, kept = window_positions(x.shape[1:], 12, 6, grid.crop(grid.brain_mask()))
    # a corner of the volume, a border position, two inside the brain
    inner = starts[kept]
    pick = np.stack([starts[0], starts[-1], inner[len(inner) // 3], inner[2 * len(inner) // 3]])
    err = check_fast_equals_naive(net, x, pick, OcclusionParams(batch_size=4))
    assert err < 1e-4

"""Grad-CAM at a layer with useful resolution, placed on the model input grid, and its thresholded variants.

Grad-CAM (Selvaraju et al. 2017) weights each channel of a layer's activation ``A`` by the mean
over space of the gradient of the logit (the value before the output sigmoid) with respect to it,
sums the weighted channels and keeps the positive part: ``cam = relu(sum_c mean(dlogit/dA_c) A_c)``.

Layer. The BrainImageNet networks shrink the 96 x 120 x 86 input to 21 x 27 x 19 at the end of
the stem (the concatenation after ``StemEnd``) and to 4 x 6 x 4 or less at the last layers, so
the default is the stem output: the last layer with a useful resolution that every variant (sex,
AD optimised, AD intact, the demo models) shares. Any spatial layer can be named instead.

Placement. Voxel ``o`` of a layer is the centre of its receptive field, ``a * o + b`` in input
voxels per axis, where ``a`` and ``b`` follow from every convolution and pooling on the way
(stride, kernel, dilation, TensorFlow padding). The map is trilinearly interpolated at every input
voxel's position in layer coordinates (constant beyond the outermost layer voxels), so a map voxel
lies over the input region it describes (checked in the tests by moving an impulse through the
network).

Thresholded variants follow the MOX reproduction (Liu et al. 2022): keep the voxels at or above a
threshold computed inside the brain mask: a percentile, Otsu's threshold, or mean + k SD.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..models.graph import GraphNet, _same_pads, _triple

__all__ = [
    "THRESHOLD_METHODS",
    "GradCAMResult",
    "default_layer",
    "gradcam",
    "layer_placement",
    "otsu_threshold",
    "threshold_map",
    "threshold_value",
    "upsample_to_input",
]

ThresholdMethod = Literal["percentile", "otsu", "meansd"]
THRESHOLD_METHODS: tuple[str, ...] = ("percentile", "otsu", "meansd")


def default_layer(net: GraphNet) -> str:
    """The stem output (the concatenation that reads ``StemEnd``), else the spatial layer closest
    in size to 1/64 of the input (a stem-like resolution) that is not the input."""
    for n in net.nodes:
        if n.op == "concat" and "StemEnd" in n.inputs:
            return n.name
    in_vox = float(np.prod(net.input_shape[1:]))
    spatial = [n.name for n in net.nodes[1:] if len(net.shapes[n.name]) == 4]
    if not spatial:
        raise ValueError("the network has no spatial layer for Grad-CAM")
    return min(spatial, key=lambda s: abs(np.log(np.prod(net.shapes[s][1:]) / (in_vox / 64.0))))


def layer_placement(net: GraphNet, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` per axis: voxel ``o`` of ``layer`` is centred on input voxel ``a * o + b``."""
    aff: dict[str, tuple[np.ndarray, np.ndarray]] = {net.nodes[0].name: (np.ones(3), np.zeros(3))}
    for n in net.nodes[1:]:
        if len(net.shapes[n.name]) != 4:
            continue
        a, b = aff[n.inputs[0]]
        if n.op in ("conv3d", "maxpool3d", "avgpool3d"):
            c = n.config
            k = np.asarray(_triple(c["kernel_size"] if n.op == "conv3d" else c["pool_size"], "kernel"), dtype=float)
            s = np.asarray(_triple(c["strides"], "strides"), dtype=float)
            d = np.asarray(
                _triple(c.get("dilation_rate", 1), "dilation") if n.op == "conv3d" else (1, 1, 1), dtype=float
            )
            in_sp = net.shapes[n.inputs[0]][1:]
            pb = np.zeros(3)
            if c["padding"] == "same":
                pb = np.asarray(
                    [_same_pads(int(in_sp[i]), int(k[i]), int(s[i]), int(d[i]))[0] for i in range(3)], dtype=float
                )
            aff[n.name] = (a * s, b + a * (-pb + (k - 1) * d / 2.0))
        else:
            aff[n.name] = (a, b)
        if n.name == layer:
            break
    if layer not in aff:
        raise ValueError(f"layer {layer!r} is not a spatial layer of the network")
    return aff[layer]


def upsample_to_input(cam: np.ndarray, a: np.ndarray, b: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Trilinear interpolation of a layer map at every input voxel ``x`` (layer coordinate ``(x - b) / a``)."""
    from scipy.ndimage import map_coordinates

    axes = [(np.arange(int(n), dtype=np.float64) - b[i]) / a[i] for i, n in enumerate(shape)]
    coords = np.meshgrid(*axes, indexing="ij")
    out = map_coordinates(np.asarray(cam, dtype=np.float64), coords, order=1, mode="nearest")
    return out.astype(np.float32)


@dataclass(frozen=True)
class GradCAMResult:
    """Grad-CAM of one network: on the layer grid and on the model input grid (both unnormalised)."""

    layer: str
    layer_map: np.ndarray
    input_map: np.ndarray
    logit: float
    placement: tuple[np.ndarray, np.ndarray]


def gradcam(
    net: GraphNet, x: np.ndarray, layer: str | None = None, *, device: str | torch.device = "cpu"
) -> GradCAMResult:
    """Grad-CAM of ``net`` for one input ``x`` (C x D x H x W) at ``layer`` (default :func:`default_layer`)."""
    if not isinstance(net, GraphNet):
        raise TypeError(f"Grad-CAM needs a GraphNet (a layer graph), got {type(net).__name__}")
    layer = layer or default_layer(net)
    if layer not in net.shapes or len(net.shapes[layer]) != 4:
        raise ValueError(f"Grad-CAM layer {layer!r} is not a spatial layer of the network")
    dev = torch.device(device)
    net = net.to(dev).eval()
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if xt.dim() == 4:
        xt = xt[None]
    xt = xt.to(dev)
    index = {n.name: i for i, n in enumerate(net.nodes)}
    stop = index[net.logit_node]
    at = index[layer]
    values: dict[str, torch.Tensor] = {net.nodes[0].name: xt}
    with torch.no_grad():
        for n in net.nodes[1 : at + 1]:
            values[n.name] = net.run_node(n, [values[s] for s in n.inputs], final=False)
    act = values[layer].detach().clone().requires_grad_(True)
    values[layer] = act
    with torch.enable_grad():
        for i in range(at + 1, stop + 1):
            n = net.nodes[i]
            values[n.name] = net.run_node(n, [values[s] for s in n.inputs], final=(i == stop))
        logit = values[net.logit_node].reshape(-1)[0]
        (grad,) = torch.autograd.grad(logit, act)
    weights = grad[0].mean(dim=(1, 2, 3))
    cam = torch.relu((weights[:, None, None, None] * act[0].detach()).sum(dim=0))
    cam_np = cam.double().cpu().numpy()
    a, b = layer_placement(net, layer)
    return GradCAMResult(
        layer=layer,
        layer_map=cam_np.astype(np.float32),
        input_map=upsample_to_input(cam_np, a, b, net.input_shape[1:]),
        logit=float(logit.detach()),
        placement=(a, b),
    )


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut of a histogram that maximises the between-class variance."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0 or v.max() <= v.min():
        return float(v.max()) if v.size else 0.0
    hist, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    between[w1 == 0] = -1.0
    # well separated classes give a plateau of equal maxima (every cut in the gap): take its middle
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(edges[int(best[len(best) // 2]) + 1])


def threshold_value(values: np.ndarray, method: str, *, percentile: float = 95.0, k: float = 1.0) -> float:
    """The threshold of ``values`` (e.g. a map inside the brain mask) by ``method``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if method == "percentile":
        if not 0.0 < percentile < 100.0:
            raise ValueError(f"percentile must be in (0, 100); got {percentile}")
        return float(np.percentile(v, percentile))
    if method == "otsu":
        return otsu_threshold(v)
    if method == "meansd":
        return float(v.mean() + k * v.std())
    raise ValueError(f"threshold method must be one of {', '.join(THRESHOLD_METHODS)}; got {method!r}")


def threshold_map(
    cam: np.ndarray, method: str, mask: np.ndarray | None = None, *, percentile: float = 95.0, k: float = 1.0
) -> tuple[np.ndarray, float]:
    """``cam`` with the voxels below the threshold (and outside ``mask``) set to 0; and the threshold."""
    m = np.ones(cam.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != cam.shape:
        raise ValueError(f"mask shape {m.shape} differs from the map's {cam.shape}")
    t = threshold_value(cam[m], method, percentile=percentile, k=k)
    out = np.where(m & (cam >= t), cam, 0.0).astype(np.float32)
    return out, t

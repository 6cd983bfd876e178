"""Inference-only rewrites of a :class:`~bids_app.models.graph.GraphNet`: BatchNorm folding.

Folding a BatchNormalization into the convolution in front of it is exact algebra
(``W' = W * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta``, computed in
float64) and removes one full pass over every feature map, the largest cost after the convolutions
themselves on a CPU. The rewritten graph keeps the conv layers' Keras names.
"""

from __future__ import annotations

import torch

from .graph import GraphNet, Node

__all__ = ["fold_batchnorm"]


def fold_batchnorm(net: GraphNet) -> GraphNet:
    """Return a new eval-mode GraphNet where every conv -> BN pair is one biased conv.

    A BN is folded only when its single input is a conv with a linear activation whose output
    no other layer reads; any other BN stays as it is. The input network is not changed.
    """
    readers: dict[str, int] = {}
    for n in net.nodes:
        for s in n.inputs:
            readers[s] = readers.get(s, 0) + 1
    by_name = {n.name: n for n in net.nodes}
    fold_into: dict[str, str] = {}  # bn name -> conv name
    for n in net.nodes:
        if n.op != "batchnorm":
            continue
        src = by_name[n.inputs[0]]
        if src.op == "conv3d" and src.config.get("activation", "linear") == "linear" and readers.get(src.name, 0) == 1:
            fold_into[n.name] = src.name
    folded_convs = set(fold_into.values())
    new_nodes: list[Node] = []
    for n in net.nodes:
        if n.name in fold_into:
            continue
        inputs = tuple(fold_into.get(s, s) for s in n.inputs)
        config = dict(n.config)
        if n.name in folded_convs:
            config["use_bias"] = True
        new_nodes.append(Node(n.name, n.op, inputs, config))
    out = GraphNet(new_nodes, net.input_shape)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    new_state = {}
    conv_to_bn = {c: b for b, c in fold_into.items()}
    for key in out.state_dict():
        if key.split(".")[1] in conv_to_bn:
            continue
        new_state[key] = state[key]
    for conv, bn in conv_to_bn.items():
        w = state[f"layers.{conv}.weight"].double()
        b = state.get(f"layers.{conv}.bias")
        b = b.double() if b is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        bn_mod = net.layers[bn]
        mean = state[f"layers.{bn}.running_mean"].double()
        var = state[f"layers.{bn}.running_var"].double()
        gamma = state[f"layers.{bn}.weight"].double() if f"layers.{bn}.weight" in state else torch.ones_like(mean)
        beta = state[f"layers.{bn}.bias"].double() if f"layers.{bn}.bias" in state else torch.zeros_like(mean)
        factor = gamma / torch.sqrt(var + bn_mod.epsilon)
        dtype = state[f"layers.{conv}.weight"].dtype
        new_state[f"layers.{conv}.weight"] = (w * factor.reshape(-1, 1, 1, 1, 1)).to(dtype)
        new_state[f"layers.{conv}.bias"] = ((b - mean) * factor + beta).to(dtype)
    out.load_state_dict(new_state)
    device = next(net.parameters()).device
    return out.to(device).eval()

"""Which network a Keras graph is: structural matching against our architectures.

Names in a Keras file depend on the Keras version and on how many models the session had built
(``conv3d_1`` in Keras 2.2.4, ``conv3d`` in tf-keras 2.x...), so graphs are compared by structure
only: the same operators with the same options, wired the same way. A match also gives the map
from the file's layer names to ours, used to rename the imported weights.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import torch

from .graph import Node
from .irv2 import ARCHITECTURES, irv2_nodes
from .keras_h5 import KerasModel

__all__ = ["match_graphs", "identify_architecture", "renamed_state"]


def _signature(node: Node) -> tuple[Any, ...]:
    c = node.config
    keys = {
        "input": ("shape",),
        "conv3d": ("filters", "kernel_size", "strides", "padding", "dilation_rate", "use_bias", "activation"),
        "batchnorm": ("epsilon", "center", "scale"),
        "activation": ("activation",),
        "maxpool3d": ("pool_size", "strides", "padding"),
        "avgpool3d": ("pool_size", "strides", "padding"),
        "residual": ("scale",),
        "dense": ("units", "use_bias", "activation"),
        "dropout": ("rate",),
    }.get(node.op, ())
    vals = []
    for k in keys:
        v = c.get(k)
        if isinstance(v, float):
            v = round(v, 6)
        elif isinstance(v, list):
            v = tuple(v)
        vals.append(v)
    return (node.op, len(node.inputs), *vals)


def _canonical_order(nodes: Sequence[Node]) -> list[Node]:
    by_name = {n.name: n for n in nodes}
    order: list[Node] = []
    seen: set[str] = set()
    stack: list[tuple[str, bool]] = [(nodes[-1].name, False)]
    while stack:
        cur, done = stack.pop()
        if done:
            order.append(by_name[cur])
            continue
        if cur in seen:
            continue
        seen.add(cur)
        stack.append((cur, True))
        for src in reversed(by_name[cur].inputs):
            if src not in seen:
                stack.append((src, False))
    return order


def match_graphs(reference: Sequence[Node], other: Sequence[Node]) -> dict[str, str] | None:
    """Map ``other``'s layer names to ``reference``'s when both graphs are the same network.

    Same network = same operators with the same options, wired the same way (input order
    included); names are ignored. Returns None when the graphs differ.
    """
    a = _canonical_order(reference)
    b = _canonical_order(other)
    if len(a) != len(b) or len(a) != len(reference) or len(b) != len(other):
        return None
    pos_a = {n.name: i for i, n in enumerate(a)}
    pos_b = {n.name: i for i, n in enumerate(b)}
    mapping: dict[str, str] = {}
    for na, nb in zip(a, b, strict=True):
        if _signature(na) != _signature(nb):
            return None
        if [pos_a[s] for s in na.inputs] != [pos_b[s] for s in nb.inputs]:
            return None
        mapping[nb.name] = na.name
    return mapping


def identify_architecture(
    model: KerasModel, task: str | None = None
) -> tuple[str, dict[str, Any], dict[str, str]] | None:
    """Which of our architectures (with which parameters) an imported graph is, or None.

    The sex network and the intact AD network are the same graph; ``task`` ("sex" or "ad")
    decides which name such a graph gets (without it, ``irv2_sex``).

    Returns ``(architecture, params, rename)`` where ``rename`` maps the file's layer names to
    ours. Width is read from the first convolution (64 filters at width 1), block counts from the
    residual layers, the dropout rate from the Dropout layer.
    """
    nodes = model.nodes
    convs = [n for n in nodes if n.op == "conv3d"]
    if not convs or nodes[0].op != "input":
        return None
    width = int(convs[0].config["filters"]) / 64.0
    counts = {
        t: sum(1 for n in nodes if n.op == "residual" and re.match(rf"^block{t}_\d+$", n.name))
        for t in ("35", "17", "8")
    }
    drop = [n for n in nodes if n.op == "dropout"]
    rate = float(drop[0].config["rate"]) if drop else 0.5
    in_channels = int(model.input_shape[0])
    order = ("irv2_ad_optimised", "irv2_ad_intact", "irv2_sex") if task == "ad" else ARCHITECTURES
    for arch in order:
        blocks = (counts["35"], counts["17"], max(counts["8"], 1))
        if arch == "irv2_ad_optimised":
            blocks = (5, 10, 5)  # unused by this architecture; record the default
        params = {"width": width, "blocks": list(blocks), "in_channels": in_channels, "dropout": rate}
        try:
            ref, _ = irv2_nodes(arch, width=width, blocks=blocks, in_channels=in_channels, dropout=rate)
        except ValueError:
            continue
        ref = [Node(ref[0].name, "input", (), {"shape": list(model.input_shape)})] + ref[1:]
        rename = match_graphs(ref, nodes)
        if rename is not None:
            return arch, params, rename
    return None


def renamed_state(state: Mapping[str, torch.Tensor], rename: Mapping[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for key, v in state.items():
        _, layer, pname = key.split(".")
        out[f"layers.{rename[layer]}.{pname}"] = v
    return out

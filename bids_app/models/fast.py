"""Inference-only rewrites of a :class:`~bids_app.models.graph.GraphNet`: BatchNorm folding and a
fused oneDNN CPU executor.

Folding a BatchNormalization into the convolution in front of it is exact algebra
(``W' = W * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta``, computed in
float64) and removes one full pass over every feature map, the largest cost after the convolutions
themselves on a CPU. The rewritten graph keeps the conv layers' Keras names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import fold_conv_batchnorm
from .graph import GraphNet, Node, SameConv3d, same_pad_arg

__all__ = ["fold_batchnorm", "fold_for_inference", "OneDNNGraphNet", "onednn_available"]


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


def fold_for_inference(net: nn.Module) -> nn.Module:
    """BatchNorm folded into the convolutions of any network this app builds (eval-mode copy).

    A :class:`GraphNet` (IRv2, imported Keras graphs) goes through :func:`fold_batchnorm`; the plain
    PyTorch families (CNN-5/7/10/12, SFCN; Liu/MOX has InstanceNorm, which stays) through
    :func:`bids_app.models.blocks.fold_conv_batchnorm`.
    """
    if isinstance(net, GraphNet):
        return fold_batchnorm(net)
    return fold_conv_batchnorm(net)


# ---------------------------------------------------------------------------------------------
# oneDNN fused CPU executor
# ---------------------------------------------------------------------------------------------


def onednn_available() -> bool:
    """True when this PyTorch build has the oneDNN fused-convolution operators used below."""
    if not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    return all(hasattr(ops, name) for name in ("_convolution_pointwise", "_reorder_convolution_weight"))


@dataclass
class _Step:
    """One executed step of :class:`OneDNNGraphNet`: a fused convolution or a plain graph node."""

    node: Node
    inputs: list[int]  # slot indices
    kind: str  # "conv", "conv_sum" or "node"
    unary: str | None = None  # "relu" fused as a oneDNN post-op
    pre_pad: list[int] | None = None  # explicit TensorFlow "same" padding (F.pad order)
    weight: torch.Tensor | None = None  # oneDNN-packed (blocked) weight
    bias: torch.Tensor | None = None
    padding: list[int] = field(default_factory=lambda: [0, 0, 0])
    stride: list[int] = field(default_factory=lambda: [1, 1, 1])
    dilation: list[int] = field(default_factory=lambda: [1, 1, 1])
    free_after: list[int] = field(default_factory=list)


class OneDNNGraphNet(nn.Module):
    """CPU inference executor for a BatchNorm-folded :class:`GraphNet` built on oneDNN's fused ops.

    Why: eager PyTorch spends about a quarter of a BrainImageNet forward pass outside the
    convolutions' arithmetic: a separate ReLU pass over every feature map, residual ``x + s * conv``
    as two more passes, the weight re-layout oneDNN does on every call, and PyTorch's "native"
    (non-oneDNN) convolution, which it picks for small 3-D inputs and which runs at a fraction of
    the speed. This executor runs every convolution through oneDNN with the weight packed once
    (``mkldnn._reorder_convolution_weight``), the ReLU after it as a post-op, and each residual
    ``relu(x + scale * conv(branch))`` as one convolution with a binary ``add`` post-op (the scale folded
    into the conv's weight and bias, exact up to float rounding). Every other node runs through the
    graph's own operator implementation, so results match the folded graph to float rounding
    (checked in the tests at 1e-5).

    It is inference-only, CPU-only, float32, and fixed to the network's input size (the packed
    weight layout is chosen for it; other batch sizes work).
    """

    def __init__(self, net: GraphNet) -> None:
        super().__init__()
        if not onednn_available():  # pragma: no cover - every x86/ARM PyTorch wheel has oneDNN
            raise RuntimeError("this PyTorch build has no oneDNN (mkldnn) fused convolution operators")
        if any(n.op == "batchnorm" and n.inputs and net.node(n.inputs[0]).op == "conv3d" for n in net.nodes):
            net = fold_batchnorm(net)
        self.net = net.cpu().eval()
        self.input_shape = net.input_shape
        nodes = net.nodes
        readers: dict[str, list[str]] = {}
        for n in nodes:
            for s in n.inputs:
                readers.setdefault(s, []).append(n.name)
        by_name = {n.name: n for n in nodes}
        logit = net.logit_node

        def only_reader(name: str) -> Node | None:
            r = readers.get(name, [])
            return by_name[r[0]] if len(r) == 1 and name != logit else None

        def fusable_conv(name: str) -> bool:
            n = by_name[name]
            return n.op == "conv3d" and n.config.get("activation", "linear") in ("linear", "relu") and name != logit

        # Which node's output each absorbed node's name resolves to.
        alias: dict[str, str] = {}
        absorbed: set[str] = set()
        # residual nodes fused with their conv branch: residual name -> conv name
        sum_fused: dict[str, str] = {}
        for n in nodes:
            if (
                n.op == "residual"
                and fusable_conv(n.inputs[1])
                and by_name[n.inputs[1]].config.get("activation", "linear") == "linear"
            ):
                conv = n.inputs[1]
                if only_reader(conv) is n and n.inputs[0] != conv:
                    sum_fused[n.name] = conv
                    absorbed.add(conv)
        relu_fused: set[str] = set()
        for n in nodes:
            if n.op == "activation" and n.config.get("activation") == "relu":
                src = n.inputs[0]
                if src in absorbed or only_reader(src) is not n:
                    continue
                src_node = by_name[src]
                if (fusable_conv(src) and src_node.config.get("activation", "linear") == "linear") or src in sum_fused:
                    relu_fused.add(src)
                    absorbed.add(n.name)
                    alias[n.name] = src

        slot_of: dict[str, int] = {nodes[0].name: 0}
        steps: list[_Step] = []
        for n in nodes[1:]:
            if n.name in absorbed:
                if n.name in alias:
                    slot_of[n.name] = slot_of[alias[n.name]]
                continue
            if n.op == "conv3d" and fusable_conv(n.name):
                conv_name, data_inputs, kind = n.name, [n.inputs[0]], "conv"
                scale = 1.0
                unary = "relu" if (n.config.get("activation") == "relu" or n.name in relu_fused) else None
            elif n.name in sum_fused:
                conv_name = sum_fused[n.name]
                data_inputs, kind = [by_name[conv_name].inputs[0], n.inputs[0]], "conv_sum"
                scale = float(n.config["scale"])
                unary = "relu" if n.name in relu_fused else None
            else:
                steps.append(_Step(n, [slot_of[s] for s in n.inputs], "node"))
                slot_of[n.name] = len(steps)
                continue
            steps.append(self._conv_step(n, conv_name, data_inputs, kind, scale, unary, slot_of))
            slot_of[n.name] = len(steps)
        # Free every slot after its last reader (the logit slot is returned).
        last: dict[int, int] = {}
        for i, st in enumerate(steps):
            for slot in st.inputs:
                last[slot] = i
        for slot, i in last.items():
            steps[i].free_after.append(slot)
        self._steps = steps
        self._logit_slot = slot_of[logit]

    def _conv_step(
        self,
        node: Node,
        conv_name: str,
        data_inputs: list[str],
        kind: str,
        scale: float,
        unary: str | None,
        slot_of: dict[str, int],
    ) -> _Step:
        net = self.net
        conv = cast(SameConv3d, net.layers[conv_name])
        src_shape = net.shapes[data_inputs[0]]
        pre_pad: list[int] | None = None
        in_spatial = list(src_shape[1:])
        if conv.dynamic_same:
            pre_pad = same_pad_arg(src_shape[1:], conv.kernel_size, conv.stride, conv.dilation)
            # F.pad order is (W before, W after, H before, H after, D before, D after)
            in_spatial = [n + pre_pad[4 - 2 * a] + pre_pad[5 - 2 * a] for a, n in enumerate(src_shape[1:])]
        w = conv.weight.detach().float()
        b = conv.bias.detach().float() if conv.bias is not None else None
        if scale != 1.0:
            w = w * scale
            b = b * scale if b is not None else None
        # SameConv3d always hands Conv3d numeric pads (its 'same' rule is applied separately)
        padding = [int(p) for p in cast("tuple[int, ...]", conv.padding)]
        stride, dilation = list(conv.stride), list(conv.dilation)
        w = w.contiguous(memory_format=torch.channels_last_3d)
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            w, padding, stride, dilation, 1, [1, src_shape[0], *in_spatial]
        )
        return _Step(
            node,
            [slot_of[s] for s in data_inputs],
            kind,
            unary=unary,
            pre_pad=pre_pad,
            weight=packed,
            bias=b,
            padding=padding,
            stride=stride,
            dilation=dilation,
        )

    def _conv(self, st: _Step, x: torch.Tensor, other: torch.Tensor | None) -> torch.Tensor:
        if st.pre_pad is not None:
            x = F.pad(x, st.pre_pad)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x, st.weight, st.bias, st.padding, st.stride, st.dilation, 1, st.unary or "none", [], ""
            )
        other = other.contiguous(memory_format=torch.channels_last_3d)
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, st.weight, st.bias, st.padding, st.stride, st.dilation, 1, "add", 1.0, st.unary, [], ""
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N,)``, as :meth:`GraphNet.forward`."""
        if x.dim() != 5 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"expected input N x {' x '.join(map(str, self.input_shape))}, got {tuple(x.shape)}")
        if x.device.type != "cpu" or x.dtype != torch.float32:
            raise ValueError("the oneDNN executor runs float32 CPU tensors only")
        slots: list[torch.Tensor | None] = [None] * (len(self._steps) + 1)
        slots[0] = x.contiguous(memory_format=torch.channels_last_3d)
        logit = self._logit_slot
        for i, st in enumerate(self._steps, start=1):
            xs = [slots[j] for j in st.inputs]
            if st.kind == "node":
                out = self.net.run_node(st.node, xs, final=(i == logit))  # type: ignore[arg-type]
            else:
                out = self._conv(st, xs[0], xs[1] if st.kind == "conv_sum" else None)  # type: ignore[arg-type]
            slots[i] = out
            for j in st.free_after:
                if j != logit:
                    slots[j] = None
        logits = slots[logit]
        assert logits is not None
        return logits.reshape(logits.shape[0])

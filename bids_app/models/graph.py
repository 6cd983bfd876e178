"""A small layer-graph network that executes Keras-style functional graphs in PyTorch.

Why a graph and not hand-written ``forward`` methods: the published BrainImageNet models are Keras
functional graphs, and the AD files may hold either the "optimised" or the "intact" variant. Both
our own builders (:mod:`bids_app.models.irv2`) and the Keras importer
(:mod:`bids_app.models.keras_import`) describe a network as the same list of :class:`Node` specs,
and one executor (:class:`GraphNet`) runs them. An imported file and a network we build therefore
share every operator implementation, and the layer names are Keras' own, so weights map one to one.

Numerics follow Keras/TensorFlow, not PyTorch defaults:

* ``same`` padding pads ``total // 2`` before and the rest after (TensorFlow); with stride 2 and an
  even input this is asymmetric (one more at the end), which PyTorch's symmetric padding cannot
  express, so such layers pad explicitly.
* BatchNormalization uses Keras' ``epsilon`` (default 1e-3) and may have no ``gamma``
  (``scale=False``, as in every BrainImageNet conv block) or no ``beta``.
* Pooling is ``valid`` unless the spec says ``same``; average pooling with ``same`` padding divides
  by the number of real (unpadded) voxels, as TensorFlow does.
* ``Flatten`` flattens in channels-last order, so a Keras Dense kernel after it copies unchanged.

The graph's output is a single unit with a sigmoid (``Dense(1, activation='sigmoid')``); ``forward``
returns the *logit* (the value before that sigmoid) of shape ``(N,)``. Probabilities come from
:func:`bids_app.models.predict`, which applies the sigmoid in float32.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "OPS",
    "ACTIVATIONS",
    "Node",
    "GraphNet",
    "KerasBatchNorm3d",
    "SameConv3d",
    "infer_shapes",
    "nodes_from_spec",
]

#: Operators a graph may contain (each maps to one Keras layer class).
OPS: tuple[str, ...] = (
    "input",
    "conv3d",
    "batchnorm",
    "activation",
    "maxpool3d",
    "avgpool3d",
    "concat",
    "add",
    "residual",
    "gap3d",
    "dropout",
    "flatten",
    "dense",
)

#: Element-wise activations we implement exactly (Keras names).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda t: t,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "elu": F.elu,
    "selu": F.selu,
    "softplus": F.softplus,
}

_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


@dataclass(frozen=True)
class Node:
    """One layer of a graph: ``name`` (Keras layer name), ``op`` (one of :data:`OPS`), the names
    of the nodes it reads (order matters for ``concat`` and ``residual``) and its ``config``."""

    name: str
    op: str
    inputs: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "inputs": list(self.inputs), "config": dict(self.config)}


def nodes_from_spec(spec: Iterable[Mapping[str, Any]]) -> list[Node]:
    """Rebuild nodes from their JSON form (``Node.to_dict`` output)."""
    out = []
    for i, item in enumerate(spec):
        try:
            inputs, config = tuple(item.get("inputs", ())), dict(item.get("config", {}))
            out.append(Node(str(item["name"]), str(item["op"]), inputs, config))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"graph node #{i} is malformed ({exc!r}): {item!r}") from None
    return out


def _triple(v: int | Sequence[int], what: str) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(int(a) for a in v)
    if len(t) != 3:
        raise ValueError(f"{what} must be an int or 3 ints, got {v!r}")
    return t


def _same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow ``same`` padding for one axis: (before, after); the extra voxel goes at the end."""
    out = -(-size // s)
    eff = (k - 1) * d + 1
    total = max((out - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


def same_pad_arg(
    spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int] = (1, 1, 1)
) -> list[int]:
    """TensorFlow ``same`` padding of a D x H x W input as ``F.pad``'s argument (last axis first)."""
    pads: list[int] = []
    for axis in (2, 1, 0):
        pads.extend(_same_pads(spatial[axis], kernel[axis], stride[axis], dilation[axis]))
    return pads


class SameConv3d(nn.Conv3d):
    """Conv3d with Keras ``valid`` or ``same`` padding (TensorFlow's asymmetric rule).

    When ``same`` padding is symmetric for every input size (stride 1, odd effective kernel), it is
    handed to the convolution itself (fast path); otherwise the input is zero-padded explicitly
    per call, since the split depends on the input size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int],
        stride: tuple[int, int, int] = (1, 1, 1),
        padding_mode_keras: str = "valid",
        dilation: tuple[int, int, int] = (1, 1, 1),
        bias: bool = False,
    ) -> None:
        if padding_mode_keras not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding_mode_keras!r}")
        static: tuple[int, int, int] = (0, 0, 0)
        self.dynamic_same = False
        if padding_mode_keras == "same":
            effs = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
            if all(s == 1 for s in stride) and all(e % 2 == 1 for e in effs):
                static = tuple((e - 1) // 2 for e in effs)  # type: ignore[assignment]
            else:
                self.dynamic_same = True
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=static, dilation=dilation, bias=bias
        )
        self.keras_padding = padding_mode_keras

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_same:
            x = F.pad(x, same_pad_arg(x.shape[2:], self.kernel_size, self.stride, self.dilation))
        return super().forward(x)


class KerasBatchNorm3d(nn.Module):
    """BatchNormalization with Keras semantics over the channel axis of N x C x D x H x W.

    ``scale=False`` (no gamma) and ``center=False`` (no beta) are honoured by simply not having
    those parameters, so parameter counts and state dicts match Keras one to one. Keras'
    ``momentum`` m (moving = m * moving + (1 - m) * batch) is PyTorch's ``1 - m``.
    """

    def __init__(
        self, channels: int, *, epsilon: float = 1e-3, momentum: float = 0.99, center: bool = True, scale: bool = False
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        self.running_mean: torch.Tensor
        self.running_var: torch.Tensor
        self.channels = channels
        self.epsilon = float(epsilon)
        self.momentum = float(momentum)
        self.weight = nn.Parameter(torch.ones(channels)) if scale else None
        self.bias = nn.Parameter(torch.zeros(channels)) if center else None
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=self.training,
            momentum=1.0 - self.momentum,
            eps=self.epsilon,
        )

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.epsilon}, scale={self.weight is not None}, center={self.bias is not None}"


def infer_shapes(nodes: Sequence[Node], input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Shape (without batch axis, channels first) of every node's output for ``input_shape``.

    Also validates the graph: unknown ops, unknown or later inputs, wrong input counts and
    mismatched residual/concat shapes raise ``ValueError`` naming the layer.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for node in nodes:
        if node.op not in OPS:
            raise ValueError(f"layer {node.name!r}: unsupported operation {node.op!r}")
        for src in node.inputs:
            if src not in shapes:
                raise ValueError(f"layer {node.name!r} reads {src!r}, which is not defined before it")
        ins = [shapes[s] for s in node.inputs]
        c = node.config
        if node.op == "input":
            shapes[node.name] = tuple(int(v) for v in (c.get("shape") or input_shape))
            continue
        n_expected = {"concat": None, "add": None, "residual": 2}.get(node.op, 1)
        if n_expected is None:
            if len(ins) < 2:
                raise ValueError(f"layer {node.name!r} ({node.op}) needs at least 2 inputs, got {len(ins)}")
        elif len(ins) != n_expected:
            raise ValueError(f"layer {node.name!r} ({node.op}) needs {n_expected} input(s), got {len(ins)}")
        x = ins[0]
        if node.op in ("conv3d", "maxpool3d", "avgpool3d"):
            if len(x) != 4:
                raise ValueError(f"layer {node.name!r} needs a C x D x H x W input, got {x}")
            k = _triple(c["kernel_size"] if node.op == "conv3d" else c["pool_size"], "kernel")
            s = _triple(c["strides"], "strides")
            d = _triple(c.get("dilation_rate", 1), "dilation")
            sp = []
            for size, kk, ss, dd in zip(x[1:], k, s, d):
                eff = (kk - 1) * dd + 1
                n = -(-size // ss) if c["padding"] == "same" else (size - eff) // ss + 1
                if n < 1:
                    raise ValueError(f"layer {node.name!r}: input {x} too small for kernel {k} / strides {s}")
                sp.append(n)
            ch = int(c["filters"]) if node.op == "conv3d" else x[0]
            shapes[node.name] = (ch, *sp)
        elif node.op == "concat":
            if any(len(t) != len(x) or t[1:] != x[1:] for t in ins):
                raise ValueError(f"layer {node.name!r}: cannot concatenate shapes {ins} along channels")
            shapes[node.name] = (sum(t[0] for t in ins), *x[1:])
        elif node.op in ("add", "residual"):
            if any(t != x for t in ins):
                raise ValueError(f"layer {node.name!r}: inputs of different shapes {ins}")
            shapes[node.name] = x
        elif node.op == "gap3d":
            shapes[node.name] = (x[0],)
        elif node.op == "flatten":
            shapes[node.name] = (math.prod(x),)
        elif node.op == "dense":
            if len(x) != 1:
                raise ValueError(f"layer {node.name!r}: Dense needs a flat input, got {x} (add Flatten or pooling)")
            shapes[node.name] = (int(c["units"]),)
        else:  # batchnorm, activation, dropout
            shapes[node.name] = x
    return shapes


class GraphNet(nn.Module):
    """Executes a list of :class:`Node` specs (a Keras functional graph) on N x C x D x H x W input.

    Modules with weights live in ``self.layers`` under their Keras layer names, so the state dict
    reads ``layers.conv3d_1.weight``, ``layers.batch_normalization_1.running_mean`` ... and an import
    is a rename-free copy. ``forward`` returns the logit of the graph's single sigmoid output as a
    tensor of shape ``(N,)``; intermediate tensors are freed as soon as their last reader ran, which
    keeps peak memory near the largest pair of feature maps.

    Parameters
    ----------
    nodes : sequence of Node
        In topological order; the first must be the ``input``, the last the output.
    input_shape : 4 ints
        C x D x H x W of one input (used to size modules and check the graph).
    """

    def __init__(self, nodes: Sequence[Node], input_shape: Sequence[int]) -> None:
        super().__init__()
        nodes = list(nodes)
        if not nodes or nodes[0].op != "input":
            raise ValueError("a graph must start with its input node")
        names = [n.name for n in nodes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate layer names in graph: {dupes}")
        for n in names:
            if not _NAME_RE.match(n):
                raise ValueError(f"layer name {n!r} has characters other than letters, digits, '_' and '-'")
        if sum(1 for n in nodes if n.op == "input") != 1:
            raise ValueError("a graph must have exactly one input")
        self.input_shape = tuple(int(v) for v in input_shape)
        self.shapes = infer_shapes(nodes, self.input_shape)
        self.nodes: list[Node] = nodes
        self.output_name = nodes[-1].name
        self.output_activation, self.logit_node = self._find_logit(nodes)
        if self.shapes[self.output_name] != (1,):
            raise ValueError(
                f"the output layer {self.output_name!r} must give one unit, gives {self.shapes[self.output_name]}"
            )
        self.layers = nn.ModuleDict()
        for node in nodes:
            mod = self._make_module(node)
            if mod is not None:
                self.layers[node.name] = mod
        self._plan()

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _find_logit(nodes: Sequence[Node]) -> tuple[str, str]:
        last = nodes[-1]
        if last.op == "dense" and last.config.get("activation", "linear") == "sigmoid":
            return "sigmoid", last.name
        if last.op == "activation" and last.config.get("activation") == "sigmoid":
            return "sigmoid", last.inputs[0]
        raise ValueError(
            f"the output layer {last.name!r} ({last.op}, activation "
            f"{last.config.get('activation', 'linear')!r}) is not a sigmoid; a binary score model is required"
        )

    def _make_module(self, node: Node) -> nn.Module | None:
        c = node.config
        if node.op == "conv3d":
            in_ch = self.shapes[node.inputs[0]][0]
            return SameConv3d(
                in_ch,
                int(c["filters"]),
                _triple(c["kernel_size"], "kernel_size"),
                _triple(c["strides"], "strides"),
                c["padding"],
                _triple(c.get("dilation_rate", 1), "dilation_rate"),
                bias=bool(c.get("use_bias", True)),
            )
        if node.op == "batchnorm":
            return KerasBatchNorm3d(
                self.shapes[node.inputs[0]][0],
                epsilon=float(c.get("epsilon", 1e-3)),
                momentum=float(c.get("momentum", 0.99)),
                center=bool(c.get("center", True)),
                scale=bool(c.get("scale", True)),
            )
        if node.op == "dense":
            return nn.Linear(self.shapes[node.inputs[0]][0], int(c["units"]), bias=bool(c.get("use_bias", True)))
        if node.op == "dropout":
            return nn.Dropout(float(c.get("rate", 0.0)))
        return None

    def _plan(self) -> None:
        """Precompute, for every node, its input slots and which slots can be freed after it."""
        index = {n.name: i for i, n in enumerate(self.nodes)}
        last_use: dict[int, int] = {}
        for i, n in enumerate(self.nodes):
            for s in n.inputs:
                last_use[index[s]] = i
        self._inputs = [[index[s] for s in n.inputs] for n in self.nodes]
        self._free_after: list[list[int]] = [[] for _ in self.nodes]
        for slot, i in last_use.items():
            self._free_after[i].append(slot)
        self._logit_index = index[self.logit_node]

    # ------------------------------------------------------------------ execution
    def run_node(self, node: Node, xs: list[torch.Tensor], *, final: bool) -> torch.Tensor:
        op, c = node.op, node.config
        if op in ("conv3d", "dense"):
            y = self.layers[node.name](xs[0])
            act = c.get("activation", "linear")
            return y if final else ACTIVATIONS[act](y)
        if op in ("batchnorm", "dropout"):
            return self.layers[node.name](xs[0])
        if op == "activation":
            return ACTIVATIONS[c["activation"]](xs[0])
        if op == "residual":
            return xs[0] + xs[1] * float(c["scale"])
        if op == "add":
            out = xs[0]
            for t in xs[1:]:
                out = out + t
            return out
        if op == "concat":
            return torch.cat(xs, dim=1)
        if op == "maxpool3d":
            return self._pool(xs[0], c, "max")
        if op == "avgpool3d":
            return self._pool(xs[0], c, "avg")
        if op == "gap3d":
            return xs[0].mean(dim=(2, 3, 4))
        if op == "flatten":
            return xs[0].permute(0, 2, 3, 4, 1).flatten(1) if xs[0].dim() == 5 else xs[0].flatten(1)
        raise ValueError(f"layer {node.name!r}: unsupported operation {op!r}")  # pragma: no cover

    @staticmethod
    def _pool(x: torch.Tensor, c: Mapping[str, Any], kind: str) -> torch.Tensor:
        k = _triple(c["pool_size"], "pool_size")
        s = _triple(c["strides"], "strides")
        if c["padding"] == "valid":
            return F.max_pool3d(x, k, s) if kind == "max" else F.avg_pool3d(x, k, s)
        pads = same_pad_arg(x.shape[2:], k, s)
        if kind == "max":
            return F.max_pool3d(F.pad(x, pads, value=float("-inf")), k, s)
        # TensorFlow averages over real voxels only.
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        num = F.avg_pool3d(F.pad(x, pads), k, s)
        den = F.avg_pool3d(F.pad(ones, pads), k, s)
        return num / den

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N,)`` for input N x C x D x H x W (C x D x H x W = ``input_shape``)."""
        if x.dim() != 5 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"expected input N x {' x '.join(map(str, self.input_shape))}, got {tuple(x.shape)}")
        slots: list[torch.Tensor | None] = [None] * len(self.nodes)
        slots[0] = x
        for i in range(1, self._logit_index + 1):
            node = self.nodes[i]
            xs = [slots[j] for j in self._inputs[i]]
            slots[i] = self.run_node(node, xs, final=(i == self._logit_index))  # type: ignore[arg-type]
            for j in self._free_after[i]:
                if j != self._logit_index:
                    slots[j] = None
        out = slots[self._logit_index]
        assert out is not None
        return out.reshape(out.shape[0])

    # ------------------------------------------------------------------ helpers
    def spec(self) -> list[dict[str, Any]]:
        """JSON-serialisable node list (what :func:`nodes_from_spec` reads back)."""
        return [n.to_dict() for n in self.nodes]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def ancestors(self, name: str) -> list[str]:
        """Names of ``name`` and every node it depends on, in graph order."""
        index = {n.name: n for n in self.nodes}
        seen: set[str] = set()
        stack = [name]
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            stack.extend(index[cur].inputs)
        return [n.name for n in self.nodes if n.name in seen]

    def submodules(self, names: Iterable[str]) -> nn.ModuleDict:
        """A ModuleDict view (sharing parameters) of the weighted layers among ``names``."""
        return nn.ModuleDict({n: self.layers[n] for n in names if n in self.layers})

    def extra_repr(self) -> str:
        return f"input={self.input_shape}, layers={len(self.nodes)}, output={self.output_name!r}"

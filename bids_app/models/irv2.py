"""The BrainImageNet 3D Inception-ResNet-V2 family, built as Keras-named layer graphs.

Structure (Lu et al., J Big Data 2022; code: Chaogan-Yan/BrainImageNet, ``Inception_resnet_v2_3D.py``
and the training scripts), for an input of 2 x 96 x 120 x 86 (GMD, GMV):

* stem: conv 64 3^3 valid, conv 96 3^3 same, [maxpool 3/2 || conv 96 3^3 s2 valid] -> 192,
  [conv 96 1^3, conv 128 3^3 valid || conv 96 1^3, 96 1x7x1, 96 1x1x7, 96 7x1x1, 128 3^3 valid]
  -> 256, [conv 256 3^3 s2 valid || maxpool 3/2 ``StemEnd``] -> 512 at 21 x 27 x 19;
* 5 x block35 (scale 0.17), reduction A ``mixed_6a`` -> 1280 at 10 x 13 x 9,
  10 x block17 (scale 0.1; branch 128 1^3, 148 1x7x1, 170 1x1x7, 192 7x1x1),
  reduction B ``mixed_7a`` -> 2272 at 4 x 6 x 4,
  5 x block8 (scale 0.2; the last one scale 1.0 and no activation; branch 192 1^3, 212 1x3x1,
  234 1x1x3, 256 3x1x1), ``conv_7b`` 1536 1^3, ``avg_pool``, dropout, Dense(1, sigmoid).

Every conv is Conv3D (no bias) + BatchNormalization(scale=False, epsilon 1e-3) + ReLU, except a
block's ``_conv`` (bias, no BN, no activation). Layer names reproduce what Keras 2.2.4 gives in a
fresh session (``conv3d_1``, ``batch_normalization_1``, ``activation_1`` ... numbered in creation
order; explicit names where the reference code gives them), so a published file imports one to one.

Architectures (``build_network(name, ...)``):

* ``irv2_sex``: the sex network (about 54.0 M parameters at width 1).
* ``irv2_ad_optimised``: the published AD network: the sex stem up to the concatenation after
  ``StemEnd`` (512 channels), then ``mpool1`` (max 3/2), ``conv1`` 256 3^3 valid, ``conv2`` 256 3^3 s2
  *same* (TensorFlow pads one voxel more at the end on even axes), [``mpool2`` max 3/2 ||
  ``conv3`` 256 3^3 s2 valid] -> ``conc1`` 512, ``apool1`` global average, ``dropout1``, ``dense_1``
  (about 10.2 M parameters).
* ``irv2_ad_intact``: the whole sex network with ``dropout1`` and a new ``dense_1``.

``forward`` returns logits of shape (N,); apply a sigmoid for scores (the predictor does).
The stem layers carry the same names in all three, so ``ad.stem.load_state_dict(sex.stem.state_dict())``
transfers the sex network's stem to an AD network (the reference system's transfer learning).
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from .graph import GraphNet, Node

__all__ = [
    "ARCHITECTURES",
    "STEM_END",
    "IRV2Net",
    "build_network",
    "irv2_nodes",
]

ARCHITECTURES: tuple[str, ...] = ("irv2_sex", "irv2_ad_optimised", "irv2_ad_intact")
#: Name of the stem's last max-pooling layer in the reference code; the stem output is the
#: concatenation that reads it.
STEM_END = "StemEnd"


class _Namer:
    """Keras 2.2.4 auto-naming: ``<snake_case class>_<n>`` with a per-class counter from 1."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, prefix: str) -> str:
        self.counts[prefix] = self.counts.get(prefix, 0) + 1
        return f"{prefix}_{self.counts[prefix]}"


class _Builder:
    def __init__(self, width: float) -> None:
        self.nodes: list[Node] = []
        self.auto = _Namer()
        self.width = width
        self.channels: dict[str, int] = {}

    def ch(self, n: int) -> int:
        return max(1, int(round(n * self.width)))

    def add(self, name: str, op: str, inputs: Sequence[str], config: dict[str, Any], channels: int) -> str:
        self.nodes.append(Node(name, op, tuple(inputs), config))
        self.channels[name] = channels
        return name

    def input(self, channels: int) -> str:
        return self.add(self.auto("input"), "input", (), {}, channels)

    def conv_bn(self, x: str, filters: int, kernel: int | Sequence[int], strides: int = 1, padding: str = "same",
                activation: str | None = "relu", use_bias: bool = False, name: str | None = None,
                scale_width: bool = True) -> str:
        """The reference ``conv3d_bn``: Conv3D, then BN(scale=False) unless biased, then activation."""
        f = self.ch(filters) if scale_width else filters
        k = [kernel] * 3 if isinstance(kernel, int) else list(kernel)
        conv_name = name or self.auto("conv3d")
        y = self.add(conv_name, "conv3d", [x], {
            "filters": f, "kernel_size": k, "strides": [strides] * 3, "padding": padding,
            "use_bias": use_bias, "activation": "linear", "dilation_rate": [1, 1, 1],
        }, f)
        if not use_bias:
            bn_name = f"{name}_bn" if name else self.auto("batch_normalization")
            bn_config = {"epsilon": 1e-3, "momentum": 0.99, "center": True, "scale": False}
            y = self.add(bn_name, "batchnorm", [y], bn_config, f)
        if activation is not None:
            ac_name = f"{name}_ac" if name else self.auto("activation")
            y = self.add(ac_name, "activation", [y], {"activation": activation}, f)
        return y

    def maxpool(self, x: str, name: str | None = None) -> str:
        return self.add(name or self.auto("max_pooling3d"), "maxpool3d", [x],
                        {"pool_size": [3, 3, 3], "strides": [2, 2, 2], "padding": "valid"}, self.channels[x])

    def concat(self, xs: Sequence[str], name: str | None = None) -> str:
        return self.add(name or self.auto("concatenate"), "concat", xs, {"axis": -1}, sum(self.channels[x] for x in xs))

    # -------------------------------------------------------------- network parts
    def stem(self, x: str) -> str:
        x = self.conv_bn(x, 64, 3, padding="valid")
        x = self.conv_bn(x, 96, 3)
        x1 = self.maxpool(x)
        x2 = self.conv_bn(x, 96, 3, 2, padding="valid")
        x = self.concat([x1, x2])
        x1 = self.conv_bn(x, 96, 1)
        x1 = self.conv_bn(x1, 128, 3, padding="valid")
        x2 = self.conv_bn(x, 96, 1)
        x2 = self.conv_bn(x2, 96, [1, 7, 1])
        x2 = self.conv_bn(x2, 96, [1, 1, 7])
        x2 = self.conv_bn(x2, 96, [7, 1, 1])
        x2 = self.conv_bn(x2, 128, 3, padding="valid")
        x = self.concat([x1, x2])
        x1 = self.conv_bn(x, 256, 3, 2, padding="valid")
        x2 = self.maxpool(x, name=STEM_END)
        return self.concat([x1, x2])

    def block(self, x: str, scale: float, block_type: str, idx: int, activation: str | None = "relu") -> str:
        if block_type == "block35":
            b0 = self.conv_bn(x, 32, 1)
            b1 = self.conv_bn(self.conv_bn(x, 32, 1), 32, 3)
            b2 = self.conv_bn(self.conv_bn(self.conv_bn(x, 32, 1), 48, 3), 64, 3)
            branches = [b0, b1, b2]
        elif block_type == "block17":
            b0 = self.conv_bn(x, 192, 1)
            b1 = self.conv_bn(x, 128, 1)
            b1 = self.conv_bn(b1, 148, [1, 7, 1])
            b1 = self.conv_bn(b1, 170, [1, 1, 7])
            b1 = self.conv_bn(b1, 192, [7, 1, 1])
            branches = [b0, b1]
        else:
            b0 = self.conv_bn(x, 192, 1)
            b1 = self.conv_bn(x, 192, 1)
            b1 = self.conv_bn(b1, 212, [1, 3, 1])
            b1 = self.conv_bn(b1, 234, [1, 1, 3])
            b1 = self.conv_bn(b1, 256, [3, 1, 1])
            branches = [b0, b1]
        name = f"{block_type}_{idx}"
        mixed = self.concat(branches, name=f"{name}_mixed")
        up = self.conv_bn(
            mixed, self.channels[x], 1, activation=None, use_bias=True, name=f"{name}_conv", scale_width=False
        )
        y = self.add(name, "residual", [x, up], {"scale": scale}, self.channels[x])
        if activation is not None:
            y = self.add(f"{name}_ac", "activation", [y], {"activation": activation}, self.channels[x])
        return y

    def trunk(self, x: str, blocks: tuple[int, int, int]) -> str:
        for i in range(1, blocks[0] + 1):
            x = self.block(x, 0.17, "block35", i)
        b0 = self.conv_bn(x, 384, 3, strides=2, padding="valid")
        b1 = self.conv_bn(x, 256, 1)
        b1 = self.conv_bn(b1, 256, 3)
        b1 = self.conv_bn(b1, 384, 3, strides=2, padding="valid")
        bp = self.maxpool(x)
        x = self.concat([b0, b1, bp], name="mixed_6a")
        for i in range(1, blocks[1] + 1):
            x = self.block(x, 0.1, "block17", i)
        b0 = self.conv_bn(self.conv_bn(x, 256, 1), 384, 3, strides=2, padding="valid")
        b1 = self.conv_bn(self.conv_bn(x, 256, 1), 288, 3, strides=2, padding="valid")
        b2 = self.conv_bn(self.conv_bn(self.conv_bn(x, 256, 1), 288, 3), 320, 3, strides=2, padding="valid")
        bp = self.maxpool(x)
        x = self.concat([b0, b1, b2, bp], name="mixed_7a")
        for i in range(1, blocks[2]):
            x = self.block(x, 0.2, "block8", i)
        x = self.block(x, 1.0, "block8", blocks[2], activation=None)
        x = self.conv_bn(x, 1536, 1, name="conv_7b")
        return self.add("avg_pool", "gap3d", [x], {}, self.channels[x])

    def head(self, x: str, dropout: float, dropout_name: str | None = None) -> str:
        d = self.add(dropout_name or self.auto("dropout"), "dropout", [x], {"rate": dropout}, self.channels[x])
        return self.add(self.auto("dense"), "dense", [d], {"units": 1, "activation": "sigmoid", "use_bias": True}, 1)


def _check_params(
    architecture: str, width: float, blocks: Sequence[int], in_channels: int, dropout: float
) -> tuple[int, int, int]:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}; got {architecture!r}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0.01 <= float(width) <= 4.0:
        raise ValueError(f"width (channel multiplier) must be a number in [0.01, 4]; got {width!r}")
    try:
        b = tuple(int(v) for v in blocks)
    except (TypeError, ValueError):
        raise ValueError(f"blocks must be 3 integers (block35, block17, block8 repeats); got {blocks!r}") from None
    if len(b) != 3 or b[0] < 0 or b[1] < 0 or b[2] < 1 or any(v > 50 for v in b):
        raise ValueError(
            f"blocks must be 3 integers (block35 >= 0, block17 >= 0, block8 >= 1, each <= 50); got {blocks!r}"
        )
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer; got {in_channels!r}")
    if not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
    return b


def irv2_nodes(
    architecture: str,
    *,
    width: float = 1.0,
    blocks: Sequence[int] = (5, 10, 5),
    in_channels: int = 2,
    dropout: float = 0.5,
) -> tuple[list[Node], list[str]]:
    """Node list of an architecture plus the names of its stem layers (input up to the stem output)."""
    b = _check_params(architecture, width, blocks, in_channels, dropout)
    g = _Builder(float(width))
    x = g.input(in_channels)
    stem_out = g.stem(x)
    n_stem = len(g.nodes)
    if architecture == "irv2_ad_optimised":
        # Rebuild the sex network's names for the stem only: the AD file's stem layers are the sex
        # file's layers, and the sex network's later auto-named layers never enter the AD graph.
        y = g.maxpool(stem_out, name="mpool1")
        y = g.conv_bn(y, 256, 3, padding="valid", name="conv1")
        y = g.conv_bn(y, 256, 3, 2, name="conv2")
        y1 = g.maxpool(y, name="mpool2")
        y2 = g.conv_bn(y, 256, 3, 2, padding="valid", name="conv3")
        y = g.concat([y1, y2], name="conc1")
        y = g.add("apool1", "gap3d", [y], {}, g.channels[y])
        g.auto.counts.pop("dropout", None)
        g.head(y, float(dropout), dropout_name="dropout1")
    else:
        y = g.trunk(stem_out, b)
        if architecture == "irv2_sex":
            g.head(y, float(dropout))
        else:
            g.auto.counts.pop("dense", None)
            g.head(y, float(dropout), dropout_name="dropout1")
    stem_names = [n.name for n in g.nodes[:n_stem]]
    return g.nodes, stem_names


class IRV2Net(GraphNet):
    """A BrainImageNet network built from its architecture name and hyper-parameters.

    ``stem`` is a ModuleDict view of the stem's weighted layers (shared parameters, Keras names), so
    the stem of a sex network loads into an AD network: ``ad.stem.load_state_dict(sex.stem.state_dict())``.
    ``architecture`` and ``params`` are what a model package records to rebuild the network.
    """

    def __init__(
        self,
        architecture: str,
        *,
        width: float = 1.0,
        blocks: Sequence[int] = (5, 10, 5),
        in_channels: int = 2,
        dropout: float = 0.5,
        input_spatial: Sequence[int] = (96, 120, 86),
    ) -> None:
        nodes, stem = irv2_nodes(architecture, width=width, blocks=blocks, in_channels=in_channels, dropout=dropout)
        spatial = tuple(int(v) for v in input_spatial)
        if len(spatial) != 3 or min(spatial) < 1:
            raise ValueError(f"input_spatial must be 3 positive integers; got {input_spatial!r}")
        super().__init__(nodes, (in_channels, *spatial))
        self.architecture = architecture
        self.params = {
            "width": float(width),
            "blocks": [int(v) for v in blocks],
            "in_channels": int(in_channels),
            "dropout": float(dropout),
        }
        self.stem_names = tuple(stem)

    @property
    def stem(self) -> nn.ModuleDict:
        return self.submodules(self.stem_names)


def build_network(architecture: str, **params: Any) -> IRV2Net:
    """Build ``architecture`` (one of :data:`ARCHITECTURES`) with ``width``, ``blocks``, ``in_channels``,
    ``dropout`` (and ``input_spatial`` for tests on smaller volumes). Returns an ``nn.Module`` whose
    ``forward`` maps N x 2 x 96 x 120 x 86 float to logits of shape (N,).

    Raises ``ValueError`` naming the parameter, the rule and the value for bad hyper-parameters.
    """
    allowed = {"width", "blocks", "in_channels", "dropout", "input_spatial"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {architecture!r}; allowed: {sorted(allowed)}")
    return IRV2Net(architecture, **params)

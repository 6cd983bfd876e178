"""Liu et al. 2022 (dilated 3-D CNN) with the deeper MLP of the MOX reproduction.

As the MOX report (Politecnico di Milano, 2025) gives it, on Clinica ``t1-volume`` maps, three
classes CN / MCI / AD:

* four blocks ``MP(ReLU(InstanceNorm(Conv(z))))`` (``blocks.0`` .. ``blocks.3``):
  1 -> 32, kernel 1, max pool 3 / stride 2; 32 -> 256, kernel 3, dilation 2, pool 3/2;
  256 -> 512, kernel 5, dilation 2, padding 2, pool 3/2; 512 -> 512, kernel 3, dilation 2,
  padding 1, pool 5/2 (stride 1, no padding unless stated);
* an MLP F -> 1024 -> 512 -> 3, ReLU after the first two, softmax on the output (F = flattened
  size of the last block's output, derived here from ``input_shape``).

Facts checked against the report's total of 24,736,067 weights: that number is reproduced exactly
with biased convs, InstanceNorm *without* affine parameters (PyTorch's default) and F = 512, i.e. a
1 x 1 x 1 feature map (any input side of 87 to 102 voxels gives that; the report's crop size is not
stated). The report mentions no dropout, so there is none. On this app's full ``gm_spm1`` input
(121 x 145 x 121) the feature map is 512 x 3 x 4 x 3, F = 18,432 and the network holds 43,086,147
weights, most of them in the MLP's first layer.

InstanceNorm cannot be folded into the conv (it uses each input's own statistics), so the fast
CPU path applies only its channels-last layout here.

``channels`` and ``hidden`` (defaults: the report's 32, 256, 512, 512 and 1024, 512) exist for
small demo and test networks. Module names (safetensors keys): ``blocks.<i>.conv.{weight, bias}``,
``classifier.fc0`` (W0), ``classifier.fc1`` (W1), ``classifier.fc2`` (W2, the output).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ModelPackageError
from .blocks import (
    ConvBlock,
    check_feature_shape,
    check_input,
    check_input_shape,
    check_int_list,
    check_positive_int,
    conv_out,
    mlp_head,
    pool_out,
)

__all__ = ["LIU_CHANNELS", "LIU_HIDDEN", "LIU_LAYERS", "LiuMOX"]

LIU_CHANNELS: tuple[int, int, int, int] = (32, 256, 512, 512)
LIU_HIDDEN: tuple[int, int] = (1024, 512)
#: Per block: (kernel, dilation, padding, pool kernel, pool stride).
LIU_LAYERS: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 1, 0, 3, 2),
    (3, 2, 0, 3, 2),
    (5, 2, 2, 3, 2),
    (3, 2, 1, 5, 2),
)
_ARCH = "liu_mox"


class LiuMOX(nn.Module):
    """Liu/MOX CNN + MLP; ``forward`` maps N x C x D x H x W to raw outputs (N, n_outputs), default 3."""

    def __init__(
        self,
        *,
        n_outputs: int = 3,
        in_channels: int = 1,
        input_shape: Sequence[int] = (121, 145, 121),
        channels: Sequence[int] = LIU_CHANNELS,
        hidden: Sequence[int] = LIU_HIDDEN,
    ) -> None:
        super().__init__()
        n_outputs = check_positive_int(_ARCH, "n_outputs", n_outputs, maximum=10_000)
        in_channels = check_positive_int(_ARCH, "in_channels", in_channels, maximum=64)
        shape = check_input_shape(_ARCH, input_shape)
        chans = check_int_list(_ARCH, "channels", channels, min_len=4, maximum=4096)
        hid = check_int_list(_ARCH, "hidden", hidden, min_len=2, maximum=16384)
        if len(chans) != 4 or len(hid) != 2:
            raise ModelPackageError(
                f"architecture {_ARCH!r}: channels must hold 4 and hidden 2 integers; got {list(chans)}, {list(hid)}"
            )
        spatial = list(shape)
        blocks: list[nn.Module] = []
        c_in = in_channels
        for c, (k, d, p, pk, ps) in zip(chans, LIU_LAYERS):
            blocks.append(ConvBlock(
                nn.Conv3d(c_in, c, kernel_size=k, dilation=d, padding=p, bias=True),
                nn.InstanceNorm3d(c, affine=False, track_running_stats=False),
                nn.MaxPool3d(kernel_size=pk, stride=ps),
            ))
            spatial = [pool_out(conv_out(n, k, 1, p, d), pk, ps) for n in spatial]
            check_feature_shape(_ARCH, spatial, shape)
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.feature_shape: tuple[int, ...] = (c_in, *spatial)
        n_features = c_in * spatial[0] * spatial[1] * spatial[2]
        self.classifier = mlp_head(n_features, hid[:2], n_outputs)

        self.architecture = _ARCH
        self.in_channels = in_channels
        self.input_shape = shape
        self.n_outputs = n_outputs
        self.n_features = n_features
        self.params: dict[str, Any] = {
            "n_outputs": n_outputs,
            "in_channels": in_channels,
            "input_shape": list(shape),
            "channels": chans,
            "hidden": hid,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.input_shape)
        return self.classifier(torch.flatten(self.blocks(x), 1))

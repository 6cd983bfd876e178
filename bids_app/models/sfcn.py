"""SFCN (Peng et al., Medical Image Analysis 2021) with the multi-task head of Leonardsen et al.

The backbone as Peng et al. describe it for a 1 x 160 x 192 x 160 input (the T1w affinely
registered to MNI at 1 mm, cropped, divided by its mean):

* ``channels`` 32, 64, 128, 256, 256, 64: every entry but the last is a block
  conv 3^3 (padding 1, bias) -> BatchNorm -> max pool 2 / stride 2 -> ReLU; the last is
  conv 1^3 -> BatchNorm -> ReLU (no pool). Five pools take 160 x 192 x 160 to 5 x 6 x 5.
* classifier: average pool over the whole remaining map (5 x 6 x 5 for that input; derived here
  from ``input_shape``), dropout (0.5), conv 1^3 to the outputs. Peng et al. used 40 outputs (age
  bins, log-softmax); about 3 M parameters.

Multi-task head (Leonardsen et al.: one output neuron per target, age, sex, handedness, BMI, fluid
intelligence, neuroticism, a weighted loss with missing targets masked): one 1^3 conv with
``n_outputs`` channels. A separate one-unit linear head per task, their outputs concatenated in task
order, is exactly this layer, each task owning one output channel; a model card's ``heads`` map
each task to its ``outputs`` slice. ``forward`` returns the raw values (N, n_outputs): logits for
binary targets, standardised values for regression targets; no softmax.

Module names follow Peng et al.'s public code, so their state-dict keys map by name (after dropping
the ``module.`` prefix of a DataParallel file and BatchNorm's ``num_batches_tracked``):
``feature_extractor.conv_<i>.0`` (conv), ``feature_extractor.conv_<i>.1`` (BatchNorm),
``classifier.conv_<n>`` (the head, n = number of channel entries).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .blocks import (
    BatchNorm3d,
    check_feature_shape,
    check_fraction,
    check_input,
    check_input_shape,
    check_int_list,
    check_positive_int,
    pool_out,
)

__all__ = ["SFCN_CHANNELS", "SFCN"]

SFCN_CHANNELS: tuple[int, ...] = (32, 64, 128, 256, 256, 64)
_ARCH = "sfcn"


class SFCN(nn.Module):
    """SFCN backbone + multi-task head; ``forward`` maps N x C x D x H x W to (N, n_outputs)."""

    def __init__(
        self,
        *,
        channels: Sequence[int] = SFCN_CHANNELS,
        n_outputs: int = 1,
        in_channels: int = 1,
        input_shape: Sequence[int] = (160, 192, 160),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        chans = check_int_list(_ARCH, "channels", channels, min_len=2, maximum=4096)
        n_outputs = check_positive_int(_ARCH, "n_outputs", n_outputs, maximum=10_000)
        in_channels = check_positive_int(_ARCH, "in_channels", in_channels, maximum=64)
        shape = check_input_shape(_ARCH, input_shape)
        rate = check_fraction(_ARCH, "dropout", dropout)

        spatial = list(shape)
        self.feature_extractor = nn.Sequential()
        c_in = in_channels
        last = len(chans) - 1
        for i, c in enumerate(chans):
            if i < last:
                layer = nn.Sequential(
                    nn.Conv3d(c_in, c, kernel_size=3, padding=1), BatchNorm3d(c),
                    nn.MaxPool3d(kernel_size=2, stride=2), nn.ReLU(inplace=True),
                )
                spatial = [pool_out(n, 2, 2) for n in spatial]
                check_feature_shape(_ARCH, spatial, shape)
            else:
                layer = nn.Sequential(nn.Conv3d(c_in, c, kernel_size=1), BatchNorm3d(c), nn.ReLU(inplace=True))
            self.feature_extractor.add_module(f"conv_{i}", layer)
            c_in = c
        self.feature_shape: tuple[int, ...] = (c_in, *spatial)
        self.classifier = nn.Sequential()
        self.classifier.add_module("average_pool", nn.AvgPool3d(kernel_size=(spatial[0], spatial[1], spatial[2])))
        self.classifier.add_module("dropout", nn.Dropout(rate))
        self.classifier.add_module(f"conv_{len(chans)}", nn.Conv3d(c_in, n_outputs, kernel_size=1))

        self.architecture = _ARCH
        self.in_channels = in_channels
        self.input_shape = shape
        self.n_outputs = n_outputs
        self.params: dict[str, Any] = {
            "channels": chans,
            "n_outputs": n_outputs,
            "in_channels": in_channels,
            "input_shape": list(shape),
            "dropout": rate,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.input_shape)
        return torch.flatten(self.classifier(self.feature_extractor(x)), 1)

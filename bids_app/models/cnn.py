"""CNN-5 / CNN-7 / CNN-10 / CNN-12: the plain 3-D CNNs of the transferable-3D-CNN study.

What the paper states (MICCAI workshop paper on transferable 3-D CNNs, Sect. 2.2, 3 and Fig. 1):

* CNN-5: five conv layers of 3 x 3 x 3 filters, each followed by batch normalisation and ReLU, and
  "a 2 x 2 x 2 max pooling (stride 2) added after each Conv layer"; then three fully connected
  layers of 128, 64 and 2 units and a softmax; dropout 0.5; Adam lr 1e-4, batch 2.
* CNN-7: filters 8, 16, 32, 64, 64, 128, 128; CNN-10: 8, 8, 16, 16, 32, 32, 64, 64, 128, 128;
  CNN-12: 8, 8, 16, 16, 32, 32, 64, 64, 64, 128, 128, 128; "the FC layers ... remain the same".
* Width: every conv's filter count times a widening factor w (1, 2, 4 and 5 reported).

What the paper leaves open, and what this module does (each one a parameter):

* CNN-5's filters appear only in Fig. 1 (8 for the first layer). The deeper variants double the
  count from one stage to the next from 8 up to 128, so CNN-5 = 8, 16, 32, 64, 128
  (``CNN_PRESETS["cnn5"]``; pass another ``filters`` list to override).
* Pool placement in the deeper variants is in the paper's supplementary material, which we do not
  have. A pool after *every* conv cannot be what was used on this app's input: with padded 3^3 convs
  an axis of 121 voxels shrinks 121 -> 60 -> 30 -> 15 -> 7 -> 3 -> 1 -> 0 at the seventh pool. We
  pool after the last conv of each run of equal filter counts, which keeps CNN-5's rule (its five
  counts all differ) and gives every variant the same five pooling stages, VGG-style
  (``pool_after``: 0-based indices of the convs followed by a pool; default from that rule).
* Padding 1 ("same") for every conv: unpadded convs with pools after pairs also reach zero on 121.
* No conv bias (the BatchNorm that follows has a shift), ReLU after FC 128 and FC 64, dropout
  after each of those two ReLUs.
* Output: ``n_outputs`` raw values (default 1: a binary head's logit; the paper's two-unit softmax
  is the same model, its logit difference).

Module names (safetensors keys): ``blocks.<i>.conv.weight``, ``blocks.<i>.norm.{weight, bias,
running_mean, running_var}``, ``classifier.fc0`` (F -> 128), ``classifier.fc1`` (128 -> 64),
``classifier.fc2`` (64 -> n_outputs). The paper's fine-tuning of "Conv-1" or "Conv-5 + FC" freezes
``blocks.0`` or everything but ``blocks.4`` and ``classifier``. The flatten is channels-first
(PyTorch order).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ModelPackageError
from .blocks import (
    BatchNorm3d,
    ConvBlock,
    check_feature_shape,
    check_fraction,
    check_input,
    check_input_shape,
    check_int_list,
    check_positive_int,
    conv_out,
    mlp_head,
    pool_out,
)

__all__ = ["CNN_PRESETS", "CNN_HIDDEN", "CNN3D", "default_pool_after"]

#: Filter counts at width 1 of the four depth variants (CNN-5 inferred, see the module doc).
CNN_PRESETS: dict[str, tuple[int, ...]] = {
    "cnn5": (8, 16, 32, 64, 128),
    "cnn7": (8, 16, 32, 64, 64, 128, 128),
    "cnn10": (8, 8, 16, 16, 32, 32, 64, 64, 128, 128),
    "cnn12": (8, 8, 16, 16, 32, 32, 64, 64, 64, 128, 128, 128),
}
#: Units of the two hidden fully connected layers (the third FC layer is the output).
CNN_HIDDEN: tuple[int, int] = (128, 64)
_ARCH = "cnn"


def default_pool_after(filters: Sequence[int]) -> list[int]:
    """Indices of the convs followed by a pool: the last of each run of equal filter counts."""
    return [i for i in range(len(filters)) if i == len(filters) - 1 or filters[i + 1] != filters[i]]


def _resolve_filters(filters: Any) -> list[int]:
    if isinstance(filters, str):
        if filters not in CNN_PRESETS:
            raise ModelPackageError(
                f"architecture {_ARCH!r}: filters preset must be one of {', '.join(CNN_PRESETS)}; got {filters!r}"
            )
        return list(CNN_PRESETS[filters])
    return check_int_list(_ARCH, "filters", filters, maximum=4096)


class CNN3D(nn.Module):
    """A CNN-5/7/10/12 network; ``forward`` maps N x C x D x H x W to raw outputs (N, n_outputs).

    ``filters`` is a preset name (``"cnn5"``, ``"cnn7"``, ``"cnn10"``, ``"cnn12"``) or a list of
    filter counts at width 1; ``width`` multiplies every count (rounded, at least 1). ``params`` holds
    the resolved values a model card records (``filters`` as a list, ``pool_after``).
    """

    def __init__(
        self,
        *,
        filters: str | Sequence[int] = "cnn5",
        width: float = 1.0,
        n_outputs: int = 1,
        in_channels: int = 1,
        input_shape: Sequence[int] = (121, 145, 121),
        dropout: float = 0.5,
        pool_after: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        base = _resolve_filters(filters)
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0.0 < float(width) <= 8.0:
            raise ModelPackageError(f"architecture {_ARCH!r}: width must be a number in (0, 8]; got {width!r}")
        n_outputs = check_positive_int(_ARCH, "n_outputs", n_outputs, maximum=10_000)
        in_channels = check_positive_int(_ARCH, "in_channels", in_channels, maximum=64)
        shape = check_input_shape(_ARCH, input_shape)
        rate = check_fraction(_ARCH, "dropout", dropout)
        if pool_after is None:
            pools = default_pool_after(base)
        else:
            ok = isinstance(pool_after, (list, tuple)) and all(
                not isinstance(i, bool) and isinstance(i, int) and 0 <= i < len(base) for i in pool_after
            ) and len(set(pool_after)) == len(pool_after)
            if not ok:
                raise ModelPackageError(
                    f"architecture {_ARCH!r}: pool_after must list distinct conv indices in [0, {len(base) - 1}]; "
                    f"got {pool_after!r}"
                )
            pools = sorted(int(i) for i in pool_after)
        chans = [max(1, int(round(f * float(width)))) for f in base]

        spatial = list(shape)
        blocks: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(chans):
            pooled = i in pools
            blocks.append(ConvBlock(
                nn.Conv3d(c_in, c, kernel_size=3, padding=1, bias=False),
                BatchNorm3d(c),
                nn.MaxPool3d(kernel_size=2, stride=2) if pooled else None,
            ))
            spatial = [conv_out(n, 3, padding=1) for n in spatial]
            if pooled:
                spatial = [pool_out(n, 2, 2) for n in spatial]
            check_feature_shape(_ARCH, spatial, shape)
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.feature_shape: tuple[int, ...] = (c_in, *spatial)
        n_features = c_in * spatial[0] * spatial[1] * spatial[2]
        self.classifier = mlp_head(n_features, CNN_HIDDEN[:2], n_outputs, dropout=rate)

        self.architecture = _ARCH
        self.in_channels = in_channels
        self.input_shape = shape
        self.n_outputs = n_outputs
        self.n_features = n_features
        self.params: dict[str, Any] = {
            "filters": base,
            "width": float(width),
            "n_outputs": n_outputs,
            "in_channels": in_channels,
            "input_shape": list(shape),
            "dropout": rate,
            "pool_after": pools,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.input_shape)
        return self.classifier(torch.flatten(self.blocks(x), 1))

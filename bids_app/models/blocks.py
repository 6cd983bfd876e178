"""Shared parts of the plain-PyTorch model families (CNN-5/7/10/12, Liu/MOX, SFCN).

* :class:`BatchNorm3d`: PyTorch's batch-norm numerics (eps 1e-5, momentum 0.1) without the
  integer ``num_batches_tracked`` counter, so every tensor a package stores is a float and its key
  set is ``weight, bias, running_mean, running_var`` (as the IRv2 networks' BN).
* :class:`ConvBlock`: conv -> norm -> ReLU and an optional max pool (the pool before or after the
  ReLU; both orders give the same numbers, because max pooling commutes with a monotone function,
  but each family states its paper's order).
* Parameter checks that name the architecture, the parameter, the rule and the value, raising
  :class:`~bids_app.errors.ModelPackageError` (a card can reach them; exit code 65).
* Shape arithmetic (``conv_out``, ``pool_out``) so every network derives its flattened feature size
  from ``input_shape`` instead of hard-coding it.
* :func:`fold_conv_batchnorm`: the inference-time BatchNorm folding of the fast CPU path for these
  networks (the IRv2 graphs have their own, :func:`bids_app.models.fast.fold_batchnorm`).
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..errors import ModelPackageError
from .graph import KerasBatchNorm3d

__all__ = [
    "BatchNorm3d",
    "ConvBlock",
    "mlp_head",
    "conv_out",
    "pool_out",
    "check_positive_int",
    "check_int_list",
    "check_input_shape",
    "check_fraction",
    "check_input",
    "fold_conv_batchnorm",
]


class BatchNorm3d(KerasBatchNorm3d):
    """Batch normalisation with gamma and beta, PyTorch's defaults (eps 1e-5, momentum 0.1)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, epsilon=1e-5, momentum=0.9, center=True, scale=True)


class ConvBlock(nn.Module):
    """``conv`` -> ``norm`` -> ReLU, with ``pool`` (a max pool or ``None``) after or before the ReLU.

    Submodule names ``conv`` and ``norm`` are part of the state-dict keys (``blocks.0.conv.weight``).
    """

    def __init__(self, conv: nn.Conv3d, norm: nn.Module, pool: nn.Module | None, *, pool_first: bool = False) -> None:
        super().__init__()
        self.conv = conv
        self.norm = norm
        self.pool = pool if pool is not None else nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.pool_first = bool(pool_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        if self.pool_first:
            return self.act(self.pool(x))
        return self.pool(self.act(x))


# --------------------------------------------------------------------------- shape arithmetic


def mlp_head(n_features: int, hidden: Sequence[int], n_outputs: int, dropout: float | None = None) -> nn.Sequential:
    """Fully connected layers ``fc0 .. fc{k}`` with ReLU (``act{i}``) and, when given, dropout
    (``drop{i}``) after each hidden layer: the classifier of the CNN and Liu/MOX families, whose
    module names become the safetensors keys (``classifier.fc0.weight``, ...)."""
    head = nn.Sequential()
    sizes = [int(n_features), *map(int, hidden)]
    for i in range(len(sizes) - 1):
        head.add_module(f"fc{i}", nn.Linear(sizes[i], sizes[i + 1]))
        head.add_module(f"act{i}", nn.ReLU(inplace=True))
        if dropout is not None:
            head.add_module(f"drop{i}", nn.Dropout(dropout))
    head.add_module(f"fc{len(sizes) - 1}", nn.Linear(sizes[-1], int(n_outputs)))
    return head


def conv_out(n: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution along one axis (PyTorch's formula)."""
    return math.floor((n + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1


def pool_out(n: int, kernel: int, stride: int) -> int:
    """Output length of an unpadded max/average pool along one axis (floor mode)."""
    return math.floor((n - kernel) / stride) + 1


# --------------------------------------------------------------------------- parameter checks


def _fail(arch: str, message: str) -> ModelPackageError:
    return ModelPackageError(f"architecture {arch!r}: {message}")


def check_positive_int(arch: str, name: str, value: Any, *, maximum: int = 1_000_000) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise _fail(arch, f"{name} must be an integer in [1, {maximum}]; got {value!r}")
    return int(value)


def check_int_list(arch: str, name: str, value: Any, *, min_len: int = 1, maximum: int = 100_000) -> list[int]:
    ok = isinstance(value, (list, tuple)) and len(value) >= min_len and all(
        not isinstance(v, bool) and isinstance(v, int) and 1 <= v <= maximum for v in value
    )
    if not ok:
        raise _fail(arch, f"{name} must be a list of at least {min_len} integers in [1, {maximum}]; got {value!r}")
    return [int(v) for v in value]


def check_input_shape(arch: str, value: Any) -> tuple[int, int, int]:
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        not isinstance(v, bool) and isinstance(v, int) and v >= 1 for v in value
    )
    if not ok:
        raise _fail(arch, f"input_shape must be 3 positive integers (the spatial size D, H, W); got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


def check_fraction(arch: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise _fail(arch, f"{name} must be a number in [0, 1); got {value!r}")
    return float(value)


def check_feature_shape(arch: str, shape: Sequence[int], input_shape: Sequence[int]) -> None:
    """Refuse an input too small for the network's downsampling (a size would reach zero)."""
    if min(shape) < 1:
        raise _fail(arch, f"input_shape {list(input_shape)} is too small: the feature map would be {list(shape)}")


def check_input(x: torch.Tensor, in_channels: int, input_shape: Sequence[int]) -> None:
    """The input must be N x C x D x H x W with C, D, H, W the network's (a clearer error than a matmul's)."""
    want = (in_channels, *input_shape)
    if x.dim() != 5 or tuple(x.shape[1:]) != want:
        raise ValueError(f"expected input N x {' x '.join(map(str, want))}, got {tuple(x.shape)}")


# --------------------------------------------------------------------------- inference folding


def _fold_pair(conv: nn.Conv3d, bn: KerasBatchNorm3d) -> nn.Conv3d:
    """A biased conv equal to ``bn(conv(x))`` in eval mode, the algebra done in float64."""
    dtype = conv.weight.dtype
    w64 = conv.weight.detach().double()
    b64 = conv.bias.detach().double() if conv.bias is not None else None
    ones = torch.ones_like(bn.running_mean, dtype=torch.float64)
    gamma = bn.weight.detach().double() if bn.weight is not None else ones
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(ones)
    w, b = fuse_conv_bn_weights(w64, b64, bn.running_mean.double(), bn.running_var.double(), bn.epsilon, gamma, beta)
    fused = copy.deepcopy(conv)
    fused.weight = nn.Parameter(w.detach().to(dtype), requires_grad=False)
    fused.bias = nn.Parameter(b.detach().to(dtype), requires_grad=False)
    return fused


def fold_conv_batchnorm(net: nn.Module) -> nn.Module:
    """A copy of ``net`` in eval mode where every conv -> BatchNorm pair is one biased conv.

    Pairs are found only where the order of execution is known: a :class:`ConvBlock` whose ``norm``
    is a BatchNorm, and neighbours ``Conv3d``, ``BatchNorm`` in an ``nn.Sequential``. InstanceNorm
    (Liu/MOX) normalises with each input's own statistics and cannot be folded; it stays.
    The input network is not changed.
    """
    out = copy.deepcopy(net).eval()
    for module in list(out.modules()):
        if isinstance(module, ConvBlock) and isinstance(module.norm, KerasBatchNorm3d):
            module.conv = _fold_pair(module.conv, module.norm)
            module.norm = nn.Identity()
        elif isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in itertools.pairwise(names):
                conv, bn = module._modules[a], module._modules[b]
                if isinstance(conv, nn.Conv3d) and isinstance(bn, KerasBatchNorm3d):
                    module._modules[a] = _fold_pair(conv, bn)
                    module._modules[b] = nn.Identity()
    return out

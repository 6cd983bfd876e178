"""Scoring model inputs with every fold of a package: the predictor and its fast path.

``precision`` chooses how the forward passes run:

* ``"fp32"``: the networks exactly as loaded (eager float32, BatchNorm as a separate op): the
  reference the other modes are checked against.
* ``"fast"``: BatchNorm folded into the convolutions, channels-last 3D memory format, float32.
  Exact algebra; scores agree with ``fp32`` to float rounding. Portable (CPU and CUDA).
* ``"fused"`` (CPU only): ``fast`` run by :class:`~bids_app.models.fast.OneDNNGraphNet`: every
  convolution through oneDNN with its weight packed once and its ReLU / residual add fused as
  post-ops. Float32; scores agree with ``fp32`` to float rounding.
* ``"bf16"``: ``fast`` plus bfloat16 autocast (CPU: oneDNN bf16 kernels; CUDA: tensor cores).
* ``"auto"``: the default chosen by measurement (see ``bench/inference.py`` and the README):
  ``fused`` on a CPU, ``bf16`` on CUDA. It must keep scores within 1e-3 of ``fp32`` on realistic
  inputs.

The sigmoid is applied here, in float32, to the logits the networks return. Runs on CPU are
deterministic (same input, same thread count -> same scores).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import grid
from ..types import PRECISION_CHOICES, ModelScores, Precision
from .fast import OneDNNGraphNet, fold_batchnorm, onednn_available
from .graph import GraphNet
from .package import ModelPackage, _resolve_device

__all__ = ["Precision", "PRECISIONS", "default_precision", "prepare_networks", "predict", "check_model_input"]

PRECISIONS = PRECISION_CHOICES


def default_precision(device: torch.device) -> str:
    """What ``precision="auto"`` means on ``device`` (chosen by measurement, see module doc)."""
    if device.type == "cpu":
        return "fused" if onednn_available() else "fast"
    return "bf16"


def check_model_input(x: np.ndarray) -> np.ndarray:
    """Validate a batch of model inputs and return it as C-contiguous float32 N x 2 x 96 x 120 x 86."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"model input must be a numpy array, got {type(x).__name__}")
    if x.ndim == 4:
        x = x[None]
    if x.ndim != 5 or tuple(x.shape[1:]) != grid.MODEL_INPUT_SHAPE:
        raise ValueError(
            f"model input must have shape N x {' x '.join(map(str, grid.MODEL_INPUT_SHAPE))} "
            f"(channels first: GMD, GMV); got {x.shape}"
        )
    if x.shape[0] == 0:
        raise ValueError("model input holds no images (N = 0)")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"model input must be floating point, got {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("model input contains NaN or infinite values (make_model_input sets them to 0)")
    return x


def prepare_networks(package: ModelPackage, device: torch.device, precision: str) -> list[nn.Module]:
    """The package's fold networks made ready for ``precision`` on ``device`` (cached on the package)."""
    key = (str(device), precision)
    if key in package.prepared:
        return package.prepared[key]
    if precision == "fused" and device.type != "cpu":
        raise ValueError(f"precision 'fused' runs on the CPU only (device {device}); use 'fast' or 'bf16'")
    nets: list[nn.Module] = []
    for net in package.folds:
        net = net.to(device).eval()
        if precision == "fused" and isinstance(net, GraphNet):
            net = OneDNNGraphNet(net.float())
        elif precision in ("fast", "bf16") and isinstance(net, GraphNet):
            net = fold_batchnorm(net)
            net = net.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        for p in net.parameters():
            p.requires_grad_(False)
        nets.append(net)
    package.prepared[key] = nets
    return nets


def predict(
    package: ModelPackage,
    x: np.ndarray,
    *,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 1,
) -> ModelScores:
    """Score N model inputs with every fold of ``package``.

    Parameters
    ----------
    package : ModelPackage
        From :func:`bids_app.models.load_package`.
    x : ndarray
        N x 2 x 96 x 120 x 86 (or one 2 x 96 x 120 x 86) float array from
        :func:`bids_app.grid.make_model_input`.
    device : {"auto", "cpu", "cuda"}
        ``auto`` uses CUDA when available.
    precision : {"auto", "fp32", "fast", "fused", "bf16"}
        See the module docstring.
    batch_size : int
        Inputs per forward pass (1 keeps CPU memory lowest).

    Returns
    -------
    ModelScores
        ``fold_scores`` N x F sigmoid outputs (float64), mean and spread over folds.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    dev = _resolve_device(device)
    x = check_model_input(x)
    prec = default_precision(dev) if precision == "auto" else precision
    nets = prepare_networks(package, dev, prec)
    n = x.shape[0]
    scores = np.empty((n, len(nets)), dtype=np.float64)
    autocast = prec == "bf16"
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            xb = torch.from_numpy(x[start : start + batch_size]).to(dev)
            if prec in ("fast", "bf16"):
                xb = xb.contiguous(memory_format=torch.channels_last_3d)
            for f, net in enumerate(nets):
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=autocast):
                    logits = net(xb)
                scores[start : start + xb.shape[0], f] = torch.sigmoid(logits.float()).cpu().double().numpy()
    return ModelScores(model_name=package.name, task=package.task, fold_scores=scores)

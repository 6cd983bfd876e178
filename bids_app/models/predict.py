"""Scoring model inputs with every fold of a package: the predictor and its engines.

``precision`` chooses how the forward passes run:

* ``"auto"`` (the default): the engine and precision chosen for this machine at run time by the
  rules of :mod:`bids_app.models.engines.choice` (CPU features, installed engines), each
  candidate proven by a self-check against PyTorch FP32 before it is used (1e-5 for FP32
  engines, 1e-3 for bf16 / fp16), falling back with a warning to the next one.
* ``"fp32"``: the networks exactly as loaded (eager float32, BatchNorm as a separate op): the
  reference the other modes are checked against. Never self-checked (it is the reference).
* ``"fast"``: BatchNorm folded into the convolutions, channels-last 3D memory format, float32.
* ``"fused"`` (CPU only): :class:`~bids_app.models.fast.OneDNNGraphNet`, float32.
* ``"bf16"`` / ``"fp16"``: ``fast`` plus autocast (CPU bf16: oneDNN kernels, emulated and slow
  where the CPU has no native bf16; CUDA: tensor cores).
* ``"openvino"``, ``"openvino-bf16"``, ``"onnxruntime"``, ``"compile"``: one engine by name
  (FP32 unless the name says bf16), from the verified ONNX export / ``torch.compile``.

Every mode but ``fp32`` passes the same self-check; on CUDA, ``cudnn.benchmark`` is switched on
(fixed input size) and the inputs go channels-last. What actually ran is in
:attr:`ModelScores.engine <bids_app.types.ModelScores>` (a dict from
:meth:`~bids_app.models.engines.EngineInfo.as_dict`) and in :func:`engine_info`.

The sigmoid is applied here, in float32, to the logits the runners return. Runs on CPU are
deterministic (same input, same engine, same thread count -> same scores).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import grid
from ..types import PRECISION_CHOICES, ModelScores, Precision
from .device import resolve_device
from .engines import EngineCandidate, PreparedEngine, candidates, prepare_engine
from .package import ModelPackage

__all__ = [
    "Precision",
    "PRECISIONS",
    "default_precision",
    "engine_info",
    "prepare",
    "predict",
    "check_model_input",
]

PRECISIONS = PRECISION_CHOICES
#: An explicit ``precision`` as (engine, precision) of :mod:`bids_app.models.engines`.
_EXPLICIT: dict[str, tuple[str, str]] = {
    "fp32": ("torch-eager", "fp32"), "fast": ("torch-fast", "fp32"), "fused": ("torch-fused", "fp32"),
    "bf16": ("torch-fast", "bf16"), "fp16": ("torch-fast", "fp16"), "openvino": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"), "onnxruntime": ("onnxruntime", "fp32"), "compile": ("torch-compile", "fp32"),
}


def default_precision(device: torch.device) -> str:
    """The first candidate ``precision="auto"`` tries on ``device``, as ``"<engine> <precision>"``.

    What finally runs can be a later candidate (a failed self-check falls back): see :func:`engine_info`.
    """
    order, _ = candidates(device)
    return f"{order[0].engine} {order[0].precision}"


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


def prepare(package: ModelPackage, device: torch.device, precision: str = "auto", *,
            threads: int | None = None) -> PreparedEngine:
    """The package's folds built and self-checked for ``precision`` on ``device`` (cached on the package)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    key = ("engine", str(device), precision, threads or torch.get_num_threads())
    cached: Any = package.prepared.get(key)
    if cached is not None:
        return cached
    if precision == "auto":
        order, rule = candidates(device)
    else:
        engine, prec = _EXPLICIT[precision]
        if engine != "torch-eager" and device.type != "cpu" and engine not in ("torch-fast",):
            raise ValueError(
                f"precision {precision!r} runs on the CPU only (device {device}); use 'fast', 'bf16' or 'fp16'")
        order, rule = [EngineCandidate(engine, prec), EngineCandidate("torch-eager", "fp32")], f"explicit-{precision}"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input size: autotuned kernels pay from the second pass on
    prepared = prepare_engine(package.folds, device, order, rule=rule, name=package.name,
                              weights_sha256=package.sha256, threads=threads)
    package.prepared[key] = prepared  # type: ignore[assignment]
    return prepared


def engine_info(package: ModelPackage, device: str = "auto", precision: str = "auto") -> dict[str, Any]:
    """Provenance of the engine that scores ``package`` (builds and self-checks it if not done yet)."""
    return prepare(package, resolve_device(device), precision).info.as_dict()


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
    precision : str
        One of :data:`PRECISIONS`; see the module docstring.
    batch_size : int
        Inputs per forward pass (1 keeps CPU memory lowest).

    Returns
    -------
    ModelScores
        ``fold_scores`` N x F sigmoid outputs (float64), mean and spread over folds; ``engine``
        the provenance of the engine that computed them.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    dev = resolve_device(device)
    x = check_model_input(x)
    prepared = prepare(package, dev, precision)
    n = x.shape[0]
    scores = np.empty((n, len(prepared.runners)), dtype=np.float64)
    for start in range(0, n, batch_size):
        xb = x[start : start + batch_size]
        for f, runner in enumerate(prepared.runners):
            logits = torch.from_numpy(np.asarray(runner(xb), dtype=np.float32))
            scores[start : start + xb.shape[0], f] = torch.sigmoid(logits).double().numpy()
    return ModelScores(model_name=package.name, task=package.task, fold_scores=scores, engine=prepared.info.as_dict())

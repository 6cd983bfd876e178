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

The runners return each network's raw outputs (N x K); the heads of the package
(:mod:`bids_app.models.heads`) turn them into what they predict, in float32: sigmoid for a binary
head, softmax over its outputs for a multiclass head, ``raw * scale + offset`` for a regression
head. Runs on CPU are deterministic (same input, same engine, same thread count -> same scores).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .. import grid
from ..errors import ModelPackageError
from ..types import PRECISION_CHOICES, HeadScores, ModelScores, Precision
from .device import resolve_device
from .engines import EngineCandidate, PreparedEngine, candidates, prepare_engine
from .heads import check_values, n_outputs_used
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


def check_model_input(x: np.ndarray, shape: Sequence[int] = grid.MODEL_INPUT_SHAPE, *,
                      channels: Sequence[str] = grid.CHANNELS) -> np.ndarray:
    """Validate a batch of model inputs and return it as C-contiguous float32 N x ``shape``.

    ``shape`` (C x ...) and ``channels`` are those of the package's card (``input.shape``,
    ``input.channels``); the defaults are the BrainImageNet 2 x 96 x 120 x 86 GMD + GMV crop.
    """
    shape = tuple(int(v) for v in shape)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"model input must be a numpy array, got {type(x).__name__}")
    if x.ndim == len(shape):
        x = x[None]
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"model input must have shape N x {' x '.join(map(str, shape))} "
            f"(channels first: {', '.join(channels)}); got {x.shape}"
        )
    if x.shape[0] == 0:
        raise ValueError("model input holds no images (N = 0)")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"model input must be floating point, got {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("model input contains NaN or infinite values (the model inputs set them to 0)")
    return x


def _check_setup(package: ModelPackage) -> dict[str, Any]:
    """How the engines' self-check applies to ``package``: its reference input, what it compares, the
    cache tag; or why it cannot apply (then only ``torch-eager`` runs)."""
    from .export import reference_input_for

    heads = package.heads
    single_binary = len(heads) == 1 and heads[0].kind == "binary" and heads[0].outputs == (0, 1)
    if package.input_kind == "gm_crop2" and single_binary:
        return {}  # the BrainImageNet check: its reference input, sigmoid, the historical cache key
    try:
        x = reference_input_for(package.input or {"kind": package.input_kind}, seed=0, n=1)
    except (ValueError, OSError, ImportError) as exc:
        return {"no_check_reason": f"no self-check input for input kind {package.input_kind!r} ({exc})"}
    tag = "|" + package.input_kind + "|" + ",".join(f"{h.kind}:{h.outputs[0]}-{h.outputs[1]}" for h in heads)
    return {"check_input": x, "activate": lambda raw: check_values(heads, raw), "check_tag": tag}


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
    checked = any(c.engine != "torch-eager" for c in order)  # eager alone needs no reference input
    prepared = prepare_engine(package.folds, device, order, rule=rule, name=package.name,
                              weights_sha256=package.sha256, threads=threads,
                              **(_check_setup(package) if checked else {}))
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
    """Score N model inputs with every fold and every head of ``package``.

    Parameters
    ----------
    package : ModelPackage
        From :func:`bids_app.models.load_package`.
    x : ndarray
        N x C x ... (or one C x ...) float array of the package's input kind and shape
        (``package.input_shape``; BrainImageNet: 2 x 96 x 120 x 86 from
        :func:`bids_app.grid.make_model_input`).
    device : {"auto", "cpu", "cuda"}
        ``auto`` uses CUDA when available.
    precision : str
        One of :data:`PRECISIONS`; see the module docstring.
    batch_size : int
        Inputs per forward pass (1 keeps CPU memory lowest).

    Returns
    -------
    ModelScores
        One :class:`~bids_app.types.HeadScores` per head (N x F x K, float64); for a single binary
        head also ``fold_scores`` N x F, their mean and spread; ``engine`` the provenance of the
        engine that computed them.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    dev = resolve_device(device)
    x = check_model_input(x, package.input_shape, channels=package.input.get("channels", grid.CHANNELS))
    prepared = prepare(package, dev, precision)
    n, n_folds = x.shape[0], len(prepared.runners)
    need = n_outputs_used(package.heads)
    outputs = [np.empty((n, n_folds, h.width), dtype=np.float64) for h in package.heads]
    for start in range(0, n, batch_size):
        xb = x[start : start + batch_size]
        for f, runner in enumerate(prepared.runners):
            raw = np.asarray(runner(xb), dtype=np.float32).reshape(xb.shape[0], -1)
            if raw.shape[1] < need:
                raise ModelPackageError(
                    f"{package.path}: the network gives {raw.shape[1]} output(s), but the heads read {need}")
            for out, head in zip(outputs, package.heads):
                out[start : start + xb.shape[0], f] = head.activate(raw)
    heads = tuple(
        HeadScores(name=h.name, kind=h.kind, target=h.target, labels=h.labels, fold_outputs=o, unit=h.unit)
        for h, o in zip(package.heads, outputs)
    )
    return ModelScores(model_name=package.name, task=package.task, heads=heads, engine=prepared.info.as_dict())

"""One runner per (engine, precision): a fold network made ready to map model inputs to logits.

Every runner takes float32 N x C x ... numpy inputs (the package's input shape) and returns the
network's float32 raw outputs as N x K (K = 1 for the IRv2 networks, whose forward gives (N,)
logits), so the predictor and the self-check treat them alike. ``torch-fused``, ``openvino`` and
``onnxruntime`` run layer-graph networks (:class:`~bids_app.models.graph.GraphNet`, every IRv2
and imported Keras network) only; for any other network they refuse to build, and the engine
choice falls back. The engines:

* ``torch-eager`` the network as loaded (the FP32 reference every other runner is checked against);
* ``torch-fast``  BatchNorm folded, channels-last 3D; FP32, or bf16 / fp16 autocast (CPU or CUDA);
* ``torch-fused`` the oneDNN executor of :mod:`bids_app.models.fast` (CPU, FP32);
* ``torch-compile`` ``torch.compile`` (inductor) of ``torch-fast`` (needs a C++ compiler on CPU);
* ``openvino``    the ONNX export (:mod:`bids_app.models.export`) compiled by OpenVINO for the CPU
  with the ``f32`` or ``bf16`` inference-precision hint;
* ``onnxruntime`` the same ONNX export under ONNX Runtime's CPU provider (FP32).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..fast import OneDNNGraphNet, fold_for_inference, onednn_available
from ..graph import GraphNet

__all__ = ["ENGINES", "Runner", "engine_version", "installed_engines", "make_runner"]

ENGINES: tuple[str, ...] = ("torch-eager", "torch-fast", "torch-fused", "torch-compile", "openvino", "onnxruntime")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runner:
    """A fold network ready for one engine and precision: ``runner(x) -> raw outputs (N x K)``."""

    engine: str
    precision: str
    device: str
    fn: Callable[[np.ndarray], np.ndarray]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.fn(x)


def engine_version(engine: str) -> str | None:
    """Version string of the library behind ``engine``, or None when it is not installed/usable."""
    if engine.startswith("torch-"):
        if engine == "torch-fused" and not onednn_available():
            return None
        if engine == "torch-compile" and _compiler() is None:
            return None
        return torch.__version__
    try:
        if engine == "openvino":
            import openvino

            return str(openvino.__version__).split("-")[0]
        if engine == "onnxruntime":
            import onnxruntime

            return str(onnxruntime.__version__)
    except ImportError:
        return None
    return None


def _compiler() -> str | None:
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def installed_engines(device: str = "cpu") -> dict[str, str]:
    """Engines usable on ``device`` here, name -> library version."""
    names = ENGINES if device == "cpu" else ("torch-eager", "torch-fast")
    out = {}
    for name in names:
        v = engine_version(name)
        if v is not None and (name not in ("openvino", "onnxruntime") or _onnx_export_ok()):
            out[name] = v
    return out


def _onnx_export_ok() -> bool:
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        return False
    return True


def _torch_runner(net: nn.Module, engine: str, precision: str, device: torch.device, threads: int | None) -> Runner:
    net = net.to(device).eval()
    channels_last = engine in ("torch-fast", "torch-compile")
    if engine == "torch-fused":
        net = OneDNNGraphNet(net.float())  # type: ignore[arg-type]
    elif channels_last:
        net = fold_for_inference(net).to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    for p in net.parameters():
        p.requires_grad_(False)
    if engine == "torch-compile":
        net = torch.compile(net, dynamic=False)  # type: ignore[assignment]
    autocast = _DTYPES.get(precision)

    def run(x: np.ndarray) -> np.ndarray:
        xb = torch.from_numpy(x).to(device)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode(), torch.autocast(device.type, dtype=autocast or torch.bfloat16,
                                                    enabled=autocast is not None):
            return net(xb).float().cpu().numpy().reshape(len(x), -1)

    return Runner(engine, precision, str(device), run)


def _export_tmp(net: nn.Module) -> tuple[Path, tempfile.TemporaryDirectory[str]]:
    from ..export import export_onnx

    tmp = tempfile.TemporaryDirectory(prefix="vbm-onnx-")
    return export_onnx(net, Path(tmp.name) / "fold.onnx"), tmp


def _openvino_runner(net: nn.Module, precision: str, threads: int | None, onnx_path: Path | None) -> Runner:
    import openvino as ov

    tmp = None
    if onnx_path is None:
        onnx_path, tmp = _export_tmp(net)
    core = ov.Core()
    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                                 "PERFORMANCE_HINT": "LATENCY"}
    # the same thread budget as PyTorch (set by the app's --omp-nthreads / torch.set_num_threads)
    config["INFERENCE_NUM_THREADS"] = int(threads or torch.get_num_threads())
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
    # Without native bf16 the CPU plugin ignores the bf16 hint and runs f32: record what it runs.
    actual = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
    precision = "bf16" if ("bf16" in actual or "bfloat16" in actual) else "fp32"  # "<Type: 'bfloat16'>"
    if tmp is not None:
        tmp.cleanup()  # the compiled model holds its own copy of the weights
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        out = request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        logits = np.array(next(iter(out.values())), dtype=np.float32).reshape(len(x), -1)  # a copy: buffers go next
        # A compiled model keeps its activation buffers (about 0.65 GB for a full-size AD fold) after a
        # pass; six folds kept that way reached 5.8 GB per participant (bench/inference.py, issue 16's
        # bound is 3 GB). Releasing them after each pass keeps one network's activations at a time.
        compiled.release_memory()
        return logits

    return Runner("openvino", precision, "cpu", run)


def _onnxruntime_runner(net: nn.Module, threads: int | None, onnx_path: Path | None) -> Runner:
    import onnxruntime as ort

    tmp = None
    if onnx_path is None:
        onnx_path, tmp = _export_tmp(net)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    # No arena kept between passes: with it, each session held its activation memory (six full-size folds
    # reached 10.3 GB per participant in bench/inference.py; without it one network's activations at a time).
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    sess = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    if tmp is not None:
        tmp.cleanup()

    def run(x: np.ndarray) -> np.ndarray:
        out = sess.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(x), -1)

    return Runner("onnxruntime", "fp32", "cpu", run)


def make_runner(net: nn.Module, engine: str, precision: str, device: torch.device, *, threads: int | None = None,
                onnx_path: Path | None = None) -> Runner:
    """Prepare ``net`` for ``engine`` at ``precision`` ("fp32", "bf16", "fp16") on ``device``.

    ``onnx_path`` lets a caller (a test, the bench) hand in an ONNX file instead of exporting
    ``net``; it is still checked against ``net`` by the self-check before it is trusted.
    Raises ``ValueError`` for a combination that does not exist and ``ImportError`` for a
    missing library.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16; got {precision!r}")
    if device.type != "cpu" and engine not in ("torch-eager", "torch-fast"):
        raise ValueError(f"engine {engine!r} runs on the CPU only (device {device})")
    if engine in ("torch-eager", "torch-fused", "onnxruntime") and precision != "fp32":
        raise ValueError(f"engine {engine!r} runs FP32 only, not {precision}")
    if engine in ("torch-fused", "openvino", "onnxruntime") and not isinstance(net, GraphNet):
        raise ValueError(f"engine {engine!r} runs layer-graph networks (GraphNet) only; "
                         f"{type(net).__name__} is not one")
    if engine == "openvino" and precision == "fp16":
        raise ValueError("engine 'openvino' runs fp32 or bf16 on a CPU, not fp16")
    if engine == "torch-fused" and not isinstance(net, GraphNet):
        raise ValueError(f"engine 'torch-fused' runs layer graphs (IRv2) only, not {type(net).__name__}")
    if engine == "torch-fused" and not onednn_available():
        raise ValueError("this PyTorch build has no oneDNN fused-convolution operators")
    if engine == "torch-compile" and device.type == "cpu" and _compiler() is None:
        raise ValueError("torch.compile needs a C++ compiler on the CPU; none found on PATH")
    if engine == "openvino":
        return _openvino_runner(net, precision, threads, onnx_path)
    if engine == "onnxruntime":
        return _onnxruntime_runner(net, threads, onnx_path)
    return _torch_runner(net, engine, precision, device, threads)

"""Which engine runs the networks, chosen per machine at run time, and the self-check that proves it.

The rules (fixed from the measurements in ``docs/inference.md``; the first candidate that is
installed, builds and passes its self-check wins):

=====================================  ==========================================================
CPU / device                           candidates, in order
=====================================  ==========================================================
CPU with native bf16 (AMX, avx512_bf16) openvino bf16, torch-fast bf16, openvino fp32, torch-fused fp32
CPU with AVX-512 or AVX2 only          openvino fp32, torch-fused fp32, torch-fast fp32
CUDA                                   torch-fast bf16 (fp16 where bf16 is not supported), torch-fast fp32
=====================================  ==========================================================

``torch-eager`` FP32 (the network as loaded) is the last resort everywhere and the reference of
every self-check. Why these orders: with native bf16 the issue's EPYC measured OpenVINO bf16 2.3x
faster than the fused FP32 executor per AD forward (1.49 vs 3.42 s), bf16 autocast in PyTorch 1.7x;
without it bf16 is emulated and 2.7x *slower* than FP32 (Cascade Lake), and OpenVINO FP32 was the
fastest exact engine on both the avx512_bf16 EPYC (2.90 vs 3.42 s) and the AVX2 EPYC of this
project's CI (see the docs for figures and load).

Self-check: before an engine scores anything, each fold's runner scores a fixed realistic input
of the package's input kind (:func:`bids_app.models.export.reference_input_for`) and must agree
with PyTorch FP32 eager within 1e-5 (FP32 engines) or 1e-3 (bf16 / fp16), compared on what the
package's heads read: probabilities for classification heads, the raw standardised outputs for
regression heads (default: the sigmoid of every output, the BrainImageNet case). A package whose
check cannot apply (no reference input for its kind) runs on ``torch-eager`` FP32, the reason in
its provenance (``Fallbacks``). A failed check, or an engine that fails to build, is
logged as a warning and the next candidate is tried. The FP32 reference scores are cached on disk
(``$VBM_PREDICT_CACHE``, else ``$XDG_CACHE_HOME/vbm-predict`` or ``~/.cache/vbm-predict``) keyed by
the fold's weights sha256, the PyTorch version and the CPU level, so a job array computes them once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..graph import GraphNet
from .cpu import CPUFeatures, cpu_features
from .runners import Runner, engine_version, installed_engines, make_runner

__all__ = [
    "TOLERANCE",
    "EngineCandidate",
    "EngineInfo",
    "PreparedEngine",
    "EngineCheckError",
    "candidates",
    "describe_engine_choice",
    "prepare_engine",
    "self_check",
]

log = logging.getLogger(__name__)

#: Largest |score - PyTorch FP32 score| a runner may show on the reference input, per precision.
TOLERANCE: dict[str, float] = {"fp32": 1e-5, "bf16": 1e-3, "fp16": 1e-3}
_REFERENCE_TAG = "reference_input-v1-seed0"
#: engines that run layer-graph networks (GraphNet: the IRv2 and imported Keras networks) only
_GRAPH_ONLY = ("torch-fused", "openvino", "onnxruntime")


class EngineCheckError(RuntimeError):
    """A runner's scores on the reference input are off PyTorch FP32 by more than its bound."""


@dataclass(frozen=True)
class EngineCandidate:
    engine: str
    precision: str


@dataclass(frozen=True)
class EngineInfo:
    """What ran the networks: recorded in every prediction's provenance (``ModelScores.engine``)."""

    engine: str
    engine_version: str
    precision: str
    device: str
    cpu: str
    cpu_level: str
    rule: str
    self_check_max_score_diff: float | None
    self_check_tolerance: float | None
    fallbacks: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "Engine": self.engine, "EngineVersion": self.engine_version, "Precision": self.precision,
            "Device": self.device, "CPU": self.cpu, "CPULevel": self.cpu_level, "Rule": self.rule,
            "SelfCheck": None if self.self_check_tolerance is None else {
                "MaxScoreDiffVsPyTorchFP32": self.self_check_max_score_diff, "Tolerance": self.self_check_tolerance},
            "Fallbacks": list(self.fallbacks),
        }


@dataclass
class PreparedEngine:
    """Every fold's runner plus the :class:`EngineInfo` that describes them."""

    runners: list[Runner]
    info: EngineInfo
    extra: dict[str, Any] = field(default_factory=dict)


def candidates(device: torch.device, features: CPUFeatures | None = None,
               installed: Sequence[str] | None = None) -> tuple[list[EngineCandidate], str]:
    """The ordered engine candidates for ``device`` (module doc) and the rule's name."""
    eager = EngineCandidate("torch-eager", "fp32")
    if device.type == "cuda":
        half = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp16"
        return [EngineCandidate("torch-fast", half), EngineCandidate("torch-fast", "fp32"), eager], "cuda"
    if device.type != "cpu":
        return [eager], device.type
    feats = features or cpu_features()
    have = set(installed_engines("cpu") if installed is None else installed)
    if feats.native_bf16:
        rule = "cpu-native-bf16"
        order = [("openvino", "bf16"), ("torch-fast", "bf16"), ("openvino", "fp32"), ("torch-fused", "fp32")]
    else:
        rule = "cpu-fp32"
        order = [("openvino", "fp32"), ("torch-fused", "fp32"), ("torch-fast", "fp32")]
    out = [EngineCandidate(e, p) for e, p in order if e in have]
    return [*out, eager], rule


def _cache_dir() -> Path | None:
    for env in ("VBM_PREDICT_CACHE",):
        if os.environ.get(env):
            return Path(os.environ[env])
    base = os.environ.get("XDG_CACHE_HOME") or (str(Path.home() / ".cache") if Path.home().exists() else "")
    return Path(base) / "vbm-predict" if base else None


def cpu_fp32(net: nn.Module) -> nn.Module:
    """``net`` itself when it is a float32 CPU module in eval mode, else an eval-mode float32 CPU copy.

    Why a copy: ``Module.cpu()`` / ``.float()`` work in place, and the package's networks may
    live on a GPU for the engine being checked.
    """
    params = list(net.parameters()) + list(net.buffers())
    if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params) and not net.training:
        return net
    return copy.deepcopy(net).float().cpu().eval()


Activation = Callable[[np.ndarray], np.ndarray]


def _sigmoid(raw: np.ndarray) -> np.ndarray:
    """The BrainImageNet check values: the sigmoid of every raw output, float32, as float64."""
    return torch.sigmoid(torch.from_numpy(np.asarray(raw, dtype=np.float32))).double().numpy()


def _reference_scores(net: nn.Module, x: np.ndarray, key: str | None, activate: Activation = _sigmoid) -> np.ndarray:
    """PyTorch FP32 eager check values of ``net`` on the reference input, N x K (cached on disk under ``key``)."""
    cache = _cache_dir()
    path = None
    if key is not None and cache is not None:
        path = cache / "reference-scores" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("key") == key:
                return np.asarray(data["scores"], dtype=np.float64).reshape(len(x), -1)
        except (OSError, ValueError, KeyError):
            pass
    with torch.inference_mode():
        raw = cpu_fp32(net)(torch.from_numpy(x)).float().numpy().reshape(len(x), -1)
    ref = np.asarray(activate(raw), dtype=np.float64)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": key, "scores": ref.tolist()}), encoding="utf-8")
            tmp.replace(path)
        except OSError:
            pass  # a read-only home is fine: the reference is recomputed next time
    return ref


def self_check(runner: Runner, net: nn.Module, x: np.ndarray, *, what: str, tolerance: float | None = None,
               reference: np.ndarray | None = None, cache_key: str | None = None,
               activate: Activation | None = None) -> float:
    """Largest |check-value difference| of ``runner`` against PyTorch FP32 on ``x``; raises beyond the bound.

    ``activate`` maps raw N x K outputs to what is compared (default: the sigmoid of each output).
    """
    tol = TOLERANCE[runner.precision] if tolerance is None else tolerance
    act = activate or _sigmoid
    ref = _reference_scores(net, x, cache_key, act) if reference is None else np.asarray(reference).reshape(len(x), -1)
    raw = np.asarray(runner(x), dtype=np.float32).reshape(len(x), -1)
    got = np.asarray(act(raw), dtype=np.float64)
    if got.shape != ref.shape or not np.isfinite(got).all():
        raise EngineCheckError(
            f"{what}: {runner.engine} {runner.precision} gives output {got.shape}, expected {ref.shape}")
    diff = float(np.abs(got - ref).max())
    if diff > tol:
        raise EngineCheckError(
            f"{what}: {runner.engine} {runner.precision} scores differ from PyTorch FP32 by {diff:.3g} "
            f"on the reference input (bound {tol:g}); refused"
        )
    return diff


def prepare_engine(
    folds: Sequence[nn.Module],
    device: torch.device,
    order: Sequence[EngineCandidate],
    *,
    rule: str,
    name: str = "model",
    weights_sha256: Sequence[str] | None = None,
    threads: int | None = None,
    onnx_paths: Sequence[Path] | None = None,
    check_input: np.ndarray | None = None,
    activate: Activation | None = None,
    check_tag: str = "",
    no_check_reason: str | None = None,
) -> PreparedEngine:
    """Build and self-check the first candidate of ``order`` that works; warn about every one that did not.

    ``torch-eager`` FP32 is the reference itself and is never checked; it always works.
    ``check_input`` is the reference input (default: the BrainImageNet one), ``activate`` what the
    check compares (see :func:`self_check`), ``check_tag`` tells their cached references apart.
    With ``no_check_reason`` no candidate can be proven, so every one but ``torch-eager`` is
    skipped, that reason recorded in ``Fallbacks``.
    """
    feats = cpu_features()
    x_ref: np.ndarray | None = check_input
    fallbacks: list[str] = []
    for cand in order:
        if no_check_reason is not None and cand.engine != "torch-eager":
            fallbacks.append(f"{cand.engine} {cand.precision}: {no_check_reason}")
            log.info("inference engine not used for %s: %s %s: %s", name, cand.engine, cand.precision,
                     no_check_reason)
            continue
        if cand.engine in _GRAPH_ONLY and not all(isinstance(net, GraphNet) for net in folds):
            # not a failure: these engines exist for the layer-graph networks; say so and move on quietly
            fallbacks.append(f"{cand.engine} {cand.precision}: runs layer-graph networks (GraphNet) only, "
                             f"not {type(folds[0]).__name__}")
            log.info("inference engine not used for %s: %s", name, fallbacks[-1])
            continue
        if cand.engine == "torch-eager" and cand.precision == "fp32":
            runners = [make_runner(net, "torch-eager", "fp32", device) for net in folds]
            info = EngineInfo("torch-eager", torch.__version__, "fp32", str(device), feats.model, feats.level, rule,
                              None, None, tuple(fallbacks))
            return PreparedEngine(runners, info)
        try:
            if x_ref is None:
                from ..export import reference_input

                x_ref = reference_input(seed=0, n=1)
            runners, worst = [], 0.0
            for k, net in enumerate(folds):
                r = make_runner(net, cand.engine, cand.precision, device, threads=threads,
                                onnx_path=onnx_paths[k] if onnx_paths else None)
                key = None
                if weights_sha256 is not None:
                    key = f"{weights_sha256[k]}|{torch.__version__}|{feats.level}|{_REFERENCE_TAG}{check_tag}"
                worst = max(worst, self_check(r, net, x_ref, what=f"{name} fold {k}", cache_key=key,
                                              activate=activate))
                runners.append(r)
        except Exception as exc:  # any build or check failure: fall back, loudly
            msg = f"{cand.engine} {cand.precision}: {exc}"
            fallbacks.append(msg)
            warnings.warn(f"inference engine not used for {name}: {msg}; trying the next one", RuntimeWarning,
                          stacklevel=2)
            log.warning("inference engine not used for %s: %s", name, msg)
            continue
        version = engine_version(cand.engine) or "unknown"
        info = EngineInfo(cand.engine, version, cand.precision, str(device), feats.model, feats.level, rule, worst,
                          TOLERANCE[cand.precision], tuple(fallbacks))
        return PreparedEngine(runners, info)
    raise RuntimeError("no inference engine candidate, not even torch-eager")  # pragma: no cover


def describe_engine_choice(device: str = "cpu") -> dict[str, Any]:
    """What ``precision="auto"`` would try on this machine, without building anything.

    For ``--version`` and ``vbm-predict models info``: CPU model and level, installed engines and
    their versions, the rule and its ordered candidates (the first that passes its self-check runs).
    """
    dev = torch.device(device)
    feats = cpu_features()
    order, rule = candidates(dev, feats)
    return {
        "device": str(dev),
        "cpu": feats.as_dict(),
        "installed_engines": installed_engines("cpu" if dev.type == "cpu" else dev.type),
        "rule": rule,
        "candidates": [f"{c.engine} {c.precision}" for c in order],
        "self_check_tolerance": TOLERANCE,
    }

"""Optional inference back ends of the predictor, chosen per machine and proven before use.

* :mod:`.cpu` -- what the CPU can do (native bf16, AMX, AVX-512, AVX2), from ``/proc/cpuinfo``;
* :mod:`.runners` -- one runner per engine and precision (PyTorch eager / fast / fused / compile,
  OpenVINO and ONNX Runtime through the checked ONNX export of :mod:`bids_app.models.export`);
* :mod:`.choice` -- the rules that order the candidates, the self-check against PyTorch FP32 and
  the fallback, and :func:`describe_engine_choice` for ``--version`` / ``models info``.
"""

from .choice import (
    TOLERANCE,
    EngineCandidate,
    EngineCheckError,
    EngineInfo,
    PreparedEngine,
    candidates,
    describe_engine_choice,
    prepare_engine,
    self_check,
)
from .cpu import CPUFeatures, cpu_features, parse_cpuinfo
from .runners import ENGINES, Runner, engine_version, installed_engines, make_runner

__all__ = [
    "ENGINES",
    "TOLERANCE",
    "CPUFeatures",
    "EngineCandidate",
    "EngineCheckError",
    "EngineInfo",
    "PreparedEngine",
    "Runner",
    "candidates",
    "cpu_features",
    "describe_engine_choice",
    "engine_version",
    "installed_engines",
    "make_runner",
    "parse_cpuinfo",
    "prepare_engine",
    "self_check",
]

"""What the CPU can do, read once from ``/proc/cpuinfo`` (Linux) and PyTorch's own dispatch level.

The engine rules in :mod:`bids_app.models.engines.choice` need three facts: is bfloat16 native
(``avx512_bf16`` or AMX: then bf16 kernels run about twice as fast as FP32), is AVX-512 there, and is
only AVX2 there. Everything else (model name, the full flag list) is recorded for provenance.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CPUFeatures", "cpu_features", "parse_cpuinfo"]

_INTERESTING = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile",
                "amx_int8", "asimd", "sve", "bf16")


@dataclass(frozen=True)
class CPUFeatures:
    """The CPU facts the engine choice depends on."""

    model: str
    flags: frozenset[str]
    torch_capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX2", "AVX512", "DEFAULT", ...

    @property
    def native_bf16(self) -> bool:
        """bf16 dot products in hardware (x86 ``avx512_bf16`` / AMX, or Arm ``bf16``)."""
        return bool({"avx512_bf16", "amx_bf16", "bf16"} & self.flags)

    @property
    def amx(self) -> bool:
        return "amx_bf16" in self.flags

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def level(self) -> str:
        """One word for the rules and the logs: ``amx``, ``avx512_bf16``, ``avx512``, ``avx2`` or ``baseline``."""
        if self.amx:
            return "amx"
        if "avx512_bf16" in self.flags:
            return "avx512_bf16"
        if self.avx512:
            return "avx512"
        if "avx2" in self.flags or self.torch_capability.upper().startswith("AVX2"):
            return "avx2"
        return "baseline"

    def as_dict(self) -> dict[str, object]:
        return {"model": self.model, "level": self.level, "native_bf16": self.native_bf16,
                "torch_capability": self.torch_capability,
                "flags": sorted(f for f in self.flags if f in _INTERESTING)}


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """Model name and flag set of the first processor in a ``/proc/cpuinfo`` text."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags


@functools.lru_cache(maxsize=1)
def cpu_features() -> CPUFeatures:
    """This machine's :class:`CPUFeatures` (cached; ``/proc/cpuinfo`` absent -> flags from PyTorch only)."""
    try:
        model, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        model, flags = "", frozenset()
    try:
        import torch

        cap = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # pragma: no cover - old PyTorch
        cap = "unknown"
    if not flags:  # not Linux: derive what we can from PyTorch's dispatch level
        derived = {"AVX2": {"avx2"}, "AVX512": {"avx2", "avx512f"}}.get(cap.upper(), set())
        flags = frozenset(derived)
    return CPUFeatures(model=model or platform.processor() or "unknown CPU", flags=flags, torch_capability=cap)

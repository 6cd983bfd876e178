"""Where the networks run: one resolver for inference and training.

``--device`` is resolved and checked once, at the start of a run and before any preprocessing, so
that a typo or a missing GPU stops the run with a usage error (exit code 64) instead of failing every
T1w after its preprocessing.
"""

from __future__ import annotations

import torch

from ..errors import UsageError

__all__ = ["DEVICE_CHOICES", "resolve_device"]

#: what ``--device`` accepts (``cuda:N`` names one GPU)
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` checked.

    Raises :class:`~bids_app.errors.UsageError` for an unknown name, or for a CUDA device that this
    machine does not have.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        if index and not index.isdigit():
            raise UsageError(f"--device {device!r}: a GPU is named cuda or cuda:N (N = 0, 1, ...)")
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device!r}: no CUDA device is available here; use --device cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise UsageError(
                f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0..)"
            )
        return torch.device(name)
    raise UsageError(f"--device must be one of {', '.join(DEVICE_CHOICES)} or cuda:N; got {device!r}")

"""Model families the trainer knows: their input kind, architecture and training defaults, in one place.

Each :class:`FamilyPreset` is what its paper did, as far as the papers say; every value can be
overridden from the command line (``vbm-predict train --family ... --epochs/--lr/--batch-size/
--optimizer/--patience/--width``):

* ``brainimagenet`` (Lu et al. 2022): 3D Inception-ResNet-V2 on the 2-channel GMD+GMV crop
  (``gm_crop2``); SGD, Nesterov 0.9, lr 3e-4, Keras decay 1e-3, batch 24, 10 epochs, best epoch by
  validation loss (sex: lr 0.01, decay 3e-3). One output, so it serves one-output tasks (sex, ad,
  pmci, brain_age); the sex -> AD transfer pipeline is :func:`bids_app.train.train_cohort`.
* ``cnn`` (transferable 3D CNNs; CNN-5): 5 x [conv 3^3 + BN + ReLU + max pool 2] with filters
  8-16-32-64-128 (the first from the paper's figure, the rest inferred from the CNN-7/10/12 pattern
  of doubling), FC 128 -> 64 -> outputs, dropout 0.5; Adam lr 1e-4, batch 2, early stopping after
  10 epochs without a better validation loss (the paper gives no epoch cap: 100 here). Input: the
  GMV map on the SPM grid, uncropped (``gm_spm1``).
* ``liu_mox`` (Liu et al. 2022 as reproduced by the MOX report on Clinica t1-volume maps):
  ``gm_spm1``; the optimiser is not in the sources this project holds, so the CNN family's (Adam
  lr 1e-4, batch 2, patience 10, 100 epochs) is used and recorded in the card as such.
* ``sfcn`` (Peng et al. 2021; multi-task pretraining by Leonardsen et al.): the registered,
  skull-stripped, bias-corrected T1w at 1 mm MNI (``t1w_mni1mm``); SGD lr 0.01, momentum 0.9,
  batch 8, 130 epochs as Peng et al. (their step decay is not reproduced), patience 10.
* ``regional`` (the baseline of Leonardsen et al.): GM volume per atlas region of the ``gm_spm1``
  map, then logistic / multinomial / linear regression (scikit-learn; :mod:`bids_app.train.regional`).
  No optimiser settings.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Mapping

import numpy as np
from torch import nn

from ..errors import UsageError
from .loop import OptimConfig

__all__ = [
    "FAMILY_CHOICES",
    "FAMILY_PRESETS",
    "FamilyName",
    "FamilyPreset",
    "family_preset",
    "input_card",
    "network_params",
]

FamilyName = Literal["brainimagenet", "cnn", "liu_mox", "sfcn", "regional"]
FAMILY_CHOICES: tuple[FamilyName, ...] = ("brainimagenet", "cnn", "liu_mox", "sfcn", "regional")
#: the SPM 1.5 mm grid of gm_spm1 and the 1 mm MNI crop of t1w_mni1mm (issue-15 contract)
_SPM1_SHAPE = (1, 121, 145, 121)
_MNI1MM_GRID = (182, 218, 182)
_MNI1MM_AFFINE = [[-1.0, 0.0, 0.0, 90.0], [0.0, 1.0, 0.0, -126.0], [0.0, 0.0, 1.0, -72.0], [0.0, 0.0, 0.0, 1.0]]
_MNI1MM_CROP = [[11, 171], [13, 205], [11, 171]]


@dataclass(frozen=True)
class FamilyPreset:
    """Defaults of one family (see the module docstring for their sources)."""

    family: FamilyName
    input_kind: str
    architecture: str
    params: Mapping[str, Any]
    optim: OptimConfig | None
    task_optim: Mapping[str, OptimConfig] = field(default_factory=dict)
    single_output: bool = False
    source: str = ""

    def optim_for(self, task: str) -> OptimConfig | None:
        return self.task_optim.get(task, self.optim)

    def architecture_for(self, task: str) -> str:
        if self.family == "brainimagenet" and task in ("ad", "pmci"):
            return "irv2_ad_optimised"
        return self.architecture


FAMILY_PRESETS: dict[str, FamilyPreset] = {
    "brainimagenet": FamilyPreset(
        "brainimagenet", "gm_crop2", "irv2_sex",
        {"width": 1.0, "blocks": [5, 10, 5], "in_channels": 2, "dropout": 0.5},
        OptimConfig(optimizer="sgd", lr=3e-4, decay=1e-3, batch_size=24, epochs=10),
        {"sex": OptimConfig(optimizer="sgd", lr=0.01, decay=3e-3, batch_size=24, epochs=10)},
        single_output=True, source="Lu et al. 2022 (BrainImageNet)"),
    "cnn": FamilyPreset(
        "cnn", "gm_spm1", "cnn",
        {"filters": [8, 16, 32, 64, 128], "width": 1.0, "dropout": 0.5, "in_channels": 1,
         "input_shape": list(_SPM1_SHAPE[1:])},
        OptimConfig(optimizer="adam", lr=1e-4, decay=0.0, batch_size=2, epochs=100, patience=10),
        source="transferable 3D CNNs (CNN-5; filters after the first inferred from CNN-7/10/12)"),
    "liu_mox": FamilyPreset(
        "liu_mox", "gm_spm1", "liu_mox", {"in_channels": 1, "input_shape": list(_SPM1_SHAPE[1:])},
        OptimConfig(optimizer="adam", lr=1e-4, decay=0.0, batch_size=2, epochs=100, patience=10),
        source="Liu et al. 2022 / MOX reproduction (optimiser assumed: the CNN family's)"),
    "sfcn": FamilyPreset(
        "sfcn", "t1w_mni1mm", "sfcn",
        {"channels": [32, 64, 128, 256, 256, 64], "in_channels": 1, "input_shape": [160, 192, 160]},
        OptimConfig(optimizer="sgd", lr=0.01, momentum=0.9, nesterov=False, decay=0.0, batch_size=8, epochs=130,
                    patience=10),
        source="Peng et al. 2021 (SFCN), Leonardsen et al. (multi-task)"),
    "regional": FamilyPreset(
        "regional", "gm_spm1", "regional_linear", {"atlas": "aal"}, None,
        source="Leonardsen et al.'s baseline: regression on atlas regional GM volumes (scikit-learn)"),
}


def family_preset(family: str) -> FamilyPreset:
    if family not in FAMILY_PRESETS:
        raise UsageError(f"--family must be one of {', '.join(FAMILY_CHOICES)}; got {family!r}")
    return FAMILY_PRESETS[family]


def override_optim(base: OptimConfig, **changes: Any) -> OptimConfig:
    """``base`` with the command line's non-None values."""
    return replace(base, **{k: v for k, v in changes.items() if v is not None})


def network_params(preset: FamilyPreset, n_outputs: int, *, width: float | None = None,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The architecture's params for ``n_outputs`` (the heads' total) with the CLI's width."""
    params = dict(preset.params)
    if preset.single_output:
        if n_outputs != 1:
            raise UsageError(
                f"the {preset.family} networks have one output; the task needs {n_outputs} "
                f"(use --family cnn, liu_mox or sfcn for multi-class and multi-task heads)"
            )
    else:
        params["n_outputs"] = int(n_outputs)
    if width is not None and preset.family != "regional":  # the baseline has no channels to scale
        if "width" in params or preset.family == "brainimagenet":
            params["width"] = float(width)
        elif preset.family in _CHANNEL_DEFAULTS:
            # architectures without a width parameter: their channel (and hidden) counts scaled, as CNN's width
            # scales its filters (rounded, at least 1); the card records the counts themselves
            for key, default in _CHANNEL_DEFAULTS[preset.family]().items():
                params[key] = [max(1, int(round(c * float(width)))) for c in params.get(key, default)]
        else:
            raise UsageError(f"--width does not apply to the {preset.family} family")
    params.update(extra or {})
    return params


def _liu_defaults() -> dict[str, tuple[int, ...]]:
    from ..models.liu import LIU_CHANNELS, LIU_HIDDEN

    return {"channels": LIU_CHANNELS, "hidden": LIU_HIDDEN}


def _sfcn_defaults() -> dict[str, tuple[int, ...]]:
    from ..models.sfcn import SFCN_CHANNELS

    return {"channels": SFCN_CHANNELS}


#: family -> its architecture's channel-count parameters at width 1 (what ``--width`` scales there)
_CHANNEL_DEFAULTS: dict[str, Callable[[], dict[str, tuple[int, ...]]]] = {
    "liu_mox": _liu_defaults, "sfcn": _sfcn_defaults,
}


def input_card(kind: str, channels: tuple[str, ...] = ("GMV",), mask: str = "none") -> dict[str, Any]:
    """The card's ``input`` section (schema v2) for ``kind``."""
    from .. import grid
    from ..models import input_spec

    if kind == "gm_crop2":
        brain = "bids_app.grid brain mask (nilearn MNI152 2009 brain probability > 0.5)"
        return {"kind": kind, **input_spec(mask=brain)}
    if kind == "gm_spm1":
        return {"kind": kind, "shape": list(_SPM1_SHAPE), "channels": list(channels), "mask": mask, "dtype": "float32",
                "grid": {"shape": list(grid.SPM_SHAPE), "affine": np.asarray(grid.SPM_AFFINE).tolist()}}
    if kind == "t1w_mni1mm":
        return {"kind": kind, "shape": [1, 160, 192, 160], "channels": ["T1w"], "mask": "brain", "dtype": "float32",
                "grid": {"shape": list(getattr(grid, "MNI1MM_SHAPE", _MNI1MM_GRID)),
                         "affine": np.asarray(getattr(grid, "MNI1MM_AFFINE", _MNI1MM_AFFINE)).tolist()},
                "crop": _MNI1MM_CROP}
    raise UsageError(f"unknown input kind {kind!r}")


def _build(family: str, name: str, params: Mapping[str, Any]) -> nn.Module:
    """SEAM: build a family's network. The lead points this at ``bids_app.models.architectures.build_network``.

    Until the registry is in this build, BrainImageNet networks come from the IRv2 builder and the
    other families from the registry module when it is importable.
    """
    if family == "brainimagenet":
        from ..models import build_network

        return build_network(name, **params)
    try:
        registry = importlib.import_module("bids_app.models.architectures")
    except ImportError as exc:
        raise UsageError(
            f"the {family} family's network ({name}) needs bids_app.models.architectures, missing in this build"
        ) from exc
    net: nn.Module = registry.build_network(name, **params)
    return net


NetworkFactory = Callable[[int], nn.Module]


def network_factory(preset: FamilyPreset, task: str, params: Mapping[str, Any]) -> NetworkFactory:
    """``factory(seed)`` -> a fresh network of ``preset`` (seeded so folds are reproducible)."""
    import torch

    def make(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return _build(preset.family, preset.architecture_for(task), params)

    return make

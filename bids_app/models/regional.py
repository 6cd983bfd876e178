"""The regional-volume baseline as a network: GM volume per atlas region, standardised, then linear.

Why a torch module for a scikit-learn model: the baseline must be packaged, verified and applied
exactly like the CNNs (``model.json`` + safetensors folds, sha256-pinned, no pickle), so that every
CNN score can stand beside its baseline in the same tables. :mod:`bids_app.train.regional` fits
the model with scikit-learn and copies the fitted numbers into this module; its tests check that
the module's outputs equal scikit-learn's ``decision_function`` / ``predict`` to 1e-6.

What the module holds (all in its state dict, so a package needs no atlas file at run time):

* ``labels``: int16 map on the input grid, region ``k`` (1..n_regions) or 0 (no region). The atlas
  values are renumbered 1..n_regions at fit time; which atlas value and name each column is, and
  the atlas file with its sha256, are recorded in the card's ``provenance.atlas``;
* ``mean`` / ``scale`` (float64, n_regions): the training folds' region-volume means and standard
  deviations (``StandardScaler``);
* ``linear`` (float64): coefficients and intercept (logit of the positive class, the multinomial
  logits, or the standardised regression value).

Input: the ``gm_spm1`` kind with channel ``GMV`` (N x 1 x 121 x 145 x 121, modulated GM on the SPM
1.5 mm grid, NaN set to 0). Region volume = sum of GMV over the region's voxels x voxel volume, in
mL. ``normalise="total_gm"`` turns them into percent of the GM summed over all regions (GM maps
alone give no intracranial volume). Which to use depends on the task: head size is the main signal
for sex and global GM loss for age (absolute volumes); for AD and MCI the local medial-temporal loss
is the signal, and with a hundred regions that all scale with head size and few training
participants, an L2 model on absolute volumes is dominated by that shared head-size direction
(proportional volumes remove it).

Arithmetic is float64 inside (sums of about two million voxels, then standardisation): float32
would move logits by about 1e-5. The output has the input's floating dtype. Autocast is switched
off in ``forward``; the module must not be converted to half precision (its ``mean`` would lose
three significant digits).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import grid
from ..errors import ModelPackageError

__all__ = ["ARCHITECTURE", "NORMALISE_CHOICES", "RegionalLinear", "build_regional_linear", "percent_of_total"]

ARCHITECTURE = "regional_linear"
#: "none": absolute region volumes (mL); "total_gm": percent of the GM summed over all regions
NORMALISE_CHOICES: tuple[str, ...] = ("none", "total_gm")
_VOXEL_ML = grid.SPM_VOXEL_VOLUME_MM3 / 1000.0


class RegionalLinear(nn.Module):
    """Region volumes (mL) of a GMV map -> standardised -> linear -> (N, n_outputs) raw outputs.

    Parameters
    ----------
    n_regions : number of atlas regions (columns of the linear layer).
    n_outputs : 1 for a binary or regression head, the number of classes for a multinomial head.
    atlas : name of the atlas the labels come from (the card's provenance says which file).
    input_shape : grid of the labels and of the input maps (the SPM grid; smaller grids for tests).
    voxel_volume_ml : volume of one voxel in mL (the SPM grid's 1.5 mm voxels: 0.003375).
    normalise : ``"none"`` (absolute mL) or ``"total_gm"`` (percent of the GM summed over all regions).
    """

    labels: torch.Tensor  # buffers (registered in __init__), typed for mypy
    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        n_regions: int,
        n_outputs: int = 1,
        atlas: str = "AAL",
        input_shape: Sequence[int] = grid.SPM_SHAPE,
        voxel_volume_ml: float = _VOXEL_ML,
        normalise: str = "none",
    ) -> None:
        super().__init__()
        if int(n_regions) < 1 or int(n_outputs) < 1:
            raise ValueError(f"n_regions and n_outputs must be >= 1, got {n_regions} and {n_outputs}")
        self.n_regions = int(n_regions)
        self.n_outputs = int(n_outputs)
        self.atlas = str(atlas)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.voxel_volume_ml = float(voxel_volume_ml)
        if normalise not in NORMALISE_CHOICES:
            raise ValueError(f"normalise must be one of {NORMALISE_CHOICES}, got {normalise!r}")
        self.normalise = normalise
        self.register_buffer("labels", torch.zeros(self.input_shape, dtype=torch.int16))
        self.register_buffer("mean", torch.zeros(self.n_regions, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(self.n_regions, dtype=torch.float64))
        self.linear = nn.Linear(self.n_regions, self.n_outputs, dtype=torch.float64)
        self.register_load_state_dict_post_hook(_check_loaded)

    # -- filling the module from a fit ---------------------------------------------------------

    def set_atlas(self, labels: np.ndarray) -> None:
        """Copy a region map (0 = none, 1..n_regions) of shape ``input_shape`` into ``labels``."""
        lab = np.asarray(labels)
        if lab.shape != self.input_shape:
            raise ValueError(f"labels have shape {lab.shape}, the module's grid is {self.input_shape}")
        if lab.min() < 0 or lab.max() > self.n_regions:
            raise ValueError(f"labels must lie in 0..{self.n_regions}, got {lab.min()}..{lab.max()}")
        self.labels.copy_(torch.from_numpy(lab.astype(np.int16)))

    def set_linear(self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> None:
        """Copy the standardisation (means, scales) and the linear model (coef ``(n_outputs, n_regions)``)."""
        coef = np.atleast_2d(np.asarray(coef, dtype=np.float64))
        if coef.shape != (self.n_outputs, self.n_regions):
            raise ValueError(f"coef has shape {coef.shape}, the module needs {(self.n_outputs, self.n_regions)}")
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(np.asarray(mean, dtype=np.float64)))
            self.scale.copy_(torch.as_tensor(np.asarray(scale, dtype=np.float64)))
            self.linear.weight.copy_(torch.as_tensor(coef))
            self.linear.bias.copy_(torch.as_tensor(np.atleast_1d(np.asarray(intercept, dtype=np.float64))))

    # -- forward --------------------------------------------------------------------------------

    def region_volumes(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n_regions) float64 GM volume per region in mL of maps ``x`` (N x 1 x grid or N x grid)."""
        if x.dim() == len(self.input_shape) + 2:
            if x.shape[1] != 1:
                raise ValueError(f"the regional model reads one channel (GMV); got {x.shape[1]}")
            x = x[:, 0]
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"maps must be on the grid {self.input_shape}; got {tuple(x.shape[1:])}")
        flat = torch.nan_to_num(x.reshape(x.shape[0], -1).to(torch.float64), nan=0.0)
        index = self.labels.reshape(-1).to(device=flat.device, dtype=torch.int64)
        sums = torch.zeros(x.shape[0], self.n_regions + 1, dtype=torch.float64, device=flat.device)
        sums.index_add_(1, index, flat)
        return sums[:, 1:] * self.voxel_volume_ml

    def forward_regions(self, volumes: torch.Tensor) -> torch.Tensor:
        """(N, n_outputs) float64 raw outputs from region volumes in mL (what scikit-learn was fitted on)."""
        v = volumes.to(torch.float64)
        if self.normalise == "total_gm":
            v = 100.0 * v / v.sum(dim=1, keepdim=True).clamp_min(1e-12)
        z = (v - self.mean) / self.scale
        return nn.functional.linear(z, self.linear.weight.to(torch.float64), self.linear.bias.to(torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = x.dtype if x.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.forward_regions(self.region_volumes(x)).to(out_dtype)


def _check_loaded(module: nn.Module, incompatible: Any) -> None:
    """Refuse loaded weights whose region map or scales cannot be right (before any prediction)."""
    if not isinstance(module, RegionalLinear):
        return
    lab = module.labels
    if lab.is_floating_point() or int(lab.min()) < 0 or int(lab.max()) > module.n_regions:
        raise ModelPackageError(
            f"regional_linear: the region map holds values outside 0..{module.n_regions}; the weights do not "
            "fit this architecture"
        )
    if not bool(torch.all(torch.isfinite(module.scale) & (module.scale > 0))):
        raise ModelPackageError("regional_linear: region scales must be finite and positive")


def percent_of_total(volumes: np.ndarray) -> np.ndarray:
    """Region volumes as percent of their sum per row (the ``total_gm`` features; scikit-learn side)."""
    v = np.asarray(volumes, dtype=np.float64)
    return 100.0 * v / np.maximum(v.sum(axis=1, keepdims=True), 1e-12)


def build_regional_linear(**params: Any) -> RegionalLinear:
    """The registry's constructor for ``regional_linear`` (params: n_regions, n_outputs, atlas)."""
    return RegionalLinear(**params)

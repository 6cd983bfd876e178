"""Shared helpers for the model tests: realistic inputs and small packages made on the fly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from bids_app import grid
from bids_app.models import TASK_LABELS, KerasBatchNorm3d, input_spec, network_from_architecture, save_package

__all__ = ["gm_like_inputs", "demo_card", "make_package", "randomise_bn"]


def gm_like_inputs(n: int, seed: int = 0) -> np.ndarray:
    """N realistic model inputs: the MNI152 GM template on the SPM grid, with smooth per-subject
    atrophy/expansion fields (GMV = GMD x a smooth Jacobian-like field), through make_model_input."""
    rng = np.random.default_rng(seed)
    gm = grid.template_gm().astype(np.float32)
    out = []
    for _ in range(n):
        field = ndimage.gaussian_filter(rng.normal(0.0, 1.0, grid.SPM_SHAPE), sigma=8).astype(np.float32)
        field /= np.abs(field).max() + 1e-6
        gmd = np.clip(gm * (1.0 + 0.15 * field), 0.0, 1.0)
        smooth = ndimage.gaussian_filter(rng.normal(0.0, 1.0, grid.SPM_SHAPE), sigma=10).astype(np.float32)
        jac = 1.0 + 0.2 * smooth * 10
        gmv = gmd * np.clip(jac, 0.5, 1.5)
        out.append(grid.make_model_input(gmd, gmv))
    return np.stack(out).astype(np.float32)


def randomise_bn(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, KerasBatchNorm3d):
            m.running_mean.copy_(torch.randn(m.channels, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.channels, generator=g) * 1.5 + 0.5)
            if m.bias is not None:
                m.bias.data.copy_(torch.randn(m.channels, generator=g) * 0.1)
    return net


def demo_card(
    task: str = "ad",
    architecture: str | None = None,
    *,
    name: str | None = None,
    version: str = "0.1.0",
    preprocessing: tuple[str, ...] = ("ants",),
    synthetic: bool = True,
    screening: bool = True,
    mask: str = "bids_app.grid.brain_mask",
    **params: Any,
) -> dict[str, Any]:
    """A model card for a small package; ``params`` override the architecture's parameters."""
    architecture = architecture or ("irv2_sex" if task == "sex" else "irv2_ad_optimised")
    params = {"width": 0.125, "blocks": [1, 1, 2], "in_channels": 2, "dropout": 0.5, **params}
    pos, neg = TASK_LABELS[task]
    return {
        "name": name or f"demo-{task}",
        "task": task,
        "version": version,
        "architecture": {"name": architecture, "params": params},
        "input": input_spec(mask=mask),
        "output": {"meaning": f"1 = {pos}", "activation": "sigmoid", "positive_label": pos, "negative_label": neg},
        "thresholds": {"default": 0.5, **({"screening": 0.3} if task == "ad" and screening else {})},
        "training": {"data": "random weights for tests", "synthetic": synthetic, "preprocessing": list(preprocessing)},
        "metrics": [],
        "licence": "Apache-2.0",
    }


def make_package(
    path: Path,
    task: str = "ad",
    n_folds: int = 2,
    architecture: str | None = None,
    *,
    seed: int = 0,
    randomise: bool = True,
    name: str | None = None,
    version: str = "0.1.0",
    preprocessing: tuple[str, ...] = ("ants",),
    synthetic: bool = True,
    screening: bool = True,
    mask: str = "bids_app.grid.brain_mask",
    **params: Any,
) -> Path:
    """A real model package (random weights, fold ``k`` seeded with ``seed + k``) written with the
    app's own writer. ``randomise``: also draw BatchNorm statistics, so that folding them matters."""
    card = demo_card(task, architecture, name=name, version=version, preprocessing=preprocessing,
                     synthetic=synthetic, screening=screening, mask=mask, **params)
    states = []
    for k in range(n_folds):
        torch.manual_seed(seed + k)
        net = network_from_architecture(card["architecture"])
        if randomise:
            randomise_bn(net, seed=seed + k)
        states.append(net.state_dict())
    return save_package(path, card, states)

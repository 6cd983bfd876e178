"""Explanation maps of a model package for one model input: occlusion and Grad-CAM, on the SPM grid.

For an ensemble (the AD package's folds) each map is the mean of the folds' maps: for occlusion
this is exactly the occlusion map of the ensemble score (the mean of the fold scores), for Grad-CAM
the mean of the folds' maps before the normalisation to a maximum of 1.

Maps are computed on the model input grid (96 x 120 x 86, the crop of the SPM 1.5 mm MNI grid)
and placed back on the full 121 x 145 x 121 grid (0 outside the crop). Fold results are cached
in a work folder under a key of the input's bytes, the fold's sha256, the method and its
parameters, so a rerun (or a killed run) reuses them only for the same inputs and parameters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import grid
from ..errors import UsageError
from .gradcam import default_layer, gradcam, threshold_map
from .occlusion import OcclusionEngine, OcclusionParams, drops_to_map, window_positions

__all__ = [
    "EXPLAIN_CHOICES",
    "METHODS",
    "MODEL_DESC",
    "ExplainOptions",
    "ExplanationMap",
    "explain_package",
]

_log = logging.getLogger("bids_app.explain")

ExplainChoice = Literal["none", "occlusion", "gradcam", "all"]
EXPLAIN_CHOICES: tuple[str, ...] = ("none", "occlusion", "gradcam", "all")
METHODS: tuple[str, ...] = ("occlusion", "gradcam")
#: the ``<Model>`` part of ``desc-<method><Model>``: the package task capitalised
MODEL_DESC: dict[str, str] = {"sex": "Sex", "ad": "AD"}
_THRESHOLDS: tuple[tuple[str, str], ...] = (("percentile", "Percentile"), ("otsu", "Otsu"), ("meansd", "MeanSD"))


def _voxels(mm: float, what: str) -> int:
    n = round(float(mm) / 1.5)
    if not np.isfinite(mm) or n < 1 or abs(n * 1.5 - float(mm)) > 1e-6:
        raise UsageError(f"{what} must be a positive multiple of the 1.5 mm grid spacing; got {mm} mm")
    return n


@dataclass(frozen=True)
class ExplainOptions:
    """What to explain and how (the ``--explain`` options). ``methods`` empty = nothing."""

    methods: tuple[str, ...] = ()
    cube_mm: float = 18.0
    step_mm: float = 9.0
    baseline: float = 0.0
    batch_size: int = 16
    gradcam_layer: str | None = None
    percentile: float = 95.0
    sd_k: float = 1.0
    regions: int = 10

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise UsageError(f"explanation methods must be among {', '.join(METHODS)}; got {bad}")
        _voxels(self.cube_mm, "--occlusion-cube")
        _voxels(self.step_mm, "--occlusion-step")
        if not 0.0 < self.percentile < 100.0:
            raise UsageError(f"--gradcam-percentile must lie strictly between 0 and 100; got {self.percentile}")
        if self.batch_size < 1 or self.regions < 1:
            raise UsageError("the occlusion batch size and the number of regions must be at least 1")

    @classmethod
    def from_choice(cls, choice: str, **kwargs: Any) -> ExplainOptions:
        """``--explain`` value (none / occlusion / gradcam / all) plus the other options."""
        if choice not in EXPLAIN_CHOICES:
            raise UsageError(f"--explain must be one of {', '.join(EXPLAIN_CHOICES)}; got {choice!r}")
        methods = {"none": (), "all": METHODS}.get(choice, (choice,))
        return cls(methods=tuple(methods), **kwargs)

    def occlusion_params(self) -> OcclusionParams:
        return OcclusionParams(
            cube=_voxels(self.cube_mm, "--occlusion-cube"),
            step=_voxels(self.step_mm, "--occlusion-step"),
            baseline=float(self.baseline),
            batch_size=int(self.batch_size),
        )


@dataclass(frozen=True)
class ExplanationMap:
    """One map to write: ``desc`` = ``<method><Model>`` (e.g. ``occlusionAD``, ``gradcamThrOtsuSex``)."""

    desc: str
    method: str
    data: np.ndarray  # on the SPM grid
    description: str
    units: str
    parameters: Mapping[str, Any]
    threshold: Mapping[str, Any] | None = None
    fold_values: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _key(x: np.ndarray, sha: str, method: str, params: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(sha.encode())
    h.update(method.encode())
    h.update(json.dumps(dict(params), sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _cached(cache_dir: Path | None, key: str) -> dict[str, np.ndarray] | None:
    if cache_dir is None:
        return None
    path = cache_dir / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError):
        return None


def _store(cache_dir: Path | None, key: str, arrays: Mapping[str, np.ndarray]) -> None:
    if cache_dir is None:
        return
    from .._io import atomic_path

    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache_dir / f"{key}.npz", suffix=".npz") as tmp:
        np.savez(tmp, **dict(arrays))  # type: ignore[arg-type]


def _occlusion(
    package: Any, x: np.ndarray, options: ExplainOptions, mask: np.ndarray, device: str, cache_dir: Path | None
) -> ExplanationMap:
    params = options.occlusion_params()
    t0 = time.perf_counter()
    starts, kept = window_positions(x.shape[1:], params.cube, params.step, mask)
    key_params = {**asdict(params), "mask_windows": int(kept.sum())}
    key_params.pop("batch_size")
    key_params.pop("full_fraction")
    maps, bases = [], []
    for fold, (net, sha) in enumerate(zip(package.folds, package.sha256)):
        key = _key(x, sha, "occlusion", key_params)
        hit = _cached(cache_dir, key)
        if hit is None:
            _log.info(
                "occlusion: %s fold %d, %d of %d window positions (brain mask)",
                package.name,
                fold,
                kept.sum(),
                len(kept),
            )
            engine = OcclusionEngine(net, params, device=device)
            base = engine.set_input(x)
            drops = np.zeros(len(starts), dtype=np.float64)
            if kept.any():
                drops[kept] = base - engine.scores(starts[kept])
            hit = {"drops": drops, "base": np.asarray(base)}
            _store(cache_dir, key, hit)
            del engine
        maps.append(drops_to_map(x.shape[1:], starts, hit["drops"], params.cube))
        bases.append(float(hit["base"]))
    data = grid.uncrop(np.mean(maps, axis=0).astype(np.float32))
    return ExplanationMap(
        desc=f"occlusion{MODEL_DESC[package.task]}",
        method="occlusion",
        data=data,
        description=(
            "Occlusion map: for every position of a cube slid over the model input, the drop of the "
            f"{'ensemble ' if len(maps) > 1 else ''}score (probability of {package.positive_label}) "
            "when the cube's voxels "
            "are set to the baseline value; each voxel holds the mean drop of the windows covering it. "
            f"Positive: the region supports '{package.positive_label}'; negative: '{package.negative_label}'."
        ),
        units="score drop (probability)",
        parameters={
            "CubeMM": params.cube * 1.5,
            "CubeVoxels": params.cube,
            "StepMM": params.step * 1.5,
            "StepVoxels": params.step,
            "BaselineValue": params.baseline,
            "Score": "sigmoid output; ensemble = mean of the folds",
            "WindowPositions": len(starts),
            "WindowPositionsEvaluated": int(kept.sum()),
            "PositionRule": (
                "windows whose cube touches the brain mask; the others have drop 0 "
                "(the masked input equals the baseline there)"
            ),
            "Algorithm": "exact receptive-field-limited recomputation (bids_app.explain.occlusion)",
        },
        fold_values={"BaseScores": bases},
        seconds=time.perf_counter() - t0,
    )


def _gradcam(
    package: Any, x: np.ndarray, options: ExplainOptions, mask: np.ndarray, device: str, cache_dir: Path | None
) -> list[ExplanationMap]:
    t0 = time.perf_counter()
    maps, logits, layers, shapes = [], [], [], []
    for net, sha in zip(package.folds, package.sha256):
        layer = options.gradcam_layer or default_layer(net)
        key = _key(x, sha, "gradcam", {"layer": layer})
        hit = _cached(cache_dir, key)
        if hit is None:
            res = gradcam(net, x, layer, device=device)
            hit = {"map": res.input_map, "logit": np.asarray(res.logit), "shape": np.asarray(res.layer_map.shape)}
            _store(cache_dir, key, hit)
        maps.append(hit["map"])
        logits.append(float(hit["logit"]))
        layers.append(layer)
        shapes.append([int(v) for v in hit["shape"]])
    mean = np.mean(maps, axis=0)
    peak = float(mean.max())
    cam = (mean / peak if peak > 0 else mean).astype(np.float32)
    params = {
        "Layer": layers[0] if len(set(layers)) == 1 else layers,
        "LayerShape": shapes[0],
        "Target": "logit of the positive class (before the sigmoid)",
        "Upsampling": "trilinear, layer voxels placed at their receptive-field centres",
        "Normalisation": "mean over folds divided by its maximum",
        "MaximumBeforeNormalisation": peak,
    }
    model = MODEL_DESC[package.task]
    seconds = time.perf_counter() - t0
    desc = (
        f"Grad-CAM at layer {params['Layer']}: positive part of the gradient-weighted sum of the layer's channels "
        f"for the logit of '{package.positive_label}', upsampled to the model grid"
    )
    out = [
        ExplanationMap(
            f"gradcam{model}",
            "gradcam",
            grid.uncrop(cam),
            desc + ".",
            "arbitrary (0..1)",
            params,
            fold_values={"Logits": logits},
            seconds=seconds,
        )
    ]
    for method, label in _THRESHOLDS:
        thr, value = threshold_map(cam, method, mask, percentile=options.percentile, k=options.sd_k)
        info: dict[str, Any] = {"Method": method, "Value": value, "ComputedWithin": "brain mask"}
        if method == "percentile":
            info["Percentile"] = options.percentile
        elif method == "meansd":
            info["K"] = options.sd_k
        out.append(
            ExplanationMap(
                f"gradcamThr{label}{model}",
                f"gradcamThr{label}",
                grid.uncrop(thr),
                desc + f"; voxels below the {method} threshold set to 0.",
                "arbitrary (0..1)",
                {**params, "Threshold": info},
                threshold=info,
                fold_values={"Logits": logits},
                seconds=seconds,
            )
        )
    return out


def explain_package(
    package: Any,
    x: np.ndarray,
    options: ExplainOptions,
    *,
    device: str = "cpu",
    cache_dir: Path | None = None,
    mask: np.ndarray | None = None,
) -> list[ExplanationMap]:
    """Every map ``options`` asks for, for one model package and one model input ``x`` (2 x 96 x 120 x 86).

    ``mask`` is the brain mask on the model grid (default: :func:`bids_app.grid.brain_mask`, cropped).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 5:
        x = x[0]
    if tuple(x.shape) != grid.MODEL_INPUT_SHAPE:
        raise ValueError(f"model input must be {grid.MODEL_INPUT_SHAPE}; got {x.shape}")
    m = grid.crop(grid.brain_mask()) if mask is None else np.asarray(mask, dtype=bool)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    out: list[ExplanationMap] = []
    if "occlusion" in options.methods:
        out.append(_occlusion(package, x, options, m, device, cache_dir))
    if "gradcam" in options.methods:
        out.extend(_gradcam(package, x, options, m, device, cache_dir))
    return out

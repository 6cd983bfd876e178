"""Writing explanation maps as BIDS-Derivatives files: maps, sidecars, atlas summaries, the predictions JSON.

Per T1w, model package and method (``<Model>`` = the package task capitalised: ``Sex``, ``AD``)::

    <prefix>_space-IXI549Space_desc-<method><Model>_explanation.nii.gz  (+ .json sidecar)
    <prefix>_space-IXI549Space_desc-<method><Model>_regions.tsv         (+ .json: columns, atlas or why none)

``<method>`` is ``occlusion``, ``gradcam`` or ``gradcamThr{Percentile,Otsu,MeanSD}``. The
sidecar keys: ``Method``, ``Model``, ``ModelTask``, ``ModelVersion``, ``ModelSha256`` (one per
fold), ``Parameters``, ``Threshold`` (thresholded maps), ``Units``, ``Sources``, ... The
predictions JSON of the T1w lists every file under ``Explanations``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import RESEARCH_USE_NOTICE, __version__, grid
from .._io import write_json
from ..derivatives import (
    SPACE,
    explanation_path,
    map_path,
    predictions_path,
    write_map,
    write_table,
)
from ..types import T1wUnit
from .atlas import REGION_COLUMNS, AtlasUnavailable, load_atlas, top_regions
from .maps import ExplainOptions, ExplanationMap, explain_package

__all__ = ["add_to_predictions_json", "write_explanations"]

_log = logging.getLogger("bids_app.explain")


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _sidecar(m: ExplanationMap, package: Any, unit: T1wUnit, output_dir: Path, regions: Path) -> dict[str, Any]:
    sources = [f"bids::{_relative(map_path(output_dir, unit, kind), output_dir)}" for kind in ("GMD", "GMV")]
    out: dict[str, Any] = {
        "Description": m.description,
        "Method": m.method,
        "Model": package.name,
        "ModelTask": package.task,
        "ModelVersion": package.version,
        "ModelSha256": list(package.sha256),
        "ModelTrainedOnSynthetic": bool(package.trained_on_synthetic),
        "Parameters": dict(m.parameters),
    }
    if m.threshold is not None:
        out["Threshold"] = dict(m.threshold)
    out.update(
        {
            "Units": m.units,
            "FoldValues": dict(m.fold_values),
            "Sources": sources,
            "SpatialReference": SPACE,
            "Grid": {"Shape": list(grid.SPM_SHAPE), "Affine": grid.SPM_AFFINE.tolist(), "VoxelSizeMM": 1.5},
            "ModelInputGrid": {"Crop": [[s.start, s.stop] for s in grid.CROP], "Outside": 0.0},
            "Regions": regions.name,
            "ComputeSeconds": round(float(m.seconds), 2),
            "GeneratedBy": f"vbm-predict {__version__}",
            "Notice": RESEARCH_USE_NOTICE,
        }
    )
    return out


def _write_regions(path: Path, data: np.ndarray, options: ExplainOptions, atlas: Any, reason: str | None) -> Path:
    import pandas as pd

    if atlas is not None:
        table = top_regions(data, atlas, n=options.regions)
    else:
        table = pd.DataFrame(columns=list(REGION_COLUMNS))
    write_table(path, table, REGION_COLUMNS)
    side = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    side["Atlas"] = (
        {
            "Name": atlas.name,
            "Source": atlas.source,
            "Resampling": "nearest neighbour onto the SPM 1.5 mm grid",
            "Reference": "Tzourio-Mazoyer N. et al. (2002) NeuroImage 15:273-289",
        }
        if atlas is not None
        else None
    )
    if reason is not None:
        side["AtlasMissing"] = reason
    side["Within"] = "brain mask (bids_app.grid.brain_mask)"
    side["Ranking"] = "absolute mean of the map inside the region, strongest first"
    write_json(path.with_suffix(".json"), side)
    return path


def add_to_predictions_json(output_dir: Path, unit: T1wUnit, entries: Sequence[dict[str, Any]]) -> Path:
    """Add (or replace) the ``Explanations`` list of the T1w's predictions JSON."""
    path = predictions_path(output_dir, unit).with_suffix(".json")
    side = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    side["Explanations"] = list(entries)
    return write_json(path, side)


def _not_explained(package: Any) -> str | None:
    """Why ``package`` gets no explanation map (None: it does): the maps explain one binary score on
    the BrainImageNet crop, so other heads and input kinds are skipped until they have their own."""
    heads = getattr(package, "heads", ())
    if heads and (len(heads) != 1 or heads[0].kind != "binary"):
        return f"its heads ({', '.join(f'{h.name}: {h.kind}' for h in heads)}) are not a single binary head"
    kind = getattr(package, "input_kind", "gm_crop2")
    if kind != "gm_crop2":
        return f"it reads the {kind} input; explanation maps are made on the gm_crop2 input only"
    return None


def write_explanations(
    output_dir: Path,
    unit: T1wUnit,
    packages: Sequence[Any],
    x: np.ndarray,
    options: ExplainOptions,
    *,
    device: str = "cpu",
    cache_dir: Path | None = None,
) -> list[Path]:
    """Compute and write every map ``options`` asks for, for every package; return the written files.

    The atlas summary of each map is written beside it; without the atlas the summary holds no
    rows and its JSON says why. The predictions JSON of the T1w lists every map.
    """
    if not options.methods:
        return []
    try:
        atlas, reason = load_atlas(), None
    except AtlasUnavailable as exc:
        atlas, reason = None, str(exc)
        _log.warning("%s: atlas summaries without regions: %s", unit.prefix, reason)
    written: list[Path] = []
    entries: list[dict[str, Any]] = []
    for package in packages:
        skip = _not_explained(package)
        if skip:
            _log.info("%s: no explanation map for %s: %s", unit.prefix, package.name, skip)
            continue
        _log.info("%s: explaining %s (%s) with %s", unit.prefix, package.name, package.task, ", ".join(options.methods))
        for m in explain_package(package, x, options, device=device, cache_dir=cache_dir):
            path = explanation_path(output_dir, unit, m.desc)
            regions = explanation_path(output_dir, unit, m.desc, "regions")
            write_map(path, m.data, _sidecar(m, package, unit, output_dir, regions))
            _write_regions(regions, m.data, options, atlas, reason)
            written += [path, regions]
            entries.append(
                {
                    "Method": m.method,
                    "Model": package.name,
                    "ModelTask": package.task,
                    "Desc": m.desc,
                    "File": _relative(path, output_dir),
                    "Sidecar": _relative(path.with_name(path.name.replace(".nii.gz", ".json")), output_dir),
                    "Regions": _relative(regions, output_dir),
                }
            )
    add_to_predictions_json(output_dir, unit, entries)
    return written

"""Keras H5 files -> model packages; the published BrainImageNet files get their published card.

The work is split by job: :mod:`bids_app.models.keras_h5` reads a file (structure and weights, h5py
only, no code from the file ever run), :mod:`bids_app.models.keras_match` recognises which of our
architectures the graph is, and this module writes the package. What is known about the published
files (their names in each generation, versions, reported metrics, licence) is data:
``bids_app/data/brainimagenet.json``.

Generations of the published AD files: before the authors' commit "Better Model for AD" (2021-04-01)
their prediction script loaded ``20200504_..._Fold{0..4}.h5``; since then ``20210106_0_..._Fold{0..4}.h5``,
the simplified network (the sex stem up to ``StemEnd`` plus a small conv/pool head). Which generation
a package was made from is recorded in its card (``provenance.generation``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import KerasImportError
from .keras_h5 import KerasModel, read_keras_h5
from .keras_match import identify_architecture, match_graphs, renamed_state

__all__ = [
    "KerasImportError",
    "KerasModel",
    "read_keras_h5",
    "match_graphs",
    "identify_architecture",
    "PUBLISHED_FILES",
    "published_info",
    "published_generation",
    "published_card",
    "import_keras",
]

_CARD_FILE = Path(__file__).resolve().parent.parent / "data" / "brainimagenet.json"


@functools.lru_cache(maxsize=1)
def published_info() -> dict[str, Any]:
    """The published models' facts (``bids_app/data/brainimagenet.json``), newest generation first."""
    return json.loads(_CARD_FILE.read_text(encoding="utf-8"))


def _published_files() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for gen in published_info()["generations"]:
        for task, names in gen["files"].items():
            out.setdefault(task, []).extend(n for n in names if n not in out.get(task, []))
    return {task: tuple(names) for task, names in out.items()}


#: Every published file name by task, all generations (newest first).
PUBLISHED_FILES: dict[str, tuple[str, ...]] = _published_files()


def published_generation(task: str, names: Sequence[str]) -> dict[str, Any] | None:
    """The generation entry whose ``task`` files include all of ``names``, newest first; None if none."""
    for gen in published_info()["generations"]:
        if names and all(n in gen["files"].get(task, ()) for n in names):
            return gen
    return None


def published_card(task: str) -> dict[str, Any]:
    """Card fields for the published BrainImageNet models (training, metrics with source, licence)."""
    info = published_info()
    facts = info["tasks"][task]
    metrics = [
        {
            "name": m["name"],
            "value": m["value"],
            "source": info["source"] + (f" ({m['where']})" if m.get("where") else ""),
        }
        for m in facts["metrics"]
    ]
    return {
        "training": {
            "data": facts["data"],
            "synthetic": False,
            "preprocessing": list(info["training"]["preprocessing"]),
            "note": info["training"]["note"],
        },
        "metrics": metrics,
        "licence": info["licence"],
    }


def import_keras(
    files: Sequence[Path],
    *,
    task: str,
    out_dir: Path,
    name: str | None = None,
    version: str | None = None,
    synthetic: bool = False,
    preprocessing: Sequence[str] | None = None,
    data_description: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Convert one H5 file per fold into a model package in ``out_dir``; returns ``out_dir``.

    All folds must be the same network. When the graph is one of our architectures the package
    records it by name (with our layer names); otherwise the graph itself is stored
    (``keras_graph``). The published BrainImageNet files, recognised by their file names, get
    the published card (metrics with source, licence, SPM preprocessing); other files get a card
    that says where they came from and what is unknown.
    """
    from .package import TASK_LABELS, input_spec, save_package

    if task not in TASK_LABELS:
        raise ValueError(f"task must be one of {sorted(TASK_LABELS)}, got {task!r}")
    files = [Path(p) for p in files]
    if not files:
        raise ValueError("at least one H5 file is required")
    models = [read_keras_h5(p) for p in files]
    first = models[0]
    want = (2, 96, 120, 86)
    for m in models:
        if tuple(m.input_shape) != want:
            raise KerasImportError(f"{m.path}: input shape (C, D, H, W) {m.input_shape} is not the model input {want}")
    ident = identify_architecture(first, task)
    states: list[dict[str, torch.Tensor]] = []
    if ident is not None:
        arch_name, params, _ = ident
        architecture: dict[str, Any] = {"name": arch_name, "params": params}
    else:
        architecture = {
            "name": "keras_graph",
            "params": {"input_shape": list(first.input_shape), "graph": [n.to_dict() for n in first.nodes]},
        }
    for m in models:
        if ident is not None:
            again = identify_architecture(m, task)
            if again is None or again[0] != ident[0] or again[1] != ident[1]:
                raise KerasImportError(
                    f"{m.path}: the network differs from {first.path}'s ({ident[0]} {ident[1]}); "
                    "all folds must be the same network"
                )
            states.append(renamed_state(m.state_dict, again[2]))
        else:
            rename = match_graphs(first.nodes, m.nodes)
            if rename is None:
                raise KerasImportError(
                    f"{m.path}: the network differs from {first.path}'s; all folds must be the same network"
                )
            states.append(renamed_state(m.state_dict, rename))
    generation = published_generation(task, [p.name for p in files])
    published = generation is not None
    pos, neg = TASK_LABELS[task]
    card: dict[str, Any] = {
        "name": name or (f"brainimagenet-{task}" if published else files[0].stem),
        "task": task,
        "version": version or (generation["versions"][task] if generation else "0.0.0"),
        "architecture": architecture,
        "input": input_spec(mask="brain mask (reference: Reslice_BrainMask_05; here bids_app.grid.brain_mask)"),
        "output": {
            "meaning": f"sigmoid score; 1 = {pos}, 0 = {neg}",
            "activation": "sigmoid",
            "positive_label": pos,
            "negative_label": neg,
        },
        "thresholds": {"default": 0.5, **({"screening": 0.3} if task == "ad" else {})},
    }
    if published:
        card.update(published_card(task))
    else:
        card.update(
            {
                "training": {
                    "data": data_description or f"unknown (imported from {', '.join(p.name for p in files)})",
                    "synthetic": bool(synthetic),
                    "preprocessing": list(preprocessing or []),
                },
                "metrics": [],
                "licence": "unknown: check the terms of the source files",
            }
        )
    card["provenance"] = {
        "imported_from": [
            {"file": m.path.name, "sha256": m.sha256, "keras_version": m.keras_version, "backend": m.backend}
            for m in models
        ],
        "importer": "bids_app.models.keras_import (h5py; no Keras code executed)",
    }
    if generation is not None:
        card["provenance"]["generation"] = {"id": generation["id"], "note": generation["note"]}
    return save_package(Path(out_dir), card, states, dtype=dtype)

"""Model packages: one directory per model = ``model.json`` (the card) + one safetensors file per fold.

Why a directory of plain files: the card is readable by people and by the report, the weights load
without executing code (safetensors, never pickle), and every weights file is pinned by its sha256
in the card, so a tampered or truncated file is refused before it is used.

model.json schema (``schema_version`` 1; see ``docs/model_package.md`` for an example)::

    name             str    e.g. "brainimagenet-ad"
    task             "sex" | "ad"
    version          str    e.g. "2020.05.04"
    architecture     {"name": one of irv2_sex / irv2_ad_optimised / irv2_ad_intact / keras_graph,
                      "params": {...}}   (keras_graph: {"input_shape": [...], "graph": [nodes]})
    input            {"shape": [2, 96, 120, 86],
                      "grid": {"shape": [121, 145, 121], "affine": 4 x 4},
                      "crop": [[12, 108], [13, 133], [16, 102]],
                      "channels": ["GMD", "GMV"], "mask": str (which mask multiplied the maps),
                      "dtype": "float32"}
    output           {"meaning": str, "activation": "sigmoid",
                      "positive_label": "male" | "AD", "negative_label": "female" | "CN"}
    thresholds       {"default": 0.5, "screening": 0.3 (AD only, optional)}
    training         {"data": str, "synthetic": bool, "preprocessing": [backend names]}
    metrics          [{"name": str, "value": float, "source": str}, ...]
    licence          str
    folds            [{"file": "fold0.safetensors", "sha256": hex}, ...]   (filled by save_package)
    provenance       optional dict (e.g. the source H5 files, their sha256, Keras version)

The input spec is checked against :mod:`bids_app.grid` on load: a package made for another grid,
crop or channel order is refused instead of silently giving wrong scores.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .. import grid
from .._io import sha256_file, write_bytes, write_json
from ..errors import ModelPackageError
from .architectures import build_network
from .device import resolve_device
from .graph import GraphNet, nodes_from_spec
from .irv2 import ARCHITECTURES

__all__ = [
    "SCHEMA_VERSION",
    "TASK_LABELS",
    "ModelPackage",
    "input_spec",
    "validate_card",
    "network_from_architecture",
    "save_package",
    "load_package",
    "find_packages",
    "card_digest",
    "package_identity",
    "unique_packages",
]

SCHEMA_VERSION = 1
#: (positive label = output 1, negative label = output 0) per task.
TASK_LABELS: dict[str, tuple[str, str]] = {"sex": ("male", "female"), "ad": ("AD", "CN")}
_FOLD_RE = re.compile(r"^fold\d+\.safetensors$")


def input_spec(mask: str = "brain") -> dict[str, Any]:
    """The ``input`` section that matches this app's grid (what packages must declare)."""
    return {
        "shape": list(grid.MODEL_INPUT_SHAPE),
        "grid": {"shape": list(grid.SPM_SHAPE), "affine": np.asarray(grid.SPM_AFFINE).tolist()},
        "crop": [[s.start, s.stop] for s in grid.CROP],
        "channels": list(grid.CHANNELS),
        "mask": mask,
        "dtype": "float32",
    }


@dataclass
class ModelPackage:
    """A loaded, verified model package.

    ``folds`` are the networks in eval mode on the requested device (float32). Scores come from
    :func:`bids_app.models.predict`; ``folds[k](x)`` gives logits.
    """

    path: Path
    card: dict[str, Any]
    folds: list[nn.Module]
    sha256: list[str]
    name: str
    task: str
    version: str
    thresholds: dict[str, float]
    trained_on_synthetic: bool
    validated_preprocessing: tuple[str, ...]
    positive_label: str
    negative_label: str
    architecture: str
    n_parameters: int
    prepared: dict[Any, list[nn.Module]] = field(default_factory=dict, repr=False)  # (device, precision) -> nets

    @property
    def n_folds(self) -> int:
        return len(self.folds)


def _fail(path: Path, problem: str) -> ModelPackageError:
    return ModelPackageError(f"{path}: {problem}")


def validate_card(card: Mapping[str, Any], where: Path | str = "model.json", *, require_folds: bool = True) -> None:
    """Check a card's structure and its input spec against the app's grid; raise ModelPackageError."""
    where = Path(where)
    if not isinstance(card, Mapping):
        raise _fail(where, "the card must be a JSON object")
    for key in ("name", "task", "version", "architecture", "input", "output", "thresholds", "training", "licence"):
        if key not in card:
            raise _fail(where, f"missing required key {key!r}")
    if card["task"] not in TASK_LABELS:
        raise _fail(where, f"task must be one of {sorted(TASK_LABELS)}, got {card['task']!r}")
    if not isinstance(card["name"], str) or not card["name"]:
        raise _fail(where, "name must be a non-empty string")
    arch = card["architecture"]
    if not isinstance(arch, Mapping) or "name" not in arch:
        raise _fail(where, "architecture must be an object with 'name' and 'params'")
    if arch["name"] not in (*ARCHITECTURES, "keras_graph"):
        raise _fail(where, f"unknown architecture {arch['name']!r}; known: {', '.join((*ARCHITECTURES, 'keras_graph'))}")
    spec = card["input"]
    want = input_spec()
    if not isinstance(spec, Mapping):
        raise _fail(where, "input must be an object")
    for key in ("shape", "channels", "crop"):
        if list(map(_listify, spec.get(key, []))) != list(map(_listify, want[key])):
            raise _fail(where, f"input {key} is {spec.get(key)!r}, but this app feeds {want[key]!r}; the package was made for another input")
    g = spec.get("grid", {})
    if list(g.get("shape", [])) != want["grid"]["shape"]:
        raise _fail(where, f"input grid shape {g.get('shape')!r} is not the SPM grid {want['grid']['shape']}")
    try:
        aff_ok = np.allclose(np.asarray(g.get("affine"), dtype=float), grid.SPM_AFFINE, atol=1e-4)
    except (TypeError, ValueError):
        aff_ok = False
    if not aff_ok:
        raise _fail(where, f"input grid affine {g.get('affine')!r} is not the SPM 1.5 mm affine")
    if spec.get("dtype") not in ("float32", "float16"):
        raise _fail(where, f"input dtype must be float32 or float16, got {spec.get('dtype')!r}")
    if not isinstance(spec.get("mask"), str):
        raise _fail(where, "input mask must say which mask multiplied the maps (string)")
    out = card["output"]
    pos, neg = TASK_LABELS[card["task"]]
    if not isinstance(out, Mapping) or out.get("positive_label") != pos or out.get("negative_label") != neg:
        raise _fail(where, f"output labels must be positive_label={pos!r}, negative_label={neg!r} for task {card['task']!r}")
    th = card["thresholds"]
    if not isinstance(th, Mapping) or "default" not in th:
        raise _fail(where, "thresholds must contain 'default'")
    for k, v in th.items():
        if not isinstance(v, (int, float)) or not 0.0 < float(v) < 1.0:
            raise _fail(where, f"threshold {k!r} must be a number in (0, 1), got {v!r}")
    tr = card["training"]
    if not isinstance(tr, Mapping) or not isinstance(tr.get("synthetic"), bool):
        raise _fail(where, "training.synthetic must be true or false")
    if not isinstance(tr.get("preprocessing", []), list) or not all(isinstance(p, str) for p in tr.get("preprocessing", [])):
        raise _fail(where, "training.preprocessing must be a list of backend names")
    if require_folds:
        folds = card.get("folds")
        if not isinstance(folds, list) or not folds:
            raise _fail(where, "folds must list at least one weights file")
        for f in folds:
            if not isinstance(f, Mapping) or not isinstance(f.get("file"), str) or not isinstance(f.get("sha256"), str):
                raise _fail(where, f"fold entry {f!r} needs 'file' and 'sha256'")
            if not _FOLD_RE.match(f["file"]):
                raise _fail(where, f"fold file name {f['file']!r} must look like fold0.safetensors")


def _listify(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v


def network_from_architecture(arch: Mapping[str, Any]) -> nn.Module:
    """Build the (untrained) network a card's ``architecture`` section describes."""
    name = arch["name"]
    params = dict(arch.get("params", {}))
    if name == "keras_graph":
        return GraphNet(nodes_from_spec(params["graph"]), params["input_shape"])
    if "blocks" in params:
        params["blocks"] = tuple(params["blocks"])
    return build_network(name, **params)


def _state_to_float(state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", dtype=dtype).contiguous() for k, v in state.items()}


def save_package(
    out_dir: Path,
    card: dict[str, Any],
    fold_state_dicts: Sequence[Mapping[str, torch.Tensor]],
    *,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a package: ``fold{k}.safetensors`` per fold and ``model.json`` with their sha256.

    Every state dict must fit the card's architecture exactly (same keys, same shapes), checked
    before anything is written. Files are written atomically; ``model.json`` last, so a reader never
    sees a card pointing at missing weights. Returns ``out_dir``.
    """
    from safetensors.torch import save as st_save

    out_dir = Path(out_dir)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ModelPackageError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    if not fold_state_dicts:
        raise ModelPackageError("at least one fold's state dict is required")
    card = copy.deepcopy(dict(card))
    card.setdefault("schema_version", SCHEMA_VERSION)
    card.pop("folds", None)
    validate_card(card, out_dir / "model.json", require_folds=False)
    reference = network_from_architecture(card["architecture"]).state_dict()
    for k, sd in enumerate(fold_state_dicts):
        missing = sorted(set(reference) - set(sd))
        extra = sorted(set(sd) - set(reference))
        if missing or extra:
            raise ModelPackageError(f"fold {k}: state dict does not fit {card['architecture']['name']}: missing {missing[:5]}, unexpected {extra[:5]}")
        for key, ref in reference.items():
            if tuple(sd[key].shape) != tuple(ref.shape):
                raise ModelPackageError(f"fold {k}: {key} has shape {tuple(sd[key].shape)}, the architecture needs {tuple(ref.shape)}")
            if not torch.isfinite(sd[key].float()).all():
                raise ModelPackageError(f"fold {k}: {key} holds NaN or infinite values")
    card["weights_dtype"] = str(dtype).replace("torch.", "")
    digest = card_digest(card)
    folds = []
    for k, sd in enumerate(fold_state_dicts):
        name = f"fold{k}.safetensors"
        meta = {"task": str(card["task"]), "name": str(card["name"]), "fold": str(k), "card_sha256": digest}
        blob = st_save(_state_to_float(sd, dtype), metadata=meta)
        path = write_bytes(out_dir / name, blob)
        folds.append({"file": name, "sha256": sha256_file(path)})
    card["folds"] = folds
    write_json(out_dir / "model.json", card)
    keep = {f["file"] for f in folds}
    for stale in out_dir.glob("fold*.safetensors"):
        if stale.name not in keep:
            stale.unlink()
    return out_dir


def card_digest(card: Mapping[str, Any]) -> str:
    """sha256 of the card without its ``folds`` list (canonical JSON): what pins the card.

    ``save_package`` stores it in every fold's safetensors metadata (``card_sha256``), and the card
    pins every fold file by its sha256, so an edited card (e.g. ``synthetic: false``) no longer
    matches its weights and is refused on load.
    """
    body = {k: v for k, v in card.items() if k != "folds"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _safetensors_metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (8-byte little-endian header length + JSON header)."""
    if len(blob) < 8:
        return {}
    n = int.from_bytes(blob[:8], "little")
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    return meta if isinstance(meta, dict) else {}


def load_package(path: Path, *, device: str = "cpu") -> ModelPackage:
    """Load and verify a package directory (or its ``model.json``).

    Checks, in order: the card parses and follows the schema; the input spec matches
    :mod:`bids_app.grid`; every weights file exists and its sha256 equals the card's; every tensor
    fits the architecture. Any failure raises :class:`bids_app.errors.ModelPackageError` naming the
    file and the problem. Nothing is unpickled.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    path = Path(path)
    card_path = path if path.name == "model.json" else path / "model.json"
    root = card_path.parent
    if not card_path.is_file():
        raise _fail(card_path, "no model.json here (a model package is a directory with model.json and fold*.safetensors)")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(card_path, f"not valid JSON ({exc})") from None
    validate_card(card, card_path)
    dev = resolve_device(device)
    pinned = card_digest(card)
    try:
        template = network_from_architecture(card["architecture"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(card_path, f"architecture cannot be built: {exc}") from None
    ref_state = template.state_dict()
    folds: list[nn.Module] = []
    hashes: list[str] = []
    for entry in card["folds"]:
        wpath = root / entry["file"]
        if not wpath.is_file():
            raise _fail(wpath, "weights file listed in model.json is missing")
        blob = wpath.read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest != entry["sha256"].lower():
            raise _fail(wpath, f"sha256 {digest} does not match model.json ({entry['sha256']}); the file was changed or damaged")
        try:
            state = st_load(blob)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise _fail(wpath, f"not a readable safetensors file ({exc})") from None
        recorded = _safetensors_metadata(blob).get("card_sha256")
        if recorded is None:
            raise _fail(wpath, "does not pin its model card (no card_sha256 in its metadata: written by an "
                               "older vbm-predict); re-save the package with bids_app.models.save_package")
        if recorded != pinned:
            raise _fail(card_path, f"the card was edited after the weights were written (its sha256 {pinned} "
                                   f"is not the {recorded} that {entry['file']} pins); the package is refused")
        missing = sorted(set(ref_state) - set(state))
        extra = sorted(set(state) - set(ref_state))
        if missing or extra:
            raise _fail(wpath, f"tensors do not fit architecture {card['architecture']['name']}: missing {missing[:5]}, unexpected {extra[:5]}")
        for key, ref in ref_state.items():
            if tuple(state[key].shape) != tuple(ref.shape):
                raise _fail(wpath, f"tensor {key} has shape {tuple(state[key].shape)}, the architecture needs {tuple(ref.shape)}")
        net = network_from_architecture(card["architecture"])
        net.load_state_dict({k: v.float() for k, v in state.items()})
        net.eval().to(dev)
        for p in net.parameters():
            p.requires_grad_(False)
        folds.append(net)
        hashes.append(digest)
    pos, neg = TASK_LABELS[card["task"]]
    thresholds = {k: float(v) for k, v in card["thresholds"].items()}
    return ModelPackage(
        path=root,
        card=card,
        folds=folds,
        sha256=hashes,
        name=card["name"],
        task=card["task"],
        version=str(card["version"]),
        thresholds=thresholds,
        trained_on_synthetic=bool(card["training"]["synthetic"]),
        validated_preprocessing=tuple(card["training"].get("preprocessing", [])),
        positive_label=pos,
        negative_label=neg,
        architecture=card["architecture"]["name"],
        n_parameters=int(sum(t.numel() for t in ref_state.values())),
    )


def find_packages(models_dir: Path) -> list[Path]:
    """Every directory at or below ``models_dir`` that holds a ``model.json``, sorted."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    return sorted({p.parent for p in models_dir.rglob("model.json") if p.is_file()})


def package_identity(package: ModelPackage) -> tuple[str, str, tuple[str, ...]]:
    """(name, version, fold sha256s): two packages with the same identity are the same model."""
    return (package.name, package.version, tuple(package.sha256))


def unique_packages(packages: Sequence[ModelPackage]) -> list[ModelPackage]:
    """Drop copies of a package (e.g. a backup in a subfolder) so that each model is applied once.

    Two *different* packages that share a name would give two rows with one ``model_name`` and are
    refused with :class:`ModelPackageError`.
    """
    seen: dict[tuple[str, str, tuple[str, ...]], ModelPackage] = {}
    by_name: dict[str, ModelPackage] = {}
    for p in packages:
        ident = package_identity(p)
        if ident in seen:
            import logging

            logging.getLogger("bids_app.models").warning(
                "model %s %s in %s is a copy of %s: applied once", p.name, p.version, p.path, seen[ident].path
            )
            continue
        if p.name in by_name:
            raise ModelPackageError(
                f"two different model packages are named {p.name!r}: {by_name[p.name].path} and {p.path}; "
                "keep one of them in --models (or give them different names)"
            )
        seen[ident] = by_name[p.name] = p
    return list(seen.values())


"""Model packages: one directory per model = ``model.json`` (the card) + one safetensors file per fold.

Why a directory of plain files: the card is readable by people and by the report, the weights load
without executing code (safetensors, never pickle), and every weights file is pinned by its sha256
in the card, so a tampered or truncated file is refused before it is used.

model.json, ``schema_version`` 2 (``docs/model_package.md`` has the full table and an example)::

    name, version, licence, training, metrics, folds, weights_dtype, provenance   as in schema 1
    family           "brainimagenet" | "cnn" | "liu_mox" | "sfcn" | "regional"
    task             what the package serves, [a-z0-9_]+ ("sex", "ad", "cn_mci_ad", "pmci", "brain_age", ...)
    architecture     {"name": ..., "params": {...}}
    input            {"kind": "gm_crop2" | "gm_spm1" | "t1w_mni1mm", "shape": [C, ...], "channels": [...],
                      "mask": str, "dtype": "float32", "grid": {"shape", "affine"}, "crop"?: [[a, b], ...]}
    heads            [{"name", "kind": "binary" | "multiclass" | "regression", "target",
                       "outputs": [start, stop), "labels"?, "thresholds"?, "unit"?, "scale"?, "offset"?}, ...]

Schema 1 (the BrainImageNet packages: ``task`` "sex" | "ad", ``output`` {positive_label,
negative_label}, top-level ``thresholds``, the 2 x 96 x 120 x 86 crop) still loads unchanged: as
family ``brainimagenet``, input kind ``gm_crop2`` and one binary head named after its task
(:func:`bids_app.models.heads.heads_from_v1`). :func:`save_package` always writes schema 2
(:func:`upgrade_card` converts a schema-1 card).

The input spec is checked against :mod:`bids_app.grid` for its kind on load: a package made for
another grid, crop or channel order is refused instead of silently giving wrong scores.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .. import grid
from .._io import sha256_file, write_bytes, write_json
from ..errors import ModelPackageError
from ..types import INPUT_KINDS, MODEL_FAMILIES, TASK_NAME_PATTERN
from .device import resolve_device
from .graph import GraphNet, nodes_from_spec
from .heads import HeadSpec, check_outputs_in_range, heads_from_v1, parse_heads
from .irv2 import ARCHITECTURES, build_network

__all__ = [
    "SCHEMA_VERSION",
    "SCHEMA_VERSIONS",
    "TASK_LABELS",
    "NEW_ARCHITECTURES",
    "EXTRA_ARCHITECTURES",
    "INPUT_KIND_SPECS",
    "ModelPackage",
    "input_spec",
    "validate_card",
    "upgrade_card",
    "card_heads",
    "known_architectures",
    "network_from_architecture",
    "save_package",
    "load_package",
    "find_packages",
    "card_digest",
    "package_identity",
    "unique_packages",
]

#: The schema :func:`save_package` writes; :data:`SCHEMA_VERSIONS` are the ones that load.
SCHEMA_VERSION = 2
SCHEMA_VERSIONS: tuple[int, ...] = (1, 2)
#: (positive label = output 1, negative label = output 0) per task of a schema-1 card.
TASK_LABELS: dict[str, tuple[str, str]] = {"sex": ("male", "female"), "ad": ("AD", "CN")}
#: Architectures of the other model families, built by ``bids_app.models.architectures.build_network``;
#: forward returns (N, n_outputs) raw outputs.
NEW_ARCHITECTURES: tuple[str, ...] = ("cnn", "liu_mox", "sfcn", "regional_linear")
#: Builders for further architecture names, looked up first (name -> callable(**params) -> nn.Module
#: whose forward returns (N, n_outputs)). Empty in the app: the seam where a test registers a small
#: network of its own.
EXTRA_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}
_FOLD_RE = re.compile(r"^fold\d+\.safetensors$")
_TASK_RE = re.compile(TASK_NAME_PATTERN)

#: What each input kind must declare: shape (C x ...), grid (shape, affine), crop (None = uncropped),
#: the channel lists allowed, the masks allowed (None = any description).
INPUT_KIND_SPECS: dict[str, dict[str, Any]] = {
    "gm_crop2": {"shape": grid.MODEL_INPUT_SHAPE, "grid": (grid.SPM_SHAPE, grid.SPM_AFFINE, "the SPM 1.5 mm"),
                 "crop": [[c.start, c.stop] for c in grid.CROP], "channels": [list(grid.CHANNELS)], "masks": None},
    "gm_spm1": {"shape": (1, *grid.SPM_SHAPE), "grid": (grid.SPM_SHAPE, grid.SPM_AFFINE, "the SPM 1.5 mm"),
                "crop": None, "channels": [["GMV"], ["GMD"]], "masks": ("none", "brain")},
    "t1w_mni1mm": {"shape": (1, 160, 192, 160), "grid": (grid.MNI1MM_SHAPE, grid.MNI1MM_AFFINE, "the MNI 1 mm"),
                   "crop": [[11, 171], [13, 205], [11, 171]], "channels": [["T1w"]], "masks": None},
}


def input_spec(mask: str = "brain", kind: str = "gm_crop2", channels: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``input`` section that matches this app's grid for ``kind`` (what packages must declare).

    ``channels`` chooses among the kind's allowed channel lists (``gm_spm1``: ``["GMV"]``, the
    default, or ``["GMD"]``). A schema-1 card may carry it too (its ``kind`` can only be ``gm_crop2``).
    """
    if kind not in INPUT_KIND_SPECS:
        raise ModelPackageError(f"input kind must be one of {', '.join(INPUT_KINDS)}; got {kind!r}")
    want = INPUT_KIND_SPECS[kind]
    chans = list(channels) if channels is not None else list(want["channels"][0])
    spec: dict[str, Any] = {"kind": kind}
    spec.update({
        "shape": list(want["shape"]),
        "grid": {"shape": list(want["grid"][0]), "affine": np.asarray(want["grid"][1]).tolist()},
    })
    if want["crop"] is not None:
        spec["crop"] = [list(c) for c in want["crop"]]
    spec.update({"channels": chans, "mask": mask, "dtype": "float32"})
    return spec


@dataclass
class ModelPackage:
    """A loaded, verified model package.

    ``folds`` are the networks in eval mode on the requested device (float32); ``folds[k](x)`` gives
    raw outputs ((N,) logits for the IRv2 networks, (N, K) for the others). Scores come from
    :func:`bids_app.models.predict`, read head by head (``heads``).

    ``positive_label``, ``negative_label`` and ``thresholds`` are those of the package's binary head
    when it has exactly one head and that head is binary (every BrainImageNet package); otherwise
    None, None and ``{}``.
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
    positive_label: str | None
    negative_label: str | None
    architecture: str
    n_parameters: int
    family: str = "brainimagenet"
    heads: tuple[HeadSpec, ...] = ()
    input_kind: str = "gm_crop2"
    input_shape: tuple[int, ...] = grid.MODEL_INPUT_SHAPE
    input: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    prepared: dict[Any, list[nn.Module]] = field(default_factory=dict, repr=False)  # (device, precision) -> nets

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    @property
    def binary_head(self) -> HeadSpec | None:
        """The package's head when it has a single one and it is binary, else None."""
        return self.heads[0] if len(self.heads) == 1 and self.heads[0].kind == "binary" else None


def _fail(path: Path, problem: str) -> ModelPackageError:
    return ModelPackageError(f"{path}: {problem}")


def known_architectures() -> tuple[str, ...]:
    """Every architecture name a card may use."""
    return (*ARCHITECTURES, "keras_graph", *NEW_ARCHITECTURES, *sorted(EXTRA_ARCHITECTURES))


def _schema_version(card: Mapping[str, Any], where: Path) -> int:
    v = card.get("schema_version", 1)
    if isinstance(v, bool) or v not in SCHEMA_VERSIONS:
        raise _fail(where, f"schema_version must be one of {', '.join(map(str, SCHEMA_VERSIONS))}, got {v!r}")
    return int(v)


def _check_input(spec: Any, where: Path, kind: str) -> None:
    if not isinstance(spec, Mapping):
        raise _fail(where, "input must be an object")
    if kind not in INPUT_KIND_SPECS:
        raise _fail(where, f"input kind {kind!r} is not one this app can make; known: {', '.join(INPUT_KINDS)}")
    want = INPUT_KIND_SPECS[kind]
    for key in ("shape", "crop"):
        ref = None if want[key] is None else list(map(_listify, want[key]))
        got = spec.get(key)
        got = None if got is None else list(map(_listify, got)) if isinstance(got, (list, tuple)) else got
        if got != ref:
            raise _fail(where, f"input {key} is {spec.get(key)!r}, but this app feeds {kind} as {ref!r}; "
                               "the package was made for another input")
    chans = spec.get("channels")
    if not isinstance(chans, list) or chans not in want["channels"]:
        allowed = " or ".join(map(repr, want["channels"]))
        raise _fail(where, f"input channels is {chans!r}, but this app feeds {kind} as {allowed}; "
                           "the package was made for another input")
    g = spec.get("grid", {})
    shape, affine, grid_name = want["grid"]
    if not isinstance(g, Mapping) or list(g.get("shape", [])) != list(shape):
        raise _fail(where, f"input grid shape {g.get('shape') if isinstance(g, Mapping) else g!r} is not "
                           f"{grid_name} grid {list(shape)}")
    try:
        aff_ok = np.allclose(np.asarray(g.get("affine"), dtype=float), affine, atol=1e-4)
    except (TypeError, ValueError):
        aff_ok = False
    if not aff_ok:
        raise _fail(where, f"input grid affine {g.get('affine')!r} is not {grid_name} affine")
    if spec.get("dtype") not in ("float32", "float16"):
        raise _fail(where, f"input dtype must be float32 or float16, got {spec.get('dtype')!r}")
    mask = spec.get("mask")
    if not isinstance(mask, str):
        raise _fail(where, "input mask must say which mask multiplied the maps (string)")
    if want["masks"] is not None and mask not in want["masks"]:
        raise _fail(where, f"input mask for {kind} must be one of {', '.join(want['masks'])}, got {mask!r}")


def _architecture_outputs(arch: Mapping[str, Any]) -> int | None:
    """How many raw outputs the card's network gives, when the card says (IRv2 / keras_graph: 1)."""
    if arch.get("name") in (*ARCHITECTURES, "keras_graph"):
        return 1
    n = arch.get("params", {}).get("n_outputs") if isinstance(arch.get("params"), Mapping) else None
    return int(n) if isinstance(n, int) and not isinstance(n, bool) else None


def validate_card(card: Mapping[str, Any], where: Path | str = "model.json", *, require_folds: bool = True) -> None:
    """Check a card's structure and its input spec against the app's grid; raise ModelPackageError."""
    where = Path(where)
    if not isinstance(card, Mapping):
        raise _fail(where, "the card must be a JSON object")
    version = _schema_version(card, where)
    keys = ("name", "task", "version", "architecture", "input", "output", "thresholds", "training", "licence")
    if version == 2:
        keys = ("name", "family", "task", "version", "architecture", "input", "heads", "training", "licence")
    for key in keys:
        if key not in card:
            raise _fail(where, f"missing required key {key!r}")
    if version == 1 and card["task"] not in TASK_LABELS:
        raise _fail(where, f"task must be one of {sorted(TASK_LABELS)}, got {card['task']!r}")
    if version == 2:
        if not isinstance(card["task"], str) or not _TASK_RE.match(card["task"]):
            raise _fail(where, f"task must match {TASK_NAME_PATTERN} (e.g. 'brain_age'), got {card['task']!r}")
        if card["family"] not in MODEL_FAMILIES:
            raise _fail(where, f"family must be one of {', '.join(MODEL_FAMILIES)}, got {card['family']!r}")
    if not isinstance(card["name"], str) or not card["name"]:
        raise _fail(where, "name must be a non-empty string")
    arch = card["architecture"]
    if not isinstance(arch, Mapping) or "name" not in arch:
        raise _fail(where, "architecture must be an object with 'name' and 'params'")
    if arch["name"] not in known_architectures():
        raise _fail(where, f"unknown architecture {arch['name']!r}; known: {', '.join(known_architectures())}")
    spec = card["input"]
    kind = spec.get("kind", "gm_crop2") if isinstance(spec, Mapping) else "gm_crop2"
    if version == 1 and kind != "gm_crop2":
        raise _fail(where, f"a schema_version 1 card reads the gm_crop2 input only, not {kind!r}")
    _check_input(spec, where, kind)
    if version == 1:
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
    else:
        parse_heads(card["heads"], where, n_outputs=_architecture_outputs(arch))
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


def card_heads(card: Mapping[str, Any], where: Path | str = "model.json") -> tuple[HeadSpec, ...]:
    """The heads of a validated card (schema 1: its one binary head)."""
    if card.get("schema_version", 1) == 1:
        return heads_from_v1(card)
    return parse_heads(card["heads"], where)


def upgrade_card(card: Mapping[str, Any], where: Path | str = "model.json") -> dict[str, Any]:
    """The schema-2 form of a (valid) card; a schema-2 card comes back as a copy.

    Schema 1 -> 2: ``family`` "brainimagenet", ``input.kind`` "gm_crop2", and ``output`` with the
    top-level ``thresholds`` become one binary head named after the task (target ``sex`` or
    ``diagnosis``, labels [negative, positive], outputs [0, 1]).
    """
    validate_card(card, where, require_folds=False)
    out = copy.deepcopy(dict(card))
    if out.get("schema_version", 1) == 2:
        return out
    (head,) = heads_from_v1(out)
    new: dict[str, Any] = {"schema_version": 2}
    for key, value in out.items():
        if key in ("schema_version", "output", "thresholds"):
            continue
        if key == "task":
            new["family"] = "brainimagenet"
        new[key] = value
        if key == "input":
            new["input"] = {"kind": "gm_crop2", **value}
        if key == "input":
            new["heads"] = [head.as_card()]
    return new


def _listify(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v


def network_from_architecture(arch: Mapping[str, Any]) -> nn.Module:
    """Build the (untrained) network a card's ``architecture`` section describes.

    IRv2 names and ``keras_graph`` are built here; the other families' names
    (:data:`NEW_ARCHITECTURES`) by ``bids_app.models.architectures.build_network``, and names in
    :data:`EXTRA_ARCHITECTURES` by their registered builder. Raises ``ValueError`` / ``TypeError``
    for parameters the builder refuses and :class:`ModelPackageError` for a name no builder knows.
    """
    name = arch["name"]
    params = dict(arch.get("params", {}))
    if name in EXTRA_ARCHITECTURES:
        return EXTRA_ARCHITECTURES[name](**params)
    if name == "keras_graph":
        return GraphNet(nodes_from_spec(params["graph"]), params["input_shape"])
    if name in ARCHITECTURES:
        if "blocks" in params:
            params["blocks"] = tuple(params["blocks"])
        return build_network(name, **params)
    if name in NEW_ARCHITECTURES:
        from .architectures import build_network as build_family_network  # lazy: each family's module on demand

        return build_family_network(name, **params)
    raise ModelPackageError(f"unknown architecture {name!r}; known: {', '.join(known_architectures())}")


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

    The card is written as schema 2 (a schema-1 card is converted by :func:`upgrade_card`). Every
    state dict must fit the card's architecture exactly (same keys, same shapes), checked before
    anything is written. Files are written atomically; ``model.json`` last, so a reader never
    sees a card pointing at missing weights. Returns ``out_dir``.
    """
    from safetensors.torch import save as st_save

    out_dir = Path(out_dir)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ModelPackageError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    if not fold_state_dicts:
        raise ModelPackageError("at least one fold's state dict is required")
    card = {k: v for k, v in dict(card).items() if k != "folds"}
    card = upgrade_card(card, out_dir / "model.json")  # schema 2 always (a card without schema_version is 1)
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

    Checks, in order: the card parses and follows its schema (1 or 2); the input spec matches
    :mod:`bids_app.grid` for its kind; the heads fit the network's outputs; every weights file exists and its sha256 equals the card's; every tensor
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
    heads = card_heads(card, card_path)
    try:
        template = network_from_architecture(card["architecture"])
    except ModelPackageError as exc:
        raise _fail(card_path, str(exc)) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(card_path, f"architecture cannot be built: {exc}") from None
    n_out = getattr(template, "n_outputs", None)
    if isinstance(n_out, int):
        check_outputs_in_range(heads, n_out, card_path)
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
    binary = heads[0] if len(heads) == 1 and heads[0].kind == "binary" else None
    spec = card["input"]
    return ModelPackage(
        path=root,
        card=card,
        folds=folds,
        sha256=hashes,
        name=card["name"],
        task=card["task"],
        version=str(card["version"]),
        thresholds=dict(binary.thresholds) if binary is not None else {},
        trained_on_synthetic=bool(card["training"]["synthetic"]),
        validated_preprocessing=tuple(card["training"].get("preprocessing", [])),
        positive_label=binary.positive_label if binary is not None else None,
        negative_label=binary.negative_label if binary is not None else None,
        architecture=card["architecture"]["name"],
        n_parameters=int(sum(t.numel() for t in ref_state.values())),
        family=str(card.get("family", "brainimagenet")),
        heads=heads,
        input_kind=str(spec.get("kind", "gm_crop2")),
        input_shape=tuple(int(v) for v in spec["shape"]),
        input=dict(spec),
        schema_version=int(card.get("schema_version", 1)),
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


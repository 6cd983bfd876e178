"""Import Keras full-model HDF5 files (Keras 2.2.4, tf-keras 2.x, Keras 3 legacy H5) with h5py only.

Why no TensorFlow: the published BrainImageNet files were written by Keras 2.2.4 on TensorFlow 1.13
(Python 3.5); loading them with Keras would execute the residual Lambda's stored Python 3.5
bytecode, which neither runs on today's Python nor is safe to run from a file. So we read the
stored ``model_config`` JSON and the weight arrays, and rebuild the graph from our own operators
(:mod:`bids_app.models.graph`). The file decides the structure: the "optimised" and the "intact"
AD variants both import.

Config dialects handled (they differ in more than version numbers):

* Keras 2.2.4: model ``class_name`` "Model"; ``inbound_nodes`` = ``[[[layer, node, tensor, {}], ...]]``;
  auto layer names numbered from 1 (``conv3d_1``); BN ``axis`` an int; no ``dtype`` in layer
  configs; Lambda ``function`` = ``[base64 marshal, defaults, closure]`` with
  ``function_type: "lambda"``; attributes and names stored as bytes; weight names ``layer/kernel:0``;
  ``training_config`` / ``optimizer_weights`` present when the model was compiled (ignored).
* tf-keras 2.x: "Functional"; same ``inbound_nodes`` layout; names numbered from 0 without suffix
  (``conv3d``, ``conv3d_1``); BN ``axis`` a list; initializers carry ``module``/``registered_name``.
* Keras 3 (legacy H5 writer): ``inbound_nodes`` = ``[{"args": [...], "kwargs": {}}]`` with
  ``__keras_tensor__`` dicts whose ``keras_history`` names the source; ``input_layers`` may be a flat
  triple; ``dtype`` is a DTypePolicy dict; weight names without ``:0``.

Supported layers: InputLayer, Conv3D, BatchNormalization, Activation, MaxPooling3D,
AveragePooling3D, Concatenate, Add, the residual Lambda, GlobalAveragePooling3D, Dropout, Dense,
Flatten. The Lambda is accepted only in the reference system's residual form: two inputs of equal
shape, ``arguments == {"scale": number}`` and a name of the form ``block35_<n>``, ``block17_<n>`` or
``block8_<n>`` (the reference code's ``inputs[0] + inputs[1] * scale``); its code is never decoded
or run. Anything else -- another layer class, channels-first data, grouped convolutions, a layer
called twice, a missing, extra or wrongly shaped weight -- is refused with an error naming the file,
the layer and the problem.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._io import sha256_file
from ..errors import ModelPackageError
from .graph import ACTIVATIONS, GraphNet, Node, infer_shapes
from .irv2 import ARCHITECTURES, irv2_nodes

__all__ = [
    "KerasImportError",
    "KerasModel",
    "read_keras_h5",
    "match_graphs",
    "identify_architecture",
    "PUBLISHED_FILES",
    "published_card",
    "import_keras",
]

_RESIDUAL_NAME = re.compile(r"^block(35|17|8)_\d+$")

#: The published BrainImageNet files (inside the ``cgyan/brainimagenet`` image) by task.
PUBLISHED_FILES: dict[str, tuple[str, ...]] = {
    "sex": ("20200427_Phase4_FromScratch_Gender_IncepResN_lr01_AllIn.h5",),
    "ad": tuple(f"20200504_Phase4_Trans_AD_IncepResN_lr0003_Lfso_Fold{k}.h5" for k in range(5)),
}


class KerasImportError(ModelPackageError):
    """An H5 file cannot be imported (unsupported layer or option, missing or extra weights...)."""


def _s(v: Any) -> Any:
    """Decode bytes (Keras 2.2.4 stores attributes and names as bytes) recursively."""
    if isinstance(v, (bytes, np.bytes_)):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray):
        return [_s(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_s(x) for x in v]
    return v


@dataclass
class KerasModel:
    """What one Keras H5 file holds, in our terms (no TensorFlow objects).

    ``nodes`` use the file's layer names; ``state_dict`` is keyed for :class:`GraphNet`
    (``layers.<keras name>.weight`` ...) with PyTorch axis order; ``input_shape`` is C x D x H x W.
    """

    path: Path
    nodes: list[Node]
    input_shape: tuple[int, ...]
    state_dict: dict[str, torch.Tensor]
    keras_version: str
    backend: str
    sha256: str
    model_name: str = ""
    n_weights: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)

    def network(self) -> GraphNet:
        """A GraphNet (eval mode) with this file's structure and weights."""
        net = GraphNet(self.nodes, self.input_shape)
        net.load_state_dict(self.state_dict)
        return net.eval()

    @property
    def n_parameters(self) -> int:
        return int(sum(t.numel() for t in self.state_dict.values()))


# --------------------------------------------------------------------------- config parsing
def _inbound(path: Path, layer: Mapping[str, Any]) -> list[str]:
    """Source layer names of a layer's single call, for every config dialect."""
    nodes = layer.get("inbound_nodes", [])
    name = layer.get("name") or layer.get("config", {}).get("name")
    if not nodes:
        return []
    if len(nodes) > 1:
        raise KerasImportError(f"{path}: layer {name!r} is called {len(nodes)} times (shared layers are not supported)")
    node = nodes[0]
    refs: list[tuple[str, int, int]] = []
    if isinstance(node, Mapping):  # Keras 3
        def walk(obj: Any) -> None:
            if isinstance(obj, Mapping):
                if obj.get("class_name") == "__keras_tensor__":
                    hist = obj["config"]["keras_history"]
                    refs.append((str(hist[0]), int(hist[1]), int(hist[2])))
                else:
                    for v in obj.values():
                        walk(v)
            elif isinstance(obj, (list, tuple)):
                for v in obj:
                    walk(v)
        walk(node.get("args", []))
        for k, v in (node.get("kwargs") or {}).items():
            if k == "training" or (k == "mask" and v is None):
                continue  # inference ignores the training flag; no masks are used
            raise KerasImportError(f"{path}: layer {name!r} is called with unsupported argument {k}={v!r}")
    else:  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
        for ref in node:
            if not isinstance(ref, (list, tuple)) or len(ref) < 3:
                raise KerasImportError(f"{path}: layer {name!r} has a malformed inbound node {ref!r}")
            refs.append((str(ref[0]), int(ref[1]), int(ref[2])))
            if len(ref) > 3 and ref[3]:
                raise KerasImportError(f"{path}: layer {name!r} is called with unsupported arguments {ref[3]!r}")
    for src, node_index, tensor_index in refs:
        if node_index != 0 or tensor_index != 0:
            raise KerasImportError(f"{path}: layer {name!r} reads output {node_index}/{tensor_index} of {src!r}; only single-call layers are supported")
    return [r[0] for r in refs]


def _triple(path: Path, name: str, v: Any, what: str) -> list[int]:
    if isinstance(v, int):
        return [v, v, v]
    if isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(a, int) for a in v):
        return list(v)
    raise KerasImportError(f"{path}: layer {name!r}: {what} {v!r} is not 3 integers")


def _channels_last(path: Path, name: str, cfg: Mapping[str, Any]) -> None:
    fmt = cfg.get("data_format", "channels_last")
    if fmt not in (None, "channels_last"):
        raise KerasImportError(f"{path}: layer {name!r}: data_format {fmt!r} is not supported (only channels_last)")


def _activation(path: Path, name: str, act: Any) -> str:
    if isinstance(act, Mapping):  # serialized activation object
        act = act.get("config", {}).get("name", act.get("class_name"))
    act = "linear" if act in (None, "linear") else act
    if act not in ACTIVATIONS:
        raise KerasImportError(f"{path}: layer {name!r}: activation {act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
    return str(act)


def _axis_is_channels(axis: Any) -> bool:
    if isinstance(axis, (list, tuple)):
        return len(axis) == 1 and axis[0] in (4, -1)
    return axis in (4, -1)


def _layer_to_node(path: Path, layer: Mapping[str, Any], inputs: list[str]) -> Node:
    cls = layer.get("class_name")
    cfg = layer.get("config", {}) or {}
    name = str(layer.get("name") or cfg.get("name"))
    if cls == "InputLayer":
        shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
        if not shape or len(shape) != 5 or any(s is None for s in shape[1:]):
            raise KerasImportError(f"{path}: input {name!r} has shape {shape!r}; a fixed N x D x H x W x C input is required")
        if cfg.get("sparse") or cfg.get("ragged"):
            raise KerasImportError(f"{path}: input {name!r} is sparse/ragged, which is not supported")
        d, h, w, c = (int(s) for s in shape[1:])
        return Node(name, "input", (), {"shape": [c, d, h, w]})
    if cls == "Conv3D":
        _channels_last(path, name, cfg)
        if int(cfg.get("groups", 1) or 1) != 1:
            raise KerasImportError(f"{path}: layer {name!r}: grouped convolution (groups={cfg.get('groups')}) is not supported")
        padding = cfg.get("padding")
        if padding not in ("valid", "same"):
            raise KerasImportError(f"{path}: layer {name!r}: padding {padding!r} is not supported")
        strides = _triple(path, name, cfg.get("strides", 1), "strides")
        dil = _triple(path, name, cfg.get("dilation_rate", 1), "dilation_rate")
        if any(s != 1 for s in strides) and any(d != 1 for d in dil):
            raise KerasImportError(f"{path}: layer {name!r}: strides and dilation together are not supported")
        return Node(name, "conv3d", tuple(inputs), {
            "filters": int(cfg["filters"]), "kernel_size": _triple(path, name, cfg["kernel_size"], "kernel_size"),
            "strides": strides, "padding": padding, "dilation_rate": dil,
            "use_bias": bool(cfg.get("use_bias", True)), "activation": _activation(path, name, cfg.get("activation")),
        })
    if cls == "BatchNormalization":
        if not _axis_is_channels(cfg.get("axis", -1)):
            raise KerasImportError(f"{path}: layer {name!r}: BatchNormalization over axis {cfg.get('axis')!r}; only the channel axis is supported")
        if cfg.get("renorm") or cfg.get("synchronized") not in (None, False):
            raise KerasImportError(f"{path}: layer {name!r}: batch renormalization / synchronized BN is not supported")
        return Node(name, "batchnorm", tuple(inputs), {
            "epsilon": float(cfg.get("epsilon", 1e-3)), "momentum": float(cfg.get("momentum", 0.99)),
            "center": bool(cfg.get("center", True)), "scale": bool(cfg.get("scale", True)),
        })
    if cls == "Activation":
        return Node(name, "activation", tuple(inputs), {"activation": _activation(path, name, cfg.get("activation"))})
    if cls in ("MaxPooling3D", "AveragePooling3D"):
        _channels_last(path, name, cfg)
        pool = _triple(path, name, cfg.get("pool_size", 2), "pool_size")
        strides = cfg.get("strides") or pool
        padding = cfg.get("padding", "valid")
        if padding not in ("valid", "same"):
            raise KerasImportError(f"{path}: layer {name!r}: padding {padding!r} is not supported")
        op = "maxpool3d" if cls == "MaxPooling3D" else "avgpool3d"
        return Node(name, op, tuple(inputs), {"pool_size": pool, "strides": _triple(path, name, strides, "strides"), "padding": padding})
    if cls == "Concatenate":
        if not _axis_is_channels(cfg.get("axis", -1)):
            raise KerasImportError(f"{path}: layer {name!r}: concatenation along axis {cfg.get('axis')!r}; only the channel axis is supported")
        return Node(name, "concat", tuple(inputs), {"axis": -1})
    if cls == "Add":
        return Node(name, "add", tuple(inputs), {})
    if cls == "Lambda":
        args = cfg.get("arguments") or {}
        scale = args.get("scale") if isinstance(args, Mapping) else None
        ok = (
            isinstance(args, Mapping)
            and set(args) == {"scale"}
            and isinstance(scale, (int, float))
            and not isinstance(scale, bool)
            and math.isfinite(float(scale))
            and len(inputs) == 2
            and _RESIDUAL_NAME.match(name)
        )
        if not ok:
            raise KerasImportError(
                f"{path}: Lambda layer {name!r} is not the reference residual Lambda (two inputs, "
                f"arguments {{'scale': number}}, name block35_/block17_/block8_<n>); got arguments {args!r} and "
                f"{len(inputs)} input(s). Lambda code in a model file is never executed, so other Lambdas cannot be imported."
            )
        return Node(name, "residual", tuple(inputs), {"scale": float(scale)})  # type: ignore[arg-type]  # checked
    if cls == "GlobalAveragePooling3D":
        _channels_last(path, name, cfg)
        if cfg.get("keepdims"):
            raise KerasImportError(f"{path}: layer {name!r}: keepdims=True is not supported")
        return Node(name, "gap3d", tuple(inputs), {})
    if cls == "Dropout":
        return Node(name, "dropout", tuple(inputs), {"rate": float(cfg.get("rate", 0.0))})
    if cls == "Flatten":
        _channels_last(path, name, cfg)
        return Node(name, "flatten", tuple(inputs), {})
    if cls == "Dense":
        return Node(name, "dense", tuple(inputs), {
            "units": int(cfg["units"]), "use_bias": bool(cfg.get("use_bias", True)),
            "activation": _activation(path, name, cfg.get("activation")),
        })
    if cls in ("Model", "Functional", "Sequential"):
        raise KerasImportError(f"{path}: layer {name!r} is a nested model ({cls}); flatten it before saving")
    raise KerasImportError(
        f"{path}: layer {name!r} of class {cls!r} is not supported (supported: InputLayer, Conv3D, BatchNormalization, "
        "Activation, MaxPooling3D, AveragePooling3D, Concatenate, Add, residual Lambda, GlobalAveragePooling3D, "
        "Dropout, Flatten, Dense)"
    )


def _refs(v: Any) -> list[str]:
    """Layer names from input_layers/output_layers (nested triples or one flat triple)."""
    if isinstance(v, (list, tuple)) and len(v) == 3 and isinstance(v[0], str) and isinstance(v[1], int):
        return [v[0]]
    out: list[str] = []
    for item in v or []:
        out.extend(_refs(item))
    return out


def _parse_config(path: Path, config: Mapping[str, Any]) -> list[Node]:
    cls = config.get("class_name")
    body = config.get("config", {})
    if cls == "Sequential":
        layers = body["layers"] if isinstance(body, Mapping) else body
        nodes: list[Node] = []
        prev: list[str] = []
        for layer in layers:
            lcfg = layer.get("config", {})
            if not nodes and layer.get("class_name") != "InputLayer":
                shape = lcfg.get("batch_input_shape") or lcfg.get("batch_shape")
                nodes.append(_layer_to_node(path, {"class_name": "InputLayer", "config": {"batch_input_shape": shape}, "name": "input"}, []))
                prev = ["input"]
            named = dict(layer)
            named.setdefault("name", lcfg.get("name"))
            node = _layer_to_node(path, named, prev)
            nodes.append(node)
            prev = [node.name]
        return nodes
    if cls not in ("Model", "Functional"):
        raise KerasImportError(f"{path}: model class {cls!r} is not supported (expected Model, Functional or Sequential)")
    inputs = _refs(body.get("input_layers"))
    outputs = _refs(body.get("output_layers"))
    if len(inputs) != 1 or len(outputs) != 1:
        raise KerasImportError(f"{path}: the model must have one input and one output; it has inputs {inputs} and outputs {outputs}")
    by_name: dict[str, Node] = {}
    for layer in body.get("layers", []):
        name = layer.get("name") or layer.get("config", {}).get("name")
        if name in by_name:
            raise KerasImportError(f"{path}: two layers are named {name!r}")
        by_name[name] = _layer_to_node(path, layer, _inbound(path, layer))
    for node in by_name.values():
        for src in node.inputs:
            if src not in by_name:
                raise KerasImportError(f"{path}: layer {node.name!r} reads unknown layer {src!r}")
    if inputs[0] not in by_name or outputs[0] not in by_name:
        raise KerasImportError(f"{path}: input {inputs[0]!r} or output {outputs[0]!r} is not among the layers")
    # Topological order of the output's ancestors (inputs visited in order): layers that do not
    # feed the output are left out, exactly as Keras would never run them.
    order: list[str] = []
    state: dict[str, int] = {}
    stack: list[tuple[str, bool]] = [(outputs[0], False)]
    while stack:
        cur, done = stack.pop()
        if done:
            state[cur] = 2
            order.append(cur)
            continue
        if state.get(cur) == 2:
            continue
        if state.get(cur) == 1:
            raise KerasImportError(f"{path}: the layer graph has a cycle through {cur!r}")
        state[cur] = 1
        stack.append((cur, True))
        for src in reversed(by_name[cur].inputs):
            if state.get(src) != 2:
                stack.append((src, False))
    unused = [n for n in by_name if n not in state]
    if order[0] != inputs[0]:
        raise KerasImportError(f"{path}: the output does not depend on the input {inputs[0]!r}")
    nodes = [by_name[n] for n in order]
    with_weights = [n for n in unused if by_name[n].op in ("conv3d", "batchnorm", "dense")]
    if with_weights:
        raise KerasImportError(f"{path}: layers {with_weights[:5]} hold weights but do not feed the output")
    return nodes


# --------------------------------------------------------------------------- weights
_BN_KEYS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def _weight_key(wname: str) -> str:
    return wname.split("/")[-1].split(":")[0]


def _read_weights(path: Path, f: Any, nodes: Sequence[Node], shapes: Mapping[str, tuple[int, ...]]) -> tuple[dict[str, torch.Tensor], int]:
    import h5py

    if "model_weights" not in f:
        raise KerasImportError(f"{path}: no 'model_weights' group; this is not a Keras full-model H5 file")
    mw = f["model_weights"]
    file_layers = [str(n) for n in _s(mw.attrs.get("layer_names", list(mw.keys())))]
    node_by_name = {n.name: n for n in nodes}
    state: dict[str, torch.Tensor] = {}
    n_arrays = 0
    for lname in file_layers:
        if lname not in mw:
            raise KerasImportError(f"{path}: layer {lname!r} is listed in layer_names but has no weights group")
        g = mw[lname]
        wnames = [str(w) for w in _s(g.attrs.get("weight_names", []))]
        datasets: list[str] = []
        g.visititems(lambda n, o: datasets.append(n) if isinstance(o, h5py.Dataset) else None)  # noqa: B023 (called here)
        unlisted = sorted(set(datasets) - set(wnames))
        if unlisted:
            raise KerasImportError(f"{path}: layer {lname!r} stores arrays {unlisted} that its weight_names do not list")
        if not wnames:
            continue
        node = node_by_name.get(lname)
        if node is None:
            raise KerasImportError(f"{path}: weights of layer {lname!r} ({wnames}) belong to no layer of the model graph")
        arrays = {}
        for w in wnames:
            if w not in g:
                raise KerasImportError(f"{path}: layer {lname!r}: weight {w!r} listed but missing")
            arrays[_weight_key(w)] = np.asarray(g[w][()], dtype=np.float32)
        n_arrays += len(arrays)
        state.update(_convert_layer(path, node, arrays, shapes))
    # every weighted node must have received its weights
    for node in nodes:
        for key in _expected_keys(node):
            if key not in state:
                raise KerasImportError(f"{path}: layer {node.name!r} has no stored weight for {key.rsplit('.', 1)[1]} (missing weight)")
    return state, n_arrays


def _expected_keys(node: Node) -> list[str]:
    c = node.config
    p = f"layers.{node.name}."
    if node.op in ("conv3d", "dense"):
        return [p + "weight"] + ([p + "bias"] if c.get("use_bias", True) else [])
    if node.op == "batchnorm":
        keys = [p + "running_mean", p + "running_var"]
        if c.get("scale", True):
            keys.append(p + "weight")
        if c.get("center", True):
            keys.append(p + "bias")
        return keys
    return []


def _convert_layer(path: Path, node: Node, arrays: dict[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    p = f"layers.{node.name}."
    c = node.config
    out: dict[str, torch.Tensor] = {}

    def take(key: str, expected: tuple[int, ...]) -> np.ndarray:
        if key not in arrays:
            raise KerasImportError(f"{path}: layer {node.name!r}: missing weight {key!r} (stored: {sorted(arrays)})")
        a = arrays.pop(key)
        if tuple(a.shape) != tuple(expected):
            raise KerasImportError(f"{path}: layer {node.name!r}: weight {key!r} has shape {a.shape}, expected {tuple(expected)}")
        if not np.isfinite(a).all():
            raise KerasImportError(f"{path}: layer {node.name!r}: weight {key!r} holds NaN or infinite values")
        return a

    if node.op == "conv3d":
        cin = shapes[node.inputs[0]][0]
        k = tuple(c["kernel_size"])
        kernel = take("kernel", (*k, cin, int(c["filters"])))
        out[p + "weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2)))
        if c.get("use_bias", True):
            out[p + "bias"] = torch.from_numpy(take("bias", (int(c["filters"]),)))
    elif node.op == "dense":
        fin = shapes[node.inputs[0]][0]
        kernel = take("kernel", (fin, int(c["units"])))
        out[p + "weight"] = torch.from_numpy(np.ascontiguousarray(kernel.T))
        if c.get("use_bias", True):
            out[p + "bias"] = torch.from_numpy(take("bias", (int(c["units"]),)))
    elif node.op == "batchnorm":
        ch = shapes[node.inputs[0]][0]
        for kkey, tkey in _BN_KEYS.items():
            if (kkey == "gamma" and not c.get("scale", True)) or (kkey == "beta" and not c.get("center", True)):
                continue
            out[p + tkey] = torch.from_numpy(take(kkey, (ch,)))
        if np.any(out[p + "running_var"].numpy() < 0):
            raise KerasImportError(f"{path}: layer {node.name!r}: negative moving_variance")
    else:
        raise KerasImportError(f"{path}: layer {node.name!r} ({node.op}) stores weights {sorted(arrays)} but has none")
    if arrays:
        raise KerasImportError(f"{path}: layer {node.name!r}: stored weights {sorted(arrays)} were not used")
    return out


def read_keras_h5(path: Path) -> KerasModel:
    """Parse a Keras full-model H5 file (structure + weights) without TensorFlow.

    Raises :class:`KerasImportError` (a :class:`~bids_app.errors.ModelPackageError`) naming the
    file and the problem for anything not supported or inconsistent.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise KerasImportError(f"{path}: file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise KerasImportError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        raw = f.attrs.get("model_config")
        if raw is None:
            raise KerasImportError(f"{path}: no model_config attribute; this is a weights-only file, not a full model")
        try:
            config = json.loads(_s(raw))
        except (TypeError, json.JSONDecodeError) as exc:
            raise KerasImportError(f"{path}: model_config is not valid JSON ({exc})") from None
        nodes = _parse_config(path, config)
        input_shape = tuple(nodes[0].config["shape"])
        try:
            shapes = infer_shapes(nodes, input_shape)
            GraphNet._find_logit(nodes)
        except ValueError as exc:
            raise KerasImportError(f"{path}: {exc}") from None
        state, n_arrays = _read_weights(path, f, nodes, shapes)
        keras_version = str(_s(f.attrs.get("keras_version", f["model_weights"].attrs.get("keras_version", "unknown"))))
        backend = str(_s(f.attrs.get("backend", f["model_weights"].attrs.get("backend", "unknown"))))
    name = str(config.get("config", {}).get("name", "")) if isinstance(config.get("config"), Mapping) else ""
    return KerasModel(
        path=path, nodes=nodes, input_shape=input_shape, state_dict=state, keras_version=keras_version,
        backend=backend, sha256=sha256_file(path), model_name=name, n_weights=n_arrays,
    )


# --------------------------------------------------------------------------- structural matching
def _signature(node: Node) -> tuple[Any, ...]:
    c = node.config
    keys = {
        "input": ("shape",),
        "conv3d": ("filters", "kernel_size", "strides", "padding", "dilation_rate", "use_bias", "activation"),
        "batchnorm": ("epsilon", "center", "scale"),
        "activation": ("activation",),
        "maxpool3d": ("pool_size", "strides", "padding"),
        "avgpool3d": ("pool_size", "strides", "padding"),
        "residual": ("scale",),
        "dense": ("units", "use_bias", "activation"),
        "dropout": ("rate",),
    }.get(node.op, ())
    vals = []
    for k in keys:
        v = c.get(k)
        if isinstance(v, float):
            v = round(v, 6)
        elif isinstance(v, list):
            v = tuple(v)
        vals.append(v)
    return (node.op, len(node.inputs), *vals)


def _canonical_order(nodes: Sequence[Node]) -> list[Node]:
    by_name = {n.name: n for n in nodes}
    order: list[Node] = []
    seen: set[str] = set()
    stack: list[tuple[str, bool]] = [(nodes[-1].name, False)]
    while stack:
        cur, done = stack.pop()
        if done:
            order.append(by_name[cur])
            continue
        if cur in seen:
            continue
        seen.add(cur)
        stack.append((cur, True))
        for src in reversed(by_name[cur].inputs):
            if src not in seen:
                stack.append((src, False))
    return order


def match_graphs(reference: Sequence[Node], other: Sequence[Node]) -> dict[str, str] | None:
    """Map ``other``'s layer names to ``reference``'s when both graphs are the same network.

    Same network = same operators with the same options, wired the same way (input order
    included); names are ignored. Returns None when the graphs differ.
    """
    a = _canonical_order(reference)
    b = _canonical_order(other)
    if len(a) != len(b) or len(a) != len(reference) or len(b) != len(other):
        return None
    pos_a = {n.name: i for i, n in enumerate(a)}
    pos_b = {n.name: i for i, n in enumerate(b)}
    mapping: dict[str, str] = {}
    for na, nb in zip(a, b):
        if _signature(na) != _signature(nb):
            return None
        if [pos_a[s] for s in na.inputs] != [pos_b[s] for s in nb.inputs]:
            return None
        mapping[nb.name] = na.name
    return mapping


def identify_architecture(model: KerasModel, task: str | None = None) -> tuple[str, dict[str, Any], dict[str, str]] | None:
    """Which of our architectures (with which parameters) an imported graph is, or None.

    The sex network and the intact AD network are the same graph; ``task`` ("sex" or "ad")
    decides which name such a graph gets (without it, ``irv2_sex``).

    Returns ``(architecture, params, rename)`` where ``rename`` maps the file's layer names to
    ours. Width is read from the first convolution (64 filters at width 1), block counts from the
    residual layers, the dropout rate from the Dropout layer.
    """
    nodes = model.nodes
    convs = [n for n in nodes if n.op == "conv3d"]
    if not convs or nodes[0].op != "input":
        return None
    width = int(convs[0].config["filters"]) / 64.0
    counts = {t: sum(1 for n in nodes if n.op == "residual" and re.match(rf"^block{t}_\d+$", n.name)) for t in ("35", "17", "8")}
    drop = [n for n in nodes if n.op == "dropout"]
    rate = float(drop[0].config["rate"]) if drop else 0.5
    in_channels = int(model.input_shape[0])
    order = ("irv2_ad_optimised", "irv2_ad_intact", "irv2_sex") if task == "ad" else ARCHITECTURES
    for arch in order:
        blocks = (counts["35"], counts["17"], max(counts["8"], 1))
        if arch == "irv2_ad_optimised":
            blocks = (5, 10, 5)  # unused by this architecture; record the default
        params = {"width": width, "blocks": list(blocks), "in_channels": in_channels, "dropout": rate}
        try:
            ref, _ = irv2_nodes(arch, width=width, blocks=blocks, in_channels=in_channels, dropout=rate)
        except ValueError:
            continue
        ref = [Node(ref[0].name, "input", (), {"shape": list(model.input_shape)})] + ref[1:]
        rename = match_graphs(ref, nodes)
        if rename is not None:
            return arch, params, rename
    return None


def _renamed_state(state: Mapping[str, torch.Tensor], rename: Mapping[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for key, v in state.items():
        _, layer, pname = key.split(".")
        out[f"layers.{rename[layer]}.{pname}"] = v
    return out


# --------------------------------------------------------------------------- packages
def published_card(task: str) -> dict[str, Any]:
    """Card fields for the published BrainImageNet models (facts from Lu et al. 2022 and the repository)."""
    source = "Lu et al., J Big Data 2022 (doi:10.1186/s40537-022-00650-y); code/models: github.com/Chaogan-Yan/BrainImageNet"
    if task == "sex":
        metrics = [
            {"name": "accuracy", "value": 0.949, "source": source + " (leave-datasets-out CV)"},
            {"name": "auc", "value": 0.981, "source": source + " (leave-datasets-out CV)"},
        ]
        data = "85,721 T1w samples from more than 50 datasets (Lu et al. 2022), SPM/DPARSF VBM (wc1, mwc1)"
    else:
        metrics = [
            {"name": "accuracy", "value": 0.909, "source": source + " (ADNI, 5-fold leave-sites-out)"},
            {"name": "auc", "value": 0.963, "source": source + " (ADNI, 5-fold leave-sites-out)"},
            {"name": "accuracy_AIBL", "value": 0.945, "source": source + " (unseen AIBL)"},
            {"name": "accuracy_MIRIAD", "value": 0.936, "source": source + " (unseen MIRIAD)"},
            {"name": "accuracy_OASIS", "value": 0.911, "source": source + " (unseen OASIS)"},
            {"name": "auc_pMCI_vs_sMCI", "value": 0.82, "source": source},
        ]
        data = "ADNI AD vs CN, transfer learning from the sex model's stem (Lu et al. 2022), SPM/DPARSF VBM (wc1, mwc1)"
    return {
        "training": {"data": data, "synthetic": False, "preprocessing": ["clinica"],
                     "note": "Trained on SPM segmentations; this app's 'clinica' backend runs SPM, other backends are not validated for these weights."},
        "metrics": metrics,
        "licence": ("BrainImageNet model weights by the R-fMRI Lab (Chao-Gan Yan): for research purpose only; "
                    "under patent protection, all rights reserved; contact the authors for commercial use. "
                    "Not a medical device."),
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
        architecture = {"name": "keras_graph", "params": {"input_shape": list(first.input_shape), "graph": [n.to_dict() for n in first.nodes]}}
    for m in models:
        if ident is not None:
            again = identify_architecture(m, task)
            if again is None or again[0] != ident[0] or again[1] != ident[1]:
                raise KerasImportError(f"{m.path}: the network differs from {first.path}'s ({ident[0]} {ident[1]}); all folds must be the same network")
            states.append(_renamed_state(m.state_dict, again[2]))
        else:
            rename = match_graphs(first.nodes, m.nodes)
            if rename is None:
                raise KerasImportError(f"{m.path}: the network differs from {first.path}'s; all folds must be the same network")
            states.append(_renamed_state(m.state_dict, rename))
    published = all(p.name in PUBLISHED_FILES[task] for p in files)
    pos, neg = TASK_LABELS[task]
    card: dict[str, Any] = {
        "name": name or (f"brainimagenet-{task}" if published else files[0].stem),
        "task": task,
        "version": version or (("2020.04.27" if task == "sex" else "2020.05.04") if published else "0.0.0"),
        "architecture": architecture,
        "input": input_spec(mask="brain mask (reference: Reslice_BrainMask_05; here bids_app.grid.brain_mask)"),
        "output": {"meaning": f"sigmoid score; 1 = {pos}, 0 = {neg}", "activation": "sigmoid", "positive_label": pos, "negative_label": neg},
        "thresholds": {"default": 0.5, **({"screening": 0.3} if task == "ad" else {})},
    }
    if published:
        card.update(published_card(task))
    else:
        card.update({
            "training": {"data": data_description or f"unknown (imported from {', '.join(p.name for p in files)})",
                         "synthetic": bool(synthetic), "preprocessing": list(preprocessing or [])},
            "metrics": [],
            "licence": "unknown: check the terms of the source files",
        })
    card["provenance"] = {
        "imported_from": [{"file": m.path.name, "sha256": m.sha256, "keras_version": m.keras_version, "backend": m.backend} for m in models],
        "importer": "bids_app.models.keras_import (h5py; no Keras code executed)",
    }
    return save_package(Path(out_dir), card, states, dtype=dtype)

"""Read Keras full-model HDF5 files (Keras 2.2.4, tf-keras 2.x, Keras 3 legacy H5) with h5py only.

Why no TensorFlow: the published BrainImageNet files were written by Keras 2.2.4 on TensorFlow 1.13
(Python 3.5); loading them with Keras would execute the residual Lambda's stored Python 3.5
bytecode, which neither runs on today's Python nor is safe to run from a file. So we read the
stored ``model_config`` JSON and the weight arrays, and rebuild the graph from our own operators
(:mod:`bids_app.models.graph`). The file decides the structure; which of our architectures a graph
is, is decided separately (:mod:`bids_app.models.keras_match`).

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
from ..errors import KerasImportError
from .graph import ACTIVATIONS, GraphNet, Node, infer_shapes

__all__ = ["KerasImportError", "KerasModel", "read_keras_h5"]

_RESIDUAL_NAME = re.compile(r"^block(35|17|8)_\d+$")


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
            raise KerasImportError(
                f"{path}: layer {name!r} reads output {node_index}/{tensor_index} of {src!r}; "
                "only single-call layers are supported"
            )
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
        raise KerasImportError(
            f"{path}: layer {name!r}: activation {act!r} is not supported (supported: {', '.join(ACTIVATIONS)})"
        )
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
            raise KerasImportError(
                f"{path}: input {name!r} has shape {shape!r}; a fixed N x D x H x W x C input is required"
            )
        if cfg.get("sparse") or cfg.get("ragged"):
            raise KerasImportError(f"{path}: input {name!r} is sparse/ragged, which is not supported")
        d, h, w, c = (int(s) for s in shape[1:])
        return Node(name, "input", (), {"shape": [c, d, h, w]})
    if cls == "Conv3D":
        _channels_last(path, name, cfg)
        if int(cfg.get("groups", 1) or 1) != 1:
            raise KerasImportError(
                f"{path}: layer {name!r}: grouped convolution (groups={cfg.get('groups')}) is not supported"
            )
        padding = cfg.get("padding")
        if padding not in ("valid", "same"):
            raise KerasImportError(f"{path}: layer {name!r}: padding {padding!r} is not supported")
        strides = _triple(path, name, cfg.get("strides", 1), "strides")
        dil = _triple(path, name, cfg.get("dilation_rate", 1), "dilation_rate")
        if any(s != 1 for s in strides) and any(d != 1 for d in dil):
            raise KerasImportError(f"{path}: layer {name!r}: strides and dilation together are not supported")
        return Node(
            name,
            "conv3d",
            tuple(inputs),
            {
                "filters": int(cfg["filters"]),
                "kernel_size": _triple(path, name, cfg["kernel_size"], "kernel_size"),
                "strides": strides,
                "padding": padding,
                "dilation_rate": dil,
                "use_bias": bool(cfg.get("use_bias", True)),
                "activation": _activation(path, name, cfg.get("activation")),
            },
        )
    if cls == "BatchNormalization":
        if not _axis_is_channels(cfg.get("axis", -1)):
            raise KerasImportError(
                f"{path}: layer {name!r}: BatchNormalization over axis {cfg.get('axis')!r}; "
                "only the channel axis is supported"
            )
        if cfg.get("renorm") or cfg.get("synchronized") not in (None, False):
            raise KerasImportError(f"{path}: layer {name!r}: batch renormalization / synchronized BN is not supported")
        return Node(
            name,
            "batchnorm",
            tuple(inputs),
            {
                "epsilon": float(cfg.get("epsilon", 1e-3)),
                "momentum": float(cfg.get("momentum", 0.99)),
                "center": bool(cfg.get("center", True)),
                "scale": bool(cfg.get("scale", True)),
            },
        )
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
        return Node(
            name,
            op,
            tuple(inputs),
            {"pool_size": pool, "strides": _triple(path, name, strides, "strides"), "padding": padding},
        )
    if cls == "Concatenate":
        if not _axis_is_channels(cfg.get("axis", -1)):
            raise KerasImportError(
                f"{path}: layer {name!r}: concatenation along axis {cfg.get('axis')!r}; "
                "only the channel axis is supported"
            )
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
                f"{len(inputs)} input(s). Lambda code in a model file is never executed, "
                "so other Lambdas cannot be imported."
            )
        assert isinstance(scale, (int, float))  # checked above; tells the type checker
        return Node(name, "residual", tuple(inputs), {"scale": float(scale)})
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
        return Node(
            name,
            "dense",
            tuple(inputs),
            {
                "units": int(cfg["units"]),
                "use_bias": bool(cfg.get("use_bias", True)),
                "activation": _activation(path, name, cfg.get("activation")),
            },
        )
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
                nodes.append(
                    _layer_to_node(
                        path, {"class_name": "InputLayer", "config": {"batch_input_shape": shape}, "name": "input"}, []
                    )
                )
                prev = ["input"]
            named = dict(layer)
            named.setdefault("name", lcfg.get("name"))
            node = _layer_to_node(path, named, prev)
            nodes.append(node)
            prev = [node.name]
        return nodes
    if cls not in ("Model", "Functional"):
        raise KerasImportError(
            f"{path}: model class {cls!r} is not supported (expected Model, Functional or Sequential)"
        )
    inputs = _refs(body.get("input_layers"))
    outputs = _refs(body.get("output_layers"))
    if len(inputs) != 1 or len(outputs) != 1:
        raise KerasImportError(
            f"{path}: the model must have one input and one output; it has inputs {inputs} and outputs {outputs}"
        )
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


def _read_weights(
    path: Path, f: Any, nodes: Sequence[Node], shapes: Mapping[str, tuple[int, ...]]
) -> tuple[dict[str, torch.Tensor], int]:
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
        g.visititems(lambda n, o, found=datasets: found.append(n) if isinstance(o, h5py.Dataset) else None)
        unlisted = sorted(set(datasets) - set(wnames))
        if unlisted:
            raise KerasImportError(
                f"{path}: layer {lname!r} stores arrays {unlisted} that its weight_names do not list"
            )
        if not wnames:
            continue
        node = node_by_name.get(lname)
        if node is None:
            raise KerasImportError(
                f"{path}: weights of layer {lname!r} ({wnames}) belong to no layer of the model graph"
            )
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
                raise KerasImportError(
                    f"{path}: layer {node.name!r} has no stored weight for {key.rsplit('.', 1)[1]} (missing weight)"
                )
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


def _convert_layer(
    path: Path, node: Node, arrays: dict[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    p = f"layers.{node.name}."
    c = node.config
    out: dict[str, torch.Tensor] = {}

    def take(key: str, expected: tuple[int, ...]) -> np.ndarray:
        if key not in arrays:
            raise KerasImportError(f"{path}: layer {node.name!r}: missing weight {key!r} (stored: {sorted(arrays)})")
        a = arrays.pop(key)
        if tuple(a.shape) != tuple(expected):
            raise KerasImportError(
                f"{path}: layer {node.name!r}: weight {key!r} has shape {a.shape}, expected {tuple(expected)}"
            )
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
        path=path,
        nodes=nodes,
        input_shape=input_shape,
        state_dict=state,
        keras_version=keras_version,
        backend=backend,
        sha256=sha256_file(path),
        model_name=name,
        n_weights=n_arrays,
    )

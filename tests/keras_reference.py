"""Test helper: the BrainImageNet networks written directly in Keras (tf-keras 2.x or Keras 3).

Used only by the Keras-equivalence tests and ``bench/inference.py``: the same layer recipe as the
reference code (conv3d_bn, Inception-ResNet blocks with a residual Lambda carrying ``scale``), so
files saved from these models have the structure of the published H5 files. Layers the reference
code leaves unnamed are left unnamed here too, so Keras numbers them itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["build_keras", "randomise_bn", "to_keras224"]


def build_keras(
    keras: Any,
    architecture: str,
    *,
    width: float = 1.0,
    blocks: Sequence[int] = (5, 10, 5),
    input_spatial: Sequence[int] = (96, 120, 86),
    in_channels: int = 2,
    seed: int = 0,
) -> Any:
    """Build ``architecture`` (irv2_sex / irv2_ad_optimised / irv2_ad_intact) with ``keras``.

    The AD networks are made from a sex network the way the reference training scripts did:
    the optimised one from the layer that reads ``StemEnd``, the intact one from ``avg_pool``.
    """
    L = keras.layers
    keras.utils.set_random_seed(seed)

    def ch(n: int) -> int:
        return max(1, int(round(n * width)))

    def conv_bn(
        x, filters, kernel, strides=1, padding="same", activation="relu", use_bias=False, name=None, scale_width=True
    ):
        f = ch(filters) if scale_width else filters
        x = L.Conv3D(f, kernel, strides=strides, padding=padding, use_bias=use_bias, name=name)(x)
        if not use_bias:
            x = L.BatchNormalization(axis=4, scale=False, name=None if name is None else name + "_bn")(x)
        if activation is not None:
            x = L.Activation(activation, name=None if name is None else name + "_ac")(x)
        return x

    def block(x, scale, block_type, idx, activation="relu"):
        if block_type == "block35":
            b0 = conv_bn(x, 32, 1)
            b1 = conv_bn(conv_bn(x, 32, 1), 32, 3)
            b2 = conv_bn(conv_bn(conv_bn(x, 32, 1), 48, 3), 64, 3)
            branches = [b0, b1, b2]
        elif block_type == "block17":
            b0 = conv_bn(x, 192, 1)
            b1 = conv_bn(conv_bn(conv_bn(conv_bn(x, 128, 1), 148, [1, 7, 1]), 170, [1, 1, 7]), 192, [7, 1, 1])
            branches = [b0, b1]
        else:
            b0 = conv_bn(x, 192, 1)
            b1 = conv_bn(conv_bn(conv_bn(conv_bn(x, 192, 1), 212, [1, 3, 1]), 234, [1, 1, 3]), 256, [3, 1, 1])
            branches = [b0, b1]
        name = f"{block_type}_{idx}"
        mixed = L.Concatenate(axis=4, name=name + "_mixed")(branches)
        up = conv_bn(mixed, int(x.shape[-1]), 1, activation=None, use_bias=True, name=name + "_conv", scale_width=False)
        x = L.Lambda(lambda inputs, scale: inputs[0] + inputs[1] * scale, output_shape=tuple(x.shape[1:]),
                     arguments={"scale": scale}, name=name)([x, up])
        if activation is not None:
            x = L.Activation(activation, name=name + "_ac")(x)
        return x

    inp = L.Input(shape=(*input_spatial, in_channels))
    x = conv_bn(inp, 64, 3, padding="valid")
    x = conv_bn(x, 96, 3)
    x1 = L.MaxPooling3D(3, strides=2)(x)
    x2 = conv_bn(x, 96, 3, 2, padding="valid")
    x = L.Concatenate(axis=4)([x1, x2])
    x1 = conv_bn(conv_bn(x, 96, 1), 128, 3, padding="valid")
    x2 = conv_bn(x, 96, 1)
    x2 = conv_bn(x2, 96, [1, 7, 1])
    x2 = conv_bn(x2, 96, [1, 1, 7])
    x2 = conv_bn(x2, 96, [7, 1, 1])
    x2 = conv_bn(x2, 128, 3, padding="valid")
    x = L.Concatenate(axis=4)([x1, x2])
    x1 = conv_bn(x, 256, 3, 2, padding="valid")
    x2 = L.MaxPooling3D(3, strides=2, padding="valid", name="StemEnd")(x)
    stem = L.Concatenate(axis=4)([x1, x2])
    if architecture == "irv2_ad_optimised":
        x = L.MaxPooling3D(3, strides=2, name="mpool1")(stem)
        x = conv_bn(x, 256, 3, padding="valid", name="conv1")
        x = conv_bn(x, 256, 3, 2, name="conv2")
        x1 = L.MaxPooling3D(3, strides=2, name="mpool2")(x)
        x2 = conv_bn(x, 256, 3, 2, padding="valid", name="conv3")
        x = L.Concatenate(axis=4, name="conc1")([x1, x2])
        x = L.GlobalAveragePooling3D(name="apool1")(x)
        x = L.Dropout(0.5, name="dropout1")(x)
        out = L.Dense(1, activation="sigmoid")(x)
        return keras.Model(inp, out)
    x = stem
    for i in range(1, blocks[0] + 1):
        x = block(x, 0.17, "block35", i)
    b0 = conv_bn(x, 384, 3, strides=2, padding="valid")
    b1 = conv_bn(conv_bn(conv_bn(x, 256, 1), 256, 3), 384, 3, strides=2, padding="valid")
    bp = L.MaxPooling3D(3, strides=2, padding="valid")(x)
    x = L.Concatenate(axis=4, name="mixed_6a")([b0, b1, bp])
    for i in range(1, blocks[1] + 1):
        x = block(x, 0.1, "block17", i)
    b0 = conv_bn(conv_bn(x, 256, 1), 384, 3, strides=2, padding="valid")
    b1 = conv_bn(conv_bn(x, 256, 1), 288, 3, strides=2, padding="valid")
    b2 = conv_bn(conv_bn(conv_bn(x, 256, 1), 288, 3), 320, 3, strides=2, padding="valid")
    bp = L.MaxPooling3D(3, strides=2, padding="valid")(x)
    x = L.Concatenate(axis=4, name="mixed_7a")([b0, b1, b2, bp])
    for i in range(1, blocks[2]):
        x = block(x, 0.2, "block8", i)
    x = block(x, 1.0, "block8", blocks[2], activation=None)
    x = conv_bn(x, 1536, 1, name="conv_7b")
    x = L.GlobalAveragePooling3D(name="avg_pool")(x)
    x = L.Dropout(0.5, name="dropout1" if architecture == "irv2_ad_intact" else None)(x)
    out = L.Dense(1, activation="sigmoid")(x)
    return keras.Model(inp, out)


def randomise_bn(model: Any, seed: int = 0) -> None:
    """Give every BatchNormalization non-trivial moving statistics and beta (fresh ones are 0/1,
    which would hide a wrong epsilon or a swapped mean/variance)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            new = []
            for w in layer.weights:
                name = w.name.split("/")[-1]
                shape = tuple(w.shape)
                if "moving_variance" in name:
                    new.append(rng.uniform(0.5, 2.0, shape).astype("float32"))
                elif "moving_mean" in name:
                    new.append(rng.normal(0.0, 0.2, shape).astype("float32"))
                else:
                    new.append(rng.normal(0.0, 0.1, shape).astype("float32"))
            layer.set_weights(new)
        elif type(layer).__name__ == "Conv3D" and layer.use_bias:
            k, b = layer.get_weights()
            layer.set_weights([k, rng.normal(0.0, 0.05, b.shape).astype("float32")])


_AUTO = re.compile(
    r"^(conv3d|batch_normalization|activation|max_pooling3d|average_pooling3d|concatenate|dense|dropout|flatten|add)"
    r"(?:_(\d+))?$"
)


def to_keras224(src: str | Path, dst: str | Path) -> None:
    """Rewrite a tf-keras 2.x full-model H5 file the way Keras 2.2.4 (TF 1.13) wrote them.

    Differences reproduced (from Keras 2.2.4's ``saving.py`` / layer ``get_config`` behaviour):
    model class ``Model``; auto layer names numbered from 1 (``conv3d_1``; tf-keras starts at
    ``conv3d``); ``input_1``; no ``dtype`` in layer configs; no ``groups``/``keepdims``; BN ``axis``
    an int; initializers without ``module``/``registered_name``; Lambda ``function`` as
    ``[code, defaults, closure]`` with ``function_type: lambda``; every attribute and name stored
    as bytes (h5py reads them back as ``bytes``/``np.bytes_``); ``training_config`` and an
    ``optimizer_weights`` group as written for a compiled model.
    """
    import h5py

    with h5py.File(src, "r") as f:
        cfg = json.loads(f.attrs["model_config"])
        weights = {}
        order = [str(n) for n in f["model_weights"].attrs["layer_names"]]
        for ln in order:
            g = f["model_weights"][ln]
            weights[ln] = [(str(w), np.asarray(g[w][()])) for w in g.attrs["weight_names"]]
    rename: dict[str, str] = {}
    for layer in cfg["config"]["layers"]:
        name = layer["name"]
        if layer["class_name"] == "InputLayer":
            rename[name] = "input_1"
            continue
        m = _AUTO.match(name)
        rename[name] = f"{m.group(1)}_{int(m.group(2) or 0) + 1}" if m else name

    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in ("module", "registered_name")}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    layers = []
    for layer in cfg["config"]["layers"]:
        c = strip(layer["config"])
        new_name = rename[layer["name"]]
        c["name"] = new_name
        if layer["class_name"] == "InputLayer":
            c = {"batch_input_shape": c["batch_input_shape"], "dtype": "float32", "sparse": False, "name": new_name}
        else:
            for k in ("dtype", "groups", "keepdims"):
                c.pop(k, None)
        if layer["class_name"] == "BatchNormalization" and isinstance(c.get("axis"), list):
            c["axis"] = c["axis"][0]
        if layer["class_name"] == "Lambda":
            c["function"] = [c["function"][0] if isinstance(c["function"], list) else "4wIAAAA=\n", None, None]
            c["function_type"] = "lambda"
            c["output_shape_type"] = "raw"
            c.pop("output_shape_module", None)
        inbound = [[[rename[r[0]], r[1], r[2], r[3] if len(r) > 3 else {}] for r in node]
                   for node in layer["inbound_nodes"]]
        layers.append({"name": new_name, "class_name": layer["class_name"], "config": c, "inbound_nodes": inbound})
    body = {
        "name": "model_1",
        "layers": layers,
        "input_layers": [[rename[r[0]], r[1], r[2]] for r in cfg["config"]["input_layers"]],
        "output_layers": [[rename[r[0]], r[1], r[2]] for r in cfg["config"]["output_layers"]],
    }
    new_cfg = {"class_name": "Model", "config": body}
    sgd = {"lr": 0.0003, "momentum": 0.9, "decay": 0.001, "nesterov": True}
    training = {"optimizer_config": {"class_name": "SGD", "config": sgd},
                "loss": "binary_crossentropy", "metrics": ["accuracy"], "sample_weight_mode": None,
                "loss_weights": None}
    with h5py.File(dst, "w") as f:
        f.attrs["keras_version"] = b"2.2.4"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(new_cfg).encode("utf-8")
        f.attrs["training_config"] = json.dumps(training).encode("utf-8")
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = np.array([rename[n].encode("utf-8") for n in order])
        mw.attrs["backend"] = b"tensorflow"
        mw.attrs["keras_version"] = b"2.2.4"
        for ln in order:
            g = mw.create_group(rename[ln])
            names = []
            for wname, arr in weights[ln]:
                suffix = wname.split("/", 1)[1]
                new_w = f"{rename[ln]}/{suffix}"
                g.create_dataset(new_w, data=arr)
                names.append(new_w.encode("utf-8"))
            g.attrs["weight_names"] = np.array(names, dtype="S") if names else np.array([], dtype="S1")
        opt = f.create_group("optimizer_weights")
        opt.attrs["weight_names"] = np.array([b"training/SGD/Variable:0"])
        opt.create_dataset("training/SGD/Variable:0", data=np.zeros(3, dtype=np.float32))

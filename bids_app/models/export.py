"""Export a package's fold networks as ONNX or TorchScript files, each checked before it is kept.

Why a static-shape export graph: the networks take one fixed input size, and TensorFlow ``same``
padding of a stride-2 convolution depends on that size. :class:`~bids_app.models.graph.GraphNet`
computes the padding from ``x.shape`` at run time with Python's ceiling division
``-(-size // stride)``. ``torch.onnx.export`` traces that arithmetic into ONNX integer ``Div``,
which truncates toward zero instead of flooring, so the ceiling becomes a floor: the AD network's
``conv2`` (stride 2, ``same``, odd input sizes) came out one voxel short per axis, the global
average pooling hid the shape change, and the exported fold scored 0.5584 where PyTorch gave
0.5487. :class:`StaticGraphNet` bakes every padding in as constants computed from the graph's known
shapes, so the exported graph has no shape arithmetic at all. Every export is then run once
against the PyTorch FP32 network on a realistic input and refused beyond 1e-5 (:func:`verify`).
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._io import sha256_file
from ..errors import ModelPackageError
from .engines.choice import cpu_fp32
from .fast import fold_batchnorm
from .graph import GraphNet, Node, _triple, same_pad_arg
from .package import ModelPackage

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "StaticGraphNet",
    "reference_input",
    "reference_input_for",
    "export_onnx",
    "export_torchscript",
    "export_package",
    "run_onnx",
]

ExportFormat = Literal["onnx", "torchscript"]
EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torchscript")
#: ONNX opset of every export (supported by onnxruntime >= 1.12 and OpenVINO >= 2022.1).
ONNX_OPSET = 17
#: Largest |logit and score difference| an FP32 export may show against PyTorch FP32.
EXPORT_TOLERANCE = 1e-5


class ExportError(ModelPackageError):
    """An export failed or changed the network's output beyond its bound."""


class StaticGraphNet(GraphNet):
    """A :class:`GraphNet` whose TensorFlow ``same`` paddings are constants (fixed input size).

    Same operators, same weights, same numbers as the graph it copies; only the padding of
    stride-2 ``same`` convolutions and ``same`` pooling is looked up from the shapes inferred at
    construction instead of computed from ``x.shape`` in the forward pass (see the module doc
    for why traced shape arithmetic is wrong in ONNX).
    """

    def __init__(self, net: GraphNet) -> None:
        super().__init__(net.nodes, net.input_shape)
        self.load_state_dict(net.state_dict())
        self.eval()
        self._static_pads: dict[str, list[int]] = {}
        for n in self.nodes:
            src = self.shapes[n.inputs[0]][1:] if n.inputs else None
            if n.op == "conv3d" and self.layers[n.name].dynamic_same:
                conv = self.layers[n.name]
                self._static_pads[n.name] = same_pad_arg(src, conv.kernel_size, conv.stride, conv.dilation)  # type: ignore[arg-type]
            elif n.op in ("maxpool3d", "avgpool3d") and n.config["padding"] == "same":
                k, s = _triple(n.config["pool_size"], "pool_size"), _triple(n.config["strides"], "strides")
                self._static_pads[n.name] = same_pad_arg(src, k, s)  # type: ignore[arg-type]

    def run_node(self, node: Node, xs: list[torch.Tensor], *, final: bool) -> torch.Tensor:
        pads = self._static_pads.get(node.name)
        if pads is None:
            return super().run_node(node, xs, final=final)
        x = xs[0]
        c = node.config
        if node.op == "conv3d":
            conv = self.layers[node.name]
            y = F.conv3d(F.pad(x, pads), conv.weight, conv.bias, conv.stride, 0, conv.dilation)  # type: ignore[call-overload]
            return y if final else _activation(c.get("activation", "linear"))(y)
        k, s = _triple(c["pool_size"], "pool_size"), _triple(c["strides"], "strides")
        if node.op == "maxpool3d":
            return F.max_pool3d(F.pad(x, pads, value=float("-inf")), k, s)
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        return F.avg_pool3d(F.pad(x, pads), k, s) / F.avg_pool3d(F.pad(ones, pads), k, s)


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from .graph import ACTIVATIONS

    return ACTIVATIONS[name]


def reference_input(seed: int = 0, n: int = 1) -> np.ndarray:
    """``n`` realistic model inputs: the MNI152 GM template on the SPM grid, smoothly deformed.

    Why not noise: random-weight and trained networks alike give near-constant outputs on noise,
    which would hide a wrong export; GM-like maps with the real mask and intensity range do not.
    """
    from scipy import ndimage

    from .. import grid

    rng = np.random.default_rng(seed)
    gm = grid.template_gm().astype(np.float32)
    out = []
    for _ in range(n):
        field = ndimage.gaussian_filter(rng.normal(0.0, 1.0, grid.SPM_SHAPE), 8).astype(np.float32)
        field /= np.abs(field).max() + 1e-6
        gain = float(rng.uniform(0.85, 1.15))
        gmd = np.clip(gm * gain * (1 + 0.15 * field), 0, 1)
        gmv = gmd * (1 + 0.1 * field)
        out.append(grid.make_model_input(gmd, gmv))
    return np.stack(out).astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    from scipy import ndimage

    f = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), sigma).astype(np.float32)
    return f / (np.abs(f).max() + 1e-6)


def reference_input_for(spec: Mapping[str, Any], seed: int = 0, n: int = 1) -> np.ndarray:
    """``n`` realistic inputs of the kind a card's ``input`` section describes (its shape, channels, mask).

    ``gm_crop2``: :func:`reference_input`. ``gm_spm1``: the MNI152 GM template on the SPM grid,
    smoothly deformed, as GMD or modulated GMV, brain-masked when the card says ``brain``.
    ``t1w_mni1mm``: nilearn's skull-stripped MNI152 T1 on the MNI 1 mm grid with a smooth
    intensity field, centre-cropped and divided by its mean over the brain. Used by the engines'
    self-check; what the app feeds a network comes from the participant's own maps.
    """
    from .. import grid

    kind = spec.get("kind", "gm_crop2")
    if kind == "gm_crop2":
        return reference_input(seed=seed, n=n)
    rng = np.random.default_rng(seed)
    out = []
    if kind == "gm_spm1":
        gm = grid.template_gm().astype(np.float32)
        mask = grid.brain_mask() if spec.get("mask") == "brain" else None
        for _ in range(n):
            field = _smooth_field(rng, grid.SPM_SHAPE, 8)
            gmd = np.clip(gm * float(rng.uniform(0.85, 1.15)) * (1 + 0.15 * field), 0, 1)
            vol = gmd * (1 + 0.1 * field) if list(spec.get("channels", ["GMV"])) == ["GMV"] else gmd
            vol = vol * mask if mask is not None else vol
            out.append(np.nan_to_num(vol)[None])
    elif kind == "t1w_mni1mm":
        t1 = _t1_on_mni1mm()
        brain = t1 > 0
        crop = tuple(slice(a, b) for a, b in spec.get("crop", [[11, 171], [13, 205], [11, 171]]))
        for _ in range(n):
            vol = t1 * (1 + 0.1 * _smooth_field(rng, grid.MNI1MM_SHAPE, 12)) * brain
            vol = vol / vol[brain].mean()
            out.append(vol[crop][None])
    else:
        raise ValueError(f"no reference input for input kind {kind!r}")
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _t1_on_mni1mm() -> np.ndarray:
    from nilearn.image import resample_img

    from .. import grid
    from ..templates import mni152_t1

    img = resample_img(mni152_t1(), target_affine=grid.MNI1MM_AFFINE, target_shape=grid.MNI1MM_SHAPE,
                       interpolation="linear", fill_value=0.0, force_resample=True, copy_header=True)
    return np.clip(np.asarray(img.get_fdata(dtype=np.float32)), 0, None)


def export_network(net: nn.Module) -> StaticGraphNet:
    """The float32 CPU, BatchNorm-folded, static-padding copy of ``net`` that every export traces."""
    if not isinstance(net, GraphNet):
        raise ExportError(f"only layer-graph networks can be exported, got {type(net).__name__}")
    return StaticGraphNet(fold_batchnorm(cpu_fp32(net)))  # type: ignore[arg-type]


def export_onnx(net: nn.Module, path: Path, *, opset: int = ONNX_OPSET) -> Path:
    """Write ``net`` (one fold) as an ONNX file with input ``x`` (N x 2 x 96 x 120 x 86) and output ``logit`` (N)."""
    static = export_network(net)
    x = torch.zeros((1, *static.input_shape), dtype=torch.float32)
    path = Path(path)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(
            static, (x,), str(path), opset_version=opset, dynamo=False, input_names=["x"], output_names=["logit"],
            dynamic_axes={"x": {0: "batch"}, "logit": {0: "batch"}},
        )
    return path


def export_torchscript(net: nn.Module, path: Path) -> Path:
    """Write ``net`` (one fold) as a frozen TorchScript file for LibTorch (``torch::jit::load``)."""
    static = export_network(net)
    x = torch.zeros((1, *static.input_shape), dtype=torch.float32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.freeze(torch.jit.trace(static, (x,), check_trace=False))
    path = Path(path)
    traced.save(str(path))
    return path


def run_onnx(path: Path, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Logits of an exported ONNX fold under ONNX Runtime (CPU), float32 N."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0], dtype=np.float32).reshape(-1)


def _run_torchscript(path: Path, x: np.ndarray) -> np.ndarray:
    m = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return m(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).reshape(-1).numpy()


def verify(net: nn.Module, run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, what: str,
           tolerance: float = EXPORT_TOLERANCE) -> float:
    """Largest |score difference| of ``run`` against ``net`` in PyTorch FP32 on ``x``; refuse beyond ``tolerance``."""
    with torch.inference_mode():
        ref = torch.sigmoid(cpu_fp32(net)(torch.from_numpy(x))).double().numpy()
    got = 1.0 / (1.0 + np.exp(-run(x).astype(np.float64)))
    if got.shape != ref.shape or not np.isfinite(got).all():
        raise ExportError(f"{what}: gives output of shape {got.shape}, expected {ref.shape}")
    diff = float(np.abs(got - ref).max())
    if diff > tolerance:
        raise ExportError(f"{what}: scores differ from PyTorch FP32 by {diff:.3g} (> {tolerance:g}); refused")
    return diff


def export_package(package: ModelPackage, out_dir: Path, fmt: str = "onnx", *,
                   check_input: np.ndarray | None = None) -> dict[str, Any]:
    """Export every fold of ``package`` to ``out_dir`` as ``fold{k}.onnx`` or ``fold{k}.pt``, each verified.

    Writes ``export.json`` (package name, version, fold sha256 of the weights, file sha256 of each
    export, the largest score difference seen on the check inputs) and returns it. A fold whose
    export differs from PyTorch FP32 by more than 1e-5 raises :class:`ExportError` and leaves
    no file behind.
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"export format must be one of {', '.join(EXPORT_FORMATS)}; got {fmt!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x = reference_input(seed=0, n=2) if check_input is None else np.ascontiguousarray(check_input, dtype=np.float32)
    folds: list[dict[str, Any]] = []
    for k, net in enumerate(package.folds):
        suffix = "onnx" if fmt == "onnx" else "pt"
        final = out_dir / f"fold{k}.{suffix}"
        tmp = out_dir / f".fold{k}.{suffix}.tmp"
        try:
            if fmt == "onnx":
                export_onnx(net, tmp)
                diff = verify(net, lambda a, p=tmp: run_onnx(p, a), x, f"{package.name} fold {k} ONNX export")  # type: ignore[misc]
            else:
                export_torchscript(net, tmp)
                diff = verify(net, lambda a, p=tmp: _run_torchscript(p, a), x,  # type: ignore[misc]
                              f"{package.name} fold {k} TorchScript export")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(final)
        folds.append({"file": final.name, "sha256": sha256_file(final), "weights_sha256": package.sha256[k],
                      "max_score_diff_vs_pytorch_fp32": diff})
    manifest = {
        "package": package.name, "version": package.version, "task": package.task, "format": fmt,
        "opset": ONNX_OPSET if fmt == "onnx" else None,
        "input": {"name": "x", "shape": ["N", *package.folds[0].input_shape], "dtype": "float32",  # type: ignore[misc]
                  "layout": "N C D H W"},
        "output": {"name": "logit", "meaning": "logit; score = sigmoid(logit)"},
        "torch": torch.__version__, "check_inputs": int(x.shape[0]), "folds": folds,
    }
    (out_dir / "export.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest

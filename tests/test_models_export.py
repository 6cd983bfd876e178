"""``vbm-predict models export``: ONNX and TorchScript files that score like PyTorch FP32, or none at all."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import warnings

import numpy as np
import pytest
import torch

from bids_app.cli import models_cmd
from bids_app.models import load_package, predict
from bids_app.models.export import ExportError, StaticGraphNet, export_package, reference_input, run_onnx, verify
from bids_app.workflows import DEMO_MODELS

CI = os.environ.get("CI", "").lower() == "true"


def require(module: str):
    if CI:
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} not installed (pip install .[engines])")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vbm-predict")
    models_cmd.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return reference_input(seed=11, n=3)


# ONNX on the AD network (the one whose export used to change a score), TorchScript on the sex network.
@pytest.mark.parametrize(("fmt", "task"), [("onnx", "ad"), ("torchscript", "sex")])
def test_export_round_trip_scores_equal_pytorch(task, fmt, tmp_path, capsys, x):
    if fmt == "onnx":
        require("onnx")
        require("onnxruntime")
    pkg_dir = DEMO_MODELS / task
    out = tmp_path / fmt
    assert models_cmd.run(parse(["models", "export", str(pkg_dir), "--format", fmt, "--out", str(out)])) == 0
    manifest = json.loads(capsys.readouterr().out)
    pkg = load_package(pkg_dir)
    assert manifest == json.loads((out / "export.json").read_text())
    assert [f["weights_sha256"] for f in manifest["folds"]] == pkg.sha256
    assert sorted(p.name for p in out.iterdir()) == sorted(["export.json", *(f["file"] for f in manifest["folds"])])
    ref = predict(pkg, x, precision="fp32").fold_scores
    assert ref.std() > 1e-3
    for k, f in enumerate(manifest["folds"]):
        path = out / f["file"]
        if fmt == "onnx":
            logits = run_onnx(path, x)
        else:
            m = torch.jit.load(str(path), map_location="cpu")  # what LibTorch's torch::jit::load reads
            with torch.no_grad():
                logits = m(torch.from_numpy(x)).numpy()
        scores = 1 / (1 + np.exp(-logits.astype(np.float64)))
        np.testing.assert_allclose(scores, ref[:, k], atol=1e-5, rtol=0)


def test_traced_shape_arithmetic_is_what_broke_the_ad_export_and_is_refused(tmp_path, x):
    """Exporting the plain graph traces TF-'same' ceil division into ONNX integer Div (truncating):
    the AD network's stride-2 'same' conv2 loses a voxel per axis and the score changes."""
    require("onnx")
    require("onnxruntime")
    net = load_package(DEMO_MODELS / "ad").folds[0]
    naive = tmp_path / "naive.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x[:1]),), str(naive), opset_version=17, dynamo=False,
                          input_names=["x"], output_names=["logit"])
    with pytest.raises(ExportError, match=r"scores differ from PyTorch FP32 by .* refused"):
        verify(net, lambda a: run_onnx(naive, a), x[:1], "naive export")
    static = StaticGraphNet(net)
    assert static._static_pads["conv2"] == [1, 1, 1, 1, 0, 1]  # input 8 x 11 x 7: (W, H, D) pads as constants
    with torch.inference_mode():
        assert torch.allclose(static(torch.from_numpy(x)), net(torch.from_numpy(x)), atol=1e-6, rtol=0)


def test_export_refuses_an_unknown_format(tmp_path):
    with pytest.raises(ExportError, match="onnx, torchscript"):
        export_package(load_package(DEMO_MODELS / "ad"), tmp_path, "tflite")

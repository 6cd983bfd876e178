"""``vbm-predict models ...``: import Keras files, score ready model inputs, show model cards.

Thin on purpose: argument parsing and printing only; the work is in :mod:`bids_app.models`.

* ``models import-keras FILE.h5 [FILE.h5 ...] --task {sex,ad} --out DIR [--name --version]``
* ``models score PACKAGE_DIR --input ARRAY.npy [--channels-last] [--device --precision --batch-size]``
  prints ``{"model", "task", "folds", "scores": [{"index", "mean", "spread", "folds": [...]}]}``
* ``models info PACKAGE_DIR`` prints the card plus parameter counts and the inference engine choice.
* ``models export PACKAGE_DIR --format onnx|torchscript --out DIR`` writes every fold, each checked
  against PyTorch FP32 (1e-5) before it is kept, plus ``export.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import InputDataError, NoInputError, UsageError
from ..types import PRECISION_CHOICES, TASK_CHOICES
from .parser import device_name, positive_int

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Register ``models`` and its subcommands on the main parser's ``subparsers``."""
    p = subparsers.add_parser("models", help="model packages: import Keras files, score arrays, show cards")
    sub = p.add_subparsers(dest="models_command", metavar="{import-keras,score,info,export}")
    sub.required = True

    imp = sub.add_parser("import-keras", help="convert Keras full-model H5 files (one per fold) into a model package")
    imp.add_argument("files", nargs="+", type=Path, metavar="FILE.h5")
    imp.add_argument("--task", required=True, choices=TASK_CHOICES)
    imp.add_argument("--out", required=True, type=Path, metavar="DIR", help="package directory to write")
    imp.add_argument("--name", default=None)
    imp.add_argument("--version", default=None)
    imp.add_argument("--synthetic", action="store_true",
                     help="the files were trained on synthetic data (recorded in the card)")
    imp.add_argument("--preprocessing", nargs="*", default=None, metavar="BACKEND",
                     help="preprocessing backends the model was validated for (e.g. clinica ants)")
    imp.add_argument("--data", default=None, help="description of the training data for the card")
    imp.add_argument("--float16", action="store_true", help="store weights as float16 (half the size)")
    imp.set_defaults(func=run)

    sc = sub.add_parser("score", help="score a ready model-input array (N x 2 x 96 x 120 x 86 .npy) with every fold")
    sc.add_argument("package", type=Path, metavar="PACKAGE_DIR")
    sc.add_argument("--input", required=True, type=Path, metavar="ARRAY.npy")
    sc.add_argument("--channels-last", action="store_true", help="the array is Keras' N x 96 x 120 x 86 x 2")
    sc.add_argument("--device", default="cpu", type=device_name, metavar="{auto,cpu,cuda,cuda:N}")
    sc.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    sc.add_argument("--batch-size", type=positive_int, default=1)
    sc.set_defaults(func=run)

    info = sub.add_parser("info", help="print a package's model card with parameter counts")
    info.add_argument("package", type=Path, metavar="PACKAGE_DIR")
    info.set_defaults(func=run)

    ex = sub.add_parser("export", help="export every fold as ONNX or TorchScript (each verified against PyTorch FP32)")
    ex.add_argument("package", type=Path, metavar="PACKAGE_DIR")
    ex.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    ex.add_argument("--out", required=True, type=Path, metavar="DIR",
                    help="directory for fold{k}.onnx|.pt and export.json")
    ex.set_defaults(func=run)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch ``models`` subcommands; returns an exit code (errors propagate as VBMPredictError)."""
    cmd = getattr(args, "models_command", None)
    if cmd == "import-keras":
        return _import(args)
    if cmd == "score":
        return _score(args)
    if cmd == "info":
        return _info(args)
    if cmd == "export":
        return _export(args)
    raise UsageError(f"unknown models subcommand {cmd!r}; use import-keras, score, info or export")


def _import(args: argparse.Namespace) -> int:
    import torch

    from ..models.keras_import import import_keras

    for f in args.files:
        if not Path(f).is_file():
            raise NoInputError(f"{f}: Keras H5 file not found")
    out = import_keras(
        args.files, task=args.task, out_dir=args.out, name=args.name, version=args.version,
        synthetic=args.synthetic, preprocessing=args.preprocessing, data_description=args.data,
        dtype=torch.float16 if args.float16 else torch.float32,
    )
    card = json.loads((out / "model.json").read_text(encoding="utf-8"))
    print(json.dumps({"package": str(out), "name": card["name"], "architecture": card["architecture"]["name"],
                      "folds": card["folds"]}, indent=2))
    return 0


def _load_array(path: Path, channels_last: bool) -> Any:
    import numpy as np

    if not path.is_file():
        raise NoInputError(f"{path}: input array not found")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputDataError(f"{path}: not a readable .npy array without pickles ({exc})") from None
    if channels_last:
        if x.ndim == 4:
            x = x[None]
        if x.ndim != 5 or x.shape[-1] != 2:
            raise InputDataError(f"{path}: --channels-last expects N x 96 x 120 x 86 x 2, got shape {x.shape}")
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    return x


def _score(args: argparse.Namespace) -> int:
    from ..models import load_package, predict
    from ..models.device import resolve_device

    x = _load_array(args.input, args.channels_last)
    device = str(resolve_device(args.device))  # a usage error (64) before anything is loaded
    pkg = load_package(args.package, device=device)
    try:
        scores = predict(pkg, x, device=device, precision=args.precision, batch_size=args.batch_size)
    except (ValueError, TypeError) as exc:
        raise InputDataError(f"{args.input}: {exc}") from None
    out = {
        "model": pkg.name,
        "task": pkg.task,
        "version": pkg.version,
        "positive_label": pkg.positive_label,
        "folds": len(pkg.folds),
        "precision": args.precision,
        "engine": dict(scores.engine),
        "heads": [
            {"name": h.name, "kind": h.kind, "target": h.target, "labels": list(h.labels), "unit": h.unit,
             "outputs": [{"index": i, "mean": h.mean[i].tolist(), "spread": h.spread[i].tolist(),
                          "folds": h.fold_outputs[i].tolist()} for i in range(h.fold_outputs.shape[0])]}
            for h in scores.heads
        ],
    }
    if pkg.binary_head is not None:  # the single binary score, as before schema 2
        out["scores"] = [
            {"index": i, "mean": float(scores.mean[i]), "spread": float(scores.spread[i]),
             "folds": [float(v) for v in scores.fold_scores[i]]}
            for i in range(scores.fold_scores.shape[0])
        ]
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _info(args: argparse.Namespace) -> int:
    from ..models import load_package

    pkg = load_package(args.package)
    trainable = sum(p.numel() for p in pkg.folds[0].parameters())
    card = dict(pkg.card)
    arch = dict(card.get("architecture", {}))
    if arch.get("name") == "keras_graph":  # the node list is long; summarise it
        arch["params"] = {"input_shape": arch["params"]["input_shape"], "layers": len(arch["params"]["graph"])}
    card["architecture"] = arch
    card["parameters"] = {"total_per_fold": pkg.n_parameters, "trainable_per_fold": trainable,
                          "non_trainable_per_fold": pkg.n_parameters - trainable, "folds": len(pkg.folds)}
    from ..models.engines import describe_engine_choice

    card["inference"] = describe_engine_choice("cpu")
    json.dump(card, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..models import load_package
    from ..models.export import export_package

    manifest = export_package(load_package(args.package), args.out, args.format)
    json.dump(manifest, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0

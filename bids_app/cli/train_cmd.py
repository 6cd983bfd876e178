"""``vbm-predict train`` and ``vbm-predict finetune`` (thin wrappers around :mod:`bids_app.train`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..types import AD_ARCHITECTURES, DEVICE_CHOICES, FREEZE_CHOICES, OPTIMIZER_CHOICES, TASK_CHOICES, WEIGHTS_DTYPES
from .parser import positive_float, positive_int

__all__ = ["add_parser", "run", "run_finetune"]


def _blocks(text: str) -> tuple[int, int, int]:
    parts = [p for p in text.replace(",", " ").split() if p]
    if len(parts) != 3 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"--blocks needs three positive integers like 5,10,5; got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train sex and AD models with leave-sites-out cross-validation (sex -> AD transfer)",
        description="Train from GM maps (BIDS-derivatives names *_space-IXI549Space_label-GM[_desc-modulated]_probseg) "
        "and labels / sites in a participants.tsv. Defaults follow the reference system (SGD, Nesterov 0.9; "
        "sex lr 0.01 decay 3e-3; AD lr 3e-4 decay 1e-3; batch 24; 10 epochs; 5 folds).",
    )
    p.add_argument("--derivatives", type=Path, required=True,
                   help="directory with the GM maps (app output or derivatives)")
    p.add_argument("--participants", type=Path, required=True, help="participants.tsv with sex, diagnosis and site")
    p.add_argument("-o", "--out", type=Path, required=True, help="output directory (models/, report/, checkpoints/)")
    p.add_argument("--tasks", nargs="+", choices=TASK_CHOICES, default=list(TASK_CHOICES))
    p.add_argument("--folds", type=positive_int, default=5)
    p.add_argument("--allocations", type=positive_int, default=10000, help="random site allocations tried for balance")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of training participants for best-epoch choice")
    p.add_argument("--width", type=positive_float, default=1.0, help="channel width factor of the networks")
    p.add_argument("--blocks", type=_blocks, default=(5, 10, 5), help="block35,block17,block8 repeats (default 5,10,5)")
    p.add_argument("--ad-architecture", choices=AD_ARCHITECTURES, default="irv2_ad_optimised")
    p.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, default="sgd")
    p.add_argument("--sex-lr", type=positive_float, default=0.01)
    p.add_argument("--sex-decay", type=float, default=3e-3)
    p.add_argument("--ad-lr", type=positive_float, default=3e-4)
    p.add_argument("--ad-decay", type=float, default=1e-3)
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--weights-dtype", choices=WEIGHTS_DTYPES, default="float32")
    p.add_argument("--name-prefix", default="vbm-predict", help="package names become PREFIX-sex, PREFIX-ad")
    p.add_argument("--model-version", default="0.1.0")
    p.add_argument("--maps-origin", default=None,
                   help="preprocessing that made the maps (default: from dataset_description.json)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)

    f = subparsers.add_parser(
        "finetune",
        help="adapt a model package to a new site with a fraction of its labelled data",
        description="Fine-tune every fold of PACKAGE on FRACTION of the labelled participants in --derivatives "
        "(stratified), evaluate before and after on the rest, write a new package.",
    )
    f.add_argument("package", type=Path, help="model package directory (model.json + fold*.safetensors)")
    f.add_argument("--derivatives", type=Path, required=True)
    f.add_argument("--participants", type=Path, required=True)
    f.add_argument("-o", "--out", type=Path, required=True)
    f.add_argument("--fraction", type=float, default=0.2,
                   help="share of participants used for fine-tuning (default 0.2)")
    f.add_argument("--freeze", choices=FREEZE_CHOICES, default="none",
                   help="low: keep the stem fixed; high: keep every layer after the stem fixed")
    f.add_argument("--site", action="append", default=None, help="use only these sites (repeatable)")
    f.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, default="sgd")
    f.add_argument("--lr", type=positive_float, default=3e-4)
    f.add_argument("--decay", type=float, default=1e-3)
    f.add_argument("--epochs", type=positive_int, default=10)
    f.add_argument("--batch-size", type=positive_int, default=8)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=run_finetune)


def run(args: argparse.Namespace) -> int:
    from ..train import OptimConfig, TrainConfig, train_cohort

    schedule = {"optimizer": args.optimizer, "batch_size": args.batch_size, "epochs": args.epochs}
    cfg = TrainConfig(
        folds=args.folds, n_allocations=args.allocations, val_fraction=args.val_fraction, width=args.width,
        blocks=tuple(args.blocks), ad_architecture=args.ad_architecture,
        sex_optim=OptimConfig(lr=args.sex_lr, decay=args.sex_decay, **schedule),
        ad_optim=OptimConfig(lr=args.ad_lr, decay=args.ad_decay, **schedule),
        seed=args.seed, device=args.device, weights_dtype=args.weights_dtype, name_prefix=args.name_prefix,
        version=args.model_version,
    )
    results = train_cohort(args.derivatives, args.participants, args.out, cfg, tasks=args.tasks,
                           origin=args.maps_origin, progress=not args.no_progress)
    for r in results:
        pooled = {row.metric: row.value for row in r.pooled.itertuples()}
        accuracy, auc = pooled.get("accuracy", float("nan")), pooled.get("roc_auc", float("nan"))
        print(f"{r.task}: package {r.package}; pooled leave-sites-out accuracy {accuracy:.3f}, AUC {auc:.3f}")
    print(f"report: {Path(args.out) / 'report'}")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from ..train import OptimConfig, finetune_package

    optim = OptimConfig(optimizer=args.optimizer, lr=args.lr, decay=args.decay, batch_size=args.batch_size,
                        epochs=args.epochs)
    res = finetune_package(args.package, args.derivatives, args.participants, args.out, fraction=args.fraction,
                           freeze=args.freeze, sites=args.site, optim=optim, seed=args.seed, device=args.device,
                           progress=not args.no_progress)
    print(f"fine-tuned package: {res['package']}\nbefore/after on held-out participants: {res['table']}")
    return 0

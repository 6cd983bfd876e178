"""``vbm-predict train`` and ``vbm-predict finetune`` (thin wrappers around :mod:`bids_app.train`).

``train`` has two modes: without ``--family``, the BrainImageNet sex -> AD transfer pipeline of the
reference system (``--tasks sex ad``); with ``--family F [F ...] --task T``, every named family is
cross-validated on task T with the same leave-sites-out folds (optionally on ``--sample-sizes``) and
the report puts their metrics side by side. Options left unset take the family's presets
(:data:`bids_app.train.FAMILY_PRESETS`).
"""

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


def _filters(text: str) -> list[int]:
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"--filters needs positive integers like 8,16,32,64,128; got {text!r}")
    return [int(p) for p in parts]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..train.families import FAMILY_CHOICES
    from ..train.heads import TRAIN_TASKS

    p = subparsers.add_parser(
        "train",
        help="train models with leave-sites-out cross-validation (any family and task, or sex -> AD transfer)",
        description="Train from GM maps (BIDS-derivatives names *_space-IXI549Space_label-GM[_desc-modulated]_probseg) "
        "and labels / sites in a participants.tsv. Without --family: the BrainImageNet sex -> AD transfer with the "
        "reference system's defaults (SGD, Nesterov 0.9; sex lr 0.01 decay 3e-3; AD lr 3e-4 decay 1e-3; batch 24; "
        "10 epochs; 5 folds). With --family F ... --task T: each family cross-validated on T with the same folds, "
        "defaults from the family's paper (e.g. cnn: Adam lr 1e-4, batch 2, early stopping after 10 epochs).",
    )
    p.add_argument("--derivatives", type=Path, required=True,
                   help="directory with the GM maps (app output or derivatives)")
    p.add_argument("--participants", type=Path, required=True, help="participants.tsv with sex, diagnosis and site")
    p.add_argument("-o", "--out", type=Path, required=True, help="output directory (models/, report/, checkpoints/)")
    p.add_argument("--tasks", nargs="+", choices=TASK_CHOICES, default=list(TASK_CHOICES),
                   help="sex -> AD transfer mode (without --family): the tasks to train")
    p.add_argument("--family", nargs="+", choices=FAMILY_CHOICES, default=None,
                   help="families to cross-validate on --task, side by side (regional = the regional-volume baseline)")
    p.add_argument("--task", choices=TRAIN_TASKS, default=None,
                   help="with --family: sex, ad (CN vs AD), cn_mci_ad, pmci (sMCI vs pMCI), brain_age, multitask")
    p.add_argument("--sample-sizes", nargs="+", type=positive_int, default=(), metavar="N",
                   help="with --family: also train on nested random subsets of N training participants per fold "
                   "and write learning curves")
    p.add_argument("--patience", type=positive_int, default=None,
                   help="with --family: stop after this many epochs without a better validation loss")
    p.add_argument("--lr", type=positive_float, default=None, help="with --family: learning rate")
    p.add_argument("--decay", type=float, default=None, help="with --family: Keras-style learning-rate decay")
    p.add_argument("--filters", type=_filters, default=None,
                   help="with --family cnn: filters per conv block (default 8,16,32,64,128 = CNN-5)")
    p.add_argument("--resamples", type=positive_int, default=1000,
                   help="with --family: half-size subsamples for the 95%% intervals")
    p.add_argument("--folds", type=positive_int, default=5)
    p.add_argument("--allocations", type=positive_int, default=10000, help="random site allocations tried for balance")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of training participants for best-epoch choice")
    p.add_argument("--width", type=positive_float, default=None,
                   help="channel width factor of the networks (1): cnn and brainimagenet widths, "
                   "the liu_mox and sfcn channel counts scaled; not used by regional")
    p.add_argument("--blocks", type=_blocks, default=None, help="block35,block17,block8 repeats (default 5,10,5)")
    p.add_argument("--ad-architecture", choices=AD_ARCHITECTURES, default="irv2_ad_optimised")
    p.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, default=None, help="default sgd (or the family's)")
    p.add_argument("--sex-lr", type=positive_float, default=0.01)
    p.add_argument("--sex-decay", type=float, default=3e-3)
    p.add_argument("--ad-lr", type=positive_float, default=3e-4)
    p.add_argument("--ad-decay", type=float, default=1e-3)
    p.add_argument("--epochs", type=positive_int, default=None, help="default 10 (or the family's)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default 24 (or the family's)")
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
                   help="low: keep the stem / conv blocks fixed (retrain the head); "
                   "high: keep the layers after them fixed")
    f.add_argument("--site", action="append", default=None, help="use only these sites (repeatable)")
    f.add_argument("--task", choices=TRAIN_TASKS, default=None,
                   help="retarget the heads (e.g. pmci from an AD package: the CNN family's AD -> pMCI transfer)")
    f.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, default="sgd")
    f.add_argument("--lr", type=positive_float, default=3e-4)
    f.add_argument("--decay", type=float, default=1e-3)
    f.add_argument("--epochs", type=positive_int, default=10)
    f.add_argument("--batch-size", type=positive_int, default=8)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=run_finetune)


def _run_families(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..train import FamiliesConfig, train_families

    if args.task is None:
        raise UsageError("--family needs --task (one of sex, ad, cn_mci_ad, pmci, brain_age, multitask)")
    optim = {"optimizer": args.optimizer, "lr": args.lr, "decay": args.decay, "epochs": args.epochs,
             "batch_size": args.batch_size, "patience": args.patience}
    extra: dict[str, dict] = {}
    if args.blocks is not None:
        extra["brainimagenet"] = {"blocks": list(args.blocks)}
    if args.filters is not None:
        extra["cnn"] = {"filters": list(args.filters)}
    cfg = FamiliesConfig(folds=args.folds, n_allocations=args.allocations, val_fraction=args.val_fraction,
                         seed=args.seed, device=args.device, weights_dtype=args.weights_dtype,
                         name_prefix=args.name_prefix, version=args.model_version, n_resamples=args.resamples,
                         width=args.width, optim=optim, extra_params=extra)
    results = train_families(args.derivatives, args.participants, args.out, args.family, args.task, cfg,
                             sample_sizes=args.sample_sizes, origin=args.maps_origin, progress=not args.no_progress)
    for r in results:
        summary = ", ".join(f"{p.head} {p.metric} {p.value:.3f}" for p in r.pooled.itertuples()
                            if p.metric in ("roc_auc", "macro_auc", "balanced_accuracy", "mae", "r"))
        print(f"{r.family} {r.task}: {summary}; package {r.package or r.package_note}")
    print(f"report: {Path(args.out) / 'report' / f'{args.task}_comparison.md'}")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..train import OptimConfig, TrainConfig, train_cohort

    if args.family:
        return _run_families(args)
    if args.task is not None or args.sample_sizes or args.filters is not None:
        raise UsageError("--task, --sample-sizes and --filters need --family (e.g. --family brainimagenet cnn)")
    schedule = {"optimizer": args.optimizer or "sgd", "batch_size": args.batch_size or 24, "epochs": args.epochs or 10,
                "patience": args.patience}
    cfg = TrainConfig(
        folds=args.folds, n_allocations=args.allocations, val_fraction=args.val_fraction,
        width=args.width if args.width is not None else 1.0,
        blocks=tuple(args.blocks) if args.blocks is not None else (5, 10, 5), ad_architecture=args.ad_architecture,
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
                           freeze=args.freeze, sites=args.site, task=args.task, optim=optim, seed=args.seed,
                           device=args.device, progress=not args.no_progress)
    print(f"fine-tuned package: {res['package'] or res['note']}\nbefore/after on held-out participants: {res['table']}")
    return 0

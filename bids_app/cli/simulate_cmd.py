"""``vbm-predict simulate OUT``: write a synthetic BIDS cohort with ground truth (thin wrapper)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .parser import DeprecatedAlias, positive_int

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="write a synthetic BIDS dataset (T1w heads with known grey matter) and its ground truth",
        description="Simulate T1w heads from real template anatomy with sex-dependent head size, "
        "MMSE-graded medial temporal atrophy and site effects; ground truth under OUT/derivatives/ground-truth.",
    )
    p.add_argument("out", type=Path, help="dataset root to create (must not exist or be empty)")
    p.add_argument("--n-participants", dest="n_participants", type=positive_int, default=20, metavar="N",
                   help="number of participants (default 20)")
    p.add_argument("--participants", dest="n_participants", type=positive_int, action=DeprecatedAlias,
                   new="--n-participants")
    p.add_argument("--sites", type=positive_int, default=4, help="number of acquisition sites (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed, same dataset (default 0)")
    p.add_argument("--nprocs", type=positive_int, default=1, help="worker processes (default 1)")
    p.add_argument("--maps-only", action="store_true",
                   help="write only the ground-truth GM maps and participants.tsv, no T1w (for training)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..synth import simulate_dataset

    out = simulate_dataset(args.out, participants=args.n_participants, sites=args.sites, seed=args.seed,
                           nprocs=args.nprocs, progress=True, maps_only=args.maps_only)
    print(f"synthetic BIDS dataset: {out}\nground truth: {out / 'derivatives' / 'ground-truth'}")
    return 0

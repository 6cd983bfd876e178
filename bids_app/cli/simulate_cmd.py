"""``vbm-predict simulate OUT``: write a synthetic BIDS cohort with ground truth (thin wrapper)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .parser import DeprecatedAlias, positive_int


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value!r}")
    return number

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="write a synthetic BIDS dataset (T1w heads with known grey matter) and its ground truth",
        description="Simulate T1w heads from real template anatomy with sex-dependent head size, "
        "age-related and MMSE-graded medial temporal atrophy (CN, MCI, AD), optional longitudinal sessions and "
        "site effects; ground truth under OUT/derivatives/ground-truth.",
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
    p.add_argument("--mci-fraction", type=_fraction, default=0.0, metavar="F",
                   help="share of MCI participants, atrophy between CN and AD (default 0: CN and AD only)")
    p.add_argument("--pmci-fraction", type=_fraction, default=0.5, metavar="F",
                   help="share of the MCI participants that convert to AD within 36 months (pMCI; default 0.5)")
    p.add_argument("--sessions", type=positive_int, default=None, metavar="K",
                   help="K longitudinal visits per participant, ses-M00, ses-M12, ... 12 months apart, with "
                   "sub-*/sub-*_sessions.tsv (default: one scan, no session folders)")
    p.add_argument("--t1w-mni", action="store_true",
                   help="also write the true skull-stripped T1w in MNI space (1 mm) to the ground truth: the "
                   "input of the sfcn family, so it can train on --maps-only cohorts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..synth import simulate_dataset

    out = simulate_dataset(args.out, participants=args.n_participants, sites=args.sites, seed=args.seed,
                           nprocs=args.nprocs, progress=True, maps_only=args.maps_only,
                           mci_fraction=args.mci_fraction, pmci_fraction=args.pmci_fraction, sessions=args.sessions,
                           t1w_mni=args.t1w_mni)
    print(f"synthetic BIDS dataset: {out}\nground truth: {out / 'derivatives' / 'ground-truth'}")
    return 0

"""``vbm-predict demo OUT``: the whole app on a fresh machine, with nothing but this package.

Simulates a small synthetic BIDS dataset (CN, MCI and AD participants), runs the participant level
(ANTs backend, the bundled demo models of every family, which were trained on synthetic data and are
not for any real use) and the group level, then prints where the tables and reports are. About
2.5-5 minutes of ANTs preprocessing per T1w on a 2-core CPU, two T1w at a time.

The defaults (4 participants, seed 37, 25% MCI) give both sexes and CN, MCI and AD, so every
demo model's group metrics have both classes to work with, and men whose true GM volume is larger
than the women's, as in the simulator's population (sex there is head size; seed 31, the earlier
default, drew two older, atrophied men with less GM than both women, a draw no GM-volume reader can
sex right: docs/demo_models.md). The demo stays within 15 minutes on the 2-core development machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InstallationError
from .parser import DeprecatedAlias, positive_int

__all__ = ["add_parser", "run", "demo_models_dir", "DEMO_PACKAGES"]

#: the bundled demo packages, one per family (folder names under ``bids_app/data/demo_models``)
DEMO_PACKAGES: tuple[str, ...] = ("sex", "ad", "cnn_ad", "liu_mox_cn_mci_ad", "sfcn_brain_age", "regional_ad")


def demo_models_dir() -> Path:
    """The bundled demo model packages (:data:`DEMO_PACKAGES`) inside the installed package."""
    from ..workflows import DEMO_MODELS

    return DEMO_MODELS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="simulate a small dataset and run the participant and group levels on it (demo models)",
        description="End-to-end demonstration: synthetic BIDS data -> ANTs preprocessing -> the demo models of every "
        "family (BrainImageNet sex and AD, CNN-5 AD, Liu/MOX CN/MCI/AD, SFCN brain age, regional-volume AD; trained "
        "on synthetic data; not for any real use) -> group table, evaluation and reports under OUT.",
    )
    p.add_argument("out", type=Path, help="folder for the demo (bids/, derivatives/vbm-predict/, work/)")
    p.add_argument("--n-participants", dest="n_participants", type=positive_int, default=4, metavar="N",
                   help="synthetic participants (default 4; each adds 2.5-5 minutes of ANTs preprocessing, two at a "
                   "time on 2 cores)")
    p.add_argument("--participants", dest="n_participants", type=positive_int, action=DeprecatedAlias,
                   new="--n-participants")
    p.add_argument("--seed", type=int, default=37,
                   help="simulation seed (default 37: with 4 participants, both sexes, the men with more GM, and CN, "
                   "MCI and AD)")
    p.add_argument("--mci-fraction", type=float, default=0.25, metavar="F",
                   help="share of MCI participants (default 0.25)")
    p.add_argument("--nprocs", type=positive_int, default=2)
    p.add_argument("--explain", choices=("none", "occlusion", "gradcam", "all"), default="all",
                   help="explanation maps (default all: Grad-CAM and occlusion)")
    p.add_argument("--occlusion-step", type=float, default=18.0, metavar="MM",
                   help="occlusion step in mm; the demo's default 18 mm (one cube, 4x fewer positions than the "
                        "paper's 9 mm) keeps the demo short")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..synth import simulate_dataset
    from ..workflows import run_group_level, run_participant_level  # lazy: heavy imports

    out = Path(args.out).resolve()
    bids_dir, output_dir, work_dir = out / "bids", out / "derivatives" / "vbm-predict", out / "work"
    models = demo_models_dir()
    missing = [name for name in DEMO_PACKAGES if not (models / name / "model.json").is_file()]
    if missing:
        raise InstallationError(
            f"the demo models ({', '.join(missing)}) are missing from {models}; reinstall vbm-predict"
        )
    if not (bids_dir / "dataset_description.json").is_file():
        n = args.n_participants
        print(f"[1/3] simulating {n} synthetic participants in {bids_dir}")
        simulate_dataset(bids_dir, participants=n, sites=min(2, n), seed=args.seed, nprocs=args.nprocs, progress=True,
                         mci_fraction=args.mci_fraction)
    print(f"[2/3] participant level (ANTs preprocessing, {len(DEMO_PACKAGES)} demo models from {models})")
    from ..explain import ExplainOptions

    explain = ExplainOptions.from_choice(args.explain, step_mm=args.occlusion_step) if args.explain != "none" else None
    summary = run_participant_level(bids_dir, output_dir, work_dir=work_dir, preproc="ants", models=models,
                                    nprocs=args.nprocs, explain=explain)
    print(summary.text())
    code = summary.exit_code
    if not summary.succeeded:
        print(f"every T1w failed; see {output_dir / 'logs'}")
        return code
    print("[3/3] group level")
    run_group_level(bids_dir, output_dir)
    print("\nDone. Outputs (demo models: trained on synthetic data; not for any real use):")
    patterns = ("group_*.tsv", "sub-*/**/*_predictions.tsv", "sub-*/**/*_desc-occlusionAD_explanation.nii.gz",
                "**/*.html")
    for pattern in patterns:
        for f in sorted(output_dir.glob(pattern)):
            print(f"  {f}")
    print(f"  ground truth of the synthetic data: {bids_dir / 'derivatives' / 'ground-truth'}")
    return code

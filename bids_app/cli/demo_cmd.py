"""``vbm-predict demo OUT``: the whole app on a fresh machine, with nothing but this package.

Simulates a small synthetic BIDS dataset, runs the participant level (ANTs backend, the bundled
demo models, which were trained on synthetic data and are not for any real use) and the group
level, then prints where the tables and reports are. About 2.5 minutes per T1w on a 2-core CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InstallationError
from .parser import DeprecatedAlias, positive_int

__all__ = ["add_parser", "run", "demo_models_dir"]


def demo_models_dir() -> Path:
    """The bundled demo model packages (``sex`` and ``ad``) inside the installed package."""
    from ..workflows import DEMO_MODELS

    return DEMO_MODELS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="simulate a small dataset and run the participant and group levels on it (demo models)",
        description="End-to-end demonstration: synthetic BIDS data -> ANTs preprocessing -> demo sex / AD models "
        "(trained on synthetic data; not for any real use) -> group table and reports under OUT.",
    )
    p.add_argument("out", type=Path, help="folder for the demo (bids/, derivatives/vbm-predict/, work/)")
    p.add_argument("--n-participants", dest="n_participants", type=positive_int, default=3, metavar="N",
                   help="synthetic participants (default 3)")
    p.add_argument("--participants", dest="n_participants", type=positive_int, action=DeprecatedAlias,
                   new="--n-participants")
    p.add_argument("--seed", type=int, default=0)
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
    missing = [task for task in ("sex", "ad") if not (models / task / "model.json").is_file()]
    if missing:
        raise InstallationError(
            f"the demo models ({', '.join(missing)}) are missing from {models}; reinstall vbm-predict"
        )
    if not (bids_dir / "dataset_description.json").is_file():
        n = args.n_participants
        print(f"[1/3] simulating {n} synthetic participants in {bids_dir}")
        simulate_dataset(bids_dir, participants=n, sites=min(2, n), seed=args.seed, nprocs=args.nprocs, progress=True)
    print(f"[2/3] participant level (ANTs preprocessing, demo models from {models})")
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

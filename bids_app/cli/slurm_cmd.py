"""``vbm-predict slurm BIDS OUT [BIDS-App options]``: a SLURM job array for the participant level.

Writes the scripts (see :mod:`bids_app.slurm`), prints where they are, and with ``--submit``
submits them; the options after ``BIDS OUT`` are those of the participant level.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["add_parser", "run"]


def _slurm_options(p: argparse.ArgumentParser) -> None:
    from .parser import positive_int

    g = p.add_argument_group("SLURM")
    g.add_argument("--per-t1w", action="store_true", help="one array task per T1w (default: one per participant)")
    g.add_argument("--submit", action="store_true", help="submit with sbatch (default: only write the scripts)")
    g.add_argument("--image", type=Path, default=None, metavar="SIF",
                   help="run every task in this Apptainer image (apptainer run --cleanenv, folders bound); "
                        "default: this installed environment")
    g.add_argument("--partition", default=None)
    g.add_argument("--account", default=None)
    g.add_argument("--array-limit", type=positive_int, default=None, metavar="N", help="at most N tasks at once (%%N)")
    g.add_argument("--cpus-per-task", type=positive_int, default=None, help="default: measured figure per backend")
    g.add_argument("--task-mem-gb", type=float, default=None, help="memory per task in GB; default: measured figure")
    g.add_argument("--task-minutes", type=positive_int, default=None, help="time limit per task; default: measured")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "slurm",
        help="write (and --submit) a SLURM job array for the participant level, then the group level",
        description="Write an sbatch job array (one task per participant, or per T1w) and a group-level job "
                    "that runs after it (afterany). Rerun the same command after failures: only T1w without "
                    "outputs get tasks. Options after BIDS OUT are the participant level's (vbm-predict --help).",
    )
    _slurm_options(p)
    p.add_argument("arguments", nargs=argparse.REMAINDER, metavar="BIDS OUT [BIDS-App options]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..derivatives import init_dataset
    from ..discovery import discover_units, read_labels
    from ..errors import UsageError
    from ..preproc import resolve_backend_name
    from ..slurm import SlurmOptions, app_arguments, submit, write_slurm_job
    from ..workflows import check_paths, resolve_models_dir, select_t1w
    from .parser import build_parser

    own = argparse.ArgumentParser(add_help=False)
    _slurm_options(own)
    extra, rest = own.parse_known_args(args.arguments)
    for key, value in vars(extra).items():  # SLURM options given after BIDS OUT
        if value not in (None, False):
            setattr(args, key, value)
    if len(rest) < 2 or rest[0].startswith("-") or rest[1].startswith("-"):
        raise UsageError("usage: vbm-predict slurm BIDS OUT [BIDS-App options] (see vbm-predict slurm --help)")
    app = build_parser().parse_args([rest[0], rest[1], "participant", *rest[2:]])
    bids_dir, output_dir = app.bids_dir.resolve(), app.output_dir.resolve()
    work_dir = (app.work_dir or output_dir / ".work").resolve()
    check_paths(bids_dir, output_dir, work_dir)
    if not app.skip_bids_validation:  # once here instead of in every task
        from ..validation import validate_dataset

        if not (bids_dir / "dataset_description.json").is_file():
            discover_units(bids_dir)
        validate_dataset(bids_dir)
    units = discover_units(bids_dir, participant_labels=read_labels(app.participant_label, "sub"),
                           session_labels=read_labels(app.session_label, "ses"))
    if app.t1w:
        units = select_t1w(units, bids_dir, app.t1w)
    resolve_models_dir(app.models)  # a missing models folder is an error now, not in every task
    backend = resolve_backend_name(app.preproc, derivatives_dir=app.derivatives)
    init_dataset(output_dir, bids_dir)  # once, before many tasks start at the same moment
    binds = [(Path(p).resolve(), "ro") for p in (app.derivatives, app.dartel_template) if p is not None]
    if app.models not in (None, "demo"):
        binds.append((Path(app.models).resolve(), "ro"))
    options = SlurmOptions(per_t1w=args.per_t1w, image=args.image.resolve() if args.image else None,
                           partition=args.partition, account=args.account, array_limit=args.array_limit,
                           cpus_per_task=args.cpus_per_task, mem_gb_per_task=args.task_mem_gb,
                           minutes_per_task=args.task_minutes)
    job = write_slurm_job(bids_dir, output_dir, units, app_arguments(app), backend=backend, options=options,
                          work_dir=work_dir, bind=binds, stamp=time.strftime("%Y%m%dT%H%M%S"))
    if args.submit:
        job = submit(job)
    print(job.text())
    return 0

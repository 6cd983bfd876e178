"""The BIDS-App argument parser (``bids_dir output_dir {participant,group}`` plus options).

Subcommands for tools beyond the BIDS-App call (``models``, ``simulate``, ``train``, ``finetune``,
``demo``) live in their own ``*_cmd.py`` modules and are recognised by :mod:`bids_app.cli.main`
from the first argument.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__

__all__ = ["build_parser", "positive_int", "ANALYSIS_LEVELS"]

ANALYSIS_LEVELS = ("participant", "group")


def _existing_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is not an existing directory")
    return path.absolute()


def _threshold(value: str) -> float:
    try:
        t = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a threshold must be a number; got {value!r}") from None
    if not 0.0 < t < 1.0:
        raise argparse.ArgumentTypeError(f"a threshold must lie strictly between 0 and 1; got {t}")
    return t


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {value!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {x}")
    return x


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number; got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1; got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vbm-predict",
        description=(
            "VBM grey-matter maps and sex / Alzheimer's disease predictions from T1w MRI "
            "(BIDS App). Research use only. Other commands: vbm-predict {models,simulate,train,"
            "finetune,demo,slurm} --help"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="the BIDS dataset (read only; never written to)")
    parser.add_argument("output_dir", type=Path, help="where the BIDS-Derivatives outputs go")
    # plain str, checked in main(): an unknown level must exit with code 17, not argparse's 2
    parser.add_argument("analysis_level", metavar="{participant,group}", help="participant or group")
    parser.add_argument("--version", action="version", version=f"vbm-predict {__version__}")

    sel = parser.add_argument_group("selecting data")
    sel.add_argument(
        "--participant-label", "--participant_label", dest="participant_label", nargs="+", default=[],
        metavar="LABEL", help="participants to process (sub- prefix optional) or files with one label per line",
    )
    sel.add_argument(
        "--session-label", "--session_label", dest="session_label", nargs="+", default=[],
        metavar="LABEL", help="sessions to process (ses- prefix optional)",
    )
    sel.add_argument("--skip-bids-validation", "--skip_bids_validation", dest="skip_bids_validation",
                     action="store_true", help="do not run the BIDS validator on the input")

    proc = parser.add_argument_group("processing")
    proc.add_argument("--preproc", choices=("auto", "clinica", "ants", "derivatives"), default="auto",
                      help="VBM preprocessing backend; auto = derivatives if --derivatives, clinica "
                           "when SPM standalone is configured, else ants")
    proc.add_argument("--derivatives", type=_existing_dir, default=None, metavar="DIR",
                      help="reuse GM maps from a Clinica CAPS, BIDS-derivatives or DPARSF directory")
    proc.add_argument("--dartel-template", type=_existing_dir, default=None, metavar="DIR",
                      help="Clinica backend: an existing DARTEL group template (7 files) to register to")
    proc.add_argument("--models", default=None, metavar="DIR",
                      help="directory of model packages; 'demo' = synthetic demo models; default: "
                           "$VBM_PREDICT_MODELS (set in the container)")
    proc.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the models run")
    proc.add_argument("--ad-threshold", type=_threshold, default=0.5,
                      help="AD decision threshold (the authors suggest 0.3 for screening)")
    proc.add_argument("--no-reports", dest="reports", action="store_false", help="skip HTML reports")

    res = parser.add_argument_group("resources")
    res.add_argument("-w", "--work-dir", type=Path, default=None, metavar="DIR",
                     help="scratch directory (resumable); default: <output_dir>/../.<name>-work")
    res.add_argument("--nprocs", "--n_cpus", "--nthreads", "--n-cpus", dest="nprocs", type=positive_int, default=None,
                     help="CPUs the whole run may use (default: all usable CPUs); up to nprocs / omp-nthreads "
                          "T1w run at once")
    res.add_argument("--omp-nthreads", "--omp_nthreads", dest="omp_nthreads", type=positive_int, default=None,
                     help="threads of one T1w (ANTs and torch); default: 1 when there are at least as many "
                          "T1w as CPUs, else the CPUs shared out among the T1w")
    res.add_argument("--mem-gb", "--mem_gb", "--mem", dest="mem_gb", type=_positive_float, default=None,
                     help="memory budget in GB: a T1w is not started when it would exceed it (default: 90%% "
                          "of the available memory)")
    sel.add_argument("--t1w", dest="t1w", action="append", default=[], metavar="FILE",
                     help="process only this T1w file (relative to bids_dir; repeatable); used by "
                          "'vbm-predict slurm --per-t1w' tasks")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output (-v info, -vv debug)")
    return parser

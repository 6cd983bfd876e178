"""The BIDS-App argument parser (``bids_dir output_dir {participant,group}`` plus options).

Subcommands for tools beyond the BIDS-App call (``models``, ``simulate``, ``train``, ``finetune``,
``demo``) live in their own ``*_cmd.py`` modules and are recognised by :mod:`bids_app.cli.main`
from the first argument.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .. import __version__
from ..types import ANALYSIS_LEVELS, PREPROC_CHOICES

__all__ = ["build_parser", "positive_int", "positive_float", "DeprecatedAlias", "device_name", "explain_options",
           "ANALYSIS_LEVELS"]


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


def device_name(value: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N (whether the machine has it is checked at the start of
    the run, by :func:`bids_app.models.device.resolve_device`)."""
    name = value.strip().lower()
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N; got {value!r}")


def _positive_mm(value: str) -> float:
    try:
        mm = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a length in mm; got {value!r}") from None
    n = round(mm / 1.5)
    if n < 1 or abs(n * 1.5 - mm) > 1e-6:
        raise argparse.ArgumentTypeError(f"expected a positive multiple of the 1.5 mm grid spacing; got {value!r}")
    return mm


def explain_options(args: argparse.Namespace) -> Any:
    """The :class:`bids_app.explain.ExplainOptions` of parsed arguments, or None for ``--explain none``."""
    if getattr(args, "explain", "none") == "none":
        return None
    from ..explain import ExplainOptions

    return ExplainOptions.from_choice(
        args.explain, cube_mm=args.occlusion_cube, step_mm=args.occlusion_step, baseline=args.occlusion_baseline,
        batch_size=args.occlusion_batch, gradcam_layer=args.gradcam_layer, percentile=args.gradcam_percentile,
        sd_k=args.gradcam_sd_k,
    )


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number; got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1; got {n}")
    return n


def positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {value!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0; got {value!r}")
    return x


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores like the new one and warns, naming the new spelling.

    ``parser.add_argument("--old", dest="new", action=DeprecatedAlias, new="--new", type=...)``;
    the alias is hidden from ``--help``.
    """

    def __init__(self, option_strings, dest, *, new: str, **kwargs) -> None:
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        # printed, not logged: parsing happens before the log handler is set up
        print(f"vbm-predict: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


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
        metavar="LABEL", help="participants to process (sub- prefix optional); @FILE reads one label per line "
                              "of FILE (a plain value is always a label, never a file name)",
    )
    sel.add_argument(
        "--session-label", "--session_label", dest="session_label", nargs="+", default=[],
        metavar="LABEL", help="sessions to process (ses- prefix optional); @FILE reads them from FILE",
    )
    sel.add_argument(
        "--bids-filter-file", "--bids_filter_file", dest="bids_filter_file", type=Path, default=None,
        metavar="FILE", help='JSON of pybids filters for the T1w images, e.g. {"t1w": {"acquisition": "mprage", '
                             '"reconstruction": null}} (null: entity absent)',
    )
    sel.add_argument("--skip-bids-validation", "--skip_bids_validation", dest="skip_bids_validation",
                     action="store_true", help="do not run the BIDS validator on the input")

    proc = parser.add_argument_group("processing")
    proc.add_argument("--preproc", choices=PREPROC_CHOICES, default="auto",
                      help="VBM preprocessing backend; auto = derivatives if --derivatives, clinica "
                           "when SPM standalone is configured, else ants")
    proc.add_argument("--derivatives", type=_existing_dir, default=None, metavar="DIR",
                      help="reuse GM maps from a Clinica CAPS, BIDS-derivatives or DPARSF directory")
    proc.add_argument("--dartel-template", type=_existing_dir, default=None, metavar="DIR",
                      help="Clinica backend: an existing DARTEL group template (7 files) to register to")
    proc.add_argument("--models", default=None, metavar="DIR",
                      help="directory of model packages; 'demo' = synthetic demo models; default: "
                           "$VBM_PREDICT_MODELS (set in the container)")
    proc.add_argument("--device", type=device_name, default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                      help="where the models run (checked before any preprocessing)")
    proc.add_argument("--ad-threshold", type=_threshold, default=0.5,
                      help="AD decision threshold (the authors suggest 0.3 for screening)")
    proc.add_argument("--no-reports", dest="reports", action="store_false", help="skip HTML reports")

    exp = parser.add_argument_group("explanations (maps of where a score came from)")
    exp.add_argument("--explain", choices=("none", "occlusion", "gradcam", "all"), default="none",
                     help="explanation maps for every model: occlusion (score drop under a sliding cube), "
                          "Grad-CAM at the stem output with thresholded variants, or both")
    exp.add_argument("--occlusion-cube", type=_positive_mm, default=18.0, metavar="MM",
                     help="edge of the occluding cube in mm (a multiple of the 1.5 mm grid)")
    exp.add_argument("--occlusion-step", type=_positive_mm, default=9.0, metavar="MM",
                     help="step between cube positions in mm (a multiple of 1.5 mm)")
    exp.add_argument("--occlusion-baseline", type=float, default=0.0, metavar="V",
                     help="value the occluded voxels are set to (the masked input is 0 outside the brain)")
    exp.add_argument("--occlusion-batch", type=positive_int, default=16, metavar="N",
                     help="window positions recomputed together (memory vs speed)")
    exp.add_argument("--gradcam-layer", default=None, metavar="NAME",
                     help="layer for Grad-CAM; default: the stem output (concatenation after StemEnd)")
    exp.add_argument("--gradcam-percentile", type=float, default=95.0, metavar="P",
                     help="percentile of the thresholded Grad-CAM map (inside the brain mask)")
    exp.add_argument("--gradcam-sd-k", type=float, default=1.0, metavar="K",
                     help="k of the mean + k SD threshold of the Grad-CAM map")

    res = parser.add_argument_group("resources")
    res.add_argument("-w", "--work-dir", type=Path, default=None, metavar="DIR",
                     help="scratch directory (resumable; per-T1w scratch removed once its outputs are "
                          "written); default: <output_dir>/.work")
    res.add_argument("--nprocs", "--n_cpus", "--nthreads", "--n-cpus", dest="nprocs", type=positive_int, default=None,
                     help="CPUs the whole run may use (default: all usable CPUs); up to nprocs / omp-nthreads "
                          "T1w run at once")
    res.add_argument("--omp-nthreads", "--omp_nthreads", dest="omp_nthreads", type=positive_int, default=None,
                     help="threads of one T1w (ANTs and torch); default: 1 when there are at least as many "
                          "T1w as CPUs, else the CPUs shared out among the T1w")
    res.add_argument("--mem-gb", "--mem_gb", "--mem", dest="mem_gb", type=positive_float, default=None,
                     help="memory budget in GB: a T1w is not started when it would exceed it (default: 90%% "
                          "of the available memory)")
    sel.add_argument("--t1w", dest="t1w", action="append", default=[], metavar="FILE",
                     help="process only this T1w file (relative to bids_dir; repeatable); used by "
                          "'vbm-predict slurm --per-t1w' tasks")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output (-v info, -vv debug)")
    return parser

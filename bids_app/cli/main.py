"""``vbm-predict`` / ``run.py``: dispatch only. Errors become BIDS-Apps exit codes here, once.

Dispatch rule: the first argument names a tool command (``models``, ``simulate``, ``train``,
``finetune``, ``demo``) unless the call has the BIDS-App shape, i.e. the first argument is an
existing directory and the third is an analysis level (``participant`` / ``group``). So a BIDS
dataset that happens to be called ``demo`` or ``models`` still runs as ``vbm-predict demo out
participant``; ``./demo`` always means the directory.

Errors: a :class:`~bids_app.errors.VBMPredictError` prints one line (``vbm-predict: error: ...``)
and returns its exit code; argparse's usage errors return 64; anything else is an internal error
(70) with a one-line message. The traceback is shown only with ``-vv``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Sequence

from ..errors import EXIT_CANT_CREATE, EXIT_SOFTWARE, EXIT_UNKNOWN_LEVEL, EXIT_USAGE, VBMPredictError
from ..types import ANALYSIS_LEVELS
from .parser import build_parser

__all__ = ["main", "SUBCOMMANDS", "is_subcommand"]

#: extra commands -> module implementing ``add_parser(subparsers)`` and ``run(args)``
SUBCOMMANDS = {
    "models": "bids_app.cli.models_cmd",
    "simulate": "bids_app.cli.simulate_cmd",
    "train": "bids_app.cli.train_cmd",
    "finetune": "bids_app.cli.train_cmd",
    "demo": "bids_app.cli.demo_cmd",
    "slurm": "bids_app.cli.slurm_cmd",
}

_log = logging.getLogger("bids_app")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not when the handler was made:
    a caller that swaps stderr and closes the old one (pytest's capture, notebooks) would otherwise
    leave a handler that fails on every later log call."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property ignores that
        pass


def setup_logging(verbosity: int) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("bids_app")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)  # per-T1w logs always get everything
    handler.setLevel(level)


def setup_environment() -> None:
    """Caches go to a writable temporary place (Apptainer: read-only image, maybe no HOME)."""
    cache = os.path.join(tempfile.gettempdir(), f"vbm-predict-cache-{os.getuid()}")
    os.makedirs(cache, exist_ok=True)
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(cache, "matplotlib"))
    os.environ.setdefault("TORCH_HOME", os.path.join(cache, "torch"))
    os.environ.setdefault("MCR_CACHE_ROOT", os.path.join(cache, "mcr"))
    os.environ.setdefault("MCR_INHIBIT_CTF_LOCK", "1")
    os.environ.setdefault("NILEARN_DATA", os.path.join(cache, "nilearn_data"))
    os.environ.setdefault("VBM_PREDICT_CACHE", os.path.join(cache, "vbm-predict"))
    import matplotlib

    matplotlib.use("Agg")


def is_subcommand(argv: Sequence[str]) -> bool:
    """True when ``argv`` calls a tool command rather than the BIDS App (see the module docstring)."""
    if not argv or argv[0] not in SUBCOMMANDS:
        return False
    bids_app_shape = len(argv) >= 3 and Path(argv[0]).is_dir() and argv[2] in ANALYSIS_LEVELS
    return not bids_app_shape


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    """``-v`` on every leaf command's parser (``simulate -v ...``, ``models score -vv ...``)."""
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not nested:
        parser.add_argument("-v", "--verbose", action="count", default=0, help="more output (-v info, -vv debug)")
    for action in nested:
        for child in dict.fromkeys(action.choices.values()):
            _add_verbose(child)


def _verbosity(argv: Sequence[str]) -> int:
    """``-v`` count read from the raw arguments, for errors raised before parsing ends."""
    count = 0
    for arg in argv:
        if arg == "--verbose":
            count += 1
        elif arg.startswith("-") and not arg.startswith("--") and set(arg[1:]) == {"v"}:
            count += len(arg) - 1
    return count


def _run_subcommand(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="vbm-predict")
    sub = parser.add_subparsers(dest="command", required=True)
    for module_name in dict.fromkeys(SUBCOMMANDS.values()):
        importlib.import_module(module_name).add_parser(sub)
    for child in dict.fromkeys(sub.choices.values()):
        _add_verbose(child)
    args = parser.parse_args(argv)
    setup_logging(max(getattr(args, "verbose", 0), 1))
    return int(args.func(args))


def _run_bids_app(argv: Sequence[str]) -> int:
    from ..workflows import run_group_level, run_participant_level
    from .parser import explain_options

    if "--version" in argv:
        from ..versions import version_report

        print(version_report())  # the app, the model packages, the preprocessing tools
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose + 1)  # progress (INFO) is shown by default
    if args.analysis_level not in ANALYSIS_LEVELS:
        print(f"vbm-predict: unknown analysis level {args.analysis_level!r}; use participant or group", file=sys.stderr)
        return EXIT_UNKNOWN_LEVEL
    if args.analysis_level == "participant":
        from ..discovery import load_bids_filters, read_labels

        summary = run_participant_level(
            args.bids_dir,
            args.output_dir,
            participant_labels=read_labels(args.participant_label, "sub"),
            session_labels=read_labels(args.session_label, "ses"),
            bids_filters=load_bids_filters(args.bids_filter_file),
            work_dir=args.work_dir,
            preproc=args.preproc,
            derivatives_dir=args.derivatives,
            models=args.models,
            device=args.device,
            ad_threshold=args.ad_threshold,
            nprocs=args.nprocs,
            omp_nthreads=args.omp_nthreads,
            mem_gb=args.mem_gb,
            t1w_files=args.t1w,
            skip_validation=args.skip_bids_validation,
            dartel_template=args.dartel_template,
            write_report=args.reports,
            explain=explain_options(args),
        )
        print(summary.text())
        return summary.exit_code
    result = run_group_level(args.bids_dir, args.output_dir)
    print(getattr(result, "text", lambda: f"Group outputs: {args.output_dir}")())
    return int(getattr(result, "exit_code", 0))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        setup_environment()
    except OSError as exc:  # e.g. `docker run --read-only` without `--tmpfs /tmp`
        print(f"vbm-predict: error: no writable temporary directory ({exc}); give the container one "
              "(docker run --tmpfs /tmp) or set TMPDIR to a writable folder", file=sys.stderr)
        return EXIT_CANT_CREATE
    debug = _verbosity(argv) >= 2
    try:
        if is_subcommand(argv):
            return _run_subcommand(argv)
        return _run_bids_app(argv)
    except VBMPredictError as exc:
        if debug:
            traceback.print_exc(file=sys.stderr)
        print(f"vbm-predict: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # argparse: usage errors are 2 there, 64 in the BIDS-Apps spec
        code = exc.code if isinstance(exc.code, int) else EXIT_USAGE
        return EXIT_USAGE if code == 2 else code
    except KeyboardInterrupt:
        print("vbm-predict: interrupted; run again with the same work dir to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user error: one line, the traceback with -vv
        if debug:
            traceback.print_exc(file=sys.stderr)
        hint = "" if debug else "; run again with -vv for the traceback"
        print(f"vbm-predict: internal error: {type(exc).__name__}: {exc}{hint}", file=sys.stderr)
        return EXIT_SOFTWARE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

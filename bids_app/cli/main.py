"""``vbm-predict`` / ``run.py``: dispatch only. Errors become BIDS-Apps exit codes here, once."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
from typing import Sequence

from ..errors import EXIT_UNKNOWN_LEVEL, EXIT_USAGE, VBMPredictError
from .parser import ANALYSIS_LEVELS, build_parser

__all__ = ["main", "SUBCOMMANDS"]

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

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
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
    import matplotlib

    matplotlib.use("Agg")


def _run_subcommand(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="vbm-predict")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    for module_name in dict.fromkeys(SUBCOMMANDS.values()):
        importlib.import_module(module_name).add_parser(sub)
    args = parser.parse_args(argv)
    setup_logging(max(args.verbose, 1))
    return int(args.func(args))


def _run_bids_app(argv: Sequence[str]) -> int:
    from ..workflows import run_group_level, run_participant_level

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose + 1)  # progress (INFO) is shown by default
    if args.analysis_level not in ANALYSIS_LEVELS:
        print(f"vbm-predict: unknown analysis level {args.analysis_level!r}; use participant or group", file=sys.stderr)
        return EXIT_UNKNOWN_LEVEL
    if args.analysis_level == "participant":
        from ..discovery import read_labels

        summary = run_participant_level(
            args.bids_dir,
            args.output_dir,
            participant_labels=read_labels(args.participant_label, "sub"),
            session_labels=read_labels(args.session_label, "ses"),
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
        )
        print(summary.text())
        return summary.exit_code
    result = run_group_level(args.bids_dir, args.output_dir)
    print(getattr(result, "text", lambda: f"Group outputs: {args.output_dir}")())
    return int(getattr(result, "exit_code", 0))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_environment()
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return _run_subcommand(argv)
        return _run_bids_app(argv)
    except VBMPredictError as exc:
        _log.debug("error details", exc_info=True)
        print(f"vbm-predict: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # argparse: usage errors are 2 there, 64 in the BIDS-Apps spec
        code = exc.code if isinstance(exc.code, int) else EXIT_USAGE
        return EXIT_USAGE if code == 2 else code
    except KeyboardInterrupt:
        print("vbm-predict: interrupted; run again with the same work dir to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

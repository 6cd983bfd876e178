"""T1w per hour of the participant level: one T1w at a time vs the default process pool, side by side.

    python bench/parallel.py                         # ANTs backend, 4 simulated 1 mm T1w, 2 rounds
    python bench/parallel.py --units 2 --rounds 1 --backend derivatives   # a quick check of the machinery

Modes, each a fresh ``vbm-predict BIDS OUT participant`` process with its own output and work
folders, interleaved round by round so that a change in the machine's load hits every mode alike:

* ``sequential``      ``--nprocs 1``: one T1w at a time on one thread (the behaviour before the pool);
* ``sequential-2thr`` ``--nprocs 2 --omp-nthreads 2``: one T1w at a time on two threads;
* ``default``         no resource options: every usable CPU, the default threads per T1w.

It prints wall time, CPU time of the whole process tree, peak memory (the largest process of the
bench so far: ru_maxrss of reaped children), T1w per
hour per mode (median over rounds) and the ratio of each mode to ``sequential``; and whether each
mode's predictions tables and GM maps are identical to the ``sequential`` run's (equal thread
counts give equal results; different ITK thread counts may change registrations in the last
digits). The dataset is simulated by ``bids_app.synth`` (1 mm heads; demo models score them).
Target (issue 13): default >= 1.7x sequential on the 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = {
    "sequential": ["--nprocs", "1"],
    "sequential-2thr": ["--nprocs", "2", "--omp-nthreads", "2"],
    "default": [],
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6 if path.exists() else 0.0


def run_mode(name: str, bids: Path, base: Path, backend: str, rnd: int) -> dict:
    out, work = base / f"{name}-{rnd}" / "out", base / f"{name}-{rnd}" / "work"
    cmd = [sys.executable, "-m", "bids_app", str(bids), str(out), "participant", "--preproc", backend,
           "--models", "demo", "--skip-bids-validation", "--no-reports", "-w", str(work), *MODES[name]]
    if backend == "derivatives":
        cmd += ["--derivatives", str(bids / "derivatives" / "ground-truth")]
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "peak_gb": after.ru_maxrss / 1024**2, "out": out, "work": work,
            "disk_out_mb": _du_mb(out), "disk_work_mb": _du_mb(work)}


def same_outputs(a: Path, b: Path) -> bool:
    import nibabel as nib
    import numpy as np

    files_a = sorted(p.relative_to(a) for p in a.rglob("sub-*/**/*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("sub-*/**/*") if p.is_file())
    if files_a != files_b:
        return False
    for rel in files_a:
        if rel.name.endswith(".tsv") and (a / rel).read_bytes() != (b / rel).read_bytes():
            return False
        if rel.name.endswith(".nii.gz") and not np.array_equal(
            nib.load(a / rel).get_fdata(), nib.load(b / rel).get_fdata()
        ):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=4, help="simulated T1w (default 4)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backend", choices=("ants", "derivatives"), default="ants")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--keep", type=Path, default=None, help="work below this folder and keep it")
    args = parser.parse_args(argv)

    from bids_app.parallel import available_cpus
    from bids_app.synth import simulate_dataset

    base = Path(tempfile.mkdtemp(prefix="bench-parallel-", dir=args.keep))
    try:
        bids = simulate_dataset(base / "bids", participants=args.units, sites=1, seed=0, nprocs=min(2, args.units))
        load = os.getloadavg()
        print(f"CPU: {cpu_model()} ({available_cpus()} usable); {args.units} T1w, backend {args.backend}, "
              f"{args.rounds} round(s); load before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
        runs: dict[str, list[dict]] = {m: [] for m in args.modes}
        for rnd in range(args.rounds):
            for mode in args.modes:
                r = run_mode(mode, bids, base, args.backend, rnd)
                runs[mode].append(r)
                print(f"  round {rnd + 1} {mode:<16} wall {r['wall']:7.1f} s  CPU {r['cpu']:7.1f} s  "
                      f"peak {r['peak_gb']:.2f} GB  load {os.getloadavg()[0]:.2f}", flush=True)
        print(f"{'mode':<16} {'median wall s':>13} {'T1w/hour':>9} {'vs sequential':>13} {'CPU s/T1w':>10} "
              f"{'out MB/T1w':>10} {'work MB/T1w':>11} {'identical':>9}")
        ref = runs.get("sequential")
        base_rate = None
        for mode, rs in runs.items():
            wall = statistics.median(r["wall"] for r in rs)
            rate = args.units / wall * 3600
            base_rate = base_rate or (rate if mode == "sequential" else None)
            ratio = f"{rate / base_rate:.2f}x" if base_rate else "n/a"
            identical = "ref" if mode == "sequential" else (
                "yes" if ref and all(same_outputs(ref[0]["out"], r["out"]) for r in rs) else "no")
            cpu = statistics.median(r["cpu"] for r in rs) / args.units
            out_mb, work_mb = rs[0]["disk_out_mb"] / args.units, rs[0]["disk_work_mb"] / args.units
            print(f"{mode:<16} {wall:>13.1f} {rate:>9.1f} {ratio:>13} {cpu:>10.1f} {out_mb:>10.1f} {work_mb:>11.1f} "
                  f"{identical:>9}")
        load = os.getloadavg()
        print(f"load after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

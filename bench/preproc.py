"""Benchmark of the SPM-free ANTs backend: speed per 1 mm T1w and fidelity against known truth.

    python bench/preproc.py [--work DIR] [--repeats N] [--threads 2] [--no-colin]

What it runs (each run in a fresh process and a fresh work dir, so wall time and peak memory are those
of one T1w from scratch):

* two 1 mm phantoms of the same subject (bids_app.synth.phantom): ``control`` and ``atrophy``
  (a local contraction at the AAL hippocampi, strength 0.3: about 20% of the native hippocampal GM
  volume removed; the injected loss is measured on the phantom);
* the real Colin27 head (Debian mricron-data ``ch2.nii.gz``) when installed.

What it prints: wall time and peak RSS per run with their medians; for the phantoms, GMD vs true
GM (Pearson r and Dice at 0.5 in the SPM-grid brain mask), total GM volume (GMV sum and native
segmentation) vs the true native GM volume, the Jacobian bookkeeping ratio, and the hippocampal GMV
loss between control and atrophy vs the injected loss; the QC metrics of every map. Figures are kept
in docs/preprocessing.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLIN = Path("/usr/share/mricron/templates/ch2.nii.gz")


def _one(t1: Path, work: Path, threads: int, out: Path) -> None:
    """Child process: one backend run; writes maps + timing + peak RSS."""
    import numpy as np

    from bids_app.preproc.ants import AntsBackend
    from bids_app.qc import compute_qc
    from bids_app.types import T1wUnit

    t0 = time.perf_counter()
    maps = AntsBackend(nprocs=threads).run(T1wUnit(t1, {"sub": "bench"}), work)
    wall = time.perf_counter() - t0
    qc = compute_qc(maps)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    peak_mb = ru.ru_maxrss / 1024.0
    cpu_s = ru.ru_utime + ru.ru_stime
    np.savez_compressed(out.with_suffix(".npz"), gmd=maps.gmd, gmv=maps.gmv)
    out.write_text(
        json.dumps(
            {
                "wall_s": wall,
                "peak_rss_mb": peak_mb,
                "cpu_s": cpu_s,
                "steps_s": maps.provenance["StepSeconds"],
                "qc": dict(qc.metrics),
                "qc_flags": list(qc.flags),
            }
        )
    )


def _run(name: str, t1: Path, base: Path, threads: int) -> dict:
    work = base / f"work-{name}"
    out = base / f"{name}.json"
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, __file__, "--one", str(t1), str(work), str(threads), str(out)]
    subprocess.run(cmd, check=True, env=env)
    res = json.loads(out.read_text())
    print(
        f"  {name:<16} wall {res['wall_s']:6.1f} s  CPU {res['cpu_s']:6.1f} s  peak {res['peak_rss_mb']:6.0f} MB  "
        f"load {os.getloadavg()[0]:.1f}  steps {res['steps_s']}",
        flush=True,
    )
    return res


def _fidelity(base: Path, phantoms: dict) -> dict:
    import numpy as np

    from bids_app.grid import SPM_VOXEL_VOLUME_MM3, brain_mask

    mask = brain_mask()
    out = {}
    for name, ph in phantoms.items():
        z = np.load(base / f"{name}.npz")
        gmd, gmv = z["gmd"], z["gmv"]
        truth = ph.true_gmd
        r = float(np.corrcoef(gmd[mask], truth[mask])[0, 1])
        a, b = gmd > 0.5, truth > 0.5
        dice = float(2 * (a & b).sum() / (a.sum() + b.sum()))
        gmv_ml = float(gmv.sum() * SPM_VOXEL_VOLUME_MM3 / 1000)
        res = json.loads((base / f"{name}.json").read_text())
        out[name] = {
            "gmd_r": r,
            "dice": dice,
            "gmv_ml": gmv_ml,
            "native_seg_ml": res["qc"]["native_gm_volume_ml"],
            "true_ml": ph.true_gm_ml,
            "gmv_err": gmv_ml / ph.true_gm_ml - 1,
            "seg_err": res["qc"]["native_gm_volume_ml"] / ph.true_gm_ml - 1,
            "mod_ratio": res["qc"]["modulation_volume_ratio"],
            "hip_gmv": float(gmv[ph.hippocampus].sum()),
            "hip_true": ph.true_hippocampal_gm_ml,
        }
    if "control" in out and "atrophy" in out:
        out["hippocampal_loss"] = {
            "measured": 1 - out["atrophy"]["hip_gmv"] / out["control"]["hip_gmv"],
            "injected": 1 - out["atrophy"]["hip_true"] / out["control"]["hip_true"],
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/vbm-bench-preproc"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="extra timing runs of the control phantom")
    ap.add_argument("--no-colin", action="store_true")
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        t1, work, threads, out = args.one
        _one(Path(t1), Path(work), int(threads), Path(out))
        return 0

    from bids_app.synth.phantom import make_phantom

    base = args.work
    base.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"ANTs backend benchmark: {args.threads} threads, {os.cpu_count()} CPUs, "
          f"load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")
    phantoms = {
        "control": make_phantom(base / "control.nii.gz", atrophy=0.0, seed=0),
        "atrophy": make_phantom(base / "atrophy.nii.gz", atrophy=0.3, seed=0),
    }
    print(f"phantoms: 1 mm, hippocampus from {phantoms['control'].hippocampus_source}")
    runs = {name: _run(name, ph.path, base, args.threads) for name, ph in phantoms.items()}
    for i in range(args.repeats - 1):
        runs[f"control-repeat{i + 1}"] = _run(f"control-repeat{i + 1}", phantoms["control"].path, base, args.threads)
    if COLIN.is_file() and not args.no_colin:
        runs["colin27"] = _run("colin27", COLIN, base, args.threads)
    walls = [r["wall_s"] for r in runs.values()]
    cpus = [r["cpu_s"] for r in runs.values()]
    peaks = [r["peak_rss_mb"] for r in runs.values()]
    load = os.getloadavg()
    print(f"median wall {statistics.median(walls):.1f} s per T1w (n={len(walls)}, min {min(walls):.1f}, "
          f"max {max(walls):.1f}); median CPU {statistics.median(cpus):.1f} s "
          f"(CPU / {args.threads} threads = {statistics.median(cpus) / args.threads:.1f} s, "
          f"the wall time an unloaded machine could reach); median peak RSS {statistics.median(peaks):.0f} MB; "
          f"load after {load[0]:.1f}")

    fid = _fidelity(base, phantoms)
    for name in phantoms:
        f = fid[name]
        print(
            f"{name:<8} GMD r {f['gmd_r']:.3f}  Dice@0.5 {f['dice']:.3f}  total GMV {f['gmv_ml']:.0f} ml "
            f"(native seg {f['native_seg_ml']:.0f} ml) vs true {f['true_ml']:.0f} ml: "
            f"GMV error {100 * f['gmv_err']:+.1f}%, seg error {100 * f['seg_err']:+.1f}%, "
            f"GMV/native ratio {f['mod_ratio']:.3f}"
        )
    if "hippocampal_loss" in fid:
        h = fid["hippocampal_loss"]
        print(f"hippocampal GMV loss: measured {100 * h['measured']:.1f}% for an injected {100 * h['injected']:.1f}%")
    for name, r in runs.items():
        q = r["qc"]
        print(
            f"QC {name:<16} gmv_template_correlation {q['gmv_template_correlation']:.3f}  "
            f"gm_template_dice {q['gm_template_dice']:.3f}  registration_t1_correlation "
            f"{q.get('registration_t1_correlation', float('nan')):.3f}  total_gmv_ml {q['total_gmv_ml']:.0f}  "
            f"flags {r['qc_flags'] or 'none'}"
        )
    (base / "summary.json").write_text(json.dumps({"runs": runs, "fidelity": fid}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

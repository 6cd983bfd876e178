#!/usr/bin/env python
"""Inference benchmark: one participant = 1 sex + 5 AD forward passes, side by side.

Builds the full-size BrainImageNet networks in tf-keras with random weights (non-trivial BN
statistics), saves them as full-model H5 files (one sex file, five AD folds, as published),
imports them with vbm-predict's importer, and times, each in its own subprocess (so peak memory
is per mode and TensorFlow never shares a process with the PyTorch runs):

* ``fp32``   PyTorch eager float32 (the baseline),
* ``auto``   the predictor's default path (what the app runs),
* other ``--modes`` of :func:`bids_app.models.predict` (``fast``, ``fused``, ``bf16``),
* ``tf-keras`` TensorFlow 2 + tf-keras running the same H5 files (the reference system's stack).

Modes run in ``--rounds`` interleaved rounds (fp32, fast, auto, tf-keras, fp32, fast, ...), each a
fresh process doing one untimed warm-up and ``--repeats`` timed participants, so that a slow
minute on a shared machine does not land on one mode only. It prints median seconds per
participant, ratios, peak RSS and the largest score difference from fp32 on a realistic input
(the MNI152 GM template on the SPM grid through ``bids_app.grid.make_model_input``, with a smooth
per-subject deformation of GM).

    python bench/inference.py [--rounds 3] [--repeats 1] [--threads N] [--workdir DIR] [--modes fp32 fast auto tf-keras]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SEX_FILE = "20200427_Phase4_FromScratch_Gender_IncepResN_lr01_AllIn.h5"
AD_FILES = [f"20200504_Phase4_Trans_AD_IncepResN_lr0003_Lfso_Fold{k}.h5" for k in range(5)]


def realistic_input(seed: int = 0) -> np.ndarray:
    """One model input (1 x 2 x 96 x 120 x 86) that looks like real GM maps."""
    from scipy import ndimage

    from bids_app import grid

    rng = np.random.default_rng(seed)
    gm = grid.template_gm().astype(np.float32)
    field = ndimage.gaussian_filter(rng.normal(0.0, 1.0, grid.SPM_SHAPE), 8).astype(np.float32)
    field /= np.abs(field).max() + 1e-6
    gmd = np.clip(gm * (1 + 0.15 * field), 0, 1)
    gmv = gmd * (1 + 0.1 * field)
    return grid.make_model_input(gmd, gmv)[None]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def make_files(workdir: Path) -> None:
    """Write the six H5 files (random weights) and convert them to packages, unless present."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    h5dir, pkgdir = workdir / "h5", workdir / "packages"
    if (pkgdir / "ad" / "model.json").exists() and (pkgdir / "sex" / "model.json").exists():
        return
    import tf_keras as keras
    from keras_reference import build_keras, randomise_bn

    from bids_app.models.keras_import import import_keras

    h5dir.mkdir(parents=True, exist_ok=True)
    m = build_keras(keras, "irv2_sex", seed=0)
    randomise_bn(m, seed=0)
    m.save(h5dir / SEX_FILE)
    keras.backend.clear_session()
    for k, name in enumerate(AD_FILES):
        m = build_keras(keras, "irv2_ad_optimised", seed=10 + k)
        randomise_bn(m, seed=10 + k)
        m.save(h5dir / name)
        keras.backend.clear_session()
    import_keras([h5dir / SEX_FILE], task="sex", out_dir=pkgdir / "sex", name="bench-sex", version="0")
    import_keras([h5dir / f for f in AD_FILES], task="ad", out_dir=pkgdir / "ad", name="bench-ad", version="0")


def run_mode(mode: str, workdir: Path, repeats: int, threads: int) -> dict:
    """Time one mode in this process; returns per-participant times, scores and peak RSS."""
    x = realistic_input()
    if mode == "tf-keras":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import tf_keras as keras

        models = [keras.models.load_model(workdir / "h5" / f, compile=False, safe_mode=False)
                  for f in [SEX_FILE, *AD_FILES]]
        xc = tf.constant(np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1)))
        fns = [tf.function(lambda t, m=m: m(t, training=False)) for m in models]

        def one() -> list[float]:
            return [float(np.asarray(f(xc)).ravel()[0]) for f in fns]
    else:
        import torch

        torch.set_num_threads(threads)
        from bids_app.models import load_package, predict

        sex = load_package(workdir / "packages" / "sex")
        ad = load_package(workdir / "packages" / "ad")

        def one() -> list[float]:
            s = predict(sex, x, device="cpu", precision=mode).fold_scores[0]
            a = predict(ad, x, device="cpu", precision=mode).fold_scores[0]
            return [float(v) for v in (*s, *a)]

    t0 = time.perf_counter()
    scores = one()  # warm-up (graph building, weight reorders, first-touch allocations)
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        again = one()
        times.append(time.perf_counter() - t0)
        if mode != "tf-keras" and again != scores:
            raise RuntimeError(f"{mode}: scores changed between runs (not deterministic)")
    return {"mode": mode, "times": times, "median": float(np.median(times)), "warmup": warmup,
            "scores": scores, "peak_rss_gb": peak_rss_gb()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the modes")
    ap.add_argument("--repeats", type=int, default=1, help="timed participants per mode and round")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workdir", type=Path, default=None, help="keep H5 files and packages here (reused)")
    ap.add_argument("--modes", nargs="+", default=["fp32", "fast", "auto", "tf-keras"])
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vbm-bench-"))
    if args._child:
        print("RESULT " + json.dumps(run_mode(args._child, workdir, args.repeats, args.threads)))
        return 0
    make_files(workdir)
    results: dict[str, dict] = {}
    for _ in range(args.rounds):
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--_child", mode, "--workdir", str(workdir),
                   "--repeats", str(args.repeats), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                print(f"{mode}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
                continue
            r = json.loads(lines[-1][7:])
            if mode in results:
                prev = results[mode]
                if mode != "tf-keras" and r["scores"] != prev["scores"]:
                    raise RuntimeError(f"{mode}: scores changed between processes (not deterministic)")
                r["times"] = prev["times"] + r["times"]
                r["peak_rss_gb"] = max(prev["peak_rss_gb"], r["peak_rss_gb"])
                r["warmup"] = min(prev["warmup"], r["warmup"])
            r["median"] = float(np.median(r["times"]))
            results[mode] = r
    load = os.getloadavg()
    import torch

    from bids_app.models.predict import default_precision

    print(f"# per participant = 1 sex + 5 AD forward passes; {args.threads} thread(s); {args.rounds} rounds x "
          f"{args.repeats} timed; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; torch {torch.__version__}; "
          f"'auto' on CPU = '{default_precision(torch.device('cpu'))}'")
    base = results.get("fp32")
    if base:
        print(f"# fp32 scores (sex, AD folds 0-4): {' '.join(f'{v:.4f}' for v in base['scores'])}")
    print(f"{'mode':10s} {'median s':>9s} {'min s':>7s} {'warm-up s':>9s} {'vs fp32':>8s} {'vs tf-keras':>11s} "
          f"{'peak GB':>8s} {'max |d score|':>14s}")
    for mode, r in results.items():
        vs_fp32 = base["median"] / r["median"] if base else float("nan")
        vs_tf = results["tf-keras"]["median"] / r["median"] if "tf-keras" in results else float("nan")
        diff = max(abs(a - b) for a, b in zip(r["scores"], base["scores"])) if base else float("nan")
        print(f"{mode:10s} {r['median']:9.2f} {min(r['times']):7.2f} {r['warmup']:9.2f} {vs_fp32:8.2f}x {vs_tf:10.2f}x "
              f"{r['peak_rss_gb']:8.2f} {diff:14.2e}")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "load": load, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

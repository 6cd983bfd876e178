#!/usr/bin/env python
"""Inference benchmark: one participant = 1 sex + 5 AD forward passes, side by side.

Builds the full-size BrainImageNet networks in tf-keras with random weights (non-trivial BN
statistics), saves them as full-model H5 files (one sex file, five AD folds, as published),
imports them with vbm-predict's importer, and times, each in its own subprocess (so peak memory
is per mode and TensorFlow never shares a process with the PyTorch runs):

* ``fp32``   PyTorch eager float32 (the baseline),
* ``auto``   the predictor's default path (what the app runs: the engine chosen for this CPU),
* other ``--modes`` of :func:`bids_app.models.predict` (``fused``, ``openvino``, ``onnxruntime``,
  ``openvino-bf16``, ``bf16``, ``fast``, ``compile``); by default every installed engine, and the
  bf16 modes only where the CPU has native bf16 (elsewhere they are emulated and slower),
* ``tf-keras`` TensorFlow 2 + tf-keras running the same H5 files (the reference system's stack).

``--faithfulness N`` also scores N simulated participants (ground-truth GM maps of
``bids_app.synth.simulate_dataset``, through ``make_model_input``) with the trained demo packages in
every mode and prints, per mode, the largest |score difference| from fp32 and the label flips at
the 0.5 and 0.3 thresholds that are not explained by an fp32 score within that difference of the
threshold.

Modes run in ``--rounds`` interleaved rounds (fp32, fast, auto, tf-keras, fp32, fast, ...), each a
fresh process doing one untimed warm-up and ``--repeats`` timed participants, so that a slow
minute on a shared machine does not land on one mode only. It prints median seconds per
participant, ratios, peak RSS and the largest score difference from fp32 on a realistic input
(the MNI152 GM template on the SPM grid through ``bids_app.grid.make_model_input``, with a smooth
per-subject deformation of GM).

    python bench/inference.py [--rounds 2] [--repeats 1] [--threads N] [--workdir DIR] [--modes ...] [--faithfulness 20]
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
    from bids_app.models.export import reference_input

    return reference_input(seed=seed, n=1)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def make_files(workdir: Path) -> None:
    """Write the six H5 files (random weights) and convert them to packages, unless present."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    h5dir, pkgdir = workdir / "h5", workdir / "packages"
    if (pkgdir / "ad" / "model.json").exists() and (pkgdir / "sex" / "model.json").exists():
        if not (pkgdir / "ad1" / "model.json").exists():
            from bids_app.models.keras_import import import_keras

            import_keras([h5dir / AD_FILES[0]], task="ad", out_dir=pkgdir / "ad1", name="bench-ad1", version="0")
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
    import_keras([h5dir / AD_FILES[0]], task="ad", out_dir=pkgdir / "ad1", name="bench-ad1", version="0")


def run_mode(mode: str, workdir: Path, repeats: int, threads: int, networks: str = "participant") -> dict:
    """Time one mode in this process; returns per-participant times, scores and peak RSS.

    ``networks="ad1"`` times one AD fold instead of a participant (for a loaded machine, where a
    whole participant per mode and round does not fit in the time at hand).
    """
    files = [SEX_FILE, *AD_FILES] if networks == "participant" else [AD_FILES[0]]
    x = realistic_input()
    if mode == "tf-keras":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import tf_keras as keras

        models = [keras.models.load_model(workdir / "h5" / f, compile=False, safe_mode=False) for f in files]
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

        engine: list[str] = []

        def one() -> list[float]:
            s = predict(sex, x, device="cpu", precision=mode)
            a = predict(ad, x, device="cpu", precision=mode)
            engine[:] = [f"{s.engine['Engine']} {s.engine['Precision']}"]
            return [float(v) for v in (*s.fold_scores[0], *a.fold_scores[0])]

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
    return {
        "mode": mode,
        "times": times,
        "median": float(np.median(times)),
        "warmup": warmup,
        "scores": scores,
        "peak_rss_gb": peak_rss_gb(),
        "engine": "tf-keras" if mode == "tf-keras" else ", ".join(engine),
        "load": os.getloadavg()[0],
    }


def print_machine() -> None:
    """CPU model, the flags that matter, the engine rule, load and library versions."""
    import platform

    from bids_app.models.engines import describe_engine_choice

    d = describe_engine_choice("cpu")
    load = os.getloadavg()
    print(
        f"# CPU: {d['cpu']['model']} ({os.cpu_count()} logical CPUs); level {d['cpu']['level']}; "
        f"native bf16: {d['cpu']['native_bf16']}; torch capability {d['cpu']['torch_capability']}"
    )
    print(f"# flags: {' '.join(d['cpu']['flags'])}")
    print(
        f"# engines: {', '.join(f'{k} {v}' for k, v in d['installed_engines'].items())}; "
        f"python {platform.python_version()}"
    )
    print(f"# auto rule {d['rule']}: {' > '.join(d['candidates'])}")
    print(f"# load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)


def default_modes() -> list[str]:
    from bids_app.models.engines import cpu_features, installed_engines

    have = installed_engines("cpu")
    modes = ["fp32", "auto", "fused"]
    modes += [m for m, e in (("openvino", "openvino"), ("onnxruntime", "onnxruntime")) if e in have]
    if cpu_features().native_bf16:
        modes += ["bf16"] + (["openvino-bf16"] if "openvino" in have else [])
    return [*modes, "tf-keras"]


def faithfulness(workdir: Path, n: int, modes: list[str], threads: int, synth: Path | None = None) -> dict:
    """Scores of ``n`` simulated participants per mode with the trained demo packages (sex, AD).

    Inputs: the ground-truth GM maps of the participants in ``synth`` (a ``vbm-predict simulate``
    / ``bids_app.synth.simulate_dataset`` output) through ``make_model_input``, topped up to ``n``
    with deformed-template inputs (``reference_input`` with seeds 100, 101, ...). Each mode's
    runners are built directly (no self-check, no fallback), so a reduced precision is measured
    even where the predictor would refuse it; ``auto`` goes through the predictor.
    """
    import nibabel as nib
    import torch

    from bids_app import grid
    from bids_app.models import load_package, predict
    from bids_app.models.engines import make_runner
    from bids_app.models.export import reference_input
    from bids_app.models.predict import _EXPLICIT
    from bids_app.synth import TRUTH_DIR, truth_paths
    from bids_app.workflows import DEMO_MODELS

    torch.set_num_threads(threads)
    xs, sources = [], []
    if synth is not None:
        for pid in sorted(p.name for p in (synth / TRUTH_DIR).glob("sub-*") if p.is_dir())[:n]:
            t = truth_paths(synth, pid)
            if not (t["gmd"].exists() and t["gmv"].exists()):
                continue
            gmd = np.asarray(nib.load(t["gmd"]).dataobj, dtype=np.float32)
            gmv = np.asarray(nib.load(t["gmv"]).dataobj, dtype=np.float32)
            xs.append(grid.make_model_input(gmd, gmv))
            sources.append(f"synth {pid}")
    k = 0
    while len(xs) < n:
        xs.append(reference_input(seed=100 + k, n=1)[0])
        sources.append(f"template seed {100 + k}")
        k += 1
    x = np.stack(xs)
    out: dict = {"participants": len(xs), "sources": sources, "modes": {}}
    for task in ("sex", "ad"):
        pkg = load_package(DEMO_MODELS / task)
        ref = predict(pkg, x, device="cpu", precision="fp32").fold_scores
        out.setdefault("fp32", {})[task] = ref.tolist()
        for mode in modes:
            if mode in ("fp32", "tf-keras"):
                continue
            if mode == "auto":
                s = predict(pkg, x, device="cpu", precision="auto")
                scores, ran = s.fold_scores, f"{s.engine['Engine']} {s.engine['Precision']}"
            else:
                engine, prec = _EXPLICIT[mode]
                try:
                    runners = [
                        make_runner(net, engine, prec, torch.device("cpu"), threads=threads) for net in pkg.folds
                    ]
                except (ValueError, ImportError) as exc:
                    print(f"# {mode}: not available ({exc})", file=sys.stderr)
                    continue
                logits = np.stack([np.concatenate([r(x[i : i + 1])[:, 0] for i in range(len(x))]) for r in runners],
                                  axis=1)
                scores, ran = 1 / (1 + np.exp(-logits.astype(np.float64))), f"{engine} {runners[0].precision}"
            out["modes"].setdefault(mode, {})[task] = {"scores": np.asarray(scores).tolist(), "engine": ran}
    return out


def report_faithfulness(res: dict) -> None:
    n_synth = sum(src.startswith("synth") for src in res["sources"])
    print(
        f"\n# faithfulness: {res['participants']} simulated participants ({n_synth} synth ground-truth GM maps, "
        f"{res['participants'] - n_synth} deformed-template inputs), trained demo packages (3 folds each), "
        "per-fold scores and fold means vs fp32"
    )
    print(
        f"{'mode':14s} {'ran as':22s} {'max |d| fold':>13s} {'max |d| mean':>13s} {'flips@0.5':>9s} {'flips@0.3':>9s} "
        f"{'unexplained':>11s}"
    )
    for mode, per_task in res["modes"].items():
        worst_f = worst_m = 0.0
        flips = {0.5: 0, 0.3: 0}
        unexplained = 0
        ran = set()
        for task, r in per_task.items():
            ref = np.asarray(res["fp32"][task])
            got = np.asarray(r["scores"])
            ran.add(r["engine"])
            d = np.abs(got - ref)
            worst_f = max(worst_f, float(d.max()))
            dm = np.abs(got.mean(1) - ref.mean(1))
            worst_m = max(worst_m, float(dm.max()))
            for thr in (0.5, 0.3):
                if task == "sex" and thr == 0.3:
                    continue
                for a, b, dd in ((ref.ravel(), got.ravel(), d.ravel()), (ref.mean(1), got.mean(1), dm)):
                    flip = (a >= thr) != (b >= thr)
                    flips[thr] += int(flip.sum())
                    unexplained += int((flip & (np.abs(a - thr) > dd)).sum())
        print(
            f"{mode:14s} {', '.join(sorted(ran)):22s} {worst_f:13.2e} {worst_m:13.2e} {flips[0.5]:9d} {flips[0.3]:9d} "
            f"{unexplained:11d}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the modes")
    ap.add_argument("--repeats", type=int, default=1, help="timed participants per mode and round")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workdir", type=Path, default=None, help="keep H5 files and packages here (reused)")
    ap.add_argument("--modes", nargs="+", default=None, help="default: fp32, auto, every installed engine, tf-keras")
    ap.add_argument(
        "--faithfulness",
        type=int,
        default=0,
        metavar="N",
        help="score N simulated participants with the demo packages in every mode (item 3 of issue 16)",
    )
    ap.add_argument(
        "--synth",
        type=Path,
        default=None,
        metavar="DIR",
        help="simulated dataset whose ground-truth GM maps feed --faithfulness (topped up with "
        "deformed-template inputs)",
    )
    ap.add_argument(
        "--networks",
        choices=("participant", "ad1"),
        default="participant",
        help="time a participant (1 sex + 5 AD folds) or one AD fold (loaded machines)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vbm-bench-"))
    if args._child == "faithfulness":
        print("RESULT " + json.dumps(faithfulness(workdir, args.faithfulness, args.modes, args.threads, args.synth)))
        return 0
    if args._child:
        print("RESULT " + json.dumps(run_mode(args._child, workdir, args.repeats, args.threads, args.networks)))
        return 0
    print_machine()
    if args.modes is None:
        args.modes = default_modes()
    if args.rounds > 0:
        make_files(workdir)
    results: dict[str, dict] = {}
    for _ in range(args.rounds):
        for mode in args.modes:
            cmd = [
                sys.executable,
                __file__,
                "--_child",
                mode,
                "--workdir",
                str(workdir),
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
                "--networks",
                args.networks,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                print(f"{mode}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
                continue
            r = json.loads(lines[-1][7:])
            print(
                f"# {mode}: {r['median']:.2f} s (warm-up {r['warmup']:.2f} s) as {r.get('engine', '')}, "
                f"peak {r['peak_rss_gb']:.2f} GB, load {r.get('load', float('nan')):.2f}",
                flush=True,
            )
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

    if results:
        auto = results.get("auto", {}).get("engine", "?")
        what = (
            "per participant = 1 sex + 5 AD forward passes"
            if args.networks == "participant"
            else "per AD fold forward pass"
        )
        print(
            f"# {what}; {args.threads} thread(s); {args.rounds} rounds x "
            f"{args.repeats} timed; "
            f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; torch {torch.__version__}; "
            f"'auto' ran as {auto}"
        )
        base = results.get("fp32")
        if base:
            print(f"# fp32 scores (sex, AD folds 0-4): {' '.join(f'{v:.4f}' for v in base['scores'])}")
        print(
            f"{'mode':14s} {'median s':>9s} {'min s':>7s} {'warm-up s':>9s} {'vs fp32':>8s} {'vs tf-keras':>11s} "
            f"{'peak GB':>8s} {'max |d score|':>14s}  ran as"
        )
        for mode, r in results.items():
            vs_fp32 = base["median"] / r["median"] if base else float("nan")
            vs_tf = results["tf-keras"]["median"] / r["median"] if "tf-keras" in results else float("nan")
            diff = max(abs(a - b) for a, b in zip(r["scores"], base["scores"])) if base else float("nan")
            print(
                f"{mode:14s} {r['median']:9.2f} {min(r['times']):7.2f} {r['warmup']:9.2f} {vs_fp32:8.2f}x "
                f"{vs_tf:10.2f}x "
                f"{r['peak_rss_gb']:8.2f} {diff:14.2e}  {r.get('engine', '')}"
            )
    faith = None
    if args.faithfulness:
        cmd = [
            sys.executable,
            __file__,
            "--_child",
            "faithfulness",
            "--workdir",
            str(workdir),
            "--threads",
            str(args.threads),
            "--faithfulness",
            str(args.faithfulness),
            *(["--synth", str(args.synth)] if args.synth else []),
            "--modes",
            *[m for m in args.modes if m not in ("fp32", "tf-keras")],
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            print(f"faithfulness: failed\n{out.stderr[-3000:]}", file=sys.stderr)
        else:
            faith = json.loads(lines[-1][7:])
            report_faithfulness(faith)
    if args.json:
        args.json.write_text(
            json.dumps({"threads": args.threads, "load": load, "results": results, "faithfulness": faith}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

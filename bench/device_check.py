#!/usr/bin/env python
"""CUDA check for when a GPU is lent: every CUDA mode of the predictor, faithfulness and speed.

Runs in well under 10 minutes on one GPU and needs nothing but this repository and its venv:

1. Faithfulness: the trained demo packages (sex, AD) score ``--inputs`` realistic inputs
   (``bids_app.models.export.reference_input``) with ``precision`` fp32 / fast / bf16 / fp16 /
   auto on CUDA and, as the reference, fp32 on the CPU; prints max |score difference| and label
   flips at 0.5 and 0.3 not explained by a reference score within that difference of the threshold.
2. Speed: one full-size AD and one sex network (random weights, non-trivial BatchNorm) per mode,
   median of ``--repeats`` forward passes after a warm-up (cudnn.benchmark is on), peak GPU memory.

    python bench/device_check.py [--inputs 20] [--repeats 5]

Exits 2 (and prints why) when no CUDA device is visible: nothing else in the project needs a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

MODES = ("fp32", "fast", "bf16", "fp16", "auto")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device visible (torch.cuda.is_available() is False); nothing to check")
        return 2
    from models_fixtures import randomise_bn

    from bids_app.models import build_network, load_package, predict
    from bids_app.models.engines import make_runner
    from bids_app.models.export import reference_input
    from bids_app.workflows import DEMO_MODELS

    print(f"# GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; CUDA {torch.version.cuda}; "
          f"bf16 supported: {torch.cuda.is_bf16_supported()}")
    x = reference_input(seed=5, n=args.inputs)
    print(f"# faithfulness on {args.inputs} inputs (reference: fp32 on the CPU)")
    print(f"{'task':5s} {'mode':6s} {'ran as':18s} {'max |d|':>9s} {'flips':>6s} {'unexplained':>11s}")
    for task in ("sex", "ad"):
        cpu_pkg = load_package(DEMO_MODELS / task)
        ref = predict(cpu_pkg, x, device="cpu", precision="fp32").fold_scores
        pkg = load_package(DEMO_MODELS / task, device="cuda")
        for mode in MODES:
            s = predict(pkg, x, device="cuda", precision=mode)
            d = np.abs(s.fold_scores - ref)
            flips = unexplained = 0
            for thr in (0.5, 0.3):
                f = (ref >= thr) != (s.fold_scores >= thr)
                flips += int(f.sum())
                unexplained += int((f & (np.abs(ref - thr) > d)).sum())
            print(f"{task:5s} {mode:6s} {s.engine['Engine'] + ' ' + s.engine['Precision']:18s} {d.max():9.2e} "
                  f"{flips:6d} {unexplained:11d}")
    print(f"# speed: one forward pass, median of {args.repeats} after a warm-up")
    torch.backends.cudnn.benchmark = True
    xb = x[:1]
    for arch in ("irv2_ad_optimised", "irv2_sex"):
        net = randomise_bn(build_network(arch), seed=1).eval()
        modes = (("torch-eager", "fp32"), ("torch-fast", "fp32"), ("torch-fast", "bf16"), ("torch-fast", "fp16"))
        for engine, prec in modes:
            torch.cuda.reset_peak_memory_stats()
            r = make_runner(net, engine, prec, torch.device("cuda"))
            ref_logit = r(xb)
            times = []
            for _ in range(args.repeats):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                r(xb)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            print(f"{arch:18s} {engine:12s} {prec:5s} {np.median(times) * 1000:8.1f} ms  "
                  f"peak {torch.cuda.max_memory_allocated() / 1024**3:5.2f} GB  "
                  f"logit {float(ref_logit.reshape(-1)[0]):+.5f}")
            del r
        net.cpu()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Occlusion maps: the naive definition vs the exact fast engine, side by side on the same positions.

    python bench/occlusion.py --network irv2_ad_optimised --positions 32 --naive-positions 4 --rounds 2
    python bench/occlusion.py --network irv2_ad_optimised --full-fold     # time one whole fold (fast only)
    python bench/occlusion.py --network irv2_sex --flops                  # arithmetic per position only

A full-size network with random weights (BatchNorm statistics randomised, output layer scaled so
that occlusions move the score by 1e-3 .. 1e-1), the realistic model input of bench/inference.py
(the MNI152 GM template on the SPM grid through ``make_model_input``), the paper's window (12
voxels = 18 mm, step 6 = 9 mm) restricted to the brain mask. Per round, on the same evenly spread
subset of positions: the fast engine (receptive-field-limited recomputation, in batches) on
``--positions`` positions and the naive map (one forward pass per position through the predictor's
default CPU executor, oneDNN fused, batch 1) on ``--naive-positions`` of them (evenly spread; the
naive map costs a full forward pass each); rounds interleave the two because the machine's speed
drifts. Scores and maps are compared on the positions both ran. Per-fold figures are extrapolated
from the per-position medians to every position of the fold (plus the fast engine's one unoccluded
pass). Prints the CPU model, ``uptime`` before and after (the development machine is shared), the
largest score difference and the largest difference of the two maps built from the same positions.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time

import numpy as np
import torch

from bids_app import grid
from bids_app.explain.occlusion import (
    OcclusionEngine,
    OcclusionParams,
    drops_to_map,
    occlusion_naive,
    window_positions,
)
from bids_app.models import KerasBatchNorm3d, build_network
from bids_app.models.fast import OneDNNGraphNet


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "n/a"


class ConvFlops:
    """Counts the multiply-adds of every ``F.conv3d`` call while active (eager modules and the fast
    engine both call it), per layer shape: 2 x N x C_out x output voxels x C_in / groups x kernel
    voxels. Padded taps count, so for the engine's zero-padded boxes this is the dense arithmetic,
    an upper bound of what oneDNN executes."""

    def __init__(self) -> None:
        self.total = 0.0
        self._orig = torch.nn.functional.conv3d

    def __enter__(self) -> ConvFlops:
        orig = self._orig

        def counted(x, w, *a, **k):  # type: ignore[no-untyped-def]
            y = orig(x, w, *a, **k)
            groups = k.get("groups", a[4] if len(a) > 4 else 1)
            self.total += 2.0 * y.shape[0] * y[0].numel() * (x.shape[1] // groups) * w[0, 0].numel()
            return y

        torch.nn.functional.conv3d = counted
        return self

    def __exit__(self, *exc: object) -> None:
        torch.nn.functional.conv3d = self._orig


def report_flops(net: torch.nn.Module, engine: OcclusionEngine, x: np.ndarray, fold: np.ndarray, batch: int) -> None:
    """The arithmetic behind the speed figures: convolution GFLOP of a full forward pass and of the
    fast engine per position (one batch spread over the fold), and the sustained rate that a
    5-minute fold would need."""
    with torch.no_grad(), ConvFlops() as full:
        net(torch.as_tensor(x[None]))
    pick = fold[np.linspace(0, len(fold) - 1, batch).round().astype(int)]
    with ConvFlops() as fast:
        engine.occluded_logits(pick)
    per = fast.total / len(pick)
    print(f"convolution arithmetic: full forward pass {full.total / 1e9:.1f} GFLOP; fast engine "
          f"{per / 1e9:.2f} GFLOP per position ({full.total / per:.1f}x less; {len(pick)} positions spread "
          "over the fold)")
    print(f"per fold ({len(fold)} positions): {per * len(fold) / 1e12:.1f} TFLOP; a 5-minute fold needs "
          f"{per * len(fold) / 300 / 1e9:.0f} GFLOP/s sustained")


def make_network(name: str, seed: int, x: np.ndarray) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_network(name).eval()
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, KerasBatchNorm3d):
            m.running_mean.copy_(torch.randn(m.channels, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.channels, generator=g) * 1.5 + 0.5)
            if m.bias is not None:
                m.bias.data.copy_(torch.randn(m.channels, generator=g) * 0.1)
    dense = net.layers[net.logit_node]
    with torch.no_grad():
        dense.weight.mul_(3000.0)
        dense.bias.mul_(3000.0)
        dense.bias.sub_(float(net(torch.as_tensor(x[None]))) - 0.3)
    return net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--network", default="irv2_ad_optimised", choices=("irv2_ad_optimised", "irv2_ad_intact", "irv2_sex")
    )
    ap.add_argument("--positions", type=int, default=32, help="fast engine: positions per round, spread over the fold")
    ap.add_argument("--naive-positions", type=int, default=4, help="naive: positions per round (a subset of those)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="fast engine: positions per batch")
    ap.add_argument("--full-fold", action="store_true", help="also run the fast engine over every position once")
    ap.add_argument("--flops", action="store_true", help="print the convolution arithmetic per position and stop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; {args.threads} threads; GPU: none lent to this task")
    print(f"uptime before: {uptime()}")
    gmd = grid.template_gm().astype(np.float32)
    x = grid.make_model_input(gmd, gmd * 1.05)
    net = make_network(args.network, 0, x)
    params = OcclusionParams(batch_size=args.batch)
    starts, kept = window_positions(x.shape[1:], params.cube, params.step, grid.crop(grid.brain_mask()))
    fold = starts[kept]
    print(f"{args.network}: {len(starts)} window positions, {len(fold)} touch the brain mask (cube 12, step 6)")
    pick = fold[np.linspace(0, len(fold) - 1, args.positions).round().astype(int)]
    fused = OneDNNGraphNet(net)
    engine = OcclusionEngine(net, params)
    t = time.perf_counter()
    base_fast = engine.set_input(x)
    t_setup = time.perf_counter() - t
    print(f"fast engine: unoccluded pass with cached activations {t_setup:.1f} s")
    if args.flops:
        report_flops(net, engine, x, fold, args.batch)
        return
    sub = np.linspace(0, len(pick) - 1, min(args.naive_positions, len(pick))).round().astype(int)
    naive_pp, fast_pp, score_diff, map_diff = [], [], 0.0, 0.0
    for r in range(args.rounds):
        t = time.perf_counter()
        base, naive = occlusion_naive(fused, x, pick[sub], cube=params.cube, batch_size=1)
        naive_pp.append((time.perf_counter() - t) / (len(sub) + 1))
        t = time.perf_counter()
        fast = engine.scores(pick)[sub]
        fast_pp.append((time.perf_counter() - t) / len(pick))
        score_diff = max(score_diff, float(np.abs(fast - naive).max()))
        d_naive = np.zeros(len(starts))
        d_fast = np.zeros(len(starts))
        idx = np.flatnonzero(kept)[np.linspace(0, len(fold) - 1, args.positions).round().astype(int)][sub]
        d_naive[idx] = base - naive
        d_fast[idx] = base_fast - fast
        diff = np.abs(
            drops_to_map(x.shape[1:], starts, d_naive, 12) - drops_to_map(x.shape[1:], starts, d_fast, 12)
        ).max()
        map_diff = max(map_diff, float(diff))
        print(
            f"round {r + 1}: naive {naive_pp[-1]:.3f} s/position ({len(sub)}), fast {fast_pp[-1]:.3f} s/position "
            f"({len(pick)}), largest score drop {np.abs(base - naive).max():.2e}; load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    n, f = statistics.median(naive_pp), statistics.median(fast_pp)
    print(f"median per position: naive {n:.3f} s, fast {f:.4f} s -> {n / f:.1f}x")
    print(
        f"per fold ({len(fold)} positions): naive {n * len(fold) / 60:.1f} min (extrapolated), "
        f"fast {(t_setup + f * len(fold)) / 60:.2f} min (extrapolated)"
    )
    print(f"largest score difference fast vs naive: {score_diff:.2e}; largest map difference: {map_diff:.2e}")
    if args.full_fold:
        t = time.perf_counter()
        engine.scores(fold)
        print(f"fast engine, every position of the fold measured: {(t_setup + time.perf_counter() - t) / 60:.2f} min")
    print(f"uptime after: {uptime()}")


if __name__ == "__main__":
    main()

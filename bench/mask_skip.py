#!/usr/bin/env python
"""How much of the stem's work the brain mask makes unnecessary, exactly (issue 16, item 4).

Zero input does not give zero activations (BatchNorm shift + ReLU), but an output voxel whose whole
receptive field is zero gets one constant per channel and could be filled instead of computed.
This counts, on a realistic input, the stem convolutions' outputs (and tiles of them) that must be
computed: stem conv 1 (3^3 valid) and stem conv 2 (3^3 same, whose zero padding makes every face
voxel differ from the constant).

    python bench/mask_skip.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bids_app.models.export import reference_input


def tiles_needed(dep: np.ndarray, t: int) -> float:
    pad = [(0, (-n) % t) for n in dep.shape]
    d = np.pad(dep, pad)
    a, b, c = (n // t for n in d.shape)
    return float(d.reshape(a, t, b, t, c, t).any(axis=(1, 3, 5)).mean())


def main() -> int:
    x = reference_input(0, 1)[0]
    nz = np.abs(x).sum(0) > 0
    print(f"input non-zero (inside the mask): {nz.mean():.3f} of {nz.shape}")
    dep1 = ndimage.maximum_filter(nz.astype(np.uint8), size=3, mode="constant")[1:-1, 1:-1, 1:-1] > 0
    dep2 = ndimage.maximum_filter(dep1.astype(np.uint8), size=3, mode="constant") > 0
    face = np.zeros_like(dep2)
    face[[0, -1], :, :] = face[:, [0, -1], :] = face[:, :, [0, -1]] = True
    dep2 |= face
    for name, dep in (("conv1 (valid)", dep1), ("conv2 (same)", dep2)):
        per_tile = ", ".join(f"{t}^3 tiles {tiles_needed(dep, t):.3f}" for t in (4, 8, 16))
        planes = [float(dep.any(axis=tuple(j for j in range(3) if j != a)).mean()) for a in range(3)]
        print(f"{name}: outputs to compute {dep.mean():.3f}; {per_tile}; planes per axis {planes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

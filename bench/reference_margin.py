#!/usr/bin/env python
"""How far the fidelity benchmark's total-GM truth moves with the brain's edge (issue 11).

The total-GM target of ``bench/fidelity.py`` (within 3%) compares the backend with a reference whose
brain edge is a convention: Colin27's stops at ``ch2bet``, the MNI152 head's is a population
probability that fades out across the margin. This prints, for each base head, the reference GM
that the same partial-volume rule gives when that edge is moved by whole voxels
(:func:`bids_app.synth.realhead.reference_margin_sensitivity`), on the head's own 1 mm grid. No
backend runs; about a minute.

    python bench/reference_margin.py [--bases colin27 mni152] [--voxels -2 -1 0 1 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bids_app.synth.realhead import BASE_HEADS, reference_margin_sensitivity


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bases", nargs="+", default=list(BASE_HEADS), choices=BASE_HEADS)
    ap.add_argument("--voxels", nargs="+", type=int, default=[-2, -1, 0, 1, 2])
    args = ap.parse_args(argv)
    print(f"{'head':<8} {'edge (vox)':>10} {'brain ml':>9} {'PV rule GM ml':>14} {'vs edge 0':>10} "
          f"{'reference in mask ml':>21} {'vs all':>7}")
    for base in args.bases:
        rows = reference_margin_sensitivity(base, tuple(sorted(set(args.voxels) | {0})))
        pv0 = rows[0]["pv_gm_ml"]
        ref_all = max(r["reference_gm_in_mask_ml"] for r in rows.values())
        for n, r in rows.items():
            print(f"{base:<8} {n:>+10d} {r['brain_ml']:>9.0f} {r['pv_gm_ml']:>14.1f} {r['pv_gm_ml'] / pv0 - 1:>+10.1%} "
                  f"{r['reference_gm_in_mask_ml']:>21.1f} {r['reference_gm_in_mask_ml'] / ref_all - 1:>+7.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

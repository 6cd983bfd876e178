"""ANTs-made maps of held-out simulated participants, to measure the demo's distribution shift.

Why: the demo models are trained on the simulator's ground-truth SPM-grid maps but the demo reads
maps the ANTs backend made from the simulated T1w. This script simulates a small cohort WITH T1w
images (a seed the demo models never see), runs the ANTs backend on every T1w (two at a time, one
ITK thread each, as the app's pool does on 2 cores) and writes the maps as a BIDS-derivatives
dataset next to the ground truth, so that ``python -m bids_app.train.shift fit`` can compare them and the
training / validation commands of ``scripts/make_demo_models.sh`` can read them.

Usage: python scripts/make_ants_maps.py OUT [N_PARTICIPANTS] [SEED] [LABEL ...]
(LABELs: preprocess only these participants of the simulated cohort, e.g. 001 002)
(the running copy of the first run lived in bench/ as demo_shift_ants.py; same code)
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bids_app.derivatives import SPACE, write_map, write_t1w_mni


def _one(args: tuple[str, str, str]) -> dict:
    import os

    os.environ["OMP_NUM_THREADS"] = "1"
    from bids_app.discovery import discover_units
    from bids_app.preproc.ants import AntsBackend

    bids, sub, out = args
    unit = next(u for u in discover_units(Path(bids), participant_labels=[sub]))
    t0, c0 = time.perf_counter(), time.process_time()
    maps = AntsBackend(nprocs=1, make_t1w_mni=True).run(unit, Path(out) / "work" / f"sub-{sub}")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    anat = Path(out) / "derivatives" / "ants" / f"sub-{sub}" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    pre = f"sub-{sub}_space-{SPACE}_label-GM"
    made = {"Sources": [str(unit.path)], "Description": "made by AntsBackend for the demo models' shift fit"}
    write_map(anat / f"{pre}_probseg.nii.gz", maps.gmd, made)
    write_map(anat / f"{pre}_desc-modulated_probseg.nii.gz", maps.gmv, made)
    assert maps.t1w_mni is not None
    write_t1w_mni(anat / f"sub-{sub}_space-MNI152NLin2009aSym_res-1_desc-preproc_T1w.nii.gz", maps.t1w_mni, made)
    rec = {"sub": sub, "wall_s": wall, "cpu_s": cpu, "steps": maps.provenance.get("StepSeconds"), "qc": maps.qc,
           "loadavg": os.getloadavg()}
    (anat / f"sub-{sub}_timing.json").write_text(json.dumps(rec, indent=1))
    print(json.dumps(rec), flush=True)
    return rec


def main() -> None:
    out = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 7
    from bids_app.synth import simulate_dataset

    bids = out / "bids"
    if not (bids / "dataset_description.json").is_file():
        simulate_dataset(bids, participants=n, sites=max(2, n // 2), seed=seed, nprocs=2, mci_fraction=0.34,
                         t1w_mni=True)
    deriv = out / "derivatives" / "ants"
    deriv.mkdir(parents=True, exist_ok=True)
    (deriv / "dataset_description.json").write_text(json.dumps({
        "Name": "ANTs-made maps of simulated T1w", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "vbm-predict ants (scripts/make_ants_maps.py)"}]}, indent=1))
    subs = [p.name[4:] for p in sorted(bids.glob("sub-*")) if p.is_dir()]
    if len(sys.argv) > 4:
        subs = [s for s in subs if s in sys.argv[4:]]
    todo = [s for s in subs if not (deriv / f"sub-{s}" / "anat" / f"sub-{s}_timing.json").is_file()]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        recs = list(pool.map(_one, [(str(bids), s, str(out)) for s in todo]))
    print(f"{len(recs)} T1w in {time.perf_counter() - t0:.0f} s wall", flush=True)


if __name__ == "__main__":
    main()

"""Fidelity of the ANTs backend on real anatomy that is not the template, with known focal atrophy.

    python bench/fidelity.py [--work DIR] [--bases colin27 mni152] [--seeds 0 1 2] [--jobs 2]
                             [--threads 1] [--set syn_iterations=70,50,20 ...]

Cases (:mod:`bids_app.synth.realhead`): for every base head and seed, one subject (random placement,
smooth warp, scanner grid, bias, noise) without (``ctrl``) and with (``atr``) local contractions of
both hippocampi and of the precuneus. Every backend run is a fresh process with its own work dir.

Per case it prints:

* ``r`` / ``Dice``: GMD vs the true GM carried into template space by the backend's own warp (the
  segmentation's fidelity, for every base), and for ``mni152`` also ``r_exact`` against the exact
  template-space truth;
* ``GM err``: total GMV vs the true native GM volume;
* per structure, for each control / atrophy pair: the true native GM loss, the loss seen in the
  modulated map inside the structure's AAL mask on the SPM grid (``GMV``), its fraction of the truth
  (``rec``), and where it went: the loss of GM the backend segmented in native space inside the true
  native structure (``seg``), of GMD in the mask (``GMD``: should be ~0), and of the Jacobian in the
  mask (``jac``);
* the QC metrics of every map, so that thresholds can be derived from them.

Medians over pairs are printed last; everything goes to ``summary.json`` in the work dir.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: contraction strength per structure in the atrophy cases (true native GM loss ~17-24%, printed)
ATROPHY = {"hippocampus": 0.45, "precuneus": 0.45}


def _params(overrides: dict):
    from bids_app.preproc.ants import AntsParams

    fields = AntsParams.__dataclass_fields__
    kw = {}
    for k, v in overrides.items():
        if k not in fields:
            raise SystemExit(f"unknown AntsParams field {k!r}")
        kw[k] = tuple(v) if isinstance(v, list) else v
    return AntsParams(**kw)


def _one(spec: dict) -> None:
    """Child process: one backend run plus the truth carried through its transforms."""
    import ants
    import numpy as np

    from bids_app.preproc._templates import ras_to_spm
    from bids_app.preproc.ants import AntsBackend, native_to_grid
    from bids_app.qc import compute_qc
    from bids_app.types import T1wUnit

    params = _params(spec["params"])
    work = Path(spec["work"])
    t0 = time.perf_counter()
    maps = AntsBackend(nprocs=spec["threads"], params=params).run(T1wUnit(Path(spec["t1"]), {"sub": "bench"}), work)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    qc = compute_qc(maps)
    folder = work / f"ants-{params.key()}"
    truth_gmd = ras_to_spm(native_to_grid(spec["gm"], folder / "syn"))
    # native segmentation vs the true native structures (the reoriented grid holds the same voxels)
    seg = ants.image_read(str(folder / "seg" / "GM.nii.gz"))
    index = ants.apply_transforms(fixed=seg, moving=ants.image_read(spec["structures"]), transformlist=[],
                                  interpolator="nearestNeighbor").numpy()
    voxel_ml = float(np.prod(seg.spacing)) / 1000.0
    seg_gm = seg.numpy()
    seg_structures = {str(k): float(seg_gm[np.rint(index) == k].sum(dtype=np.float64) * voxel_ml) for k in (1, 2)}
    np.savez_compressed(spec["out"] + ".npz", gmd=maps.gmd, gmv=maps.gmv, truth_gmd=truth_gmd.astype(np.float32))
    Path(spec["out"] + ".json").write_text(json.dumps({
        "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024.0,
        "steps_s": maps.provenance["StepSeconds"], "qc": dict(qc.metrics), "qc_flags": list(qc.flags),
        "seg_structure_gm_ml": seg_structures,
    }))


def _run(spec: dict) -> dict:
    out = Path(spec["out"] + ".json")
    if not out.exists():
        env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(spec["threads"]), PYTHONPATH=str(ROOT))
        subprocess.run([sys.executable, "-W", "ignore", __file__, "--one", json.dumps(spec)], check=True, env=env)
    res = json.loads(out.read_text())
    print(f"  ran {Path(spec['out']).name:<22} wall {res['wall_s']:6.1f} s  CPU {res['cpu_s']:6.1f} s  "
          f"load {os.getloadavg()[0]:.1f}  steps {res['steps_s']}", flush=True)
    return res


def _case_metrics(case, res: dict, arrays) -> dict:
    import numpy as np

    from bids_app.grid import SPM_VOXEL_VOLUME_MM3, brain_mask
    from bids_app.synth.realhead import true_gmd_spm

    mask = brain_mask()
    gmd, gmv, truth = arrays["gmd"], arrays["gmv"], arrays["truth_gmd"]
    a, b = gmd > 0.5, truth > 0.5
    out = {
        "r": float(np.corrcoef(gmd[mask], truth[mask])[0, 1]),
        "dice": float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1)),
        "gm_err": float(gmv.sum() * SPM_VOXEL_VOLUME_MM3 / 1000.0 / case.true_gm_ml - 1),
        "wall_s": res["wall_s"],
    }
    if case.base == "mni152":
        exact = true_gmd_spm("mni152")
        out["r_exact"] = float(np.corrcoef(gmd[mask], exact[mask])[0, 1])
    return out


def _pair_metrics(ctrl, atr, res_c: dict, res_a: dict, arr_c, arr_a) -> dict:
    import numpy as np

    from bids_app.synth.realhead import STRUCTURES, structure_mask_spm

    out = {}
    for k, structure in enumerate(STRUCTURES):
        m = structure_mask_spm(ctrl.base, structure)
        true = 1 - atr.true_structure_gm_ml[structure] / ctrl.true_structure_gm_ml[structure]
        gmv = 1 - arr_a["gmv"][m].sum() / arr_c["gmv"][m].sum()
        gmd = 1 - arr_a["gmd"][m].sum() / arr_c["gmd"][m].sum()
        jac_c = arr_c["gmv"][m] / np.maximum(arr_c["gmd"][m], 1e-3)
        jac_a = arr_a["gmv"][m] / np.maximum(arr_a["gmd"][m], 1e-3)
        w = arr_c["gmd"][m]
        jac = 1 - (w * jac_a).sum() / (w * jac_c).sum()
        sc, sa = res_c["seg_structure_gm_ml"][str(k + 1)], res_a["seg_structure_gm_ml"][str(k + 1)]
        out[structure] = {"true": float(true), "gmv": float(gmv), "recovered": float(gmv / true),
                          "seg": float(1 - sa / sc), "gmd": float(gmd), "jac": float(jac)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/vbm-bench-fidelity"))
    ap.add_argument("--bases", nargs="+", default=["colin27", "mni152"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="backend runs at once")
    ap.add_argument("--threads", type=int, default=1, help="ITK threads per run")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="AntsParams overrides")
    ap.add_argument("--label", default="", help="name of this variant in the output folder")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        _one(json.loads(args.one))
        return 0

    import numpy as np

    from bids_app.synth.realhead import STRUCTURES, make_case

    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(f"[{value}]") if "," in value else json.loads(value)
    params = _params(overrides)
    label = args.label or f"params-{params.key()}"
    base_dir = args.work
    (base_dir / "cases").mkdir(parents=True, exist_ok=True)
    (base_dir / label).mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"ANTs fidelity benchmark ({label}): params {overrides or 'defaults'}; {args.jobs} runs at once x "
          f"{args.threads} threads on {os.cpu_count()} CPUs; load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}",
          flush=True)

    import pickle

    cases = {}
    for base in args.bases:
        for seed in args.seeds:
            for kind, atrophy in (("ctrl", {}), ("atr", ATROPHY)):
                name = f"{base}-s{seed}-{kind}"
                meta = base_dir / "cases" / f"{name}.pkl"
                if meta.exists():
                    cases[name] = pickle.loads(meta.read_bytes())
                else:
                    cases[name] = make_case(base_dir / "cases" / f"{name}.nii.gz", base, seed=seed, atrophy=atrophy)
                    meta.write_bytes(pickle.dumps(cases[name]))
    specs = {
        name: {"t1": str(c.path), "gm": str(c.gm_path), "structures": str(c.structures_path),
               "work": str(base_dir / label / f"work-{name}"), "out": str(base_dir / label / name),
               "threads": args.threads, "params": overrides}
        for name, c in cases.items()
    }
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        results = dict(zip(specs, pool.map(_run, specs.values())))
    arrays = {name: dict(np.load(specs[name]["out"] + ".npz")) for name in specs}

    print("case                 voxel (mm)        order   r      Dice   r_exact  GM err   wall s")
    per_case = {}
    for name, c in cases.items():
        m = per_case[name] = _case_metrics(c, results[name], arrays[name])
        vs = "x".join(f"{v:.2f}" for v in c.voxel_size)
        rx = f"{m['r_exact']:.3f}" if "r_exact" in m else "  -  "
        print(f"{name:<20} {vs:<17} {c.axcodes:<6} {m['r']:.3f}  {m['dice']:.3f}  {rx:<7}  {100 * m['gm_err']:+5.1f}%  "
              f"{m['wall_s']:6.0f}")
    print("pair            structure     true loss  GMV loss  recovered  seg loss  GMD loss  jac loss")
    pairs = {}
    for base in args.bases:
        for seed in args.seeds:
            c, a = f"{base}-s{seed}-ctrl", f"{base}-s{seed}-atr"
            p = _pair_metrics(cases[c], cases[a], results[c], results[a], arrays[c], arrays[a])
            pairs[f"{base}-s{seed}"] = p
            for structure, v in p.items():
                print(f"{base}-s{seed:<6} {structure:<12} {100 * v['true']:8.1f}%  {100 * v['gmv']:7.1f}%  "
                      f"{100 * v['recovered']:8.0f}%  {100 * v['seg']:7.1f}%  {100 * v['gmd']:7.1f}%  "
                      f"{100 * v['jac']:7.1f}%")
    rec = [v["recovered"] for p in pairs.values() for v in p.values()]
    rs = [m["r"] for m in per_case.values()]
    errs = [abs(m["gm_err"]) for m in per_case.values()]
    walls = [m["wall_s"] for m in per_case.values()]
    print(f"median recovered {100 * statistics.median(rec):.0f}% (min {100 * min(rec):.0f}%, "
          f"n={len(rec)} structure pairs); median r {statistics.median(rs):.3f} (min {min(rs):.3f}); "
          f"median |GM err| {100 * statistics.median(errs):.1f}% "
          f"(max {100 * max(errs):.1f}%); median wall {statistics.median(walls):.0f} s at {args.threads} thread(s), "
          f"{args.jobs} at once")
    for name, res in results.items():
        q = res["qc"]
        shown = [k for k in sorted(q) if k.startswith(("gm_", "gmv_", "registration_", "mtl_"))]
        print(f"QC {name:<20} " + "  ".join(f"{k} {q[k]:.3f}" for k in shown))
    (base_dir / label / "summary.json").write_text(json.dumps(
        {"params": overrides, "cases": per_case, "pairs": pairs, "qc": {n: r["qc"] for n, r in results.items()},
         "structures": list(STRUCTURES), "load_end": os.getloadavg()}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

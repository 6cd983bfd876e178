"""Group level at biobank scale: wall time and peak memory for 1,000 / 10,000 / 100,000 participants.

    python bench/group_scale.py                       # 1,000, 10,000, 100,000 participants, 3 runs each
    python bench/group_scale.py --sizes 1000 --repeats 1 --keep /tmp/g1k

For each size it simulates a participant-level output folder the way the participant level lays it
out: one ``sub-*/anat`` folder per participant with a predictions table of two rows (a sex model and
a 5-fold AD model) written by the same pandas writer as ``bids_app.derivatives.write_predictions``,
its JSON sidecar and two GM maps with their sidecars (hard links to one file each: the group level
never opens them, but they are in the folders it walks), 0.5% failure records instead of tables,
and an input ``participants.tsv`` with sex, diagnosis (AD / CN / MCI / n/a) and MMSE. Scores are
drawn from label-dependent distributions, 2% of the T1w fail QC (not validated).

Each run is a fresh process (``python -c 'run_group_level(...)'``: tables, evaluation with the 95%
subsampling intervals, figures, the HTML report); the figures are its wall time and its peak
resident memory (``ru_maxrss`` from ``wait4``), the median of ``--repeats`` runs. Targets (issue 13):
<= 60 s and <= 4 GB for 100,000 participants on the 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bids_app import RESEARCH_USE_NOTICE
from bids_app._io import write_json
from bids_app.derivatives import PREDICTION_COLUMNS, column_sidecar

FAILURE_RATE = 0.005
QC_FAIL_RATE = 0.02


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def simulate(root: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """An input dataset (participants.tsv only) and a participant-level output for ``n`` participants."""
    rng = np.random.default_rng(seed)
    bids, out = root / "bids", root / "out"
    bids.mkdir(parents=True)
    out.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "sim", "BIDSVersion": "1.10.0", "DatasetType": "raw"}\n')
    ids = [f"sub-{i:06d}" for i in range(n)]
    sex = rng.choice(["male", "female"], n)
    dx = rng.choice(["AD", "CN", "MCI", "n/a"], n, p=[0.2, 0.5, 0.2, 0.1])
    mmse = np.where(dx == "AD", rng.normal(21, 4, n), np.where(dx == "MCI", rng.normal(26, 2, n), rng.normal(29, 1, n)))
    mmse = np.clip(np.round(mmse), 0, 30)
    pd.DataFrame({"participant_id": ids, "sex": sex, "diagnosis": dx, "MMSE": mmse.astype(int)}).to_csv(
        bids / "participants.tsv", sep="\t", index=False)

    failed = rng.random(n) < FAILURE_RATE
    qc_ok = rng.random(n) >= QC_FAIL_RATE
    sex_score = np.clip(np.where(sex == "male", rng.normal(0.75, 0.15, n), rng.normal(0.25, 0.15, n)), 0, 1)
    ad_mean = np.where(dx == "AD", 0.75, np.where(dx == "MCI", 0.5, 0.25))
    ad_folds = np.clip(ad_mean[:, None] + rng.normal(0, 0.15, (n, 1)) + rng.normal(0, 0.03, (n, 5)), 0, 1)
    ad_score = ad_folds.mean(axis=1)
    rows = []
    for task, score, folds, sha in (
        ("sex", sex_score, sex_score[:, None], "ab" * 32),
        ("ad", ad_score, ad_folds, ";".join(["cd" * 32] * 5)),
    ):
        pos, neg = ("male", "female") if task == "sex" else ("AD", "CN")
        rows.append(pd.DataFrame({
            "participant_id": ids,
            "session_id": None,
            "run_id": None,
            "source_file": [f"{i}/anat/{i}_T1w.nii.gz" for i in ids],
            "target": task,
            "model_name": f"brainimagenet-{task}",
            "model_version": "1.0",
            "model_sha256": sha,
            "model_trained_on_synthetic": False,
            "score": np.round(score, 6),
            "predicted_label": np.where(score >= 0.5, pos, neg),
            "threshold": 0.5,
            "n_folds": folds.shape[1],
            "fold_scores": [";".join(f"{v:.6f}" for v in f) for f in folds],
            "fold_score_sd": np.round(folds.std(axis=1), 6),
            "qc_pass": qc_ok,
            "qc_flags": np.where(qc_ok, None, "gmv_template_correlation"),
            "qc_gmv_template_correlation": np.round(
                np.where(qc_ok, rng.normal(0.8, 0.04, n), rng.normal(0.55, 0.05, n)), 6),
            "preproc_backend": "clinica",
            "preproc_backend_version": "clinica 0.12.0; SPM25 25.01.02",
            "validated_input": qc_ok,
            "warnings": np.where(qc_ok, None, "QC failed: gmv_template_correlation"),
            "notice": RESEARCH_USE_NOTICE,
        }))
    table = pd.concat(rows).reindex(columns=list(PREDICTION_COLUMNS))
    # one to_csv for everything, the same writer and options as write_table; then two rows per file
    lines = table.to_csv(sep="\t", index=False, na_rep="n/a").splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    # hard links to a few source files (a file takes at most 65,000 links on ext4: a new one per 20,000)
    sources: list[Path] = []
    for i, pid in enumerate(ids):
        if i % 20_000 == 0:
            sidecar, gm = out / f".sidecar-{i}.json", out / f".map-{i}.nii.gz"
            write_json(sidecar, column_sidecar(list(PREDICTION_COLUMNS)))
            gm.write_bytes(b"\0" * 4096)
            sources += [sidecar, gm]
        anat = out / pid / "anat"
        anat.mkdir(parents=True)
        if failed[i]:
            write_json(anat / f"{pid}_failure.json", {
                "participant_id": pid, "step": "preprocessing (clinica)", "error_type": "PreprocessingError",
                "message": "SPM segmentation did not converge", "exit_code": 1})
            continue
        (anat / f"{pid}_predictions.tsv").write_text(header + body[i] + body[n + i])
        os.link(sidecar, anat / f"{pid}_predictions.json")
        for desc in ("", "_desc-modulated"):
            stem = anat / f"{pid}_space-IXI549Space_label-GM{desc}_probseg"
            os.link(gm, f"{stem}.nii.gz")
            os.link(sidecar, f"{stem}.json")
    for source in sources:
        source.unlink()
    return bids, out


_CHILD = (
    "import resource, sys, time; t = time.perf_counter(); from bids_app.group import run_group_level; "
    "s = run_group_level(sys.argv[1], sys.argv[2]); w = time.perf_counter() - t; "
    "print(w, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, s.report_path.stat().st_size, s.exit_code)"
)


def run_once(bids: Path, out: Path) -> tuple[float, float, float]:
    """Wall seconds (imports included), peak resident memory (GB) and report size (MB) of one
    group-level run in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(bids), str(out)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"group level failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    wall, rss_kb, report_bytes, _ = proc.stdout.split()[-4:]
    return float(wall), int(rss_kb) / 1024**2, int(report_bytes) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="simulate below this folder and keep it")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    print(f"CPU: {cpu_model()} ({len(os.sched_getaffinity(0))} CPUs usable); load before: "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'participants':>12} {'simulate s':>10} {'median s':>9} {'runs s':>22} {'peak GB':>8} {'report MB':>9}")
    for n in sorted(args.sizes):
        root = Path(tempfile.mkdtemp(prefix=f"group-scale-{n}-", dir=args.keep))
        try:
            t = time.perf_counter()
            bids, out = simulate(root, n)
            sim = time.perf_counter() - t
            walls, peaks = [], []
            for _ in range(args.repeats):
                wall, peak, report_mb = run_once(bids, out)
                walls.append(wall)
                peaks.append(peak)
            runs = ", ".join(f"{w:.1f}" for w in walls)
            print(f"{n:>12} {sim:>10.1f} {statistics.median(walls):>9.1f} {runs:>22} {max(peaks):>8.2f} "
                  f"{report_mb:>9.2f}",
                  flush=True)
        finally:
            if args.keep is None:
                shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()
    print(f"load after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

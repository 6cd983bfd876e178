"""What BIDS-App users rely on: parallel jobs, kill-and-resume, atomic outputs, bad input."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.errors import EXIT_DATA
from bids_app.workflows import run_participant_level

from .conftest import make_bids, write_t1w
from .test_app_end_to_end import UNITS, write_bids_derivatives

ROOT = Path(__file__).resolve().parents[1]


def _cli(bids, out, maps, models, *extra):
    return [sys.executable, str(ROOT / "run.py"), str(bids), str(out), "participant", "--preproc", "derivatives",
            "--derivatives", str(maps), "--models", str(models), "--skip-bids-validation", "--no-reports", *extra]


def _outputs(out: Path) -> dict[str, bytes]:
    """Every output except logs (they hold timestamps); NIfTI compared by data, not gzip bytes."""
    files = {}
    for p in sorted(out.rglob("*")):
        rel = str(p.relative_to(out))
        if not p.is_file() or rel.startswith(("logs/", ".work/")):  # the default work dir is scratch
            continue
        files[rel] = nib.load(p).get_fdata().tobytes() if p.name.endswith(".nii.gz") else p.read_bytes()
    return files


@pytest.fixture(scope="module")
def small_study(tmp_path_factory, mni_gm_maps, tiny_models):
    root = tmp_path_factory.mktemp("robust")
    bids = make_bids(root / "bids", UNITS)
    maps = write_bids_derivatives(root / "maps", mni_gm_maps[0])
    seq = root / "sequential"
    subprocess.run(_cli(bids, seq, maps, tiny_models), check=True, capture_output=True)
    return bids, maps, tiny_models, seq


def test_parallel_jobs_equal_sequential_run(small_study, tmp_path):
    bids, maps, models, seq = small_study
    out = tmp_path / "parallel"
    jobs = [subprocess.Popen(_cli(bids, out, maps, models, "--participant-label", s, "-w", str(tmp_path / f"w{s}")),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for s in ("01", "02", "03")]
    for job in jobs:
        _, err = job.communicate(timeout=600)
        assert job.returncode == 0, err.decode()[-2000:]
    assert _outputs(out) == _outputs(seq)


def test_killed_run_resumes_to_identical_outputs(small_study, tmp_path):
    bids, maps, models, seq = small_study
    out, work = tmp_path / "out", tmp_path / "work"
    job = subprocess.Popen(_cli(bids, out, maps, models, "-w", str(work)), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.rglob("*_predictions.tsv")):
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    done = list(out.rglob("*_predictions.tsv"))
    assert 1 <= len(done) < len(UNITS), "the kill should land midway"
    # whatever exists under a final name is complete
    for p in out.rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            if p.name.endswith(".nii.gz"):
                assert nib.load(p).get_fdata().shape == (121, 145, 121)
            elif p.suffix == ".json":
                json.loads(p.read_text())
    subprocess.run(_cli(bids, out, maps, models, "-w", str(work)), check=True, capture_output=True)
    assert _outputs(out) == _outputs(seq)
    # reused maps are never cached (they are re-read, so another --derivatives folder always counts)
    assert not (work / UNITS[0] / "maps" / "maps.json").exists()


# -- bad input: a clear message naming the file, a failure record, the others go on ------------------
def _zero_byte(p: Path) -> None:
    p.write_bytes(b"")


def _truncated(p: Path) -> None:
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[: len(raw) // 3]))


def _corrupt_gzip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[20:60] = b"\x00" * 40
    p.write_bytes(bytes(data))


def _four_d(p: Path) -> None:
    write_t1w(p, data=np.random.default_rng(0).random((32, 32, 32, 3)).astype(np.float32) * 500)


def _two_d(p: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((64, 64), np.float32), np.eye(4)), p)


def _nan_only(p: Path) -> None:
    write_t1w(p, data=np.full((40, 40, 40), np.nan, np.float32))


def _singular_affine(p: Path) -> None:
    """Patch the header bytes (nibabel refuses to write it): sform row z = 0, so no inverse exists."""
    import struct

    raw = bytearray(gzip.decompress(p.read_bytes()))
    struct.pack_into("<hh", raw, 252, 0, 1)  # qform_code 0, sform_code 1
    struct.pack_into("<4f", raw, 312, 0.0, 0.0, 0.0, 0.0)  # srow_z
    p.write_bytes(gzip.compress(bytes(raw)))


BREAKERS = {"zero": _zero_byte, "trunc": _truncated, "gzip": _corrupt_gzip, "fourd": _four_d,
            "twod": _two_d, "nan": _nan_only, "singular": _singular_affine}


def test_bad_t1w_files_get_named_failures(tmp_path, tiny_models):
    labels = list(BREAKERS)
    bids = make_bids(tmp_path / "bids", [f"sub-{lab}" for lab in labels])
    for lab, breaker in BREAKERS.items():
        breaker(bids / f"sub-{lab}" / "anat" / f"sub-{lab}_T1w.nii.gz")
    summary = run_participant_level(bids, tmp_path / "out", preproc="ants", models=tiny_models,
                                    skip_validation=True, write_report=False)
    assert len(summary.failed) == len(labels)
    assert summary.exit_code == EXIT_DATA
    for lab in labels:
        record = json.loads((tmp_path / "out" / f"sub-{lab}" / "anat" / f"sub-{lab}_failure.json").read_text())
        assert record["step"] == "input", record
        assert f"sub-{lab}_T1w.nii.gz" in record["message"], record["message"]
        assert record["exit_code"] == EXIT_DATA
        assert Path(record["log"]).is_file()


def test_one_failure_does_not_stop_the_others(small_study, tmp_path):
    bids, maps, models, _ = small_study
    partial = tmp_path / "maps"
    gmd = nib.load(next(maps.rglob("sub-03_*label-GM_probseg.nii.gz"))).get_fdata(dtype=np.float32)
    write_bids_derivatives(partial, gmd, units=[u for u in UNITS if u != "sub-02_run-2"])
    proc = subprocess.run(_cli(bids, tmp_path / "out", partial, models), capture_output=True, text=True)
    assert proc.returncode == 66, proc.stderr[-2000:]
    assert "sub-02_run-2: FAILED at preprocessing (derivatives)" in proc.stdout
    assert "4 of 5 T1w image(s) succeeded" in proc.stdout
    assert len(list((tmp_path / "out").rglob("*_predictions.tsv"))) == 4

"""``vbm-predict slurm`` against a real single-node SLURM cluster (munged, slurmctld, slurmd).

A job array of four participants (derivatives backend, demo models), one with a broken GM map:
the others' outputs equal a sequential run, the broken one leaves its failure record, the group
job waits for the array (afterany) and writes the group table, nothing is left in squeue; a rerun
after repairing the map submits only the missing participant. With CI=true a missing SLURM is a
failure (``.ci/slurm.sh`` installs it); elsewhere the cluster tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import time

import pandas as pd
import pytest

from bids_app.cli.main import main
from bids_app.workflows import run_participant_level

from .conftest import make_bids
from .slurm_cluster import missing_tools, start_cluster
from .test_app_end_to_end import write_bids_derivatives
from .test_parallel import outputs

UNITS = ["sub-01", "sub-02", "sub-03", "sub-04"]
PARTICIPANTS = [
    {"participant_id": "sub-01", "sex": "M", "diagnosis": "AD"},
    {"participant_id": "sub-02", "sex": "F", "diagnosis": "CN"},
    {"participant_id": "sub-03", "sex": "F", "diagnosis": "AD"},
    {"participant_id": "sub-04", "sex": "M", "diagnosis": "CN"},
]


@pytest.fixture(scope="module")
def cluster():
    missing = missing_tools()
    if missing:
        message = f"a SLURM cluster needs {', '.join(missing)} (.ci/slurm.sh installs slurm-wlm and munge)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    c = start_cluster(cpus=2)
    yield c
    c.stop()


def _slurm(cluster, monkeypatch, *args: str) -> int:
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    monkeypatch.setenv("PATH", os.environ["PATH"] + ":/usr/bin:/usr/sbin")
    return main(["slurm", *args])


@pytest.mark.slow
def test_job_array_then_group_on_a_real_cluster(cluster, tmp_path, mni_gm_maps, monkeypatch, capsys):
    bids = make_bids(tmp_path / "bids", UNITS, participants=PARTICIPANTS)
    maps = write_bids_derivatives(tmp_path / "maps", mni_gm_maps[0], units=UNITS)
    broken = next(maps.rglob("sub-03_space-IXI549Space_label-GM_probseg.nii.gz"))
    good = broken.read_bytes()
    broken.write_bytes(good[:300])
    seq = run_participant_level(bids, tmp_path / "seq", preproc="derivatives", derivatives_dir=maps, models="demo",
                                skip_validation=True, nprocs=1)
    assert [r.ok for r in seq.results] == [True, True, False, True]

    out = tmp_path / "out"
    args = [str(bids), str(out), "--preproc", "derivatives", "--derivatives", str(maps), "--models", "demo",
            "--skip-bids-validation", "--cpus-per-task", "1", "--task-mem-gb", "1.5", "--submit"]
    assert _slurm(cluster, monkeypatch, *args) == 0
    printed = capsys.readouterr().out
    assert "4 array task(s)" in printed and "submitted" in printed
    folder = next((out / "code" / "slurm").iterdir())
    ids = json.loads((folder / "jobs.json").read_text())
    # the group job waits for the array
    state = cluster.run("squeue", "-h", "-j", ids["group"], "-o", "%T %r").split()
    assert state[:2] == ["PENDING", "Dependency"] or not state, state
    assert f"afterany:{ids['participant array']}" in cluster.run("scontrol", "show", "job", ids["group"])
    cluster.wait_empty(timeout=900)
    assert cluster.jobs() == []

    logs = sorted(p.name for p in next((out / "logs" / "slurm").iterdir()).iterdir())
    assert [n.split("_")[0] for n in logs if n.startswith("task-")] == ["task-1", "task-2", "task-3", "task-4"]
    group_log = next(p for p in next((out / "logs" / "slurm").iterdir()).iterdir() if p.name.startswith("group"))
    assert "Group level: 3 T1w from 3 participants" in group_log.read_text()
    task_end = max(p.stat().st_mtime for p in group_log.parent.iterdir() if p.name.startswith("task-"))
    assert (out / "group_predictions.tsv").stat().st_mtime >= task_end

    # the tasks' outputs equal the sequential run (provenance timings aside); sub-03's failure recorded
    a, b = outputs(tmp_path / "seq"), outputs(out)
    assert sorted(k for k in a if k.startswith("sub-")) == sorted(k for k in b if k.startswith("sub-"))
    for key in (k for k in a if k.startswith("sub-")):
        if key.endswith("_failure.json"):
            assert a[key]["message"] == b[key]["message"] and b[key]["exit_code"] == 65
        else:
            assert a[key] == b[key], key
    group = pd.read_csv(out / "group_predictions.tsv", sep="\t")
    assert sorted(group["participant_id"].unique()) == ["sub-01", "sub-02", "sub-04"]

    # repaired input, same command again: only sub-03 gets a task
    broken.write_bytes(good)
    time.sleep(1.1)  # a new stamp for the new scripts
    assert _slurm(cluster, monkeypatch, *args) == 0
    assert "3 already have outputs: 1 array task(s)" in capsys.readouterr().out
    cluster.wait_empty(timeout=600)
    newest = max((out / "code" / "slurm").iterdir())
    assert (newest / "tasks.tsv").read_text() == "--participant-label\t03\n"
    assert not list(out.rglob("*_failure.json"))
    assert sorted(pd.read_csv(out / "group_predictions.tsv", sep="\t")["participant_id"].unique()) == UNITS
    assert cluster.jobs() == []


def test_scripts_for_apptainer_and_per_t1w(tmp_path, mni_gm_maps, monkeypatch, capsys):
    """The scripts themselves (no cluster needed): per-T1w tasks, binds, resources from the figures."""
    bids = make_bids(tmp_path / "bids", ["sub-01_ses-1", "sub-01_ses-2", "sub-02"])
    maps = write_bids_derivatives(tmp_path / "maps", mni_gm_maps[0], units=["sub-01_ses-1", "sub-01_ses-2", "sub-02"])
    sif = tmp_path / "vbm-predict.sif"
    sif.write_bytes(b"")
    out = tmp_path / "out"
    code = main(["slurm", str(bids), str(out), "--preproc", "derivatives", "--derivatives", str(maps),
                 "--models", "demo", "--skip-bids-validation", "--per-t1w", "--image", str(sif),
                 "--partition", "short"])
    assert code == 0
    folder = next((out / "code" / "slurm").iterdir())
    tasks = [line.split("\t") for line in (folder / "tasks.tsv").read_text().splitlines()]
    assert tasks == [["--participant-label", "01", "--t1w", "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"],
                     ["--participant-label", "01", "--t1w", "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz"],
                     ["--participant-label", "02", "--t1w", "sub-02/anat/sub-02_T1w.nii.gz"]]
    script = (folder / "array.sbatch").read_text()
    assert "#SBATCH --array=1-3\n" in script and "#SBATCH --partition=short" in script
    assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH --mem=3584M" in script
    b, o = bids.resolve(), out.resolve()
    assert f"apptainer run --cleanenv -B {b}:{b}:ro -B {o}:{o}" in script
    assert f"-B {maps.resolve()}:{maps.resolve()}:ro {sif.resolve()}" in script
    assert "--skip-bids-validation" in script and '--nprocs "${SLURM_CPUS_PER_TASK:-2}"' in script
    assert "#SBATCH --output=" in script and "task-%a_job-%A.log" in script
    assert "--dependency=afterany:${array}" in (folder / "submit.sh").read_text()
    assert (out / "dataset_description.json").exists() and (out / "logs" / "slurm").is_dir()
    # a selected T1w that does not exist is refused with the BIDS-Apps code for "no match"
    assert main(["slurm", str(bids), str(out), "--preproc", "derivatives", "--derivatives", str(maps),
                 "--models", "demo", "--skip-bids-validation", "--t1w", "sub-09/anat/sub-09_T1w.nii.gz"]) == 18

"""Faults the code did not plan for: each T1w gets a failure record and an exit code, the others go on.

Full disk (a real 1 MiB tmpfs where this process may mount one, else a map writer that raises
ENOSPC), unreadable folders (checked as an unprivileged user: root ignores permissions), planted
symlinks in the output and work dirs, an unexpected exception in a backend.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bids_app.errors import EXIT_CANT_CREATE, EXIT_NO_INPUT, EXIT_SOFTWARE, EXIT_USAGE, UsageError
from bids_app.workflows import run_participant_level

from .conftest import make_bids, tree_snapshot
from .test_app_end_to_end import write_bids_derivatives

UNITS = ["sub-01", "sub-02", "sub-03"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def study(tmp_path, mni_gm_maps):
    bids = make_bids(tmp_path / "bids", UNITS)
    maps = write_bids_derivatives(tmp_path / "maps", mni_gm_maps[0], units=UNITS)
    return bids, maps


def _run(bids, out, maps, models, **kw):
    return run_participant_level(bids, out, preproc="derivatives", derivatives_dir=maps, models=models,
                                 skip_validation=True, write_report=False, **kw)


def _failure(out: Path, prefix: str) -> dict:
    hits = list(out.rglob(f"{prefix}_failure.json"))
    assert len(hits) == 1, hits
    return json.loads(hits[0].read_text())


def test_planted_symlink_in_output_dir_fails_that_t1w_with_73(study, tmp_path, tiny_models):
    bids, maps = study
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "sub-02").symlink_to(elsewhere, target_is_directory=True)
    summary = _run(bids, out, maps, tiny_models)
    by = {r.unit.prefix: r for r in summary.results}
    assert by["sub-01"].ok and by["sub-03"].ok
    assert not by["sub-02"].ok and by["sub-02"].exit_code == EXIT_CANT_CREATE
    assert summary.exit_code == EXIT_CANT_CREATE
    assert list(elsewhere.iterdir()) == []  # nothing written through the link
    record = json.loads((out / "logs" / "sub-02_failure.json").read_text())  # the fallback place
    assert record["exit_code"] == EXIT_CANT_CREATE and "outside" in record["message"]


def test_symlink_in_work_dir_into_the_input_is_refused_and_input_untouched(study, tmp_path, tiny_models):
    bids, maps = study
    work = tmp_path / "work"
    work.mkdir()
    (work / "sub-01").symlink_to(bids / "sub-01", target_is_directory=True)
    before = tree_snapshot(bids)
    summary = _run(bids, tmp_path / "out", maps, tiny_models, work_dir=work)
    by = {r.unit.prefix: r for r in summary.results}
    assert not by["sub-01"].ok and by["sub-01"].exit_code == EXIT_CANT_CREATE
    assert by["sub-02"].ok and by["sub-03"].ok
    assert tree_snapshot(bids) == before
    # a work dir that is itself a link into the input is refused before anything is written
    link = tmp_path / "work-link"
    link.symlink_to(bids / "sub-02", target_is_directory=True)
    with pytest.raises(UsageError, match="inside the BIDS input"):
        _run(bids, tmp_path / "out2", maps, tiny_models, work_dir=link)
    assert not (tmp_path / "out2").exists() and tree_snapshot(bids) == before


def test_unexpected_exception_becomes_a_failure_record_with_70(study, tmp_path, tiny_models):
    from bids_app.discovery import discover_units
    from bids_app.participant import UnitOptions
    from bids_app.preproc.existing import DerivativesBackend
    from bids_app.workflows import _load_packages, run_unit

    bids, maps = study

    class Flaky(DerivativesBackend):
        """The real backend, except that one T1w hits a bug."""

        def run(self, unit, work_dir):
            if unit.subject == "02":
                return {}["no such key"]
            return super().run(unit, work_dir)

    out = tmp_path / "out"
    out.mkdir()
    options = UnitOptions(bids_dir=bids, output_dir=out, work_dir=out / ".work", write_report=False, device="cpu")
    packages = _load_packages(tiny_models, "cpu")
    results = [run_unit(u, Flaky(maps), packages, options) for u in discover_units(bids)]
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].exit_code == EXIT_SOFTWARE and results[1].step.startswith("preprocessing")
    record = _failure(out, "sub-02")
    assert record["error_type"] == "KeyError" and record["step"].startswith("preprocessing")
    log = Path(record["log"]).read_text()
    assert "Traceback" in log and "no such key" in log  # the traceback goes to the unit's log


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_full_disk_gives_73_and_the_other_t1w_are_tried(study, tmp_path, tiny_models, monkeypatch):
    bids, maps = study
    disk = tmp_path / "disk"
    mounted = _mount_tmpfs(disk, "1m")  # a real full disk: 1 MiB holds the dataset files, not a map
    try:
        if not mounted:  # no mount allowed here: the map writer meets a full disk instead
            import nibabel as nib

            real_save = nib.save

            def full_disk_save(img, filename, *a, **k):
                if "probseg" in str(filename):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
                return real_save(img, filename, *a, **k)

            monkeypatch.setattr(nib, "save", full_disk_save)
            disk.mkdir(exist_ok=True)
        out = disk / "out"
        summary = _run(bids, out, maps, tiny_models, work_dir=tmp_path / "work")
        assert [r.ok for r in summary.results] == [False, False, False]  # every T1w tried
        assert {r.exit_code for r in summary.results} == {EXIT_CANT_CREATE}
        assert summary.exit_code == EXIT_CANT_CREATE
        assert all("no space left" in r.error for r in summary.results)
        assert not list(out.rglob("*.part*"))  # no half-written file left behind
        assert not list(out.rglob("*_probseg.nii.gz"))  # no GMD without its GMV
    finally:
        if mounted and subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=False)  # busy: detach it anyway


def _as_nobody(code: str, *paths: Path) -> subprocess.CompletedProcess:
    """Run ``code`` as an unprivileged user (root ignores file permissions)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": "/tmp", "MPLCONFIGDIR": tempfile.gettempdir()}
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.fail("setpriv (util-linux) is needed to drop privileges for this test")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd="/tmp")


def test_unreadable_subject_folder_gives_66_with_its_name_or_is_skipped(mni_gm_maps, tiny_models):
    base = Path(tempfile.mkdtemp(prefix="vbm-unreadable-"))
    try:
        bids = make_bids(base / "bids", UNITS)
        maps = write_bids_derivatives(base / "maps", mni_gm_maps[0], units=UNITS)
        models = base / "models"
        shutil.copytree(tiny_models, models)
        (base / "out").mkdir()
        for p in [base, *base.rglob("*")]:
            p.chmod(0o777 if p.is_dir() else 0o666)
        (bids / "sub-02").chmod(0o000)
        code = (
            "import sys\n"
            "from bids_app.cli.main import main\n"
            f"args = [{str(bids)!r}, {str(base / 'out')!r}, 'participant', '--skip-bids-validation', '--no-reports',"
            f" '--preproc', 'derivatives', '--derivatives', {str(maps)!r}, '--models', {str(models)!r}]\n"
            "print('ALL', main(args))\n"
            "print('SELECTED', main(args + ['--participant-label', '01', '03']))\n"
        )
        done = _as_nobody(code)
        assert f"ALL {EXIT_NO_INPUT}" in done.stdout, done.stdout + done.stderr
        assert "sub-02" in done.stderr and "permission denied" in done.stderr and "Traceback" not in done.stderr
        assert "SELECTED 0" in done.stdout, done.stdout + done.stderr  # not selected: skipped, the others run
        assert len(list((base / "out").rglob("*_predictions.tsv"))) == 2
    finally:
        (bids / "sub-02").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_unreadable_t1w_file_fails_that_t1w_with_66(tiny_models):
    base = Path(tempfile.mkdtemp(prefix="vbm-unreadable-"))
    try:
        bids = make_bids(base / "bids", ["sub-01"])
        for p in [base, *base.rglob("*")]:
            p.chmod(0o777 if p.is_dir() else 0o666)
        t1w = next(bids.rglob("*_T1w.nii.gz"))
        t1w.chmod(0o000)
        code = (
            "from bids_app.workflows import run_participant_level\n"
            f"s = run_participant_level({str(bids)!r}, {str(base / 'out')!r}, preproc='ants', models='demo',"
            " skip_validation=True, write_report=False)\n"
            "print('CODES', [r.exit_code for r in s.results], s.results[0].step)\n"
        )
        done = _as_nobody(code)
        assert f"CODES [{EXIT_NO_INPUT}] input" in done.stdout, done.stdout + done.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_output_inside_input_refused_before_writing(study, tmp_path, tiny_models):
    bids, maps = study
    before = tree_snapshot(bids)
    with pytest.raises(UsageError) as info:
        _run(bids, bids / "derivatives" / "vbm", maps, tiny_models)
    assert info.value.exit_code == EXIT_USAGE
    assert tree_snapshot(bids) == before

"""The same path rules everywhere: the group level checks its paths before touching anything; the
default work dir is ``<output_dir>/.work`` (ignored by the BIDS validator) and is cleaned per T1w;
an output dir of another dataset is refused; ``.part`` files of dead jobs go, those of live jobs stay."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bids_app.cli.main import main
from bids_app.errors import EXIT_NO_INPUT, EXIT_USAGE

from .conftest import make_bids, tree_snapshot
from .test_app_end_to_end import write_bids_derivatives


@pytest.fixture(scope="module")
def done_study(tmp_path_factory, mni_gm_maps, tiny_models):
    root = tmp_path_factory.mktemp("paths")
    units = ["sub-01", "sub-02"]
    bids = make_bids(root / "bids", units, participants=[
        {"participant_id": "sub-01", "sex": "M"}, {"participant_id": "sub-02", "sex": "F"}])
    maps = write_bids_derivatives(root / "maps", mni_gm_maps[0], units=units)
    out = root / "out"
    code = main([str(bids), str(out), "participant", "--skip-bids-validation", "--preproc", "derivatives",
                 "--derivatives", str(maps), "--models", str(tiny_models), "--no-reports"])
    assert code == 0
    (out / "group_predictions.tsv").write_text("participant_id\n")  # stands for the group outputs a mistyped
    return root, bids, maps, out                                     # run used to delete as stale


def test_group_level_with_a_mistyped_bids_dir_exits_66_and_deletes_nothing(done_study, capsys):
    root, bids, maps, out = done_study
    before = tree_snapshot(out)
    assert main([str(root / "bdis"), str(out), "group"]) == EXIT_NO_INPUT
    assert "does not exist" in capsys.readouterr().err
    assert tree_snapshot(out) == before


def test_group_level_refuses_an_output_inside_the_input(done_study):
    root, bids, maps, out = done_study
    before = tree_snapshot(bids)
    assert main([str(bids), str(bids / "derivatives" / "vbm"), "group"]) == EXIT_USAGE
    assert tree_snapshot(bids) == before


def test_default_work_dir_is_hidden_in_the_output_and_cleaned(done_study):
    from bids_app.validation import run_validator

    root, bids, maps, out = done_study
    assert (out / ".work").is_dir()
    assert not (root / ".out-work").exists()  # the old default next to the output is gone
    # the derivatives backend leaves no scratch; what is left per T1w is at most the lock and the cache
    for unit_dir in (out / ".work").iterdir():
        assert {p.name for p in unit_dir.iterdir()} <= {".lock", "maps"}
    (out / ".work" / "sub-01" / "junk.txt").write_text("a file the validator must not see")
    report = run_validator(out)
    assert report.errors == [], "\n".join(map(str, report.errors))
    assert not [w for w in report.warnings if ".work" in str(w)]


def test_output_dir_of_another_dataset_is_refused(done_study, tmp_path, tiny_models, capsys):
    root, bids, maps, out = done_study
    other = make_bids(tmp_path / "other", ["sub-01"])
    desc = json.loads((other / "dataset_description.json").read_text())
    desc["Name"] = "another study"
    (other / "dataset_description.json").write_text(json.dumps(desc))
    before = tree_snapshot(out)
    code = main([str(other), str(out), "participant", "--skip-bids-validation", "--preproc", "derivatives",
                 "--derivatives", str(maps), "--models", str(tiny_models)])
    assert code == EXIT_USAGE
    assert "holds outputs of another dataset" in capsys.readouterr().err
    assert tree_snapshot(out) == before


def test_partials_of_dead_jobs_are_removed_those_of_live_jobs_kept(tmp_path):
    from bids_app._io import _host, atomic_path, remove_stale_partials

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    name = "sub-01_predictions.tsv"
    stale = tmp_path / f".{name}.{_host()}.{dead_pid}.abc123.part.tsv"
    live = tmp_path / f".{name}.{_host()}.{os.getppid()}.def456.part.tsv"  # the parent is alive
    foreign = tmp_path / f".{name}.otherhost.{dead_pid}.ghi789.part.tsv"  # another host: kept while young
    for p in (stale, live, foreign):
        p.write_text("partial")
    removed = remove_stale_partials(tmp_path, [name])
    assert removed == [stale]
    assert live.exists() and foreign.exists()
    with atomic_path(tmp_path / name, suffix=".tsv") as tmp:  # temporary names carry host and pid
        assert f".{_host()}.{os.getpid()}." in tmp.name
        tmp.write_text("x")

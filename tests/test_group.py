"""Group level on real participant outputs written with the app's own writers.

The cohort below is small enough to check by hand (participant-level mean scores):

====== ======= ====== ===== ========================= =========================
sub    sex     dx     MMSE  AD score (mean)           sex score (mean)
====== ======= ====== ===== ========================= =========================
01     M       AD     18    .9                        .8
02     female  CN     29    .1, .3 (2 sessions) = .2  .2, .4 = .3
03     F       MCI    25    .55                       .6
04     male    AD*    21    .45 (not validated)       .7
05     x (?)   HC     30    .15                       .6
06     F       CN     n/a   .6, .4 (2 runs) = .5      .35, .25 = .3
07     (not in participants.tsv)  .7                  .55
08     F       CN     27    failed (failure record, no predictions)
====== ======= ====== ===== ========================= =========================
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_app._io import write_json
from bids_app.derivatives import PREDICTION_COLUMNS, failure_path, predictions_path
from bids_app.errors import NoInputError
from bids_app.evaluation import EVALUATION_COLUMNS
from bids_app.group import run_group_level
from bids_app.outputs import GROUP_FIGURES

from .conftest import make_bids
from .group_fixtures import init_output, make_unit, prediction_row, write_maps, write_unit

PARTICIPANTS = (
    "participant_id\tsex\tdiagnosis\tMMSE\n"
    "sub-01\tM\tAD\t18\n"
    "sub-02\tfemale\tCN\t29\n"
    "sub-03\tF\tMCI\t25\n"
    "sub-04\tmale\tAlzheimer's disease\t21\n"
    "sub-05\tx\tHC\t30\n"
    "sub-06\tF\tCN\tn/a\n"
    "sub-08\tF\tCN\t27\n"
)

# (sub, ses, run, AD score, sex score, AD validated)
IMAGES = [
    ("01", None, None, 0.9, 0.8, True),
    ("02", "1", None, 0.1, 0.2, True),
    ("02", "2", None, 0.3, 0.4, True),
    ("03", None, None, 0.55, 0.6, True),
    ("04", None, None, 0.45, 0.7, False),
    ("05", None, None, 0.15, 0.6, True),
    ("06", None, "1", 0.6, 0.35, True),
    ("06", None, "2", 0.4, 0.25, True),
    ("07", None, None, 0.7, 0.55, True),
]


def build_cohort(root: Path, participants: str | None = PARTICIPANTS) -> tuple[Path, Path]:
    bids = make_bids(root / "bids", participants=participants)
    out = init_output(root / "out", bids)
    for sub, ses, run, ad, sex, validated in IMAGES:
        unit = make_unit(bids, sub, ses, run)
        rows = [prediction_row(unit, bids, "sex", sex), prediction_row(unit, bids, "ad", ad, validated=validated)]
        write_unit(out, unit, rows)
    write_json(failure_path(out, make_unit(bids, "08")), {"reason": "corrupt gzip: sub-08_T1w.nii.gz", "step": "load"})
    # stale failure record of a T1w that later succeeded: ignored
    write_json(failure_path(out, make_unit(bids, "01")), {"reason": "killed"})
    # leftover temporary file of an interrupted write: hidden, ignored
    (out / "sub-07" / "anat" / ".sub-07_x_predictions.tsv").write_text("garbage\n")
    return bids, out


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    bids, out = build_cohort(root)
    # decoy: a derivatives folder inside the input must not be read
    decoy = make_unit(bids, "01")
    write_unit(bids / "derivatives" / "other", decoy, [prediction_row(decoy, bids, "sex", 0.01)])
    before = {p: p.stat().st_mtime_ns for p in bids.rglob("*")}
    summary = run_group_level(bids, out)
    after = {p: p.stat().st_mtime_ns for p in bids.rglob("*")}
    assert before == after, "the group level wrote into the input dataset"
    return bids, out, summary


def _row(table: pd.DataFrame, task: str, subset: str) -> pd.Series:
    rows = table[(table["target"] == task) & (table["subset"] == subset)]
    assert len(rows) == 1
    return rows.iloc[0]


def _read_eval(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "group_evaluation.tsv", sep="\t", na_values=["n/a"], keep_default_na=False,
                       dtype={"model_version": str})


def test_group_predictions_concatenate_every_participant_sorted(cohort):
    bids, out, summary = cohort
    table = pd.read_csv(out / "group_predictions.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert len(table) == 2 * len(IMAGES)
    assert list(table.columns) == list(PREDICTION_COLUMNS)
    assert table["model_version"].unique().tolist() == ["1.10"]  # text stays text, not the float 1.1
    keys = list(zip(table["participant_id"], table["session_id"], table["run_id"], table["target"]))
    assert keys == sorted(keys)
    assert (table["score"].astype(float) == 0.01).sum() == 0  # the decoy inside bids_dir was not read
    assert summary.n_images == 9 and summary.n_participants == 7
    assert set(table[table["participant_id"] == "sub-06"]["run_id"]) == {"1", "2"}


def test_failures_are_counted_stale_ones_ignored(cohort):
    _, out, summary = cohort
    failures = [(f.participant_id, f.reason) for f in summary.failures]
    assert failures == [("sub-08", "at load: corrupt gzip: sub-08_T1w.nii.gz")]
    text = summary.text()
    assert "9 T1w from 7 participants" in text and "1 T1w failed" in text and "corrupt gzip" in text
    assert "ad test-ad: AUC 0.833" in text and "group_evaluation.tsv" in text
    assert summary.exit_code == 1  # the record of sub-08 carries no exit code: 1, "some T1w failed"


def test_ad_evaluation_matches_hand_computation(cohort):
    _, out, summary = cohort
    table = _read_eval(out)
    r = _row(table, "ad", "all")
    # labelled: 01 AD .9 (TP), 04 AD .45 (FN), 02 CN .2 (TN), 05 CN .15 (TN), 06 CN .5 (FP: >= threshold)
    assert (r.n_participants, r.n_labelled, r.n_positive, r.n_negative) == (7, 5, 2, 3)
    assert (r.n_unlabelled, r.n_other_class) == (1, 1)  # sub-07 unlabelled; sub-03 MCI left out
    assert (r.n_images, r.n_images_not_validated) == (9, 1)
    assert r.accuracy == pytest.approx(3 / 5)
    assert r.sensitivity == pytest.approx(1 / 2)
    assert r.specificity == pytest.approx(2 / 3)
    assert r.balanced_accuracy == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert r.roc_auc == pytest.approx(5 / 6)  # .9 beats 3 CN, .45 beats .2 and .15 only
    # MMSE (any diagnosis): 01 18/.9, 02 29/.2, 03 25/.55, 04 21/.45, 05 30/.15 -> sum d^2 = 38
    assert r.n_mmse == 5
    assert r.spearman_r_mmse == pytest.approx(1 - 6 * 38 / (5 * 24))
    # validated only: sub-04's AD prediction (ants preprocessing) is left out
    v = _row(table, "ad", "validated")
    assert (v.n_participants, v.n_labelled, v.n_positive, v.n_negative, v.n_images_not_validated) == (6, 4, 1, 3, 0)
    assert (v.accuracy, v.sensitivity, v.roc_auc) == (pytest.approx(3 / 4), 1.0, 1.0)


def test_sex_evaluation_matches_hand_computation(cohort):
    _, out, _ = cohort
    r = _row(_read_eval(out), "sex", "all")
    # male 01 .8, 04 .7 (TP, TP); female 02 .3 (TN), 03 .6 (FP), 06 .3 (TN); 05 'x' and 07 unlabelled
    assert (r.n_labelled, r.n_positive, r.n_negative, r.n_unlabelled, r.n_other_class) == (5, 2, 3, 2, 0)
    assert (r.accuracy, r.sensitivity, r.specificity) == (pytest.approx(0.8), 1.0, pytest.approx(2 / 3))
    assert r.roc_auc == 1.0
    assert math.isnan(r.spearman_r_mmse) and pd.isna(r.n_mmse)


def test_intervals_bracket_the_estimates(cohort):
    _, out, _ = cohort
    table = _read_eval(out)
    for _, r in table.iterrows():
        for name in ("accuracy", "sensitivity", "specificity", "balanced_accuracy", "roc_auc"):
            lo, hi = r[f"{name}_ci_low"], r[f"{name}_ci_high"]
            if not (math.isnan(lo) or math.isnan(hi)):
                assert 0.0 <= lo <= hi <= 1.0


def test_tables_match_their_json_sidecars(cohort):
    _, out, _ = cohort
    for name, spec in (("group_predictions", PREDICTION_COLUMNS), ("group_evaluation", EVALUATION_COLUMNS)):
        header = (out / f"{name}.tsv").read_text().splitlines()[0].split("\t")
        sidecar = json.loads((out / f"{name}.json").read_text())
        assert header == list(sidecar) == list(spec)
        assert all(isinstance(v.get("Description"), str) and v["Description"] for v in sidecar.values())
    sidecar = json.loads((out / "group_evaluation.json").read_text())
    assert "1000 random subsamples of 50%" in sidecar["roc_auc_ci_low"]["Description"]


def test_figures_are_png(cohort):
    _, out, summary = cohort
    assert {p.name for p in summary.figure_paths} == set(GROUP_FIGURES.values())
    for p in summary.figure_paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_interval_width_on_a_larger_cohort(tmp_path):
    """120 participants, AD scores from two overlapping distributions: intervals are informative."""
    rng = np.random.default_rng(4)
    n = 120
    dx = np.where(np.arange(n) < 50, "AD", "CN")
    score = np.clip(np.where(dx == "AD", rng.normal(0.7, 0.2, n), rng.normal(0.3, 0.2, n)), 0, 1)
    lines = ["participant_id\tdiagnosis"] + [f"sub-{i:03d}\t{d}" for i, d in enumerate(dx)]
    bids = make_bids(tmp_path / "bids", participants="\n".join(lines) + "\n")
    out = init_output(tmp_path / "out", bids)
    for i in range(n):
        unit = make_unit(bids, f"{i:03d}")
        write_unit(out, unit, [prediction_row(unit, bids, "ad", float(score[i]))])
    summary = run_group_level(bids, out, report=False)
    r = _row(summary.evaluation, "ad", "all")
    assert r.n_labelled == 120
    for name in ("accuracy", "sensitivity", "specificity", "balanced_accuracy", "roc_auc"):
        lo, hi = r[f"{name}_ci_low"], r[f"{name}_ci_high"]
        assert lo < r[name] < hi, name
        assert 0.02 < hi - lo < 0.35, (name, lo, hi)
    # accuracy: 60 drawn of 120 without replacement -> sd ~ sqrt(p(1-p)/60 * 0.5), 95% width ~ 0.11
    p = r.accuracy
    normal_width = 2 * 1.96 * math.sqrt(p * (1 - p) / 120)
    assert hi - lo > 0 and abs((r.accuracy_ci_high - r.accuracy_ci_low) - normal_width) < 0.04


def test_without_labels_no_evaluation_and_stale_outputs_removed(tmp_path):
    bids, out = build_cohort(tmp_path)
    run_group_level(bids, out, report=False)
    assert (out / "group_evaluation.tsv").exists()
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-01\t71\n")
    summary = run_group_level(bids, out, report=False)
    assert summary.evaluation is None and summary.evaluation_path is None
    assert not (out / "group_evaluation.tsv").exists() and not (out / "group_evaluation.json").exists()
    assert not any((out / f).exists() for f in GROUP_FIGURES.values())
    assert len(pd.read_csv(out / "group_predictions.tsv", sep="\t")) == 18


def test_empty_output_dir_is_refused(tmp_path):
    bids = make_bids(tmp_path / "bids", participants=PARTICIPANTS)
    out = init_output(tmp_path / "out", bids)
    with pytest.raises(NoInputError, match="run the participant level first"):
        run_group_level(bids, out)
    with pytest.raises(NoInputError, match="does not exist"):
        run_group_level(bids, tmp_path / "missing")


def _validator() -> str | None:
    local = Path(sys.executable).parent / "bids-validator-deno"
    return str(local) if local.exists() else shutil.which("bids-validator-deno")


@pytest.mark.skipif(_validator() is None, reason="bids-validator-deno is not installed")
def test_output_with_group_files_passes_the_bids_validator(tmp_path):
    from bids_app.report import write_participant_report

    bids, out = build_cohort(tmp_path)
    (out / "sub-07" / "anat" / ".sub-07_x_predictions.tsv").unlink()  # temporaries never survive a real run
    unit = make_unit(bids, "02", "1")
    write_maps(out, unit)
    write_participant_report(out, unit)
    write_participant_report(out, make_unit(bids, "08"))
    summary = run_group_level(bids, out)
    assert summary.report_path and summary.report_path.exists() and (out / "reports").is_dir()
    env = dict(os.environ, HOME=str(tmp_path), NO_COLOR="1")
    proc = subprocess.run([_validator(), "--format", "json", str(out)], capture_output=True, text=True, env=env,
                          timeout=120)
    result = json.loads(proc.stdout)
    errors = [(i.get("code"), i.get("location")) for i in result["issues"]["issues"] if i.get("severity") == "error"]
    assert errors == [], errors
    assert proc.returncode == 0
    assert predictions_path(out, unit).exists()


def test_pybids_indexes_the_output_with_group_files(tmp_path):
    import bids

    bids_dir, out = build_cohort(tmp_path)
    run_group_level(bids_dir, out, report=False)
    layout = bids.BIDSLayout(out, validate=False, is_derivative=True)
    files = layout.get(suffix="predictions", extension=".tsv")
    per_image = [f for f in files if f.entities.get("subject")]
    assert len(per_image) == len(IMAGES)
    assert [f.filename for f in files if not f.entities.get("subject")] == ["group_predictions.tsv"]
    assert layout.get(subject="06", run=1, suffix="predictions", extension=".tsv")
    assert layout.get_tasks() == []  # no column description mistaken for a task label


def test_only_failures_gives_empty_table_and_a_report_listing_them(tmp_path):
    bids = make_bids(tmp_path / "bids", participants=PARTICIPANTS)
    out = init_output(tmp_path / "out", bids)
    # the record the participant workflow writes (bids_app.workflows._record_failure)
    write_json(
        failure_path(out, make_unit(bids, "01", "1")),
        {"participant_id": "sub-01", "session_id": "ses-1", "step": "load", "error_type": "InputDataError",
         "message": "4D image: sub-01_ses-1_T1w.nii.gz", "exit_code": 65},
    )
    summary = run_group_level(bids, out)
    assert summary.n_images == 0 and summary.evaluation is None
    assert (out / "group_predictions.tsv").read_text().splitlines() == ["\t".join(PREDICTION_COLUMNS)]
    assert [f.participant_id for f in summary.failures] == ["sub-01"]
    text = summary.report_path.read_text()
    assert summary.failures[0].reason == "at load: InputDataError: 4D image: sub-01_ses-1_T1w.nii.gz"
    assert "at load: InputDataError: 4D image: sub-01_ses-1_T1w.nii.gz" in text and "not evaluated" in text


def test_unusable_tables_are_reported_and_set_the_exit_code(tmp_path):
    bids, out = build_cohort(tmp_path)
    header_only = predictions_path(out, make_unit(bids, "05"))
    header_only.write_text("\t".join(PREDICTION_COLUMNS) + "\n")  # e.g. a run killed after the header
    garbled = predictions_path(out, make_unit(bids, "07"))
    garbled.write_text("participant_id\tscore\nsub-07\t0.5\n")  # lacks target and model_name
    write_json(failure_path(out, make_unit(bids, "08")), {"step": "load", "message": "4D image", "exit_code": 65})
    summary = run_group_level(bids, out)
    assert [(p.participant_id, p.reason) for p in summary.problems] == [
        ("sub-05", "holds only its header: no prediction rows"),
        ("sub-07", "cannot be read as a predictions table (lacks the columns ['target', 'model_name'])"),
    ]
    assert summary.exit_code == 65  # every incomplete T1w has the code of bad input data
    assert "sub-05" not in set(summary.predictions["participant_id"]) and summary.n_participants == 5
    text = summary.text()
    assert "not used: sub-05/anat/sub-05_predictions.tsv: holds only its header" in text
    report = summary.report_path.read_text()
    assert "Predictions tables not used" in report and "sub-07_predictions.tsv" in report


def test_a_failed_run_removes_nothing(tmp_path, monkeypatch):
    """An evaluation that a new run would no longer write stays until that run has succeeded."""
    import bids_app.report

    bids, out = build_cohort(tmp_path)
    run_group_level(bids, out)
    before = {p.name: p.read_bytes() for p in out.glob("group_*")}
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-01\t71\n")  # no labels any more

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bids_app.report, "write_group_report", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_group_level(bids, out)
    assert (out / "group_evaluation.tsv").read_bytes() == before["group_evaluation.tsv"]
    assert all((out / name).exists() for name in GROUP_FIGURES.values())
    monkeypatch.undo()
    run_group_level(bids, out)  # now it succeeds: the stale evaluation and figures go
    assert not (out / "group_evaluation.tsv").exists()
    assert not any((out / name).exists() for name in GROUP_FIGURES.values())


def test_the_report_summarises_and_caps_its_lists(tmp_path, monkeypatch):
    """No row per prediction (a biobank's 100,000 would make a page no browser can use); the list of
    failed T1w is capped at MAX_LISTED with the full count."""
    import bids_app.report.group_report as group_report

    bids, out = build_cohort(tmp_path)
    for sub in ("09", "10"):  # two more failures: three in all, more than the cap below
        write_json(failure_path(out, make_unit(bids, sub)), {"reason": f"corrupt gzip: sub-{sub}", "step": "load"})
    monkeypatch.setattr(group_report, "MAX_LISTED", 1)
    text = run_group_level(bids, out).report_path.read_text()
    sources = [f"sub-{sub}_T1w" for sub, ses, run, *_ in IMAGES if ses is None and run is None]
    assert not any(s in text for s in sources)  # QC-passed predictions are summarised, never listed
    assert "3 failure records; the first 1 are listed." in text
    assert text.count('_failure.json">') == 1  # one linked record; the reasons table still counts all three

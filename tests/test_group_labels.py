"""participants.tsv parsing: spellings, coded levels, missing vs unrecognised, bad tables."""

from __future__ import annotations

import logging
import math

import pandas as pd
import pytest

from bids_app.errors import InputDataError
from bids_app.labels import (
    LABEL_COLUMNS,
    parse_age,
    parse_diagnosis,
    parse_mci_progression,
    parse_sex,
    read_labels,
    read_participant_labels,
)

from .conftest import make_bids


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("M", "male"), ("m", "male"), ("male", "male"), ("Male", "male"), ("MALE", "male"), (" man ", "male"),
        ("F", "female"), ("f", "female"), ("female", "female"), ("Female", "female"), ("FEMALE", "female"),
        ("woman", "female"), ("O", "other"), ("other", "other"),
        ("1", None), ("2", None), ("x", None), ("males", None),
    ],
)
def test_sex_spellings(raw, expected):
    assert parse_sex(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("AD", "AD"), ("ad", "AD"), ("Alzheimer's disease", "AD"), ("Alzheimer\u2019s Disease", "AD"),
        ("alzheimers_disease", "AD"), ("Alzheimer", "AD"), ("probable AD", "AD"),
        ("CN", "CN"), ("NC", "CN"), ("HC", "CN"), ("control", "CN"), ("Controls", "CN"),
        ("Healthy_Control", "CN"), ("healthy-control", "CN"), ("cognitively normal", "CN"),
        ("MCI", "MCI"), ("EMCI", "MCI"), ("LMCI", "MCI"), ("mild cognitive impairment", "MCI"),
        ("dementia", None), ("FTD", None), ("1", None), ("patient", None),
    ],
)
def test_diagnosis_spellings(raw, expected):
    assert parse_diagnosis(raw) == expected


def test_table_unknown_values_become_missing_counted_and_logged(tmp_path, caplog):
    bids = make_bids(
        tmp_path,
        participants="participant_id\tSex\tDX\tMMSE\n"
        "sub-01\tM\tAD\t20\n"
        "02\tfemale\tNC\t29.5\n"  # participant_id without its prefix
        "sub-03\tx\tMCI\tn/a\n"
        "sub-04\t1\tdementia\tthirty\n"
        "sub-05\tn/a\tn/a\t45\n"
        "sub-06\tx\tHC\t0\n",
    )
    with caplog.at_level(logging.WARNING, logger="bids_app.labels"):
        labels = read_participant_labels(bids)
    t = labels.table
    assert list(t.index) == [f"sub-0{i}" for i in range(1, 7)]
    assert t["sex"].isna().tolist() == [False, False, True, True, True, True]
    assert t.loc["sub-01", "sex"] == "male" and t.loc["sub-02", "sex"] == "female"
    assert t["sex"].isna().sum() == 4
    assert t["diagnosis"].tolist()[:3] == ["AD", "CN", "MCI"]
    assert t.loc["sub-06", "diagnosis"] == "CN"
    assert t["diagnosis"].isna().sum() == 2
    assert t.loc["sub-02", "mmse"] == 29.5 and t.loc["sub-06", "mmse"] == 0.0
    assert t["mmse"].isna().sum() == 3
    # n/a is missing, not unrecognised; unrecognised spellings are counted per value
    assert labels.n_unrecognised("sex") == 3 and dict(labels.unrecognised["sex"]) == {"x": 2, "1": 1}
    assert labels.n_unrecognised("diagnosis") == 1
    assert dict(labels.unrecognised["mmse"]) == {"thirty": 1, "45": 1}
    assert labels.columns == {"sex": "Sex", "diagnosis": "DX", "mmse": "MMSE"}
    text = caplog.text
    assert "'x' is not a recognised spelling (2 participants)" in text
    assert "'1' is not a recognised spelling" in text and "Levels" in text  # hints at participants.json
    assert "'dementia'" in text and "'thirty' is not a number in 0..30" in text
    assert "participants.tsv" in text


def test_numeric_codes_only_with_levels_in_participants_json(tmp_path):
    tsv = "participant_id\tsex\tgroup\nsub-01\t1\t3\nsub-02\t2.0\t1\nsub-03\t0\t2\n"
    sidecar = {
        "sex": {"Description": "sex", "Levels": {"1": "Male", "2": "Female"}},
        "group": {"Levels": {"1": "healthy control", "2": "MCI", "3": "Alzheimer's disease"}},
    }
    labels = read_participant_labels(make_bids(tmp_path, participants=tsv, participants_json=sidecar))
    assert labels.table["sex"].tolist()[:2] == ["male", "female"]
    assert labels.table["sex"].isna().tolist() == [False, False, True]  # 0 is not a declared level
    assert labels.table["diagnosis"].tolist() == ["AD", "CN", "MCI"]


def test_no_participants_tsv_or_no_label_columns(tmp_path):
    labels = read_participant_labels(make_bids(tmp_path / "a", participants=None))
    assert labels.source is None and len(labels.table) == 0 and not labels.has_labels
    labels = read_participant_labels(make_bids(tmp_path / "b", participants="participant_id\thandedness\nsub-01\tR\n"))
    assert len(labels.table) == 1 and not labels.has_labels
    assert math.isnan(labels.table.loc["sub-01", "mmse"])
    # age is read (brain-age heads) but is no label for the binary evaluations
    labels = read_participant_labels(make_bids(tmp_path / "c", participants="participant_id\tage\nsub-01\t70\n"))
    assert not labels.has_labels and labels.table.loc["sub-01", "age"] == 70.0
    assert labels.has_label("age") and not labels.has_label("mci_progression")
    with pytest.raises(KeyError, match="not a label column"):
        labels.has_label("handedness")


def test_bad_tables_name_the_file(tmp_path):
    with pytest.raises(InputDataError, match=r"participants\.tsv.*participant_id"):
        read_participant_labels(make_bids(tmp_path / "a", participants="subject\tsex\n01\tM\n"))
    with pytest.raises(InputDataError, match=r"participants\.tsv.*more than once.*sub-01"):
        read_participant_labels(make_bids(tmp_path / "b", participants="participant_id\tsex\nsub-01\tM\n01\tF\n"))
    bids = make_bids(tmp_path / "c", participants="participant_id\tsex\nsub-01\tM\n")
    (bids / "participants.json").write_text("{not json")
    with pytest.raises(InputDataError, match=r"participants\.json"):
        read_participant_labels(bids)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("pMCI", "pMCI"), ("PMCI", "pMCI"), ("progressive MCI", "pMCI"), ("progressive_mci", "pMCI"),
        ("converter", "pMCI"), ("MCI-C", "pMCI"), ("MCIc", "pMCI"),
        ("sMCI", "sMCI"), ("stable MCI", "sMCI"), ("Stable", "sMCI"), ("non-converter", "sMCI"), ("MCI-NC", "sMCI"),
        ("MCI", None), ("AD", None), ("1", None), ("maybe", None),
    ],
)
def test_mci_progression_spellings(raw, expected):
    assert parse_mci_progression(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [("70", 70.0), (" 71.5 ", 71.5), ("0", 0.0), ("89+", None),
                                              ("-3", None), ("200", None), ("old", None), ("nan", None)])
def test_age_values(raw, expected):
    assert parse_age(raw) == expected


def _longitudinal(tmp_path, caplog=None):
    bids = make_bids(
        tmp_path,
        ["sub-01_ses-M00", "sub-01_ses-M12", "sub-02_ses-M00", "sub-03_ses-M00"],
        participants="participant_id\tsex\tage\tdiagnosis\tmci_progression\tsite\n"
        "sub-01\tF\t70.5\tMCI\tpMCI\tS01\n"
        "sub-02\tM\t66\tMCI\tstable\tS02\n"
        "sub-03\tM\t80\tCN\tn/a\tS02\n",
    )
    (bids / "sub-01" / "sub-01_sessions.tsv").write_text(
        "session_id\tage\tdiagnosis\tmmse\n"
        "ses-M00\t70.5\tMCI\t26\n"
        "ses-M12\t71.5\tAD\t22\n"
        "M24\t72.5\tdementia\tn/a\n"  # a session without images, an unrecognised diagnosis
    )
    (bids / "sub-02" / "sub-02_sessions.tsv").write_text("session_id\tage\tdiagnosis\nses-M00\tn/a\tn/a\n")
    return bids


def test_sessions_override_the_participant_per_session(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="bids_app.labels"):
        labels = read_labels(_longitudinal(tmp_path))
    assert read_participant_labels is read_labels
    t = labels.table  # the participant's own (baseline) values
    assert list(t.columns) == list(LABEL_COLUMNS)
    assert t.loc["sub-01", "age"] == 70.5 and t.loc["sub-02", "mci_progression"] == "sMCI"
    assert t.loc["sub-01", "site"] == "S01" and t["mci_progression"].isna().tolist() == [False, False, True]
    s = labels.sessions
    assert s.index.names == ["participant_id", "session_id"]
    assert list(s.index) == [("sub-01", "ses-M00"), ("sub-01", "ses-M12"), ("sub-01", "ses-M24"),
                             ("sub-02", "ses-M00")]
    assert s["age"].tolist()[:3] == [70.5, 71.5, 72.5]
    assert s["diagnosis"].tolist()[:2] == ["MCI", "AD"]
    assert pd.isna(s.loc[("sub-01", "ses-M24"), "diagnosis"])  # unrecognised: missing, not the participant's MCI
    assert s.loc[("sub-01", "ses-M12"), "mmse"] == 22.0
    assert math.isnan(s.loc[("sub-01", "ses-M24"), "mmse"])  # n/a and no participant MMSE
    # columns the sessions table lacks, and its n/a cells, keep the participant's values
    assert s.loc[("sub-01", "ses-M12"), "sex"] == "female" and s.loc[("sub-01", "ses-M12"), "site"] == "S01"
    assert s.loc[("sub-01", "ses-M12"), "mci_progression"] == "pMCI"
    assert s.loc[("sub-02", "ses-M00"), "age"] == 66.0 and s.loc[("sub-02", "ses-M00"), "diagnosis"] == "MCI"
    assert len(labels.session_sources) == 2
    assert labels.n_unrecognised("diagnosis") == 1 and dict(labels.session_unrecognised["diagnosis"]) == {
        "dementia": 1}
    assert "'dementia' is not a recognised spelling (1 session, first in" in caplog.text
    assert "sub-01_sessions.tsv" in caplog.text

    got = labels.lookup(["sub-01", "sub-01", "01", "sub-02", "sub-03", "sub-09", "sub-01"],
                        ["ses-M00", "ses-M12", "M12", None, "ses-M00", "ses-M00", "ses-M99"])
    assert got["age"].tolist()[:5] == [70.5, 71.5, 71.5, 66.0, 80.0]
    assert got["diagnosis"].tolist()[:5] == ["MCI", "AD", "AD", "MCI", "CN"]
    assert got["age"].isna().tolist()[5:] == [True, False]  # unknown participant; unlisted session -> participant
    assert got.loc[6, "diagnosis"] == "MCI" and got.loc[6, "age"] == 70.5
    assert labels.lookup(["sub-03"])["age"].tolist() == [80.0]


def test_sessions_without_participants_tsv_and_coded_levels(tmp_path, caplog):
    bids = make_bids(tmp_path, ["sub-01_ses-1"])
    (bids / "participants.tsv").unlink()
    (bids / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage_at_visit\tdx\nses-1\t61\t2\n")
    (bids / "sessions.json").write_text('{"dx": {"Levels": {"1": "control", "2": "Alzheimer\'s disease"}}}')
    with caplog.at_level(logging.WARNING, logger="bids_app.labels"):
        labels = read_labels(bids)
    assert labels.source is None and len(labels.table) == 0 and labels.has_labels and labels.has_label("age")
    assert labels.sessions.loc[("sub-01", "ses-1"), "diagnosis"] == "AD"
    assert labels.sessions.loc[("sub-01", "ses-1"), "age"] == 61.0
    assert "not in participants.tsv" not in caplog.text  # there is no participants.tsv to be missing from


def test_bad_sessions_tables_name_the_file(tmp_path):
    bids = make_bids(tmp_path / "a", ["sub-01_ses-1"])
    (bids / "sub-01" / "sub-01_sessions.tsv").write_text("session\tage\n1\t60\n")
    with pytest.raises(InputDataError, match=r"sub-01_sessions\.tsv.*session_id"):
        read_labels(bids)
    bids = make_bids(tmp_path / "b", ["sub-01_ses-1"])
    (bids / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\nses-1\t60\n1\t61\n")
    with pytest.raises(InputDataError, match=r"sub-01_sessions\.tsv.*more than once.*ses-1"):
        read_labels(bids)
    bids = make_bids(tmp_path / "c", ["sub-01_ses-1"])
    (bids / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\nn/a\t60\n")
    with pytest.raises(InputDataError, match=r"sub-01_sessions\.tsv.*every row needs a session_id"):
        read_labels(bids)
    (bids / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tage\nses-1\t60\n")
    (bids / "sub-01" / "sub-01_sessions.json").write_text("[1]")
    with pytest.raises(InputDataError, match=r"sub-01_sessions\.json"):
        read_labels(bids)

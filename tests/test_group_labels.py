"""participants.tsv parsing: spellings, coded levels, missing vs unrecognised, bad tables."""

from __future__ import annotations

import logging
import math

import pytest

from bids_app.errors import InputDataError
from bids_app.labels import parse_diagnosis, parse_sex, read_participant_labels

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
    labels = read_participant_labels(make_bids(tmp_path / "b", participants="participant_id\tage\nsub-01\t70\n"))
    assert len(labels.table) == 1 and not labels.has_labels
    assert math.isnan(labels.table.loc["sub-01", "mmse"])


def test_bad_tables_name_the_file(tmp_path):
    with pytest.raises(InputDataError, match=r"participants\.tsv.*participant_id"):
        read_participant_labels(make_bids(tmp_path / "a", participants="subject\tsex\n01\tM\n"))
    with pytest.raises(InputDataError, match=r"participants\.tsv.*more than once.*sub-01"):
        read_participant_labels(make_bids(tmp_path / "b", participants="participant_id\tsex\nsub-01\tM\n01\tF\n"))
    bids = make_bids(tmp_path / "c", participants="participant_id\tsex\nsub-01\tM\n")
    (bids / "participants.json").write_text("{not json")
    with pytest.raises(InputDataError, match=r"participants\.json"):
        read_participant_labels(bids)

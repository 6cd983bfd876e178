"""Group level by head kind, on outputs written with the app's writers (tests/group_fixtures.py).

A constructed cohort with known answers:

* 8 CN, ages 60..81 (step 3), brain age predicted = 0.6 * age + 28 (+ a small alternating error):
  the regression to the mean of real brain-age models (raw gap falls with age);
* 4 AD, predicted 6 years older than CN of the same age would be;
* 12 MCI, 6 pMCI and 6 sMCI (mci_progression), with AD scores
  pMCI .8 .7 .6 .45 .9 .35 and sMCI .1 .2 .4 .25 .55 .15;
* sub-c01 has two sessions; its sessions.tsv gives the age of each (60 and 63);
* a multi-class CN/MCI/AD head and a sex head on every T1w.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_app.cohort_analyses import BRAIN_AGE_COLUMNS, MCI_COLUMNS
from bids_app.evaluation import CONFUSION_COLUMNS, EVALUATION_COLUMNS
from bids_app.group import run_group_level

from .conftest import make_bids
from .group_fixtures import (
    LEGACY_COLUMNS,
    init_output,
    make_unit,
    multiclass_row,
    prediction_row,
    regression_row,
    write_legacy_unit,
    write_unit,
)

P_SCORES = [0.8, 0.7, 0.6, 0.45, 0.9, 0.35]
S_SCORES = [0.1, 0.2, 0.4, 0.25, 0.55, 0.15]


def _cohort() -> list[dict]:
    people = []
    for i in range(8):
        people.append({"sub": f"c{i + 1:02d}", "dx": "CN", "age": 60.0 + 3 * i, "prog": "n/a", "ad": 0.1})
    for i in range(4):
        people.append({"sub": f"a{i + 1:02d}", "dx": "AD", "age": 65.0 + 4 * i, "prog": "n/a", "ad": 0.85})
    for i, s in enumerate(P_SCORES):
        people.append({"sub": f"p{i + 1:02d}", "dx": "MCI", "age": 62.0 + 3 * i, "prog": "pMCI", "ad": s})
    for i, s in enumerate(S_SCORES):
        people.append({"sub": f"s{i + 1:02d}", "dx": "MCI", "age": 63.0 + 3 * i, "prog": "sMCI", "ad": s})
    for i, p in enumerate(people):
        p["sex"] = "M" if i % 2 else "F"
    return people


def _brain_age(dx: str, age: float, i: int) -> float:
    return 0.6 * age + 28 + (0.5 if i % 2 else -0.5) + (6.0 if dx == "AD" else 0.0)


def _probabilities(dx: str, i: int) -> dict[str, float]:
    # right for CN and AD except every fourth; MCI called MCI except every third (called CN)
    table = {"CN": [0.7, 0.2, 0.1], "MCI": [0.2, 0.6, 0.2], "AD": [0.1, 0.2, 0.7]}
    p = table[dx]
    if (dx in ("CN", "AD") and i % 4 == 3) or (dx == "MCI" and i % 3 == 0):
        p = [0.5, 0.3, 0.2] if dx != "CN" else [0.3, 0.5, 0.2]
    return dict(zip(["CN", "MCI", "AD"], p))


def build(root: Path) -> tuple[Path, Path]:
    people = _cohort()
    lines = ["participant_id\tsex\tdiagnosis\tage\tmci_progression"]
    lines += [f"sub-{p['sub']}\t{p['sex']}\t{p['dx']}\t{p['age']}\t{p['prog']}" for p in people]
    bids = make_bids(root / "bids", participants="\n".join(lines) + "\n")
    (bids / "sub-c01").mkdir(exist_ok=True)
    (bids / "sub-c01" / "sub-c01_sessions.tsv").write_text("session_id\tage\nses-1\t60\nses-2\t63\n")
    out = init_output(root / "out", bids)
    for i, p in enumerate(people):
        visits = [("1", 60.0), ("2", 63.0)] if p["sub"] == "c01" else [(None, p["age"])]
        for ses, age in visits:
            unit = make_unit(bids, p["sub"], ses)
            rows = [
                prediction_row(unit, bids, "sex", 0.8 if p["sex"] == "M" else 0.3),
                prediction_row(unit, bids, "ad", p["ad"]),
                multiclass_row(unit, bids, _probabilities(p["dx"], i)),
                regression_row(unit, bids, _brain_age(p["dx"], age, i)),
            ]
            write_unit(out, unit, rows)
    return bids, out


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    bids, out = build(tmp_path_factory.mktemp("kinds"))
    return bids, out, run_group_level(bids, out, report=False)


def _tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"model_version": str})


def test_multiclass_head_metrics_and_confusion(kinds):
    _, out, summary = kinds
    ev = _tsv(out / "group_evaluation.tsv")
    r = ev[(ev["head"] == "diagnosis") & (ev["subset"] == "all")].iloc[0]
    assert r.head_kind == "multiclass" and r.classes == "CN;MCI;AD"
    assert (r.n_participants, r.n_labelled, r.n_unlabelled, r.n_other_class) == (24, 24, 0, 0)
    # wrong: CN i=3, i=7 (2 of 8); AD i=11 (1 of 4); MCI i=12, 15, 18, 21 (4 of 12)
    assert r.accuracy == pytest.approx((24 - 7) / 24)
    assert r.balanced_accuracy == pytest.approx((6 / 8 + 3 / 4 + 8 / 12) / 3)
    assert math.isnan(r.roc_auc) and math.isnan(r.sensitivity)  # binary-only columns stay n/a
    assert r.macro_roc_auc_ci_low <= r.macro_roc_auc <= r.macro_roc_auc_ci_high
    per_class = dict(part.split("=") for part in r.per_class_roc_auc.split(";"))
    assert list(per_class) == ["CN", "MCI", "AD"]
    assert r.macro_roc_auc == pytest.approx(np.mean([float(v) for v in per_class.values()]), abs=1e-6)
    conf = _tsv(out / "group_confusion.tsv")
    assert list(conf.columns) == list(CONFUSION_COLUMNS)
    m = conf[conf["subset"] == "all"].pivot(index="true", columns="predicted", values="n")
    assert m.loc["CN", "CN"] == 6 and m.loc["CN", "MCI"] == 2 and m.loc["AD", "CN"] == 1
    assert m.loc["MCI", "CN"] == 4 and m.loc["MCI", "MCI"] == 8 and m.to_numpy().sum() == 24
    assert "macro AUC" in summary.text()


def test_regression_head_metrics_per_visit(kinds):
    _, out, _ = kinds
    ev = _tsv(out / "group_evaluation.tsv")
    r = ev[(ev["head"] == "age") & (ev["subset"] == "all")].iloc[0]
    assert r.head_kind == "regression" and r.value_unit == "years"
    assert (r.n_participants, r.n_labelled) == (24, 25)  # sub-c01's two sessions are two visits
    b = _tsv(out / "group_brain_age.tsv")
    assert list(b.columns) == list(BRAIN_AGE_COLUMNS)
    gap = b["predicted_age"] - b["age"]
    assert r.mae == pytest.approx(gap.abs().mean())
    assert r.r2 == pytest.approx(1 - (gap**2).sum() / ((b["age"] - b["age"].mean()) ** 2).sum())
    assert r.pearson_r == pytest.approx(np.corrcoef(b["age"], b["predicted_age"])[0, 1])
    c01 = b[b["participant_id"] == "sub-c01"].sort_values("session_id")
    assert c01["age"].tolist() == [60.0, 63.0]  # ages of the sessions, from sessions.tsv


def test_bias_correction_removes_the_age_dependence_on_controls(kinds):
    _, out, _ = kinds
    b = _tsv(out / "group_brain_age.tsv")
    cn = b[b["diagnosis"] == "CN"]
    assert cn["used_in_bias_fit"].astype(str).str.lower().eq("true").all() and len(cn) == 9
    raw_slope = np.polyfit(cn["age"], cn["brain_age_gap"], 1)[0]
    corrected_slope, corrected_mean = np.polyfit(cn["age"], cn["corrected_brain_age_gap"], 1)[0], \
        cn["corrected_brain_age_gap"].mean()
    assert raw_slope == pytest.approx(-0.4, abs=0.05)  # predicted = 0.6 age + 28: gap falls 0.4 a year
    assert abs(corrected_slope) < 1e-8 and abs(corrected_mean) < 1e-8
    ad = b[b["diagnosis"] == "AD"]
    assert ad["corrected_brain_age_gap"].mean() == pytest.approx(6.0, abs=0.6)
    s = _tsv(out / "group_brain_age_summary.tsv")
    row = s[(s["subset"] == "all") & (s["diagnosis"] == "AD")].iloc[0]
    assert row.n == 4 and row.mean_corrected_gap == pytest.approx(ad["corrected_brain_age_gap"].mean())
    assert row.bias_slope == pytest.approx(0.6, abs=0.05) and row.n_bias_fit == 9
    sidecar = json.loads((out / "group_brain_age.json").read_text())
    assert "Beheshti et al. 2019" in sidecar["corrected_predicted_age"]["Description"]


def test_ad_model_on_mci_shares_auc_and_glm(kinds):
    _, out, _ = kinds
    mci = _tsv(out / "group_mci.tsv")
    assert list(mci.columns) == list(MCI_COLUMNS)
    mci = mci[(mci["subset"] == "all") & (mci["head"] == "ad")]

    def share(term, t):
        row = mci[(mci["statistic"] == "share_called_ad") & (mci["term"] == term) & np.isclose(mci["threshold"], t)]
        assert len(row) == 1
        return row.iloc[0]

    assert share("pMCI", 0.5).value == pytest.approx(4 / 6) and share("sMCI", 0.5).value == pytest.approx(1 / 6)
    assert share("pMCI", 0.3).value == 1.0 and share("sMCI", 0.3).value == pytest.approx(2 / 6)
    r = share("sMCI", 0.5)
    assert r.ci_low < 1 / 6 < r.ci_high and r.n == 6
    auc = mci[mci["statistic"] == "roc_auc"].iloc[0]
    # pMCI vs sMCI pairs ranked right: .8 .7 .6 .9 beat all 6 (24); .45 beats 5 (not .55); .35 beats 4 -> 33 of 36
    assert auc.value == pytest.approx(33 / 36)
    glm = mci[mci["statistic"] == "glm"].set_index("term")
    assert set(glm.index) == {"Intercept", "group_pMCI", "age", "sex_male"} and (glm["n"] == 12).all()
    assert glm.loc["group_pMCI", "value"] > 0.2 and glm.loc["group_pMCI", "p_value"] < 0.05
    assert glm.loc["group_pMCI", "ci_low"] < glm.loc["group_pMCI", "value"] < glm.loc["group_pMCI", "ci_high"]


def test_old_tables_without_heads_give_the_binary_evaluation_of_today(tmp_path):
    """Tables written before heads existed (no head_kind column) are binary: same numbers as the
    cohort of tests/test_group.py (AD AUC 5/6 there), read through the legacy header."""
    from .test_group import IMAGES, PARTICIPANTS

    bids = make_bids(tmp_path / "bids", participants=PARTICIPANTS)
    out = init_output(tmp_path / "out", bids)
    for sub, ses, run, ad, sex, validated in IMAGES:
        unit = make_unit(bids, sub, ses, run)
        rows = [prediction_row(unit, bids, "sex", sex), prediction_row(unit, bids, "ad", ad, validated=validated)]
        path = write_legacy_unit(out, unit, rows)
        assert path.read_text().splitlines()[0].split("\t") == LEGACY_COLUMNS
    summary = run_group_level(bids, out, report=False)
    ev = summary.evaluation
    r = ev[(ev["target"] == "ad") & (ev["subset"] == "all")].iloc[0]
    assert r["head_kind"] == "binary" and r["roc_auc"] == pytest.approx(5 / 6)
    assert r["accuracy"] == pytest.approx(3 / 5) and r["n_labelled"] == 5
    assert set(ev["head_kind"]) == {"binary"} and summary.tables == {}
    assert not (out / "group_confusion.tsv").exists() and not (out / "group_mci.tsv").exists()
    header = (out / "group_evaluation.tsv").read_text().splitlines()[0].split("\t")
    assert header == list(EVALUATION_COLUMNS)


def test_the_group_report_shows_the_tables_by_head_kind(kinds):
    from bids_app.report import write_group_report

    _, out, _ = kinds
    text = write_group_report(out).read_text()
    assert "Heads by kind" in text and "Confusion matrix: diagnosis" in text
    assert "Brain-age gap by diagnosis" in text and "Beheshti et al. 2019" in text
    assert "AD model applied to MCI" in text and "Multi-class and regression heads" in text

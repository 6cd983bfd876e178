"""Cohort-level analyses beyond the metrics: the brain-age gap, and an AD model applied to MCI.

Pure functions of tables, like :mod:`bids_app.evaluation` (whose label helpers they use); the
group level writes their results as ``group_brain_age.tsv``, ``group_brain_age_summary.tsv`` and
``group_mci.tsv``.

Brain-age gap (regression heads predicting age, :data:`~bids_app.evaluation.REGRESSION_TARGETS`):
gap = predicted age - chronological age, per visit (participant and session, the mean over the
session's runs). Brain-age predictions regress towards the training cohort's mean age, so the raw
gap depends on age; the usual linear bias correction removes that dependence. Method used here
(Beheshti et al. 2019, NeuroImage: Clinical 24:102063; the form recommended by de Lange & Cole 2020,
NeuroImage: Clinical 26:102229): fit ``predicted = a * age + b`` by least squares on the **CN**
visits of this cohort, then ``corrected predicted = predicted + (age - (a * age + b))``, i.e.
corrected gap = predicted - (a * age + b). On the CN visits the corrected gap has mean 0 and no
linear dependence on age by construction, so the other groups' corrected gaps read as "older or
younger-looking than controls of the same age". Fitted on the cohort evaluated (not on the model's
training data): with few controls the correction is noisy, and without 3 controls of different ages
it is not made (n/a).

MCI (binary heads whose positive class is AD, applied to participants whose ``mci_progression``
is pMCI or sMCI), as Lu et al. 2022 report it (pMCI called AD 65.2% vs sMCI 20.6%, AUC 0.82): the
share of each group called AD at the recorded threshold and at the screening threshold 0.3, with
Wilson 95% intervals; the ROC AUC of the score for pMCI vs sMCI; and an ordinary least squares GLM
``score ~ group + age + sex`` (statsmodels; group: pMCI = 1, sMCI = 0; sex: male = 1, female = 0;
covariates without data for these participants are left out) with coefficients, 95% intervals and
p-values. The unit is the participant (mean score over their T1w, mean age over their visits).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from .derivatives import PREDICTION_COLUMNS
from .evaluation import (
    EVALUATION_COLUMNS,
    REGRESSION_TARGETS,
    SCREENING_THRESHOLD,
    TASK_CLASSES,
    as_bool,
    head_kinds,
    model_threshold,
    participant_scores,
    visit_predictions,
    visit_values,
)
from .metrics import binary_metrics

__all__ = [
    "BIAS_CORRECTION",
    "BRAIN_AGE_COLUMNS",
    "BRAIN_AGE_SUMMARY_COLUMNS",
    "MCI_COLUMNS",
    "brain_age_tables",
    "mci_table",
]

logger = logging.getLogger(__name__)

#: the bias-correction method, named in the sidecars and the report
BIAS_CORRECTION = (
    "Linear bias correction of Beheshti et al. 2019 (NeuroImage: Clinical 24:102063; as recommended by de Lange & "
    "Cole 2020, NeuroImage: Clinical 26:102229): predicted = a * age + b fitted by least squares on this cohort's "
    "CN visits; corrected predicted age = predicted + (age - (a * age + b))."
)

_MODEL = {
    "model_name": dict(PREDICTION_COLUMNS["model_name"]),
    "model_version": dict(PREDICTION_COLUMNS["model_version"]),
    "head": {"Description": "The model head (a regression head predicting age)."},
}

#: columns of ``group_brain_age.tsv``: one row per (model, head, participant, session)
BRAIN_AGE_COLUMNS: dict[str, dict[str, Any]] = {
    **_MODEL,
    "participant_id": dict(PREDICTION_COLUMNS["participant_id"]),
    "session_id": dict(PREDICTION_COLUMNS["session_id"]),
    "diagnosis": {"Description": "Diagnosis at this visit (sessions.tsv, else participants.tsv); n/a when unknown."},
    "age": {"Description": "Chronological age at this visit (sessions.tsv, else participants.tsv).", "Units": "years"},
    "predicted_age": {"Description": "Predicted age: mean of the visit's predicted_value over its runs.",
                      "Units": "years"},
    "brain_age_gap": {"Description": "predicted_age - age (uncorrected).", "Units": "years"},
    "corrected_predicted_age": {"Description": "Bias-corrected predicted age. " + BIAS_CORRECTION, "Units": "years"},
    "corrected_brain_age_gap": {
        "Description": "corrected_predicted_age - age = predicted_age - (a * age + b); 0 on average for CN.",
        "Units": "years",
    },
    "used_in_bias_fit": {"Description": "True when this visit is one of the CN visits the correction was fitted on."},
    "n_images": {"Description": "T1w images (runs) averaged for this visit."},
    "validated_input": {"Description": "True when every T1w of the visit has validated_input = True."},
}

#: columns of ``group_brain_age_summary.tsv``: one row per (model, head, subset, diagnosis)
BRAIN_AGE_SUMMARY_COLUMNS: dict[str, dict[str, Any]] = {
    **_MODEL,
    "subset": dict(EVALUATION_COLUMNS["subset"]),
    "diagnosis": {"Description": "Diagnosis at the visit: CN, MCI, AD, or unlabelled."},
    "n": {"Description": "Visits with a known age in this group."},
    "mean_age": {"Description": "Mean chronological age.", "Units": "years"},
    "mean_gap": {"Description": "Mean uncorrected brain-age gap.", "Units": "years"},
    "sd_gap": {"Description": "Standard deviation of the uncorrected gap.", "Units": "years"},
    "mean_corrected_gap": {"Description": "Mean bias-corrected brain-age gap.", "Units": "years"},
    "sd_corrected_gap": {"Description": "Standard deviation of the corrected gap.", "Units": "years"},
    "corrected_gap_ci_low": {"Description": "Lower bound of the 95% t interval of mean_corrected_gap.",
                             "Units": "years"},
    "corrected_gap_ci_high": {"Description": "Upper bound of the 95% t interval of mean_corrected_gap.",
                              "Units": "years"},
    "bias_slope": {"Description": "a of the bias fit predicted = a * age + b on CN visits. " + BIAS_CORRECTION},
    "bias_intercept": {"Description": "b of the bias fit.", "Units": "years"},
    "n_bias_fit": {"Description": "CN visits the bias fit used (all CN visits with an age, any subset)."},
}

#: columns of ``group_mci.tsv``: long format, one row per (model, head, subset, statistic, term, threshold)
MCI_COLUMNS: dict[str, dict[str, Any]] = {
    **_MODEL,
    "head": {"Description": "The binary AD head (positive class AD) applied to MCI participants."},
    "subset": dict(EVALUATION_COLUMNS["subset"]),
    "statistic": {
        "Description": "What the row holds.",
        "Levels": {
            "share_called_ad": "share of the group (term) with score >= threshold; interval: Wilson 95%",
            "roc_auc": "ROC AUC of the score, pMCI (positive) against sMCI",
            "glm": "OLS coefficient of term in score ~ group + age + sex (statsmodels); interval: 95%",
        },
    },
    "term": {"Description": "pMCI or sMCI for shares; for the GLM: Intercept, group_pMCI, age, sex_male."},
    "threshold": {"Description": "Threshold of a share: the recorded (default) one or the screening one (0.3)."},
    "n": {"Description": "Participants behind the value (the GLM: participants with every covariate)."},
    "value": {"Description": "The share (0..1), the AUC, or the coefficient (score units per unit of the term)."},
    "ci_low": {"Description": "Lower bound of the 95% interval."},
    "ci_high": {"Description": "Upper bound of the 95% interval."},
    "p_value": {"Description": "GLM rows: two-sided p-value of the coefficient (t test)."},
}


def _age_heads(predictions: pd.DataFrame) -> pd.DataFrame:
    rows = predictions[head_kinds(predictions) == "regression"]
    is_age = np.array([REGRESSION_TARGETS.get(str(t), str(t)) == "age" for t in rows["target"]], dtype=bool)
    rows = rows.loc[is_age].copy()
    rows["model_version"] = rows["model_version"].astype("string").fillna("n/a")
    rows["validated"] = as_bool(rows["validated_input"])
    return rows


def _bias_fit(age: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """(a, b) of predicted = a * age + b by least squares; NaN without 3 points of different ages."""
    ok = np.isfinite(age) & np.isfinite(predicted)
    if ok.sum() < 3 or np.ptp(age[ok]) == 0:
        return math.nan, math.nan
    a, b = np.polyfit(age[ok], predicted[ok], 1)
    return float(a), float(b)


def _summary(values: np.ndarray) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    return (float(v.mean()) if v.size else math.nan, float(v.std(ddof=1)) if v.size > 1 else math.nan)


def brain_age_tables(
    predictions: pd.DataFrame, visits: pd.DataFrame | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-visit brain-age gaps (:data:`BRAIN_AGE_COLUMNS`) and their summary by diagnosis
    (:data:`BRAIN_AGE_SUMMARY_COLUMNS`) for every regression head predicting age."""
    from scipy import stats

    per_visit: list[pd.DataFrame] = []
    summary: list[dict[str, Any]] = []
    rows = _age_heads(predictions)
    for (head, name, version), model_rows in rows.groupby(["target", "model_name", "model_version"], sort=True):
        v = visit_predictions(model_rows)
        age = visit_values(visits, v, "age")
        dx = visit_values(visits, v, "diagnosis")
        predicted = v["value"].to_numpy(dtype=float)
        is_cn = np.array([d == "CN" for d in dx]) & np.isfinite(age)
        a, b = _bias_fit(age[is_cn], predicted[is_cn])
        if math.isnan(a):
            logger.warning("model %s head %s: fewer than 3 CN visits of different ages; the brain-age gap is not "
                           "bias-corrected", name, head)
        corrected_gap = predicted - (a * age + b)
        table = pd.DataFrame({
            "model_name": name, "model_version": version, "head": head,
            "participant_id": v["participant_id"].to_numpy(), "session_id": v["session_id"].to_numpy(),
            "diagnosis": dx, "age": age, "predicted_age": predicted, "brain_age_gap": predicted - age,
            "corrected_predicted_age": age + corrected_gap, "corrected_brain_age_gap": corrected_gap,
            "used_in_bias_fit": is_cn & np.isfinite(predicted) & (not math.isnan(a)),
            "n_images": v["n_images"].to_numpy(), "validated_input": v["validated_input"].to_numpy(dtype=bool),
        })
        per_visit.append(table)
        labelled = table.assign(diagnosis=table["diagnosis"].fillna("unlabelled"))
        for subset in ("validated", "all"):
            part = labelled if subset == "all" else labelled[labelled["validated_input"]]
            part = part[np.isfinite(part["age"].to_numpy(dtype=float))]
            for group in [g for g in ("CN", "MCI", "AD", "unlabelled") if (part["diagnosis"] == g).any()]:
                g = part[part["diagnosis"] == group]
                gap_mean, gap_sd = _summary(g["brain_age_gap"].to_numpy(dtype=float))
                cg = g["corrected_brain_age_gap"].to_numpy(dtype=float)
                c_mean, c_sd = _summary(cg)
                n_c = int(np.isfinite(cg).sum())
                half = (float(stats.t.ppf(0.975, n_c - 1)) * c_sd / math.sqrt(n_c)) if n_c > 1 else math.nan
                summary.append({
                    "model_name": name, "model_version": version, "head": head, "subset": subset,
                    "diagnosis": group, "n": int(len(g)), "mean_age": float(g["age"].mean()),
                    "mean_gap": gap_mean, "sd_gap": gap_sd, "mean_corrected_gap": c_mean, "sd_corrected_gap": c_sd,
                    "corrected_gap_ci_low": c_mean - half, "corrected_gap_ci_high": c_mean + half,
                    "bias_slope": a, "bias_intercept": b, "n_bias_fit": int(table["used_in_bias_fit"].sum()),
                })
    visits_table = (pd.concat(per_visit, ignore_index=True) if per_visit
                    else pd.DataFrame(columns=list(BRAIN_AGE_COLUMNS)))
    return visits_table[list(BRAIN_AGE_COLUMNS)], pd.DataFrame(summary, columns=list(BRAIN_AGE_SUMMARY_COLUMNS))


def _wilson(k: int, n: int) -> tuple[float, float]:
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return math.nan, math.nan
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return float(lo), float(hi)


def _glm_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """OLS of score on group (pMCI = 1) with age and sex (male = 1) where known; [] when it cannot be fit."""
    import statsmodels.api as sm

    design = pd.DataFrame({"group_pMCI": (frame["group"] == "pMCI").astype(float)}, index=frame.index)
    if frame["age"].notna().any():
        design["age"] = frame["age"].astype(float)
    sex = frame["sex"].where(frame["sex"].isin(["male", "female"]))
    if sex.notna().any():
        design["sex_male"] = np.where(sex.isna(), np.nan, (sex == "male").astype(float))
    data = design.assign(score=frame["score"].astype(float)).dropna()
    # a covariate constant over the participants left carries no information (and makes X singular)
    for col in [c for c in ("age", "sex_male") if c in data and data[c].nunique() < 2]:
        data = data.drop(columns=col)
    X = sm.add_constant(data.drop(columns="score"), has_constant="add").rename(columns={"const": "Intercept"})
    if data["group_pMCI"].nunique() < 2 or len(data) <= X.shape[1]:
        return []
    fit = sm.OLS(data["score"], X).fit()
    ci = fit.conf_int(alpha=0.05)
    return [
        {"statistic": "glm", "term": term, "threshold": math.nan, "n": int(fit.nobs), "value": float(fit.params[term]),
         "ci_low": float(ci.loc[term, 0]), "ci_high": float(ci.loc[term, 1]), "p_value": float(fit.pvalues[term])}
        for term in X.columns
    ]


def mci_table(
    predictions: pd.DataFrame, participants: pd.DataFrame, visits: pd.DataFrame | None
) -> pd.DataFrame:
    """The MCI analysis (:data:`MCI_COLUMNS`) of every binary head whose positive class is AD.

    ``participants``: the per-participant labels of :func:`bids_app.evaluation.participant_table`
    (``mci_progression``, ``sex``, ``age``); ``visits`` gives the age of each T1w's visit.
    """
    out: list[dict[str, Any]] = []
    binary = predictions[head_kinds(predictions) == "binary"]
    ages = pd.Series(visit_values(visits, binary, "age"), index=binary.index)
    mean_age = ages.groupby(binary["participant_id"]).mean()
    for subset in ("validated", "all"):
        scores = participant_scores(predictions, validated_only=subset == "validated")
        for (head, name, version), rows in scores.groupby(["target", "model_name", "model_version"], sort=True):
            if TASK_CLASSES.get(str(head), ("", "", ""))[1] != "AD":
                continue
            ids = rows["participant_id"].to_numpy()
            frame = pd.DataFrame({
                "score": rows["score"].to_numpy(dtype=float),
                "group": participants["mci_progression"].reindex(ids).astype("string").to_numpy(dtype=object),
                "sex": participants["sex"].reindex(ids).astype("string").to_numpy(dtype=object),
                "age": mean_age.reindex(ids).fillna(participants["age"].reindex(ids)).to_numpy(dtype=float),
            })
            frame = frame[frame["group"].isin(["pMCI", "sMCI"])]
            if frame.empty:
                continue
            threshold = model_threshold(binary[(binary["target"] == head) & (binary["model_name"] == name)
                                               & (binary["model_version"].astype("string").fillna("n/a") == version)])
            found: list[dict[str, Any]] = []
            for t in dict.fromkeys([threshold, SCREENING_THRESHOLD]):
                for group in ("pMCI", "sMCI"):
                    s = frame.loc[frame["group"] == group, "score"].to_numpy(dtype=float)
                    k = int((s >= t).sum())
                    lo, hi = _wilson(k, s.size)
                    found.append({"statistic": "share_called_ad", "term": group, "threshold": t, "n": int(s.size),
                                  "value": k / s.size if s.size else math.nan, "ci_low": lo, "ci_high": hi,
                                  "p_value": math.nan})
            y = (frame["group"] == "pMCI").to_numpy(dtype=int)
            auc = binary_metrics(y, frame["score"].to_numpy(dtype=float))["roc_auc"]
            found.append({"statistic": "roc_auc", "term": "pMCI vs sMCI", "threshold": math.nan, "n": int(y.size),
                          "value": auc, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan})
            found += _glm_rows(frame)
            for row in found:
                out.append({"model_name": name, "model_version": version, "head": head, "subset": subset, **row})
    return pd.DataFrame(out, columns=list(MCI_COLUMNS))

"""The regional-volume baseline: GM volume per AAL region, scikit-learn linear models, leave-sites-out CV.

Why a baseline: a CNN score means little without the score of the simple model it must beat.
Leonardsen et al. compared their SFCN against a logistic regression on regional volumes (which won
at n = 100); here every task gets that baseline, trained on the same leave-sites-out folds as the
CNNs (:func:`bids_app.train.folds.site_folds`) and packaged like them
(:class:`bids_app.models.regional.RegionalLinear`, family ``regional``), so the tables can hold
both side by side.

Pipeline of one task:

1. features: GM volume (mL) of each AAL region (Debian's ``mricron-data``, resampled onto the SPM
   grid by :func:`bids_app.explain.atlas.load_atlas`) in each GMV (modulated GM) map;
2. per outer fold: ``StandardScaler`` + ``LogisticRegression`` (binary; multinomial for more
   classes) or ``Ridge`` (regression), the L2 strength chosen by an inner cross-validation on the
   training folds only (whole sites per inner fold when the training folds hold three or more sites,
   otherwise whole participants), refitted on all training folds;
3. the fitted numbers copied into a ``RegionalLinear`` per fold (its outputs equal scikit-learn's
   ``decision_function`` / standardised ``predict``, checked by the tests);
4. out-of-fold metrics: AUC and balanced accuracy (binary), macro and per-class AUC, balanced
   accuracy (multi-class), MAE, Pearson r and R^2 (regression); a v2 model card (:func:`make_card`).

Regression targets are modelled in standard units: ``z = (y - offset) / scale`` with the cohort's
mean and SD as offset and scale (the head's ``offset`` / ``scale``). Ridge is equivariant under that
affine change, so the choice changes the units of the raw output only, never a prediction.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, r2_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from threadpoolctl import threadpool_limits

from .. import RESEARCH_USE_NOTICE, __version__, grid
from .._io import atomic_path, sha256_file, write_json
from ..errors import InputDataError, UsageError
from ..metrics import binary_metrics
from ..models.regional import ARCHITECTURE, RegionalLinear, percent_of_total
from .folds import site_folds

__all__ = [
    "HeadKind",
    "RegionalTask",
    "REGIONAL_TASKS",
    "RegionalAtlas",
    "FittedRegional",
    "RegionalResult",
    "regional_atlas",
    "region_volumes",
    "task_targets",
    "fit_regional",
    "sklearn_outputs",
    "to_module",
    "regional_metrics",
    "cv_regional",
    "make_card",
    "train_regional",
]

_log = logging.getLogger("bids_app.train")

HeadKind = Literal["binary", "multiclass", "regression"]
SYNTHETIC_NOTE = "trained on synthetic data; not for any real use"
#: L2 strengths searched by the inner cross-validation (LogisticRegression C; Ridge alpha)
C_GRID: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 7))
ALPHA_GRID: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 4, 7))
_MAX_INNER_SPLITS = 5


@dataclass(frozen=True)
class RegionalTask:
    """What one baseline predicts: the head's name, kind, target column and labels or unit."""

    name: str
    kind: HeadKind
    target: str
    labels: tuple[str, ...] = ()  # binary: (negative, positive); multiclass: class order
    unit: str = ""
    thresholds: Mapping[str, float] = field(default_factory=dict)
    normalise: str = "none"  # "none" | "total_gm" (see bids_app.models.regional)


REGIONAL_TASKS: dict[str, RegionalTask] = {
    "sex": RegionalTask("sex", "binary", "sex", ("female", "male"), thresholds={"default": 0.5}),
    "ad": RegionalTask("ad", "binary", "diagnosis", ("CN", "AD"), thresholds={"default": 0.5, "screening": 0.3},
                       normalise="total_gm"),
    "cn_mci_ad": RegionalTask("cn_mci_ad", "multiclass", "diagnosis", ("CN", "MCI", "AD"), normalise="total_gm"),
    "pmci": RegionalTask("pmci", "binary", "mci_progression", ("sMCI", "pMCI"), thresholds={"default": 0.5},
                         normalise="total_gm"),
    "brain_age": RegionalTask("brain_age", "regression", "age", unit="years"),
}


# ------------------------------------------------------------------------------------------------
# features


@dataclass(frozen=True)
class RegionalAtlas:
    """An atlas renumbered for the model: ``labels`` 0 (none) or 1..n on the SPM grid."""

    name: str
    labels: np.ndarray  # int16, SPM grid
    values: tuple[int, ...]  # atlas value of region k+1
    names: tuple[str, ...]
    provenance: dict[str, Any]

    @property
    def n_regions(self) -> int:
        return len(self.values)


def regional_atlas() -> RegionalAtlas:
    """AAL on the SPM grid, renumbered, with its files' sha256 (raises ``AtlasUnavailable``)."""
    from ..explain.atlas import ATLAS_ENV, DEFAULT_ATLAS_DIR, load_atlas

    atlas = load_atlas()
    folder = Path(os.environ.get(ATLAS_ENV) or DEFAULT_ATLAS_DIR)
    values = tuple(int(v) for v in np.unique(atlas.labels) if v != 0)
    lookup = np.zeros(int(atlas.labels.max()) + 1, dtype=np.int16)
    lookup[list(values)] = np.arange(1, len(values) + 1, dtype=np.int16)
    labels = lookup[atlas.labels]
    names = tuple(atlas.names.get(v, f"label {v}") for v in values)
    provenance = {
        "name": atlas.name,
        "file": str(folder / "aal.nii.gz"),
        "sha256": sha256_file(folder / "aal.nii.gz"),
        "labels_file": str(folder / "aal.nii.txt"),
        "labels_sha256": sha256_file(folder / "aal.nii.txt"),
        "source": atlas.source,
        "reference": "Tzourio-Mazoyer et al. 2002, NeuroImage 15:273-289 (AAL, 116 regions)",
        "resampling": "nearest neighbour onto the SPM 1.5 mm grid (nilearn resample_img)",
        "region_map_sha256": hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest(),
        "regions": [{"column": k, "atlas_value": v, "name": n} for k, (v, n) in enumerate(zip(values, names))],
    }
    return RegionalAtlas(atlas.name, labels, values, names, provenance)


def region_volumes(maps: np.ndarray, labels: np.ndarray, n_regions: int,
                   voxel_volume_ml: float = grid.SPM_VOXEL_VOLUME_MM3 / 1000.0) -> np.ndarray:
    """(N, n_regions) float64 GM volume per region (mL) of GMV maps ``maps`` (N x grid), NaN as 0."""
    maps = np.asarray(maps)
    if maps.shape[1:] != labels.shape:
        raise ValueError(f"maps have grid {maps.shape[1:]}, the region map {labels.shape}")
    lab = labels.reshape(-1).astype(np.int64)
    out = np.empty((maps.shape[0], n_regions), dtype=np.float64)
    for i, m in enumerate(maps):
        w = np.nan_to_num(m.reshape(-1).astype(np.float64), nan=0.0)
        out[i] = np.bincount(lab, weights=w, minlength=n_regions + 1)[1 : n_regions + 1]
    return out * voxel_volume_ml


def task_targets(rows: pd.DataFrame, task: RegionalTask) -> tuple[np.ndarray, np.ndarray]:
    """(usable row mask, targets): class indices into ``task.labels``, or float values for regression."""
    if task.target not in rows.columns:
        return np.zeros(len(rows), bool), np.zeros(len(rows))
    col = rows[task.target]
    if task.kind == "regression":
        y = pd.to_numeric(col, errors="coerce").to_numpy(float)
        return np.isfinite(y), np.nan_to_num(y)
    s = col.astype("string")
    ok = s.isin(list(task.labels)).fillna(False).to_numpy(bool)
    index = {lab: i for i, lab in enumerate(task.labels)}
    y = np.array([index.get(v, 0) if isinstance(v, str) else 0 for v in s.fillna("").tolist()], dtype=int)
    return ok, y


# ------------------------------------------------------------------------------------------------
# one fit


@dataclass
class FittedRegional:
    """A fitted scaler + linear model and how its L2 strength was chosen."""

    task: RegionalTask
    pipeline: Any  # sklearn Pipeline(StandardScaler, LogisticRegression | Ridge)
    penalty_name: str  # "C" or "alpha"
    penalty: float
    inner_cv: str
    inner_scores: dict[str, float]
    offset: float = 0.0  # regression: value = raw * scale + offset
    scale: float = 1.0

    @property
    def n_outputs(self) -> int:
        return len(self.task.labels) if self.task.kind == "multiclass" else 1


def _inner_splits(y: np.ndarray, groups_site: np.ndarray, groups_pid: np.ndarray, kind: HeadKind
                  ) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    n_sites = len(set(groups_site.tolist()))
    groups, what = (groups_site, "sites") if n_sites >= 3 else (groups_pid, "participants")
    n_groups = len(set(groups.tolist()))
    k = min(_MAX_INNER_SPLITS, n_groups)
    if kind != "regression":  # stratified splits need at least k members of the smallest class
        k = min(k, int(np.bincount(np.asarray(y, dtype=int)).min()))
    if k < 2:
        return [], "none (fewer than two groups in the training folds)"
    splitter = GroupKFold(n_splits=k) if kind == "regression" else StratifiedGroupKFold(n_splits=k)
    with warnings.catch_warnings():  # small classes: fewer members than splits
        warnings.simplefilter("ignore", UserWarning)
        splits = list(splitter.split(np.zeros((len(y), 1)), y, groups))
    if kind != "regression":  # an inner training part must hold every class
        splits = [(tr, te) for tr, te in splits if len(set(y[tr].tolist())) == len(set(y.tolist()))]
        if not splits:
            return [], f"none (no inner split over {what} keeps every class in its training part)"
    return splits, f"{type(splitter).__name__}({k}) over whole {what} of the training folds"


def fit_regional(volumes: np.ndarray, y: np.ndarray, task: RegionalTask, *, sites: Sequence[str],
                 participant_ids: Sequence[str], offset: float = 0.0, scale: float = 1.0,
                 seed: int = 0) -> FittedRegional:
    """Fit scaler + L2 linear model on ``volumes`` (N, R) and ``y``, the strength by inner CV.

    ``y``: class indices (binary 0/1: 1 = ``task.labels[1]``; multiclass: index into
    ``task.labels``, every class present) or values (regression, modelled as
    ``(y - offset) / scale``).
    """
    with threadpool_limits(limits=1):  # problems this small run slower, not faster, on several BLAS threads
        return _fit(volumes, y, task, sites, participant_ids, offset, scale, seed)


def _fit(volumes: np.ndarray, y: np.ndarray, task: RegionalTask, sites: Sequence[str],
         participant_ids: Sequence[str], offset: float, scale: float, seed: int) -> FittedRegional:
    x = np.asarray(volumes, dtype=np.float64)
    if task.kind == "regression":
        target = (np.asarray(y, dtype=np.float64) - offset) / scale
        est: Any = Ridge()
        name, grid_values, scoring = "alpha", ALPHA_GRID, "neg_mean_absolute_error"
    else:
        target = np.asarray(y, dtype=int)
        want = len(task.labels)
        present = sorted(set(target.tolist()))
        if present != list(range(want)):
            missing = [task.labels[i] for i in range(want) if i not in present]
            raise InputDataError(f"{task.name}: the training data hold no {', '.join(missing)} participants")
        est = LogisticRegression(max_iter=5000, random_state=seed)
        name, grid_values, scoring = "C", C_GRID, "neg_log_loss"
    splits, how = _inner_splits(target if task.kind != "regression" else np.zeros(len(x)),
                                np.asarray(sites, dtype=object), np.asarray(participant_ids, dtype=object), task.kind)
    key = f"{type(est).__name__.lower()}__{name}"
    steps = [FunctionTransformer(percent_of_total)] if task.normalise == "total_gm" else []
    pipe = make_pipeline(*steps, StandardScaler(), est)
    scores: dict[str, float] = {}
    if splits:
        search = GridSearchCV(pipe, {key: list(grid_values)}, cv=splits, scoring=scoring, refit=True,
                              error_score=np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # undefined inner scores become NaN, reported below
            search.fit(x, target)
        chosen = float(search.best_params_[key])
        pipe = search.best_estimator_
        scores = {f"{g:g}": float(s) for g, s in zip(grid_values, search.cv_results_["mean_test_score"])}
    else:
        chosen = 1.0
        pipe.set_params(**{key: chosen}).fit(x, target)
    return FittedRegional(task, pipe, name, chosen, how, scores, offset=offset, scale=scale)


def sklearn_outputs(fitted: FittedRegional, volumes: np.ndarray) -> np.ndarray:
    """(N, n_outputs) raw outputs by scikit-learn: decision_function, or the standardised prediction."""
    x = np.asarray(volumes, dtype=np.float64)
    if fitted.task.kind == "regression":
        return np.asarray(fitted.pipeline.predict(x), dtype=np.float64).reshape(-1, 1)
    return np.asarray(fitted.pipeline.decision_function(x), dtype=np.float64).reshape(len(x), -1)


def to_module(fitted: FittedRegional, labels: np.ndarray, n_regions: int, atlas: str = "AAL") -> RegionalLinear:
    """A ``RegionalLinear`` holding ``labels`` and the fitted scaler and coefficients (eval mode)."""
    scaler, est = fitted.pipeline[-2], fitted.pipeline[-1]
    net = RegionalLinear(n_regions=n_regions, n_outputs=fitted.n_outputs, atlas=atlas, input_shape=labels.shape,
                         normalise=fitted.task.normalise)
    net.set_atlas(labels)
    net.set_linear(scaler.mean_, scaler.scale_, np.reshape(est.coef_, (fitted.n_outputs, n_regions)),
                   np.reshape(est.intercept_, (fitted.n_outputs,)))
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


# ------------------------------------------------------------------------------------------------
# metrics


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def probabilities(task: RegionalTask, raw: np.ndarray) -> np.ndarray:
    """P(positive) (N,) for a binary head, class probabilities (N, K) for a multinomial one."""
    raw = np.asarray(raw, dtype=np.float64)
    if task.kind == "binary":
        return 1.0 / (1.0 + np.exp(-raw.reshape(-1)))
    return _softmax(raw.reshape(len(raw), -1))


def regional_metrics(task: RegionalTask, y: np.ndarray, raw: np.ndarray, *, offset: float = 0.0,
                     scale: float = 1.0) -> dict[str, float]:
    """Metrics of raw outputs ``raw`` (N, n_outputs) against ``y``; undefined ones are NaN."""
    n = len(y)
    if n == 0:
        return {"n": 0.0}
    if task.kind == "binary":
        m = binary_metrics(np.asarray(y, int), probabilities(task, raw), 0.5)
        return {k: m[k] for k in ("n", "n_positive", "roc_auc", "balanced_accuracy", "accuracy", "sensitivity",
                                  "specificity")}
    if task.kind == "multiclass":
        p = probabilities(task, raw)
        yi = np.asarray(y, int)
        out = {"n": float(n), "accuracy": float(np.mean(p.argmax(1) == yi))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["balanced_accuracy"] = float(balanced_accuracy_score(yi, p.argmax(1)))
        per_class = []
        for k, lab in enumerate(task.labels):
            pos = yi == k
            auc = float(roc_auc_score(pos, p[:, k])) if 0 < pos.sum() < n else math.nan
            out[f"roc_auc_{lab}"] = auc
            per_class.append(auc)
        out["macro_roc_auc"] = float(np.mean(per_class)) if all(np.isfinite(per_class)) else math.nan
        return out
    value = np.asarray(raw, np.float64).reshape(-1) * scale + offset
    yt = np.asarray(y, np.float64)
    r = float(np.corrcoef(value, yt)[0, 1]) if n > 2 and value.std() > 0 and yt.std() > 0 else math.nan
    return {"n": float(n), "mae": float(np.mean(np.abs(value - yt))), "pearson_r": r,
            "r2": float(r2_score(yt, value)) if n > 1 else math.nan}


# ------------------------------------------------------------------------------------------------
# cross-validation


@dataclass
class RegionalResult:
    """One task's leave-sites-out cross-validation of the baseline."""

    task: RegionalTask
    modules: list[RegionalLinear]
    fits: list[FittedRegional]
    fold_table: pd.DataFrame
    pooled: dict[str, float]
    predictions: pd.DataFrame
    offset: float = 0.0
    scale: float = 1.0
    package: Path | None = None

    @property
    def fold_states(self) -> list[dict[str, torch.Tensor]]:
        return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.modules]


def cv_regional(volumes: np.ndarray, rows: pd.DataFrame, task: RegionalTask, fold_of_row: np.ndarray,
                labels: np.ndarray, n_regions: int, *, atlas: str = "AAL", seed: int = 0) -> RegionalResult:
    """Leave-sites-out CV of ``task`` on region ``volumes`` (one row per ``rows`` row).

    ``rows`` needs ``participant_id``, ``site`` and the task's target column; ``fold_of_row`` is
    the outer fold of every row (whole sites, from :func:`site_folds`). Rows without a usable
    target are left out. Every fold's model sees only the other folds' rows, its L2 strength
    chosen by inner CV on those rows.
    """
    ok, y = task_targets(rows, task)
    if not ok.any():
        raise InputDataError(f"{task.name}: no participant has a usable {task.target!r} value")
    offset, scale = 0.0, 1.0
    if task.kind == "regression":
        offset = float(np.mean(y[ok]))
        scale = float(np.std(y[ok])) or 1.0
    pids = rows["participant_id"].astype(str).to_numpy()
    sites = rows["site"].astype(str).to_numpy()
    folds = sorted(set(np.asarray(fold_of_row).tolist()))
    modules, fits, fold_rows, preds = [], [], [], []
    for k in folds:
        tr = np.flatnonzero(ok & (fold_of_row != k))
        te = np.flatnonzero(ok & (fold_of_row == k))
        if set(pids[tr]) & set(pids[te]):
            raise InputDataError(f"{task.name}: fold {k} shares participants between training and test")
        if len(tr) == 0:
            raise InputDataError(f"{task.name}: fold {k} has no training rows with {task.target!r}")
        fit = fit_regional(volumes[tr], y[tr], task, sites=sites[tr], participant_ids=pids[tr],
                           offset=offset, scale=scale, seed=seed + k)
        net = to_module(fit, labels, n_regions, atlas)
        raw = sklearn_outputs(fit, volumes[te]) if len(te) else np.zeros((0, fit.n_outputs))
        fits.append(fit)
        modules.append(net)
        fold_rows.append({"fold": k, "test_sites": ";".join(sorted(set(sites[te]))) or "n/a",
                          "n_train": len(tr), "n_test": len(te), fit.penalty_name: fit.penalty,
                          **regional_metrics(task, y[te], raw, offset=offset, scale=scale)})
        preds.append(_prediction_rows(task, rows.iloc[te], k, y[te], raw, offset, scale))
    predictions = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame()
    pooled = _pooled(task, predictions, offset, scale)
    return RegionalResult(task, modules, fits, pd.DataFrame(fold_rows), pooled, predictions, offset, scale)


def _prediction_rows(task: RegionalTask, rows: pd.DataFrame, fold: int, y: np.ndarray, raw: np.ndarray,
                     offset: float, scale: float) -> pd.DataFrame:
    out = pd.DataFrame({"participant_id": rows["participant_id"].to_numpy(),
                        "prefix": rows["prefix"].to_numpy() if "prefix" in rows else rows["participant_id"].to_numpy(),
                        "site": rows["site"].to_numpy(), "fold": fold})
    if task.kind == "regression":
        out["label"] = y
        out["predicted_value"] = raw.reshape(-1) * scale + offset
    else:
        out["label"] = [task.labels[i] for i in y]
        p = probabilities(task, raw)
        if task.kind == "binary":
            out["score"] = p
        else:
            for j, lab in enumerate(task.labels):
                out[f"p_{lab}"] = p[:, j] if len(p) else []
    for j in range(raw.shape[1] if raw.ndim == 2 else 0):
        out[f"raw{j}"] = raw[:, j]
    return out


def _pooled(task: RegionalTask, preds: pd.DataFrame, offset: float, scale: float) -> dict[str, float]:
    if preds.empty:
        return {}
    raw = preds[[c for c in preds.columns if c.startswith("raw")]].to_numpy(np.float64)
    if task.kind == "regression":
        y = preds["label"].to_numpy(np.float64)
    else:
        y = preds["label"].map({lab: i for i, lab in enumerate(task.labels)}).to_numpy(int)
    return regional_metrics(task, y, raw, offset=offset, scale=scale)


# ------------------------------------------------------------------------------------------------
# card and cohort


def make_card(result: RegionalResult, atlas: RegionalAtlas, *, origin: str, synthetic: bool, data_note: str,
              n_folds: int, name_prefix: str = "vbm-predict", version: str = "0.1.0") -> dict[str, Any]:
    """The schema-2 model card of a trained baseline (family ``regional``, input ``gm_spm1``/GMV)."""
    task = result.task
    head: dict[str, Any] = {"name": task.name, "kind": task.kind, "target": task.target,
                            "outputs": [0, result.modules[0].n_outputs]}
    if task.kind == "binary":
        head |= {"labels": list(task.labels), "thresholds": dict(task.thresholds)}
    elif task.kind == "multiclass":
        head |= {"labels": list(task.labels)}
    else:
        head |= {"unit": task.unit, "scale": result.scale, "offset": result.offset}
    source = (f"leave-sites-out {n_folds}-fold cross-validation, out-of-fold predictions of sites never used for "
              f"training or model selection (n = {int(result.pooled.get('n', 0))})")
    metrics = [{"name": f"pooled_{k}", "value": float(v), "source": source}
               for k, v in result.pooled.items() if k not in ("n", "n_positive") and math.isfinite(float(v))]
    fits = result.fits
    estimator = {
        "library": "scikit-learn",
        "model": ("Ridge" if task.kind == "regression"
                  else "LogisticRegression" + (" (multinomial)" if task.kind == "multiclass" else "")),
        "features": f"GM volume (mL) of {atlas.n_regions} {atlas.name} regions of the GMV map"
                    + (", as percent of their total" if task.normalise == "total_gm" else " (absolute)")
                    + ", standardised (StandardScaler on the training folds)",
        "penalty": "l2",
        "grid": {fits[0].penalty_name: list(ALPHA_GRID if task.kind == "regression" else C_GRID)},
        "scoring": "neg_mean_absolute_error" if task.kind == "regression" else "neg_log_loss",
        "chosen": [{"fold": k, fits[k].penalty_name: fits[k].penalty, "inner_cv": fits[k].inner_cv}
                   for k in range(len(fits))],
    }
    if task.kind == "regression":
        estimator["target"] = f"(value - {result.offset:g}) / {result.scale:g} (cohort mean and SD; units only)"
    return {
        "schema_version": 2,
        "name": f"{name_prefix}-regional-{task.name}".replace("_", "-"),
        "family": "regional",
        "task": task.name,
        "version": version,
        "architecture": {"name": ARCHITECTURE,
                         "params": {"n_regions": atlas.n_regions, "n_outputs": result.modules[0].n_outputs,
                                    "atlas": atlas.name, "normalise": task.normalise}},
        "input": {"kind": "gm_spm1", "shape": [1, *grid.SPM_SHAPE], "channels": ["GMV"], "mask": "none",
                  "dtype": "float32",
                  "grid": {"shape": list(grid.SPM_SHAPE), "affine": np.asarray(grid.SPM_AFFINE).tolist()}},
        "heads": [head],
        "training": {
            "data": (f"{SYNTHETIC_NOTE}: " if synthetic else "") + data_note,
            "synthetic": bool(synthetic),
            "preprocessing": [origin],
            "cv": {"folds": n_folds, "scheme": "leave-sites-out",
                   "fold_sites": result.fold_table["test_sites"].tolist()},
            "estimator": estimator,
            "software": f"vbm-predict {__version__} train (regional baseline)",
        },
        "metrics": metrics,
        "licence": ("Apache-2.0; " + SYNTHETIC_NOTE if synthetic else "as the training data allow")
        + ". " + RESEARCH_USE_NOTICE,
        "provenance": {"atlas": atlas.provenance,
                       "folds": "one fitted model per leave-sites-out fold; the app averages their outputs"},
    }


def _extra_targets(participants_tsv: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """Add ``age`` and ``mci_progression`` from participants.tsv (not read by :func:`collect_cohort`)."""
    raw = pd.read_csv(participants_tsv, sep="\t", dtype=str, keep_default_na=False)
    ids = raw["participant_id"].str.strip()
    ids = ids.where(ids.str.startswith("sub-"), "sub-" + ids)
    for col in ("age", "mci_progression"):
        if col in raw.columns and col not in rows.columns:
            values = dict(zip(ids, raw[col].str.strip().replace({"n/a": pd.NA, "": pd.NA})))
            rows = rows.assign(**{col: rows["participant_id"].map(values)})
    return rows


def _read_gmv(path: Path) -> np.ndarray:
    from .data import _read_map

    return _read_map(path)


def train_regional(
    derivatives_dir: Path,
    participants_tsv: Path,
    out: Path,
    *,
    tasks: Sequence[str] = ("sex", "ad"),
    folds: int = 5,
    n_allocations: int = 10000,
    seed: int = 0,
    fold_of_row: np.ndarray | None = None,
    origin: str | None = None,
    synthetic: bool | None = None,
    name_prefix: str = "vbm-predict",
    version: str = "0.1.0",
    save: bool = True,
) -> list[RegionalResult]:
    """Cross-validate the baseline for ``tasks`` on a derivatives directory; write report and packages.

    Folds are those :func:`bids_app.train.train_cohort` draws for the same cohort and seed (whole
    sites, balanced on AD / CN when the cohort has them, else on sex) unless ``fold_of_row`` is
    given, so the baseline and the CNNs are scored on the same test sites. Writes
    ``out/report/regional_{task}_{folds,predictions}.tsv``, ``out/report/regional_summary.json``
    and, with ``save``, a package per task under ``out/models/regional_{task}``.
    """
    from .data import collect_cohort, maps_origin

    unknown = [t for t in tasks if t not in REGIONAL_TASKS]
    if unknown:
        raise UsageError(f"regional baseline tasks must be among {', '.join(REGIONAL_TASKS)}; got {unknown}")
    out = Path(out)
    rows = _extra_targets(Path(participants_tsv), collect_cohort(derivatives_dir, participants_tsv))
    auto_origin, auto_synth = maps_origin(Path(derivatives_dir))
    origin = origin or auto_origin
    synthetic = auto_synth if synthetic is None else synthetic
    if fold_of_row is None:
        ok_ad, y_ad = task_targets(rows, REGIONAL_TASKS["ad"])
        balance_ok, balance_y = (ok_ad, y_ad) if ok_ad.any() else task_targets(rows, REGIONAL_TASKS["sex"])
        fold_of_row = site_folds(rows["participant_id"], rows["site"], np.where(balance_ok, balance_y, 0), folds,
                                 n_allocations=n_allocations, seed=seed)
    fold_of_row = np.asarray(fold_of_row, dtype=int)
    atlas = regional_atlas()
    volumes = np.stack([region_volumes(_read_gmv(Path(p))[None], atlas.labels, atlas.n_regions)[0]
                        for p in rows["gmv"]])
    note = (f"{len(rows)} GMV maps of {rows['participant_id'].nunique()} participants at "
            f"{rows['site'].nunique()} sites from {Path(derivatives_dir).name} (maps: {origin})")
    results = []
    summary: dict[str, Any] = {}
    for name in tasks:
        task = REGIONAL_TASKS[name]
        res = cv_regional(volumes, rows, task, fold_of_row, atlas.labels, atlas.n_regions, atlas=atlas.name, seed=seed)
        for table, suffix in ((res.fold_table, "folds"), (res.predictions, "predictions")):
            with atomic_path(out / "report" / f"regional_{name}_{suffix}.tsv", suffix=".tsv") as tmp:
                table.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
        if save:
            from ..models import save_package

            card = make_card(res, atlas, origin=origin, synthetic=bool(synthetic), data_note=note,
                             n_folds=len(set(fold_of_row.tolist())), name_prefix=name_prefix, version=version)
            res.package = save_package(out / "models" / f"regional_{name}", card, res.fold_states)
        summary[name] = {"package": str(res.package) if res.package else None, "pooled": res.pooled,
                         "folds": res.fold_table.to_dict(orient="records")}
        results.append(res)
    write_json(out / "report" / "regional_summary.json", summary)
    return results


# ------------------------------------------------------------------------------------------------
# one fold of the family comparison (bids_app.train.crossval)


def task_for_head(head: Any) -> RegionalTask:
    """The baseline's task for one network head (:class:`bids_app.models.heads.HeadSpec`).

    Diagnosis and MCI progression are fitted on percent of total GM (the known task list's choice,
    :data:`REGIONAL_TASKS`); sex and age on absolute volumes.
    """
    known = REGIONAL_TASKS.get(head.name)
    normalise = known.normalise if known is not None else (
        "total_gm" if head.target in ("diagnosis", "mci_progression") else "none")
    return RegionalTask(head.name, head.kind, head.target, tuple(head.labels), unit=head.unit or "",
                        thresholds=dict(getattr(head, "thresholds", None) or (known.thresholds if known else {})),
                        normalise=normalise)


def _volumes_of(rows: pd.DataFrame, atlas: RegionalAtlas) -> np.ndarray:
    """(N, R) regional GM volumes (mL) of the rows' GMV maps, one map in memory at a time."""
    out = np.empty((len(rows), atlas.n_regions), dtype=np.float64)
    for i, path in enumerate(rows["gmv"]):
        out[i] = region_volumes(_read_gmv(Path(path))[None], atlas.labels, atlas.n_regions)[0]
    return out


def fit_predict(train_rows: pd.DataFrame, y_train: np.ndarray, test_rows: pd.DataFrame, heads: Any, *,
                params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Fit the baseline on ``train_rows`` and return the raw outputs of ``test_rows`` and its state dict.

    ``heads`` is the fold's :class:`bids_app.train.heads.HeadSet` (one head: the baseline serves one
    target per task); ``y_train`` its (N, 1) targets (class index, or value; NaN = missing). Raw outputs
    are in the head's raw space: logits, or ``(value - offset) / scale`` with the fold's standardisation,
    as the networks' outputs are, so the comparison decodes both the same way. ``params`` are the
    architecture parameters (unused: the region count comes from the atlas).
    """
    del params
    if len(heads) != 1:
        raise UsageError("the regional baseline predicts one target per task; multi-task heads need a network family")
    head = heads.heads[0]
    task = task_for_head(head)
    y = np.asarray(y_train, dtype=float).reshape(len(train_rows), -1)[:, 0]
    keep = np.isfinite(y)
    atlas = regional_atlas()
    train = train_rows[keep]
    fitted = fit_regional(_volumes_of(train, atlas), y[keep] if task.kind == "regression" else y[keep].astype(int),
                          task, sites=train["site"].astype(str).tolist(),
                          participant_ids=train["participant_id"].astype(str).tolist(),
                          offset=float(head.offset), scale=float(head.scale), seed=seed)
    raw = sklearn_outputs(fitted, _volumes_of(test_rows, atlas)) if len(test_rows) else np.empty((0, fitted.n_outputs))
    state = to_module(fitted, atlas.labels, atlas.n_regions, atlas=atlas.name).state_dict()
    return raw, state

"""Leave-sites-out cross-validation of any family on any task, learning curves, and the side-by-side report.

One run (``vbm-predict train --family cnn regional ... --task cn_mci_ad``):

1. the cohort table (maps, labels, sites) and the task's heads (:mod:`.heads`); targets per head;
2. leave-sites-out folds balanced for the first head's kind (:func:`.folds.site_folds`), the SAME
   folds for every family, so their metrics compare like with like;
3. per family and fold: a validation share of the training sites' participants (stratified) picks
   the best epoch / stops early; regression targets are standardised with the training split's
   mean and SD; the fold's network (or the regional baseline) scores the held-out sites;
4. ``--sample-sizes``: the same, on nested random subsets of each fold's training participants
   (:func:`.folds.nested_subsets`), scored on the same held-out sites: the learning curves of
   Leonardsen et al. (n = 100 .. 500);
5. pooled out-of-fold metrics per head with half-size subsampling intervals (Lu et al. 2022), one
   model package per family (card schema v2), and the report: per family tables, one comparison
   table family x metric, the learning-curve table and figure.

Regression packages: every fold trained on its own standardisation; the package's head carries the
cohort's (scale, offset) and each fold's output layer is rebased to it, so one head serves all folds.
"""

from __future__ import annotations

import importlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .. import RESEARCH_USE_NOTICE, __version__
from .._io import atomic_path, write_json
from ..errors import InputDataError, ModelPackageError, UsageError
from ..metrics import finite_or_none
from ..types import DeviceName, WeightsDtype
from .data import collect_cohort, load_inputs, maps_origin
from .families import (
    FamilyPreset,
    NetworkFactory,
    family_preset,
    input_card,
    network_factory,
    network_params,
    override_optim,
)
from .folds import inner_validation_split, nested_subsets, site_folds
from .heads import HeadSet, HeadSpec, head_metrics, main_metric, subsample_ci, task_heads
from .loop import OptimConfig, evaluate, resolve_device, train_network

__all__ = [
    "FamiliesConfig",
    "FamilyResult",
    "FoldData",
    "FoldFit",
    "cross_validate",
    "make_card_v2",
    "network_fitter",
    "rebase_regression_outputs",
    "train_families",
    "write_comparison",
]

_log = logging.getLogger("bids_app.train")
SYNTHETIC_NOTE = "trained on synthetic data; not for any real use"


@dataclass(frozen=True)
class FoldData:
    """What one fit sees: row indices (train / validation / held-out test) and the fold's heads."""

    fold: int
    tag: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    heads: HeadSet
    seed: int


@dataclass
class FoldFit:
    """A fitted fold: raw outputs on the test rows, its weights, and its training history."""

    raw_test: np.ndarray
    state: dict[str, torch.Tensor] | None
    best_epoch: int = 0
    best_val: float = math.nan
    history: list[dict[str, float]] = field(default_factory=list)


Fitter = Callable[[FoldData], FoldFit]


@dataclass
class FamilyResult:
    """Outcome of one family's cross-validation on one task."""

    family: str
    task: str
    architecture: str
    params: dict[str, Any]
    input_kind: str
    heads: HeadSet
    fold_heads: list[HeadSet]
    fold_states: list[dict[str, torch.Tensor] | None]
    fold_table: pd.DataFrame
    pooled: pd.DataFrame
    predictions: pd.DataFrame
    history: pd.DataFrame
    curve: pd.DataFrame
    optim: OptimConfig | None = None
    package: Path | None = None
    package_note: str = ""


def network_fitter(
    x: np.ndarray,
    y: np.ndarray,
    build: NetworkFactory,
    optim: OptimConfig,
    *,
    device: torch.device,
    checkpoints: Path | None = None,
    name: str = "net",
    progress: bool = False,
) -> Fitter:
    """Fitter that trains ``build(seed)`` with :func:`train_network` (resumable through ``checkpoints``)."""

    def fit(d: FoldData) -> FoldFit:
        stem = f"{name}_fold{d.fold}{d.tag}"
        done = checkpoints / f"{stem}_best.pt" if checkpoints is not None else None
        if done is not None and done.is_file():
            saved = torch.load(done, map_location="cpu", weights_only=True)
            _log.info("%s: finished earlier, loaded %s", stem, done)
            return FoldFit(saved["raw_test"].numpy(), saved["state"], int(saved["best_epoch"]),
                           float(saved["best_val"]), [dict(h) for h in saved["history"]])
        net = build(d.seed)
        res = train_network(net, x[d.train], y[d.train], x[d.val], y[d.val], optim, device=device, seed=d.seed,
                            checkpoint=checkpoints / f"{stem}.pt" if checkpoints is not None else None,
                            progress=progress, desc=stem, heads=d.heads)
        raw, _ = evaluate(net, x[d.test], None, device, heads=d.heads) if len(d.test) else (
            np.empty((0, d.heads.n_outputs)), math.nan)
        if done is not None:
            with atomic_path(done, suffix=".pt") as tmp:
                torch.save({"state": res.best_state, "best_epoch": res.best_epoch, "best_val": res.best_val_loss,
                            "history": res.history, "raw_test": torch.from_numpy(np.asarray(raw))}, tmp)
        return FoldFit(raw, res.best_state, res.best_epoch, res.best_val_loss, res.history)

    return fit


def regional_fitter(rows: pd.DataFrame, y: np.ndarray, params: Mapping[str, Any]) -> Fitter:
    """SEAM: the regional-volume baseline of :mod:`bids_app.train.regional` as a fitter.

    Expected from that module: ``fit_predict(train_rows, y_train, test_rows, heads, *, params, seed)
    -> (raw outputs of the test rows in the heads' raw space (logits / standardised values),
    regional_linear state dict or None)``. The lead joins the real call here.
    """
    try:
        regional = importlib.import_module("bids_app.train.regional")
    except ImportError as exc:
        raise UsageError("the regional family needs bids_app.train.regional, missing in this build") from exc

    def fit(d: FoldData) -> FoldFit:
        train = np.concatenate([d.train, d.val])  # no epochs to choose: the validation share trains too
        raw, state = regional.fit_predict(rows.iloc[train], y[train], rows.iloc[d.test], d.heads, params=params,
                                          seed=d.seed)
        return FoldFit(np.asarray(raw, dtype=float), state)

    return fit


def _registry_available(family: str) -> None:
    try:
        importlib.import_module("bids_app.models.architectures")
    except ImportError as exc:
        raise UsageError(f"the {family} family needs bids_app.models.architectures, missing in this build") from exc


def _split(rows: pd.DataFrame, heads: HeadSet, y: np.ndarray, pool_idx: np.ndarray, fraction: float,
           seed: int) -> tuple[np.ndarray, np.ndarray]:
    pids = rows["participant_id"].to_numpy()[pool_idx]
    val = inner_validation_split(pids, heads.stratum(y[pool_idx]), fraction, seed=seed)
    return pool_idx[~val], pool_idx[val]


def _head_values(heads: HeadSet, raw: np.ndarray) -> list[np.ndarray]:
    return heads.decode(raw) if len(raw) else [np.empty((0,) + ((len(h.labels),) if h.kind == "multiclass" else ()))
                                               for h in heads.heads]


def _metrics_of(heads: HeadSet, y: np.ndarray, decoded: Sequence[np.ndarray]) -> dict[str, dict[str, float]]:
    out = {}
    for j, (h, pred) in enumerate(zip(heads.heads, decoded)):
        ok = np.isfinite(y[:, j])
        out[h.name] = head_metrics(h, y[ok, j], pred[ok]) if ok.any() else {}
    return out


def _flat(metrics: Mapping[str, Mapping[str, float]], single: bool) -> dict[str, float]:
    return {(m if single else f"{h}_{m}"): v for h, ms in metrics.items() for m, v in ms.items()}


def cross_validate(
    rows: pd.DataFrame,
    y: np.ndarray,
    heads: HeadSet,
    fold_of_row: np.ndarray,
    fitter: Fitter,
    *,
    family: str,
    task: str,
    architecture: str,
    params: Mapping[str, Any],
    input_kind: str,
    n_folds: int,
    val_fraction: float = 0.2,
    seed: int = 0,
    sample_sizes: Sequence[int] = (),
    n_resamples: int = 1000,
    optim: OptimConfig | None = None,
) -> FamilyResult:
    """Leave-sites-out CV of one fitter; ``sample_sizes`` adds the learning curve (same test folds)."""
    usable = heads.usable(y)
    pids = rows["participant_id"].to_numpy()
    single = len(heads) == 1
    fold_rows, pred_rows, hist_rows, curve_rows = [], [], [], []
    states: list[dict[str, torch.Tensor] | None] = []
    fold_heads: list[HeadSet] = []
    for k in range(n_folds):
        pool_idx = np.flatnonzero(usable & (fold_of_row != k))
        te_idx = np.flatnonzero(usable & (fold_of_row == k))
        if len(pool_idx) == 0:
            raise InputDataError(f"{task}: fold {k} has no training participants with {task} targets")
        assert not set(pids[te_idx]) & set(pids[pool_idx])
        tr_idx, va_idx = _split(rows, heads, y, pool_idx, val_fraction, seed + k)
        hk = heads.standardised(y[tr_idx])
        fit = fitter(FoldData(k, "", tr_idx, va_idx, te_idx, hk, seed * 1000 + k))
        states.append(fit.state)
        fold_heads.append(hk)
        decoded = _head_values(hk, fit.raw_test)
        metrics = _metrics_of(hk, y[te_idx], decoded)
        fold_rows.append({"fold": k, "test_sites": ";".join(sorted(set(rows["site"].iloc[te_idx]))) or "n/a",
                          "n_train": len(tr_idx), "n_val": len(va_idx), "n_test": len(te_idx),
                          "best_epoch": fit.best_epoch, "val_loss": fit.best_val, **_flat(metrics, single)})
        for n, i in enumerate(te_idx):
            pr: dict[str, Any] = {"participant_id": pids[i], "prefix": rows["prefix"].iloc[i],
                                  "site": rows["site"].iloc[i], "fold": k}
            for j, (h, pred) in enumerate(zip(hk.heads, decoded)):
                pr[f"{h.name}_true"] = y[i, j]
                if h.kind == "multiclass":
                    pr.update({f"{h.name}_p_{lab}": float(pred[n, c]) for c, lab in enumerate(h.labels)})
                else:
                    pr[f"{h.name}_{'score' if h.kind == 'binary' else 'value'}"] = float(pred[n])
            pred_rows.append(pr)
        hist_rows += [{"fold": k, **{kk: float(vv) for kk, vv in h.items()}} for h in fit.history]
        if sample_sizes:
            subsets = nested_subsets(pids[pool_idx], [int(s) for s in sample_sizes], seed=seed * 1000 + k)
            for size, mask in zip(sample_sizes, subsets):
                s_tr, s_va = _split(rows, heads, y, pool_idx[mask], val_fraction, seed + k)
                if len(s_tr) == 0:
                    s_tr, s_va = s_va, s_va[:0]
                hs = heads.standardised(y[s_tr])
                sfit = fitter(FoldData(k, f"_n{int(size)}", s_tr, s_va, te_idx, hs, seed * 1000 + k))
                smetrics = _metrics_of(hs, y[te_idx], _head_values(hs, sfit.raw_test))
                for h in hs.heads:
                    curve_rows.append({"family": family, "task": task, "head": h.name, "fold": k,
                                       "n_requested": int(size), "n_participants": int(len(set(pids[pool_idx[mask]]))),
                                       "n_train": len(s_tr), "n_val": len(s_va), "n_test": len(te_idx),
                                       **smetrics[h.name]})
    preds = pd.DataFrame(pred_rows)
    card_heads = heads.standardised(y[usable])
    pooled = _pooled(family, task, card_heads, fold_heads, preds, n_resamples, seed)
    return FamilyResult(
        family=family, task=task, architecture=architecture, params=dict(params), input_kind=input_kind,
        heads=card_heads, fold_heads=fold_heads, fold_states=states, fold_table=pd.DataFrame(fold_rows),
        pooled=pooled, predictions=preds, history=pd.DataFrame(hist_rows), curve=pd.DataFrame(curve_rows),
        optim=optim,
    )


#: metrics that count participants: integers in the comparison table, without an interval
_COUNTS = ("n", "n_positive")


def _pooled(family: str, task: str, heads: HeadSet, fold_heads: Sequence[HeadSet], preds: pd.DataFrame,
            n_resamples: int, seed: int) -> pd.DataFrame:
    out = []
    for h in heads.heads:
        if preds.empty:
            continue
        ok = preds[f"{h.name}_true"].notna().to_numpy()
        y = preds[f"{h.name}_true"].to_numpy(float)[ok]
        if h.kind == "multiclass":
            p = preds[[f"{h.name}_p_{lab}" for lab in h.labels]].to_numpy(float)[ok]
        else:
            p = preds[f"{h.name}_{'score' if h.kind == 'binary' else 'value'}"].to_numpy(float)[ok]
        if len(y) == 0:
            continue
        vals = head_metrics(h, y, p)

        def on_subset(idx: np.ndarray, h: HeadSpec = h, y: np.ndarray = y, p: np.ndarray = p) -> dict[str, float]:
            return head_metrics(h, y[idx], p[idx])

        ci = subsample_ci(on_subset, len(y), n_resamples=n_resamples, seed=seed)
        for m, v in vals.items():
            # counts (n, n_positive) are facts of the cohort, not estimates: no interval
            lo, hi = (math.nan, math.nan) if m in _COUNTS else ci.get(m, (math.nan, math.nan))
            out.append({"family": family, "task": task, "head": h.name, "metric": m, "value": v,
                        "ci_low": lo, "ci_high": hi, "n": len(y)})
    return pd.DataFrame(out, columns=["family", "task", "head", "metric", "value", "ci_low", "ci_high", "n"])


def rebase_regression_outputs(state: Mapping[str, torch.Tensor], fold: HeadSet, target: HeadSet
                              ) -> dict[str, torch.Tensor]:
    """``state`` with its output layer rewritten so that ``target``'s scale/offset give ``fold``'s values.

    The output layer is the last weight whose first dimension is the network's output count and
    that has a bias (a Dense / Linear / 1x1x1 conv): value = (w x + b) * s_k + o_k must equal
    (w' x + b') * S + O, so w' = w s_k / S and b' = (b s_k + o_k - O) / S on the regression rows.
    """
    out = {k: v.clone() for k, v in state.items()}
    pairs = [(h, hk, a) for h, hk, (a, _) in zip(target.heads, fold.heads, target.slices) if h.kind == "regression"]
    if not pairs or all(h.scale == hk.scale and h.offset == hk.offset for h, hk, _ in pairs):
        return out
    K = target.n_outputs
    weight = next((k for k in reversed(list(out)) if k.endswith("weight") and out[k].ndim >= 2
                   and out[k].shape[0] == K and k[: -len("weight")] + "bias" in out), None)
    if weight is None:
        raise ModelPackageError(f"no output layer with {K} outputs and a bias to carry the regression scale")
    bias = weight[: -len("weight")] + "bias"
    for h, hk, a in pairs:
        r = hk.scale / h.scale
        out[weight][a] = out[weight][a] * r
        out[bias][a] = (out[bias][a] * hk.scale + hk.offset - h.offset) / h.scale
    return out


# -- cards ------------------------------------------------------------------------------------------
def make_card_v2(result: FamilyResult, *, name_prefix: str, version: str, origin: str, synthetic: bool,
                 data_note: str, n_folds: int, val_fraction: float, seed: int, source: str = "") -> dict[str, Any]:
    """The schema-v2 card of a family's cross-validated task (issue-15 contract)."""
    metrics = [
        {"name": f"pooled_{r.metric}" if len(result.heads) == 1 else f"pooled_{r.head}_{r.metric}",
         "value": float(r.value), "ci_low": finite_or_none(r.ci_low), "ci_high": finite_or_none(r.ci_high),
         "source": f"leave-sites-out {n_folds}-fold cross-validation, out-of-fold predictions of sites never used "
                   f"for training or model selection (n = {int(r.n)}), 95% interval from half-size subsamples"}
        for r in result.pooled.itertuples() if math.isfinite(float(r.value))
    ]
    training = {
        "data": (f"{SYNTHETIC_NOTE}: " if synthetic else "") + data_note,
        "synthetic": bool(synthetic),
        "preprocessing": [origin],
        "cv": {"folds": n_folds, "scheme": "leave-sites-out", "val_fraction": val_fraction,
               "fold_sites": result.fold_table["test_sites"].tolist()},
        "optimizer": dict(result.optim.__dict__) if result.optim is not None else "scikit-learn",
        "defaults_from": source,
        "seed": seed,
        "software": f"vbm-predict {__version__} train",
    }
    return {
        "schema_version": 2,
        "name": f"{name_prefix}-{result.family}-{result.task}".replace("_", "-"),
        "version": version,
        "family": result.family,
        "task": result.task,
        "architecture": {"name": result.architecture, "params": result.params},
        "input": input_card(result.input_kind),
        "heads": result.heads.card_heads(),
        "training": training,
        "metrics": metrics,
        "licence": ("Apache-2.0; " + SYNTHETIC_NOTE if synthetic else "as the training data allow")
        + ". " + RESEARCH_USE_NOTICE,
        "provenance": {"folds": "one network per leave-sites-out fold; the app averages their outputs"},
    }


def card_v1(card: Mapping[str, Any]) -> dict[str, Any]:
    """The schema-v1 card of a BrainImageNet sex / AD package (for builds whose loader reads only v1)."""
    head = card["heads"][0]
    neg, pos = head["labels"]
    v1 = {k: v for k, v in card.items() if k not in ("schema_version", "family", "heads")}
    v1["input"] = {k: v for k, v in card["input"].items() if k != "kind"}
    v1["output"] = {"meaning": f"P({pos})", "activation": "sigmoid", "positive_label": pos, "negative_label": neg}
    v1["thresholds"] = dict(head["thresholds"])
    v1["name"] = card["name"].replace("-brainimagenet", "")
    return v1


def _save(result: FamilyResult, card: dict[str, Any], out: Path, dtype: torch.dtype) -> None:
    from ..models import save_package

    states = [s for s in result.fold_states if s is not None]
    if len(states) != len(result.fold_states):
        result.package_note = "no package: the fitter returned no weights for some folds"
        return
    dest = out / "models" / f"{result.family}_{result.task}"
    if result.family == "regional":  # its float64 means and scales: half precision would lose three digits
        dtype = torch.float32
    try:
        states = [rebase_regression_outputs(s, hk, result.heads) for s, hk in zip(states, result.fold_heads)]
        result.package = save_package(dest, card, states, dtype=dtype)
    except ModelPackageError as exc:
        if result.family == "brainimagenet" and result.task in ("sex", "ad"):
            result.package = save_package(dest, card_v1(card), states, dtype=dtype)
            result.package_note = "written as a schema-v1 card (this build's save_package reads v1 only)"
        else:
            result.package_note = f"no package: save_package refused the v2 card ({exc})"
            _log.warning("%s %s: %s", result.family, result.task, result.package_note)


# -- the run ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FamiliesConfig:
    """Settings of a multi-family run; ``optim`` / ``width`` / ``extra_params`` override the presets."""

    folds: int = 5
    n_allocations: int = 10000
    val_fraction: float = 0.2
    seed: int = 0
    device: DeviceName = "auto"
    weights_dtype: WeightsDtype = "float32"
    name_prefix: str = "vbm-predict"
    version: str = "0.1.0"
    n_resamples: int = 1000
    width: float | None = None
    optim: Mapping[str, Any] = field(default_factory=dict)
    extra_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise UsageError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")

    def optim_for(self, preset: FamilyPreset, task: str) -> OptimConfig | None:
        base = preset.optim_for(task)
        return None if base is None else override_optim(base, **self.optim)


def train_families(
    derivatives_dir: Path,
    participants_tsv: Path,
    out: Path,
    families: Sequence[str],
    task: str,
    cfg: FamiliesConfig,
    *,
    sample_sizes: Sequence[int] = (),
    origin: str | None = None,
    synthetic: bool | None = None,
    progress: bool = False,
    builders: Mapping[str, NetworkFactory] | None = None,
) -> list[FamilyResult]:
    """Cross-validate every family in ``families`` on ``task`` with the same folds; packages and report.

    ``builders`` (family -> ``factory(seed)``) replaces a family's network builder (tests use tiny
    networks). Re-running with the same ``out`` resumes from ``out/checkpoints``.
    """
    if not families:
        raise UsageError("--family needs at least one family")
    presets = [family_preset(f) for f in dict.fromkeys(families)]
    heads = HeadSet(task_heads(task))
    for preset in presets:  # refuse before hours of training, not after the first family
        network_params(preset, heads.n_outputs, width=cfg.width, extra=cfg.extra_params.get(preset.family))
        if preset.family == "regional":
            regional_fitter(pd.DataFrame(), np.empty((0, len(heads))), {})
        elif preset.family not in (builders or {}) and preset.family != "brainimagenet":
            _registry_available(preset.family)
    for s in sample_sizes:
        if int(s) < 1:
            raise UsageError(f"--sample-sizes must be >= 1; got {s}")
    out = Path(out)
    rows = collect_cohort(derivatives_dir, participants_tsv)
    y = heads.targets(rows)
    usable = heads.usable(y)
    if not usable.any():
        raise InputDataError(f"{participants_tsv}: no participant has a target for task {task!r} "
                             f"(columns {', '.join(h.target for h in heads.heads)})")
    rows, y = rows[usable].reset_index(drop=True), y[usable]
    auto_origin, auto_synth = maps_origin(Path(derivatives_dir))
    origin = origin or auto_origin
    synthetic = auto_synth if synthetic is None else synthetic
    first = heads.heads[0]
    folds = site_folds(rows["participant_id"], rows["site"], y[:, 0], cfg.folds, n_allocations=cfg.n_allocations,
                       seed=cfg.seed, kind=first.kind)
    rows = rows.assign(fold=folds)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "report" / f"{task}_folds_sites.tsv", suffix=".tsv") as tmp:
        cols = [c for c in ("participant_id", "prefix", "site", "fold", "sex", "diagnosis", "age", "mci_progression")
                if c in rows.columns]
        rows[cols].to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    device = resolve_device(cfg.device)
    note = (f"{len(rows)} inputs of {rows['participant_id'].nunique()} participants at {rows['site'].nunique()} sites "
            f"from {Path(derivatives_dir).name} (maps: {origin})")
    dtype = torch.float16 if cfg.weights_dtype == "float16" else torch.float32
    inputs: dict[str, np.ndarray] = {}
    results = []
    for preset in presets:
        params = network_params(preset, heads.n_outputs, width=cfg.width, extra=cfg.extra_params.get(preset.family))
        optim = cfg.optim_for(preset, task)
        arch = preset.architecture_for(task)
        if preset.family == "regional":
            # the card's params rebuild the module alone: region count and name of the atlas, normalisation
            params = importlib.import_module("bids_app.train.regional").architecture_params(heads)
            fitter = regional_fitter(rows, y, params)
        else:
            if preset.input_kind not in inputs:
                inputs[preset.input_kind] = load_inputs(rows, kind=preset.input_kind, progress=progress)
            build = (builders or {}).get(preset.family) or network_factory(preset, task, params)
            assert optim is not None
            fitter = network_fitter(inputs[preset.input_kind], y, build, optim, device=device,
                                    checkpoints=out / "checkpoints", name=f"{preset.family}_{task}", progress=progress)
        _log.info("%s on %s: leave-sites-out %d-fold cross-validation", preset.family, task, cfg.folds)
        res = cross_validate(rows, y, heads, folds, fitter, family=preset.family, task=task, architecture=arch,
                             params=params, input_kind=preset.input_kind, n_folds=cfg.folds,
                             val_fraction=cfg.val_fraction, seed=cfg.seed, sample_sizes=sample_sizes,
                             n_resamples=cfg.n_resamples, optim=optim)
        card = make_card_v2(res, name_prefix=cfg.name_prefix, version=cfg.version, origin=origin,
                            synthetic=bool(synthetic), data_note=note, n_folds=cfg.folds,
                            val_fraction=cfg.val_fraction, seed=cfg.seed, source=preset.source)
        _save(res, card, out, dtype)
        results.append(res)
    write_comparison(out, results, n_resamples=cfg.n_resamples)
    return results


# -- the report ---------------------------------------------------------------------------------------
def _fmt(v: float, lo: float, hi: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi) else f"{v:.3f}"


def _tsv(path: Path, table: pd.DataFrame, written: list[Path]) -> None:
    with atomic_path(path, suffix=".tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    written.append(path)


def write_comparison(out: Path, results: Sequence[FamilyResult], *, n_resamples: int = 1000) -> list[Path]:
    """Per-family tables, the family x metric comparison (with intervals) and learning curves per task.

    Files under ``out/report``: ``{family}_{task}_{folds,pooled,predictions,history}.tsv``,
    ``{task}_comparison.tsv`` (long: family, head, metric, value, ci_low, ci_high, n),
    ``{task}_comparison_wide.tsv`` and ``{task}_comparison.md`` (one row per family, "value [low, high]"),
    ``{task}_learning_curve.tsv`` / ``.png`` when sample sizes were given, ``summary.json``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    rep = Path(out) / "report"
    written: list[Path] = []
    for r in results:
        for name, table in (("folds", r.fold_table), ("pooled", r.pooled), ("predictions", r.predictions),
                            ("history", r.history)):
            _tsv(rep / f"{r.family}_{r.task}_{name}.tsv", table, written)
    for task in dict.fromkeys(r.task for r in results):
        group = [r for r in results if r.task == task]
        long = pd.concat([r.pooled for r in group], ignore_index=True)
        _tsv(rep / f"{task}_comparison.tsv", long, written)
        wide_rows = []
        for r in group:
            row: dict[str, Any] = {"family": r.family, "architecture": r.architecture, "input": r.input_kind,
                                   "n": int(r.pooled["n"].max()) if not r.pooled.empty else 0}
            for p in r.pooled.itertuples():
                key = p.metric if len(r.heads) == 1 else f"{p.head} {p.metric}"
                if p.metric == "n":
                    continue  # the family's n above (the largest head's)
                row[key] = (int(p.value) if p.metric in _COUNTS and math.isfinite(float(p.value))
                            else _fmt(float(p.value), float(p.ci_low), float(p.ci_high)))
            row["package"] = str(r.package) if r.package is not None else (r.package_note or "n/a")
            wide_rows.append(row)
        wide = pd.DataFrame(wide_rows)
        _tsv(rep / f"{task}_comparison_wide.tsv", wide, written)
        md = rep / f"{task}_comparison.md"
        lines = [f"# {task}: leave-sites-out cross-validation, every family on the same folds", "",
                 f"Pooled out-of-fold metrics; 95% intervals from {n_resamples} half-size subsamples (Lu et al. 2022).",
                 "",
                 "| " + " | ".join(wide.columns) + " |", "|" + "---|" * len(wide.columns)]
        lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in wide.itertuples(index=False)]
        with atomic_path(md, suffix=".md") as tmp:
            Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(md)
        curves = [r.curve for r in group if not r.curve.empty]
        if curves:
            curve = pd.concat(curves, ignore_index=True)
            _tsv(rep / f"{task}_learning_curve.tsv", curve, written)
            heads = group[0].heads.heads
            fig = Figure(figsize=(4.5 * len(heads), 3.5))
            axes = np.atleast_1d(fig.subplots(1, len(heads)))
            for ax, h in zip(axes, heads):
                metric, _ = main_metric(h)
                sub = curve[curve["head"] == h.name]
                for fam, g in sub.groupby("family", sort=False):
                    if metric not in g:
                        continue
                    stat = g.groupby("n_requested")[metric].agg(["mean", "std"]).reset_index()
                    ax.errorbar(stat["n_requested"], stat["mean"], yerr=stat["std"].fillna(0), marker="o",
                                capsize=3, label=str(fam))
                ax.set(xlabel="training participants", ylabel=metric, title=f"{task}: {h.name} (mean +- sd over folds)")
                ax.legend(fontsize=7)
            fig.tight_layout()
            png = rep / f"{task}_learning_curve.png"
            with atomic_path(png, suffix=".png") as tmp:
                fig.savefig(tmp, dpi=100)
            written.append(png)
    summary = rep / "summary.json"
    write_json(summary, {f"{r.family}_{r.task}": {
        "package": str(r.package) if r.package is not None else None, "note": r.package_note,
        "pooled": r.pooled.to_dict(orient="records")} for r in results})
    written.append(summary)
    return written

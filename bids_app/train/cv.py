"""Leave-sites-out training of the sex and AD models, the reference system's way.

Pipeline (Lu et al. 2022, adapted so that test sites are never seen):

1. folds: whole sites per fold, the most balanced of many random allocations (:mod:`.folds`);
2. sex: for each fold, an ``irv2_sex`` network trained from scratch on the other folds' sites
   (a validation share of *their* participants chooses the best epoch), scored on the fold's sites;
3. AD: for each fold, an ``irv2_ad_optimised`` (or ``irv2_ad_intact``) network whose stem is copied
   from that fold's sex network (so no image of the test sites was ever used), trained on AD / CN
   participants of the other sites, best epoch by validation loss, scored on the fold's sites;
4. per-fold and pooled out-of-fold metrics with subsampling intervals (:mod:`bids_app.metrics`),
   a report (TSV tables and a curves PNG), and one model package per task whose folds are the
   fold networks (the app averages them, like the reference AD ensemble).

The reference sex model was one network trained on all data; here it is the fold ensemble, so
that its stems can seed the AD folds without leaking test sites.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .. import RESEARCH_USE_NOTICE, __version__
from .._io import atomic_path, write_json
from ..errors import InputDataError, UsageError
from ..metrics import METRIC_NAMES, binary_metrics, finite_or_none, subsample_intervals
from ..types import AD_ARCHITECTURES, TASK_CHOICES, ADArchitecture, DeviceName, TaskName, WeightsDtype
from .data import collect_cohort, load_inputs, maps_origin
from .folds import inner_validation_split, site_folds
from .loop import OptimConfig, evaluate, resolve_device, train_network

__all__ = [
    "SYNTHETIC_NOTE",
    "DEFAULT_OPTIM",
    "TrainConfig",
    "TaskResult",
    "train_cohort",
    "make_card",
    "task_labels",
    "write_report",
]

_log = logging.getLogger("bids_app.train")

SYNTHETIC_NOTE = "trained on synthetic data; not for any real use"
#: the reference system's optimiser settings per task (DESIGN s2)
DEFAULT_OPTIM: dict[str, OptimConfig] = {
    "sex": OptimConfig(lr=0.01, decay=3e-3, batch_size=24, epochs=10),
    "ad": OptimConfig(lr=3e-4, decay=1e-3, batch_size=24, epochs=10),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (recorded in the cards and the report)."""

    folds: int = 5
    n_allocations: int = 10000
    val_fraction: float = 0.2
    width: float = 1.0
    blocks: tuple[int, int, int] = (5, 10, 5)
    dropout: float = 0.5
    ad_architecture: ADArchitecture = "irv2_ad_optimised"
    sex_optim: OptimConfig = DEFAULT_OPTIM["sex"]
    ad_optim: OptimConfig = DEFAULT_OPTIM["ad"]
    seed: int = 0
    device: DeviceName = "auto"
    weights_dtype: WeightsDtype = "float32"
    name_prefix: str = "vbm-predict"
    version: str = "0.1.0"

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise UsageError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.ad_architecture not in AD_ARCHITECTURES:
            raise UsageError(
                f"--ad-architecture must be one of {', '.join(AD_ARCHITECTURES)}; got {self.ad_architecture!r}"
            )

    @property
    def net_params(self) -> dict[str, Any]:
        return {"width": float(self.width), "blocks": [int(b) for b in self.blocks], "in_channels": 2,
                "dropout": float(self.dropout)}


@dataclass
class TaskResult:
    """Outcome of one task's cross-validation."""

    task: str
    architecture: str
    fold_states: list[dict[str, torch.Tensor]]
    fold_table: pd.DataFrame
    pooled: pd.DataFrame
    predictions: pd.DataFrame
    history: pd.DataFrame
    package: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def task_labels(rows: pd.DataFrame, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(usable row mask, 0/1 labels) for ``task``: sex male = 1; AD = 1, CN = 0 (MCI left out)."""
    if task == "sex":
        col = rows["sex"].astype("string")
        ok = col.isin(["male", "female"]).fillna(False).to_numpy(bool)
        y = (col == "male").fillna(False).to_numpy(int)
    else:
        col = rows["diagnosis"].astype("string")
        ok = col.isin(["AD", "CN"]).fillna(False).to_numpy(bool)
        y = (col == "AD").fillna(False).to_numpy(int)
    return ok, y


def _metric_row(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    if len(y) == 0:
        return {}
    return binary_metrics(y, s, 0.5)


def _cv_task(
    task: str,
    rows: pd.DataFrame,
    x: np.ndarray,
    fold_of_row: np.ndarray,
    cfg: TrainConfig,
    out: Path,
    *,
    stems: Sequence[dict[str, torch.Tensor]] | None,
    progress: bool,
) -> TaskResult:
    from ..models import build_network

    ok, y = task_labels(rows, task)
    arch = "irv2_sex" if task == "sex" else cfg.ad_architecture
    optim = cfg.sex_optim if task == "sex" else cfg.ad_optim
    device = resolve_device(cfg.device)
    ckdir = out / "checkpoints"
    fold_rows, pred_rows, hist_rows, states = [], [], [], []
    for k in range(cfg.folds):
        test = ok & (fold_of_row == k)
        pool = ok & (fold_of_row != k)
        pool_idx = np.flatnonzero(pool)
        pool_ids = rows["participant_id"].to_numpy()[pool_idx]
        val_mask = inner_validation_split(pool_ids, y[pool_idx], cfg.val_fraction, seed=cfg.seed + k)
        tr_idx, va_idx, te_idx = pool_idx[~val_mask], pool_idx[val_mask], np.flatnonzero(test)
        assert not set(rows["participant_id"].iloc[te_idx]) & set(rows["participant_id"].iloc[pool_idx])
        if len(tr_idx) == 0:
            raise InputDataError(f"{task}: fold {k} has no training participants with {task} labels")
        done = ckdir / f"{task}_fold{k}_best.pt"
        if done.is_file():
            saved = torch.load(done, map_location="cpu", weights_only=True)
            state, history = saved["state"], saved["history"]
            best_epoch, best_val = int(saved["best_epoch"]), float(saved["best_val"])
            net = build_network(arch, **cfg.net_params)
            net.load_state_dict(state)
            net.to(device).to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
            _log.info("%s fold %d: finished earlier, loaded %s", task, k, done)
        else:
            torch.manual_seed(cfg.seed * 1000 + k)
            net = build_network(arch, **cfg.net_params)
            if stems is not None:
                stem_state = {n[len("stem."):] if n.startswith("stem.") else n: v for n, v in stems[k].items()}
                net.stem.load_state_dict(stem_state)
            res = train_network(
                net, x[tr_idx], y[tr_idx], x[va_idx], y[va_idx], optim, device=device, seed=cfg.seed * 1000 + k,
                checkpoint=ckdir / f"{task}_fold{k}.pt", progress=progress, desc=f"{task} fold {k}",
            )
            state, best_epoch, best_val, history = res.best_state, res.best_epoch, res.best_val_loss, res.history
            with atomic_path(done, suffix=".pt") as tmp:
                torch.save({"state": state, "best_epoch": best_epoch, "best_val": best_val, "history": history}, tmp)
        states.append(state)
        if len(te_idx):
            scores, test_loss = evaluate(net, x[te_idx], y[te_idx].astype(np.float32), device)
        else:
            scores, test_loss = np.array([]), math.nan
        m = _metric_row(y[te_idx], scores)
        fold_rows.append(
            {"fold": k, "test_sites": ";".join(sorted(set(rows["site"].iloc[te_idx]))) or "n/a",
             "n_train": len(tr_idx), "n_val": len(va_idx), "n_test": len(te_idx),
             "n_test_positive": int(y[te_idx].sum()), "best_epoch": best_epoch, "val_loss": best_val,
             "test_loss": test_loss, **m}
        )
        for i, s in zip(te_idx, scores):
            pred_rows.append({"participant_id": rows["participant_id"].iloc[i], "prefix": rows["prefix"].iloc[i],
                              "site": rows["site"].iloc[i], "fold": k, "label": int(y[i]), "score": float(s)})
        for h in history:
            hist_rows.append({"fold": k, **{kk: float(vv) for kk, vv in dict(h).items()}})
    preds = pd.DataFrame(pred_rows)
    pooled = _pooled(preds, cfg.seed)
    return TaskResult(task=task, architecture=arch, fold_states=states, fold_table=pd.DataFrame(fold_rows),
                      pooled=pooled, predictions=preds, history=pd.DataFrame(hist_rows))


def _pooled(preds: pd.DataFrame, seed: int) -> pd.DataFrame:
    if preds.empty:
        return pd.DataFrame(columns=["metric", "value", "ci_low", "ci_high", "n"])
    y, s = preds["label"].to_numpy(int), preds["score"].to_numpy(float)
    vals = binary_metrics(y, s, 0.5)
    ci = subsample_intervals(y, s, 0.5, seed=seed)
    return pd.DataFrame([{"metric": k, "value": v, "ci_low": ci.get(k, (math.nan,) * 2)[0],
                          "ci_high": ci.get(k, (math.nan,) * 2)[1], "n": len(y)}
                         for k, v in vals.items() if k in METRIC_NAMES])


def make_card(result: TaskResult, cfg: TrainConfig, *, origin: str, synthetic: bool, data_note: str) -> dict[str, Any]:
    """The model card of a trained task (schema of :mod:`bids_app.models.package`)."""
    from ..models import input_spec
    from ..models.package import TASK_LABELS

    pos, neg = TASK_LABELS[result.task]
    metrics = [
        {"name": f"pooled_{r.metric}", "value": float(r.value), "ci_low": finite_or_none(r.ci_low),
         "ci_high": finite_or_none(r.ci_high),
         "source": f"leave-sites-out {cfg.folds}-fold cross-validation, out-of-fold predictions of sites never used "
                   f"for training or model selection (n = {int(r.n)}), 95% interval from 1000 half-size subsamples"}
        for r in result.pooled.itertuples() if not (isinstance(r.value, float) and math.isnan(r.value))
    ]
    thresholds = {"default": 0.5} | ({"screening": 0.3} if result.task == "ad" else {})
    training = {
        "data": (f"{SYNTHETIC_NOTE}: " if synthetic else "") + data_note,
        "synthetic": bool(synthetic),
        "preprocessing": [origin],
        "cv": {"folds": cfg.folds, "scheme": "leave-sites-out", "val_fraction": cfg.val_fraction,
               "fold_sites": result.fold_table["test_sites"].tolist()},
        "optimizer": {k: v for k, v in (cfg.sex_optim if result.task == "sex" else cfg.ad_optim).__dict__.items()},
        "transfer": "stem of the same fold's sex network" if result.task == "ad" else "from scratch",
        "seed": cfg.seed,
        "software": f"vbm-predict {__version__} train",
    }
    return {
        "name": f"{cfg.name_prefix}-{result.task}",
        "task": result.task,
        "version": cfg.version,
        "architecture": {"name": result.architecture, "params": cfg.net_params},
        "input": input_spec(mask="bids_app.grid brain mask (nilearn MNI152 2009 brain probability > 0.5)"),
        "output": {"meaning": f"P({pos})", "activation": "sigmoid", "positive_label": pos, "negative_label": neg},
        "thresholds": thresholds,
        "training": training,
        "metrics": metrics,
        "licence": ("Apache-2.0; " + SYNTHETIC_NOTE if synthetic else "as the training data allow")
        + ". " + RESEARCH_USE_NOTICE,
        "provenance": {"folds": "one network per leave-sites-out fold; the app averages their scores"},
    }


def write_report(out: Path, results: Sequence[Any]) -> list[Path]:
    """TSV tables and a training-curves PNG per task under ``out/report``; returns the files.

    Results of :func:`bids_app.train.crossval.cross_validate` (any family, any task) go to
    :func:`bids_app.train.crossval.write_comparison`: every family's metrics for a task side by side
    in one table, and the learning curves.
    """
    from .crossval import FamilyResult, write_comparison

    families = [r for r in results if isinstance(r, FamilyResult)]
    results = [r for r in results if not isinstance(r, FamilyResult)]
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    rep = out / "report"
    written = []
    for r in results:
        tables = (("folds", r.fold_table), ("pooled", r.pooled), ("predictions", r.predictions), ("history", r.history))
        for name, table in tables:
            p = rep / f"{r.task}_{name}.tsv"
            with atomic_path(p, suffix=".tsv") as tmp:
                table.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
            written.append(p)
        fig = Figure(figsize=(9, 3.5))
        axes = fig.subplots(1, 2)
        for k, h in r.history.groupby("fold") if not r.history.empty else []:
            axes[0].plot(h["epoch"], h["train_loss"], label=f"fold {int(k)} train")
            axes[0].plot(h["epoch"], h["val_loss"], "--", label=f"fold {int(k)} val")
            axes[1].plot(h["epoch"], h["val_accuracy"], label=f"fold {int(k)}")
        axes[0].set(xlabel="epoch", ylabel="BCE loss", title=f"{r.task}: loss")
        axes[1].set(xlabel="epoch", ylabel="accuracy", title=f"{r.task}: validation accuracy", ylim=(0, 1))
        axes[0].legend(fontsize=6)
        fig.tight_layout()
        p = rep / f"{r.task}_curves.png"
        with atomic_path(p, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close("all")
        written.append(p)
    if families:
        written += write_comparison(out, families)
    return written


def train_cohort(
    derivatives_dir: Path,
    participants_tsv: Path,
    out: Path,
    cfg: TrainConfig,
    *,
    tasks: Sequence[TaskName] = TASK_CHOICES,
    origin: str | None = None,
    synthetic: bool | None = None,
    progress: bool = False,
) -> list[TaskResult]:
    """Train and validate the requested tasks; write packages to ``out/models/{task}``.

    ``ad`` needs ``sex`` in the same run (its stems seed the AD folds). ``origin`` / ``synthetic``
    default to what the maps' ``dataset_description.json`` says. Re-running with the same ``out``
    resumes from the checkpoints under ``out/checkpoints``.
    """
    from ..models import save_package

    for t in tasks:
        if t not in TASK_CHOICES:
            raise UsageError(f"--tasks must be among {', '.join(TASK_CHOICES)}; got {t!r}")
    if "ad" in tasks and "sex" not in tasks:
        raise UsageError("the AD model is transferred from the sex model: train 'sex' and 'ad' together")
    out = Path(out)
    rows = collect_cohort(derivatives_dir, participants_tsv)
    auto_origin, auto_synth = maps_origin(Path(derivatives_dir))
    origin = origin or auto_origin
    synthetic = auto_synth if synthetic is None else synthetic
    # folds on the AD labels when AD is trained (its balance matters most), otherwise on sex
    balance_task = "ad" if "ad" in tasks else "sex"
    ok, y = task_labels(rows, balance_task)
    folds = site_folds(rows["participant_id"], rows["site"], np.where(ok, y, 0), cfg.folds,
                       n_allocations=cfg.n_allocations, seed=cfg.seed)
    rows = rows.assign(fold=folds)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "report" / "folds_sites.tsv", suffix=".tsv") as tmp:
        columns = ["participant_id", "prefix", "site", "fold", "sex", "diagnosis"]
        rows[columns].to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    x = load_inputs(rows, progress=progress)
    results = []
    sex_res = _cv_task("sex", rows, x, folds, cfg, out, stems=None, progress=progress)
    results.append(sex_res)
    if "ad" in tasks:
        stems = []
        from ..models import build_network

        for st in sex_res.fold_states:
            net = build_network("irv2_sex", **cfg.net_params)
            net.load_state_dict(st)
            stems.append({k: v.clone() for k, v in net.stem.state_dict().items()})
        results.append(_cv_task("ad", rows, x, folds, cfg, out, stems=stems, progress=progress))
    n_sites = rows["site"].nunique()
    note = (f"{len(rows)} GM map pairs of {rows['participant_id'].nunique()} participants at {n_sites} sites "
            f"from {Path(derivatives_dir).name} (maps: {origin})")
    dtype = torch.float16 if cfg.weights_dtype == "float16" else torch.float32
    for r in results:
        card = make_card(r, cfg, origin=origin, synthetic=bool(synthetic), data_note=note)
        r.package = save_package(out / "models" / r.task, card, r.fold_states, dtype=dtype)
    write_report(out, results)
    write_json(out / "report" / "summary.json", {
        r.task: {"package": str(r.package), "pooled": r.pooled.to_dict(orient="records"),
                 "folds": r.fold_table.to_dict(orient="records")} for r in results
    })
    return results

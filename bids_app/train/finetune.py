"""Fine-tuning a model package to a new site with a fraction of its labelled data.

Why: models lose accuracy on scanners they never saw; the transferable-3D-CNN experiments fine-tuned
on 20% of a target site and compared freezing the low layers (keep generic features, adapt the
decision) with freezing the high layers (adapt the early, scanner-sensitive features). Here "low"
is the network's stem (shared by the sex and AD networks) and "high" everything after it.

Protocol: the target participants are split once, stratified by label, into a fine-tuning share
(``fraction``; a quarter of it, when large enough, chooses the best epoch) and a held-out rest on
which every fold is scored before and after; the new package keeps the architecture and records
the adaptation in its card.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .._io import atomic_path
from ..errors import InputDataError, UsageError
from ..metrics import binary_metrics
from ..types import FREEZE_CHOICES, DeviceName, FreezeName
from .cv import task_labels
from .data import collect_cohort, load_inputs, maps_origin
from .folds import inner_validation_split
from .loop import OptimConfig, evaluate, resolve_device, set_trainable, train_network

__all__ = ["finetune_package", "frozen_modules"]

_log = logging.getLogger("bids_app.train")


def frozen_modules(net: torch.nn.Module, freeze: FreezeName) -> list[torch.nn.Module]:
    """Modules to freeze: ``low`` = the stem's layers, ``high`` = every weighted layer after the stem."""
    if freeze == "none":
        return []
    stem_names = set(getattr(net, "stem_names", ()))
    if not stem_names:
        raise UsageError("--freeze low/high needs a network with a stem (irv2_* architectures)")
    stem_mods = list(net.stem.values())  # type: ignore[operator]
    if freeze == "low":
        return stem_mods
    if freeze == "high":
        stem_ids = {id(p) for m in stem_mods for p in m.parameters()}
        return [m for m in net.modules() if list(m.parameters(recurse=False))
                and not any(id(p) in stem_ids for p in m.parameters(recurse=False))]
    raise UsageError(f"--freeze must be one of {', '.join(FREEZE_CHOICES)}; got {freeze!r}")


def finetune_package(
    package: Path,
    derivatives_dir: Path,
    participants_tsv: Path,
    out: Path,
    *,
    fraction: float = 0.2,
    freeze: FreezeName = "none",
    sites: Sequence[str] | None = None,
    optim: OptimConfig | None = None,
    seed: int = 0,
    device: DeviceName = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Fine-tune every fold of ``package``; write the new package to ``out/model`` and a report.

    Returns ``{"package": Path, "table": DataFrame}`` where the table holds, per fold, the metrics
    on the held-out participants before and after fine-tuning. ``optim`` defaults to
    :class:`OptimConfig` ``()``, the reference AD transfer settings.
    """
    from ..models import load_package, save_package

    if not 0.0 < fraction < 1.0:
        raise UsageError(f"--fraction must be in (0, 1), got {fraction}")
    if freeze not in FREEZE_CHOICES:
        raise UsageError(f"--freeze must be one of {', '.join(FREEZE_CHOICES)}; got {freeze!r}")
    optim = OptimConfig() if optim is None else optim
    pkg = load_package(package)
    rows = collect_cohort(derivatives_dir, participants_tsv)
    if sites:
        rows = rows[rows["site"].isin(list(sites))].reset_index(drop=True)
        if rows.empty:
            raise InputDataError(f"{participants_tsv}: no participant at site(s) {', '.join(sites)}")
    ok, y = task_labels(rows, pkg.task)
    rows, y = rows[ok].reset_index(drop=True), y[ok]
    if len(rows) < 4 or len(set(y.tolist())) < 2:
        raise InputDataError(
            f"{participants_tsv}: fine-tuning needs at least 4 labelled participants of both classes "
            f"for task {pkg.task!r}"
        )
    tune = inner_validation_split(rows["participant_id"].to_numpy(), y, fraction, seed=seed)
    tune_idx, test_idx = np.flatnonzero(tune), np.flatnonzero(~tune)
    val_mask = np.zeros(len(tune_idx), dtype=bool)
    if len(tune_idx) >= 8:
        val_mask = inner_validation_split(rows["participant_id"].to_numpy()[tune_idx], y[tune_idx], 0.25, seed=seed + 1)
    tr_idx, va_idx = tune_idx[~val_mask], tune_idx[val_mask]
    x = load_inputs(rows, progress=progress)
    dev = resolve_device(device)
    out = Path(out)
    states, table = [], []
    for k, base in enumerate(pkg.folds):
        net = copy.deepcopy(base).float()
        before, _ = evaluate(net.to(dev), x[test_idx], None, dev)
        set_trainable(net, frozen_modules(net, freeze))
        res = train_network(net, x[tr_idx], y[tr_idx], x[va_idx], y[va_idx], optim, device=dev, seed=seed + k,
                            checkpoint=out / "checkpoints" / f"fold{k}.pt", progress=progress,
                            desc=f"finetune fold {k}")
        after, _ = evaluate(net, x[test_idx], None, dev)
        states.append(res.best_state)
        mb, ma = binary_metrics(y[test_idx], before), binary_metrics(y[test_idx], after)
        table.append({"fold": k, "n_tune": len(tr_idx), "n_val": len(va_idx), "n_test": len(test_idx),
                      "best_epoch": res.best_epoch,
                      **{f"before_{m}": mb[m] for m in ("accuracy", "balanced_accuracy", "roc_auc")},
                      **{f"after_{m}": ma[m] for m in ("accuracy", "balanced_accuracy", "roc_auc")}})
    tab = pd.DataFrame(table)
    card = copy.deepcopy(pkg.card)
    card.pop("folds", None)
    origin, synthetic = maps_origin(Path(derivatives_dir))
    card["name"] = f"{pkg.name}-finetuned"
    card["training"] = dict(card["training"])
    card["training"]["synthetic"] = bool(card["training"].get("synthetic", False) or synthetic)
    card["training"]["preprocessing"] = sorted(set(card["training"].get("preprocessing", [])) | {origin})
    card["training"]["finetuning"] = {
        "base_package": pkg.name, "base_sha256": pkg.sha256, "fraction": fraction, "freeze": freeze,
        "sites": sorted(set(rows["site"])), "n_tune": int(len(tr_idx)), "n_val": int(len(va_idx)),
        "optimizer": dict(optim.__dict__), "seed": seed,
    }
    card["metrics"] = [
        {"name": f"finetuned_fold_mean_{m}", "value": float(np.nanmean(tab[f"after_{m}"])),
         "source": f"held-out {1 - fraction:.0%} of the target site(s) ({len(test_idx)} participants), mean over folds"}
        for m in ("accuracy", "balanced_accuracy", "roc_auc") if not math.isnan(float(np.nanmean(tab[f"after_{m}"])))
    ]
    dtype = torch.float16 if card.get("weights_dtype") == "float16" else torch.float32
    pkg_out = save_package(out / "model", card, states, dtype=dtype)
    with atomic_path(out / "finetune_report.tsv", suffix=".tsv") as tmp:
        tab.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    return {"package": pkg_out, "table": tab}

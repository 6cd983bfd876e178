"""Fine-tuning a model package to a new site with a fraction of its labelled data.

Why: models lose accuracy on scanners they never saw; the transferable-3D-CNN experiments fine-tuned
on 20% of a target site and compared freezing the low layers (keep generic features, adapt the
decision) with freezing the high layers (adapt the early, scanner-sensitive features). For the
BrainImageNet networks "low" is the stem (shared by the sex and AD networks) and "high" everything
after it. For the other families "low" is the feature extractor (every weighted layer before the
first fully connected layer: the conv blocks with their norms) and "high" the head from that layer
on (for a network without a fully connected layer, as SFCN's 1x1x1 conv classifier, the last
weighted layer). The same command does task transfer: ``--task pmci`` on an AD package of the CNN
family with ``--freeze low`` is that paper's AD -> MCI-conversion transfer (conv blocks frozen, FC
head retrained on sMCI / pMCI); the new task must have as many outputs as the package's heads.

Protocol: the target participants are split once, stratified by label, into a fine-tuning share
(``fraction``; a quarter of it, when large enough, chooses the best epoch) and a held-out rest on
which every fold is scored before and after; the new package keeps the architecture and records
the adaptation in its card.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .._io import atomic_path
from ..errors import InputDataError, ModelPackageError, UsageError
from ..types import FREEZE_CHOICES, DeviceName, FreezeName
from .data import collect_cohort, load_inputs, maps_origin
from .folds import inner_validation_split
from .heads import HeadSet, head_metrics, task_heads
from .loop import OptimConfig, evaluate, resolve_device, set_trainable, train_network

__all__ = ["finetune_package", "frozen_modules"]

_log = logging.getLogger("bids_app.train")


def _feature_and_head(net: torch.nn.Module) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
    """Weighted modules split at the first Linear (registration order = forward order for these nets)."""
    weighted = [m for m in net.modules() if list(m.parameters(recurse=False))]
    if not weighted:
        raise UsageError("--freeze low/high needs a network with trainable layers")
    first_fc = next((i for i, m in enumerate(weighted) if isinstance(m, torch.nn.Linear)), len(weighted) - 1)
    return weighted[:first_fc], weighted[first_fc:]


def frozen_modules(net: torch.nn.Module, freeze: FreezeName) -> list[torch.nn.Module]:
    """Modules to freeze: ``low`` = the stem / feature extractor, ``high`` = every weighted layer after it."""
    if freeze == "none":
        return []
    if freeze not in ("low", "high"):
        raise UsageError(f"--freeze must be one of {', '.join(FREEZE_CHOICES)}; got {freeze!r}")
    stem_names = set(getattr(net, "stem_names", ()))
    if not stem_names:
        features, head = _feature_and_head(net)
        return features if freeze == "low" else head
    stem_mods = list(net.stem.values())  # type: ignore[operator]
    if freeze == "low":
        return stem_mods
    stem_ids = {id(p) for m in stem_mods for p in m.parameters()}
    return [m for m in net.modules() if list(m.parameters(recurse=False))
            and not any(id(p) in stem_ids for p in m.parameters(recurse=False))]


def finetune_package(
    package: Path,
    derivatives_dir: Path,
    participants_tsv: Path,
    out: Path,
    *,
    fraction: float = 0.2,
    freeze: FreezeName = "none",
    sites: Sequence[str] | None = None,
    task: str | None = None,
    optim: OptimConfig | None = None,
    seed: int = 0,
    device: DeviceName = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Fine-tune every fold of ``package``; write the new package to ``out/model`` and a report.

    Returns ``{"package": Path | None, "table": DataFrame, "note": str}`` where the table holds, per
    fold, each head's metrics on the held-out participants before and after fine-tuning. ``task``
    (default: the package's) retargets the heads, e.g. ``pmci`` from an AD package. ``optim``
    defaults to :class:`OptimConfig` ``()``, the reference AD transfer settings.
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
    base_heads = HeadSet.from_card(pkg.card)
    new_task = task or pkg.task
    heads = base_heads if new_task == pkg.task else HeadSet(task_heads(new_task))
    if heads.n_outputs != base_heads.n_outputs:
        raise UsageError(f"--task {new_task} needs {heads.n_outputs} outputs; {package} has {base_heads.n_outputs}")
    y_all = heads.targets(rows)
    ok = heads.usable(y_all)
    rows, y = rows[ok].reset_index(drop=True), y_all[ok]
    strata = heads.stratum(y)
    if len(rows) < 4 or (heads.heads[0].kind != "regression" and len(set(strata[np.isfinite(strata)].tolist())) < 2):
        raise InputDataError(
            f"{participants_tsv}: fine-tuning needs at least 4 labelled participants (of two classes or more) "
            f"for task {new_task!r}"
        )
    tune = inner_validation_split(rows["participant_id"].to_numpy(), strata, fraction, seed=seed)
    tune_idx, test_idx = np.flatnonzero(tune), np.flatnonzero(~tune)
    val_mask = np.zeros(len(tune_idx), dtype=bool)
    if len(tune_idx) >= 8:
        val_mask = inner_validation_split(rows["participant_id"].to_numpy()[tune_idx], strata[tune_idx], 0.25,
                                          seed=seed + 1)
    tr_idx, va_idx = tune_idx[~val_mask], tune_idx[val_mask]
    if heads is not base_heads:
        heads = heads.standardised(y[tr_idx])
    kind = str(pkg.card.get("input", {}).get("kind", "gm_crop2"))
    x = load_inputs(rows, kind=kind, progress=progress)
    dev = resolve_device(device)
    out = Path(out)
    states, table = [], []
    for k, base in enumerate(pkg.folds):
        net = copy.deepcopy(base).float()
        before, _ = evaluate(net.to(dev), x[test_idx], None, dev, heads=heads)
        set_trainable(net, frozen_modules(net, freeze))
        res = train_network(net, x[tr_idx], y[tr_idx], x[va_idx], y[va_idx], optim, device=dev, seed=seed + k,
                            checkpoint=out / "checkpoints" / f"fold{k}.pt", progress=progress,
                            desc=f"finetune fold {k}", heads=heads)
        after, _ = evaluate(net, x[test_idx], None, dev, heads=heads)
        states.append(res.best_state)
        row: dict[str, Any] = {"fold": k, "n_tune": len(tr_idx), "n_val": len(va_idx), "n_test": len(test_idx),
                               "best_epoch": res.best_epoch}
        for when, raw in (("before", before), ("after", after)):
            for j, (h, pred) in enumerate(zip(heads.heads, heads.decode(raw))):
                has = np.isfinite(y[test_idx, j])
                m = head_metrics(h, y[test_idx, j][has], pred[has]) if has.any() else {}
                prefix = when if len(heads) == 1 else f"{when}_{h.name}"
                row.update({f"{prefix}_{name}": v for name, v in m.items()})
        table.append(row)
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
    summary = [c for c in tab.columns if c.startswith("after_")]
    card["metrics"] = [
        {"name": f"finetuned_fold_mean_{c[len('after_'):]}", "value": float(np.nanmean(tab[c])),
         "source": f"held-out {1 - fraction:.0%} of the target site(s) ({len(test_idx)} participants), mean over folds"}
        for c in summary if np.isfinite(tab[c]).any()
    ]
    note = ""
    if new_task != pkg.task or "heads" in card:
        card.setdefault("family", "brainimagenet")
        card.setdefault("input", {})
        card["input"] = {"kind": kind, **{k: v for k, v in card["input"].items() if k != "kind"}}
        for old_key in ("output", "thresholds"):
            card.pop(old_key, None)
        card.update(schema_version=2, task=new_task, heads=heads.card_heads())
        card["name"] = f"{pkg.name}-{new_task}-finetuned".replace("_", "-")
        card["training"]["finetuning"]["task"] = new_task
    dtype = torch.float16 if card.get("weights_dtype") == "float16" else torch.float32
    try:
        pkg_out: Path | None = save_package(out / "model", card, states, dtype=dtype)
    except ModelPackageError as exc:
        if card.get("schema_version") != 2:
            raise
        pkg_out, note = None, f"no package: save_package refused the v2 card ({exc})"
        _log.warning("%s", note)
    with atomic_path(out / "finetune_report.tsv", suffix=".tsv") as tmp:
        tab.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    return {"package": pkg_out, "table": tab, "note": note}

"""Output heads for training: what each task predicts, its targets, its loss, its decoding and metrics.

A network returns one raw output vector per input, (N, K); a task is a list of heads, each reading
a slice ``outputs[start, stop)`` of that vector (the card's ``heads`` section, schema v2):

* ``binary``: one logit; P(positive) = sigmoid; loss binary cross-entropy with logits;
* ``multiclass``: one logit per class; softmax; loss cross-entropy;
* ``regression``: one standardised value; loss mean squared error on the target standardised by the
  training split's mean and SD, recorded in the head as ``offset`` / ``scale``
  (value = raw * scale + offset), so one learning rate suits ages in years and z-scores alike.

Why several heads in one loss: the multi-task SFCN pretraining (Leonardsen et al.) trains age and sex
together with a masked, weighted sum of per-head losses; a participant without a value for one head
still trains the others. Here the task loss is ``sum(weight_h * mean loss of head h over the rows
that have its target)``; the default weights (1 each) and why are in :data:`TASK_HEADS`.

Targets come from the cohort table's columns named by ``head.target`` (``sex``, ``diagnosis``,
``age``, ``mci_progression``); a value outside the head's labels (e.g. MCI for the AD head) is
missing for that head.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score
from torch import nn

from ..errors import UsageError
from ..metrics import binary_metrics

__all__ = [
    "HeadKind",
    "HeadSpec",
    "HeadSet",
    "TASK_HEADS",
    "TRAIN_TASKS",
    "task_heads",
    "head_metrics",
    "main_metric",
    "subsample_ci",
]

HeadKind = Literal["binary", "multiclass", "regression"]
HEAD_KINDS: tuple[HeadKind, ...] = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class HeadSpec:
    """One head of a task. ``labels``: [negative, positive] (binary) or the classes (multiclass)."""

    name: str
    kind: HeadKind
    target: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    weight: float = 1.0
    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise UsageError(f"head {self.name!r}: kind must be one of {', '.join(HEAD_KINDS)}; got {self.kind!r}")
        if self.kind == "binary" and len(self.labels) != 2:
            raise UsageError(f"binary head {self.name!r} needs labels [negative, positive]; got {self.labels}")
        if self.kind == "multiclass" and len(self.labels) < 3:
            raise UsageError(f"multiclass head {self.name!r} needs at least 3 labels; got {self.labels}")
        if self.kind == "regression" and not self.scale > 0:
            raise UsageError(f"regression head {self.name!r}: scale must be > 0; got {self.scale}")

    @property
    def n_outputs(self) -> int:
        return len(self.labels) if self.kind == "multiclass" else 1


_SEX = HeadSpec("sex", "binary", "sex", ("female", "male"))
#: heads of every task the trainer knows. Multi-task weights: 1 for age (MSE of standardised age,
#: about 1 at chance) and 1 for sex (BCE, log 2 = 0.69 at chance), so neither head dominates at the
#: start; Leonardsen et al. weighted their tasks by hand too and masked missing values, as here.
TASK_HEADS: dict[str, tuple[HeadSpec, ...]] = {
    "sex": (_SEX,),
    "ad": (HeadSpec("ad", "binary", "diagnosis", ("CN", "AD")),),
    "cn_mci_ad": (HeadSpec("diagnosis", "multiclass", "diagnosis", ("CN", "MCI", "AD")),),
    "pmci": (HeadSpec("pmci", "binary", "mci_progression", ("sMCI", "pMCI")),),
    "brain_age": (HeadSpec("age", "regression", "age", unit="years"),),
    "multitask": (HeadSpec("age", "regression", "age", unit="years"), _SEX),
}
TRAIN_TASKS: tuple[str, ...] = tuple(TASK_HEADS)


def task_heads(task: str) -> tuple[HeadSpec, ...]:
    """The heads of ``task`` (:data:`TASK_HEADS`); UsageError for an unknown task."""
    if task not in TASK_HEADS:
        raise UsageError(f"--task must be one of {', '.join(TRAIN_TASKS)}; got {task!r}")
    return TASK_HEADS[task]


def _regression_values(column: pd.Series) -> np.ndarray:
    """Numbers of a column; n/a, text and non-finite values become NaN (missing)."""
    out = np.full(len(column), np.nan)
    for i, v in enumerate(column.tolist()):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            continue
    out[~np.isfinite(out)] = np.nan
    return out


class HeadSet:
    """The heads of one network: output slices, target encoding, loss and decoding."""

    def __init__(self, heads: Sequence[HeadSpec]) -> None:
        if not heads:
            raise UsageError("a task needs at least one head")
        names = [h.name for h in heads]
        if len(set(names)) != len(names):
            raise UsageError(f"head names must be unique; got {names}")
        self.heads: tuple[HeadSpec, ...] = tuple(heads)
        self.slices: list[tuple[int, int]] = []
        start = 0
        for h in self.heads:
            self.slices.append((start, start + h.n_outputs))
            start += h.n_outputs
        self.n_outputs = start

    def __len__(self) -> int:
        return len(self.heads)

    # -- targets ------------------------------------------------------------------------------
    def targets(self, rows: pd.DataFrame) -> np.ndarray:
        """(N, n_heads) float targets: 0/1 (binary), class index (multiclass), value (regression); NaN missing."""
        out = np.full((len(rows), len(self.heads)), np.nan)
        for j, h in enumerate(self.heads):
            if h.target not in rows.columns:
                raise UsageError(f"head {h.name!r} needs the column {h.target!r}, which the cohort table lacks")
            if h.kind == "regression":
                out[:, j] = _regression_values(rows[h.target])
            else:
                col = rows[h.target].astype("string").fillna("")
                for i, lab in enumerate(h.labels):
                    out[(col == lab).to_numpy(bool), j] = i
        return out

    def usable(self, y: np.ndarray) -> np.ndarray:
        """Rows with at least one target (a multi-task row trains the heads it has)."""
        return np.isfinite(y).any(axis=1)

    def standardised(self, y_train: np.ndarray) -> HeadSet:
        """Heads whose regression ``offset`` / ``scale`` are the mean / SD of ``y_train`` (the training split)."""
        new = []
        for j, h in enumerate(self.heads):
            if h.kind == "regression":
                v = y_train[:, j][np.isfinite(y_train[:, j])]
                if len(v) == 0:
                    raise UsageError(f"head {h.name!r}: no training participant has a value for {h.target!r}")
                sd = float(v.std()) if len(v) > 1 and v.std() > 0 else 1.0
                h = replace(h, offset=float(v.mean()), scale=sd)
            new.append(h)
        return HeadSet(new)

    def stratum(self, y: np.ndarray, n_bins: int = 4) -> np.ndarray:
        """One stratum per row for balancing folds and splits: the first head's class, or its quantile bin."""
        h, v = self.heads[0], y[:, 0]
        if h.kind != "regression":
            return v
        return quantile_bins(v, n_bins)

    # -- loss and decoding --------------------------------------------------------------------
    def _as_2d(self, outputs: torch.Tensor) -> torch.Tensor:
        if outputs.ndim == 1:  # BrainImageNet networks return (N,) logits
            outputs = outputs[:, None]
        if outputs.shape[1] != self.n_outputs:
            raise UsageError(f"the network returns {outputs.shape[1]} outputs; the heads need {self.n_outputs}")
        return outputs

    def loss(self, outputs: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Weighted sum over heads of the mean per-head loss on rows with that head's target.

        ``reduction="sum"``: the per-head sums instead of means (for averaging over batches).
        """
        outputs = self._as_2d(outputs.float())
        total = outputs.new_zeros(())
        for j, (h, (a, b)) in enumerate(zip(self.heads, self.slices)):
            ok = torch.isfinite(y[:, j])
            if not bool(ok.any()):
                continue
            t, o = y[ok, j], outputs[ok, a:b]
            if h.kind == "binary":
                per = nn.functional.binary_cross_entropy_with_logits(o[:, 0], t, reduction="sum")
            elif h.kind == "multiclass":
                per = nn.functional.cross_entropy(o, t.long(), reduction="sum")
            else:
                per = nn.functional.mse_loss(o[:, 0], (t - h.offset) / h.scale, reduction="sum")
            total = total + h.weight * (per if reduction == "sum" else per / ok.sum())
        return total

    def decode(self, outputs: np.ndarray) -> list[np.ndarray]:
        """Per head: P(positive) (N,), class probabilities (N, C) or values in the head's unit (N,)."""
        o = np.asarray(outputs, dtype=np.float64)
        if o.ndim == 1:
            o = o[:, None]
        out = []
        for h, (a, b) in zip(self.heads, self.slices):
            if h.kind == "binary":
                out.append(1.0 / (1.0 + np.exp(-o[:, a])))
            elif h.kind == "multiclass":
                z = o[:, a:b] - o[:, a:b].max(axis=1, keepdims=True)
                e = np.exp(z)
                out.append(e / e.sum(axis=1, keepdims=True))
            else:
                out.append(o[:, a] * h.scale + h.offset)
        return out

    def card_heads(self) -> list[dict[str, Any]]:
        """The card's ``heads`` section (schema v2)."""
        out: list[dict[str, Any]] = []
        for h, (a, b) in zip(self.heads, self.slices):
            d: dict[str, Any] = {"name": h.name, "kind": h.kind, "target": h.target, "outputs": [a, b]}
            if h.kind == "binary":
                d["labels"] = list(h.labels)
                d["thresholds"] = {"default": 0.5} | ({"screening": 0.3} if h.name == "ad" else {})
            elif h.kind == "multiclass":
                d["labels"] = list(h.labels)
            else:
                d.update(unit=h.unit, scale=h.scale, offset=h.offset)
            if len(self.heads) > 1:
                d["loss_weight"] = h.weight
            out.append(d)
        return out

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> HeadSet:
        """Heads of a v2 card, or the one binary head of a v1 card (``task`` sex / ad)."""
        if "heads" in card:
            return cls([HeadSpec(name=str(h["name"]), kind=h["kind"], target=str(h["target"]),
                                 labels=tuple(h.get("labels", ())), unit=str(h.get("unit", "")),
                                 weight=float(h.get("loss_weight", 1.0)), scale=float(h.get("scale", 1.0)),
                                 offset=float(h.get("offset", 0.0))) for h in card["heads"]])
        return cls(task_heads(str(card["task"])))


def quantile_bins(v: np.ndarray, n_bins: int = 4) -> np.ndarray:
    """Quantile bin (0..n_bins-1) of each finite value, NaN stays NaN: strata for a continuous target."""
    v = np.asarray(v, dtype=float)
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v)
    if ok.sum() == 0:
        return out
    edges = np.quantile(v[ok], np.linspace(0, 1, n_bins + 1)[1:-1])
    out[ok] = np.searchsorted(edges, v[ok], side="right")
    return out


# -- metrics ------------------------------------------------------------------------------------
def _multiclass_metrics(y: np.ndarray, p: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    yi = y.astype(int)
    pred = p.argmax(axis=1)
    with warnings.catch_warnings():  # a subsample may predict a class it does not hold: that is fine here
        warnings.simplefilter("ignore", UserWarning)
        bacc = float(balanced_accuracy_score(yi, pred)) if len(set(yi.tolist())) > 1 else math.nan
    out = {"accuracy": float((pred == yi).mean()), "balanced_accuracy": bacc}
    aucs = []
    for c, lab in enumerate(labels):
        pos = yi == c
        auc = float(roc_auc_score(pos, p[:, c])) if 0 < pos.sum() < len(yi) else math.nan
        out[f"auc_{lab}"] = auc
        aucs.append(auc)
    # macro one-vs-rest AUC over the classes present (the MOX report's summary figure)
    out["macro_auc"] = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else math.nan
    return out


def _regression_metrics(y: np.ndarray, v: np.ndarray) -> dict[str, float]:
    err = v - y
    out = {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean()))}
    if len(y) > 2 and y.std() > 0 and v.std() > 0:
        out["r"] = float(stats.pearsonr(y, v)[0])
        out["r2"] = float(1.0 - (err**2).sum() / ((y - y.mean()) ** 2).sum())
    else:
        out["r"], out["r2"] = math.nan, math.nan
    return out


def head_metrics(head: HeadSpec, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Metrics of one head on rows with a target: binary as the reference system; multiclass
    accuracy, balanced accuracy, per-class and macro one-vs-rest AUC; regression MAE, RMSE, r, R^2."""
    if len(y) == 0:
        return {}
    if head.kind == "binary":
        return binary_metrics(y.astype(int), pred, 0.5)
    if head.kind == "multiclass":
        return _multiclass_metrics(y, pred, head.labels)
    return _regression_metrics(y, pred)


def confusion(head: HeadSpec, y: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    """Confusion matrix (rows true, columns predicted) of a classification head, with label names."""
    labels = list(head.labels)
    yhat = pred.argmax(axis=1) if pred.ndim == 2 else (pred >= 0.5).astype(int)
    m = confusion_matrix(y.astype(int), yhat, labels=list(range(len(labels))))
    return pd.DataFrame(m, index=pd.Index(labels, name="true"), columns=labels)


def main_metric(head: HeadSpec) -> tuple[str, bool]:
    """(metric, higher is better) summarising a head: ROC AUC, macro AUC, or MAE."""
    return {"binary": ("roc_auc", True), "multiclass": ("macro_auc", True), "regression": ("mae", False)}[head.kind]


def subsample_ci(
    fn: Callable[[np.ndarray], dict[str, float]],
    n: int,
    *,
    n_resamples: int = 1000,
    fraction: float = 0.5,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of ``fn(indices)`` over half-size subsamples without replacement.

    The reference paper's interval (Lu et al. 2022, as :func:`bids_app.metrics.subsample_intervals`),
    for any metric function of a subset of rows, so multiclass and regression heads get the same kind
    of interval as binary ones.
    """
    if n == 0:
        return {}
    m = max(1, int(round(fraction * n)))
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(int(n_resamples)):
        for k, v in fn(rng.choice(n, size=m, replace=False)).items():
            values.setdefault(k, []).append(v)
    q = [100.0 * (1.0 - level) / 2.0, 100.0 * (1.0 + level) / 2.0]
    out: dict[str, tuple[float, float]] = {}
    for k, vs in values.items():
        arr = np.asarray(vs, dtype=float)
        arr = arr[np.isfinite(arr)]
        nan = (math.nan, math.nan)
        out[k] = (float(np.percentile(arr, q[0])), float(np.percentile(arr, q[1]))) if arr.size else nan
    return out

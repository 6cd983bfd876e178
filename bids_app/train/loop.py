"""One network, one training run: SGD or Adam (Keras-style decay), best epoch by validation loss, early
stopping, any heads (binary, multi-class, regression, multi-task), resumable.

Why Keras-style decay: the reference system trained with Keras 2.2.4's ``SGD(lr, momentum=0.9,
nesterov=True, decay=d)``, whose learning rate after ``t`` updates is ``lr / (1 + d * t)``; the same
schedule is reproduced with a ``LambdaLR`` stepped per update.

Early stopping (``patience``): the transferable-3D-CNN experiments (CNN-5 family) stopped training
when the validation loss had not improved for 10 epochs; with ``patience = None`` every epoch runs
(the reference system's fixed 10 epochs). The best epoch's weights are kept either way.

Heads: without ``heads`` the network is a BrainImageNet binary classifier ((N,) logits, BCE); with a
:class:`~bids_app.train.heads.HeadSet` the targets are (N, n_heads) and the loss is the heads' masked
weighted sum.

Checkpoints are plain ``torch.save`` dictionaries of tensors, numbers and lists (no objects), read
back with ``torch.load(weights_only=True)``, written atomically after every epoch: a killed run
resumes at the next epoch with the same optimiser state and history.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .._io import atomic_path
from ..errors import InputDataError, UsageError
from ..models.device import resolve_device
from ..types import OPTIMIZER_CHOICES, OptimizerName
from .heads import HeadSet

__all__ = [
    "OptimConfig",
    "TrainResult",
    "train_network",
    "evaluate",
    "resolve_device",
    "set_trainable",
    "recalibrate_batchnorm",
]

_log = logging.getLogger("bids_app.train")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser settings. Defaults: the reference AD transfer (DESIGN s2: SGD lr 3e-4, Nesterov 0.9,
    decay 1e-3, batch 24, 10 epochs); the sex pretraining used lr 0.01 and decay 3e-3."""

    optimizer: OptimizerName = "sgd"
    lr: float = 3e-4
    momentum: float = 0.9
    nesterov: bool = True
    decay: float = 1e-3
    batch_size: int = 24
    epochs: int = 10
    patience: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZER_CHOICES:
            raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZER_CHOICES)}; got {self.optimizer!r}")
        if not self.lr > 0:
            raise UsageError(f"the learning rate must be > 0; got {self.lr}")
        if self.decay < 0:
            raise UsageError(f"the learning-rate decay must be >= 0; got {self.decay}")
        if self.batch_size < 1 or self.epochs < 1:
            raise UsageError(f"--batch-size and --epochs must be >= 1; got {self.batch_size} and {self.epochs}")
        if self.patience is not None and self.patience < 1:
            raise UsageError(f"--patience must be >= 1 epoch; got {self.patience}")


@dataclass
class TrainResult:
    """Best weights (by validation loss) and the per-epoch history."""

    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


def set_trainable(net: nn.Module, frozen: Sequence[nn.Module]) -> None:
    """Freeze the parameters of ``frozen`` modules (and keep their BatchNorm statistics fixed)."""
    for p in net.parameters():
        p.requires_grad_(True)
    for mod in frozen:
        for p in mod.parameters():
            p.requires_grad_(False)


def _frozen_eval(net: nn.Module) -> None:
    """Put modules without trainable parameters into eval mode (frozen BN keeps its statistics)."""
    for mod in net.modules():
        params = list(mod.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params):
            mod.eval()


def recalibrate_batchnorm(net: nn.Module, x: np.ndarray, device: torch.device, batch_size: int) -> None:
    """Replace the BatchNorm running statistics by their average over ``x`` (train-mode batches).

    Why: Keras-style BatchNorm (momentum 0.99) needs hundreds of updates before its moving
    averages describe the data; short runs on small cohorts would be evaluated with statistics
    still near their initial values. A pass over the training data with a cumulative average
    (momentum 1/(t+1) at batch t) gives the population statistics of the current weights.
    BatchNorm layers whose parameters are frozen keep theirs.
    """
    # Any: torch's and the Keras-style BatchNorm both have running_mean, running_var and momentum
    bns: list[Any] = [m for m in net.modules() if hasattr(m, "running_mean") and hasattr(m, "momentum")
                      and any(p.requires_grad for p in m.parameters(recurse=False))]
    if not bns or len(x) == 0:
        return
    saved = [m.momentum for m in bns]
    was_training = net.training
    net.eval()
    for m in bns:
        m.train()
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
    with torch.no_grad():
        for t, idx in enumerate(_batches(len(x), batch_size, None)):
            for m in bns:
                keras_style = isinstance(m.momentum, float) and not isinstance(m, nn.modules.batchnorm._BatchNorm)
                m.momentum = (1.0 - 1.0 / (t + 1)) if keras_style else 1.0 / (t + 1)
            net(_to_device(x, idx, device))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    net.train(was_training)


def _batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _to_device(x: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    xb = torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32)).to(device)
    return xb.contiguous(memory_format=torch.channels_last_3d)


def evaluate(
    net: nn.Module, x: np.ndarray, y: np.ndarray | None, device: torch.device, batch_size: int = 4,
    heads: HeadSet | None = None,
) -> tuple[np.ndarray, float]:
    """Scores of ``net`` on ``x`` and the mean loss against ``y`` (nan without ``y``).

    Without ``heads``: sigmoid scores (N,) and BCE. With ``heads``: the raw outputs (N, K) (decode
    them with :meth:`HeadSet.decode`) and the heads' loss, averaged over rows.
    """
    net.eval()
    scores = np.empty(len(x), dtype=np.float64) if heads is None else np.empty((len(x), heads.n_outputs))
    loss_sum = 0.0
    with torch.inference_mode():
        for idx in _batches(len(x), batch_size, None):
            logits = net(_to_device(x, idx, device)).float()
            if heads is None:
                scores[idx] = torch.sigmoid(logits).cpu().double().numpy()
            else:
                scores[idx] = (logits[:, None] if logits.ndim == 1 else logits).cpu().double().numpy()
            if y is not None:
                yb = torch.as_tensor(y[idx], dtype=torch.float32, device=device)
                if heads is None:
                    loss_sum += float(nn.functional.binary_cross_entropy_with_logits(logits, yb, reduction="sum"))
                else:
                    loss_sum += float(heads.loss(logits, yb)) * len(idx)
    return scores, (loss_sum / len(x) if y is not None and len(x) else math.nan)


def _val_accuracy(scores: np.ndarray, y: np.ndarray, heads: HeadSet | None) -> float:
    """Accuracy of the first classification head on validation rows (nan for regression-only tasks)."""
    if heads is None:
        return float(((scores >= 0.5) == (np.asarray(y) > 0.5)).mean())
    for j, (h, pred) in enumerate(zip(heads.heads, heads.decode(scores))):
        ok = np.isfinite(y[:, j])
        if h.kind == "regression" or not ok.any():
            continue
        yhat = pred.argmax(axis=1) if pred.ndim == 2 else (pred >= 0.5).astype(int)
        return float((yhat[ok] == y[ok, j]).mean())
    return math.nan


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def train_network(
    net: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: OptimConfig,
    *,
    device: torch.device,
    seed: int = 0,
    checkpoint: Path | None = None,
    progress: bool = False,
    desc: str = "train",
    heads: HeadSet | None = None,
) -> TrainResult:
    """Train ``net`` and keep the best epoch by validation loss.

    Without ``heads``: (N,) logits, 0/1 labels ``y``, binary cross-entropy. With ``heads``: (N, K)
    outputs, (N, n_heads) targets (NaN = missing), the heads' loss. Without validation data
    (``len(x_val) == 0``) the last epoch is kept and there is no early stopping. ``checkpoint``:
    where the state is saved after every epoch; if it exists the run resumes from it.
    """
    if len(x_train) == 0:
        raise InputDataError("no training data: the training split holds no participant")
    torch.manual_seed(seed)
    net.to(device).to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    params = [p for p in net.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov
        )
    else:
        opt = torch.optim.Adam(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + config.decay * t))
    history: list[dict[str, float]] = []
    best_state = copy.deepcopy({k: v.detach().cpu() for k, v in net.state_dict().items()})
    best_epoch, best_val = 0, math.inf
    start = 0
    if checkpoint is not None and Path(checkpoint).is_file():
        ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        best_state, best_epoch, best_val = ck["best_state"], int(ck["best_epoch"]), float(ck["best_val"])
        history = [dict(h) for h in ck["history"]]
        start = int(ck["epoch"])
        if "torch_rng" in ck:  # dropout masks continue exactly where the killed run stopped
            torch.set_rng_state(ck["torch_rng"])
        _log.info("%s: resumed from %s after epoch %d", desc, checkpoint, start)
    rng = np.random.default_rng([seed, 7])
    for _ in range(start):  # keep the shuffling sequence identical to an uninterrupted run
        rng.permutation(len(x_train))
    y_train = np.asarray(y_train, dtype=np.float32)

    def loss_of(out: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if heads is None:
            return nn.functional.binary_cross_entropy_with_logits(out.float(), yb)
        return heads.loss(out, yb)

    def patience_spent(epoch: int) -> bool:
        return bool(config.patience is not None and len(x_val) and epoch - best_epoch >= config.patience)

    stopped = patience_spent(start) if start else False
    for epoch in range(start + 1, config.epochs + 1):
        if stopped:
            break
        net.train()
        _frozen_eval(net)
        batches = _batches(len(x_train), config.batch_size, rng)
        it = batches
        if progress:
            from tqdm import tqdm

            it = tqdm(batches, desc=f"{desc} epoch {epoch}/{config.epochs}", unit="batch", leave=False)
        loss_sum = 0.0
        for idx in it:
            xb = _to_device(x_train, idx, device)
            yb = torch.as_tensor(y_train[idx], device=device)
            opt.zero_grad(set_to_none=True)
            loss = loss_of(net(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
        train_loss = loss_sum / len(x_train)
        recalibrate_batchnorm(net, x_train, device, max(config.batch_size, 4))
        if len(x_val):
            scores, val_loss = evaluate(net, x_val, y_val, device, heads=heads)
            val_acc = _val_accuracy(scores, np.asarray(y_val), heads)
        else:
            val_loss, val_acc = math.nan, math.nan
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_acc,
                        "lr": float(opt.param_groups[0]["lr"])})
        better = (not len(x_val)) or val_loss < best_val
        if better:
            best_val = val_loss if len(x_val) else math.nan
            best_epoch = epoch
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        _log.info("%s epoch %d: train loss %.4f, val loss %.4f, val acc %.3f",
                  desc, epoch, train_loss, val_loss, val_acc)
        stopped = patience_spent(epoch)
        if stopped:
            _log.info("%s: no better validation loss for %d epochs; stopped after epoch %d (best %d)",
                      desc, config.patience, epoch, best_epoch)
        if checkpoint is not None:
            _save_checkpoint(
                Path(checkpoint),
                {"epoch": epoch, "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "best_state": best_state,
                 "best_epoch": best_epoch, "best_val": best_val, "history": history,
                 "torch_rng": torch.get_rng_state()},
            )
    net.load_state_dict(best_state)
    return TrainResult(best_state=best_state, best_epoch=best_epoch, best_val_loss=best_val, history=history,
                       stopped_early=stopped)

"""The training loop on a real (small-input) BrainImageNet network: it learns, it resumes, it freezes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bids_app.models import build_network
from bids_app.train import OptimConfig, frozen_modules, train_network
from bids_app.train.loop import set_trainable

SPATIAL = (48, 56, 48)


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 has brighter 'grey matter' in one corner region: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.1, (n, 2, *SPATIAL)).astype(np.float16)
    y = np.arange(n) % 2
    x[y == 1, :, 5:20, 5:20, 5:20] += 1.0
    return x, y


def _net(seed: int = 0):
    torch.manual_seed(seed)
    return build_network("irv2_sex", width=0.0625, blocks=(1, 1, 1), input_spatial=SPATIAL)


def test_learns_and_keeps_the_best_epoch() -> None:
    x, y = _data(8, 0)
    xv, yv = _data(4, 1)
    net = _net()
    res = train_network(net, x, y, xv, yv, OptimConfig(optimizer="adam", lr=3e-3, decay=0, batch_size=4, epochs=3),
                        device=torch.device("cpu"), seed=0)
    losses = [h["val_loss"] for h in res.history]
    assert res.best_epoch == int(np.argmin(losses)) + 1
    assert min(losses) < 0.5  # it learned the brighter region (chance: 0.69)
    assert res.history[0]["lr"] == pytest.approx(3e-3)


def test_keras_decay_schedule() -> None:
    x, y = _data(8, 0)
    net = _net()
    res = train_network(net, x, y, x[:0], y[:0], OptimConfig(lr=0.01, decay=0.5, batch_size=4, epochs=2),
                        device=torch.device("cpu"), seed=0)
    # 2 updates per epoch: lr = 0.01 / (1 + 0.5 * t) after t updates
    assert res.history[0]["lr"] == pytest.approx(0.01 / (1 + 0.5 * 2))
    assert res.history[1]["lr"] == pytest.approx(0.01 / (1 + 0.5 * 4))
    assert res.best_epoch == 2  # without validation data the last epoch is kept


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path: Path) -> None:
    x, y = _data(4, 0)
    xv, yv = _data(2, 1)
    cfg2 = OptimConfig(lr=0.01, batch_size=2, epochs=2)
    straight = train_network(_net(), x, y, xv, yv, cfg2, device=torch.device("cpu"), seed=3)
    ck = tmp_path / "run.pt"
    train_network(_net(), x, y, xv, yv, OptimConfig(lr=0.01, batch_size=2, epochs=1), device=torch.device("cpu"),
                  seed=3, checkpoint=ck)
    saved = torch.load(ck, weights_only=True)  # plain tensors and numbers only
    assert saved["epoch"] == 1
    resumed = train_network(_net(seed=99), x, y, xv, yv, cfg2, device=torch.device("cpu"), seed=3, checkpoint=ck)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    for k, v in straight.best_state.items():
        assert torch.allclose(v.float(), resumed.best_state[k].float(), atol=1e-5), k


@pytest.mark.parametrize("freeze", ["low", "high"])
def test_freezing_low_or_high_layers(freeze: str) -> None:
    x, y = _data(4, 0)
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    set_trainable(net, frozen_modules(net, freeze))
    train_network(net, x, y, x[:0], y[:0], OptimConfig(optimizer="adam", lr=1e-2, decay=0, batch_size=2, epochs=1),
                  device=torch.device("cpu"))
    after = net.state_dict()
    stem_keys = {f"layers.{k}" for k in net.stem.state_dict()}
    stem_changed = any(not torch.equal(before[k], after[k]) for k in stem_keys)
    rest_changed = any(not torch.equal(before[k], after[k])
                       for k in after if k not in stem_keys and after[k].is_floating_point())
    assert stem_changed == (freeze == "high")
    assert rest_changed == (freeze == "low")

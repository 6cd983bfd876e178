"""Occlusion maps: the score drop when a cube of the input is set to a baseline value, exact and fast.

Definition (BrainImageNet, Lu et al. 2022: an 18 mm cube slid in 9 mm steps, i.e. 12 voxels in
steps of 6 on the 1.5 mm grid). For every window position ``p`` the input's voxels inside the cube
(clipped at the volume border) are set to ``baseline`` in every channel, the network is run, and the
drop ``d_p = score(x) - score(x with cube p occluded)`` is recorded (score = sigmoid of the logit;
positive = the cube supported the positive class, AD or male). The map gives each voxel the mean of
``d_p`` over all window positions whose cube covers it.

Window positions start at 0 and advance by ``step`` until a cube reaches the last voxel of the axis;
the last cube of an axis may be clipped at the border (86 voxels, cube 12, step 6: starts 0 ... 78).

Why it is fast and still exact. A naive map costs one full forward pass per position (about 4,000
per network). An occluded cube changes only the activations inside its receptive field, so
:class:`OcclusionEngine` runs the unoccluded input once, keeps the activations, and for each batch
of positions propagates, node by node of the :class:`~bids_app.models.graph.GraphNet`, the
*change* the occlusion makes (occluded minus unoccluded value) on the region it can reach:

* at the input the change is ``baseline - x`` inside the cube and exactly 0 elsewhere;
* a convolution is linear, so its change is the convolution (without bias) of its input's change.
  The change is held on a box per position (the affected region, one size per batch) and
  convolved zero-padded by the kernel's reach: the convolution gives every output the change
  touches, and oneDNN skips the padded taps, so the work is proportional to the *input* region
  (1.4-2x less than recomputing the output region from assembled activations; measured on these
  crops). A stride > 1 puts the box start on the stride's phase (a zero margin of < stride voxels).
  The affected output region follows from the input region, kernel, stride, dilation and
  TensorFlow ``same`` / ``valid`` padding;
* a concatenation keeps its inputs as parts with their own regions, and a convolution reading it
  convolves each part with its slice of the weight (a branch with a small region stays small);
  pooling and element-wise layers work part by part;
* non-linear layers use the kept activations: an activation's change is ``f(a + d) - f(a)``, a
  convolution's activation the same on its kept pre-activation, max pooling pools the unoccluded
  input plus the change and subtracts the unoccluded output; average pooling and BatchNorm (in
  eval mode) are linear (``valid`` pooling of the change; ``same`` pooling on the whole extent);
  add / residual sum the changes on the union of the regions;
* global average pooling is a sum, so ``gap = cached_gap + sum(change) / n``, and everything after
  it (dense layers) is recomputed for the batch;
* outside a box the change is exactly 0 (convolutions of zeros, ``f(a + 0) - f(a)``), so the
  boxes can be cut back to the true affected regions; an axis whose box would cover most of the
  volume (``full_fraction``) takes the whole axis.

Window positions are restricted to those whose cube touches a mask (the brain mask: the model
input is zero outside it). For a baseline equal to the input there (0 for the masked model input),
an occlusion outside the mask does not change the input, its drop is exactly 0, and skipping it
changes nothing; such positions still count in each voxel's number of covering windows.

The result equals the naive definition (:func:`occlusion_naive`) up to float rounding, the same
arithmetic in another order (tests: 1e-4 in score on full-size networks with the output layer's
gain raised 3000x, where the naive passes through the eager and the fused executor differ by
3.5e-5; the engine is within 3.5e-5 of both).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from ..models.fast import fold_batchnorm
from ..models.graph import ACTIVATIONS, GraphNet, KerasBatchNorm3d, Node, _same_pads, _triple

__all__ = [
    "OcclusionEngine",
    "OcclusionParams",
    "OcclusionResult",
    "drops_to_map",
    "occlusion_fast",
    "occlusion_naive",
    "window_positions",
    "window_starts",
]

_ELEMENTWISE = ("batchnorm", "activation", "dropout")
_WINDOWED = ("conv3d", "maxpool3d", "avgpool3d")
_MERGE = ("concat", "add", "residual")
_LOCAL = (*_ELEMENTWISE, *_WINDOWED, *_MERGE)


@dataclass(frozen=True)
class OcclusionParams:
    """Occlusion settings in voxels of the model grid (1.5 mm): cube edge, step, baseline value.

    ``batch_size`` is how many window positions one recomputation batch holds (memory vs speed);
    ``full_fraction``: an axis whose recomputed region would exceed this fraction of the axis is
    recomputed whole (fewer, larger operations; the result is the same).
    """

    cube: int = 12
    step: int = 6
    baseline: float = 0.0
    batch_size: int = 16
    full_fraction: float = 0.7

    def __post_init__(self) -> None:
        for name in ("cube", "step", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"occlusion {name} must be a positive whole number of voxels; got {v!r}")
        if not math.isfinite(float(self.baseline)):
            raise ValueError(f"occlusion baseline must be a finite number; got {self.baseline!r}")
        if not 0.0 < float(self.full_fraction) <= 1.0:
            raise ValueError(f"full_fraction must be in (0, 1]; got {self.full_fraction!r}")


def window_starts(size: int, cube: int, step: int) -> np.ndarray:
    """Start indices of the windows along one axis of ``size`` voxels (the last may be clipped)."""
    if size < 1 or cube < 1 or step < 1:
        raise ValueError(f"size, cube and step must be >= 1; got {size}, {cube}, {step}")
    # a start is kept while the previous cube ended before the last voxel (and it lies in the volume)
    return np.asarray([s for s in range(0, size, step) if s == 0 or s - step + cube < size], dtype=np.int64)


def window_positions(
    shape: Sequence[int], cube: int, step: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All window starts on the grid, and the subset whose cube touches ``mask``.

    Returns ``(grid_starts, kept)``: ``grid_starts`` is P x 3 (every position, in C order over the
    three axes); ``kept`` is a boolean vector of length P (all True without a mask).
    """
    axes = [window_starts(int(s), cube, step) for s in shape]
    grid_starts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    if mask is None:
        return grid_starts, np.ones(len(grid_starts), dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(int(s) for s in shape):
        raise ValueError(f"the mask has shape {mask.shape}, the input {tuple(shape)}")
    # cube-sum of the mask via a summed-area table: a window is kept when it holds a mask voxel
    sat = np.zeros(tuple(s + 1 for s in mask.shape), dtype=np.int64)
    sat[1:, 1:, 1:] = mask.cumsum(0).cumsum(1).cumsum(2)
    lo = grid_starts
    hi = np.minimum(grid_starts + cube, np.asarray(mask.shape))
    total = np.zeros(len(lo), dtype=np.int64)
    for corner in range(8):
        bits = [(corner >> a) & 1 for a in range(3)]
        idx = tuple(np.where(bits[a], hi[:, a], lo[:, a]) for a in range(3))
        sign = (-1) ** (3 - sum(bits))
        total += sign * sat[idx]
    return grid_starts, total > 0


def drops_to_map(shape: Sequence[int], starts: np.ndarray, drops: np.ndarray, cube: int) -> np.ndarray:
    """Voxel map: the mean of the drops of every window covering the voxel (windows clipped at borders).

    ``starts`` (P x 3) must be *every* window of the grid (skipped positions with drop 0), so the
    number of covering windows is the naive definition's.
    """
    shape = tuple(int(s) for s in shape)
    total = np.zeros(shape, dtype=np.float64)
    count = np.zeros(shape, dtype=np.float64)
    for (i, j, k), d in zip(starts, drops):
        sl = (slice(i, i + cube), slice(j, j + cube), slice(k, k + cube))
        total[sl] += d
        count[sl] += 1.0
    out = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return out.astype(np.float32)


def _occlude(x: torch.Tensor, starts: np.ndarray, cube: int, baseline: float) -> torch.Tensor:
    """A batch of copies of ``x`` (1 x C x D x H x W), each with its window set to ``baseline``."""
    out = x.repeat(len(starts), 1, 1, 1, 1)
    for b, (i, j, k) in enumerate(starts):
        out[b, :, i : i + cube, j : j + cube, k : k + cube] = baseline
    return out


def occlusion_naive(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: np.ndarray | torch.Tensor,
    starts: np.ndarray,
    *,
    cube: int = 12,
    baseline: float = 0.0,
    batch_size: int = 1,
) -> tuple[float, np.ndarray]:
    """The definition: one full forward pass per window position.

    ``forward`` maps N x C x D x H x W to logits (N,) (a GraphNet, a folded or oneDNN executor).
    Returns the unoccluded score and the P scores of the occluded inputs (float64).
    """
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else x).float()
    if xt.dim() == 4:
        xt = xt[None]
    scores = np.empty(len(starts), dtype=np.float64)
    with torch.inference_mode():
        base = float(torch.sigmoid(forward(xt).float())[0])
        for s in range(0, len(starts), batch_size):
            chunk = starts[s : s + batch_size]
            logits = forward(_occlude(xt, chunk, cube, baseline))
            scores[s : s + len(chunk)] = torch.sigmoid(logits.float()).double().cpu().numpy()
    return base, scores


# -------------------------------------------------------------------------------------------------
# The receptive-field-limited engine: it propagates the change an occlusion makes
# -------------------------------------------------------------------------------------------------


@dataclass
class _Delta:
    """The change (occluded minus unoccluded) of channels [c0, c1) of one spatial node, for a batch.

    ``t`` (B x (c1 - c0) x size) holds the change on the box [start, start + size) of each position
    (``start``: B x 3, the box inside the node's extent). The change is exactly 0 outside the box
    and outside the true affected region [lo, hi) (B x 3, inside the box; empty when lo == hi).
    """

    t: torch.Tensor
    start: np.ndarray
    size: np.ndarray  # (3,)
    lo: np.ndarray
    hi: np.ndarray
    c0: int
    c1: int


@dataclass(frozen=True)
class _Window:
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    dilation: tuple[int, int, int]
    pad_before: tuple[int, int, int]
    pad_value: float


def _slices(a: np.ndarray, z: np.ndarray) -> tuple[slice, slice, slice]:
    return (slice(int(a[0]), int(z[0])), slice(int(a[1]), int(z[1])), slice(int(a[2]), int(z[2])))


_ALL = slice(None)


def _ix(lead: tuple[Any, ...], a: np.ndarray, z: np.ndarray) -> tuple[Any, ...]:
    """Index ``lead`` followed by the box [a, z) on the three spatial axes."""
    return lead + _slices(a, z)


def _place(dst: torch.Tensor, dst_start: np.ndarray, src: torch.Tensor, src_start: np.ndarray, add: bool) -> None:
    """``dst[b] (+)= src[b]`` where the boxes of position ``b`` overlap (B x C x box each, boxes at the starts)."""
    dsize = np.asarray(dst.shape[2:])
    ssize = np.asarray(src.shape[2:])
    a = np.maximum(dst_start, src_start)
    z = np.minimum(dst_start + dsize, src_start + ssize)
    ok = np.all(z > a, axis=1)
    if not ok.any():
        return
    od, os_, ext = a - dst_start, a - src_start, z - a
    if ok.all() and (od == od[0]).all() and (os_ == os_[0]).all() and (ext == ext[0]).all():
        d = dst[_ix((_ALL, _ALL), od[0], od[0] + ext[0])]
        s = src[_ix((_ALL, _ALL), os_[0], os_[0] + ext[0])]
        d.add_(s) if add else d.copy_(s)
        return
    # Per position through numpy on the CPU: single-threaded, no OpenMP barrier per small copy
    # (two torch threads on a busy machine made each small copy 50x slower).
    cpu = dst.device.type == "cpu"
    dn: Any = dst.numpy() if cpu else dst
    sn: Any = src.numpy() if cpu else src
    for b in np.flatnonzero(ok):
        d = dn[_ix((b, _ALL), od[b], od[b] + ext[b])]
        s = sn[_ix((b, _ALL), os_[b], os_[b] + ext[b])]
        if add:
            d += s
        else:
            d[...] = s


class OcclusionEngine:
    """Occlusion of one network by receptive-field-limited recomputation (see the module docstring).

    Parameters
    ----------
    net : GraphNet
        Any BrainImageNet-style graph (sex network, both AD variants, imported graphs). BatchNorm
        layers are folded into their convolutions first (exact algebra; fewer passes).
    params : OcclusionParams
    device : torch.device or str
    """

    def __init__(
        self, net: GraphNet, params: OcclusionParams = OcclusionParams(), device: str | torch.device = "cpu"
    ) -> None:
        if not isinstance(net, GraphNet):
            raise TypeError(f"occlusion needs a GraphNet (a layer graph), got {type(net).__name__}")
        self.device = torch.device(device)
        net = net.to(self.device).eval()
        if any(n.op == "batchnorm" for n in net.nodes):
            net = fold_batchnorm(net)
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.params = params
        self.nodes: list[Node] = list(self.net.nodes)
        self.index = {n.name: i for i, n in enumerate(self.nodes)}
        self.logit = self.net.logit_node
        self.order = [n for n in self.nodes[: self.index[self.logit] + 1]]
        self.shapes = self.net.shapes
        self.windows: dict[str, _Window] = {}
        for n in self.order:
            if n.op in _WINDOWED:
                self.windows[n.name] = self._window(n)
        # The unoccluded values the difference rules read (everything else is never kept):
        # the input; the pre-activation output of a convolution with a non-linear activation; the
        # input of an activation; input and output of a max pooling; global average pools; a
        # spatial node read by a layer without a local rule (e.g. Flatten).
        need = {self.order[0].name}
        for n in self.order[1:]:
            spatial_in = [s for s in n.inputs if self._spatial(s)]
            if n.op == "conv3d" and self._act(n) != "linear":
                need.add(f"{n.name}:pre")
            elif n.op == "activation":
                need.add(n.inputs[0])
            elif n.op == "maxpool3d":
                need.update((n.inputs[0], n.name))
            elif n.op == "gap3d":
                need.add(n.name)
            elif spatial_in and not (self._spatial(n.name) and n.op in _LOCAL):
                need.update(spatial_in)
        self.need = need
        self.last_use: dict[str, int] = {}
        for i, n in enumerate(self.order):
            for s in n.inputs:
                self.last_use[s] = i
        self._cache: dict[str, torch.Tensor] = {}
        self._weights: dict[tuple[str, int, int], torch.Tensor] = {}
        self._base_logit: float | None = None

    # ------------------------------------------------------------------ structure
    def _window(self, n: Node) -> _Window:
        c = n.config
        k = _triple(c["kernel_size"] if n.op == "conv3d" else c["pool_size"], "kernel")
        s = _triple(c["strides"], "strides")
        d = _triple(c.get("dilation_rate", 1), "dilation") if n.op == "conv3d" else (1, 1, 1)
        in_sp = self.shapes[n.inputs[0]][1:]
        if c["padding"] == "same":
            pb = tuple(_same_pads(int(in_sp[a]), k[a], s[a], d[a])[0] for a in range(3))
        else:
            pb = (0, 0, 0)
        value = float("-inf") if n.op == "maxpool3d" else 0.0
        return _Window(k, s, d, pb, value)  # type: ignore[arg-type]

    def _act(self, n: Node) -> str:
        return "linear" if n.name == self.logit else str(n.config.get("activation", "linear"))

    def _spatial(self, name: str) -> bool:
        return len(self.shapes[name]) == 4

    def _full(self, name: str) -> np.ndarray:
        return np.asarray(self.shapes[name][1:], dtype=np.int64)

    # ------------------------------------------------------------------ unoccluded pass
    def set_input(self, x: np.ndarray | torch.Tensor) -> float:
        """Run the unoccluded input once and keep the activations later batches read; returns the score."""
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else x).float()
        if xt.dim() == 4:
            xt = xt[None]
        if tuple(xt.shape) != (1, *self.net.input_shape):
            raise ValueError(
                f"occlusion input must be 1 x {' x '.join(map(str, self.net.input_shape))}, got {tuple(xt.shape)}"
            )
        xt = xt.to(self.device).contiguous()
        cache: dict[str, torch.Tensor] = {self.order[0].name: xt}
        live: dict[str, torch.Tensor] = {self.order[0].name: xt}
        with torch.inference_mode():
            for i, n in enumerate(self.order[1:], start=1):
                xs = [live[s] for s in n.inputs]
                if n.op == "conv3d" and f"{n.name}:pre" in self.need:
                    pre = self.net.layers[n.name](xs[0])
                    cache[f"{n.name}:pre"] = pre
                    out = ACTIVATIONS[self._act(n)](pre)
                else:
                    out = self.net.run_node(n, xs, final=(n.name == self.logit))
                live[n.name] = out
                if n.name in self.need:
                    cache[n.name] = out
                for s in n.inputs:
                    if self.last_use.get(s) == i:
                        live.pop(s)
            logit = live[self.logit].reshape(-1)
        self._cache = cache
        self._base_logit = float(logit[0])
        return float(torch.sigmoid(logit.float())[0])

    # ------------------------------------------------------------------ regions
    def _fit(self, name: str, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One box size for the batch (>= every affected extent) and per-position starts inside the node."""
        full = self._full(name)
        size = np.maximum((hi - lo).max(axis=0), 1)
        size = np.where(size > self.params.full_fraction * full, full, size)
        start = np.clip(lo, 0, full - size)
        return start.astype(np.int64), size.astype(np.int64)

    def _window_region(
        self, w: _Window, lo: np.ndarray, hi: np.ndarray, out_full: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        k = np.asarray(w.kernel)
        s = np.asarray(w.stride)
        d = np.asarray(w.dilation)
        pb = np.asarray(w.pad_before)
        reach = (k - 1) * d
        o_lo = -((-(lo + pb - reach)) // s)  # ceil
        o_hi = (hi - 1 + pb) // s + 1
        o_lo = np.clip(o_lo, 0, out_full)
        o_hi = np.clip(o_hi, 0, out_full)
        empty = (o_hi <= o_lo) | (hi <= lo)
        o_hi = np.where(empty, o_lo, o_hi)
        return o_lo, o_hi

    # ------------------------------------------------------------------ cached values
    def _gather(self, key: str, c0: int, c1: int, start: np.ndarray, size: np.ndarray, fill: float) -> torch.Tensor:
        """Unoccluded values of channels [c0, c1) of ``key`` on each position's box (``fill`` outside the node)."""
        cached_t = self._cache[key][0, c0:c1]
        full = np.asarray(cached_t.shape[1:])
        B = len(start)
        out_t = torch.empty((B, c1 - c0, *[int(v) for v in size]), dtype=cached_t.dtype, device=cached_t.device)
        if np.any(start < 0) or np.any(start + size > full):
            out_t.fill_(fill)
        cpu = cached_t.device.type == "cpu"
        cached: Any = cached_t.numpy() if cpu else cached_t
        out: Any = out_t.numpy() if cpu else out_t
        a = np.maximum(start, 0)
        z = np.minimum(start + size, full)
        for b in range(B):
            if np.any(z[b] <= a[b]):
                continue
            out[_ix((b, _ALL), a[b] - start[b], z[b] - start[b])] = cached[_ix((_ALL,), a[b], z[b])]
        return out_t

    def _weight(self, name: str, c0: int, c1: int) -> torch.Tensor:
        key = (name, c0, c1)
        if key not in self._weights:
            conv = cast(torch.nn.Conv3d, self.net.layers[name])
            self._weights[key] = conv.weight[:, c0:c1].contiguous()
        return self._weights[key]

    # ------------------------------------------------------------------ difference rules
    def _conv(self, n: Node, parts: list[_Delta]) -> _Delta:
        """A convolution is linear: its change is the convolution (no bias) of the input's change.

        Each part of a concatenated input is convolved with its slice of the weight on its own box
        (parts with smaller regions cost less). The box is zero-padded by the kernel's reach, so
        the convolution sees only the nonzero change (oneDNN skips padded taps) and gives every
        output it touches; a stride > 1 needs the box start on the stride's phase (a zero margin
        of up to stride - 1 voxels).
        """
        w = self.windows[n.name]
        out_full = self._full(n.name)
        s = np.asarray(w.stride)
        pb = np.asarray(w.pad_before)
        reach = (np.asarray(w.kernel) - 1) * np.asarray(w.dilation)
        contribs: list[tuple[torch.Tensor, np.ndarray]] = []
        los, his = [], []
        for p in parts:
            phase = (p.start + pb - reach) % s
            t, a = p.t, p.start - phase
            if phase.any():
                t = torch.zeros(
                    (len(a), p.t.shape[1], *[int(v) for v in p.size + phase.max(axis=0)]),
                    dtype=p.t.dtype,
                    device=p.t.device,
                )
                _place(t, a, p.t, p.start, add=False)
            y = F.conv3d(
                t,
                self._weight(n.name, p.c0, p.c1),
                None,
                stride=w.stride,
                padding=(int(reach[0]), int(reach[1]), int(reach[2])),
                dilation=w.dilation,
            )
            contribs.append((y, (a - reach + pb) // s))
            lo, hi = self._window_region(w, p.lo, p.hi, out_full)
            los.append(lo)
            his.append(hi)
        lo, hi = np.minimum.reduce(los), np.maximum.reduce(his)
        start, size = self._fit(n.name, lo, hi)
        y0, o0 = contribs[0]
        if len(contribs) == 1 and np.array_equal(o0, start) and tuple(y0.shape[2:]) == tuple(size):
            acc = y0
        else:
            acc = torch.zeros((len(lo), y0.shape[1], *[int(v) for v in size]), dtype=y0.dtype, device=y0.device)
            for y, o in contribs:
                _place(acc, start, y, o, add=True)
        act = self._act(n)
        if act != "linear":
            pre = self._gather(f"{n.name}:pre", 0, int(acc.shape[1]), start, size, 0.0)
            f = ACTIVATIONS[act]
            acc = f(pre + acc).sub_(f(pre))
        return _Delta(acc, start, size, lo, hi, 0, int(acc.shape[1]))

    def _pool(self, n: Node, p: _Delta) -> _Delta:
        """Pooling, channel by channel: max pooling from the unoccluded input plus the change, minus
        the unoccluded output; average pooling (``valid``) of the change alone (it is linear)."""
        w = self.windows[n.name]
        out_full = self._full(n.name)
        lo, hi = self._window_region(w, p.lo, p.hi, out_full)
        start, size = self._fit(n.name, lo, hi)
        s = np.asarray(w.stride)
        r0 = start * s - np.asarray(w.pad_before)
        rsize = (size - 1) * s + np.asarray(w.kernel)
        if n.op == "maxpool3d":
            x = self._gather(n.inputs[0], p.c0, p.c1, r0, rsize, w.pad_value)
            _place(x, r0, p.t, p.start, add=True)
            y = F.max_pool3d(x, w.kernel, w.stride)
            y -= self._gather(n.name, p.c0, p.c1, start, size, 0.0)
        else:
            x = torch.zeros((len(r0), p.t.shape[1], *[int(v) for v in rsize]), dtype=p.t.dtype, device=p.t.device)
            _place(x, r0, p.t, p.start, add=False)
            y = F.avg_pool3d(x, w.kernel, w.stride)
        return _Delta(y, start, size, lo, hi, p.c0, p.c1)

    def _whole(self, name: str, parts: list[_Delta]) -> torch.Tensor:
        """The change of node ``name`` on its whole extent (B x C x D x H x W)."""
        full = self._full(name)
        B = len(parts[0].start)
        t = self._cache_like(name, B)
        zero = np.zeros((B, 3), dtype=np.int64)
        for p in parts:
            _place(t[:, p.c0 : p.c1], zero, p.t, p.start, add=False)
        assert tuple(t.shape[2:]) == tuple(full)
        return t

    def _cache_like(self, name: str, B: int) -> torch.Tensor:
        shape = self.shapes[name]
        dev = self._cache[self.order[0].name].device
        return torch.zeros((B, *shape), dtype=torch.float32, device=dev)

    def _single(self, name: str, parts: list[_Delta]) -> _Delta:
        """The parts of a concatenation as one change over all channels (union of the regions)."""
        C = self.shapes[name][0]
        if len(parts) == 1 and parts[0].c0 == 0 and parts[0].c1 == C:
            return parts[0]
        lo = np.minimum.reduce([p.lo for p in parts])
        hi = np.maximum.reduce([p.hi for p in parts])
        start, size = self._fit(name, lo, hi)
        t = torch.zeros((len(lo), C, *[int(v) for v in size]), dtype=parts[0].t.dtype, device=parts[0].t.device)
        for p in parts:
            _place(t[:, p.c0 : p.c1], start, p.t, p.start, add=False)
        return _Delta(t, start, size, lo, hi, 0, C)

    def _local(self, n: Node, ins: list[list[_Delta]]) -> list[_Delta]:
        """The change of a spatial node from its inputs' changes (one rule per layer kind)."""
        if n.op == "conv3d":
            return [self._conv(n, ins[0])]
        if n.op == "maxpool3d" or (n.op == "avgpool3d" and n.config["padding"] == "valid"):
            return [self._pool(n, p) for p in ins[0]]
        if n.op == "avgpool3d":
            # same-padded average pooling (TensorFlow divides by the real voxels) is linear too:
            # pool the change on the whole extent
            full = self._full(n.name)
            B = len(ins[0][0].start)
            y = self.net.run_node(n, [self._whole(n.inputs[0], ins[0])], final=False)
            zero = np.zeros((B, 3), dtype=np.int64)
            lo = np.minimum.reduce([self._window_region(self.windows[n.name], p.lo, p.hi, full)[0] for p in ins[0]])
            hi = np.maximum.reduce([self._window_region(self.windows[n.name], p.lo, p.hi, full)[1] for p in ins[0]])
            return [_Delta(y, zero, full.copy(), lo, hi, 0, int(y.shape[1]))]
        if n.op == "dropout":  # identity at inference
            return ins[0]
        if n.op == "batchnorm":  # affine: the change is scaled, the shift cancels
            bn = cast(KerasBatchNorm3d, self.net.layers[n.name])
            out = []
            for p in ins[0]:
                scale = torch.rsqrt(bn.running_var[p.c0 : p.c1] + bn.epsilon)
                if bn.weight is not None:
                    scale = scale * bn.weight[p.c0 : p.c1]
                out.append(_Delta(p.t * scale.view(1, -1, 1, 1, 1), p.start, p.size, p.lo, p.hi, p.c0, p.c1))
            return out
        if n.op == "activation":
            f = ACTIVATIONS[n.config["activation"]]
            out = []
            for p in ins[0]:
                x = self._gather(n.inputs[0], p.c0, p.c1, p.start, p.size, 0.0)
                out.append(_Delta(f(x + p.t).sub_(f(x)), p.start, p.size, p.lo, p.hi, p.c0, p.c1))
            return out
        if n.op == "concat":
            out, offset = [], 0
            for src, parts in zip(n.inputs, ins):
                out.extend(_Delta(p.t, p.start, p.size, p.lo, p.hi, p.c0 + offset, p.c1 + offset) for p in parts)
                offset += self.shapes[src][0]
            return out
        if n.op in ("add", "residual"):
            ds = [self._single(s, parts) for s, parts in zip(n.inputs, ins)]
            lo = np.minimum.reduce([d.lo for d in ds])
            hi = np.maximum.reduce([d.hi for d in ds])
            start, size = self._fit(n.name, lo, hi)
            acc = torch.zeros(
                (len(lo), ds[0].t.shape[1], *[int(v) for v in size]), dtype=ds[0].t.dtype, device=ds[0].t.device
            )
            for i, d in enumerate(ds):
                t = d.t * float(n.config["scale"]) if (n.op == "residual" and i == 1) else d.t
                _place(acc, start, t, d.start, add=True)
            return [_Delta(acc, start, size, lo, hi, 0, int(acc.shape[1]))]
        raise ValueError(f"layer {n.name!r}: no local rule for {n.op!r}")  # pragma: no cover

    def _gap(self, n: Node, parts: list[_Delta]) -> torch.Tensor:
        """Global average pooling is a sum: the unoccluded mean plus the change's sum over the volume."""
        count = float(np.prod(self._full(n.inputs[0])))
        B = len(parts[0].start)
        base = self._cache[n.name]
        change = torch.zeros((B, base.shape[1]), dtype=torch.float64, device=base.device)
        for p in parts:
            change[:, p.c0 : p.c1] = p.t.double().sum(dim=(2, 3, 4))
        return (base.double() + change / count).to(base.dtype)

    # ------------------------------------------------------------------ one batch
    def occluded_logits(self, starts: np.ndarray) -> np.ndarray:
        """Logits of the occluded inputs for window ``starts`` (B x 3), one batch."""
        if self._base_logit is None:
            raise RuntimeError("call set_input(x) first")
        starts = np.asarray(starts, dtype=np.int64).reshape(-1, 3)
        cube, baseline = self.params.cube, float(self.params.baseline)
        in_name = self.order[0].name
        full = self._full(in_name)
        lo = starts
        hi = np.minimum(starts + cube, full)
        start, size = self._fit(in_name, lo, hi)
        x = self._cache[in_name]
        B = len(starts)
        t = torch.zeros((B, x.shape[1], *[int(v) for v in size]), dtype=x.dtype, device=x.device)
        for b in range(B):
            o0, o1 = lo[b] - start[b], hi[b] - start[b]
            t[_ix((b, _ALL), o0, o1)] = baseline - x[_ix((0, _ALL), lo[b], hi[b])]
        live: dict[str, list[_Delta] | torch.Tensor] = {
            in_name: [_Delta(t, start, size, lo.copy(), hi.copy(), 0, int(x.shape[1]))]
        }
        with torch.inference_mode():
            for i, n in enumerate(self.order[1:], start=1):
                ins = [live[s] for s in n.inputs]
                out: list[_Delta] | torch.Tensor
                if self._spatial(n.name) and n.op in _LOCAL and all(isinstance(v, list) for v in ins):
                    out = self._local(n, ins)  # type: ignore[arg-type]
                elif n.op == "gap3d" and isinstance(ins[0], list):
                    out = self._gap(n, ins[0])
                else:
                    xs = []
                    for s, v in zip(n.inputs, ins):
                        if isinstance(v, list):  # e.g. Flatten of a spatial map: the whole occluded value
                            v = self._whole(s, v).add_(self._cache[s])
                        xs.append(v)
                    out = self.net.run_node(n, xs, final=(n.name == self.logit))
                live[n.name] = out
                for s in n.inputs:
                    if self.last_use.get(s) == i:
                        live.pop(s, None)
            res = live[self.logit]
            assert isinstance(res, torch.Tensor)
            return res.reshape(-1).double().cpu().numpy()

    def scores(self, starts: np.ndarray, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Sigmoid scores of the occluded inputs for every start (P x 3), in batches."""
        starts = np.asarray(starts, dtype=np.int64).reshape(-1, 3)
        out = np.empty(len(starts), dtype=np.float64)
        bs = self.params.batch_size
        for s in range(0, len(starts), bs):
            logits = self.occluded_logits(starts[s : s + bs])
            out[s : s + len(logits)] = 1.0 / (1.0 + np.exp(-logits))
            if progress is not None:
                progress(min(s + bs, len(starts)), len(starts))
        return out


@dataclass(frozen=True)
class OcclusionResult:
    """An occlusion map on the model input grid plus what it was made from."""

    map: np.ndarray  # D x H x W float32 (model input grid), mean score drop of the covering windows
    base_score: float
    starts: np.ndarray  # every window start of the grid (P x 3)
    evaluated: np.ndarray  # boolean (P,), positions actually run (the rest touch no mask voxel)
    drops: np.ndarray  # (P,) score drops (0 for skipped positions)
    params: OcclusionParams


def occlusion_fast(
    net: GraphNet,
    x: np.ndarray,
    params: OcclusionParams = OcclusionParams(),
    *,
    mask: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> OcclusionResult:
    """Occlusion map of one network for one input ``x`` (C x D x H x W) by :class:`OcclusionEngine`.

    ``mask`` (D x H x W bool): only windows touching it are run; the others get drop 0 (exact when
    the input equals ``params.baseline`` outside the mask, as the masked model input does for 0).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 5:
        x = x[0]
    engine = OcclusionEngine(net, params, device)
    base = engine.set_input(x)
    starts, kept = window_positions(x.shape[1:], params.cube, params.step, mask)
    drops = np.zeros(len(starts), dtype=np.float64)
    if kept.any():
        drops[kept] = base - engine.scores(starts[kept], progress=progress)
    return OcclusionResult(
        map=drops_to_map(x.shape[1:], starts, drops, params.cube),
        base_score=base,
        starts=starts,
        evaluated=kept,
        drops=drops,
        params=params,
    )

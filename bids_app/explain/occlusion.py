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
of positions recomputes, node by node of the :class:`~bids_app.models.graph.GraphNet`, only the
region an occlusion can change:

* the affected output region of a convolution or pooling follows from its input region, kernel,
  stride, dilation and TensorFlow ``same`` / ``valid`` padding; the needed input region (with the
  kernel's margin, padded where it leaves the volume with the op's padding value) is assembled from
  the cached activations with the locally recomputed values pasted over them, and the op is run
  ``valid`` on that crop: the result equals the full op's output on the region;
* element-wise layers (BatchNorm in eval mode, activations, dropout) keep the region; merges
  (concatenate, add, residual) take the bounding box of their inputs' regions;
* global average pooling is a sum, so ``gap = cached_gap + (sum(new) - sum(cached)) / n`` over
  the recomputed region, and everything after it (dense layers) is recomputed for the batch;
* regions are padded to one size per batch of positions (recomputing a few unchanged voxels
  changes nothing), so a batch runs as one tensor; an axis whose region would cover most of the
  volume is recomputed whole.

Window positions are restricted to those whose cube touches a mask (the brain mask: the model
input is zero outside it). For a baseline equal to the input there (0 for the masked model input),
an occlusion outside the mask does not change the input, its drop is exactly 0, and skipping it
changes nothing; such positions still count in each voxel's number of covering windows.

The result equals the naive definition (:func:`occlusion_naive`) up to float rounding (tests: 1e-4
in score on full-size networks, measured differences about 1e-6).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..models.fast import fold_batchnorm
from ..models.graph import ACTIVATIONS, GraphNet, Node, _same_pads, _triple

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
# The receptive-field-limited engine
# -------------------------------------------------------------------------------------------------


@dataclass
class _Local:
    """Recomputed values of one spatial node for a batch: ``t`` is B x C x size, at ``start`` (B x 3)."""

    t: torch.Tensor
    start: np.ndarray
    size: np.ndarray  # (3,)
    lo: np.ndarray  # true affected region (B x 3), lo <= hi; inside [start, start + size)
    hi: np.ndarray


@dataclass(frozen=True)
class _Window:
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    dilation: tuple[int, int, int]
    pad_before: tuple[int, int, int]
    pad_value: float


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
        readers: dict[str, list[Node]] = {}
        for n in self.order:
            for s in n.inputs:
                readers.setdefault(s, []).append(n)
        # a node's cached (unoccluded) output is needed when a reader may read outside its region
        self.keep = {name for name, rs in readers.items() if any(r.op not in _ELEMENTWISE for r in rs)}
        self.last_use: dict[str, int] = {}
        for i, n in enumerate(self.order):
            for s in n.inputs:
                self.last_use[s] = i
        self._cache: dict[str, torch.Tensor] = {}
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

    def _spatial(self, name: str) -> bool:
        return len(self.shapes[name]) == 4

    def _full(self, name: str) -> np.ndarray:
        return np.asarray(self.shapes[name][1:], dtype=np.int64)

    # ------------------------------------------------------------------ unoccluded pass
    def set_input(self, x: np.ndarray | torch.Tensor) -> float:
        """Run the unoccluded input once and keep the activations later batches reuse; returns the score."""
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else x).float()
        if xt.dim() == 4:
            xt = xt[None]
        if tuple(xt.shape) != (1, *self.net.input_shape):
            raise ValueError(
                f"occlusion input must be 1 x {' x '.join(map(str, self.net.input_shape))}, got {tuple(xt.shape)}"
            )
        xt = xt.to(self.device)
        cache: dict[str, torch.Tensor] = {}
        live: dict[str, torch.Tensor] = {self.order[0].name: xt}
        with torch.inference_mode():
            for i, n in enumerate(self.order[1:], start=1):
                xs = [live[s] for s in n.inputs]
                live[n.name] = self.net.run_node(n, xs, final=(n.name == self.logit))
                for s in n.inputs:
                    if self.last_use.get(s) == i:
                        t = live.pop(s)
                        if s in self.keep:
                            cache[s] = t
            for s, t in live.items():
                if s in self.keep:
                    cache[s] = t
            logit = live[self.logit].reshape(-1)
        self._cache = cache
        self._cache.setdefault(self.order[0].name, xt)
        self._base_logit = float(logit[0])
        return float(torch.sigmoid(logit.float())[0])

    # ------------------------------------------------------------------ regions
    def _fit(self, name: str, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One region size for the batch (>= every affected extent) and per-position starts."""
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

    # ------------------------------------------------------------------ assembling inputs
    def _assemble(self, name: str, loc: _Local, r0: np.ndarray, rsize: np.ndarray, pad_value: float) -> torch.Tensor:
        """Values of node ``name`` on region [r0, r0 + rsize) per position: cache, then local pasted over."""
        if np.array_equal(r0, loc.start) and np.array_equal(rsize, loc.size):
            return loc.t
        B = len(r0)
        full = self._full(name)
        inside_local = np.all(r0 >= loc.start) and np.all(r0 + rsize <= loc.start + loc.size)
        if inside_local:
            off = r0 - loc.start
            if np.all(off == off[0]):
                o = off[0]
                return loc.t[:, :, o[0] : o[0] + rsize[0], o[1] : o[1] + rsize[1], o[2] : o[2] + rsize[2]]
            parts = [
                loc.t[b, :, o[0] : o[0] + rsize[0], o[1] : o[1] + rsize[1], o[2] : o[2] + rsize[2]]
                for b, o in enumerate(off)
            ]
            return torch.stack(parts)
        cached_t = self._cache[name][0]
        out_t = torch.empty(
            (B, cached_t.shape[0], *[int(v) for v in rsize]), dtype=cached_t.dtype, device=cached_t.device
        )
        # Slice copies through numpy on the CPU: single-threaded, without an OpenMP barrier per copy
        # (two threads on a busy machine made each small copy 50x slower).
        cpu = cached_t.device.type == "cpu"
        cached = cached_t.numpy() if cpu else cached_t
        out = out_t.numpy() if cpu else out_t
        local = loc.t.numpy() if cpu else loc.t
        padded = bool(np.any(r0 < 0) or np.any(r0 + rsize > full))
        if padded:
            out.fill(pad_value) if cpu else out_t.fill_(pad_value)  # type: ignore[union-attr]
        lo_in = np.maximum(r0, 0)
        hi_in = np.minimum(r0 + rsize, full)
        llo = np.maximum(lo_in, loc.start)
        lhi = np.minimum(hi_in, loc.start + loc.size)
        for b in range(B):
            a, z = lo_in[b], hi_in[b]
            if np.any(z <= a):
                continue
            d0 = a - r0[b]
            d1 = z - r0[b]
            out[b, :, d0[0] : d1[0], d0[1] : d1[1], d0[2] : d1[2]] = cached[:, a[0] : z[0], a[1] : z[1], a[2] : z[2]]  # type: ignore[assignment]
            la, lz = llo[b], lhi[b]
            if np.all(lz > la):
                t0 = la - r0[b]
                t1 = lz - r0[b]
                s0 = la - loc.start[b]
                s1 = lz - loc.start[b]
                out[b, :, t0[0] : t1[0], t0[1] : t1[1], t0[2] : t1[2]] = local[  # type: ignore[assignment]
                    b, :, s0[0] : s1[0], s0[1] : s1[1], s0[2] : s1[2]
                ]
        return out_t

    # ------------------------------------------------------------------ one batch
    def _windowed(self, n: Node, loc_in: _Local) -> _Local:
        w = self.windows[n.name]
        out_full = self._full(n.name)
        lo, hi = self._window_region(w, loc_in.lo, loc_in.hi, out_full)
        c = n.config
        if n.op == "avgpool3d" and c["padding"] == "same":
            # TensorFlow divides by the number of real voxels: recompute the whole op
            xin = self._assemble(n.inputs[0], loc_in, np.zeros_like(loc_in.start), self._full(n.inputs[0]), 0.0)
            t = self.net.run_node(n, [xin], final=False)
            start = np.zeros_like(lo)
            return _Local(t, start, out_full.copy(), lo, hi)
        start, size = self._fit(n.name, lo, hi)
        s = np.asarray(w.stride)
        reach = (np.asarray(w.kernel) - 1) * np.asarray(w.dilation)
        r0 = start * s - np.asarray(w.pad_before)
        rsize = (size - 1) * s + reach + 1
        xin = self._assemble(n.inputs[0], loc_in, r0, rsize, w.pad_value)
        if n.op == "conv3d":
            conv = self.net.layers[n.name]
            t = F.conv3d(xin, conv.weight, conv.bias, stride=w.stride, padding=0, dilation=w.dilation)  # type: ignore[arg-type]
            t = ACTIVATIONS[c.get("activation", "linear")](t)
        elif n.op == "maxpool3d":
            t = F.max_pool3d(xin, w.kernel, w.stride)
        else:
            t = F.avg_pool3d(xin, w.kernel, w.stride)
        return _Local(t, start, size, lo, hi)

    def _merge(self, n: Node, locs: list[_Local]) -> _Local:
        lo = np.minimum.reduce([loc.lo for loc in locs])
        hi = np.maximum.reduce([loc.hi for loc in locs])
        start, size = self._fit(n.name, lo, hi)
        xs = [self._assemble(s, loc, start, size, 0.0) for s, loc in zip(n.inputs, locs)]
        t = self.net.run_node(n, xs, final=False)
        return _Local(t, start, size, lo, hi)

    def _gap(self, n: Node, loc: _Local) -> torch.Tensor:
        src = n.inputs[0]
        full = self._full(src)
        cached = self._cache[src]
        count = float(np.prod(full))
        base = cached.mean(dim=(2, 3, 4))[0]
        if np.array_equal(loc.size, full):
            return loc.t.mean(dim=(2, 3, 4))
        new = loc.t.double().sum(dim=(2, 3, 4))
        sz = loc.size
        c = cached[0].double()
        old = torch.stack(
            [c[:, a[0] : a[0] + sz[0], a[1] : a[1] + sz[1], a[2] : a[2] + sz[2]].sum(dim=(1, 2, 3)) for a in loc.start]
        )
        return (base.double()[None] + (new - old) / count).to(loc.t.dtype)

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
        t = torch.empty((B, x.shape[1], *[int(v) for v in size]), dtype=x.dtype, device=x.device)
        cpu = x.device.type == "cpu"
        xa, ta = (x.numpy(), t.numpy()) if cpu else (x, t)
        for b in range(B):
            a = start[b]
            ta[b] = xa[0, :, a[0] : a[0] + size[0], a[1] : a[1] + size[1], a[2] : a[2] + size[2]]  # type: ignore[assignment]
            o0 = lo[b] - a
            o1 = hi[b] - a
            ta[b, :, o0[0] : o1[0], o0[1] : o1[1], o0[2] : o1[2]] = baseline
        live: dict[str, _Local | torch.Tensor] = {in_name: _Local(t, start, size, lo.copy(), hi.copy())}
        with torch.inference_mode():
            for i, n in enumerate(self.order[1:], start=1):
                ins = [live[s] for s in n.inputs]
                final = n.name == self.logit
                if all(isinstance(v, _Local) for v in ins) and self._spatial(n.name):
                    locs = [v for v in ins if isinstance(v, _Local)]
                    if n.op in _WINDOWED:
                        out: _Local | torch.Tensor = self._windowed(n, locs[0])
                    elif n.op in _ELEMENTWISE:
                        loc = locs[0]
                        out = _Local(self.net.run_node(n, [loc.t], final=False), loc.start, loc.size, loc.lo, loc.hi)
                    elif n.op in _MERGE:
                        out = self._merge(n, locs)
                    else:  # pragma: no cover - every spatial op is listed above
                        raise ValueError(f"layer {n.name!r}: no local rule for {n.op!r}")
                elif n.op == "gap3d" and isinstance(ins[0], _Local):
                    out = self._gap(n, ins[0])
                else:
                    xs = []
                    for s, v in zip(n.inputs, ins):
                        if isinstance(v, _Local):  # e.g. Flatten of a spatial map: assemble it whole
                            v = self._assemble(s, v, np.zeros_like(v.start), self._full(s), 0.0)
                        xs.append(v)
                    out = self.net.run_node(n, xs, final=final)
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

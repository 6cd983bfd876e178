"""Figures for the participant and group reports: data in, matplotlib ``Figure`` out.

No HTML here (layout lives in :mod:`bids_app.report.html`) and no file discovery (that is
:mod:`bids_app.report.readers`): callers pass arrays and tables. Figures are built on
:class:`matplotlib.figure.Figure` with an explicit Agg canvas instead of ``pyplot``: nothing changes
matplotlib's global backend or state (so importing this module has no side effects, figures never
open windows, and they work in headless containers and in threads).

Every brain figure is drawn in neurological convention (left on the left): volumes are flipped and
permuted to RAS order first (:func:`ras_volume`), never resampled. Group figures scale to 100,000
participants: above a few hundred points per group they draw distributions, not points.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from .._io import atomic_path

__all__ = [
    "LABEL_COLOURS",
    "Overlay",
    "new_figure",
    "figure_png",
    "save_png",
    "ras_volume",
    "peak_voxel",
    "registration_figure",
    "overlay_figure",
    "gm_slices_figure",
    "scores_figure",
    "roc_figure",
    "score_distribution_figure",
    "mmse_scatter_figure",
    "qc_distribution_figure",
]

#: colours by true label (shared by the group figures so a class keeps its colour)
LABEL_COLOURS = {
    "AD": "#c0392b",
    "CN": "#2471a3",
    "MCI": "#d68910",
    "male": "#2471a3",
    "female": "#c0392b",
    "other": "#7d3c98",
    "unlabelled": "#7f8c8d",
}

#: above this many points per group, strips and scatters become distributions
_MAX_POINTS = 400


def new_figure(width: float, height: float, *, layout: Literal["constrained", "tight"] | None = "constrained"):
    """A Figure attached to an Agg canvas (the backend is chosen here, per figure, not globally)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig) -> bytes:
    """PNG bytes of ``fig``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_png(fig, path: Path) -> Path:
    """Write ``fig`` as PNG, atomically."""
    with atomic_path(Path(path), suffix=".png") as tmp:
        tmp.write_bytes(figure_png(fig))
    return Path(path)


def ras_volume(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorient ``data`` so axes run left->right, posterior->anterior, inferior->superior.

    The SPM grid stores x flipped (voxel 0 is on the right); displaying raw voxel order would show
    the brain mirrored. Only axis flips and permutations are applied (no resampling).
    """
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(data, ornt)


def peak_voxel(volume: np.ndarray) -> tuple[int, int, int]:
    """Index of the largest absolute value of ``volume`` (NaN ignored; the centre when all zero)."""
    v = np.abs(np.nan_to_num(np.asarray(volume, dtype=np.float32)))
    if not v.any():
        return tuple(s // 2 for s in v.shape)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(v)), v.shape))  # type: ignore[return-value]


def _cut(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A 2-D slice for display: rows = the upward axis, so ``imshow(origin='lower')`` is upright."""
    return np.take(volume, index, axis=axis).T


_VIEWS = (("sagittal", 0), ("coronal", 1), ("axial", 2))


def registration_figure(
    background: np.ndarray,
    outlines: Sequence[tuple[str, np.ndarray, str]],
    affine: np.ndarray,
    *,
    n_cuts: int = 6,
):
    """The fMRIPrep-style registration check: contours of template masks over an image in template space.

    ``background`` is the image to judge (the warped T1w, or the subject's GM map); ``outlines``
    are (legend name, boolean mask, colour) on the same grid. One row per view (sagittal, coronal,
    axial) with ``n_cuts`` evenly spaced cuts through the masks' extent: a good registration puts
    the outlines on the image's boundaries in every cut.
    """
    from matplotlib.lines import Line2D

    bg = ras_volume(np.nan_to_num(np.asarray(background, dtype=np.float32)), affine)
    masks = [(name, ras_volume(np.asarray(m, dtype=np.uint8), affine), colour) for name, m, colour in outlines]
    extent_mask = masks[0][1] if masks else (bg > 0).astype(np.uint8)
    positive = bg[bg > 0]
    vmax = float(np.percentile(positive, 99.0)) if positive.size else 1.0
    fig = new_figure(1.6 * n_cuts, 5.2, layout=None)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.01, wspace=0.02, hspace=0.04)
    axes = fig.subplots(len(_VIEWS), n_cuts, squeeze=False)
    for row, (view, axis) in enumerate(_VIEWS):
        present = np.flatnonzero(extent_mask.any(axis=tuple(a for a in range(3) if a != axis)))
        lo, hi = (int(present[0]), int(present[-1])) if present.size else (0, bg.shape[axis] - 1)
        cuts = np.linspace(lo, hi, n_cuts + 2)[1:-1].round().astype(int)
        for col, index in enumerate(cuts):
            ax = axes[row, col]
            ax.imshow(_cut(bg, axis, index), origin="lower", cmap="gray", vmin=0.0, vmax=vmax, interpolation="nearest")
            for _, m, colour in masks:
                sl = _cut(m, axis, index).astype(float)
                if sl.any():
                    ax.contour(sl, levels=[0.5], colors=colour, linewidths=0.9)
            ax.set_axis_off()
        axes[row, 0].text(0.02, 0.98, view, transform=axes[row, 0].transAxes, va="top", color="white", fontsize=8)
    handles = [Line2D([0], [0], color=c, lw=1.5, label=n) for n, _, c in masks]
    if handles:
        fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False)
    return fig


@dataclass(frozen=True)
class Overlay:
    """One row of :func:`overlay_figure`: a map drawn in colour over the background.

    ``symmetric`` maps (signed, e.g. an occlusion score change) get a diverging colour scale centred
    on 0; others a sequential one (``cmap``) from 0. Values with ``|v| <= threshold`` or below
    ``relative_threshold`` times the colour scale's maximum are transparent, so the template shows.
    ``cut`` is the voxel (on the input grid) the three slices go through; None = the map's peak.
    """

    name: str
    data: np.ndarray
    label: str = ""
    symmetric: bool = False
    threshold: float = 0.0
    vmax: float | None = None
    cut: tuple[int, int, int] | None = None
    relative_threshold: float = 0.0
    cmap: str = "viridis"


def overlay_figure(rows: Sequence[Overlay], background: np.ndarray, affine: np.ndarray):
    """Orthogonal slices (sagittal, coronal, axial) of each overlay over the template, with a colour bar.

    ``background`` (e.g. the MNI152 T1 on the same grid) is drawn in grey; each row's slices go
    through its ``cut`` (default: its peak), which is written in the panel titles as voxel indices
    of the input grid and in mm.
    """
    fig = new_figure(9.6, 2.9 * len(rows) + 0.2)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    bg = ras_volume(np.nan_to_num(np.asarray(background, dtype=np.float32)), affine)
    bg_max = float(np.percentile(bg[bg > 0], 99.5)) if (bg > 0).any() else 1.0
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    for r, row in enumerate(rows):
        data = np.nan_to_num(np.asarray(row.data, dtype=np.float32))
        cut = row.cut if row.cut is not None else peak_voxel(data)
        mm = (affine @ np.array([*cut, 1.0]))[:3]
        vol = ras_volume(data, affine)
        # the cut in RAS voxel order: permute and flip like apply_orientation does
        ras_cut = [0, 0, 0]
        for src_axis, (dst_axis, flip) in enumerate(ornt.astype(int)):
            idx = cut[src_axis]
            ras_cut[dst_axis] = data.shape[src_axis] - 1 - idx if flip < 0 else idx
        finite = np.abs(vol[np.abs(vol) > row.threshold])  # the colour scale ignores the hidden background
        vmax = row.vmax if row.vmax is not None else (float(np.percentile(finite, 99.5)) if finite.size else 1.0)
        vmax = vmax if vmax > 0 else 1.0
        cmap, vmin = ("RdBu_r", -vmax) if row.symmetric else (row.cmap, 0.0)
        hide = max(row.threshold, row.relative_threshold * vmax)
        im = None
        for c, (view, axis) in enumerate(_VIEWS):
            ax = axes[r, c]
            ax.imshow(_cut(bg, axis, ras_cut[axis]), origin="lower", cmap="gray", vmin=0, vmax=bg_max,
                      interpolation="nearest")
            sl = _cut(vol, axis, ras_cut[axis])
            shown = np.ma.masked_where(np.abs(sl) <= hide, sl)
            im = ax.imshow(shown, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.85,
                           interpolation="nearest")
            ax.set_axis_off()
            coord = {0: f"x = {mm[0]:.0f} mm", 1: f"y = {mm[1]:.0f} mm", 2: f"z = {mm[2]:.0f} mm"}[axis]
            ax.set_title(f"{row.name}: {view}, {coord}" if c == 0 else f"{view}, {coord}", fontsize=8)
        fig.colorbar(im, ax=axes[r, :].tolist(), shrink=0.85, label=row.label or row.name)
    return fig


def gm_slices_figure(
    maps: Sequence[tuple[str, np.ndarray]],
    affine: np.ndarray,
    background: np.ndarray,
    *,
    cut: tuple[int, int, int] | None = None,
):
    """GM density and volume maps over the template, slices through ``cut`` (default: the grid centre)."""
    shape = np.asarray(maps[0][1]).shape
    cut = cut or tuple(s // 2 for s in shape)
    rows = [
        Overlay(name, data, label=f"{name} ({'0..1' if name == 'GMD' else 'modulated'})", threshold=0.1, cut=cut)
        for name, data in maps
    ]
    return overlay_figure(rows, background, affine)


def scores_figure(rows: Sequence[tuple[str, float, float, Sequence[float]]]):
    """One line per model: per-fold scores (dots), their mean (diamond) and the threshold (bar).

    ``rows`` are (name, score, threshold, fold scores). The axis is the probability 0..1, so the
    distance from the threshold and the spread of the folds read at a glance.
    """
    fig = new_figure(7.5, 0.55 * len(rows) + 0.9)
    ax = fig.subplots()
    fold_label: str | None = "fold scores"
    for i, (_, score, threshold, folds) in enumerate(rows):
        y = len(rows) - 1 - i
        ax.plot([0, 1], [y, y], color="#d5d8dc", lw=1, zorder=0)
        if len(folds) > 1:
            ax.scatter(folds, np.full(len(folds), y), s=18, color="#5d6d7e", alpha=0.8, zorder=2, label=fold_label)
            fold_label = None
        ax.scatter([score], [y], marker="D", s=50, color="#c0392b" if score >= threshold else "#2471a3", zorder=3,
                   label="score (mean of folds)" if i == 0 else None)
        ax.plot([threshold, threshold], [y - 0.3, y + 0.3], color="black", lw=2, zorder=1,
                label="threshold" if i == 0 else None)
    ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)], fontsize=8)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("score (probability of the positive class)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(rows) < 3 else -0.2), ncol=3,
              frameon=False)
    return fig


def roc_figure(curves: Sequence[tuple[str, str, np.ndarray, np.ndarray]]):
    """ROC curves, one panel per task; ``curves`` are (task, legend name, y_true, score)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    tasks = list(dict.fromkeys(c[0] for c in curves))
    fig = new_figure(4.2 * max(1, len(tasks)), 4.0)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(tasks)), squeeze=False)[0])
    for ax, task in zip(axes, tasks, strict=False):
        for _, name, y, s in (c for c in curves if c[0] == task):
            fpr, tpr, _ = roc_curve(y, s, drop_intermediate=True)
            ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {roc_auc_score(y, s):.3f}, n={len(y)})")
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title(f"ROC: {task}")
        ax.set_aspect("equal")
        ax.legend(fontsize=7, loc="lower right")
    return fig


def score_distribution_figure(
    panels: Sequence[tuple[str, float, Sequence[tuple[str, np.ndarray]]]],
):
    """Scores by true label: one panel per model, one box per label group.

    ``panels`` are (title, threshold, [(label, scores), ...]); the threshold is drawn as a line.
    Small groups show every participant as a jittered dot; groups above a few hundred show a violin
    (the distribution) instead, so the figure stays readable and fast at 100,000 participants.
    """
    n = max(1, len(panels))
    ncols = min(n, 2)
    nrows = -(-n // ncols)
    fig = new_figure(5.0 * ncols, 3.6 * nrows)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = grid.ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    rng = np.random.default_rng(0)  # fixed jitter: the same data give the same picture
    for ax, (title, threshold, groups) in zip(axes, panels, strict=False):
        groups = [(name, np.asarray(v, dtype=float)) for name, v in groups if len(v)]
        for i, (name, values) in enumerate(groups):
            colour = LABEL_COLOURS.get(name, "#34495e")
            if values.size > _MAX_POINTS and np.ptp(values) > 0:
                parts = ax.violinplot([values], positions=[i], widths=0.7, showextrema=False)
                for body in parts["bodies"]:
                    body.set_facecolor(colour)
                    body.set_alpha(0.45)
            else:
                ax.scatter(i + rng.uniform(-0.15, 0.15, values.size), values, s=10, alpha=0.7, color=colour)
            ax.boxplot([values], positions=[i], widths=0.25 if values.size > _MAX_POINTS else 0.5, showfliers=False)
        ax.set_xticks(range(len(groups)), [f"{g}\n(n={v.size:,})" for g, v in groups], fontsize=8)
        ax.axhline(threshold, ls="--", color="black", lw=1, label=f"threshold {threshold:g}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("score")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    return fig


def mmse_scatter_figure(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray, Sequence[str], float, float]],
):
    """AD score against MMSE, one panel per AD model: (title, mmse, score, diagnosis, rho, p).

    Points are drawn small and translucent (rasterised) when there are many, so 100,000 still draw
    in about a second and density remains visible.
    """
    n = max(1, len(panels))
    fig = new_figure(4.2 * n, 3.8)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (title, mmse, score, diagnosis, rho, p) in zip(axes, panels, strict=False):
        dx = np.asarray(diagnosis, dtype=object)
        many = dx.size > 5 * _MAX_POINTS
        for name in dict.fromkeys(dx.tolist()):
            sel = dx == name
            ax.scatter(np.asarray(mmse)[sel], np.asarray(score)[sel], s=3 if many else 14, alpha=0.25 if many else 0.8,
                       color=LABEL_COLOURS.get(name, "#34495e"), label=f"{name} (n={int(sel.sum()):,})",
                       rasterized=many, linewidths=0)
        ax.set_xlabel("MMSE")
        ax.set_ylabel("AD score")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{title}\nSpearman r = {rho:.2f} (p = {p:.2g})", fontsize=9)
        ax.legend(fontsize=7, markerscale=2 if many else 1, loc="upper right")  # "best" is slow with many points
    return fig


def qc_distribution_figure(values: np.ndarray, threshold: float, *, name: str = "GMV-template correlation"):
    """Histogram of one QC metric over all T1w images, with its threshold (fails to its left)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    fig = new_figure(6.0, 2.8)
    ax = fig.subplots()
    lo = min(float(values.min()) if values.size else threshold, threshold) - 0.02
    hi = max(float(values.max()) if values.size else 1.0, threshold) + 0.02
    bins = np.linspace(lo, hi, 41)
    ok = values >= threshold
    ax.hist(values[ok], bins=bins, color="#2471a3", label=f"passed (n={int(ok.sum()):,})")
    ax.hist(values[~ok], bins=bins, color="#c0392b", label=f"flagged (n={int((~ok).sum()):,})")
    ax.axvline(threshold, ls="--", color="black", lw=1, label=f"threshold {threshold:g}")
    ax.set_xlabel(name)
    ax.set_ylabel("T1w images")
    ax.legend(fontsize=7, loc="upper left")
    return fig

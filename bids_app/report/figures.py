"""Figures for the participant and group reports: data in, matplotlib ``Figure`` out.

No HTML here (layout lives in :mod:`bids_app.report.html`) and no file discovery: callers pass
arrays and tables. Figures are built on :class:`matplotlib.figure.Figure` with an explicit Agg
canvas instead of ``pyplot``: nothing changes matplotlib's global backend or state (so importing
this module has no side effects, figures never open windows, and they work in headless
containers and in threads).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from .._io import atomic_path

__all__ = [
    "new_figure",
    "figure_png",
    "save_png",
    "gm_slices_figure",
    "roc_figure",
    "score_distribution_figure",
    "mmse_scatter_figure",
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


def new_figure(width: float, height: float):
    """A Figure attached to an Agg canvas (the backend is chosen here, per figure, not globally)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
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


def _ras_volume(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorient ``data`` so axes run left->right, posterior->anterior, inferior->superior.

    The SPM grid stores x flipped (voxel 0 is on the right); displaying raw voxel order would show
    the brain mirrored. Only axis flips and permutations are applied (no resampling).
    """
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(data, ornt)


def gm_slices_figure(
    maps: Sequence[tuple[str, np.ndarray]],
    affine: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    title: str = "",
):
    """Orthogonal slices through each map (one row per map), with the mask's outline in red.

    ``maps`` are (name, 3-D array) pairs on the grid of ``affine``; ``mask`` is a boolean array on
    the same grid. Slices go through the centre of the mask (or of the volume). Panels are shown in
    neurological convention (left on the left), and each row has its own colour scale from 0 to
    the 99.5th percentile so GMD (0..1) and GMV (modulated, may exceed 1) are both readable.
    """
    fig = new_figure(9.0, 3.0 * len(maps) + 0.4)
    axes = fig.subplots(len(maps), 3, squeeze=False)
    m = _ras_volume(mask.astype(np.uint8), affine) if mask is not None else None
    for row, (name, data) in enumerate(maps):
        vol = _ras_volume(np.nan_to_num(np.asarray(data, dtype=np.float32)), affine)
        if m is not None and m.any():
            centre = [int(round(c)) for c in np.argwhere(m).mean(axis=0)]
        else:
            centre = [s // 2 for s in vol.shape]
        vmax = float(np.percentile(vol[vol > 0], 99.5)) if (vol > 0).any() else 1.0
        views = (
            ("sagittal", lambda v, c=centre: v[c[0], :, :]),
            ("coronal", lambda v, c=centre: v[:, c[1], :]),
            ("axial", lambda v, c=centre: v[:, :, c[2]]),
        )
        for col, (view, cut) in enumerate(views):
            ax = axes[row, col]
            im = ax.imshow(cut(vol).T, origin="lower", cmap="gray", vmin=0.0, vmax=vmax, interpolation="nearest")
            if m is not None:
                ax.contour(cut(m).T.astype(float), levels=[0.5], colors="red", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name} {view}", fontsize=9)
        fig.colorbar(im, ax=axes[row, :].tolist(), shrink=0.8, label=name)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def roc_figure(curves: Sequence[tuple[str, str, np.ndarray, np.ndarray]]):
    """ROC curves, one panel per task; ``curves`` are (task, legend name, y_true, score)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    tasks = list(dict.fromkeys(c[0] for c in curves))
    fig = new_figure(4.2 * max(1, len(tasks)), 4.0)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(tasks)), squeeze=False)[0])
    for ax, task in zip(axes, tasks):
        for _, name, y, s in (c for c in curves if c[0] == task):
            fpr, tpr, _ = roc_curve(y, s)
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
    """Scores by true label: one panel per model, one jittered strip + box per label group.

    ``panels`` are (title, threshold, [(label, scores), ...]); the threshold is drawn as a line.
    """
    n = max(1, len(panels))
    fig = new_figure(4.2 * n, 3.8)
    axes = fig.subplots(1, n, squeeze=False)[0]
    rng = np.random.default_rng(0)  # fixed jitter: the same data give the same picture
    for ax, (title, threshold, groups) in zip(axes, panels):
        groups = [(name, np.asarray(v, dtype=float)) for name, v in groups if len(v)]
        for i, (name, values) in enumerate(groups):
            colour = LABEL_COLOURS.get(name, "#34495e")
            ax.boxplot([values], positions=[i], widths=0.5, showfliers=False)
            ax.scatter(i + rng.uniform(-0.15, 0.15, values.size), values, s=10, alpha=0.7, color=colour)
        ax.set_xticks(range(len(groups)), [f"{g} (n={v.size})" for g, v in groups], fontsize=8)
        ax.axhline(threshold, ls="--", color="black", lw=1, label=f"threshold {threshold:g}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("score")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return fig


def mmse_scatter_figure(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray, Sequence[str], float, float]],
):
    """AD score against MMSE, one panel per AD model: (title, mmse, score, diagnosis, rho, p)."""
    n = max(1, len(panels))
    fig = new_figure(4.2 * n, 3.8)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (title, mmse, score, dx, rho, p) in zip(axes, panels):
        diagnoses = np.asarray(dx, dtype=object)
        for name in dict.fromkeys(diagnoses.tolist()):
            sel = diagnoses == name
            ax.scatter(np.asarray(mmse)[sel], np.asarray(score)[sel], s=14, alpha=0.8,
                       color=LABEL_COLOURS.get(name, "#34495e"), label=f"{name} (n={int(sel.sum())})")
        ax.set_xlabel("MMSE")
        ax.set_ylabel("AD score")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{title}\nSpearman r = {rho:.2f} (p = {p:.2g})", fontsize=9)
        ax.legend(fontsize=7)
    return fig

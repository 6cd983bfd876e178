"""The measured shift between a backend's GM maps and the simulator's ground truth, and its emulation.

Why: the demo models are trained on simulated cohorts, whose ground-truth SPM-grid maps cost seconds
per participant, but the demo shows them maps that the ANTs backend made from the simulated T1w
(minutes per participant). The two differ (the ANTs backend counts dura and vessels inside its
generous brain mask as GM, ~+45% total GM, recovers ~75% of a focal loss, and smooths), and models
trained on the truth alone misread the ANTs maps (the first demo models called every demo participant
male). Making a whole training cohort with ANTs does not fit a 2-core machine's session, so the
shift is measured on a few participants that have both, and the training maps are the truth carried
through it.

The model, fitted per map kind (GMD, GMV) on N participants with both maps::

    backend_i(v) = scale * smooth_sigma(truth_i)(v) + offset(v) + e_i(v)

``smooth_sigma`` a Gaussian of ``sigma`` SPM voxels (1.5 mm), ``scale`` one number and ``offset`` a
map. ``scale`` is the least-squares slope of the participants' deviations from their mean (what the
models learn from is how participants differ), ``offset`` = mean backend - scale * mean smoothed truth
(the backend's systematic extra GM, e.g. at the brain's edge). ``sigma`` is chosen on held-out
participants (two-fold over the N), by the share of between-participant variance explained.

The term ``e_i`` matters as much as the rest: what the backend does to one participant that the truth
does not predict (misregistration by a voxel here and there, segmentation noise: 87% of the GMV
deviations and all of the GMD deviations on the first fit). A model trained without it sees, in the
backend's maps, variance it has never seen and reads it as signal (the first shifted demo models did).
So the fit keeps the N participants' residual maps, and ``apply`` adds to each emulated map a fresh
draw with the residuals' covariance: ``e = sum_j w_j r_j``, ``w_j ~ N(0, 1/(N-1))`` (the residuals sum
to zero, so this is the sample covariance of ``e``; the same weights for GMD and GMV, which err together).

``python -m bids_app.train.shift fit --backend DIR --truth DIR -o shift.npz`` fits and prints the
figures; ``python -m bids_app.train.shift apply shift.npz --truth DIR -o DIR`` writes the shifted
maps as a derivatives dataset with the truth's names, which ``vbm-predict train --derivatives`` reads
(its dataset_description says the maps are synthetic, and which shift made them).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..derivatives import SPACE, write_map
from ..errors import InputDataError, NoInputError
from ..grid import SPM_SHAPE, SPM_VOXEL_VOLUME_MM3

__all__ = ["MapShift", "ShiftModel", "fit_shift", "apply_shift", "shift_dataset", "paired_maps", "noise_weights"]

KINDS: tuple[str, ...] = ("gmd", "gmv")
_NAMES = {"gmd": f"_space-{SPACE}_label-GM_probseg.nii.gz",
          "gmv": f"_space-{SPACE}_label-GM_desc-modulated_probseg.nii.gz"}
#: Gaussian widths tried, in SPM voxels (1.5 mm): 0 = no smoothing
SIGMAS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
#: name of the shifted dataset's first GeneratedBy entry (the card's ``training.preprocessing``)
SHIFT_ORIGIN = "synthetic-ground-truth+ants-shift"


@dataclass
class MapShift:
    """The fitted shift of one map kind (see the module docstring)."""

    kind: str
    scale: float
    sigma: float
    offset: np.ndarray
    #: held-out share of between-participant variance explained, per sigma tried
    explained: dict[float, float] = field(default_factory=dict)
    #: the fitted participants' residual maps (N x grid, summing to zero over N), or None
    residuals: np.ndarray | None = None

    def apply(self, truth: np.ndarray, noise_weights: np.ndarray | None = None) -> np.ndarray:
        """The emulated backend map of ``truth``; with ``noise_weights`` (one per residual map, see
        :func:`noise_weights`) plus that combination of the fitted residuals."""
        smooth = ndimage.gaussian_filter(truth, self.sigma) if self.sigma > 0 else truth
        mapped = self.scale * smooth + self.offset
        if noise_weights is not None:
            if self.residuals is None:
                raise ValueError(f"{self.kind} shift: fitted without residual maps; no noise can be drawn")
            mapped = mapped + np.tensordot(noise_weights.astype(np.float32), self.residuals, axes=1)
        return np.clip(mapped, 0.0, None).astype(np.float32)


def noise_weights(n_residuals: int, participant: str, seed: int = 0) -> np.ndarray:
    """Weights ``w_j ~ N(0, 1/(N-1))`` of one participant's residual draw, fixed by ``seed`` and the
    participant's name (a rerun, or an interrupted run resumed, writes the same maps)."""
    rng = np.random.default_rng([seed, zlib.crc32(participant.encode())])
    return rng.normal(0.0, 1.0 / math.sqrt(max(n_residuals - 1, 1)), n_residuals)


@dataclass
class ShiftModel:
    """GMD and GMV shifts and the figures measured on the participants they were fitted on."""

    shifts: dict[str, MapShift]
    participants: list[str]
    figures: dict[str, Any]

    def save(self, path: Path) -> Path:
        arrays = {f"{k}_offset": s.offset for k, s in self.shifts.items()}
        arrays.update({f"{k}_residuals": s.residuals.astype(np.float16) for k, s in self.shifts.items()
                       if s.residuals is not None})
        shifts = {k: {"scale": s.scale, "sigma": s.sigma, "explained": {str(a): b for a, b in s.explained.items()}}
                  for k, s in self.shifts.items()}
        meta = {"participants": self.participants, "figures": self.figures, "shifts": shifts}
        arrays["meta"] = np.array(json.dumps(meta))
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types the kwargs as bool
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> ShiftModel:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            shifts = {k: MapShift(k, float(v["scale"]), float(v["sigma"]), z[f"{k}_offset"].astype(np.float32),
                                  {float(a): float(b) for a, b in v["explained"].items()},
                                  z[f"{k}_residuals"].astype(np.float32) if f"{k}_residuals" in z.files else None)
                      for k, v in meta["shifts"].items()}
        return cls(shifts, list(meta["participants"]), dict(meta["figures"]))


def _load(path: Path) -> np.ndarray:
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
    if data.shape != SPM_SHAPE:
        raise InputDataError(f"{path}: not on the SPM grid {SPM_SHAPE} (shape {data.shape})")
    return np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)


def paired_maps(backend_dir: Path, truth_dir: Path, participants: Sequence[str] | None = None
                ) -> list[tuple[str, dict[str, Path], dict[str, Path]]]:
    """(participant, backend paths, truth paths) for every participant with both maps in both folders
    (only ``participants``, ``sub-`` optional, when given)."""
    pairs = []
    wanted = None if participants is None else {p if p.startswith("sub-") else f"sub-{p}" for p in participants}
    for sub in sorted(p for p in Path(backend_dir).glob("sub-*") if p.is_dir()):
        if wanted is not None and sub.name not in wanted:
            continue
        b = {k: sub / "anat" / f"{sub.name}{n}" for k, n in _NAMES.items()}
        t = {k: Path(truth_dir) / sub.name / "anat" / f"{sub.name}{n}" for k, n in _NAMES.items()}
        if all(p.is_file() for p in (*b.values(), *t.values())):
            pairs.append((sub.name, b, t))
    if len(pairs) < 4:
        raise NoInputError(f"{backend_dir}: {len(pairs)} participants with backend and truth maps; the fit needs >= 4")
    return pairs


def _slope(dev_b: np.ndarray, dev_t: np.ndarray) -> float:
    return float((dev_b * dev_t).sum(dtype=np.float64) / max((dev_t * dev_t).sum(dtype=np.float64), 1e-12))


def _fit_kind(kind: str, backend: np.ndarray, truth: np.ndarray) -> MapShift:
    """``backend``, ``truth``: N x SPM grid. Sigma by two-fold held-out explained variance."""
    n = len(backend)
    halves = (np.arange(n) % 2 == 0, np.arange(n) % 2 == 1)
    explained = {}
    smoothed = {}
    for sigma in SIGMAS:
        s = np.stack([ndimage.gaussian_filter(t, sigma) if sigma > 0 else t for t in truth])
        smoothed[sigma] = s
        num = den = 0.0
        for fit, test in (halves, halves[::-1]):
            mb, ms = backend[fit].mean(0), s[fit].mean(0)
            a = _slope(backend[fit] - mb, s[fit] - ms)
            off = mb - a * ms
            resid = backend[test] - (a * s[test] + off)
            num += float((resid**2).sum(dtype=np.float64))
            # against the offset-only model (every participant = the fit half's mean backend map)
            den += float(((backend[test] - mb) ** 2).sum(dtype=np.float64))
        explained[sigma] = 1.0 - num / max(den, 1e-12)
    best = max(explained, key=lambda k: explained[k])
    s = smoothed[best]
    mb, ms = backend.mean(0), s.mean(0)
    a = _slope(backend - mb, s - ms)
    offset = (mb - a * ms).astype(np.float32)
    residuals = (backend - (a * s + offset)).astype(np.float32)
    return MapShift(kind, a, best, offset, explained, residuals)


def _totals(maps: np.ndarray) -> np.ndarray:
    return maps.reshape(len(maps), -1).sum(1, dtype=np.float64) * SPM_VOXEL_VOLUME_MM3 / 1000.0


def fit_shift(backend_dir: Path, truth_dir: Path, participants: Sequence[str] | None = None) -> ShiftModel:
    """Fit :class:`ShiftModel` on the participants with maps in both folders; figures in ``.figures``."""
    pairs = paired_maps(backend_dir, truth_dir, participants)
    shifts, figures = {}, {}
    for kind in KINDS:
        b = np.stack([_load(p[1][kind]) for p in pairs])
        t = np.stack([_load(p[2][kind]) for p in pairs])
        shift = _fit_kind(kind, b, t)
        shifts[kind] = shift
        tb, tt = _totals(b), _totals(t)
        emulated = np.stack([shift.apply(x) for x in t])
        # a fresh noise draw per participant (held out from its own residual: leave-one-out weights)
        noisy = np.stack([shift.apply(x, _loo_weights(len(t), i)) for i, x in enumerate(t)])
        brain = t.mean(0) > 0.1
        r_raw = [float(np.corrcoef(x[brain], y[brain])[0, 1]) for x, y in zip(b, t)]
        r_emu = [float(np.corrcoef(x[brain], y[brain])[0, 1]) for x, y in zip(b, emulated)]
        outside = ~(t.max(0) > 0.01)
        figures[kind] = {
            "backend_total_ml": tb.round(1).tolist(), "truth_total_ml": tt.round(1).tolist(),
            "total_ratio_median": float(np.median(tb / tt)), "total_ratio_min": float((tb / tt).min()),
            "total_ratio_max": float((tb / tt).max()),
            "total_r_between_participants": float(np.corrcoef(tb, tt)[0, 1]) if len(tb) > 2 else math.nan,
            "backend_outside_truth_ml_median": float(np.median(b[:, outside].sum(1) * SPM_VOXEL_VOLUME_MM3 / 1000)),
            "voxel_r_raw_median": float(np.median(r_raw)), "voxel_r_emulated_median": float(np.median(r_emu)),
            "emulated_total_ratio_median": float(np.median(_totals(emulated) / tb)),
            "residual_sd_in_brain": float(shift.residuals[:, brain].std()) if shift.residuals is not None else 0.0,
            "voxel_sd_of_deviations_backend": float((b - b.mean(0))[:, brain].std()),
            "voxel_sd_of_deviations_emulated_with_noise": float((noisy - noisy.mean(0))[:, brain].std()),
            "scale": shift.scale, "sigma_vox": shift.sigma,
            "heldout_explained_by_sigma": {str(k): round(v, 4) for k, v in shift.explained.items()},
        }
    return ShiftModel(shifts, [p[0] for p in pairs], figures)


def _loo_weights(n: int, left_out: int, seed: int = 0) -> np.ndarray:
    """Noise weights over the residuals of the other ``n - 1`` participants (0 for ``left_out``)."""
    w = np.zeros(n)
    w[np.arange(n) != left_out] = noise_weights(n - 1, str(left_out), seed)
    return w


def apply_shift(model: ShiftModel, truth: dict[str, np.ndarray], participant: str | None = None,
                seed: int = 0) -> dict[str, np.ndarray]:
    """The emulated maps of one participant; with ``participant``, its residual draw added (the same
    weights for every map kind)."""
    out = {}
    for kind, v in truth.items():
        shift = model.shifts[kind]
        w = None if participant is None or shift.residuals is None else \
            noise_weights(len(shift.residuals), participant, seed)
        out[kind] = shift.apply(v, w)
    return out


def shift_dataset(model: ShiftModel, truth_dir: Path, out: Path, *, model_path: Path | None = None,
                  noise: bool = True, seed: int = 0) -> int:
    """Write the shifted GMD/GMV of every participant in ``truth_dir`` to ``out`` (same names).

    ``noise``: add each participant's own draw of the fitted residuals (module docstring; ``seed``
    and the participant's name fix it). Files other than the two maps that the trainer reads (the T1w
    in MNI space of ``--t1w-mni`` cohorts) are copied as they are. Returns the number of participants
    written."""
    truth_dir, out = Path(truth_dir), Path(out)
    n = 0
    for gmd in sorted(truth_dir.glob(f"sub-*/**/*{_NAMES['gmd']}")):
        prefix = gmd.name[: -len(_NAMES["gmd"])]
        gmv = gmd.with_name(prefix + _NAMES["gmv"])
        if not gmv.is_file():
            continue
        dest = out / gmd.parent.relative_to(truth_dir)
        dest.mkdir(parents=True, exist_ok=True)
        for kind, src in (("gmd", gmd), ("gmv", gmv)):
            if (dest / src.name).is_file():  # written by an earlier, interrupted run (the same draw)
                continue
            shifted = apply_shift(model, {kind: _load(src)}, prefix if noise else None, seed)[kind]
            write_map(dest / src.name, shifted,
                      {"Sources": [str(src)], "Description": f"the true {kind.upper()} carried through the measured "
                       "ANTs shift (bids_app.train.shift)"})
        for extra in gmd.parent.glob(f"{prefix}_space-MNI152*_desc-preproc_T1w.*"):
            if not (dest / extra.name).is_file():
                shutil.copy2(extra, dest / extra.name)
        n += 1
    desc = {
        "Name": "GM maps of a simulated cohort carried through the measured ANTs shift",
        "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [
            {"Name": SHIFT_ORIGIN, "Description": "bids_app.train.shift: backend = scale * smooth(truth) + offset map, "
             f"fitted on {len(model.participants)} participants with ANTs-made and true maps; "
             + "; ".join(f"{k}: scale {s.scale:.3f}, sigma {s.sigma} voxels" for k, s in model.shifts.items())
             + (f"; plus a draw of the {len(model.participants)} fitted residual maps per participant (seed {seed})"
                if noise and all(s.residuals is not None for s in model.shifts.values()) else "; no residual noise")
             + (f"; model {model_path.name}" if model_path else "")},
            {"Name": "vbm-predict simulate"},
        ],
    }
    (out / "dataset_description.json").write_text(json.dumps(desc, indent=2) + "\n", encoding="utf-8")
    return n


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bids_app.train.shift", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="fit the shift on participants with backend and true maps")
    f.add_argument("--backend", type=Path, required=True, help="derivatives folder of the backend's maps")
    f.add_argument("--truth", type=Path, required=True, help="the simulator's derivatives/ground-truth")
    f.add_argument("-o", "--out", type=Path, required=True, help="shift model (.npz)")
    f.add_argument("--participant-label", nargs="+", default=None, help="fit on these participants only")
    a = sub.add_parser("apply", help="write a cohort's true maps carried through a fitted shift")
    a.add_argument("model", type=Path)
    a.add_argument("--truth", type=Path, required=True)
    a.add_argument("-o", "--out", type=Path, required=True)
    a.add_argument("--noise", choices=("residual", "none"), default="residual",
                   help="add each participant a draw of the fitted residual maps (default) or nothing")
    a.add_argument("--seed", type=int, default=0, help="seed of the residual draws")
    args = p.parse_args(argv)
    if args.cmd == "fit":
        model = fit_shift(args.backend, args.truth, args.participant_label)
        model.save(args.out)
        print(json.dumps(model.figures, indent=1))
        return 0
    model = ShiftModel.load(args.model)
    n = shift_dataset(model, args.truth, args.out, model_path=args.model, noise=args.noise == "residual",
                      seed=args.seed)
    print(f"{n} participants' shifted maps written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

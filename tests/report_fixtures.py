"""Builders for report tests: GM maps with the participant level's sidecars, explanation maps, a warped T1w.

Files are written with the app's own writers and named by the output contract, so the reports read
what the participant level (and the explain stage) write. No test functions here.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bids_app._io import write_json
from bids_app.derivatives import SPACE, map_path, write_map
from bids_app.grid import MASK_PROVENANCE, SPM_AFFINE, SPM_SHAPE, brain_mask, template_gm
from bids_app.qc import THRESHOLDS
from bids_app.types import T1wUnit

__all__ = ["write_gm_maps", "write_explanation", "write_warped_t1w", "explanation_path"]

ANTS_PARAMETERS = {
    "n4_shrink": 4, "n4_iterations": [50, 50, 30], "affine_iterations": [1000, 500, 250, 0],
    "syn_iterations": [70, 50, 10], "syn_metric": "mattes", "syn_flow_sigma": 3.0, "syn_grad_step": 0.2,
    "em_iterations": 20, "prior_floor": 0.05, "brain_mask_dilation_mm": 4.0,
}


def write_gm_maps(out: Path, unit: T1wUnit, *, seed: int = 0, qc_pass: bool = True) -> tuple[Path, Path]:
    """GMD / GMV maps (the template GM with noise) whose sidecars carry QC and provenance like the app's."""
    rng = np.random.default_rng(seed)
    gmd = np.clip(template_gm() + rng.normal(0, 0.02, SPM_SHAPE), 0, 1).astype(np.float32)
    gmv = (gmd * 1.1).astype(np.float32)
    metrics = {
        "gmv_template_correlation": 0.91 if qc_pass else 0.41,
        "gm_template_dice": 0.83,
        "gm_inside_brain_fraction": 0.97,
        "total_gmv_ml": 640.2,
        "registration_t1_correlation": 0.93,
        "modulation_volume_ratio": 1.004,
        "jacobian_min": 0.12,
    }
    side = {
        "Sources": [f"bids::{unit.path.name}"],
        "SpatialReference": SPACE,
        "PreprocBackend": "ants",
        "PreprocBackendVersion": "antspyx 0.5",
        "Provenance": {"Backend": "ants", "Software": "antspyx 0.5", "Parameters": ANTS_PARAMETERS},
        "QC": {
            "Metrics": metrics,
            "Flags": [] if qc_pass else ["gmv_template_correlation"],
            "Thresholds": {"gmv_template_correlation": THRESHOLDS["gmv_template_correlation"][1],
                           "gm_template_dice": 0.5, "gm_inside_brain_fraction": 0.9, "total_gmv_ml_min": 300.0,
                           "total_gmv_ml_max": 1200.0, "registration_t1_correlation": 0.8,
                           "modulation_volume_ratio_min": 0.9, "modulation_volume_ratio_max": 1.1},
            "Passed": qc_pass,
        },
        "ModelInputMask": MASK_PROVENANCE,
    }
    a = write_map(map_path(out, unit, "GMD"), gmd, dict(side, Description="GM density (unmodulated)"))
    b = write_map(map_path(out, unit, "GMV"), gmv, dict(side, Description="GM volume (modulated)"))
    return a, b


def explanation_path(out: Path, unit: T1wUnit, desc: str) -> Path:
    return out / unit.subdir / f"{unit.prefix}_space-{SPACE}_desc-{desc}_explanation.nii.gz"


def write_explanation(
    out: Path, unit: T1wUnit, desc: str, *, peak_mm: tuple[float, float, float], signed: bool = False,
    regions: bool = True, model: str = "demo-ad",
) -> Path:
    """A smooth blob peaking at ``peak_mm`` (MNI), on the SPM grid, with sidecar and atlas summary."""
    ijk = np.indices(SPM_SHAPE).reshape(3, -1).T
    xyz = ijk @ SPM_AFFINE[:3, :3].T + SPM_AFFINE[:3, 3]
    d2 = ((xyz - np.asarray(peak_mm)) ** 2).sum(axis=1)
    data = np.exp(-d2 / (2 * 12.0**2)).reshape(SPM_SHAPE).astype(np.float32)
    if signed:
        data -= 0.4 * np.exp(-((xyz - np.asarray(peak_mm) * [-1, 1, 1]) ** 2).sum(axis=1) / (2 * 12.0**2)).reshape(
            SPM_SHAPE).astype(np.float32)
    data *= brain_mask()
    path = explanation_path(out, unit, desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, SPM_AFFINE)
    img.header.set_sform(SPM_AFFINE, code=4)
    nib.save(img, path)
    method = desc[: -len("AD")] if desc.endswith("AD") else desc[: -len("Sex")]
    params = {"CubeMM": 18, "StepMM": 9, "Baseline": 0.0} if method == "occlusion" else {"Layer": "StemEnd"}
    write_json(path.with_name(path.name.replace(".nii.gz", ".json")), {
        "Method": method, "Model": model, "ModelVersion": "0.1.0", "ModelSha256": ["cd" * 32],
        "Parameters": params, "Units": "drop in AD score" if method == "occlusion" else "Grad-CAM (0-1)",
        "Sources": [f"bids::{unit.path.name}"],
    })
    if regions:
        pd.DataFrame({
            "region": ["Hippocampus_L", "ParaHippocampal_L", "Amygdala_L"],
            "mean_value": [0.81, 0.52, 0.44], "voxels": [312, 280, 96],
        }).to_csv(path.with_name(path.name.replace("_explanation.nii.gz", "_regions.tsv")), sep="\t", index=False)
    return path


def write_warped_t1w(out: Path, unit: T1wUnit) -> Path:
    """The MNI152 T1 template itself as the 'warped T1w' (a perfect registration)."""
    from bids_app.report.readers import template_t1, warped_t1w_path

    path = warped_t1w_path(out / unit.subdir, unit.prefix)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(template_t1(), dtype=np.float32), SPM_AFFINE), path)
    return path

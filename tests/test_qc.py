"""QC: plausible maps pass, maps from a failed registration (shifted, flipped, scaled, empty) are flagged."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bids_app.grid import SPM_SHAPE, SPM_VOXEL_VOLUME_MM3, template_gm
from bids_app.qc import (
    GMV_CORRELATION_THRESHOLD,
    REFERENCE_DISTRIBUTION,
    compute_qc,
    gmv_template_correlation,
)
from bids_app.types import GMMaps


def _maps(gmd: np.ndarray, gmv: np.ndarray | None = None, qc: dict | None = None) -> GMMaps:
    gmd = gmd.astype(np.float32)
    gmv = (gmd if gmv is None else gmv).astype(np.float32)
    return GMMaps(gmd=gmd, gmv=gmv, backend="ants", backend_version="t", qc=qc or {})


@pytest.fixture(scope="module")
def good() -> np.ndarray:
    """A plausible subject: the template GM with smooth local variation and noise."""
    rng = np.random.default_rng(0)
    gm = np.asarray(template_gm(), dtype=np.float64)
    field = 1.0 + 0.15 * ndimage.gaussian_filter(rng.standard_normal(SPM_SHAPE), 6) / 0.02
    return np.clip(gm * np.clip(field, 0.6, 1.4) + rng.normal(0, 0.03, SPM_SHAPE), 0, 1)


def test_reference_distribution_is_recorded():
    assert REFERENCE_DISTRIBUTION["n"] >= 3
    assert "ants" in str(REFERENCE_DISTRIBUTION["source"]).lower()
    mean, sd = float(REFERENCE_DISTRIBUTION["mean"]), float(REFERENCE_DISTRIBUTION["sd"])
    values = [float(v) for v in REFERENCE_DISTRIBUTION["values"]]  # type: ignore[union-attr]
    assert len(values) == REFERENCE_DISTRIBUTION["n"]
    assert mean == pytest.approx(np.mean(values), abs=1e-4)
    assert sd == pytest.approx(np.std(values, ddof=1), abs=1e-4)
    assert pytest.approx(mean - 2 * sd, abs=1e-3) == GMV_CORRELATION_THRESHOLD
    assert 0.3 < GMV_CORRELATION_THRESHOLD < mean < 1.0


def test_plausible_map_passes(good):
    qc = compute_qc(_maps(good, qc={"registration_t1_correlation": 0.95, "modulation_volume_ratio": 1.01}))
    assert qc.passed, qc.metrics
    assert qc.metrics["gmv_template_correlation"] > GMV_CORRELATION_THRESHOLD
    assert qc.metrics["total_gmv_ml"] == pytest.approx(good.sum() * SPM_VOXEL_VOLUME_MM3 / 1000, rel=1e-4)
    assert qc.metrics["registration_t1_correlation"] == 0.95  # backend metrics are merged
    assert set(qc.thresholds) >= {"gmv_template_correlation", "gm_template_dice"}


@pytest.mark.parametrize(
    "name,broken",
    [
        ("shift 15 mm", lambda g: ndimage.shift(g, (10, 0, 0), order=1)),
        ("shift 12 mm up + 9 mm back", lambda g: ndimage.shift(g, (0, -6, 8), order=1)),
        ("left-right and up-down flip", lambda g: g[:, :, ::-1]),
        ("rotated 20 degrees", lambda g: ndimage.rotate(g, 20, axes=(1, 2), reshape=False, order=1)),
        ("shrunk to 75%", lambda g: ndimage.affine_transform(
            g, np.diag([1 / 0.75] * 3), offset=-(np.array(SPM_SHAPE) / 2) * (1 / 0.75 - 1), order=1)),
    ],
)
def test_failed_registration_is_flagged(good, name, broken):
    bad = np.clip(broken(good), 0, 1)
    qc = compute_qc(_maps(bad))
    assert not qc.passed, f"{name}: {qc.metrics}"
    assert "gmv_template_correlation" in qc.flags, f"{name}: r={qc.metrics['gmv_template_correlation']:.3f}"


def test_empty_and_nan_maps(good):
    qc = compute_qc(_maps(np.zeros(SPM_SHAPE)))
    assert {"gmv_template_correlation", "gm_template_dice", "total_gmv_ml"} <= set(qc.flags)
    nan = good.copy()
    nan[:10] = np.nan
    assert np.isfinite(compute_qc(_maps(nan)).metrics["gmv_template_correlation"])


def test_backend_flags(good):
    bad_registration = {"modulation_volume_ratio": 1.4, "jacobian_min": -0.2, "registration_t1_correlation": 0.5}
    qc = compute_qc(_maps(good, qc=bad_registration))
    assert {"modulation_volume_ratio", "jacobian_min", "registration_t1_correlation"} <= set(qc.flags)


def test_correlation_needs_grid():
    with pytest.raises(ValueError, match="SPM grid"):
        gmv_template_correlation(np.zeros((10, 10, 10)))


def test_mtl_dice_is_reported_not_a_check(good):
    """A map whose medial temporal lobe sits 3 mm off (the rest plausible) has a lower mtl_gm_dice, but
    so does a well-registered AD head: the value is reported, the local check is mtl_t1_correlation."""
    from bids_app.qc import MTL_DICE_THRESHOLD, mtl_gm_dice, mtl_mask

    assert mtl_gm_dice(good) > MTL_DICE_THRESHOLD
    qc = compute_qc(_maps(good))
    assert "mtl_gm_dice" in qc.metrics and "mtl_gm_dice" not in qc.thresholds
    missed = good.copy()
    roi = ndimage.binary_dilation(mtl_mask(), iterations=4)
    missed[roi] = np.roll(good, 2, axis=2)[roi]
    qc = compute_qc(_maps(missed))
    assert qc.metrics["mtl_gm_dice"] < MTL_DICE_THRESHOLD
    assert "mtl_gm_dice" not in qc.flags and "gmv_template_correlation" not in qc.flags


def test_mtl_t1_correlation_from_the_backend_is_the_local_check(good):
    from bids_app.qc import MTL_T1_THRESHOLD

    ok = compute_qc(_maps(good, qc={"mtl_t1_correlation": MTL_T1_THRESHOLD + 0.05}))
    assert "mtl_t1_correlation" not in ok.flags and ok.thresholds["mtl_t1_correlation"] == MTL_T1_THRESHOLD
    bad = compute_qc(_maps(good, qc={"mtl_t1_correlation": MTL_T1_THRESHOLD - 0.05}))
    assert bad.flags == ("mtl_t1_correlation",)

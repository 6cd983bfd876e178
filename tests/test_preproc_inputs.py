"""load_t1w: every bad input gives an InputDataError naming the file; good inputs of any layout load."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.errors import InputDataError, NoInputError
from bids_app.preproc.inputs import load_t1w


def _head(shape=(100, 115, 100), voxel=1.2, seed=0) -> np.ndarray:
    """An ellipsoidal 'head' with noise and layers (scalp, skull, grey and white matter): bright,
    big and varied enough inside to pass the head checks."""
    rng = np.random.default_rng(seed)
    c = [(s - 1) / 2 for s in shape]
    ijk = np.indices(shape, dtype=np.float32)
    r = sum(((ijk[a] - c[a]) * voxel / (r_mm)) ** 2 for a, r_mm in zip(range(3), (50.0, 60.0, 50.0)))
    inside = np.select([r < 0.35, r < 0.8, r < 0.9], [800.0, 500.0, 250.0], 900.0)
    data = np.where(r <= 1.0, inside, 5.0) + rng.normal(0, 10, shape)
    return data.astype(np.float32)


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None, voxel: float = 1.2) -> Path:
    if affine is None:
        affine = np.diag([voxel, voxel, voxel, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_accepts_nii_and_niigz(tmp_path, suffix):
    p = _save(tmp_path / f"t1{suffix}", _head())
    img = load_t1w(p)
    assert img.shape == (100, 115, 100)
    assert img.get_data_dtype() == np.float32


def test_accepts_oblique_lps_and_single_volume_4d(tmp_path):
    theta = np.deg2rad(17)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-0.9, -0.9, 1.1])  # LPS-like, oblique, anisotropic
    p = _save(tmp_path / "obl.nii.gz", _head((130, 150, 110), 0.9)[..., None], aff)
    img = load_t1w(p)
    assert img.ndim == 3 and np.allclose(img.affine, aff)


@pytest.mark.parametrize("voxel", [0.7, 1.0, 1.5])
def test_accepts_validated_voxel_sizes(tmp_path, voxel):
    shape = tuple(int(round(s / voxel)) for s in (110, 130, 110))
    p = _save(tmp_path / "v.nii", _head(shape, voxel), voxel=voxel)
    assert load_t1w(p).shape == shape


def test_missing_file(tmp_path):
    with pytest.raises(NoInputError, match="not found"):
        load_t1w(tmp_path / "nope.nii.gz")


def test_zero_byte(tmp_path):
    p = tmp_path / "sub-01_T1w.nii.gz"
    p.write_bytes(b"")
    with pytest.raises(InputDataError, match=r"sub-01_T1w\.nii\.gz: the file is empty"):
        load_t1w(p)


def test_corrupt_gzip(tmp_path):
    p = _save(tmp_path / "c.nii.gz", _head())
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\x00" * 64
    p.write_bytes(bytes(raw))
    with pytest.raises(InputDataError, match=r"c\.nii\.gz: the gzip stream is corrupt"):
        load_t1w(p)


def test_truncated_gzip(tmp_path):
    p = _save(tmp_path / "t.nii.gz", _head())
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(InputDataError, match=r"t\.nii\.gz: the gzip stream is corrupt or truncated"):
        load_t1w(p)


def test_truncated_uncompressed(tmp_path):
    p = _save(tmp_path / "t.nii", _head())
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputDataError, match=r"t\.nii: the image data cannot be read; the file is truncated"):
        load_t1w(p)


def test_not_a_nifti_header(tmp_path):
    p = tmp_path / "junk.nii.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(b"this is not a nifti header" * 20)
    with pytest.raises(InputDataError, match=r"junk\.nii\.gz: not a readable NIfTI header"):
        load_t1w(p)


def test_wrong_extension(tmp_path):
    p = tmp_path / "t1.mgz"
    p.write_bytes(b"x")
    with pytest.raises(InputDataError, match="expected a NIfTI file"):
        load_t1w(p)


def test_4d_series(tmp_path):
    p = _save(tmp_path / "four.nii.gz", np.stack([_head()] * 3, axis=-1))
    with pytest.raises(InputDataError, match=r"four\.nii\.gz: a 4D image with 3 volumes"):
        load_t1w(p)


@pytest.mark.parametrize("shape", [(200, 200), (200, 200, 1)])
def test_2d_image(tmp_path, shape):
    p = _save(tmp_path / "flat.nii.gz", np.ones(shape, np.float32))
    with pytest.raises(InputDataError, match=r"flat\.nii\.gz: a T1w must be a 3D volume"):
        load_t1w(p)


def test_nan_only(tmp_path):
    p = _save(tmp_path / "nan.nii.gz", np.full((100, 115, 100), np.nan, np.float32))
    with pytest.raises(InputDataError, match=r"nan\.nii\.gz: every voxel is NaN"):
        load_t1w(p)


def test_constant(tmp_path):
    p = _save(tmp_path / "const.nii.gz", np.full((100, 115, 100), 7.0, np.float32))
    with pytest.raises(InputDataError, match=r"const\.nii\.gz: every voxel has the same value \(7\)"):
        load_t1w(p)


def test_partial_nan_is_zeroed(tmp_path):
    data = _head()
    data[:5] = np.nan
    img = load_t1w(_save(tmp_path / "pn.nii.gz", data))
    assert np.isfinite(img.get_fdata()).all()


def test_singular_affine(tmp_path):
    # nibabel refuses to write a singular affine, so patch srow_z (bytes 312-323) of a valid file
    img = nib.Nifti1Image(_head(), np.diag([1.2, 1.2, 1.2, 1.0]))
    img.set_sform(img.affine, code=1)
    img.set_qform(None, code=0)
    p = tmp_path / "sing.nii"
    nib.save(img, str(p))
    raw = bytearray(p.read_bytes())
    raw[312:328] = np.zeros(4, "<f4").tobytes()
    p.write_bytes(bytes(raw))
    with pytest.raises(InputDataError, match=r"sing\.nii: the affine .* is singular"):
        load_t1w(p)


@pytest.mark.parametrize("voxel", [0.2, 5.0])
def test_voxel_size_out_of_range(tmp_path, voxel):
    shape = (int(200 / voxel),) * 3 if voxel > 1 else (64, 64, 64)
    data = _head(shape, voxel)
    p = _save(tmp_path / "vox.nii.gz", data, voxel=voxel)
    with pytest.raises(InputDataError, match=r"vox\.nii\.gz: voxel sizes .* outside the accepted range"):
        load_t1w(p)


def test_field_of_view_too_small(tmp_path):
    p = _save(tmp_path / "slab.nii.gz", _head((100, 115, 30)), voxel=1.2)  # 36 mm slab
    with pytest.raises(InputDataError, match=r"slab\.nii\.gz: the field of view .* too small to hold a head"):
        load_t1w(p)


def test_no_head_in_view(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(10, 1, (100, 100, 100)).astype(np.float32)
    data[45:55, 45:55, 45:55] = 1000.0  # a 1.7 ml bright blob: a phantom, not a head
    p = _save(tmp_path / "blob.nii.gz", data, voxel=1.2)
    with pytest.raises(InputDataError, match=r"blob\.nii\.gz: only \d+ ml of the field of view"):
        load_t1w(p)


def test_real_colin27_head_loads():
    ch2 = Path("/usr/share/mricron/templates/ch2.nii.gz")
    if not ch2.is_file():
        pytest.skip("mricron-data (Colin27 ch2.nii.gz) not installed")
    img = load_t1w(ch2)
    assert img.shape == (181, 217, 181)

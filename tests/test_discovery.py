"""pybids discovery: every T1w is one unit, with its entities carried into output names."""

from __future__ import annotations

from pathlib import Path

import pytest

from bids_app.discovery import discover_units
from bids_app.errors import NoMatchError

from .conftest import make_bids, tree_snapshot


def test_sessions_runs_acq_and_plain(tmp_path):
    bids = make_bids(
        tmp_path / "bids",
        ["sub-01_ses-1", "sub-01_ses-2", "sub-02_run-1", "sub-02_run-2", "sub-03", "sub-04_acq-mprage_rec-norm"],
    )
    before = tree_snapshot(bids)
    units = discover_units(bids)
    assert [u.prefix for u in units] == [
        "sub-01_ses-1", "sub-01_ses-2", "sub-02_run-1", "sub-02_run-2", "sub-03", "sub-04_acq-mprage_rec-norm",
    ]
    assert units[0].subdir == Path("sub-01/ses-1/anat") and units[4].subdir == Path("sub-03/anat")
    assert units[0].metadata["MagneticFieldStrength"] == 3  # inherited top-level sidecar
    assert tree_snapshot(bids) == before  # indexing wrote nothing into the input


def test_nii_uncompressed_and_filters(tmp_path):
    bids = make_bids(tmp_path / "bids", ["sub-01_ses-1", "sub-01_ses-2", "sub-02_ses-1"], ext=".nii")
    units = discover_units(bids, participant_labels=["01"], session_labels=["2"])
    assert [u.prefix for u in units] == ["sub-01_ses-2"]
    assert units[0].path.name.endswith("_T1w.nii")


def test_unknown_session_named(tmp_path):
    bids = make_bids(tmp_path / "bids", ["sub-01_ses-1"])
    with pytest.raises(NoMatchError, match=r"session label\(s\) '3'"):
        discover_units(bids, session_labels=["3"])


def test_session_of_another_participant_is_not_offered(tmp_path):
    bids = make_bids(tmp_path / "bids", ["sub-01_ses-1", "sub-02_ses-2"])
    with pytest.raises(NoMatchError, match=r"session label\(s\) '2'.*available: 1$"):
        discover_units(bids, participant_labels=["01"], session_labels=["2"])


def test_dataset_without_t1w(tmp_path):
    bids = make_bids(tmp_path / "bids", ["sub-01"])
    (bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz").rename(bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz")
    with pytest.raises(NoMatchError, match="no T1w image"):
        discover_units(bids)

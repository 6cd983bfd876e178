"""Synthetic cohorts with ground truth (see :mod:`bids_app.synth.simulate`)."""

from .simulate import (
    TRUTH_DIR,
    SiteParams,
    SubjectParams,
    draw_sites,
    draw_subjects,
    session_months,
    simulate_dataset,
    subject_at,
    truth_paths,
    truth_t1w_mni_path,
)

__all__ = [
    "SiteParams",
    "SubjectParams",
    "TRUTH_DIR",
    "draw_sites",
    "draw_subjects",
    "session_months",
    "simulate_dataset",
    "subject_at",
    "truth_paths",
    "truth_t1w_mni_path",
]

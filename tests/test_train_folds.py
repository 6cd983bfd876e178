"""Leave-sites-out folds: whole sites, whole participants, balanced; the inner validation split."""

from __future__ import annotations

import numpy as np
import pytest

from bids_app.errors import InputDataError, UsageError
from bids_app.train import allocate_sites, inner_validation_split, site_folds
from bids_app.train.folds import _imbalance


def _cohort(seed: int = 0, n_sites: int = 9):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(4, 30, n_sites)
    pids, sites, labels = [], [], []
    for s, n in enumerate(sizes):
        p_ad = rng.uniform(0.1, 0.7)
        for i in range(n):
            pid = f"sub-{s:02d}{i:03d}"
            lab = int(rng.random() < p_ad)
            for _run in range(1 + (i % 3 == 0)):  # some participants have two map pairs (sessions)
                pids.append(pid)
                sites.append(f"site{s}")
                labels.append(lab)
    return np.array(pids), np.array(sites), np.array(labels)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_never_share_a_site_or_a_participant(k: int) -> None:
    pids, sites, labels = _cohort()
    folds = site_folds(pids, sites, labels, k, n_allocations=500, seed=1)
    assert set(folds) == set(range(k))
    for f in range(k):
        test, train = folds == f, folds != f
        assert not set(sites[test]) & set(sites[train])
        assert not set(pids[test]) & set(pids[train])


def test_most_balanced_allocation_beats_random_ones() -> None:
    pids, sites, labels = _cohort(seed=3)
    names = sorted(set(sites))
    site_n = np.array([(sites == s).sum() for s in names], float)
    site_pos = np.array([labels[sites == s].sum() for s in names], float)
    best = allocate_sites(sites, labels, 3, n_allocations=2000, seed=0)
    best_score = _imbalance(np.array([best[s] for s in names]), site_n, site_pos, 3)
    rng = np.random.default_rng(1)
    random_scores = [_imbalance(rng.integers(0, 3, len(names)), site_n, site_pos, 3) for _ in range(200)]
    assert best_score <= np.min(random_scores)
    assert allocate_sites(sites, labels, 3, n_allocations=2000, seed=0) == best  # deterministic


def test_refuses_too_few_sites_and_a_participant_at_two_sites() -> None:
    with pytest.raises(UsageError, match="needs at least 3 sites"):
        site_folds(["a", "b"], ["s1", "s2"], [0, 1], 3)
    with pytest.raises(InputDataError, match="sub-1 appears with two sites"):
        site_folds(["sub-1", "sub-1", "sub-2"], ["s1", "s2", "s2"], [0, 0, 1], 2)


def test_inner_validation_split_keeps_participants_whole_and_stratifies() -> None:
    pids, sites, labels = _cohort(seed=5)
    val = inner_validation_split(pids, labels, 0.2, seed=0)
    assert not set(pids[val]) & set(pids[~val])
    for cls in (0, 1):
        n_cls = len(set(pids[labels == cls]))
        n_val = len(set(pids[val & (labels == cls)]))
        assert n_val == max(1, round(0.2 * n_cls))

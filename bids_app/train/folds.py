"""Leave-sites-out folds: whole sites go to one fold, folds as balanced as chance allows.

Why: a model validated on participants from the sites it was trained on learns the scanners as much
as the brains, so the reference system (Lu et al. 2022) validated leaving whole sites out and chose,
among 10,000 random allocations of sites to 5 folds, the most balanced one. Balance here is the
spread of fold sizes plus the spread of the positive-class fraction over folds (both relative),
so every fold can be scored with sensitivity and specificity.

A participant belongs to exactly one site (checked), so no participant is ever split across folds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import InputDataError, UsageError

__all__ = ["allocate_sites", "site_folds", "inner_validation_split"]


def _imbalance(assign: np.ndarray, site_n: np.ndarray, site_pos: np.ndarray, k: int) -> float:
    n = np.bincount(assign, weights=site_n, minlength=k)
    pos = np.bincount(assign, weights=site_pos, minlength=k)
    if (n == 0).any():
        return np.inf
    frac = pos / n
    overall = site_pos.sum() / max(site_n.sum(), 1)
    size_term = n.std() / n.mean()
    frac_term = np.abs(frac - overall).max() / max(min(overall, 1 - overall), 1e-6)
    return float(size_term + frac_term)


def allocate_sites(
    sites: ArrayLike,
    labels: ArrayLike,
    k: int,
    *,
    n_allocations: int = 10000,
    seed: int = 0,
) -> dict[str, int]:
    """Map each site to a fold 0..k-1: the most balanced of ``n_allocations`` random allocations.

    ``sites`` and ``labels`` (0/1) are per participant. Raises UsageError when there are fewer
    sites than folds.
    """
    site_of = np.asarray(sites, dtype=object)
    y = np.asarray(labels, dtype=float)
    names = sorted(set(site_of.tolist()))
    if k < 2:
        raise UsageError(f"--folds must be at least 2, got {k}")
    if len(names) < k:
        raise UsageError(
            f"leave-sites-out with {k} folds needs at least {k} sites; the data have {len(names)} ({', '.join(names)})"
        )
    site_n = np.array([(site_of == s).sum() for s in names], dtype=float)
    site_pos = np.array([y[site_of == s].sum() for s in names], dtype=float)
    rng = np.random.default_rng(seed)
    best, best_score = None, np.inf
    for _ in range(int(n_allocations)):
        # every fold gets at least one site: a random permutation dealt round-robin for the first k,
        # the rest uniformly at random
        perm = rng.permutation(len(names))
        assign = np.empty(len(names), dtype=int)
        assign[perm[:k]] = np.arange(k)
        assign[perm[k:]] = rng.integers(0, k, len(names) - k)
        score = _imbalance(assign, site_n, site_pos, k)
        if score < best_score:
            best, best_score = assign.copy(), score
    assert best is not None
    return {s: int(f) for s, f in zip(names, best)}


def site_folds(
    participant_ids: ArrayLike,
    sites: ArrayLike,
    labels: ArrayLike,
    k: int,
    *,
    n_allocations: int = 10000,
    seed: int = 0,
) -> np.ndarray:
    """Fold index (0..k-1) of every row, whole sites per fold.

    Rows are map pairs (a participant may have several sessions / runs); a participant listed
    with two different sites is refused, so a participant can never be in two folds.
    """
    pids = np.asarray(participant_ids, dtype=object)
    site_of = np.asarray(sites, dtype=object)
    seen: dict[str, str] = {}
    for p, s in zip(pids, site_of):
        if seen.setdefault(p, s) != s:
            raise InputDataError(
                f"participant {p} appears with two sites ({seen[p]!r} and {s!r}); one site per participant"
            )
    # one vote per participant, not per map, for the balance
    first = {p: i for i, p in reversed(list(enumerate(pids)))}
    idx = np.array(sorted(first.values()))
    mapping = allocate_sites(site_of[idx], np.asarray(labels)[idx], k, n_allocations=n_allocations, seed=seed)
    return np.array([mapping[s] for s in site_of], dtype=int)


def inner_validation_split(
    participant_ids: ArrayLike,
    labels: ArrayLike,
    fraction: float,
    *,
    seed: int = 0,
) -> np.ndarray:
    """Boolean mask of rows for validation (best-epoch choice), whole participants, stratified.

    Taken from the training sites only, so the test sites of a fold are never used for training
    or for model selection. At least one participant of each class goes to validation when the
    class has two or more participants.
    """
    pids = np.asarray(participant_ids, dtype=object)
    y = np.asarray(labels, dtype=int)
    rng = np.random.default_rng(seed)
    per_pid: dict[Any, int] = {}
    for p, lab in zip(pids, y):
        per_pid.setdefault(p, lab)
    chosen: set = set()
    for cls in (0, 1):
        members = sorted(p for p, lab in per_pid.items() if lab == cls)
        if len(members) < 2:
            continue
        n_val = max(1, int(round(fraction * len(members))))
        n_val = min(n_val, len(members) - 1)
        chosen.update(rng.choice(members, size=n_val, replace=False).tolist())
    return np.array([p in chosen for p in pids], dtype=bool)

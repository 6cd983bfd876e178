"""Leave-sites-out folds: whole sites go to one fold, folds as balanced as chance allows.

Why: a model validated on participants from the sites it was trained on learns the scanners as much
as the brains, so the reference system (Lu et al. 2022) validated leaving whole sites out and chose,
among 10,000 random allocations of sites to 5 folds, the most balanced one. Balance here is the
spread of fold sizes plus the largest spread of a class fraction over folds (both relative),
so every fold can be scored with sensitivity and specificity. The same score balances any task:

* binary: classes 0 / 1 (the positive fraction, as the reference system);
* multi-class: every class's fraction (CN, MCI and AD all present in every fold as far as the
  sites allow);
* regression: the fractions of the target's quartile bins, so every fold spans the target's range
  (a fold of only old participants would score brain age on a range it never trained on).

Unlabelled rows (NaN) count for the fold sizes, not for the class fractions.

A participant belongs to exactly one site (checked), so no participant is ever split across folds.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ..errors import InputDataError, UsageError

__all__ = ["allocate_sites", "site_folds", "inner_validation_split", "nested_subsets", "strata"]

TaskKind = Literal["binary", "multiclass", "regression"]


def _imbalance_counts(assign: np.ndarray, site_counts: np.ndarray, site_n: np.ndarray, k: int) -> float:
    """Relative spread of fold sizes + the largest relative deviation of a class fraction in a fold."""
    n = np.bincount(assign, weights=site_n, minlength=k)
    if (n == 0).any():
        return np.inf
    counts = np.stack([np.bincount(assign, weights=site_counts[:, c], minlength=k)
                       for c in range(site_counts.shape[1])], axis=1)
    labelled = counts.sum(axis=1)
    total = site_counts.sum()
    overall = site_counts.sum(axis=0) / max(total, 1)
    frac = counts / np.maximum(labelled, 1)[:, None]
    size_term = n.std() / n.mean()
    frac_term = (np.abs(frac - overall[None, :]) / np.maximum(np.minimum(overall, 1 - overall), 1e-6)[None, :]).max()
    return float(size_term + frac_term)


def _imbalance(assign: np.ndarray, site_n: np.ndarray, site_pos: np.ndarray, k: int) -> float:
    """Binary balance: fold sizes and positive fraction (negatives = every other row of the site)."""
    return _imbalance_counts(assign, np.stack([site_n - site_pos, site_pos], axis=1), site_n, k)


def strata(labels: ArrayLike, kind: TaskKind, n_bins: int = 4) -> np.ndarray:
    """Class per row (binary / multiclass) or quartile bin of the target (regression); NaN = unlabelled."""
    from .heads import quantile_bins

    y = np.asarray(labels, dtype=float)
    if kind not in ("binary", "multiclass", "regression"):
        raise UsageError(f"fold balance kind must be binary, multiclass or regression; got {kind!r}")
    return quantile_bins(y, n_bins) if kind == "regression" else y


def allocate_sites(
    sites: ArrayLike,
    labels: ArrayLike,
    k: int,
    *,
    n_allocations: int = 10000,
    seed: int = 0,
    kind: TaskKind = "binary",
) -> dict[str, int]:
    """Map each site to a fold 0..k-1: the most balanced of ``n_allocations`` random allocations.

    ``sites`` and ``labels`` are per participant: 0/1 (binary), class indices (multiclass) or the
    target values (regression), NaN where unknown. Raises UsageError when there are fewer sites
    than folds.
    """
    site_of = np.asarray(sites, dtype=object)
    y = strata(labels, kind)
    names = sorted(set(site_of.tolist()))
    if k < 2:
        raise UsageError(f"--folds must be at least 2, got {k}")
    if len(names) < k:
        raise UsageError(
            f"leave-sites-out with {k} folds needs at least {k} sites; the data have {len(names)} ({', '.join(names)})"
        )
    site_n = np.array([(site_of == s).sum() for s in names], dtype=float)
    if kind == "binary":
        site_pos = np.array([np.nansum(y[site_of == s]) for s in names], dtype=float)
        site_counts = np.stack([site_n - site_pos, site_pos], axis=1)
    else:
        classes = np.unique(y[np.isfinite(y)])
        site_counts = np.array([[((site_of == s) & (y == c)).sum() for c in classes] for s in names], dtype=float)
        if site_counts.shape[1] == 0:
            site_counts = np.zeros((len(names), 1))
    rng = np.random.default_rng(seed)
    best, best_score = None, np.inf
    for _ in range(int(n_allocations)):
        # every fold gets at least one site: a random permutation dealt round-robin for the first k,
        # the rest uniformly at random
        perm = rng.permutation(len(names))
        assign = np.empty(len(names), dtype=int)
        assign[perm[:k]] = np.arange(k)
        assign[perm[k:]] = rng.integers(0, k, len(names) - k)
        score = _imbalance_counts(assign, site_counts, site_n, k)
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
    kind: TaskKind = "binary",
) -> np.ndarray:
    """Fold index (0..k-1) of every row, whole sites per fold, balanced for ``kind`` (see the module).

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
    mapping = allocate_sites(site_of[idx], np.asarray(labels, dtype=float)[idx], k, n_allocations=n_allocations,
                             seed=seed, kind=kind)
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
    or for model selection. ``labels`` are strata: classes, or quantile bins of a continuous
    target (:func:`strata`); NaN is a stratum of its own. At least one participant of each stratum
    goes to validation when the stratum has two or more participants.
    """
    pids = np.asarray(participant_ids, dtype=object)
    y = np.asarray(labels, dtype=float)
    rng = np.random.default_rng(seed)
    per_pid: dict[Any, float] = {}
    for p, lab in zip(pids, y):
        per_pid.setdefault(p, -1.0 if np.isnan(lab) else float(lab))
    chosen: set = set()
    for cls in sorted(set(per_pid.values())):
        members = sorted(p for p, lab in per_pid.items() if lab == cls)
        if len(members) < 2:
            continue
        n_val = max(1, int(round(fraction * len(members))))
        n_val = min(n_val, len(members) - 1)
        chosen.update(rng.choice(members, size=n_val, replace=False).tolist())
    return np.array([p in chosen for p in pids], dtype=bool)


def nested_subsets(participant_ids: ArrayLike, sizes: Sequence[int], *, seed: int = 0) -> list[np.ndarray]:
    """Row masks of nested random subsets holding ``sizes`` participants (whole participants).

    One seeded permutation of the participants; the subset of size n is its first n, so every
    smaller subset lies inside every larger one (a learning curve then measures the added data,
    not a new draw). A size beyond the participants available gives all of them.
    """
    pids = np.asarray(participant_ids, dtype=object)
    unique = sorted(set(pids.tolist()))
    order = np.random.default_rng(seed).permutation(len(unique))
    out = []
    for n in sizes:
        if n < 1:
            raise UsageError(f"--sample-sizes must be >= 1; got {n}")
        keep = {unique[i] for i in order[: int(n)]}
        out.append(np.array([p in keep for p in pids], dtype=bool))
    return out

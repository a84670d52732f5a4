"""Test-retest agreement of tract measurements across scans of one head.

Plain functions on numbers and arrays, used by ``benchmarks/retest.py``:

* :func:`coefficient_of_variation` and :func:`max_deviation` of a measure across scans;
* :func:`median_pairwise_correlation` of along-tract profiles (Pearson r over the nodes
  every profile of the pair covers);
* :func:`weighted_dice` of two bundle density maps on one grid, as in Cohen-Adad et al.
  (2011) and Kruper et al. (2021, "Evaluating the reliability of human brain white matter
  tractometry"): each map is normalised to sum 1, and the overlap is the share of both
  maps' weight that lies in voxels both maps visit;
* :func:`atlas_profile`: a scalar map averaged inside a probabilistic atlas tract, level by
  level in MNI z, with no tractography: a reference for how much the maps themselves differ
  between scans where the tract runs.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np


def dice(a: np.ndarray, b: np.ndarray, empty: float = float("nan")) -> float:
    """Dice overlap 2|A∩B| / (|A|+|B|) of two boolean masks; ``empty`` when both are empty."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / total) if total else float(empty)


def coefficient_of_variation(values) -> float:
    """Sample standard deviation over the mean (a fraction, not %); NaN for a mean of 0."""
    x = np.asarray(values, float)
    mean = x.mean()
    return float(x.std(ddof=1) / mean) if len(x) > 1 and mean != 0 else float("nan")


def max_deviation(values) -> float:
    """Largest ``|value / mean - 1|`` across the values (a fraction)."""
    x = np.asarray(values, float)
    mean = x.mean()
    return float(np.max(np.abs(x / mean - 1))) if mean != 0 else float("nan")


def median_pairwise_correlation(profiles) -> float:
    """Median Pearson r over all pairs of profiles (each a 1-D array of nodes).

    Nodes that are NaN in either profile of a pair are left out of that pair; a pair with
    fewer than 3 common nodes, or a constant profile, gives NaN (ignored by the median).
    """
    rows = [np.asarray(p, float) for p in profiles]
    rs = []
    for a, b in combinations(rows, 2):
        both = np.isfinite(a) & np.isfinite(b)
        if both.sum() < 3 or np.std(a[both]) == 0 or np.std(b[both]) == 0:
            rs.append(np.nan)
            continue
        rs.append(float(np.corrcoef(a[both], b[both])[0, 1]))
    rs = np.asarray(rs)
    return float(np.nanmedian(rs)) if np.isfinite(rs).any() else float("nan")


def weighted_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Weighted Dice of two non-negative density maps on the same grid (1: identical shape).

    ``sum over voxels where both > 0 of (a' + b') / 2`` with ``a' = a / sum(a)`` and
    ``b' = b / sum(b)``; 0 when either map is empty.
    """
    a = np.clip(np.nan_to_num(np.asarray(a, float)), 0, None)
    b = np.clip(np.nan_to_num(np.asarray(b, float)), 0, None)
    if a.shape != b.shape:
        raise ValueError(f"density maps of shapes {a.shape} and {b.shape} are not on one grid")
    sa, sb = a.sum(), b.sum()
    if sa == 0 or sb == 0:
        return 0.0
    both = (a > 0) & (b > 0)
    return float((a[both] / sa).sum() / 2 + (b[both] / sb).sum() / 2)


def median_pairwise_weighted_dice(maps) -> float:
    """Median :func:`weighted_dice` over all pairs of density maps."""
    return float(np.median([weighted_dice(a, b) for a, b in combinations(list(maps), 2)]))


def atlas_profile(scalar_mni: np.ndarray, prior_mni: np.ndarray, z_mm: np.ndarray,
                  z_start: float, z_end: float) -> np.ndarray:
    """Probability-weighted mean of a scalar map in each axial level of an atlas tract.

    Parameters
    ----------
    scalar_mni, prior_mni : ndarray, (X, Y, Z)
        A scalar map (e.g. FA) and the tract's probability map (0-1), on one MNI grid whose
        third voxel axis is MNI z (an axial grid such as the template's).
    z_mm : ndarray, (Z,)
        MNI z (mm) of each level of that grid.
    z_start, z_end : float
        The levels kept, MNI mm (both included).

    Returns
    -------
    profile : ndarray
        One value per level kept, inferior to superior: ``sum(p * s) / sum(p)`` over the
        level's voxels with a finite scalar (NaN where the tract has no weight).
    """
    scalar = np.asarray(scalar_mni, float)
    prior = np.clip(np.nan_to_num(np.asarray(prior_mni, float)), 0, None)
    if scalar.shape != prior.shape or scalar.ndim != 3 or len(z_mm) != scalar.shape[2]:
        raise ValueError(f"maps of shapes {scalar.shape} and {prior.shape} with {len(z_mm)} levels are not one axial grid")
    prior = np.where(np.isfinite(scalar), prior, 0.0)
    keep = np.flatnonzero((np.asarray(z_mm) >= z_start) & (np.asarray(z_mm) <= z_end))
    keep = keep[np.argsort(np.asarray(z_mm)[keep])]
    weight = prior[:, :, keep].sum(axis=(0, 1))
    total = (prior * np.nan_to_num(scalar))[:, :, keep].sum(axis=(0, 1))
    return np.divide(total, weight, out=np.full(len(keep), np.nan), where=weight > 0)

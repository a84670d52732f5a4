"""Test-retest agreement of tract measurements across scans of one head.

Plain functions on numbers and arrays, used by ``benchmarks/retest.py``:

* :func:`coefficient_of_variation` and :func:`max_deviation` of a measure across scans;
* :func:`median_pairwise_correlation` of along-tract profiles (Pearson r over the nodes
  every profile of the pair covers);
* :func:`weighted_dice` of two bundle density maps on one grid, as in Cohen-Adad et al.
  (2011) and Kruper et al. (2021, "Evaluating the reliability of human brain white matter
  tractometry"): each map is normalised to sum 1, and the overlap is the share of both
  maps' weight that lies in voxels both maps visit.
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

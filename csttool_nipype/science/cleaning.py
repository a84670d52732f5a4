"""AFQ-style outlier removal of a bundle's streamlines (Yeatman et al., 2012)."""

from __future__ import annotations

import logging

import numpy as np

from .streamlines import resample_streamlines

__all__ = ["POSITION_FLOOR_MM", "clean_bundle", "node_mahalanobis"]

LOGGER = logging.getLogger(__name__)

#: Positional uncertainty (mm) added in quadrature to each node's covariance before
#: Mahalanobis distances are taken, so that a bundle whose streamlines end within a
#: fraction of a voxel of each other does not turn sub-voxel differences into outliers.
POSITION_FLOOR_MM = 1.0


def node_mahalanobis(resampled: np.ndarray, floor_mm: float = POSITION_FLOOR_MM) -> np.ndarray:
    """Mahalanobis distance of every streamline node from the bundle's node cloud.

    Parameters
    ----------
    resampled : ndarray, shape (N, n_nodes, 3)
        Oriented, resampled streamlines in mm.
    floor_mm : float
        Isotropic standard deviation (mm) added to every node covariance; keeps the
        distance finite and meaningful when the node cloud is flat.

    Returns
    -------
    distance : ndarray, shape (N, n_nodes)
        Dimensionless (standard deviations). Zero for a single streamline.
    """
    resampled = np.asarray(resampled, float)
    n = resampled.shape[0]
    if n < 2:
        return np.zeros(resampled.shape[:2])
    mean = resampled.mean(axis=0)  # (n_nodes, 3)
    delta = resampled - mean
    cov = np.einsum("snj,snk->njk", delta, delta) / n + (float(floor_mm) ** 2) * np.eye(3)
    inv = np.linalg.inv(cov)
    d2 = np.einsum("snj,njk,snk->sn", delta, inv, delta)
    return np.sqrt(np.maximum(d2, 0.0))



def clean_bundle(
    bundle,
    *,
    n_points: int = 100,
    distance_threshold: float = 4.0,
    length_threshold: float = 4.0,
    rounds: int = 5,
    min_streamlines: int = 20,
    floor_mm: float = POSITION_FLOOR_MM,
) -> np.ndarray:
    """AFQ-style outlier removal; returns the indices of the streamlines kept.

    Each round resamples the (consistently oriented) streamlines to ``n_points``
    nodes and drops those whose length is more than ``length_threshold`` standard
    deviations from the mean length, or any of whose nodes lies more than
    ``distance_threshold`` from the other streamlines' nodes in Mahalanobis distance
    (see :func:`node_mahalanobis`). Rounds stop when nothing is dropped, after
    ``rounds`` rounds, or before a round would leave fewer than ``min_streamlines``
    (the bundle is then returned as it was before that round; a bundle already that
    small is returned whole).

    Returns
    -------
    indices : ndarray of int
        Positions in ``bundle`` of the streamlines kept, ascending.
    """
    idx = np.arange(len(bundle))
    if len(idx) <= min_streamlines:
        return idx
    resampled_all = resample_streamlines(bundle, n_points)
    lengths_all = np.linalg.norm(np.diff(resampled_all, axis=1), axis=2).sum(axis=1)
    for round_no in range(int(rounds)):
        resampled = resampled_all[idx]
        lengths = lengths_all[idx]
        sd = lengths.std()
        z = np.abs(lengths - lengths.mean()) / sd if sd > 0 else np.zeros_like(lengths)
        dist = node_mahalanobis(resampled, floor_mm).max(axis=1)
        ok = (z <= length_threshold) & (dist <= distance_threshold)
        if ok.all():
            break
        if ok.sum() < min_streamlines:
            LOGGER.info("cleaning round %d would leave %d < %d streamlines; stopped", round_no + 1,
                        int(ok.sum()), min_streamlines)
            break
        LOGGER.debug("cleaning round %d: %d -> %d streamlines", round_no + 1, len(idx), int(ok.sum()))
        idx = idx[ok]
    return idx

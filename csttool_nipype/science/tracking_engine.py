"""The tracking engine: dipy's serial ``LocalTracking`` over blocks of seeds, in forked processes.

Every seed is tracked on its own (dipy's LocalTracking keeps no state between seeds; the
probabilistic getter re-seeds its generator from each seed position), so splitting the
seeds into blocks, tracking them in ``n_jobs`` forked workers and joining the blocks in
seed order gives exactly the serial result. Streamlines are kept packed
(:mod:`csttool_nipype.science.streamlines`) and filtered by arc length without a Python
loop per streamline.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from .streamlines import packed_lengths, run_rows

__all__ = ["TrackingJob", "run_tracking", "trim_ends"]

LOGGER = logging.getLogger(__name__)


class TrackingJob:
    """Everything a worker needs to track a block of seeds (inherited by forked workers)."""

    def __init__(self, getter, criterion, affine, step_size, max_points, random_seed, min_length, max_length):
        self.getter = getter
        self.criterion = criterion
        self.affine = affine
        self.step_size = step_size
        self.max_points = max_points
        self.random_seed = random_seed
        self.min_length = min_length
        self.max_length = max_length
        self.seeds = None  # set while forked workers run


#: The job of the running :func:`csttool_nipype.science.tracking.track` call, read by forked worker processes.
_JOB: TrackingJob | None = None

#: Streamline lengths closer than this (mm) to a length limit are summed again the way
#: a single streamline is (``np.linalg.norm(np.diff(s), axis=1).sum()``), so the keep
#: or drop decision never depends on how the segment lengths were added up.
_LENGTH_RECHECK_MM = 1e-6


def _track_block(job: TrackingJob, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Track ``seeds`` with dipy's LocalTracking; keep the streamlines within the length limits.

    Returns the kept streamlines packed as (points (P, 3) float64 world mm, point counts
    (N,)) in seed order, and the number of streamlines tracked.
    """
    from dipy.tracking.local_tracking import LocalTracking

    with warnings.catch_warnings():
        # dipy 1.12 deprecates PeaksAndMetrics in LocalTracking in favour of its
        # multi-threaded tracker API, whose EuDX tracker does not give the same
        # streamlines (other stopping rule at the ends); the serial LocalTracking is kept
        # for its exact, documented behaviour (pinned dipy < 1.13). The legacy-basis note
        # comes from the probabilistic getter (see _csa_direction_getter).
        warnings.filterwarnings("ignore", message=".*EuDXDirectionGetter.*")
        warnings.filterwarnings("ignore", message=".*legacy descoteaux07.*")
        tracker = LocalTracking(
            job.getter,
            job.criterion,
            seeds,
            job.affine,
            step_size=job.step_size,
            max_cross=1,
            maxlen=job.max_points,
            return_all=True,
            random_seed=job.random_seed,
        )
        # Every streamline is a fresh float64 array (dipy maps each to world space with
        # its own np.dot), so collecting them needs no copy.
        tracked = []
        n_total = 0
        for sl in tracker:
            n_total += 1
            if len(sl) >= 2:
                tracked.append(sl)
    if not tracked:
        return np.zeros((0, 3)), np.zeros(0, dtype=np.intp), n_total
    counts = np.fromiter((len(sl) for sl in tracked), dtype=np.intp, count=len(tracked))
    points = np.concatenate(tracked)
    del tracked
    points, counts = _within_lengths(points, counts, job.min_length, job.max_length)
    return points, counts, n_total


def _within_lengths(points: np.ndarray, counts: np.ndarray, min_length_mm: float,
                    max_length_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The packed streamlines whose arc length (mm) is within the limits, in order.

    Lengths within :data:`_LENGTH_RECHECK_MM` of a limit are summed again streamline by
    streamline, as dipy's ``length`` does, so the packed sum's rounding never decides.
    """
    if len(counts) == 0:
        return points, counts
    lengths = packed_lengths(points, counts)
    keep = (lengths >= min_length_mm) & (lengths <= max_length_mm)
    near = (np.abs(lengths - min_length_mm) < _LENGTH_RECHECK_MM) | (
        np.abs(lengths - max_length_mm) < _LENGTH_RECHECK_MM)
    if near.any():
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for i in np.flatnonzero(near):
            sl = points[offsets[i]:offsets[i] + counts[i]]
            length = float(np.linalg.norm(np.diff(sl, axis=0), axis=1).sum())
            keep[i] = min_length_mm <= length <= max_length_mm
    if keep.all():
        return points, counts
    return points[np.repeat(keep, counts)], counts[keep]


def trim_ends(points: np.ndarray, counts: np.ndarray, fa: np.ndarray, affine: np.ndarray, threshold: float,
               min_length_mm: float, max_length_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Packed streamlines cut back to their outermost points where ``fa`` > ``threshold``
    (trilinear, world points through ``affine``); those then outside the length limits
    (:func:`_within_lengths`) or with fewer than two points are dropped. Order is kept."""
    from scipy import ndimage

    if len(counts) == 0:
        return points, counts
    counts = np.asarray(counts, dtype=np.intp)
    starts = np.cumsum(counts) - counts
    ids = np.repeat(np.arange(len(counts)), counts)
    local = np.arange(len(points), dtype=np.intp) - starts[ids]
    inv = np.linalg.inv(affine)
    vox = np.asarray(points, np.float64) @ inv[:3, :3].T + inv[:3, 3]
    above = ndimage.map_coordinates(fa, vox.T, order=1, mode="constant", cval=0.0, prefilter=False) > threshold
    first = np.full(len(counts), -1, dtype=np.intp)
    last = np.full(len(counts), -1, dtype=np.intp)
    hit_ids = ids[above]
    # points are in order: the first hit of a streamline is where its id first appears
    uniq, first_pos = np.unique(hit_ids, return_index=True)
    first[uniq] = local[above][first_pos]
    np.maximum.at(last, hit_ids, local[above])
    keep = (first >= 0) & (last > first)
    new_counts = (last - first + 1)[keep]
    points = points[run_rows(starts[keep] + first[keep], new_counts)]
    return _within_lengths(points, new_counts, min_length_mm, max_length_mm)


def _track_block_of_job(bounds: tuple[int, int]):
    """Worker entry point: track seeds ``bounds[0]:bounds[1]`` of the running job."""
    job = _JOB
    return _track_block(job, job.seeds[bounds[0]:bounds[1]])


def run_tracking(job: TrackingJob, seeds: np.ndarray, n_jobs: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Track all seeds, in ``n_jobs`` forked worker processes when more than one.

    Every seed is tracked on its own (dipy's LocalTracking keeps no state between seeds;
    the probabilistic getter re-seeds its generator from each seed position), so
    splitting the seeds into blocks and joining the blocks' streamlines in seed order
    gives exactly the serial result.
    """
    global _JOB
    n_jobs = max(1, int(n_jobs or 1))
    n_seeds = len(seeds)
    if n_jobs > 1 and n_seeds >= 2 * n_jobs:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        try:
            ctx = mp.get_context("fork")
        except ValueError:  # no fork on this platform: serial
            ctx = None
        if ctx is not None:
            n_blocks = min(n_seeds, 8 * n_jobs)  # several blocks per worker balance the load
            edges = np.linspace(0, n_seeds, n_blocks + 1).round().astype(int)
            bounds = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
            job.seeds = seeds
            _JOB = job
            try:
                with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
                    parts = list(pool.map(_track_block_of_job, bounds))
            except (OSError, RuntimeError, AssertionError) as exc:  # e.g. no process may be started here
                LOGGER.warning("parallel tracking unavailable (%s); tracking in one process", exc)
                parts = None
            finally:
                _JOB = None
                job.seeds = None
            if parts is not None:
                points = np.concatenate([p[0] for p in parts])
                counts = np.concatenate([p[1] for p in parts]).astype(np.intp)
                return points, counts, int(sum(p[2] for p in parts))
    return _track_block(job, seeds)



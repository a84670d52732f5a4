"""Streamlines as packed arrays, and the helpers every streamline module shares.

A tractogram of 10^5 streamlines is handled as one float64 point array (world RAS+ mm)
plus per-streamline point counts ("packed"), never as a list of small arrays:
:class:`Packed` adds the streamline id of every point and is shared by the tracking,
extraction, profile and trk modules. :class:`VoxelLookup` finds the nearest voxel of every
point once and answers several ROI tests with it.
"""

from __future__ import annotations

import numpy as np
from nibabel.streamlines import ArraySequence

__all__ = [
    "Packed",
    "VoxelLookup",
    "any_per_streamline",
    "densify",
    "in_roi",
    "packed_lengths",
    "packed_points",
    "packed_sequence",
    "resample_streamlines",
    "run_rows",
    "streamline_lengths",
    "voxel_index",
]


def packed_points(streamlines) -> tuple[np.ndarray, np.ndarray]:
    """All points of ``streamlines`` as one new float64 (P, 3) array, and the point counts."""
    if isinstance(streamlines, ArraySequence):
        counts = np.asarray(streamlines._lengths, dtype=np.intp)
        if len(counts) == 0:
            return np.zeros((0, 3)), counts
        data = streamlines._data
        compact = (data.ndim == 2 and data.shape[1] == 3 and data.shape[0] == counts.sum()
                   and np.array_equal(streamlines._offsets, np.cumsum(counts) - counts))
        if not compact:  # a sliced view or a sequence built out of order: gather in order
            data = streamlines.copy()._data
        return np.array(data, dtype=np.float64), counts
    arrays = [np.asarray(s, np.float64).reshape(-1, 3) for s in streamlines]
    counts = np.array([len(a) for a in arrays], dtype=np.intp)
    return (np.concatenate(arrays) if arrays else np.zeros((0, 3))), counts



def packed_sequence(points: np.ndarray, counts: np.ndarray) -> ArraySequence:
    """An ArraySequence over packed points (no copy) with the given point counts."""
    seq = ArraySequence()
    if len(counts) == 0:
        return seq
    counts = np.asarray(counts, dtype=np.intp)
    seq._data = np.ascontiguousarray(points, dtype=np.float64)
    seq._lengths = counts
    seq._offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
    return seq


def run_rows(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Row indices of consecutive runs: ``counts[i]`` rows from ``starts[i]``, run after run."""
    counts = np.asarray(counts, dtype=np.intp)
    out_starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum()), dtype=np.intp) + np.repeat(np.asarray(starts, np.intp) - out_starts, counts)



def packed_lengths(points: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Arc length of each packed streamline (at least two points each)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    ends = np.cumsum(counts)
    seg[ends[:-1] - 1] = 0.0  # segment k joins points k and k+1: not those between two streamlines
    return np.add.reduceat(seg, ends - counts)



def streamline_lengths(streamlines) -> np.ndarray:
    """Arc length of each streamline.

    Parameters
    ----------
    streamlines : ArraySequence or sequence of (n_i, 3) arrays
        Points in millimetres.

    Returns
    -------
    lengths : ndarray, shape (n_streamlines,)
        Sum of the segment lengths, in mm (0 for a single point).
    """
    if not isinstance(streamlines, ArraySequence):
        return np.array(
            [float(np.linalg.norm(np.diff(np.asarray(s, float), axis=0), axis=1).sum()) for s in streamlines],
            dtype=float,
        )
    points, counts = packed_points(streamlines)
    # Segment lengths of all points at once; each streamline's own segments are then
    # summed by the same reduction as above (a contiguous float64 slice), so the
    # lengths are the same to the last bit.
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1) if len(points) > 1 else np.zeros(0)
    starts = np.cumsum(counts) - counts
    return np.array([float(seg[a:a + max(int(c) - 1, 0)].sum()) for a, c in zip(starts.tolist(), counts.tolist())],
                    dtype=float)


class Packed:
    """Streamlines as one float64 point array, with per-point streamline ids.

    ``points`` (P, 3) float64 (world mm, each streamline's points in order, streamlines
    in order), ``counts`` (N,) points per streamline, ``starts`` (N,) index of each
    streamline's first point, ``ids`` (P,) streamline of each point. Built once and
    shared by the extraction steps instead of re-flattening the streamlines for every
    ROI test.
    """

    __slots__ = ("points", "counts", "starts", "ids", "_lengths")

    def __init__(self, points: np.ndarray, counts: np.ndarray):
        self.points = points
        self.counts = np.asarray(counts, dtype=np.intp)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.intp)
        self.ids = np.repeat(np.arange(len(self.counts)), self.counts)
        self._lengths = None

    def __len__(self) -> int:
        return len(self.counts)

    @classmethod
    def of(cls, streamlines) -> "Packed":
        if isinstance(streamlines, cls):
            return streamlines
        if isinstance(streamlines, ArraySequence):
            points, counts = packed_points(streamlines)
            return cls(points.reshape(-1, 3), counts)
        arrays = [np.asarray(s, dtype=np.float64).reshape(-1, 3) for s in streamlines]
        counts = np.array([len(a) for a in arrays], dtype=np.intp)
        points = np.concatenate(arrays) if arrays else np.zeros((0, 3))
        return cls(points, counts)

    def segment_lengths(self) -> np.ndarray:
        """Arc length of each streamline (the segments summed in order)."""
        if self._lengths is None:
            seg = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
            same = self.ids[1:] == self.ids[:-1]
            self._lengths = np.bincount(self.ids[1:][same], weights=seg[same], minlength=len(self))
        return self._lengths

    def select(self, keep, first=None, count=None) -> "Packed":
        """The streamlines that ``keep`` (bool or index array) selects, optionally cut to
        ``count`` points from their ``first`` point (arrays over the selected streamlines)."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, dtype=np.intp)
        first = np.zeros(len(idx), dtype=np.intp) if first is None else np.asarray(first, dtype=np.intp)
        count = self.counts[idx] if count is None else np.asarray(count, dtype=np.intp)
        return Packed(self.points[run_rows(self.starts[idx] + first, count)], count)

    def reversed_where(self, flip: np.ndarray) -> "Packed":
        """The same streamlines, those where ``flip`` is true with their points reversed."""
        if not np.any(flip):
            return Packed(self.points.copy(), self.counts)
        local = np.arange(len(self.points), dtype=np.intp) - self.starts[self.ids]
        f = np.repeat(np.asarray(flip, bool), self.counts)
        rows = np.where(f, self.starts[self.ids] + self.counts[self.ids] - 1 - local,
                        np.arange(len(self.points), dtype=np.intp))
        return Packed(self.points[rows], self.counts)

    def sequence(self) -> ArraySequence:
        """An ArraySequence of float64 points over these arrays."""
        return packed_sequence(self.points, self.counts)


def voxel_index(points: np.ndarray, affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-voxel indices (P, 3) of world points and whether each is inside ``shape``."""
    inv = np.linalg.inv(np.asarray(affine, float))
    ijk = np.rint(points @ inv[:3, :3].T + inv[:3, 3]).astype(np.intp)
    inside = np.all((ijk >= 0) & (ijk < np.asarray(shape[:3])), axis=1)
    return ijk, inside


class VoxelLookup:
    """Nearest voxel of every point, computed once and shared by several ROI tests."""

    def __init__(self, points: np.ndarray, affine: np.ndarray):
        self.points = points
        self.affine = affine
        self._ijk = None
        self._flat: dict = {}  # grid shape -> (inside, flat voxel index of the inside points)

    def in_roi(self, roi: np.ndarray) -> np.ndarray:
        """Whether each point's nearest voxel is in ``roi`` (as :func:`_in_roi`)."""
        roi = np.asarray(roi, dtype=bool)
        out = np.zeros(len(self.points), dtype=bool)
        if len(self.points) == 0 or not roi.any():
            return out
        shape = roi.shape[:3]
        if shape not in self._flat:
            if self._ijk is None:
                self._ijk, inside = voxel_index(self.points, self.affine, shape)
            else:
                inside = np.all((self._ijk >= 0) & (self._ijk < np.asarray(shape)), axis=1)
            self._flat[shape] = (inside, np.ravel_multi_index(tuple(self._ijk[inside].T), shape))
        inside, flat = self._flat[shape]
        out[inside] = roi.reshape(-1)[flat]
        return out


def densify(points: np.ndarray, ids: np.ndarray, max_step: float) -> tuple[np.ndarray, np.ndarray]:
    """Insert points on segments longer than ``max_step`` mm so that no voxel is skipped."""
    if len(points) < 2:
        return points, ids
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    same = ids[1:] == ids[:-1]
    n_extra = np.where(same, np.ceil(seg / max_step).astype(np.intp) - 1, 0)
    n_extra = np.maximum(n_extra, 0)
    if not n_extra.any():
        return points, ids
    starts = np.repeat(np.arange(len(seg)), n_extra)  # segment of each inserted point
    total = len(starts)
    first_extra = np.cumsum(n_extra) - n_extra  # index of each segment's first inserted point
    step_no = np.arange(1, total + 1) - np.repeat(first_extra, n_extra)  # 1..k within its segment
    frac = step_no / (n_extra[starts] + 1)
    extra = points[starts] + frac[:, None] * (points[starts + 1] - points[starts])
    # each inserted point goes right after its segment's first point, in order
    before = np.concatenate([[0], np.cumsum(n_extra)])  # inserted points before original point i
    n_out = len(points) + total
    all_points = np.empty((n_out, 3))
    all_ids = np.empty(n_out, dtype=ids.dtype)
    orig_pos = np.arange(len(points)) + before
    all_points[orig_pos] = points
    all_ids[orig_pos] = ids
    extra_pos = orig_pos[starts] + step_no
    all_points[extra_pos] = extra
    all_ids[extra_pos] = ids[starts]
    return all_points, all_ids


def in_roi(points: np.ndarray, roi: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Whether each world point's nearest voxel is in ``roi``."""
    return VoxelLookup(points, affine).in_roi(roi)


def any_per_streamline(ids: np.ndarray, flags: np.ndarray, n: int) -> np.ndarray:
    hits = np.zeros(n, dtype=bool)
    hits[ids[flags]] = True
    return hits


def resample_streamlines(streamlines, n_points: int) -> np.ndarray:
    """Streamlines resampled to ``n_points`` equidistant points, as an (N, n_points, 3) array."""
    from dipy.tracking.streamline import set_number_of_points

    if len(streamlines) == 0:
        return np.zeros((0, n_points, 3))
    packed = Packed.of(streamlines)
    # dipy resamples an ArraySequence streamline by streamline in C, as it does a list
    resampled = set_number_of_points(packed.sequence(), nb_points=int(n_points))
    return np.asarray(resampled.get_data(), dtype=np.float64).reshape(len(packed), int(n_points), 3)

"""Corticospinal tract extraction from a whole-brain tractogram, and bundle maps.

:func:`extract_cst` keeps the streamlines of one side that

1. are at least ``min_length_mm`` long,
2. touch the ``brainstem`` ROI, the same-side ``precentral_<side>`` ROI and, when
   given, the same-side ``capsule_<side>`` waypoint,
3. touch no ``midline`` exclusion ROI (when given) and stay on their own side of the
   mid-sagittal plane, which is placed from the ROIs (see :func:`midline_plane`),

then orients every streamline inferior to superior (first point at the brainstem end),
cuts it to the stretch between the brainstem and precentral ROIs (:func:`clip_to_rois`;
the pipeline cuts where the streamline first reaches the gyrus, ``clip_end="first"``)
and removes outliers the way AFQ does (:func:`clean_bundle`). The pipeline's ``midline``
ROI is a one-voxel layer on the right of the mid-sagittal plane; ``midline_layer="right"``
applies the same crossing rule to both sides with it (see :func:`extract_cst`).

Where a field of view stops above the medulla, the ROI stage gives a ``cst_start`` ROI (the
brainstem and cerebral peduncles above the lowest level imaged on both sides, see
:mod:`csttool_nipype.science.coverage`); it then stands in for ``brainstem`` in the
selection, orientation and clipping (:func:`start_key`).

A streamline "touches" an ROI when one of its points falls in an ROI voxel (points are
assigned to the voxel whose centre is nearest); tracking output, sampled every
0.5-1 mm, is much finer than the voxels. Everything is vectorised over points so a
whole-brain tractogram of 10^5 streamlines is handled in seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from nibabel.streamlines import ArraySequence

from ..config import CLIP_ENDS, MIDLINE_RULES
from ..errors import InputError
from .reliability import dice  # noqa: F401 (part of this module's interface)

__all__ = [
    "SIDES",
    "roi_hits",
    "midline_plane",
    "midline_x",
    "select_cst",
    "start_key",
    "resample_streamlines",
    "node_mahalanobis",
    "clean_bundle",
    "orient_bundle",
    "clip_to_rois",
    "extract_cst",
    "density_map",
    "bundle_mask",
    "dice",
]

LOGGER = logging.getLogger(__name__)

SIDES = ("left", "right")

#: Positional uncertainty (mm) added in quadrature to each node's covariance before
#: Mahalanobis distances are taken, so that a bundle whose streamlines end within a
#: fraction of a voxel of each other does not turn sub-voxel differences into outliers.
POSITION_FLOOR_MM = 1.0


# --------------------------------------------------------------------------- helpers


class _Packed:
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
    def of(cls, streamlines) -> "_Packed":
        if isinstance(streamlines, cls):
            return streamlines
        if isinstance(streamlines, ArraySequence):
            from .tracking import _packed

            points, counts = _packed(streamlines)
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

    def select(self, keep, first=None, count=None) -> "_Packed":
        """The streamlines that ``keep`` (bool or index array) selects, optionally cut to
        ``count`` points from their ``first`` point (arrays over the selected streamlines)."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, dtype=np.intp)
        first = np.zeros(len(idx), dtype=np.intp) if first is None else np.asarray(first, dtype=np.intp)
        count = self.counts[idx] if count is None else np.asarray(count, dtype=np.intp)
        from .tracking import _run_rows

        return _Packed(self.points[_run_rows(self.starts[idx] + first, count)], count)

    def reversed_where(self, flip: np.ndarray) -> "_Packed":
        """The same streamlines, those where ``flip`` is true with their points reversed."""
        if not np.any(flip):
            return _Packed(self.points.copy(), self.counts)
        local = np.arange(len(self.points), dtype=np.intp) - self.starts[self.ids]
        f = np.repeat(np.asarray(flip, bool), self.counts)
        rows = np.where(f, self.starts[self.ids] + self.counts[self.ids] - 1 - local,
                        np.arange(len(self.points), dtype=np.intp))
        return _Packed(self.points[rows], self.counts)

    def sequence(self) -> ArraySequence:
        """An ArraySequence of float64 points over these arrays."""
        from .tracking import _packed_sequence

        return _packed_sequence(self.points, self.counts)


def _flatten(streamlines) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All points (P, 3), the streamline id of each point (P,) and lengths (N,)."""
    packed = _Packed.of(streamlines)
    return packed.points, packed.ids, packed.counts


def _subset(streamlines, keep: np.ndarray) -> ArraySequence:
    """The streamlines where ``keep`` (bool or index array) selects, as float64."""
    return _Packed.of(streamlines).select(keep).sequence()


def _voxel_index(points: np.ndarray, affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-voxel indices (P, 3) of world points and whether each is inside ``shape``."""
    inv = np.linalg.inv(np.asarray(affine, float))
    ijk = np.rint(points @ inv[:3, :3].T + inv[:3, 3]).astype(np.intp)
    inside = np.all((ijk >= 0) & (ijk < np.asarray(shape[:3])), axis=1)
    return ijk, inside


class _VoxelLookup:
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
                self._ijk, inside = _voxel_index(self.points, self.affine, shape)
            else:
                inside = np.all((self._ijk >= 0) & (self._ijk < np.asarray(shape)), axis=1)
            self._flat[shape] = (inside, np.ravel_multi_index(tuple(self._ijk[inside].T), shape))
        inside, flat = self._flat[shape]
        out[inside] = roi.reshape(-1)[flat]
        return out


def _densify(points: np.ndarray, ids: np.ndarray, max_step: float) -> tuple[np.ndarray, np.ndarray]:
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


def _in_roi(points: np.ndarray, roi: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Whether each world point's nearest voxel is in ``roi``."""
    return _VoxelLookup(points, affine).in_roi(roi)


def _any_per_streamline(ids: np.ndarray, flags: np.ndarray, n: int) -> np.ndarray:
    hits = np.zeros(n, dtype=bool)
    hits[ids[flags]] = True
    return hits


def roi_hits(streamlines, roi: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Which streamlines have at least one point in an ROI.

    Parameters
    ----------
    streamlines : ArraySequence or sequence of (n_i, 3) arrays
        World RAS+ mm.
    roi : ndarray of bool, shape (X, Y, Z)
        ROI on the grid of ``affine``.
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine of ``roi``.

    Returns
    -------
    hits : ndarray of bool, shape (n_streamlines,)
    """
    packed = _Packed.of(streamlines)
    return _any_per_streamline(packed.ids, _in_roi(packed.points, roi, affine), len(packed))


def _first_hit_rank(streamlines, roi, affine, lookup: _VoxelLookup | None = None) -> np.ndarray:
    """Mean relative position (0 = first point, 1 = last) of each streamline's points in ``roi``; NaN if none."""
    packed = _Packed.of(streamlines)
    points, ids, counts = packed.points, packed.ids, packed.counts
    out = np.full(len(counts), np.nan)
    if len(points) == 0:
        return out
    in_roi = (lookup or _VoxelLookup(points, affine)).in_roi(roi)
    starts = packed.starts
    rel = (np.arange(len(points)) - starts[ids]) / np.maximum(counts[ids] - 1, 1)
    total = np.bincount(ids[in_roi], weights=rel[in_roi], minlength=len(counts))
    n = np.bincount(ids[in_roi], minlength=len(counts))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    return out


def _centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(np.asarray(mask, bool))
    if len(ijk) == 0:
        return np.full(3, np.nan)
    affine = np.asarray(affine, float)
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).mean(axis=0)


def midline_plane(rois: Mapping[str, np.ndarray], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mid-sagittal plane, from the ROIs, as a point and a unit normal (world mm).

    * With a ``midline`` ROI: the plane through its voxel centroid, fitted to its voxels
      (least-variance axis as normal) when the ROI is a sheet, else normal to world x.
    * Otherwise: the plane through the ``brainstem`` centroid that contains the
      anterior-posterior axis and the point halfway between the ``precentral_left`` and
      ``precentral_right`` centroids, so a head rolled in the scanner gets a tilted
      midline; normal to world x when the precentral ROIs are missing.

    World x = 0 is never assumed. The normal points to the right (positive world x),
    so ``(p - point) @ normal`` is the signed distance (mm) of ``p`` to the right.
    """
    def given(key):
        return rois.get(key) is not None and np.asarray(rois[key]).any()

    ex = np.array([1.0, 0.0, 0.0])
    if given("midline"):
        ijk = np.argwhere(np.asarray(rois["midline"], bool))
        affine = np.asarray(affine, float)
        pts = ijk @ affine[:3, :3].T + affine[:3, 3]
        point = pts.mean(axis=0)
        normal = ex
        if len(pts) >= 10:
            evals, evecs = np.linalg.eigh(np.cov((pts - point).T))
            if evals[0] < 0.25 * evals[1]:  # a sheet: one thin direction
                normal = evecs[:, 0]
    elif given("brainstem"):
        point = _centroid(rois["brainstem"], affine)
        normal = ex
        if given("precentral_left") and given("precentral_right"):
            top = 0.5 * (_centroid(rois["precentral_left"], affine) + _centroid(rois["precentral_right"], affine))
            up = top - point
            candidate = np.cross(np.array([0.0, 1.0, 0.0]), up)
            if np.linalg.norm(candidate) > 1e-6 * max(np.linalg.norm(up), 1.0):
                normal = candidate
    elif given("precentral_left") and given("precentral_right"):
        point = 0.5 * (_centroid(rois["precentral_left"], affine) + _centroid(rois["precentral_right"], affine))
        normal = ex
    else:
        raise InputError(None, "cannot place the midline: no midline, brainstem or precentral ROI voxels")
    normal = np.asarray(normal, float) / np.linalg.norm(normal)
    if normal[0] < 0:
        normal = -normal
    return point, normal


def midline_x(rois: Mapping[str, np.ndarray], affine: np.ndarray) -> float:
    """World x (mm) of the mid-sagittal plane's reference point (see :func:`midline_plane`)."""
    return float(midline_plane(rois, affine)[0][0])


def _side_sign(side: str) -> float:
    if side not in SIDES:
        raise InputError(None, f"side must be 'left' or 'right', got {side!r}")
    return -1.0 if side == "left" else 1.0  # RAS+: left hemisphere has smaller x


def _midline_rule(packed: _Packed, rois, affine, *, side: str, midline_tolerance_mm: float, midline_layer: str):
    """Points on the wrong side of the mid-sagittal plane, the exclusion ROI, the plane.

    Returns
    -------
    wrong : ndarray of bool, (P,)
        Points past the plane (by more than the tolerance) above the ``midline`` ROI's
        lowest voxel; see :func:`extract_cst`.
    exclusion : ndarray of bool or None
        The voxels a streamline of ``side`` may not touch (``midline`` or, with
        ``midline_layer="right"`` on the right side, its mirror layer).
    point, normal : ndarray
        The plane (world mm), normal pointing right.
    """
    sign = _side_sign(side)
    points = packed.points
    point, normal = midline_plane(rois, affine)
    exclusion = None if rois.get("midline") is None else np.asarray(rois["midline"], bool)
    if midline_layer not in ("centre", "right"):
        raise InputError(None, f"midline_layer must be 'centre' or 'right', got {midline_layer!r}")
    if midline_layer == "right" and exclusion is not None and exclusion.any():
        # The ROI is the voxel layer just right of the mid-sagittal plane: the plane lies
        # half a layer to the left of its centroid, and a right-side streamline has crossed
        # only when it reaches the mirror layer (the ROI's face neighbours on the left).
        step = float(np.max(np.abs(normal @ np.asarray(affine, float)[:3, :3])))
        if side == "right":
            from scipy import ndimage

            ring = ndimage.binary_dilation(exclusion) & ~exclusion
            ijk = np.argwhere(ring)
            left = (ijk @ np.asarray(affine, float)[:3, :3].T + np.asarray(affine, float)[:3, 3] - point) @ normal < 0
            exclusion = np.zeros_like(exclusion)
            exclusion[tuple(ijk[left].T)] = True
        point = point - 0.5 * step * normal
    own = _centroid(rois[f"precentral_{side}"], affine)
    if np.all(np.isfinite(own)) and sign * float((own - point) @ normal) <= 0:
        raise InputError(None, f"precentral_{side} ROI lies on the wrong side of the midline "
                               f"(centroid x={own[0]:.1f} mm, midline x={point[0]:.1f} mm): left and right swapped?")
    # A streamline crosses when any of its points is on the other side by more than the tolerance
    # (with a midline ROI: any point not below the ROI's lowest voxel, in world z; the ROI
    # starts above the pyramidal decussation, where the tracts really do cross).
    wrong = sign * ((points - point) @ normal) < -float(midline_tolerance_mm)
    if exclusion is not None and np.asarray(rois["midline"]).any():
        aff = np.asarray(affine, float)
        lowest = float((np.argwhere(np.asarray(rois["midline"], bool)) @ aff[:3, :3].T + aff[:3, 3])[:, 2].min())
        wrong &= points[:, 2] >= lowest
    return wrong, exclusion, point, normal


def start_key(rois: Mapping[str, np.ndarray]) -> str:
    """The ROI a CST starts in: ``cst_start`` when given (a field of view that stops above the
    medulla, see :func:`csttool_nipype.science.coverage.start_roi`), else ``brainstem``."""
    return "cst_start" if rois.get("cst_start") is not None else "brainstem"


def _check_side_rois(rois, side: str) -> None:
    _side_sign(side)
    for key in ("brainstem", f"precentral_{side}"):
        if rois.get(key) is None:
            raise InputError(None, f"ROI {key!r} is missing")


def cut_at_midline(
    streamlines,
    rois: Mapping[str, np.ndarray],
    affine: np.ndarray,
    *,
    side: str,
    midline_tolerance_mm: float = 0.0,
    midline_layer: str = "centre",
) -> tuple[_Packed, np.ndarray]:
    """The pieces of every streamline that stay on one side of the midline.

    Each streamline is cut at the points where it is past the mid-sagittal plane (or
    touches the exclusion layer), by the rule :func:`select_cst` uses to drop whole
    streamlines; the pieces in between (two points or more) are returned.

    Returns
    -------
    pieces : _Packed
        The pieces, in order of their streamline and along it (world mm).
    parent : ndarray of int, (n_pieces,)
        The streamline each piece comes from.
    """
    _check_side_rois(rois, side)
    packed = _Packed.of(streamlines)
    if len(packed) == 0:
        return packed, np.zeros(0, dtype=np.intp)
    wrong, exclusion, _, _ = _midline_rule(packed, rois, affine, side=side,
                                           midline_tolerance_mm=midline_tolerance_mm, midline_layer=midline_layer)
    if exclusion is not None and exclusion.any():
        wrong = wrong | _VoxelLookup(packed.points, affine).in_roi(exclusion)
    ids = packed.ids
    new_run = np.ones(len(ids), dtype=bool)
    new_run[1:] = (ids[1:] != ids[:-1]) | (wrong[1:] != wrong[:-1])
    run_start = np.flatnonzero(new_run)
    run_len = np.diff(np.append(run_start, len(ids)))
    good = ~wrong[run_start] & (run_len >= 2)
    starts, parent = run_start[good], ids[run_start[good]]
    return packed.select(parent, first=starts - packed.starts[parent], count=run_len[good]), parent


def select_cst(
    streamlines,
    rois: Mapping[str, np.ndarray],
    affine: np.ndarray,
    *,
    side: str,
    min_length_mm: float = 40.0,
    midline_tolerance_mm: float = 0.0,
    midline_layer: str = "centre",
) -> np.ndarray:
    """Indices of the streamlines that pass the ROI, length and midline rules of one side.

    Parameters are those of :func:`extract_cst`.

    Returns
    -------
    indices : ndarray of int
        Positions in ``streamlines``, ascending.
    """
    _check_side_rois(rois, side)
    n = len(streamlines)
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    packed = _Packed.of(streamlines)
    ids = packed.ids
    lengths = packed.segment_lengths()
    keep = lengths >= min_length_mm

    wrong, exclusion, point, normal = _midline_rule(packed, rois, affine, side=side,
                                                     midline_tolerance_mm=midline_tolerance_mm,
                                                     midline_layer=midline_layer)
    crosses = np.bincount(ids[wrong], minlength=n) > 0
    keep &= ~crosses

    candidates = np.flatnonzero(keep)
    selected, required = _through_rois(packed, candidates, rois, affine, side=side, exclusion=exclusion)
    LOGGER.info(
        "CST %s: %d streamlines, %d long enough, %d on their side of the midline (x=%.1f mm, normal %s), "
        "%d through %s",
        side, n, int((lengths >= min_length_mm).sum()), len(candidates), point[0], np.round(normal, 3),
        len(selected), "+".join(required),
    )
    return selected


def _through_rois(packed: _Packed, candidates: np.ndarray, rois, affine, *, side: str,
                  exclusion: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """The ``candidates`` (indices into ``packed``) that pass through the brainstem, the
    side's precentral gyrus and, when given, its capsule waypoint, without touching
    ``exclusion``; and the names of the ROIs required."""
    required = [start_key(rois), f"precentral_{side}"]
    if rois.get(f"capsule_{side}") is not None:
        required.append(f"capsule_{side}")
    subset = packed.select(candidates)
    lookup = _VoxelLookup(subset.points, affine)  # one nearest-voxel pass for every ROI test
    ok = np.ones(len(candidates), dtype=bool)
    for key in required:
        ok &= _any_per_streamline(subset.ids, lookup.in_roi(rois[key]), len(subset))
    if exclusion is not None:
        ok &= ~_any_per_streamline(subset.ids, lookup.in_roi(exclusion), len(subset))
    return candidates[ok], required


def clip_to_rois(bundle, rois: Mapping[str, np.ndarray], affine: np.ndarray, *, side: str,
                 end: str = "last") -> ArraySequence:
    """Cut each (oriented) streamline to the stretch between the brainstem and precentral ROIs.

    The cut starts at the streamline's first point in the brainstem ROI and ends, with
    ``end="last"``, at its last point in the ``precentral_<side>`` ROI (parts beyond the
    gyrus dropped) or, with ``end="first"``, at its first point in that ROI after the
    brainstem (the point where the tract reaches the gyrus; what runs on inside the
    cortex ribbon is dropped too). Either way every streamline starts in the brainstem and
    ends in the precentral gyrus, and the profile nodes of different streamlines cover the
    same stretch of the tract. A streamline that does not reach both ROIs in that order is
    left whole.

    Parameters
    ----------
    bundle : ArraySequence or sequence of (n_i, 3) arrays
        Streamlines oriented inferior to superior (see :func:`orient_bundle`), world mm.
    rois : mapping of str to ndarray of bool
        Needs ``brainstem`` and ``precentral_<side>``.
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine of the ROIs.
    side : {"left", "right"}
    end : {"last", "first"}
        Where in the precentral ROI the streamline is cut.

    Returns
    -------
    clipped : ArraySequence
        float64 points, same number and order of streamlines as ``bundle``.
    """
    _side_sign(side)
    if end not in ("last", "first"):
        raise InputError(None, f"end must be 'last' or 'first', got {end!r}")
    return _clip_packed(_Packed.of(bundle), rois, affine, side=side, end=end).sequence()


def _clip_packed(packed: _Packed, rois, affine, *, side: str, end: str) -> _Packed:
    """:func:`clip_to_rois` on packed streamlines."""
    points, ids, counts = packed.points, packed.ids, packed.counts
    n = len(counts)
    if n == 0:
        return packed
    starts = packed.starts
    local = np.arange(len(points)) - starts[ids]
    lookup = _VoxelLookup(points, affine)
    in_bs = lookup.in_roi(rois[start_key(rois)])
    in_pc = lookup.in_roi(rois[f"precentral_{side}"])
    first = counts.copy()
    np.minimum.at(first, ids[in_bs], local[in_bs])
    if end == "last":
        stop = np.full(n, -1, dtype=counts.dtype)
        np.maximum.at(stop, ids[in_pc], local[in_pc])
    else:
        after = in_pc & (local > first[ids])
        stop = np.full(n, np.iinfo(counts.dtype).max, dtype=counts.dtype)
        np.minimum.at(stop, ids[after], local[after])
        stop[stop == np.iinfo(counts.dtype).max] = -1
    cut = first < stop
    return packed.select(np.arange(n), first=np.where(cut, first, 0),
                         count=np.where(cut, stop - first + 1, counts))


# --------------------------------------------------------------------------- cleaning


def resample_streamlines(streamlines, n_points: int) -> np.ndarray:
    """Streamlines resampled to ``n_points`` equidistant points, as an (N, n_points, 3) array."""
    from dipy.tracking.streamline import set_number_of_points

    if len(streamlines) == 0:
        return np.zeros((0, n_points, 3))
    packed = _Packed.of(streamlines)
    # dipy resamples an ArraySequence streamline by streamline in C, as it does a list
    resampled = set_number_of_points(packed.sequence(), nb_points=int(n_points))
    return np.asarray(resampled.get_data(), dtype=np.float64).reshape(len(packed), int(n_points), 3)


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


def orient_bundle(streamlines, rois: Mapping[str, np.ndarray] | None = None, affine: np.ndarray | None = None,
                  *, side: str | None = None) -> ArraySequence:
    """Orient every streamline inferior to superior.

    With ``rois``, ``affine`` and ``side``, a streamline is reversed when its points in
    the brainstem ROI come later along it than its points in ``precentral_<side>``;
    otherwise (or when it misses one of them) when its first point is higher (world z)
    than its last.
    """
    return _orient_packed(_Packed.of(streamlines), rois, affine, side=side).sequence()


def _orient_packed(packed: _Packed, rois, affine, *, side) -> _Packed:
    """:func:`orient_bundle` on packed streamlines."""
    if len(packed) == 0:
        return packed
    z = packed.points[:, 2]
    flip = z[packed.starts] > z[packed.starts + packed.counts - 1]
    if rois is not None and affine is not None and side is not None:
        lookup = _VoxelLookup(packed.points, affine)
        bs = _first_hit_rank(packed, np.asarray(rois[start_key(rois)], bool), affine, lookup)
        pc = _first_hit_rank(packed, np.asarray(rois[f"precentral_{side}"], bool), affine, lookup)
        known = np.isfinite(bs) & np.isfinite(pc) & (bs != pc)
        flip[known] = bs[known] > pc[known]
    return packed.reversed_where(flip)


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


# ------------------------------------------------------------------------- extraction


def extract_cst(
    streamlines,
    rois: Mapping[str, np.ndarray],
    affine: np.ndarray,
    *,
    side: str,
    min_length_mm: float = 40.0,
    midline_tolerance_mm: float = 0.0,
    midline_layer: str = "centre",
    midline: str = "reject",
    clip: bool = True,
    clip_end: str = "first",
    clean: bool = True,
    n_points: int = 100,
    distance_threshold: float = 4.0,
    length_threshold: float = 4.0,
    clean_rounds: int = 5,
    min_streamlines: int = 20,
) -> ArraySequence:
    """Left or right corticospinal tract from a whole-brain tractogram.

    Parameters
    ----------
    streamlines : ArraySequence or sequence of (n_i, 3) arrays
        Whole-brain tractogram in world RAS+ mm.
    rois : mapping of str to ndarray of bool, shape (X, Y, Z)
        ROIs on the grid of ``affine``: ``brainstem``, ``precentral_left`` and
        ``precentral_right`` are required; ``capsule_left`` / ``capsule_right``
        (waypoints) and ``midline`` (exclusion, also defines the mid-sagittal plane)
        are optional.
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine of the ROIs.
    side : {"left", "right"}
        Hemisphere of origin (the tract is followed above the decussation only).
    min_length_mm : float
        Shorter streamlines are dropped first.
    midline_tolerance_mm : float
        How far (mm) a streamline may stray past the mid-sagittal plane. With a
        ``midline`` ROI only the points not below its lowest voxel (world z) are held to
        the plane: the ROI starts above the pyramidal decussation, and below it (in the
        medulla, which a sagittal or large field of view images in full) the tracts cross
        or run within a voxel of the midline.
    midline_layer : {"centre", "right"}
        Where the ``midline`` ROI lies. ``"centre"`` (default): on the mid-sagittal plane;
        the plane runs through its centroid and a streamline of either side touching it is
        dropped. ``"right"``: it is the layer of voxels just right of the plane, as
        :func:`csttool_nipype.science.rois.cst_rois` builds it (so that no path between
        the hemispheres can avoid it); the plane then lies half a voxel left of its
        centroid, a left streamline touching it is dropped and a right one is dropped when
        it touches the mirror layer just left of the plane. With ``"centre"`` on such an
        ROI the right CST, but not the left, would lose every streamline running in the
        voxels next to the midline (at the vertex, the paracentral lobule).
    midline : {"reject", "cut"}
        What happens to a streamline that crosses the midline above the decussation:
        ``"reject"`` (default, as AFQ does) drops it; ``"cut"`` cuts it there
        (:func:`cut_at_midline`) and keeps its longest piece that still passes the ROI and
        length rules. At 3 mm, tensor tracking in the pons can turn from a corticospinal
        streamline into the transverse pontine fibres, which cross the midline: on one of
        three scans of one head (Canon, sagittal) rejection dropped 65 % of the right CST's
        streamlines against 8-20 % elsewhere; cutting keeps the part above the turn. On
        those three scans it brought the right side's counts from ±52 % of their mean to
        ±28 % but the left's from ±29 % to ±33 % and the volumes from ±8 / ±16 % to
        ±12 / ±18 %, so rejection stays the default.
    clip : bool
        Cut every streamline to the stretch from its first point in the brainstem ROI
        to its last point in the precentral ROI (:func:`clip_to_rois`), as AFQ clips
        at its waypoints: tracking overshoots the tract ends by a voxel or so into
        low-FA tissue, and uncut ends would mix that partial volume into the first and
        last profile nodes and the bundle's mean values.
    clip_end : {"last", "first"}
        Where the cut ends in the precentral ROI (see :func:`clip_to_rois`): at the
        streamline's last point in it (default) or where it first reaches the gyrus
        (what the pipeline uses, see :class:`csttool_nipype.interfaces.bundles.ExtractCST`).
        At 2-3 mm the gyrus ROI is a ribbon of cortex mixed with its white matter;
        deterministic tracking runs on along it until FA falls to the threshold, so
        keeping that part puts cortex-level FA (0.2-0.4) into the last profile nodes,
        where it outweighs a real FA dip along the tract, and into the bundle's mean FA.
    clean : bool
        Remove outliers with :func:`clean_bundle` (after clipping).
    n_points, distance_threshold, length_threshold, clean_rounds, min_streamlines
        Passed to :func:`clean_bundle` (``clean_rounds`` as ``rounds``); distance and
        length thresholds are in standard deviations.

    Returns
    -------
    bundle : ArraySequence
        float64 points in world RAS+ mm; each streamline starts at its brainstem end
        (with ``clip``, in the brainstem ROI).
    """
    packed = _Packed.of(streamlines)  # callers extracting both sides may pass one _Packed for both
    if midline not in MIDLINE_RULES:
        raise InputError(None, f"midline must be 'reject' or 'cut', got {midline!r}")
    if midline == "cut":
        packed, parent = cut_at_midline(packed, rois, affine, side=side, midline_tolerance_mm=midline_tolerance_mm,
                                        midline_layer=midline_layer)
        lengths = packed.segment_lengths()
        selected, required = _through_rois(packed, np.flatnonzero(lengths >= min_length_mm), rois, affine,
                                           side=side)
        LOGGER.info("CST %s: %d pieces on their side of the midline, %d long enough and through %s",
                    side, len(packed), len(selected), "+".join(required))
        # one piece per streamline: its longest one that passes
        order = np.lexsort((-lengths[selected], parent[selected]))
        first_of_parent = np.unique(parent[selected][order], return_index=True)[1]
        selected = np.sort(selected[order][first_of_parent])
    else:
        selected = select_cst(packed, rois, affine, side=side, min_length_mm=min_length_mm,
                              midline_tolerance_mm=midline_tolerance_mm, midline_layer=midline_layer)
    bundle = _orient_packed(packed.select(selected), rois, affine, side=side)
    if clip and len(bundle):
        if clip_end not in CLIP_ENDS:
            raise InputError(None, f"end must be 'last' or 'first', got {clip_end!r}")
        bundle = _clip_packed(bundle, rois, affine, side=side, end=clip_end)
    if clean and len(bundle):
        kept = clean_bundle(bundle, n_points=n_points, distance_threshold=distance_threshold,
                            length_threshold=length_threshold, rounds=clean_rounds,
                            min_streamlines=min_streamlines)
        LOGGER.info("CST %s: %d selected, %d after cleaning", side, len(bundle), len(kept))
        bundle = bundle.select(kept)
    return bundle.sequence()


# ----------------------------------------------------------------------------- maps


def density_map(bundle, shape, affine: np.ndarray) -> np.ndarray:
    """Number of streamlines passing through each voxel.

    Each streamline counts once per voxel. Segments longer than half the smallest
    voxel size are subdivided first so that no voxel on the way is skipped; points
    outside the grid are ignored.

    Parameters
    ----------
    bundle : ArraySequence or sequence of (n_i, 3) arrays
        World RAS+ mm.
    shape : tuple of int
        Grid shape (first three entries used).
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine of the grid.

    Returns
    -------
    counts : ndarray of int64, shape ``shape[:3]``
    """
    shape = tuple(int(s) for s in shape[:3])
    points, ids, _ = _flatten(bundle)
    if len(points) == 0:
        return np.zeros(shape, dtype=np.int64)
    zooms = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
    points, ids = _densify(points, ids, 0.5 * float(zooms.min()))
    ijk, inside = _voxel_index(points, affine, shape)
    lin = np.ravel_multi_index(tuple(ijk[inside].T), shape)
    ids = ids[inside]
    # consecutive points of a streamline mostly share a voxel: drop repeats before sorting
    new = np.ones(len(lin), dtype=bool)
    new[1:] = (lin[1:] != lin[:-1]) | (ids[1:] != ids[:-1])
    n_vox = int(np.prod(shape))
    pairs = np.sort(ids[new].astype(np.int64) * n_vox + lin[new])
    pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])]  # each (streamline, voxel) once
    return np.bincount(pairs % n_vox, minlength=n_vox).astype(np.int64).reshape(shape)


def bundle_mask(bundle, shape, affine: np.ndarray, *, min_count: int = 1) -> np.ndarray:
    """Voxels visited by at least ``min_count`` streamlines (bool, shape ``shape[:3]``)."""
    return density_map(bundle, shape, affine) >= int(min_count)

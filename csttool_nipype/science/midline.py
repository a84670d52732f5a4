"""The mid-sagittal plane and the rule that keeps a CST on its own side of it.

A corticospinal tract stays in its hemisphere from the cortex down to the pyramidal
decussation; :func:`midline_rule` marks the points of streamlines that stray across the
plane (placed from the ROIs by :func:`midline_plane`, never at world x = 0), and
:func:`cut_at_midline` cuts streamlines there.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import InputError
from .streamlines import Packed, VoxelLookup

__all__ = ["SIDES", "centroid", "check_side_rois", "cut_at_midline", "midline_plane", "midline_rule",
           "midline_x", "side_sign"]

SIDES = ("left", "right")


def centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
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
        point = centroid(rois["brainstem"], affine)
        normal = ex
        if given("precentral_left") and given("precentral_right"):
            top = 0.5 * (centroid(rois["precentral_left"], affine) + centroid(rois["precentral_right"], affine))
            up = top - point
            candidate = np.cross(np.array([0.0, 1.0, 0.0]), up)
            if np.linalg.norm(candidate) > 1e-6 * max(np.linalg.norm(up), 1.0):
                normal = candidate
    elif given("precentral_left") and given("precentral_right"):
        point = 0.5 * (centroid(rois["precentral_left"], affine) + centroid(rois["precentral_right"], affine))
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


def side_sign(side: str) -> float:
    if side not in SIDES:
        raise InputError(None, f"side must be 'left' or 'right', got {side!r}")
    return -1.0 if side == "left" else 1.0  # RAS+: left hemisphere has smaller x


def midline_rule(packed: Packed, rois, affine, *, side: str, midline_tolerance_mm: float, midline_layer: str):
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
    sign = side_sign(side)
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
    own = centroid(rois[f"precentral_{side}"], affine)
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


def check_side_rois(rois, side: str) -> None:
    side_sign(side)
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
) -> tuple[Packed, np.ndarray]:
    """The pieces of every streamline that stay on one side of the midline.

    Each streamline is cut at the points where it is past the mid-sagittal plane (or
    touches the exclusion layer), by the rule :func:`select_cst` uses to drop whole
    streamlines; the pieces in between (two points or more) are returned.

    Returns
    -------
    pieces : Packed
        The pieces, in order of their streamline and along it (world mm).
    parent : ndarray of int, (n_pieces,)
        The streamline each piece comes from.
    """
    check_side_rois(rois, side)
    packed = Packed.of(streamlines)
    if len(packed) == 0:
        return packed, np.zeros(0, dtype=np.intp)
    wrong, exclusion, _, _ = midline_rule(packed, rois, affine, side=side,
                                           midline_tolerance_mm=midline_tolerance_mm, midline_layer=midline_layer)
    if exclusion is not None and exclusion.any():
        wrong = wrong | VoxelLookup(packed.points, affine).in_roi(exclusion)
    ids = packed.ids
    new_run = np.ones(len(ids), dtype=bool)
    new_run[1:] = (ids[1:] != ids[:-1]) | (wrong[1:] != wrong[:-1])
    run_start = np.flatnonzero(new_run)
    run_len = np.diff(np.append(run_start, len(ids)))
    good = ~wrong[run_start] & (run_len >= 2)
    starts, parent = run_start[good], ids[run_start[good]]
    return packed.select(parent, first=starts - packed.starts[parent], count=run_len[good]), parent

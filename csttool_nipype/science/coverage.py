"""How much of the corticospinal tract a field of view holds, and where the CST starts in it.

The rule is anatomical and uses the imaged brain (the brain mask) and the warped template,
never the image box: a scan can hold the box and still miss tissue.

Template CST
    Per side, the Juelich CST map (>= 25 %) together with the same-side half of the
    Harvard-Oxford brainstem (>= 50 %), warped to the subject: the Juelich map ends at MNI
    z = -25 mm, below which the tract runs inside the pons and medulla. It spans MNI z = -67
    to 79 mm.
Levels
    The template CST is cut into axial levels of one voxel (the largest voxel size, mm of
    MNI z). A level is imaged when at least :data:`LEVEL_MIN_FRACTION` of the template voxels
    of it and its two neighbouring levels lie in the brain mask (voxels beyond the image count as not imaged). A side's covered
    extent is the run of imaged levels through the internal capsule (MNI z = 6 mm), from its
    lowest to its highest imaged template voxel.
Full, partial, not covered
    * ``cst_not_covered`` when too little is imaged for any CST: the precentral gyrus or the
      internal capsule waypoint of either side less than half inside the imaged brain, or the
      cerebral-peduncle waypoint of either side less than :data:`PEDUNCLE_MIN_FRACTION`
      inside. The peduncle is the lowest level where a CST can be told from its neighbours:
      in the posterior limb of the internal capsule and the corona radiata the
      corticospinal fibres run alongside the thalamic radiations to the same gyrus, and only
      below the thalamus, in the crus cerebri, are the descending fibres alone. A slab that
      stops above the midbrain ends with this flag.
    * ``partial_coverage`` otherwise, when either side's covered extent starts above MNI
      z = :data:`FULL_COVERAGE_Z_MM` (-45 mm, the lower border of the pons, below which
      whole-brain tensor tracking rarely follows the CST): the CST is then taken from the lowest
      level imaged on both sides (the higher of the two sides' lowest levels, so left and
      right start at the same MNI level and stay comparable), through whichever inferior ROIs
      (brainstem, cerebral peduncles) lie above it (:func:`start_roi`).
    * full coverage otherwise (whole-brain scans: the Philips and Canon test scans are
      imaged down to MNI z = -66 and -59 mm by this rule).

The registration (:func:`csttool_nipype.science.registration.register_to_mni`) matches the
template only inside the field of view when it misses the brainstem above that level, so
that the warped template (and the extent measured with it) is not stretched over the missing
part.

Profiles of a partial CST (:func:`missing_length_mm`): the nodes of a CST profile start at MNI
z = :data:`PROFILE_START_Z_MM` (the pipeline anchors every profile there, see
:mod:`csttool_nipype.science.profiles`). With tensor tracking the CST streamlines start, on the
median, in the middle of the pons (where the transverse pontine fibres cross the tract); the
first node lies above that, in the upper pons, so that most streamlines of a whole-brain scan
reach it. A field of view that starts above
that level misses the length of the template's centreline between the two levels; the
profile keeps that stretch's nodes as NaN, so node k stays comparable with node k of
whole-brain profiles.
"""

from __future__ import annotations

import numpy as np

#: Flag of a subject whose field of view holds the CST in part (informative, not a failure:
#: the covered part is measured as usual).
PARTIAL_COVERAGE_FLAG = "partial_coverage"
#: A level of the template CST is imaged when this share of its voxels lies in the brain mask.
LEVEL_MIN_FRACTION = 0.5
#: A CST imaged down to this MNI z (mm) on both sides is covered in full: the lower border of
#: the pons (pontomedullary junction). Whole-brain tensor tracking at 2-3 mm follows the CST
#: little below it (in the medulla the pyramids are thinner than two voxels): on the test scans
#: 62-89 % of a side's CST streamlines start above it, and the "whole-brain" Philips test
#: scan, by its affine registration, is imaged down to MNI z = -48 mm at the brainstem only.
FULL_COVERAGE_Z_MM = -45.0
#: Least share of each cerebral-peduncle ROI inside the imaged brain for any CST (about one
#: 3 mm slice of its 12 mm: the part of the tract below the thalamus).
PEDUNCLE_MIN_FRACTION = 0.2
#: MNI z (mm) where the nodes of CST profiles start, in the upper pons: above where tensor tracking
#: of the CST stops in the middle of the pons, so that most streamlines of a whole-brain scan
#: reach it (docs/decisions.md, "#17 profiles").
PROFILE_START_Z_MM = -27.0
#: MNI z (mm) inside the internal-capsule waypoint: a covered extent runs through it.
CAPSULE_LEVEL_Z_MM = 6.0


def interior(mask: np.ndarray) -> np.ndarray:
    """The brain mask without the voxels on the faces of the image grid.

    The outermost slice of a field of view is not imaged reliably once preprocessed (the
    motion correction's interpolation reaches past it): cropping the Philips and Canon test
    scans at the midbrain raised the mean FA of the new first slice by 0.43 and 0.05 (mean
    absolute change 0.44 and 0.17) against 0.01 or less from the second slice on. A level
    of a whole-brain scan never lies on a face, so only cut fields of view are affected.
    """
    out = np.asarray(mask, bool).copy()
    for axis in range(out.ndim):
        edge = [slice(None)] * out.ndim
        for index in (0, -1):
            edge[axis] = index
            out[tuple(edge)] = False
    return out


def template_levels(z_mni: np.ndarray, world: np.ndarray, flat_index: np.ndarray, bin_mm: float) -> dict:
    """The template CST of one side, for :func:`side_extent`.

    Parameters
    ----------
    z_mni : ndarray, (N,)
        MNI z (mm) of the template voxels (a grid aligned with the subject's that may extend
        beyond the image).
    world : ndarray, (N, 3)
        Their subject world coordinates (RAS+ mm).
    flat_index : ndarray of int, (N,)
        Their flat index on the subject grid, -1 beyond it.
    bin_mm : float
        Height of a level (mm of MNI z).
    """
    return {"z": np.asarray(z_mni, np.float32), "world": np.asarray(world, np.float32),
            "flat": np.asarray(flat_index, np.int64), "bin_mm": float(bin_mm)}


def side_extent(template: dict, mask: np.ndarray) -> dict:
    """Covered extent of one side's template CST in a brain mask.

    Returns
    -------
    dict
        ``z_min_mm``, ``z_max_mm``: MNI z of the lowest and highest imaged template voxel
        of the run of imaged levels through the capsule (NaN when the capsule level is not
        imaged); ``template_z_mm``: the template's
        own range; ``share``: share of the template's length (MNI z) inside the covered run;
        ``levels``: (lower edge, share imaged) of every level.
    """
    z, flat, h = template["z"], template["flat"], template["bin_mm"]
    inside = np.zeros(len(z), bool)
    ok = flat >= 0
    inside[ok] = np.asarray(mask, bool).reshape(-1)[flat[ok]]
    nan = float("nan")
    if not len(z):
        return {"z_min_mm": nan, "z_max_mm": nan, "template_z_mm": [nan, nan], "share": 0.0, "levels": []}
    lo = np.floor(z.min() / h) * h
    level = ((z - lo) // h).astype(int)
    expected = np.bincount(level).astype(float)
    imaged = np.bincount(level, weights=inside, minlength=len(expected))
    # each level with its two neighbours: one-voxel levels on a grid of the same spacing
    # alias (some hold no template voxel, some twice their share), and a mask hole in a
    # single level (CSF in the midbrain) is not a field of view's edge; a sharp cut stays
    # where it is (the last level above it has two imaged levels of three)
    window = np.ones(3)
    expected_w = np.convolve(expected, window, mode="same")
    imaged_w = np.convolve(imaged, window, mode="same")
    frac = np.where(expected_w > 0, imaged_w / np.maximum(expected_w, 1), 0.0)
    good = (expected_w > 0) & (frac >= LEVEL_MIN_FRACTION)
    k = int(np.clip((CAPSULE_LEVEL_Z_MM - lo) // h, 0, len(good) - 1))
    top = float(z.max())
    span = max(top - float(z.min()), 1e-6)
    out = {"template_z_mm": [round(float(z.min()), 1), round(top, 1)],
           "levels": [[round(float(lo + i * h), 1), round(float(f), 3)] for i, f in enumerate(frac)]}
    if not good[k]:
        return {**out, "z_min_mm": nan, "z_max_mm": nan, "share": 0.0}
    a = k
    while a > 0 and good[a - 1]:
        a -= 1
    b = k
    while b < len(good) - 1 and good[b + 1]:
        b += 1
    run = inside & (level >= a) & (level <= b)
    z_min, z_max = float(z[run].min()), float(z[run].max())
    return {**out, "z_min_mm": round(z_min, 1), "z_max_mm": round(z_max, 1),
            "share": round(float(np.clip((z_max - z_min) / span, 0, 1)), 3)}


def centreline_length_mm(template: dict, z_from: float, z_to: float) -> float:
    """Length (subject mm) of the template CST's centreline between two MNI levels.

    The centreline joins the subject-space centroids of the template voxels of each level;
    0 when ``z_to <= z_from``.
    """
    if not z_to > z_from:
        return 0.0
    z, world, h = template["z"], template["world"], template["bin_mm"]
    sel = (z >= z_from) & (z <= z_to)
    if sel.sum() < 2:
        return 0.0
    edges = np.arange(z_from, z_to + h, h)
    level = np.clip(np.digitize(z[sel], edges) - 1, 0, len(edges) - 1)
    centroids = np.array([world[sel][level == i].mean(axis=0) for i in np.unique(level)])
    return float(np.linalg.norm(np.diff(centroids, axis=0), axis=1).sum()) if len(centroids) > 1 else 0.0


def missing_length_mm(template: dict, z_start: float) -> float:
    """Length (subject mm) of the CST between :data:`PROFILE_START_Z_MM` and a covered start level."""
    return centreline_length_mm(template, PROFILE_START_Z_MM, float(z_start))


def start_roi(rois: dict, mni_z: np.ndarray, z_start: float, band_mm: float, priors: dict | None = None,
              prior_threshold: float = 0.25) -> np.ndarray:
    """Where a partial CST starts: the inferior ROIs in the band of MNI z from ``z_start`` up.

    The inferior ROIs are the brainstem, the cerebral peduncles and, from ``priors``
    (``cst_prior_left/right`` on the subject grid), the template CST itself (>=
    ``prior_threshold``), which is all the tract is between the peduncle waypoint (up to MNI
    z = -8 mm) and the internal capsule. The band, ``band_mm`` high (two voxels), is the
    lowest stretch imaged on both sides: a CST streamline must reach it and is cut where it
    enters it, so both sides start at the same MNI level. ``mni_z``: MNI z (mm) of every
    voxel of the subject grid (NaN beyond the registration's reach).
    """
    mni_z = np.asarray(mni_z)
    roi = np.asarray(rois["brainstem"], bool).copy()
    for name in ("peduncle_left", "peduncle_right"):
        if rois.get(name) is not None:
            roi |= np.asarray(rois[name], bool)
    for prior in (priors or {}).values():
        roi |= np.asarray(prior) >= prior_threshold
    with np.errstate(invalid="ignore"):
        return roi & (mni_z >= float(z_start)) & (mni_z < float(z_start) + float(band_mm))

"""Rigid head-motion correction of a diffusion series, with b-vector rotation.

Convention (used throughout this module and by the phantom)
------------------------------------------------------------
``transforms[n]`` is a 4x4 rigid matrix in world (scanner RAS+) millimetres that maps a
point ``x`` of the *reference* head to the place ``transforms[n] @ x`` where the same
anatomical point appears in volume ``n``: it is the head motion of volume ``n``
relative to the reference. The corrected volume is ``corrected_n(x) = volume_n(T_n x)``
on the reference grid (this is exactly the matrix dipy's affine registration returns for
``static = reference``, ``moving = volume n``).

When the head is rotated by ``R_n`` (rotation part of ``T_n``), a gradient applied
along scanner direction ``g`` is seen by the head along ``R_n^T g``. After resampling
into the reference head pose the gradient of volume ``n`` is therefore, in world axes::

    g_ref = R_n^T g_scanner

and the rotated b-vectors are returned in voxel axes of the (unchanged) image grid.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from scipy.spatial.transform import Rotation

from csttool_nipype.config import B0_THRESHOLD
from csttool_nipype.science.eddy import eddy_report, split_eddy
from csttool_nipype.science.volume_registration import (  # noqa: F401 (_grid_centre: used by tests)
    FD_RADIUS_MM, _grid_centre, _LSTemplate, _register_ls,
)
from csttool_nipype.science.gradients import voxel_to_world, world_to_voxel
from csttool_nipype.science.preprocess import bounding_box

logger = logging.getLogger(__name__)

# Cross-contrast link (mean DW template -> b0 template): dipy Mattes mutual information.
# dipy's finest level is always full resolution whatever the last factor.
_MI_LEVEL_ITERS = (200, 100, 30)
_MI_SIGMAS = (2.0, 1.0, 0.0)
_MI_FACTORS = (4, 2, 1)
_MI_NBINS = 32
_MI_MARGIN = 4  # voxels around the head kept by the crop

# The cross-contrast link runs on both templates smoothed and decimated by 2 along the
# axes whose voxels are at most this size (mm). At 1.75 x 1.75 x 2.5 mm (128x128x60) the
# dense metric cost ~17 s of CPU at full resolution, ~4 s decimated, for link errors of
# the same size (0.05-0.35 mm, 0.01-0.17 deg against the known transform on the phantom,
# vs 0.13-0.34 mm, 0.02 deg at full resolution). Coarser grids are left alone.
_MI_DECIMATE_BELOW_MM = 1.8

# DW volumes of a shell are registered to the shell's mean image this many times (the
# first template is the mean of the uncorrected volumes, then of the corrected ones).
_TEMPLATE_PASSES = 2
# Passes after the first start from the previous estimate and only run the finest
# _LS_REFINE_LEVELS levels of _LS_LEVELS (the coarse levels only matter far from the
# solution).
_LS_REFINE_LEVELS = 1
# voxels kept around the template region when the intermediate templates are resampled
# (only this box of the template is ever looked at)
_TEMPLATE_BOX_MARGIN = 10
# shells with fewer volumes are registered one by one to the b0 template (MI) instead
_MIN_SHELL_FOR_TEMPLATE = 3
# interpolation of the corrected output (templates use trilinear): cubic B-spline keeps
# the anisotropy of thin tracts better than trilinear (measured on the phantom)
_FINAL_ORDER = 3


def _foreground(image: np.ndarray, dilate: int = 2) -> np.ndarray:
    """Voxels above half the Otsu threshold, dilated - where the registration looks."""
    from scipy import ndimage
    from dipy.segment.threshold import otsu

    thr = 0.5 * float(otsu(np.asarray(image, np.float64)))
    fg = image > thr
    if dilate:
        fg = ndimage.binary_dilation(fg, iterations=dilate)
    return fg if fg.any() else np.ones(image.shape, bool)


def _register_mi(
    static: np.ndarray,
    moving: np.ndarray,
    affine: np.ndarray,
    static_mask: np.ndarray | None = None,
    starting: np.ndarray | None = None,
    decimate_below_mm: float = 0.0,
) -> np.ndarray:
    """Rigid world transform ``A`` with ``moving(A x) ~ static(x)`` (Mattes MI, dense).

    For images of different contrast (mean DW vs b0). Registration is done in a world
    frame shifted so that the grid centre is the origin, which decouples rotation from
    translation for the optimiser; the result is converted back to the true world frame.
    Dense sampling (``sampling_proportion=None``) keeps it deterministic. Axes whose
    voxel size is at most ``decimate_below_mm`` are decimated by 2 in both images first
    (Gaussian anti-aliasing, sigma 1 voxel; dipy's finest level is then that resolution).
    """
    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric
    from dipy.align.transforms import RigidTransform3D

    # crop both images (same grid) to the bounding box of the region of interest plus a
    # margin: the dense metric costs time per voxel and the background carries nothing
    region = static_mask if static_mask is not None else _foreground(static)
    idx = np.argwhere(region)
    lo = np.maximum(idx.min(0) - _MI_MARGIN, 0)
    hi = np.minimum(idx.max(0) + _MI_MARGIN + 1, static.shape[:3])
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    static, moving = static[box], moving[box]
    static_mask = None if static_mask is None else static_mask[box]
    affine = affine.copy()
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    factor = np.where(zooms <= decimate_below_mm, 2, 1)
    if np.any(factor > 1):
        # anti-alias then keep every 2nd voxel along those axes; the kept grid has the
        # same world origin
        from scipy import ndimage

        step = tuple(slice(None, None, int(f)) for f in factor)
        sig = 0.5 * (factor - 1)
        static = ndimage.gaussian_filter(np.asarray(static, np.float64), sig, mode="nearest")[step]
        moving = ndimage.gaussian_filter(np.asarray(moving, np.float64), sig, mode="nearest")[step]
        static_mask = None if static_mask is None else static_mask[step]
        affine[:3, :3] = affine[:3, :3] * factor

    shift = np.eye(4)
    shift[:3, 3] = -_grid_centre(static.shape, affine)
    g2w = shift @ affine
    start = np.eye(4) if starting is None else shift @ starting @ np.linalg.inv(shift)

    reg = AffineRegistration(
        metric=MutualInformationMetric(nbins=_MI_NBINS, sampling_proportion=None),
        level_iters=list(_MI_LEVEL_ITERS),
        sigmas=list(_MI_SIGMAS),
        factors=list(_MI_FACTORS),
        verbosity=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        amap = reg.optimize(
            np.asarray(static, np.float64),
            np.asarray(moving, np.float64),
            RigidTransform3D(),
            None,
            static_grid2world=g2w,
            moving_grid2world=g2w,
            starting_affine=start,
            static_mask=None if static_mask is None else static_mask.astype(np.int32),
        )
    return np.linalg.inv(shift) @ amap.affine @ shift


def _map_ordered(fn, items, workers: int = 1) -> list:
    """``[fn(x) for x in items]``, in threads when ``workers > 1`` (same results, same
    order: every call is independent and deterministic; the heavy scipy.ndimage / numpy
    calls release the GIL)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(int(workers), len(items))) as pool:
        return list(pool.map(fn, items))


def _resample(
    volume: np.ndarray, transform: np.ndarray, affine: np.ndarray, order: int = 1, box: tuple | None = None
) -> np.ndarray:
    """``volume(transform @ x)`` on the same grid (spline of ``order``; 0 outside the FOV).

    Orders > 1 can overshoot at edges; negative values are set to 0 (magnitude data).
    With ``box`` (a tuple of 3 slices with explicit start/stop), only that part of the
    output grid is computed (the same values as the full result there).
    """
    from scipy import ndimage

    affine = np.asarray(affine, float)
    # voxel of the output -> world -> moved world -> voxel of the input
    vox2vox = np.linalg.inv(affine) @ np.asarray(transform, float) @ affine
    shape = None
    offset = vox2vox[:3, 3]
    if box is not None:
        lo = np.array([b.start for b in box], float)
        shape = tuple(int(b.stop - b.start) for b in box)
        offset = vox2vox[:3, :3] @ lo + offset
    out = ndimage.affine_transform(
        np.asarray(volume, np.float64), vox2vox[:3, :3], offset=offset, output_shape=shape, order=order,
        mode="constant", cval=0.0, prefilter=order > 1,
    )
    if order > 1:
        np.clip(out, 0.0, None, out=out)
    return out.astype(np.float32)


def _resample_template(volume: np.ndarray, transform: np.ndarray, affine: np.ndarray, box: tuple) -> np.ndarray:
    """Trilinear ``volume(transform @ x)`` on the ``box`` part of the grid, float32 - for
    the intermediate templates only (dipy's Cython trilinear resampler, ~3x faster than
    ``scipy.ndimage.affine_transform``; 0 outside the field of view)."""
    from dipy.align.vector_fields import transform_3d_affine

    affine = np.asarray(affine, float)
    shift = np.eye(4)
    shift[:3, 3] = [b.start for b in box]
    vox2vox = np.linalg.inv(affine) @ np.asarray(transform, float) @ affine @ shift
    shape = np.array([b.stop - b.start for b in box], np.int32)
    return np.asarray(transform_3d_affine(np.ascontiguousarray(volume, np.float64), shape, vox2vox), np.float32)


def apply_motion(
    data: np.ndarray, affine: np.ndarray, transforms: np.ndarray, order: int = 3, workers: int = 1
) -> np.ndarray:
    """Resample every volume onto the reference grid: ``out_n(x) = data_n(transforms[n] @ x)``.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine (the same grid for input and output).
    transforms : ndarray, shape (N, 4, 4)
        Head motion of each volume in world mm (convention of this module, as returned
        by :func:`motion_correct`).
    order : int
        Spline order (1 trilinear, 3 cubic B-spline). Voxels mapped from outside the field
        of view are 0; negative overshoot of orders > 1 is set to 0. Volumes whose
        transform is exactly the identity are copied.
    workers : int
        Volumes resampled in this many threads (identical results).

    Returns
    -------
    ndarray, float32, shape (X, Y, Z, N)
    """
    arr = np.asarray(data)
    transforms = np.asarray(transforms, float)
    if arr.ndim != 4 or transforms.shape != (arr.shape[-1], 4, 4):
        raise ValueError(f"data {arr.shape} and transforms {transforms.shape} do not match")
    out = np.empty(arr.shape, np.float32)
    eye = np.eye(4)

    def one(n):
        if np.array_equal(transforms[n], eye):
            out[..., n] = arr[..., n]
        else:
            out[..., n] = _resample(arr[..., n], transforms[n], affine, order=order)

    _map_ordered(one, range(arr.shape[-1]), workers)
    return out


def _rotation_of(transform: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(np.asarray(transform, float)[:3, :3])
    r = u @ vt
    if np.linalg.det(r) < 0:  # a rigid registration never reflects; guard anyway
        u[:, -1] *= -1
        r = u @ vt
    return r


def rotate_bvecs(bvecs_voxel: np.ndarray, transforms: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Rotate voxel-axis b-vectors into the reference head frame.

    ``g_ref_world = R_n^T g_world`` for each volume ``n`` (see the module docstring), with
    voxel<->world conversion through the rotation part of ``affine``. Zero vectors (b0)
    stay zero.

    Parameters
    ----------
    bvecs_voxel : ndarray, shape (N, 3)
        As applied by the scanner, in voxel axes.
    transforms : ndarray, shape (N, 4, 4)
        Head motion of each volume (reference -> volume, world mm).
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine of the image.

    Returns
    -------
    ndarray, shape (N, 3), voxel axes.
    """
    bvecs_voxel = np.asarray(bvecs_voxel, float)
    world = voxel_to_world(bvecs_voxel, affine)
    rotated = np.empty_like(world)
    for n, t in enumerate(np.asarray(transforms, float)):
        rotated[n] = _rotation_of(t).T @ world[n]
    return world_to_voxel(rotated, affine)


def motion_parameters(transforms: np.ndarray, centre_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euler angles (deg) and translations (mm) of each rigid transform.

    Rotation angles are extrinsic about the world x (R-L), y (A-P), z (S-I) axes, applied
    in that order (``R = Rz @ Ry @ Rx``). The translation is the displacement of
    ``centre_world`` (the reference grid centre): ``T @ c - c``, so it does not depend on
    where the scanner puts its origin.
    """
    transforms = np.asarray(transforms, float)
    rot = np.array([Rotation.from_matrix(_rotation_of(t)).as_euler("xyz", degrees=True) for t in transforms])
    c = np.asarray(centre_world, float)
    trans = np.array([t[:3, :3] @ c + t[:3, 3] - c for t in transforms])
    return rot, trans


def framewise_displacement(rotation_deg: np.ndarray, translation_mm: np.ndarray, radius_mm: float = FD_RADIUS_MM) -> np.ndarray:
    """Power et al. (2012) framewise displacement between consecutive volumes (mm).

    ``FD_n = sum_i |d t_i| + radius * sum_i |d theta_i|`` (theta in radians); ``FD_0 = 0``.
    """
    rot = np.deg2rad(np.asarray(rotation_deg, float))
    trans = np.asarray(translation_mm, float)
    fd = np.zeros(len(rot))
    if len(rot) > 1:
        fd[1:] = np.abs(np.diff(trans, axis=0)).sum(1) + radius_mm * np.abs(np.diff(rot, axis=0)).sum(1)
    return fd


def _split_all(transforms: np.ndarray, pe_world, centre) -> tuple[np.ndarray, np.ndarray]:
    """Rigid parts and eddy terms (N, 3) of every transform (all rigid without ``pe_world``)."""
    eddy = np.zeros((len(transforms), 3))
    if pe_world is None:
        return transforms, eddy
    rigid = np.empty_like(transforms)
    for n, t in enumerate(transforms):
        rigid[n], eddy[n] = split_eddy(t, pe_world, centre)
    return rigid, eddy


def motion_correct(
    data: np.ndarray,
    affine: np.ndarray,
    bvals: np.ndarray,
    bvecs_voxel: np.ndarray,
    b0_threshold: float = B0_THRESHOLD,
    mask: np.ndarray | None = None,
    workers: int = 1,
    pe_world: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Motion (rigid) and eddy-current correction of every volume to the first b0, with b-vector rotation.

    Procedure
    ---------
    1. Reference: the first b0 (``bval <= b0_threshold``; the lowest-b volume if there is
       none). The other b0s are registered to it (same contrast: least squares after a
       linear intensity fit, Gauss-Newton, see :func:`_register_ls`); the mean of the
       aligned b0s is the b0 template (its head pose is the reference volume's).
    2. Per shell (b rounded to 100 s/mm^2) with >= 3 volumes: every DW volume is
       registered (same least-squares method) to the shell's mean image - first the mean
       of the uncorrected volumes (full coarse-to-fine pyramid), then, in a second pass,
       of the corrected ones (trilinear, around the head only), starting from the first
       estimate and at the finest level only. This avoids the b0/DW contrast difference
       for each of the many volumes. With ``pe_world`` each DW volume's transform also
       has the eddy-current terms of :mod:`csttool_nipype.science.eddy` (scale and shears
       along the phase-encoding axis).
    3. The shell template is linked to the b0 template once, by rigid Mattes mutual
       information (dipy ``AffineRegistration``, dense sampling, i.e. deterministic; axes
       with voxels <= 1.8 mm decimated by 2 first);
       ``transforms[n] = to_template[n] @ link``. Shells with fewer than 3 volumes are
       registered volume by volume to the b0 template with mutual information.
    4. Every volume except the reference is resampled once, cubic B-spline
       (:func:`apply_motion`); the reference volume is copied untouched. b-vectors are
       rotated by the rotation of each transform's rigid part (:func:`rotate_bvecs`).
    5. Report: with ``pe_world``, the shift along the phase-encoding axis that is linear in
       the gradient vector is eddy current, not head motion
       (:func:`~csttool_nipype.science.eddy.eddy_report`); the framewise displacement is
       computed from the head motion only.

    Timing (one thread): the cubic resampling (~0.35 s per volume of 128 x 128 x 60) and
    the mutual-information link (a few s) dominate; the registrations cost ~0.1-0.2 s per
    volume. ``workers`` threads divide all but the link.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
        Voxel order, any real dtype.
    affine : ndarray, shape (4, 4)
        Voxel-to-world (RAS+ mm) affine shared by all volumes.
    bvals : ndarray, shape (N,)
        s/mm^2.
    bvecs_voxel : ndarray, shape (N, 3)
        Applied gradient directions in voxel axes (scanner frame).
    b0_threshold : float
        s/mm^2.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Brain mask in the reference volume; the similarity metrics are evaluated inside
        it, dilated by 2 voxels so that the brain edge takes part. Without a mask, an
        automatic foreground (half the Otsu threshold, dilated) of each template is used.
    workers : int
        Threads for the per-volume work (registrations, resampling). The results do not
        depend on it (each volume is computed independently and deterministically).
    pe_world : ndarray, shape (3,), optional
        Phase-encoding axis as a world unit vector
        (:func:`~csttool_nipype.science.eddy.phase_encoding_world`); None: rigid only.

    Returns
    -------
    corrected : ndarray, float32, shape (X, Y, Z, N)
        Every volume on the reference grid in the reference head pose.
    bvecs_rotated : ndarray, shape (N, 3)
        b-vectors in voxel axes of the reference frame (``R_n^T g``).
    transforms : ndarray, shape (N, 4, 4)
        Head motion of each volume: reference point -> where it appears in volume n,
        world mm (identity for the reference volume).
    report : dict
        ``reference_volume`` (int), ``rotation_deg`` (N lists of 3 extrinsic x, y, z
        Euler angles), ``translation_mm`` (N lists of 3: displacement of the grid
        centre), ``framewise_displacement_mm`` (N; Power FD, 50 mm sphere, 0 for the
        first volume), ``mean_fd_mm`` (mean over volumes 1..N-1), ``max_fd_mm``; with
        ``pe_world`` also ``eddy_correction`` (True), ``phase_encoding_axis_world``,
        ``eddy_terms`` (N lists of 3), ``eddy_shift_mm``, ``eddy_displacement_mm`` (N),
        ``mean_eddy_mm``, ``max_eddy_mm`` and ``eddy_shift_separated``.
    """
    from scipy import ndimage

    arr = np.asarray(data)
    if arr.ndim != 4:
        raise ValueError(f"expected a 4D (X, Y, Z, N) array, got shape {arr.shape}")
    n_vol = arr.shape[-1]
    affine = np.asarray(affine, float)
    bvals = np.asarray(bvals, float).ravel()
    bvecs_voxel = np.asarray(bvecs_voxel, float)
    if bvals.size != n_vol or bvecs_voxel.shape != (n_vol, 3):
        raise ValueError(f"{bvals.size} b-values / {bvecs_voxel.shape} b-vectors for {n_vol} volumes")
    reg_mask = None
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != arr.shape[:3]:
            raise ValueError(f"mask shape {mask.shape} does not match image shape {arr.shape[:3]}")
        reg_mask = ndimage.binary_dilation(mask, iterations=2)

    b0_idx = np.flatnonzero(bvals <= b0_threshold)
    ref = int(b0_idx[0]) if b0_idx.size else int(np.argmin(bvals))
    if not b0_idx.size:
        b0_idx = np.array([ref])
    dw_idx = np.array([i for i in range(n_vol) if i not in set(b0_idx.tolist())], dtype=int)

    workers = max(1, int(workers))
    transforms = np.tile(np.eye(4), (n_vol, 1, 1))
    ref_vol = np.asarray(arr[..., ref], np.float32)
    region_ref = reg_mask if reg_mask is not None else _foreground(ref_vol)

    # 1. b0s -> reference b0 (same contrast), then the b0 template
    tpl_ref = _LSTemplate(ref_vol, affine, region_ref)
    others = [int(i) for i in b0_idx if i != ref]
    for i, t in zip(others, _map_ordered(lambda i: _register_ls(tpl_ref, arr[..., i], affine), others, workers)):
        transforms[i] = t
    aligned_b0 = [ref_vol.astype(np.float64)] + _map_ordered(
        lambda i: _resample(arr[..., i], transforms[i], affine), others, workers
    )
    template_b0 = np.mean(aligned_b0, axis=0, dtype=np.float64)

    # 2. each shell: DW volumes -> their own mean (same contrast), twice (the second
    #    pass warm-started and at the finest level only); then one cross-contrast link of
    #    the shell template to the b0 template
    shells = np.round(bvals[dw_idx] / 100.0) if dw_idx.size else np.array([])
    for shell in np.unique(shells):
        members = dw_idx[shells == shell]
        if members.size < _MIN_SHELL_FOR_TEMPLATE:
            # serially: _register_mi silences dipy's warnings with warnings.catch_warnings,
            # which is not thread-safe
            for i in members:
                transforms[i] = _register_mi(template_b0, arr[..., i], affine, region_ref)
            continue
        template = arr[..., members].astype(np.float64).mean(-1)
        # intermediate templates are only looked at around the head (registration region
        # of the first template, and the b0 region for the link): resample that box only
        region0 = _foreground(template) if reg_mask is None else reg_mask
        box = bounding_box(region0 | region_ref, _TEMPLATE_BOX_MARGIN)
        to_template = np.tile(np.eye(4), (members.size, 1, 1))
        for p in range(_TEMPLATE_PASSES):
            region = region0 if p == 0 else (_foreground(template) if reg_mask is None else reg_mask)
            tpl = _LSTemplate(template, affine, region, pe_world=pe_world)
            first = 0 if p == 0 else max(len(tpl.levels) - _LS_REFINE_LEVELS, 0)
            to_template = np.array(_map_ordered(
                lambda j: _register_ls(tpl, arr[..., members[j]], affine, starting=to_template[j], first_level=first),
                range(members.size), workers,
            ))
            parts = _map_ordered(
                lambda j: _resample_template(arr[..., members[j]], to_template[j], affine, box),
                range(members.size), workers,
            )
            template = template.copy()
            template[box] = np.mean(parts, axis=0, dtype=np.float64)
        link = _register_mi(template_b0, template, affine, region_ref, decimate_below_mm=_MI_DECIMATE_BELOW_MM)
        for j, i in enumerate(members):
            transforms[i] = to_template[j] @ link
    transforms[ref] = np.eye(4)
    corrected = apply_motion(arr, affine, transforms, order=_FINAL_ORDER, workers=workers)

    centre = affine[:3, :3] @ ((np.asarray(arr.shape[:3]) - 1) / 2.0) + affine[:3, 3]
    rigid, eddy = _split_all(transforms, pe_world, centre)
    bvecs_rot = rotate_bvecs(bvecs_voxel, rigid, affine)
    rot_deg, trans_mm = motion_parameters(rigid, centre)
    extra = {}
    if pe_world is not None:
        points = np.argwhere(region_ref) @ affine[:3, :3].T + affine[:3, 3]
        sep = eddy_report(trans_mm, eddy, pe_world, voxel_to_world(bvecs_voxel, affine), dw_idx, points, centre)
        trans_mm = sep.pop("head_translation_mm")
        extra = {"eddy_correction": True, "phase_encoding_axis_world": np.round(pe_world, 6).tolist(),
                 "eddy_terms": eddy.tolist(), **{k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                                 for k, v in sep.items()}}
    fd = framewise_displacement(rot_deg, trans_mm)
    report = {
        "reference_volume": ref,
        "rotation_deg": rot_deg.tolist(),
        "translation_mm": trans_mm.tolist(),
        "framewise_displacement_mm": fd.tolist(),
        "mean_fd_mm": float(fd[1:].mean()) if n_vol > 1 else 0.0,
        "max_fd_mm": float(fd.max()) if n_vol else 0.0,
        **extra,
    }
    logger.info("motion_correct: %d volumes, mean FD %.3f mm, max FD %.3f mm", n_vol, report["mean_fd_mm"], report["max_fd_mm"])
    return corrected, bvecs_rot, transforms, report

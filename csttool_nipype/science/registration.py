"""Registration of a subject's diffusion maps to the MNI template, and warps both ways.

Plain functions on arrays and paths (no Nipype). The template comes from the installed
packages only (:mod:`csttool_nipype.data`, ICBM 2009a symmetric tissue maps shipped
with nilearn); nothing is downloaded.

Method
------
The subject's fractional anisotropy (FA), masked, is registered to an FA-like image made
from the template's tissue maps: white matter (WM) 1, the rest of the brain a grey-matter
level ``r``, outside 0 (``pseudo-FA = wm + r (brain - wm)``). The template's WM map counts
the brainstem and the cerebral peduncles as white matter (they are fibre tracts with a
high FA, which the T1-based segmentation calls grey matter). No T1 image is needed. The
template is cropped to the brain and resampled to coarse grids. The stages are

1. centre of mass: the subject brain mask against the template brain
   (WM + GM + CSF fractions), a translation;
2. translation, rigid, then full affine, each with dipy's Parzen-window mutual
   information (dense sampling, so deterministic) against the pseudo-FA with ``r = 0.3``
   on a 4 mm grid (``affine_resolution_mm``), three-level pyramid (16, 8, 4 mm; the
   translation and rigid stages stop at 8 mm, :data:`RIGID_LEVELS`);
3. symmetric diffeomorphic registration (SyN), local cross-correlation, on the
   ``template_resolution_mm`` grid (2 mm by default; pyramid 8, 4, 2 mm with most
   iterations on the coarse levels, :data:`SYN_LEVEL_ITERS`), pre-aligned by the affine, with
   ``r`` measured on the subject (median FA of grey over white matter once the affine
   places the template), since cross-correlation needs matching contrast at the brain
   edge.

Quality numbers are computed on the subject grid after warping the template onto it
(:func:`registration_quality`).

Transform conventions (all in world RAS+ millimetres)
-----------------------------------------------------
dipy's convention is kept: the template is the *static* image, the subject the
*moving* one. :attr:`RegistrationResult.affine_subject_to_mni` is the affine found by
registering the subject *to* MNI, which, as a map of points, takes an **MNI point to
the subject point** that corresponds to it::

    x_subject = affine_subject_to_mni @ x_mni        (homogeneous, 4x4)

so resampling the subject onto an MNI grid pulls subject values through it, and the
matrix equals the *pose* that places an MNI brain in the scanner (as the phantom's
``pose`` is defined). Its inverse maps subject points to MNI points. The SyN map
(``mapping``, a :class:`dipy.align.imwarp.DiffeomorphicMap` whose ``prealign`` is the
affine) adds a displacement on top of it; use :func:`mni_to_subject_points` and
:func:`subject_to_mni_points` to map points through the whole transform, and
:func:`warp_to_subject` / :func:`warp_to_mni` for images.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .reliability import dice

logger = logging.getLogger(__name__)

#: Default SyN iterations per pyramid level (coarsest first) on the template grid. An
#: iteration on the finest (2 mm) level costs as much as eight on the next one, so the
#: finest level gets two iterations of a double step (:data:`SYN_FINEST_STEP_LENGTH`)
#: instead of five single ones, and the 4 mm level 10 instead of 15: SyN takes 40 % less
#: time, the phantoms are as accurate (mean error against the known pose 0.92 / 1.21 mm
#: on the 3 mm / 1.75 mm phantoms, 0.91 / 1.26 mm with the former (30, 15, 5)) and the WM
#: Dice of the Philips and Canon scans is 0.006 lower (0.734 / 0.562).
SYN_LEVEL_ITERS = (30, 10, 2)
#: Default affine-stage iterations per pyramid level (coarsest first).
AFFINE_LEVEL_ITERS = (100, 50, 10)
#: ``quality["acceptable"]`` needs at least these (the WM value is the pipeline's default
#: ``min_registration_dice``). Chance level of the WM Dice (random FA in the mask) is
#: 0.30; good registrations of real scans measured 0.57 (Canon, 12 directions) to 0.74
#: (Philips, 15 directions), the synthetic and phantom subjects 0.95.
QUALITY_MIN_WM_DICE = 0.5
QUALITY_MIN_BRAIN_DICE = 0.8

_TEMPLATE_MARGIN_MM = 8.0  # space kept around the template brain's bounding box
_FA_MAX = 1.0
#: SyN cross-correlation window radius (voxels of the template grid) and smoothing of
#: the update field (voxels): radius 3 on a 2 mm grid is a 14 mm window. The smoothing
#: is one voxel more than dipy's default: on the phantom, whose FA differs from the
#: template's WM map in places (as real FA does), sigma 2 let SyN bend the internal
#: capsule by up to 3 mm; sigma 3 keeps the whole-map error under 1.5 mm at the cost of
#: a slightly looser fit of real data (WM Dice 0.74 instead of 0.76 on the Philips scan).
_SYN_RADIUS = 3
_SYN_SIGMA_DIFF = 3.0
#: The same two sizes in mm, so that another template grid keeps the same physical
#: window and smoothing (radius 2 and sigma 2 voxels on a 3 mm grid).
_SYN_RADIUS_MM = 2.0 * _SYN_RADIUS
_SYN_SIGMA_DIFF_MM = 2.0 * _SYN_SIGMA_DIFF
#: Fixed-point iterations (at most) of dipy's field inversion, 4 per SyN iteration.
SYN_INV_ITER = 20
#: SyN step (voxels of the level's grid) per iteration; ``None`` on the finest level
#: means the same as on the others.
SYN_STEP_LENGTH = 0.25
SYN_FINEST_STEP_LENGTH = 0.5
#: Linear stages run in turn after the centre-of-mass alignment.
AFFINE_STAGES = ("translation", "rigid", "affine")
#: Pyramid levels (coarsest first) the translation and rigid stages use (None: all):
#: they stop at 8 mm, the affine stage then refines everything on the 4 mm level.
RIGID_LEVELS = 2


# --------------------------------------------------------------------------- template
@dataclass(frozen=True)
class Template:
    """The MNI template resampled to the registration grid.

    Attributes
    ----------
    wm : ndarray, float32, (X, Y, Z)
        White-matter fraction in [0, 1], with the grey matter of the brainstem and
        corticospinal tracts counted as white matter (see :func:`_fibre_tract_fraction`).
    brain : ndarray, float32, (X, Y, Z)
        Brain fraction (WM + GM + CSF) in [0, 1].
    affine : ndarray, (4, 4)
        Voxel-to-world (MNI RAS+ mm) affine of the grid.
    resolution_mm : float
        Voxel size, mm.
    """

    wm: np.ndarray
    brain: np.ndarray
    affine: np.ndarray
    resolution_mm: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.wm.shape)


def _load_tissue_1mm():
    from csttool_nipype import data

    wm, gm, csf, affine = data.load_mni_tissue()
    return (np.asarray(wm, np.float32), np.asarray(gm, np.float32),
            np.asarray(csf, np.float32), np.asarray(affine, float))


def _fibre_tract_fraction() -> np.ndarray:
    """Probability (1 mm MNI grid) of the brainstem and of the CST below MNI z = 0.

    The template's T1-based segmentation calls much of the brainstem and the cerebral
    peduncles grey matter (the brainstem is 35 % WM on average), while they are dense
    fibre tracts: on the Philips scan the median FA is 0.38 in the brainstem, 0.43 in
    white matter and 0.15 in grey matter. This map lets :func:`load_template` count that
    "grey matter" as white matter, so the template's WM map has the contrast of an FA
    map there. Above z = 0 the Juelich CST map reaches into the motor cortex, which
    must stay grey matter, so it is used below z = 0 only (the same rule as the phantom).
    """
    from csttool_nipype import data

    (stem,), affine = data.load_atlas_maps("harvard_oxford", ["Brain-Stem"])
    cst, _ = data.load_atlas_maps("juelich", ["WM_Corticospinal_tract_L", "WM_Corticospinal_tract_R"])
    cst = np.maximum(np.asarray(cst[0]), np.asarray(cst[1]))
    z = nib.affines.apply_affine(affine, np.c_[np.zeros((cst.shape[2], 2)), np.arange(cst.shape[2])])[:, 2]
    cst = cst * (z < 0)[None, None, :]
    return np.maximum(np.asarray(stem), cst).astype(np.float32)


def _resample_grid(image, affine, out_shape, out_affine, order=1, smooth_mm=0.0):
    """Sample ``image`` (on ``affine``) on a grid, with optional Gaussian pre-smoothing (mm)."""
    image = np.asarray(image, np.float32)
    if smooth_mm > 0:
        zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
        image = ndimage.gaussian_filter(image, smooth_mm / zooms, mode="constant")
    vox = np.linalg.inv(affine) @ out_affine
    return ndimage.affine_transform(image, vox[:3, :3], vox[:3, 3], output_shape=tuple(out_shape),
                                    order=order, mode="constant", cval=0.0).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _template_1mm():
    """WM (fibre tracts included) and brain fractions on the 1 mm grid, its affine, and the
    MNI box (mm, lower and upper corner) of the template grids: the brain (> 0.05) plus
    :data:`_TEMPLATE_MARGIN_MM`. Cached per process (read-only arrays)."""
    wm, gm, csf, aff = _load_tissue_1mm()
    brain = np.clip(wm + gm + csf, 0, 1)
    wm = np.clip(wm + gm * _fibre_tract_fraction(), 0, 1)
    inside = brain > 0.05
    ijk_lo, ijk_hi = [], []
    for axis in range(3):
        hit = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        ijk_lo.append(hit[0])
        ijk_hi.append(hit[-1])
    corners = nib.affines.apply_affine(aff, np.array([ijk_lo, ijk_hi], float))
    lo = corners.min(0) - _TEMPLATE_MARGIN_MM
    hi = corners.max(0) + _TEMPLATE_MARGIN_MM
    wm.setflags(write=False)
    brain.setflags(write=False)
    return wm, brain, aff, (lo, hi)


@functools.lru_cache(maxsize=4)
def load_template(resolution_mm: float = 2.0) -> Template:
    """MNI template (WM and brain fractions) cropped to the brain and resampled.

    Cached per process and on disk (:mod:`csttool_nipype.array_cache`): a fresh process
    memory-maps it in milliseconds instead of preparing it from the packages (~4 s).

    Parameters
    ----------
    resolution_mm : float
        Isotropic voxel size of the output grid, mm (1 mm keeps the source sampling).

    Returns
    -------
    Template
        Read-only arrays.
    """
    from csttool_nipype import array_cache, data

    resolution_mm = float(resolution_mm)
    if not resolution_mm > 0:
        raise ValueError(f"template resolution must be positive, got {resolution_mm}")
    arrays = array_cache.cached_arrays(
        f"template-{resolution_mm:g}mm", lambda: _compute_template(resolution_mm),
        code_files=[__file__, data.__file__], data_files=data.tissue_and_atlas_files(),
    )
    affine = np.array(arrays["affine"])
    affine.setflags(write=False)
    return Template(wm=arrays["wm"], brain=arrays["brain"], affine=affine, resolution_mm=resolution_mm)


def _compute_template(resolution_mm: float) -> dict:
    """:func:`load_template`'s arrays (``wm``, ``brain``, ``affine``), from the packages' files."""
    wm, brain, aff, (lo, hi) = _template_1mm()
    shape = np.ceil((hi - lo) / resolution_mm).astype(int) + 1
    out_aff = np.diag([resolution_mm] * 3 + [1.0])
    out_aff[:3, 3] = lo
    src_zoom = float(np.sqrt((aff[:3, :3] ** 2).sum(0)).mean())
    # Gaussian anti-aliasing matched to the new voxel (FWHM^2 = r^2 - r0^2)
    sigma = 0.0 if resolution_mm <= src_zoom else np.sqrt(resolution_mm**2 - src_zoom**2) / 2.3548
    # smooth and sample only the part of the 1 mm grid the output grid reaches (plus the
    # kernel's reach): the rest is outside the brain's box and its margin
    corners = np.array([lo, lo + (shape - 1) * resolution_mm])
    ijk = nib.affines.apply_affine(np.linalg.inv(aff), corners)
    halo = int(np.ceil(4.0 * sigma / src_zoom)) + 2
    a = np.maximum(np.floor(ijk.min(0)).astype(int) - halo, 0)
    b = np.minimum(np.ceil(ijk.max(0)).astype(int) + halo + 1, wm.shape)
    box = tuple(slice(int(i), int(j)) for i, j in zip(a, b))
    box_aff = aff @ nib.affines.from_matvec(np.eye(3), a)
    wm_r = np.clip(_resample_grid(wm[box], box_aff, shape, out_aff, smooth_mm=sigma), 0, 1)
    brain_r = np.clip(_resample_grid(brain[box], box_aff, shape, out_aff, smooth_mm=sigma), 0, 1)
    logger.debug("template at %.1f mm: shape %s", resolution_mm, tuple(shape))
    return {"wm": wm_r, "brain": brain_r, "affine": out_aff}


# --------------------------------------------------------------------------- result
@dataclass
class RegistrationResult:
    """Outcome of :func:`register_to_mni`.

    Attributes
    ----------
    affine_subject_to_mni : ndarray, (4, 4)
        dipy's registration affine of the subject (moving) to MNI (static), world mm.
        As a point map it sends MNI points to subject points:
        ``x_subject = A @ x_mni``; see the module docstring.
    mapping : DiffeomorphicMap or None
        SyN map on the template grid, pre-aligned by the affine (None when SyN was
        skipped). ``mapping.transform`` pulls a subject image onto the template grid,
        ``mapping.transform_inverse`` an MNI image onto the subject grid.
    quality : dict
        Numbers computed after warping the template onto the subject (see
        :func:`registration_quality`): ``wm_dice``, ``brain_dice``, ``correlation``
        (all in [0, 1] or [-1, 1]; higher is better), ``affine_wm_dice`` (the same
        Dice with the affine part only) and ``acceptable`` (bool: both Dice values above
        :data:`QUALITY_MIN_WM_DICE` / :data:`QUALITY_MIN_BRAIN_DICE`).
    template_shape, template_affine :
        The template grid the registration ran on (the SyN field's grid).
    subject_shape, subject_affine :
        The subject grid the registration was computed for.
    template_resolution_mm : float
        Voxel size of the template grid, mm.
    runtime_s : float
        Wall-clock time of :func:`register_to_mni`, seconds.
    stages : dict
        Diagnostics: centre-of-mass translation (mm), wall time per stage (s), the
        grey/white FA ratio used for SyN, total CPU time ``cpu_s``.
    """

    affine_subject_to_mni: np.ndarray
    mapping: object | None
    quality: dict
    template_shape: tuple[int, int, int]
    template_affine: np.ndarray
    subject_shape: tuple[int, int, int]
    subject_affine: np.ndarray
    template_resolution_mm: float = 2.0
    runtime_s: float = float("nan")
    stages: dict = field(default_factory=dict)

    @property
    def mni_to_subject_affine(self) -> np.ndarray:
        """Point map MNI mm -> subject mm of the affine part (same matrix as ``affine_subject_to_mni``)."""
        return np.asarray(self.affine_subject_to_mni, float)

    @property
    def subject_to_mni_affine(self) -> np.ndarray:
        """Point map subject mm -> MNI mm of the affine part (its inverse)."""
        return np.linalg.inv(self.affine_subject_to_mni)


# --------------------------------------------------------------------------- helpers
def _check_3d(name, arr, shape=None):
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3D array, got shape {arr.shape}")
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} shape {arr.shape} does not match {tuple(shape)}")
    return arr


def _check_affine(affine):
    affine = np.asarray(affine, float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError("affine must be a finite, invertible 4x4 matrix")
    return affine


def _clean_fa(fa, mask):
    fa = np.nan_to_num(np.asarray(fa, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return np.where(mask, np.clip(fa, 0.0, _FA_MAX), 0.0).astype(np.float32)


def _affine_map(affine, template: Template | None = None, shape=None, grid=None):
    from dipy.align.imaffine import AffineMap

    return AffineMap(np.asarray(affine, float),
                     domain_grid_shape=None if template is None else template.shape,
                     domain_grid2world=None if template is None else template.affine,
                     codomain_grid_shape=shape, codomain_grid2world=grid)


def registration_quality(fa, mask, template_wm, template_brain) -> dict:
    """Agreement between a subject and the template warped onto it.

    Parameters
    ----------
    fa : ndarray, (X, Y, Z)
        Subject FA (or any WM-bright map).
    mask : ndarray of bool, (X, Y, Z)
        Subject brain mask.
    template_wm, template_brain : ndarray, (X, Y, Z)
        Template WM and brain fractions warped onto the subject grid, in [0, 1].

    Returns
    -------
    dict
        ``wm_dice``: Dice of the template WM (fraction > 0.5) and the same number of
        highest-FA voxels, inside the mask (volume-matched, so it measures position,
        not the FA scale); ``brain_dice``: Dice of the template brain (> 0.5) and the
        mask; ``correlation``: Pearson correlation of FA and template WM fraction
        inside the mask.
    """
    mask = np.asarray(mask, bool)
    fa_in = np.asarray(fa, float)[mask]
    wm_in = np.asarray(template_wm, float)[mask]
    t_wm = wm_in > 0.5
    n = int(t_wm.sum())
    if n == 0 or n == fa_in.size:
        wm_dice = 0.0
    else:
        # stable sort so ties are broken deterministically
        order = np.argsort(-fa_in, kind="stable")
        s_wm = np.zeros(fa_in.size, bool)
        s_wm[order[:n]] = True
        wm_dice = dice(s_wm, t_wm, empty=0.0)
    brain_dice = dice(np.asarray(template_brain) > 0.5, mask, empty=0.0)
    if fa_in.std() > 0 and wm_in.std() > 0:
        corr = float(np.corrcoef(fa_in, wm_in)[0, 1])
    else:
        corr = 0.0
    return {"wm_dice": round(wm_dice, 4), "brain_dice": round(brain_dice, 4), "correlation": round(corr, 4)}


# --------------------------------------------------------------------------- registration
#: FA of grey matter relative to white matter assumed for the affine stages' template
#: (mutual information does not need it exact).
_GM_TO_WM_FA = 0.3


def _grid_interior(shape) -> np.ndarray:
    """True on a grid but on its six faces (the outermost slices of a field of view)."""
    out = np.zeros(tuple(int(n) for n in shape[:3]), bool)
    out[1:-1, 1:-1, 1:-1] = True
    return out


def _misses_brainstem(tpl: Template, brain: np.ndarray, inside: np.ndarray) -> bool:
    """Whether a field of view misses a level of the brainstem from the lower medulla up.

    The brainstem column is the template brain within MNI |x| <= 20 mm, -45 <= y <= 0 mm;
    a level (one template voxel of z, from
    :data:`~csttool_nipype.science.coverage.FULL_COVERAGE_Z_MM` to 0 mm) is missed when less
    than half of it is ``inside`` (the rule :mod:`~csttool_nipype.science.coverage` applies
    to the warped template).
    """
    from .coverage import FULL_COVERAGE_Z_MM, LEVEL_MIN_FRACTION

    mm = nib.affines.apply_affine(tpl.affine, np.indices(tpl.shape).reshape(3, -1).T).reshape(*tpl.shape, 3)
    column = brain & (np.abs(mm[..., 0]) <= 20) & (mm[..., 1] >= -45) & (mm[..., 1] <= 0)
    for z in np.unique(mm[..., 2][column & (mm[..., 2] >= FULL_COVERAGE_Z_MM) & (mm[..., 2] <= 0)]):
        level = column & (mm[..., 2] == z)
        if inside[level].mean() < LEVEL_MIN_FRACTION:
            return True
    return False


def _field_of_view(tpl: Template, affine_mni: np.ndarray, shape, affine: np.ndarray) -> np.ndarray:
    """Template voxels whose subject position (through the affine ``affine_mni``, MNI mm ->
    subject mm) lies inside the subject grid but its outermost slices (bool, template grid)."""
    ijk = np.indices(tpl.shape, dtype=np.float64).reshape(3, -1).T
    to_voxel = np.linalg.inv(np.asarray(affine, float)) @ np.asarray(affine_mni, float) @ np.asarray(tpl.affine, float)
    vox = nib.affines.apply_affine(to_voxel, ijk)
    hi = np.asarray(shape[:3], float) - 1.5
    return np.all((vox >= 0.5) & (vox <= hi), axis=1).reshape(tpl.shape)


def _pseudo_fa(tpl: Template, gm_to_wm: float) -> np.ndarray:
    """Template image with an FA-like contrast: WM 1, the rest of the brain ``gm_to_wm``, outside 0."""
    img = np.asarray(tpl.wm) + gm_to_wm * np.clip(np.asarray(tpl.brain) - np.asarray(tpl.wm), 0, 1)
    return np.array(img, dtype=np.float32, copy=True, order="C")


def _gm_to_wm_ratio(fa_m, mask, affine, affine_mni, tpl: Template) -> float:
    """Median FA outside WM over median FA in WM, with the template placed by the affine.

    Matches the SyN template's contrast to this subject (cross-correlation is only
    invariant to a linear intensity change, and the brain edge is a step from 0 to the
    grey-matter FA level in the masked FA). Falls back to the default when too few
    voxels are confidently classified.
    """
    amap = _affine_map(affine_mni, tpl, fa_m.shape, affine)
    wm = amap.transform_inverse(np.array(tpl.wm))
    brain = amap.transform_inverse(np.array(tpl.brain))
    in_wm = mask & (wm > 0.9)
    in_gm = mask & (wm < 0.1) & (brain > 0.9)
    if in_wm.sum() < 50 or in_gm.sum() < 50:
        return _GM_TO_WM_FA
    fa_wm = float(np.median(fa_m[in_wm]))
    if fa_wm <= 0:
        return _GM_TO_WM_FA
    return float(np.clip(np.median(fa_m[in_gm]) / fa_wm, 0.1, 0.6))


def register_to_mni(
    fa: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    b0: np.ndarray | None = None,
    template_resolution_mm: float = 2.0,
    syn: bool = True,
    level_iters: tuple[int, ...] = SYN_LEVEL_ITERS,
    affine_level_iters: tuple[int, ...] = AFFINE_LEVEL_ITERS,
    affine_resolution_mm: float = 4.0,
    seed: int = 0,
    syn_inv_iter: int = SYN_INV_ITER,
    syn_step_length: float = SYN_STEP_LENGTH,
    syn_finest_step_length: float | None = SYN_FINEST_STEP_LENGTH,
    affine_stages: tuple[str, ...] = AFFINE_STAGES,
    rigid_levels: int | None = RIGID_LEVELS,
) -> RegistrationResult:
    """Register a subject's FA map to the MNI template (affine, then SyN).

    Parameters
    ----------
    fa : ndarray, (X, Y, Z)
        Fractional anisotropy in [0, 1] (NaN and values outside are clipped).
    mask : ndarray of bool, (X, Y, Z)
        Brain mask; FA outside it is ignored.
    affine : ndarray, (4, 4)
        Voxel-to-world (RAS+ mm) affine of the subject grid, any voxel order.
    b0 : ndarray, (X, Y, Z), optional
        Mean b0 image. Not needed by the method (FA alone drives it); accepted so that
        callers can pass it without special-casing, and checked for shape.
    template_resolution_mm : float
        Voxel size of the template grid the registration runs on, mm (2–3 mm is fast).
    syn : bool
        Run the non-linear (SyN) stage after the affine one.
    level_iters : sequence of int
        SyN iterations per pyramid level, coarsest first.
    affine_level_iters : sequence of int
        Iterations of each affine stage per pyramid level, coarsest first (three levels).
    affine_resolution_mm : float
        Voxel size of the template grid for the affine stages, mm (never finer than
        ``template_resolution_mm``); 4 mm keeps them fast with sub-millimetre accuracy.
    seed : int
        Kept for the pipeline's seeding convention; every step is deterministic
        (dense metric sampling), so the result does not depend on it.
    syn_inv_iter : int
        Fixed-point iterations (at most) of each inversion of the SyN fields.
    syn_step_length, syn_finest_step_length : float
        SyN step per iteration (voxels of the level's grid), on the coarse levels and on
        the finest one (``None``: the same).
    affine_stages : sequence of {'translation', 'rigid', 'affine'}
        Linear stages run in turn (the last one gives the affine).
    rigid_levels : int, optional
        Number of pyramid levels (coarsest first) on which the translation and rigid
        stages iterate (None: all); default :data:`RIGID_LEVELS`.

    Returns
    -------
    RegistrationResult
    """
    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric, transform_centers_of_mass
    from dipy.align.imwarp import RegistrationStages, SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric
    from dipy.align.transforms import AffineTransform3D, RigidTransform3D, TranslationTransform3D

    t_start, cpu_start = time.perf_counter(), time.process_time()
    affine = _check_affine(affine)
    fa = _check_3d("fa", fa)
    mask = _check_3d("mask", mask, fa.shape).astype(bool)
    if b0 is not None:
        _check_3d("b0", b0, fa.shape)
    if not mask.any():
        raise ValueError("the brain mask is empty")
    unknown = set(affine_stages) - {"translation", "rigid", "affine"}
    if unknown:
        raise ValueError(f"unknown affine stages {sorted(unknown)}; use translation, rigid, affine")
    fa_m = _clean_fa(fa, mask)
    if not np.any(fa_m > 0):
        raise ValueError("FA is zero everywhere inside the brain mask")
    del seed  # deterministic: dense sampling everywhere

    stages = {}
    t0, c0 = time.perf_counter(), time.process_time()
    tpl = load_template(template_resolution_mm)
    tpl_aff = load_template(max(float(affine_resolution_mm), tpl.resolution_mm))
    stages["template_s"] = round(time.perf_counter() - t0, 2)
    stages["template_cpu_s"] = round(time.process_time() - c0, 2)  # first call per process reads the files

    # 1. centre of mass of the brain masks
    com = transform_centers_of_mass(np.array(tpl_aff.brain), tpl_aff.affine, mask.astype(np.float32), affine)
    current = com.affine
    stages["com_translation_mm"] = [round(float(v), 2) for v in current[:3, 3]]

    # 2. translation -> rigid -> affine, mutual information
    iters = [int(n) for n in affine_level_iters]
    static = _pseudo_fa(tpl_aff, _GM_TO_WM_FA)
    transforms = {"translation": TranslationTransform3D, "rigid": RigidTransform3D, "affine": AffineTransform3D}
    for name in affine_stages:
        # the translation and rigid stages may stop iterating after the coarser levels
        # (zero iterations on the finer ones): the affine stage refines all 12
        # parameters on every level after them
        n_levels = len(iters)
        if name != "affine" and rigid_levels is not None:
            n_levels = max(1, min(int(rigid_levels), len(iters)))
        areg = AffineRegistration(metric=MutualInformationMetric(nbins=32, sampling_proportion=None),
                                  level_iters=iters[:n_levels] + [0] * (len(iters) - n_levels),
                                  sigmas=[3.0, 1.0, 0.0][-len(iters):],
                                  factors=[4, 2, 1][-len(iters):], verbosity=0)
        t0, c0 = time.perf_counter(), time.process_time()
        amap = areg.optimize(static, fa_m, transforms[name](), None, static_grid2world=tpl_aff.affine,
                             moving_grid2world=affine, starting_affine=current)
        current = amap.affine
        stages[f"{name}_s"] = round(time.perf_counter() - t0, 2)
        stages[f"{name}_cpu_s"] = round(time.process_time() - c0, 2)
    affine_mni = np.array(current, float)
    if np.linalg.det(affine_mni[:3, :3]) <= 0:
        raise RuntimeError("affine registration to MNI produced a reflection; the input orientation is broken")

    # 3. SyN, cross-correlation
    mapping = None
    if syn:
        t0, c0 = time.perf_counter(), time.process_time()
        radius = max(1, int(round(_SYN_RADIUS_MM / tpl.resolution_mm)))
        sigma_diff = _SYN_SIGMA_DIFF_MM / tpl.resolution_mm
        level_iters = [int(n) for n in level_iters]
        finest_step = syn_step_length if syn_finest_step_length is None else syn_finest_step_length
        done = {}

        def callback(opt, stage):
            if stage == RegistrationStages.SCALE_START:
                opt.step_length = finest_step if opt.current_level == 0 else syn_step_length
            elif stage == RegistrationStages.SCALE_END:
                done[int(opt.current_level)] = int(opt.niter)

        sdr = SymmetricDiffeomorphicRegistration(CCMetric(3, sigma_diff=sigma_diff, radius=radius),
                                                 level_iters=level_iters, step_length=syn_step_length,
                                                 inv_iter=int(syn_inv_iter), callback=callback)
        sdr.verbosity = 0
        ratio = _gm_to_wm_ratio(fa_m, mask, affine, affine_mni, tpl_aff)
        stages["gm_to_wm_fa_ratio"] = round(ratio, 3)
        static = _pseudo_fa(tpl, ratio)
        moving = fa_m
        inside = _field_of_view(tpl, affine_mni, fa.shape, affine)
        brain = static > 0
        if _misses_brainstem(tpl, brain, inside):
            # a field of view that stops above the medulla: SyN would stretch the lowest
            # slices imaged down over the template's missing brainstem (by 20 mm at the pons
            # on a cropped scan); the template is matched only where the subject is imaged,
            # and the outermost slice, which preprocessing leaves unreliable, is left out of
            # both images. Whole-brain scans (brainstem imaged) are registered as before.
            static = np.where(inside, static, 0.0).astype(static.dtype)
            moving = np.where(_grid_interior(fa.shape), fa_m, 0.0).astype(fa_m.dtype)
            stages["syn_field_of_view_share"] = round(float(inside[brain].mean()), 3)
        mapping = sdr.optimize(static, moving, static_grid2world=tpl.affine, moving_grid2world=affine,
                               prealign=affine_mni)
        stages["syn_iterations"] = [done.get(level, 0) for level in range(len(level_iters) - 1, -1, -1)]
        stages["syn_s"] = round(time.perf_counter() - t0, 2)
        stages["syn_cpu_s"] = round(time.process_time() - c0, 2)

    result = RegistrationResult(affine_subject_to_mni=affine_mni, mapping=mapping, quality={},
                                template_shape=tpl.shape, template_affine=np.array(tpl.affine),
                                subject_shape=tuple(int(n) for n in fa.shape), subject_affine=affine,
                                template_resolution_mm=tpl.resolution_mm, stages=stages)

    # quality after warping the template onto the subject
    c0 = time.process_time()
    t_wm = warp_to_subject(tpl.wm, tpl.affine, result, fa.shape, affine)
    t_brain = warp_to_subject(tpl.brain, tpl.affine, result, fa.shape, affine)
    quality = registration_quality(fa_m, mask, t_wm, t_brain)
    if syn:
        aff_only = _affine_map(affine_mni, tpl, fa.shape, affine).transform_inverse(np.array(tpl.wm))
        quality["affine_wm_dice"] = registration_quality(fa_m, mask, aff_only, t_brain)["wm_dice"]
    else:
        quality["affine_wm_dice"] = quality["wm_dice"]
    quality["acceptable"] = bool(quality["wm_dice"] >= QUALITY_MIN_WM_DICE
                                 and quality["brain_dice"] >= QUALITY_MIN_BRAIN_DICE)
    result.quality = quality
    stages["quality_cpu_s"] = round(time.process_time() - c0, 2)
    result.runtime_s = round(time.perf_counter() - t_start, 2)
    stages["cpu_s"] = round(time.process_time() - cpu_start, 2)
    logger.info("registration to MNI (%.1f mm template, syn=%s) took %.1f s (%.1f s CPU): %s",
                tpl.resolution_mm, syn, result.runtime_s, stages["cpu_s"], quality)
    if not quality["acceptable"]:
        logger.warning("registration to MNI looks poor (WM Dice %.2f, brain Dice %.2f): check the QC picture",
                       quality["wm_dice"], quality["brain_dice"])
    return result


# --------------------------------------------------------------------------- warps
def _apply_3d_or_4d(fn, image):
    image = np.asarray(image)
    if image.ndim == 3:
        return fn(image)
    if image.ndim == 4:
        return np.stack([fn(image[..., i]) for i in range(image.shape[3])], axis=-1)
    raise ValueError(f"expected a 3D or 4D image, got shape {image.shape}")


def _prep(image, interpolation):
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    # a writable float32 copy (dipy's Cython warps need writable buffers); labels and
    # masks survive the float32 round trip of nearest-neighbour interpolation
    return np.array(image, dtype=np.float32, copy=True, order="C")


def warp_to_subject(
    mni_image: np.ndarray,
    mni_affine: np.ndarray,
    result: RegistrationResult,
    subject_shape: tuple[int, int, int],
    subject_affine: np.ndarray,
    interpolation: str = "linear",
) -> np.ndarray:
    """Resample an image in MNI space onto a subject grid through the registration.

    Parameters
    ----------
    mni_image : ndarray, (X, Y, Z) or (X, Y, Z, N)
        Image on any MNI grid (e.g. a 1 mm atlas, in any voxel order).
    mni_affine : ndarray, (4, 4)
        Its voxel-to-world (MNI mm) affine.
    result : RegistrationResult
    subject_shape : tuple of int
        Output grid shape (3D).
    subject_affine : ndarray, (4, 4)
        Output voxel-to-world (subject RAS+ mm) affine; need not be the grid the
        registration was run on.
    interpolation : {'linear', 'nearest'}

    Returns
    -------
    ndarray, float32, ``subject_shape`` (+ (N,) for 4D input)
        Zero outside the MNI image.
    """
    mni_affine = _check_affine(mni_affine)
    subject_affine = _check_affine(subject_affine)
    shape = tuple(int(n) for n in subject_shape)
    w2g = np.linalg.inv(mni_affine)

    if result.mapping is not None:
        mapping = result.mapping

        def fn(vol):
            return mapping.transform_inverse(_prep(vol, interpolation), interpolation=interpolation,
                                             image_world2grid=w2g, out_shape=shape,
                                             out_grid2world=subject_affine)
    else:
        amap = _affine_map(result.affine_subject_to_mni, None)

        def fn(vol):
            vol = _prep(vol, interpolation)
            return amap.transform_inverse(vol, interpolation=interpolation, image_grid2world=mni_affine,
                                          sampling_grid_shape=shape, sampling_grid2world=subject_affine)

    return _apply_3d_or_4d(lambda v: np.asarray(fn(v), np.float32), mni_image)


def warp_to_mni(
    subject_image: np.ndarray,
    subject_affine: np.ndarray,
    result: RegistrationResult,
    *,
    out_shape: tuple[int, int, int] | None = None,
    out_affine: np.ndarray | None = None,
    interpolation: str = "linear",
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a subject image onto an MNI grid through the registration.

    Parameters
    ----------
    subject_image : ndarray, (X, Y, Z) or (X, Y, Z, N)
    subject_affine : ndarray, (4, 4)
        Its voxel-to-world (subject RAS+ mm) affine.
    result : RegistrationResult
    out_shape, out_affine : optional
        MNI output grid; default the template grid the registration ran on.
    interpolation : {'linear', 'nearest'}

    Returns
    -------
    image : ndarray, float32
    mni_affine : ndarray, (4, 4)
        Voxel-to-MNI-world affine of the output.
    """
    subject_affine = _check_affine(subject_affine)
    if (out_shape is None) != (out_affine is None):
        raise ValueError("give both out_shape and out_affine, or neither")
    if out_shape is None:
        out_shape, out_affine = result.template_shape, result.template_affine
    out_affine = _check_affine(out_affine)
    shape = tuple(int(n) for n in out_shape)
    w2g = np.linalg.inv(subject_affine)

    if result.mapping is not None:
        mapping = result.mapping

        def fn(vol):
            return mapping.transform(_prep(vol, interpolation), interpolation=interpolation,
                                     image_world2grid=w2g, out_shape=shape, out_grid2world=out_affine)
    else:
        amap = _affine_map(result.affine_subject_to_mni, None)

        def fn(vol):
            return amap.transform(_prep(vol, interpolation), interpolation=interpolation,
                                  image_grid2world=subject_affine, sampling_grid_shape=shape,
                                  sampling_grid2world=out_affine)

    return _apply_3d_or_4d(lambda v: np.asarray(fn(v), np.float32), subject_image), np.array(out_affine)


def mni_to_subject_points(points_mni: np.ndarray, result: RegistrationResult) -> np.ndarray:
    """Map MNI world points (N, 3) in mm to the subject's world space (mm), SyN included."""
    pts = np.atleast_2d(np.asarray(points_mni, float))
    if result.mapping is None:
        return nib.affines.apply_affine(result.affine_subject_to_mni, pts)
    return np.asarray(result.mapping.transform_points(pts.astype(np.float64)), float)


def subject_to_mni_points(points_subject: np.ndarray, result: RegistrationResult) -> np.ndarray:
    """Map subject world points (N, 3) in mm to MNI world space (mm), SyN included."""
    pts = np.atleast_2d(np.asarray(points_subject, float))
    if result.mapping is None:
        return nib.affines.apply_affine(np.linalg.inv(result.affine_subject_to_mni), pts)
    return np.asarray(result.mapping.transform_points_inverse(pts.astype(np.float64)), float)


# --------------------------------------------------------------------------- files
_FORMAT_VERSION = 1
_MAP_ARRAYS = ("disp_grid2world", "domain_grid2world", "codomain_grid2world", "prealign")
_MAP_SHAPES = ("disp_shape", "domain_shape", "codomain_shape")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_registration(result: RegistrationResult, out_dir: str | Path) -> dict[str, Path]:
    """Write a registration to a folder, loadable by :func:`load_registration`.

    Files
    -----
    ``affine_subject_to_mni.txt`` / ``.npy``
        :attr:`RegistrationResult.affine_subject_to_mni` (dipy convention: maps MNI
        world mm to subject world mm), text with 17 significant digits and binary.
    ``affine_mni_from_subject.txt``
        Its inverse (maps subject world mm to MNI world mm), for convenience.
    ``syn_forward.nii``, ``syn_backward.nii`` (only with SyN)
        dipy's displacement fields, float32 (X, Y, Z, 3) in mm, on the template grid
        (the NIfTI affine is the field's voxel-to-MNI affine). ``forward``/``backward``
        are dipy's internal names; which one an image warp uses depends on
        ``is_inverse``, stored in the JSON.
    ``registration.json``
        Grids, the DiffeomorphicMap's metadata (shapes, affines, prealign,
        ``is_inverse``), quality, stage timings and the convention in words.

    Returns
    -------
    dict of str -> Path
        Keys ``affine_txt``, ``affine_npy``, ``inverse_affine_txt``, ``json`` and, with
        SyN, ``syn_forward``, ``syn_backward``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    aff = np.asarray(result.affine_subject_to_mni, float)
    paths = {
        "affine_txt": out_dir / "affine_subject_to_mni.txt",
        "affine_npy": out_dir / "affine_subject_to_mni.npy",
        "inverse_affine_txt": out_dir / "affine_mni_from_subject.txt",
        "json": out_dir / "registration.json",
    }
    np.savetxt(paths["affine_txt"], aff, fmt="%.17g",
               header="dipy registration affine of the subject (moving) to MNI (static): x_subject = A @ x_mni (mm)")
    np.save(paths["affine_npy"], aff)
    np.savetxt(paths["inverse_affine_txt"], np.linalg.inv(aff), fmt="%.17g",
               header="inverse of affine_subject_to_mni: x_mni = B @ x_subject (mm)")
    meta = {
        "format_version": _FORMAT_VERSION,
        "convention": "world RAS+ mm; affine_subject_to_mni maps MNI points to subject points (dipy: static=MNI, "
                      "moving=subject); the SyN map is a dipy DiffeomorphicMap whose transform() pulls subject images "
                      "onto MNI and transform_inverse() MNI images onto the subject",
        "template_shape": list(result.template_shape),
        "template_affine": np.asarray(result.template_affine, float).tolist(),
        "subject_shape": list(result.subject_shape),
        "subject_affine": np.asarray(result.subject_affine, float).tolist(),
        "template_resolution_mm": float(result.template_resolution_mm),
        "quality": _jsonable(result.quality),
        "stages": _jsonable(result.stages),
        "runtime_s": float(result.runtime_s),
        "files": {k: v.name for k, v in paths.items() if k != "json"},
        "mapping": None,
    }
    mapping = result.mapping
    if mapping is not None:
        disp_aff = np.asarray(mapping.disp_grid2world, float)
        for key, field_ in (("syn_forward", mapping.forward), ("syn_backward", mapping.backward)):
            # uncompressed: gzip saves only ~15 % on float32 displacements and costs
            # more time than the rest of the file writing
            paths[key] = out_dir / f"{key}.nii"
            img = nib.Nifti1Image(np.asarray(field_, np.float32), disp_aff)
            img.header.set_intent("vector")
            img.header["descrip"] = b"dipy DiffeomorphicMap displacement (mm)"
            img.to_filename(paths[key])
            meta["files"][key] = paths[key].name
        meta["mapping"] = {
            "dim": int(mapping.dim),
            "is_inverse": bool(mapping.is_inverse),
            **{k: None if getattr(mapping, k) is None else np.asarray(getattr(mapping, k), float).tolist()
               for k in _MAP_ARRAYS},
            **{k: None if getattr(mapping, k) is None else [int(n) for n in getattr(mapping, k)] for k in _MAP_SHAPES},
        }
    paths["json"].write_text(json.dumps(meta, indent=2))
    return paths


def load_registration(paths: dict | str | Path) -> RegistrationResult:
    """Read a registration written by :func:`save_registration`.

    Parameters
    ----------
    paths : dict, or path of the folder or of its ``registration.json``
        The dict returned by :func:`save_registration` (only ``json`` is needed; the
        other files are looked up next to it).

    Returns
    -------
    RegistrationResult
        Warps with it give the same output as with the original result.

    Raises
    ------
    InputError
        A file is missing or not a registration written by this module.
    """
    from dipy.align.imwarp import DiffeomorphicMap

    from csttool_nipype.errors import InputError

    if isinstance(paths, dict):
        json_path = Path(paths["json"])
    else:
        json_path = Path(paths)
        if json_path.is_dir():
            json_path = json_path / "registration.json"
    if not json_path.is_file():
        raise InputError(json_path, "registration file not found")
    try:
        meta = json.loads(json_path.read_text())
        version = meta["format_version"]
    except (ValueError, KeyError) as exc:
        raise InputError(json_path, f"not a registration written by csttool ({exc})") from exc
    if version != _FORMAT_VERSION:
        raise InputError(json_path, f"unsupported registration format version {version}")
    folder = json_path.parent
    aff_path = folder / meta["files"]["affine_npy"]
    if not aff_path.is_file():
        raise InputError(aff_path, "registration affine file not found")
    affine = np.load(aff_path)
    mapping = None
    mm = meta.get("mapping")
    if mm is not None:
        mapping = DiffeomorphicMap(
            dim=mm["dim"], disp_shape=mm["disp_shape"],
            disp_grid2world=None if mm["disp_grid2world"] is None else np.array(mm["disp_grid2world"]),
            domain_shape=mm["domain_shape"],
            domain_grid2world=None if mm["domain_grid2world"] is None else np.array(mm["domain_grid2world"]),
            codomain_shape=mm["codomain_shape"],
            codomain_grid2world=None if mm["codomain_grid2world"] is None else np.array(mm["codomain_grid2world"]),
            prealign=None if mm["prealign"] is None else np.array(mm["prealign"]),
        )
        fields_ = []
        for key in ("syn_forward", "syn_backward"):
            path = folder / meta["files"][key]
            if not path.is_file():
                raise InputError(path, "SyN displacement field file not found")
            data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
            if data.shape != tuple(mm["disp_shape"]) + (mm["dim"],):
                raise InputError(path, f"displacement field shape {data.shape} does not match the registration")
            fields_.append(np.ascontiguousarray(data))
        mapping.forward, mapping.backward = fields_
        mapping.is_inverse = bool(mm["is_inverse"])
    return RegistrationResult(
        affine_subject_to_mni=affine, mapping=mapping, quality=dict(meta.get("quality", {})),
        template_shape=tuple(meta["template_shape"]), template_affine=np.array(meta["template_affine"]),
        subject_shape=tuple(meta["subject_shape"]), subject_affine=np.array(meta["subject_affine"]),
        template_resolution_mm=float(meta["template_resolution_mm"]), runtime_s=float(meta.get("runtime_s", np.nan)),
        stages=dict(meta.get("stages", {})),
    )


# --------------------------------------------------------------------------- QC picture
def _world_aligned(image, affine):
    """Resample onto a grid whose axes are world R, A, S (isotropic, finest voxel size).

    A permutation/flip-only affine (no obliquity) with isotropic voxels maps voxel
    centres onto grid points, so the values are then copied exactly.
    """
    zoom = float(np.sqrt((affine[:3, :3] ** 2).sum(0)).min())
    ijk = np.array(np.meshgrid(*[[0, n - 1] for n in image.shape])).reshape(3, -1).T
    corners = nib.affines.apply_affine(affine, ijk)
    lo, hi = corners.min(0), corners.max(0)
    shape = tuple(int(n) for n in np.floor((hi - lo) / zoom + 1e-6) + 1)
    out_aff = np.diag([zoom, zoom, zoom, 1.0])
    out_aff[:3, 3] = lo
    return _resample_grid(image, affine, shape, out_aff, order=1), out_aff


def registration_qc_png(
    fa: np.ndarray,
    affine: np.ndarray,
    template_in_subject: np.ndarray,
    out_png: str | Path,
    *,
    level: float = 0.5,
    title: str | None = None,
) -> Path:
    """Draw the template WM outline over the subject FA in three orthogonal planes.

    Both images are resampled first onto a grid aligned with the world axes (so oblique
    acquisitions show true sagittal, coronal and axial planes, and any voxel order on disk
    shows the same picture), and shown in neurological convention: the subject's left on the left of the coronal and
    axial panels, anterior on the right of the sagittal panel, superior up. Slices pass
    through the centre of mass of the template WM on the subject grid.

    Parameters
    ----------
    fa : ndarray, (X, Y, Z)
        Subject FA (grey background).
    affine : ndarray, (4, 4)
        Voxel-to-world affine of ``fa``.
    template_in_subject : ndarray, (X, Y, Z)
        Template WM fraction warped onto the subject grid (e.g.
        ``warp_to_subject(load_template().wm, load_template().affine, result, fa.shape, affine)``).
    out_png : path
        Output PNG file (parent folders are created).
    level : float
        Iso-level of the red outline (0.5: the template's WM border).
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``out_png``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fa = _check_3d("fa", fa)
    tws = _check_3d("template_in_subject", template_in_subject, fa.shape)
    affine = _check_affine(affine)
    fa_r, aff_r = _world_aligned(np.nan_to_num(np.asarray(fa, np.float32)), affine)
    t_r, _ = _world_aligned(np.nan_to_num(np.asarray(tws, np.float32)), affine)
    # crop to the imaged brain and the template (2-voxel margin) so the panels fill the figure
    support = (fa_r > 0) | (t_r > 0.05)
    if support.any():
        ijk = np.argwhere(support)
        lo = np.maximum(ijk.min(0) - 2, 0)
        hi = np.minimum(ijk.max(0) + 3, fa_r.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        fa_r, t_r = fa_r[box], t_r[box]
        aff_r = aff_r @ nib.affines.from_matvec(np.eye(3), lo)
    zooms = np.sqrt((aff_r[:3, :3] ** 2).sum(0))
    if t_r.sum() > 0:
        centre = np.round(ndimage.center_of_mass(t_r)).astype(int)
    else:
        centre = np.array(fa_r.shape) // 2
    centre = np.clip(centre, 0, np.array(fa_r.shape) - 1)
    vmax = float(np.percentile(fa_r[fa_r > 0], 99)) if np.any(fa_r > 0) else 1.0
    world = nib.affines.apply_affine(aff_r, centre)

    # (name, sliced axis, horizontal axis, labels left/right of the panel)
    planes = (("sagittal", 0, 1, ("P", "A")), ("coronal", 1, 0, ("L", "R")), ("axial", 2, 0, ("L", "R")))
    widths = [fa_r.shape[h] * zooms[h] for _, _, h, _ in planes]
    heights = [fa_r.shape[v] * zooms[v] for v in (2, 2, 1)]
    # figure sized so that the tallest panel fills the height (13 in wide)
    fig_h = float(np.clip(13 * 0.98 * max(heights) / sum(widths) / 0.84, 2.5, 8.0))
    fig = Figure(figsize=(13, fig_h), dpi=100, facecolor="black")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1, 3, width_ratios=widths, wspace=0.02, left=0.01, right=0.99, bottom=0.02, top=0.86)
    for n, (name, axis, horiz, labels) in enumerate(planes):
        ax = fig.add_subplot(grid[0, n])
        index = [slice(None)] * 3
        index[axis] = int(centre[axis])
        vert = [a for a in range(3) if a not in (axis, horiz)][0]
        # the 2D slice keeps the other two axes in increasing order (horiz < vert):
        # transpose so rows run along the vertical axis
        bg, ov = fa_r[tuple(index)].T, t_r[tuple(index)].T
        extent = (0, bg.shape[1] * zooms[horiz], 0, bg.shape[0] * zooms[vert])
        ax.imshow(bg, cmap="gray", origin="lower", vmin=0, vmax=vmax, extent=extent, interpolation="nearest")
        if ov.max() > level > ov.min():
            ax.contour(ov, levels=[level], colors=["#ff3030"], linewidths=1.0, origin="lower", extent=extent)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_axis_off()
        ax.set_title(f"{name}  {'xyz'[axis]} = {world[axis]:.0f} mm", color="white", fontsize=10)
        for x, text, ha in ((extent[0], labels[0], "left"), (extent[1], labels[1], "right")):
            ax.text(x, extent[3] / 2, text, color="yellow", fontsize=12, va="center", ha=ha, fontweight="bold")
    fig.suptitle(title or "template white matter outline (red) over subject FA", color="white", fontsize=11)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, facecolor=fig.get_facecolor())
    return out_png

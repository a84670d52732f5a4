"""Registration of a subject's FA map to the MNI template (affine, then SyN), and its quality.

Plain functions on arrays (no Nipype). The template: :mod:`csttool_nipype.science.templates`;
the result, warps and files: :mod:`csttool_nipype.science.transforms`.

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
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from .reliability import dice
from .templates import Template, load_template
from .transforms import RegistrationResult, affine_map, check_3d, check_affine, warp_to_subject

logger = logging.getLogger(__name__)

#: Default SyN iterations per pyramid level (coarsest first) on the template grid (few on the
#: finest level, with a double step: see docs/decisions.md).
SYN_LEVEL_ITERS = (30, 10, 2)
#: Default affine-stage iterations per pyramid level (coarsest first).
AFFINE_LEVEL_ITERS = (100, 50, 10)
#: ``quality["acceptable"]`` needs at least these Dice values (the WM value is the pipeline's
#: default ``min_registration_dice``; chance level and measured values: docs/decisions.md).
QUALITY_MIN_WM_DICE = 0.5
QUALITY_MIN_BRAIN_DICE = 0.8

_FA_MAX = 1.0
#: SyN cross-correlation window radius (voxels of the template grid) and smoothing of the
#: update field (voxels): radius 3 on a 2 mm grid is a 14 mm window; the smoothing is one
#: voxel more than dipy's default (why: docs/decisions.md).
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


@dataclass(frozen=True)
class RegistrationParams:
    """Settings of :func:`register_to_mni` (the defaults are the pipeline's).

    Attributes
    ----------
    template_resolution_mm : float
        Voxel size of the template grid the registration runs on, mm (2–3 mm is fast).
    syn : bool
        Run the non-linear (SyN) stage after the affine one.
    level_iters : tuple of int
        SyN iterations per pyramid level, coarsest first.
    affine_level_iters : tuple of int
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
    affine_stages : tuple of {'translation', 'rigid', 'affine'}
        Linear stages run in turn (the last one gives the affine).
    rigid_levels : int or None
        Number of pyramid levels (coarsest first) on which the translation and rigid
        stages iterate (None: all).
    """

    template_resolution_mm: float = 2.0
    syn: bool = True
    level_iters: tuple[int, ...] = SYN_LEVEL_ITERS
    affine_level_iters: tuple[int, ...] = AFFINE_LEVEL_ITERS
    affine_resolution_mm: float = 4.0
    seed: int = 0
    syn_inv_iter: int = SYN_INV_ITER
    syn_step_length: float = SYN_STEP_LENGTH
    syn_finest_step_length: float | None = SYN_FINEST_STEP_LENGTH
    affine_stages: tuple[str, ...] = AFFINE_STAGES
    rigid_levels: int | None = RIGID_LEVELS


def _clean_fa(fa, mask):
    fa = np.nan_to_num(np.asarray(fa, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return np.where(mask, np.clip(fa, 0.0, _FA_MAX), 0.0).astype(np.float32)


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
    amap = affine_map(affine_mni, tpl, fa_m.shape, affine)
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


def _timed(stages: dict, name: str, t0: float, c0: float) -> None:
    """Record wall and CPU seconds since ``t0``/``c0`` as ``stages[name + '_s']`` and ``[name + '_cpu_s']``."""
    stages[f"{name}_s"] = round(time.perf_counter() - t0, 2)
    stages[f"{name}_cpu_s"] = round(time.process_time() - c0, 2)


def _checked_inputs(fa, mask, affine, b0, params: RegistrationParams):
    """``(fa, mask, affine, fa_m)`` checked; ``fa_m``: FA cleaned and zeroed outside the mask."""
    affine = check_affine(affine)
    fa = check_3d("fa", fa)
    mask = check_3d("mask", mask, fa.shape).astype(bool)
    if b0 is not None:
        check_3d("b0", b0, fa.shape)
    if not mask.any():
        raise ValueError("the brain mask is empty")
    unknown = set(params.affine_stages) - {"translation", "rigid", "affine"}
    if unknown:
        raise ValueError(f"unknown affine stages {sorted(unknown)}; use translation, rigid, affine")
    fa_m = _clean_fa(fa, mask)
    if not np.any(fa_m > 0):
        raise ValueError("FA is zero everywhere inside the brain mask")
    return fa, mask, affine, fa_m


def _register_affine(fa_m, mask, affine, tpl_aff: Template, params: RegistrationParams, stages: dict) -> np.ndarray:
    """Centre of mass, then the linear stages with mutual information: the affine (MNI mm -> subject mm)."""
    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric, transform_centers_of_mass
    from dipy.align.transforms import AffineTransform3D, RigidTransform3D, TranslationTransform3D

    # 1. centre of mass of the brain masks
    com = transform_centers_of_mass(np.array(tpl_aff.brain), tpl_aff.affine, mask.astype(np.float32), affine)
    current = com.affine
    stages["com_translation_mm"] = [round(float(v), 2) for v in current[:3, 3]]

    # 2. translation -> rigid -> affine, mutual information
    iters = [int(n) for n in params.affine_level_iters]
    static = _pseudo_fa(tpl_aff, _GM_TO_WM_FA)
    transforms = {"translation": TranslationTransform3D, "rigid": RigidTransform3D, "affine": AffineTransform3D}
    for name in params.affine_stages:
        # the translation and rigid stages may stop iterating after the coarser levels
        # (zero iterations on the finer ones): the affine stage refines all 12
        # parameters on every level after them
        n_levels = len(iters)
        if name != "affine" and params.rigid_levels is not None:
            n_levels = max(1, min(int(params.rigid_levels), len(iters)))
        areg = AffineRegistration(metric=MutualInformationMetric(nbins=32, sampling_proportion=None),
                                  level_iters=iters[:n_levels] + [0] * (len(iters) - n_levels),
                                  sigmas=[3.0, 1.0, 0.0][-len(iters):],
                                  factors=[4, 2, 1][-len(iters):], verbosity=0)
        t0, c0 = time.perf_counter(), time.process_time()
        amap = areg.optimize(static, fa_m, transforms[name](), None, static_grid2world=tpl_aff.affine,
                             moving_grid2world=affine, starting_affine=current)
        current = amap.affine
        _timed(stages, name, t0, c0)
    affine_mni = np.array(current, float)
    if np.linalg.det(affine_mni[:3, :3]) <= 0:
        raise RuntimeError("affine registration to MNI produced a reflection; the input orientation is broken")
    return affine_mni


def _register_syn(fa_m, mask, affine, affine_mni, tpl: Template, tpl_aff: Template, params: RegistrationParams,
                  stages: dict):
    """SyN (local cross-correlation) pre-aligned by ``affine_mni``: dipy's DiffeomorphicMap."""
    from dipy.align.imwarp import RegistrationStages, SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric

    t0, c0 = time.perf_counter(), time.process_time()
    radius = max(1, int(round(_SYN_RADIUS_MM / tpl.resolution_mm)))
    sigma_diff = _SYN_SIGMA_DIFF_MM / tpl.resolution_mm
    level_iters = [int(n) for n in params.level_iters]
    step = params.syn_step_length
    finest_step = step if params.syn_finest_step_length is None else params.syn_finest_step_length
    done = {}

    def callback(opt, stage):
        if stage == RegistrationStages.SCALE_START:
            opt.step_length = finest_step if opt.current_level == 0 else step
        elif stage == RegistrationStages.SCALE_END:
            done[int(opt.current_level)] = int(opt.niter)

    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3, sigma_diff=sigma_diff, radius=radius),
                                             level_iters=level_iters, step_length=step,
                                             inv_iter=int(params.syn_inv_iter), callback=callback)
    sdr.verbosity = 0
    ratio = _gm_to_wm_ratio(fa_m, mask, affine, affine_mni, tpl_aff)
    stages["gm_to_wm_fa_ratio"] = round(ratio, 3)
    static = _pseudo_fa(tpl, ratio)
    moving = fa_m
    inside = _field_of_view(tpl, affine_mni, fa_m.shape, affine)
    brain = static > 0
    if _misses_brainstem(tpl, brain, inside):
        # a field of view that stops above the medulla: SyN would stretch the lowest
        # slices imaged down over the template's missing brainstem; the template is
        # matched only where the subject is imaged, and the outermost slice, which
        # preprocessing leaves unreliable, is left out of both images. Whole-brain scans
        # (brainstem imaged) are registered as before.
        static = np.where(inside, static, 0.0).astype(static.dtype)
        moving = np.where(_grid_interior(fa_m.shape), fa_m, 0.0).astype(fa_m.dtype)
        stages["syn_field_of_view_share"] = round(float(inside[brain].mean()), 3)
    mapping = sdr.optimize(static, moving, static_grid2world=tpl.affine, moving_grid2world=affine,
                           prealign=affine_mni)
    stages["syn_iterations"] = [done.get(level, 0) for level in range(len(level_iters) - 1, -1, -1)]
    _timed(stages, "syn", t0, c0)
    return mapping


def _quality(result: RegistrationResult, fa_m, mask, tpl: Template) -> dict:
    """:func:`registration_quality` after warping the template onto the subject, with ``affine_wm_dice``
    (the affine part only) and ``acceptable``."""
    shape, affine = fa_m.shape, result.subject_affine
    t_wm = warp_to_subject(tpl.wm, tpl.affine, result, shape, affine)
    t_brain = warp_to_subject(tpl.brain, tpl.affine, result, shape, affine)
    quality = registration_quality(fa_m, mask, t_wm, t_brain)
    if result.mapping is not None:
        aff_only = affine_map(result.affine_subject_to_mni, tpl, shape, affine).transform_inverse(np.array(tpl.wm))
        quality["affine_wm_dice"] = registration_quality(fa_m, mask, aff_only, t_brain)["wm_dice"]
    else:
        quality["affine_wm_dice"] = quality["wm_dice"]
    quality["acceptable"] = bool(quality["wm_dice"] >= QUALITY_MIN_WM_DICE
                                 and quality["brain_dice"] >= QUALITY_MIN_BRAIN_DICE)
    return quality


def register_to_mni(
    fa: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    b0: np.ndarray | None = None,
    params: RegistrationParams | None = None,
    **options,
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
    params : RegistrationParams, optional
        Settings (default ``RegistrationParams()``).
    **options
        Fields of :class:`RegistrationParams` overriding ``params`` (e.g. ``syn=False``,
        ``template_resolution_mm=3.0``); an unknown name is a TypeError.

    Returns
    -------
    RegistrationResult
    """
    params = dataclasses.replace(params or RegistrationParams(), **options)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    fa, mask, affine, fa_m = _checked_inputs(fa, mask, affine, b0, params)

    stages = {}
    t0, c0 = time.perf_counter(), time.process_time()
    tpl = load_template(params.template_resolution_mm)
    tpl_aff = load_template(max(float(params.affine_resolution_mm), tpl.resolution_mm))
    _timed(stages, "template", t0, c0)  # the first call per process reads the files

    affine_mni = _register_affine(fa_m, mask, affine, tpl_aff, params, stages)
    mapping = _register_syn(fa_m, mask, affine, affine_mni, tpl, tpl_aff, params, stages) if params.syn else None
    result = RegistrationResult(affine_subject_to_mni=affine_mni, mapping=mapping, quality={},
                                template_shape=tpl.shape, template_affine=np.array(tpl.affine),
                                subject_shape=tuple(int(n) for n in fa.shape), subject_affine=affine,
                                template_resolution_mm=tpl.resolution_mm, stages=stages)

    c0 = time.process_time()
    quality = result.quality = _quality(result, fa_m, mask, tpl)
    stages["quality_cpu_s"] = round(time.process_time() - c0, 2)
    result.runtime_s = round(time.perf_counter() - t_start, 2)
    stages["cpu_s"] = round(time.process_time() - cpu_start, 2)
    logger.info("registration to MNI (%.1f mm template, syn=%s) took %.1f s (%.1f s CPU): %s",
                tpl.resolution_mm, params.syn, result.runtime_s, stages["cpu_s"], quality)
    if not quality["acceptable"]:
        logger.warning("registration to MNI looks poor (WM Dice %.2f, brain Dice %.2f): check the QC picture",
                       quality["wm_dice"], quality["brain_dice"])
    return result

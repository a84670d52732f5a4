"""Streamline tractography on a tensor field.

The pieces follow dipy's ``LocalTracking(direction_getter, stopping_criterion, seeds)``:
:func:`seed_points` places seeds, a direction getter is built per method, and both
methods stop where the trilinearly interpolated FA (zero outside ``mask``) falls to
``fa_threshold`` or below. :class:`TrackingParams` holds what they share.

:func:`track_deterministic`
    EuDX-style tracking along the tensor's principal eigenvector. The eigenvectors
    themselves are the peaks: each usable voxel's unit vector becomes one vertex of a
    custom :class:`dipy.core.sphere.Sphere` and the voxel's single peak points at it,
    so dipy's :class:`~dipy.direction.peaks.PeaksAndMetrics` direction getter follows
    the exact eigenvectors (no quantisation to a sampling sphere, no
    ``peaks_from_model``). At each step the closest-aligned eigenvector of the eight
    neighbouring voxels is averaged with trilinear weights (voxels at or below the FA
    threshold, or turning by more than ``max_angle_deg``, do not contribute; tracking
    stops when less than half of the weight is left).
:func:`track_probabilistic`
    dipy's :class:`~dipy.direction.ProbabilisticDirectionGetter` on a constant
    solid angle (CSA) ODF fitted to the diffusion data of one shell. dipy draws each
    streamline's directions from a generator seeded from the seed position and
    ``seed``, so a run is reproducible.

:func:`track` picks one of them by name (the pipeline's entry point).

Seeds are placed in world space, independently of how the arrays are stored: seed
voxels are visited in world (z, y, x) order and each seed's sub-voxel offset is drawn
along the world axis that the voxel axis is closest to. Storing the same field with
flipped or permuted axes (and the matching affine and voxel-axis vectors) therefore
gives the same deterministic streamlines in world space, to rounding.

All streamlines are returned in world RAS+ millimetres (``.trk`` files:
:mod:`csttool_nipype.science.trk_io`).

Speed: every seed is tracked on its own by dipy's (serial) ``LocalTracking``, so
``n_jobs=k`` splits the seeds into blocks tracked in ``k`` forked processes and joins
them in seed order, with the same result as one process.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import numpy as np
from nibabel.orientations import io_orientation
from nibabel.streamlines import ArraySequence

from ..config import B0_THRESHOLD, TRACKING_METHODS, PipelineConfig
from ..errors import InputError
from .streamlines import packed_sequence
from .tracking_engine import TrackingJob, run_tracking, trim_ends

__all__ = [
    "METHODS",
    "TrackingParams",
    "principal_direction",
    "seed_points",
    "seeds_per_voxel_for_density",
    "smoothed_tensor_field",
    "track",
    "track_deterministic",
    "track_probabilistic",
]

LOGGER = logging.getLogger(__name__)

METHODS = TRACKING_METHODS

_D = PipelineConfig()  # the pipeline's defaults: one source of truth

#: CSA spherical-harmonic order used for probabilistic tracking when the shell has
#: enough directions (lower even orders are used for sparser shells).
CSA_SH_ORDER_MAX = 6

#: Below this SH order (fewer than 15 directions in the shell) the CSA ODF is too broad for
#: probabilistic tracking to follow a long tract, and the run says so.
SPARSE_SHELL_SH_ORDER = 4

#: Fraction of the ODF maximum below which the probabilistic getter ignores directions.
PMF_THRESHOLD = 0.1


@dataclass(frozen=True)
class TrackingParams:
    """What every tracking method shares.

    Attributes
    ----------
    seeds_per_voxel : float
        Mean seeds per seed voxel, at random positions within the voxel (fractions: see
        :func:`seed_points`; :func:`seeds_per_voxel_for_density` converts a density per mm³).
    step_size_mm : float
        Step length in mm.
    fa_threshold : float
        Tracking stops (and is not seeded) where the interpolated FA is at or below this.
    max_angle_deg : float
        Largest turn between successive steps, in degrees.
    min_length_mm, max_length_mm : float
        Streamlines shorter or longer than these (arc length, mm) are discarded.
    seed : int
        Seed of the random generator for seed positions (and, for the probabilistic
        method, for direction sampling). Same inputs and seed give identical output.
    n_jobs : int
        Processes to track in (forked workers, each tracking blocks of seeds). Every
        seed is tracked independently, so the result does not depend on ``n_jobs``.
    """

    seeds_per_voxel: float = 1
    step_size_mm: float = _D.step_size_mm
    fa_threshold: float = _D.fa_threshold
    max_angle_deg: float = _D.max_angle_deg
    min_length_mm: float = _D.min_length_mm
    max_length_mm: float = _D.max_length_mm
    seed: int = _D.seed
    n_jobs: int = 1

    def check(self) -> None:
        """Raise :class:`InputError` for a non-positive step or length, or min > max length."""
        if self.step_size_mm <= 0 or self.max_length_mm <= 0 or self.min_length_mm > self.max_length_mm:
            raise InputError(None, "step size and lengths must be positive and min_length_mm <= max_length_mm")


def principal_direction(evecs_or_v1: np.ndarray) -> np.ndarray:
    """Unit principal eigenvector per voxel from dipy eigenvectors or a V1 map.

    Parameters
    ----------
    evecs_or_v1 : ndarray, shape (X, Y, Z, 3, 3) or (X, Y, Z, 3)
        dipy's ``TensorFit.evecs`` (the principal eigenvector is ``evecs[..., :, 0]``,
        a column) or the principal eigenvector itself, in voxel axes.

    Returns
    -------
    v1 : ndarray, shape (X, Y, Z, 3), float64
        Unit vectors in voxel axes; zero where the input is zero or not finite.
    """
    arr = np.asarray(evecs_or_v1, dtype=np.float64)
    if arr.ndim == 5 and arr.shape[-2:] == (3, 3):
        v1 = arr[..., :, 0]
    elif arr.ndim == 4 and arr.shape[-1] == 3:
        v1 = arr
    else:
        raise InputError(None, f"eigenvectors must be shaped (X, Y, Z, 3, 3) or (X, Y, Z, 3), got {arr.shape}")
    v1 = np.where(np.isfinite(v1), v1, 0.0)
    norm = np.linalg.norm(v1, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(norm > 1e-12, v1 / np.where(norm > 1e-12, norm, 1.0), 0.0)
    return out


def smoothed_tensor_field(tensor: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                          sigma_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """FA and principal direction of a Gaussian-smoothed tensor field, for tracking.

    Each of the six tensor elements is smoothed inside the mask (normalised convolution:
    voxels outside the mask neither contribute nor are filled), then every voxel's tensor
    is diagonalised again. Averaging tensors, rather than directions, needs no sign
    convention and lets a voxel's direction follow its neighbours where its own fit is
    noisy or split between crossing bundles.

    An option, off by default (why: ``docs/decisions.md``, "No tensor-field smoothing").

    Parameters
    ----------
    tensor : ndarray, (X, Y, Z, 6)
        Dxx, Dxy, Dyy, Dxz, Dyz, Dzz in voxel axes (mm²/s).
    mask : ndarray of bool, (X, Y, Z)
    affine : ndarray, (4, 4)
        Voxel-to-world affine (gives the voxel sizes in mm).
    sigma_mm : float
        Gaussian sigma in mm (0: no smoothing).

    Returns
    -------
    fa : ndarray, float64, (X, Y, Z)
        FA of the smoothed tensors, 0 outside the mask.
    v1 : ndarray, float64, (X, Y, Z, 3)
        Their principal eigenvectors, voxel axes, 0 outside the mask.
    """
    from dipy.reconst.dti import fractional_anisotropy, from_lower_triangular
    from scipy import ndimage

    tensor = np.asarray(tensor, np.float64)
    mask = np.asarray(mask, bool)
    if tensor.shape != mask.shape + (6,):
        raise InputError(None, f"tensor {tensor.shape} does not match the mask {mask.shape} (expected (X, Y, Z, 6))")
    tensor = np.where(np.isfinite(tensor), tensor, 0.0) * mask[..., None]
    if sigma_mm > 0:
        zooms = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
        sigma = float(sigma_mm) / zooms
        weight = ndimage.gaussian_filter(mask.astype(np.float64), sigma, mode="constant")
        for k in range(6):
            tensor[..., k] = ndimage.gaussian_filter(tensor[..., k], sigma, mode="constant")
        tensor = np.where(mask[..., None], tensor / np.maximum(weight, 1e-12)[..., None], 0.0)
    evals, evecs = np.linalg.eigh(from_lower_triangular(tensor[mask]))  # ascending
    with np.errstate(invalid="ignore", divide="ignore"):
        fa_in = fractional_anisotropy(np.clip(evals, 0.0, None))
    fa = np.zeros(mask.shape)
    fa[mask] = np.clip(np.nan_to_num(fa_in, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0)
    v1 = np.zeros(mask.shape + (3,))
    v1[mask] = evecs[:, :, 2]
    return fa, v1


def seeds_per_voxel_for_density(seed_density: float, affine: np.ndarray) -> float:
    """Seeds per voxel that give ``seed_density`` seeds per mm³ on a grid (``|det(affine)|`` mm³ voxels)."""
    volume = abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3])))
    return float(seed_density) * volume


def seed_points(seed_mask: np.ndarray, affine: np.ndarray, *, seeds_per_voxel: float = 1, seed: int = 0) -> np.ndarray:
    """Random seed positions inside the voxels of a mask, in world space.

    Seed voxels are visited in world (z, y, x) order of their centres and each seed is
    offset uniformly within its voxel (a unit cube in voxel coordinates) by
    ``numpy.random.default_rng(seed)``; the offset components are drawn along world
    axes and mapped to the closest voxel axes. The same mask stored with flipped or
    permuted axes therefore gives the same world positions, in the same order.

    A fractional ``seeds_per_voxel`` = n + f gives each voxel n seeds plus one more with
    probability f (drawn, in the same voxel order, from a second generator seeded with
    ``(seed, 1)``, so the offsets' stream is the same as for whole numbers). Values within
    1e-6 of a whole number count as that number.

    Parameters
    ----------
    seed_mask : ndarray of bool, shape (X, Y, Z)
        Voxels to seed.
    affine : ndarray, shape (4, 4)
        Voxel-to-world (RAS+ mm) affine.
    seeds_per_voxel : float
        Mean number of seeds per voxel (> 0); see :func:`seeds_per_voxel_for_density`.
    seed : int
        Random generator seed.

    Returns
    -------
    seeds : ndarray, shape (n_seeds, 3)
        World RAS+ coordinates in mm.
    """
    per_voxel = float(seeds_per_voxel)
    if not per_voxel > 0:
        raise InputError(None, f"seeds per voxel must be positive, got {seeds_per_voxel}")
    if abs(per_voxel - round(per_voxel)) < 1e-6:
        per_voxel = float(round(per_voxel))
    affine = np.asarray(affine, float)
    ijk = np.argwhere(np.asarray(seed_mask, bool)).astype(float)
    if len(ijk) == 0:
        return np.zeros((0, 3))
    centres = ijk @ affine[:3, :3].T + affine[:3, 3]
    # Round so that rounding noise between storage orders cannot change the order.
    key = np.round(centres, 3)
    order = np.lexsort((key[:, 0], key[:, 1], key[:, 2]))
    whole, fraction = divmod(per_voxel, 1.0)
    counts = np.full(len(order), int(whole))
    if fraction > 0:
        counts += np.random.default_rng([seed, 1]).random(len(order)) < fraction
    ijk = np.repeat(ijk[order], counts, axis=0)
    rng = np.random.default_rng(seed)
    offsets_world_axes = rng.uniform(-0.5, 0.5, size=ijk.shape)
    ornt = io_orientation(affine)
    offsets_vox = np.empty_like(offsets_world_axes)
    for axis, (world_axis, flip) in enumerate(ornt):
        offsets_vox[:, axis] = flip * offsets_world_axes[:, int(world_axis)]
    vox = ijk + offsets_vox
    return vox @ affine[:3, :3].T + affine[:3, 3]


def _eigenvector_peaks(v1: np.ndarray, fa: np.ndarray, usable: np.ndarray, max_angle_deg: float, fa_threshold: float):
    """A dipy PeaksAndMetrics whose single peak per voxel is that voxel's own eigenvector."""
    from dipy.core.sphere import Sphere
    from dipy.direction.peaks import PeaksAndMetrics

    vertices = v1[usable]
    if len(vertices) == 0:
        raise InputError(None, "no voxel has both a direction and FA inside the mask")
    indices = np.zeros(v1.shape[:3] + (1,), dtype=np.float64)
    indices[usable, 0] = np.arange(len(vertices), dtype=np.float64)
    values = np.zeros(v1.shape[:3] + (1,), dtype=np.float64)
    values[usable, 0] = fa[usable]
    pam = PeaksAndMetrics()
    pam.sphere = Sphere(xyz=vertices)
    pam.peak_indices = indices
    pam.peak_values = values
    pam.ang_thr = float(max_angle_deg)
    pam.qa_thr = float(fa_threshold)
    pam.total_weight = 0.5
    return pam


def _single_shell(bvals: np.ndarray, b0_threshold: float) -> np.ndarray:
    """Volumes of the b=0 images plus the diffusion-weighted shell with most directions."""
    dw = bvals > b0_threshold
    if not dw.any():
        raise InputError(None, "no diffusion-weighted volume (all b-values are at or below the b0 threshold)")
    shells = np.round(bvals[dw] / 100.0) * 100.0
    values, counts = np.unique(shells, return_counts=True)
    best = values[counts == counts.max()].max()
    return ~dw | (np.round(bvals / 100.0) * 100.0 == best)


def _csa_direction_getter(data, bvals, bvecs_voxel, mask, max_angle_deg, b0_threshold=B0_THRESHOLD):
    """ProbabilisticDirectionGetter on a CSA ODF of one shell of ``data``."""
    from dipy.core.gradients import gradient_table
    from dipy.data import default_sphere
    from dipy.direction import ProbabilisticDirectionGetter
    from dipy.reconst.shm import CsaOdfModel

    if data is None or bvals is None or bvecs_voxel is None:
        raise InputError(None, 'method="probabilistic" needs data, bvals and bvecs_voxel')
    data = np.asarray(data)
    bvals = np.asarray(bvals, float).ravel()
    bvecs_voxel = np.asarray(bvecs_voxel, float)
    if data.ndim != 4 or data.shape[3] != len(bvals) or bvecs_voxel.shape != (len(bvals), 3):
        raise InputError(None, f"data {data.shape}, bvals {bvals.shape} and bvecs {bvecs_voxel.shape} do not match")
    keep = _single_shell(bvals, b0_threshold)
    n_dirs = int((bvals[keep] > b0_threshold).sum())
    order = CSA_SH_ORDER_MAX
    while order > 2 and (order + 1) * (order + 2) // 2 > n_dirs:
        order -= 2
    LOGGER.info("probabilistic tracking: CSA ODF, SH order %d, %d directions of b=%g s/mm^2",
                order, n_dirs, float(np.median(bvals[keep & (bvals > b0_threshold)])))
    if order < SPARSE_SHELL_SH_ORDER:
        LOGGER.warning("probabilistic tracking: %d diffusion directions support an SH order %d ODF only, too "
                       "broad for streamlines to follow long tracts (a 12-direction scan gave 7-60 CST streamlines "
                       "a side, deterministic tracking 200-700); --tracking-method deterministic is advised",
                       n_dirs, order)
    gtab = gradient_table(bvals[keep], bvecs=bvecs_voxel[keep], b0_threshold=b0_threshold)
    with warnings.catch_warnings():
        # CsaOdfModel only offers dipy's legacy descoteaux07 basis, which dipy flags as
        # outdated; the direction getter below reads the coefficients in that same basis.
        warnings.filterwarnings("ignore", message=".*legacy descoteaux07.*")
        fit = CsaOdfModel(gtab, sh_order_max=order).fit(data[..., keep], mask=mask)
        shm = np.where(np.isfinite(fit.shm_coeff), fit.shm_coeff, 0.0)
        return ProbabilisticDirectionGetter.from_shcoeff(
            shm, max_angle=float(max_angle_deg), sphere=default_sphere, pmf_threshold=PMF_THRESHOLD,
            legacy=True,
        )


# ----------------------------------------------------------------------------- track


def _checked_fields(fa, mask, affine, params: TrackingParams, seed_mask):
    """FA (0 outside the mask and where not finite), mask, affine and the seeds, checked."""
    params.check()
    affine = np.asarray(affine, dtype=np.float64)
    fa = np.asarray(fa, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if fa.shape != mask.shape or fa.ndim != 3:
        raise InputError(None, f"fa {fa.shape} and mask {mask.shape} must be the same 3D shape")
    fa = np.where(np.isfinite(fa) & mask, fa, 0.0)
    seeding = mask & (fa > params.fa_threshold)
    if seed_mask is not None:
        seed_mask = np.asarray(seed_mask, bool)
        if seed_mask.shape != mask.shape:
            raise InputError(None, f"seed mask {seed_mask.shape} does not match the mask {mask.shape}")
        seeding &= seed_mask
    seeds = seed_points(seeding, affine, seeds_per_voxel=params.seeds_per_voxel, seed=params.seed)
    return fa, mask, affine, seeds


def _local_tracking(getter, fa, mask, affine, seeds, params: TrackingParams, random_seed, method: str,
                    end_fa=None) -> ArraySequence:
    """Track ``seeds`` with ``getter`` until FA ≤ the threshold; lengths and ``end_fa`` trimming applied."""
    from dipy.tracking.stopping_criterion import ThresholdStoppingCriterion

    criterion = ThresholdStoppingCriterion(np.ascontiguousarray(fa), float(params.fa_threshold))
    max_points = int(np.ceil(params.max_length_mm / params.step_size_mm)) + 2  # per half; longer ones dropped
    start = time.perf_counter()
    job = TrackingJob(getter, criterion, affine, float(params.step_size_mm), max_points, random_seed,
                       float(params.min_length_mm), float(params.max_length_mm))
    points, counts, n_total = run_tracking(job, seeds, params.n_jobs)
    if end_fa is not None:
        end_fa = np.asarray(end_fa, np.float64)
        if end_fa.shape != fa.shape:
            raise InputError(None, f"end_fa {end_fa.shape} does not match fa {fa.shape}")
        end_fa = np.where(np.isfinite(end_fa) & mask, end_fa, 0.0)
        points, counts = trim_ends(points, counts, end_fa, affine, float(params.fa_threshold),
                                    float(params.min_length_mm), float(params.max_length_mm))
    LOGGER.info("%s tracking: %d seeds, %d streamlines, %d kept (%g-%g mm) in %.1f s", method, len(seeds),
                n_total, len(counts), params.min_length_mm, params.max_length_mm, time.perf_counter() - start)
    return packed_sequence(points, counts)


def track_deterministic(evecs_or_v1: np.ndarray, fa: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                        params: TrackingParams = TrackingParams(), *, seed_mask: np.ndarray | None = None,
                        end_fa: np.ndarray | None = None) -> ArraySequence:
    """Deterministic tracking along the tensor's principal eigenvector (see the module docstring).

    Parameters
    ----------
    evecs_or_v1 : ndarray, shape (X, Y, Z, 3, 3) or (X, Y, Z, 3)
        Tensor eigenvectors (dipy layout, principal one in ``[..., :, 0]``) or the
        principal eigenvector, in voxel axes.
    fa : ndarray, shape (X, Y, Z)
        Fractional anisotropy (dimensionless); NaN is read as 0.
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask; tracking never leaves it.
    affine : ndarray, shape (4, 4)
        Voxel-to-world (RAS+ mm) affine, without shear.
    params : TrackingParams
    seed_mask : ndarray of bool, shape (X, Y, Z), optional
        Where to seed; always intersected with ``mask & (fa > fa_threshold)``, which is
        also the default (whole-brain seeding).
    end_fa : ndarray, shape (X, Y, Z), optional
        A second FA map (typically the unsmoothed one when ``fa`` and the directions come
        from a smoothed tensor field): each streamline is trimmed back to its outermost
        points where this FA (trilinear) is above ``fa_threshold``, so no streamline ends
        in tissue whose own FA is at or below the threshold; the length limits apply after
        trimming.

    Returns
    -------
    streamlines : ArraySequence
        float64 points in world RAS+ mm, in seed order (world z, y, x of the seed
        voxel); each streamline runs through its seed in both directions.
    """
    fa, mask, affine, seeds = _checked_fields(fa, mask, affine, params, seed_mask)
    if len(seeds) == 0:
        LOGGER.warning("no seed voxel (mask with FA > %g): no streamline", params.fa_threshold)
        return ArraySequence()
    v1 = principal_direction(evecs_or_v1)
    if v1.shape[:3] != mask.shape:
        raise InputError(None, f"eigenvectors {v1.shape[:3]} do not match the mask {mask.shape}")
    usable = mask & (np.abs(v1).sum(axis=-1) > 0) & (fa > 0)
    getter = _eigenvector_peaks(v1, fa, usable, params.max_angle_deg, params.fa_threshold)
    return _local_tracking(getter, fa, mask, affine, seeds, params, None, "deterministic", end_fa=end_fa)


def track_probabilistic(data: np.ndarray, bvals: np.ndarray, bvecs_voxel: np.ndarray, fa: np.ndarray,
                        mask: np.ndarray, affine: np.ndarray, params: TrackingParams = TrackingParams(), *,
                        seed_mask: np.ndarray | None = None, b0_threshold: float = B0_THRESHOLD) -> ArraySequence:
    """Probabilistic tracking on a CSA ODF of one shell (see the module docstring).

    ``data`` (X, Y, Z, N) is the diffusion-weighted signal, ``bvals`` (N,) in s/mm², ``bvecs_voxel``
    (N, 3) in voxel axes; volumes with b ≤ ``b0_threshold`` are b=0 images. The other
    parameters and the result are those of :func:`track_deterministic`.
    """
    fa, mask, affine, seeds = _checked_fields(fa, mask, affine, params, seed_mask)
    if len(seeds) == 0:
        LOGGER.warning("no seed voxel (mask with FA > %g): no streamline", params.fa_threshold)
        return ArraySequence()
    getter = _csa_direction_getter(data, bvals, bvecs_voxel, mask, params.max_angle_deg, b0_threshold)
    return _local_tracking(getter, fa, mask, affine, seeds, params, int(params.seed), "probabilistic")


def track(
    evecs_or_v1: np.ndarray,
    fa: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    seed_mask: np.ndarray | None = None,
    method: str = "deterministic",
    data: np.ndarray | None = None,
    bvals: np.ndarray | None = None,
    bvecs_voxel: np.ndarray | None = None,
    end_fa: np.ndarray | None = None,
    b0_threshold: float = B0_THRESHOLD,
    **params,
) -> ArraySequence:
    """Streamline tractography by ``method`` ({"deterministic", "probabilistic"}).

    Keyword arguments not named here are the fields of :class:`TrackingParams`
    (``seeds_per_voxel``, ``step_size_mm``, ``fa_threshold``, ``max_angle_deg``,
    ``min_length_mm``, ``max_length_mm``, ``seed``, ``n_jobs``). The deterministic method
    uses ``evecs_or_v1`` and ``end_fa`` (:func:`track_deterministic`), the probabilistic one
    ``data``, ``bvals``, ``bvecs_voxel`` and ``b0_threshold`` (:func:`track_probabilistic`).
    """
    if method not in METHODS:
        raise InputError(None, f"unknown tracking method {method!r}; choose one of {', '.join(METHODS)}")
    try:
        settings = TrackingParams(**params)
    except TypeError as exc:
        raise InputError(None, f"track(): {exc}") from None
    if method == "deterministic":
        return track_deterministic(evecs_or_v1, fa, mask, affine, settings, seed_mask=seed_mask, end_fa=end_fa)
    if data is None or bvals is None or bvecs_voxel is None:
        raise InputError(None, 'method="probabilistic" needs data, bvals and bvecs_voxel')
    return track_probabilistic(data, bvals, bvecs_voxel, fa, mask, affine, settings, seed_mask=seed_mask,
                               b0_threshold=b0_threshold)

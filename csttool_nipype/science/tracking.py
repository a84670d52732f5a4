"""Whole-brain tractography on a tensor field, and ``.trk`` input/output.

Two methods are offered by :func:`track`:

``"deterministic"`` (default)
    EuDX-style tracking along the tensor's principal eigenvector. The eigenvectors
    themselves are the peaks: each usable voxel's unit vector becomes one vertex of a
    custom :class:`dipy.core.sphere.Sphere` and the voxel's single peak points at it,
    so dipy's :class:`~dipy.direction.peaks.PeaksAndMetrics` direction getter follows
    the exact eigenvectors (no quantisation to a sampling sphere, no
    ``peaks_from_model``). At each step the closest-aligned eigenvector of the eight
    neighbouring voxels is averaged with trilinear weights (voxels at or below the FA
    threshold, or turning by more than ``max_angle_deg``, do not contribute; tracking
    stops when less than half of the weight is left).
``"probabilistic"``
    dipy's :class:`~dipy.direction.ProbabilisticDirectionGetter` on a constant
    solid angle (CSA) ODF fitted to the diffusion data of one shell. Needs ``data``,
    ``bvals`` and ``bvecs_voxel``. dipy draws each streamline's directions from a
    generator seeded from the seed position and ``seed``, so a run is reproducible.

Both stop where the trilinearly interpolated FA (zero outside ``mask``) falls to
``fa_threshold`` or below.

Seeds are placed in world space, independently of how the arrays are stored: seed
voxels are visited in world (z, y, x) order and each seed's sub-voxel offset is drawn
along the world axis that the voxel axis is closest to. Storing the same field with
flipped or permuted axes (and the matching affine and voxel-axis vectors) therefore
gives the same deterministic streamlines in world space, to rounding.

All streamlines are returned and written in world RAS+ millimetres.

Speed: every seed is tracked on its own by dipy's (serial) ``LocalTracking``, so
``track(..., n_jobs=k)`` splits the seeds into blocks tracked in ``k`` forked processes
and joins them in seed order, with the same result as one process. ``.trk`` files are
written and read as whole arrays: :func:`save_trk` writes the bytes dipy's
``save_tractogram`` writes and :func:`load_trk` returns the points
``nibabel.streamlines.load`` returns, without their per-streamline Python loops.
"""

from __future__ import annotations

import logging
import time
import warnings
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import aff2axcodes, io_orientation
from nibabel.streamlines import ArraySequence

from ..config import B0_THRESHOLD
from ..errors import InputError

__all__ = [
    "METHODS",
    "principal_direction",
    "seed_points",
    "streamline_lengths",
    "track",
    "save_trk",
    "load_trk",
]

LOGGER = logging.getLogger(__name__)

METHODS = ("deterministic", "probabilistic")

#: CSA spherical-harmonic order used for probabilistic tracking when the shell has
#: enough directions (lower even orders are used for sparser shells).
CSA_SH_ORDER_MAX = 6

#: Below this SH order (fewer than 15 directions in the shell) the CSA ODF is too broad for
#: probabilistic tracking to follow a long tract, and the run says so.
SPARSE_SHELL_SH_ORDER = 4

#: Fraction of the ODF maximum below which the probabilistic getter ignores directions.
PMF_THRESHOLD = 0.1


# --------------------------------------------------------------------------- helpers


def _as_sequence(streamlines) -> ArraySequence:
    """Return ``streamlines`` as an :class:`ArraySequence` of float64 points."""
    if isinstance(streamlines, ArraySequence):
        if len(streamlines) and streamlines.get_data().dtype != np.float64:
            return ArraySequence([np.asarray(s, np.float64) for s in streamlines])
        return streamlines
    return ArraySequence([np.asarray(s, np.float64).reshape(-1, 3) for s in streamlines])


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
    points, counts = _packed(streamlines)
    # Segment lengths of all points at once; each streamline's own segments are then
    # summed by the same reduction as above (a contiguous float64 slice), so the
    # lengths are the same to the last bit.
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1) if len(points) > 1 else np.zeros(0)
    starts = np.cumsum(counts) - counts
    return np.array([float(seg[a:a + max(int(c) - 1, 0)].sum()) for a, c in zip(starts.tolist(), counts.tolist())],
                    dtype=float)


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

    Measured with the midline cut of :func:`csttool_nipype.science.bundles.extract_cst`
    (3 mm: ``csttool run --tracking-smoothing 3 --cst-midline cut``; none: the same
    extraction on the default runs' tractograms): on three scans of one head
    (Canon, 3 mm, 12 directions) the CST streamline counts came from ±33 / ±28 %
    (left / right) of their mean to ±20 / ±7 %, but the left mean FAs from 0.021 apart to
    0.034. On the 3 mm phantom the lowest point of the left FA profile moved from the
    lesion to the bottom of the medulla, where the tract is two voxels wide and the
    smoothed field lets streamlines drift to its edge. So it is an option, off by default.

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


def track(
    evecs_or_v1: np.ndarray,
    fa: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    seed_mask: np.ndarray | None = None,
    seeds_per_voxel: float = 1,
    step_size_mm: float = 0.5,
    fa_threshold: float = 0.2,
    max_angle_deg: float = 45.0,
    min_length_mm: float = 20.0,
    max_length_mm: float = 250.0,
    method: str = "deterministic",
    seed: int = 0,
    data: np.ndarray | None = None,
    bvals: np.ndarray | None = None,
    bvecs_voxel: np.ndarray | None = None,
    end_fa: np.ndarray | None = None,
    b0_threshold: float = B0_THRESHOLD,
    n_jobs: int = 1,
) -> ArraySequence:
    """Whole-brain streamline tractography on a tensor field.

    Parameters
    ----------
    evecs_or_v1 : ndarray, shape (X, Y, Z, 3, 3) or (X, Y, Z, 3)
        Tensor eigenvectors (dipy layout, principal one in ``[..., :, 0]``) or the
        principal eigenvector, in voxel axes. Used by the deterministic method.
    fa : ndarray, shape (X, Y, Z)
        Fractional anisotropy (dimensionless); NaN is read as 0.
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask; tracking never leaves it.
    affine : ndarray, shape (4, 4)
        Voxel-to-world (RAS+ mm) affine, without shear.
    seed_mask : ndarray of bool, shape (X, Y, Z), optional
        Where to seed; always intersected with ``mask & (fa > fa_threshold)``, which is
        also the default (whole-brain seeding).
    seeds_per_voxel : float
        Mean seeds per seed voxel, at random positions within the voxel (fractions: see
        :func:`seed_points`; :func:`seeds_per_voxel_for_density` converts a density per mm³).
    step_size_mm : float
        Step length in mm.
    fa_threshold : float
        Tracking stops where the interpolated FA is at or below this value.
    max_angle_deg : float
        Largest turn between successive steps, in degrees.
    min_length_mm, max_length_mm : float
        Streamlines shorter or longer than these (arc length, mm) are discarded.
    method : {"deterministic", "probabilistic"}
        See the module docstring.
    seed : int
        Seed of the random generator for seed positions (and, for the probabilistic
        method, for direction sampling). Same inputs and seed give identical output.
    data : ndarray, shape (X, Y, Z, N), optional
        Diffusion-weighted signal; needed by the probabilistic method.
    bvals : ndarray, shape (N,), optional
        b-values in s/mm^2; needed by the probabilistic method.
    bvecs_voxel : ndarray, shape (N, 3), optional
        b-vectors in voxel axes; needed by the probabilistic method.
    end_fa : ndarray, shape (X, Y, Z), optional
        A second FA map (typically the unsmoothed one when ``fa`` and the directions come
        from a smoothed tensor field): each streamline is trimmed back to its outermost
        points where this FA (trilinear) is above ``fa_threshold``, so no streamline ends
        in tissue whose own FA is at or below the threshold; the length limits apply after
        trimming.
    b0_threshold : float
        Probabilistic method: volumes with b ≤ this (s/mm²) are b=0 images.
    n_jobs : int
        Processes to track in (forked workers, each tracking blocks of seeds). Every
        seed is tracked independently, so the result does not depend on ``n_jobs``.

    Returns
    -------
    streamlines : ArraySequence
        float64 points in world RAS+ mm, in seed order (world z, y, x of the seed
        voxel); each streamline runs through its seed in both directions.
    """
    from dipy.tracking.stopping_criterion import ThresholdStoppingCriterion

    if method not in METHODS:
        raise InputError(None, f"unknown tracking method {method!r}; choose one of {', '.join(METHODS)}")
    if step_size_mm <= 0 or max_length_mm <= 0 or min_length_mm > max_length_mm:
        raise InputError(None, "step size and lengths must be positive and min_length_mm <= max_length_mm")
    affine = np.asarray(affine, dtype=np.float64)
    fa = np.asarray(fa, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if fa.shape != mask.shape or fa.ndim != 3:
        raise InputError(None, f"fa {fa.shape} and mask {mask.shape} must be the same 3D shape")
    fa = np.where(np.isfinite(fa) & mask, fa, 0.0)

    seeding = mask & (fa > fa_threshold)
    if seed_mask is not None:
        seed_mask = np.asarray(seed_mask, bool)
        if seed_mask.shape != mask.shape:
            raise InputError(None, f"seed mask {seed_mask.shape} does not match the mask {mask.shape}")
        seeding &= seed_mask
    seeds = seed_points(seeding, affine, seeds_per_voxel=seeds_per_voxel, seed=seed)
    if len(seeds) == 0:
        LOGGER.warning("no seed voxel (mask with FA > %g): no streamline", fa_threshold)
        return ArraySequence()

    if method == "deterministic":
        v1 = principal_direction(evecs_or_v1)
        if v1.shape[:3] != mask.shape:
            raise InputError(None, f"eigenvectors {v1.shape[:3]} do not match the mask {mask.shape}")
        usable = mask & (np.abs(v1).sum(axis=-1) > 0) & (fa > 0)
        getter = _eigenvector_peaks(v1, fa, usable, max_angle_deg, fa_threshold)
        random_seed = None
    else:
        getter = _csa_direction_getter(data, bvals, bvecs_voxel, mask, max_angle_deg, b0_threshold)
        random_seed = int(seed)

    criterion = ThresholdStoppingCriterion(np.ascontiguousarray(fa), float(fa_threshold))
    max_points = int(np.ceil(max_length_mm / step_size_mm)) + 2  # per half; longer ones are dropped below
    start = time.perf_counter()
    job = _TrackingJob(getter, criterion, affine, float(step_size_mm), max_points, random_seed,
                       float(min_length_mm), float(max_length_mm))
    points, counts, n_total = _run_tracking(job, seeds, n_jobs)
    if end_fa is not None:
        end_fa = np.asarray(end_fa, np.float64)
        if end_fa.shape != fa.shape:
            raise InputError(None, f"end_fa {end_fa.shape} does not match fa {fa.shape}")
        end_fa = np.where(np.isfinite(end_fa) & mask, end_fa, 0.0)
        points, counts = _trim_ends(points, counts, end_fa, affine, float(fa_threshold),
                                    float(min_length_mm), float(max_length_mm))
    LOGGER.info(
        "%s tracking: %d seeds, %d streamlines, %d kept (%g-%g mm) in %.1f s",
        method, len(seeds), n_total, len(counts), min_length_mm, max_length_mm, time.perf_counter() - start,
    )
    return _packed_sequence(points, counts)


# ------------------------------------------------------------------- tracking engine


class _TrackingJob:
    """Everything a worker needs to track a block of seeds (inherited by forked workers)."""

    def __init__(self, getter, criterion, affine, step_size, max_points, random_seed, min_length, max_length):
        self.getter = getter
        self.criterion = criterion
        self.affine = affine
        self.step_size = step_size
        self.max_points = max_points
        self.random_seed = random_seed
        self.min_length = min_length
        self.max_length = max_length
        self.seeds = None  # set while forked workers run


#: The job of the running :func:`track` call, read by forked worker processes.
_JOB: _TrackingJob | None = None

#: Streamline lengths closer than this (mm) to a length limit are summed again the way
#: a single streamline is (``np.linalg.norm(np.diff(s), axis=1).sum()``), so the keep
#: or drop decision never depends on how the segment lengths were added up.
_LENGTH_RECHECK_MM = 1e-6


def _track_block(job: _TrackingJob, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Track ``seeds`` with dipy's LocalTracking; keep the streamlines within the length limits.

    Returns the kept streamlines packed as (points (P, 3) float64 world mm, point counts
    (N,)) in seed order, and the number of streamlines tracked.
    """
    from dipy.tracking.local_tracking import LocalTracking

    with warnings.catch_warnings():
        # dipy 1.12 deprecates PeaksAndMetrics in LocalTracking in favour of its
        # multi-threaded tracker API, whose EuDX tracker does not give the same
        # streamlines (other stopping rule at the ends); the serial LocalTracking is kept
        # for its exact, documented behaviour (pinned dipy < 1.13). The legacy-basis note
        # comes from the probabilistic getter (see _csa_direction_getter).
        warnings.filterwarnings("ignore", message=".*EuDXDirectionGetter.*")
        warnings.filterwarnings("ignore", message=".*legacy descoteaux07.*")
        tracker = LocalTracking(
            job.getter,
            job.criterion,
            seeds,
            job.affine,
            step_size=job.step_size,
            max_cross=1,
            maxlen=job.max_points,
            return_all=True,
            random_seed=job.random_seed,
        )
        # Every streamline is a fresh float64 array (dipy maps each to world space with
        # its own np.dot), so collecting them needs no copy.
        tracked = []
        n_total = 0
        for sl in tracker:
            n_total += 1
            if len(sl) >= 2:
                tracked.append(sl)
    if not tracked:
        return np.zeros((0, 3)), np.zeros(0, dtype=np.intp), n_total
    counts = np.fromiter((len(sl) for sl in tracked), dtype=np.intp, count=len(tracked))
    points = np.concatenate(tracked)
    del tracked
    points, counts = _within_lengths(points, counts, job.min_length, job.max_length)
    return points, counts, n_total


def _within_lengths(points: np.ndarray, counts: np.ndarray, min_length_mm: float,
                    max_length_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The packed streamlines whose arc length (mm) is within the limits, in order.

    Lengths within :data:`_LENGTH_RECHECK_MM` of a limit are summed again streamline by
    streamline, as dipy's ``length`` does, so the packed sum's rounding never decides.
    """
    if len(counts) == 0:
        return points, counts
    lengths = _packed_lengths(points, counts)
    keep = (lengths >= min_length_mm) & (lengths <= max_length_mm)
    near = (np.abs(lengths - min_length_mm) < _LENGTH_RECHECK_MM) | (
        np.abs(lengths - max_length_mm) < _LENGTH_RECHECK_MM)
    if near.any():
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for i in np.flatnonzero(near):
            sl = points[offsets[i]:offsets[i] + counts[i]]
            length = float(np.linalg.norm(np.diff(sl, axis=0), axis=1).sum())
            keep[i] = min_length_mm <= length <= max_length_mm
    if keep.all():
        return points, counts
    return points[np.repeat(keep, counts)], counts[keep]


def _run_rows(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Row indices of consecutive runs: ``counts[i]`` rows from ``starts[i]``, run after run."""
    counts = np.asarray(counts, dtype=np.intp)
    out_starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum()), dtype=np.intp) + np.repeat(np.asarray(starts, np.intp) - out_starts, counts)


def _packed_lengths(points: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Arc length of each packed streamline (at least two points each)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    ends = np.cumsum(counts)
    seg[ends[:-1] - 1] = 0.0  # segment k joins points k and k+1: not those between two streamlines
    return np.add.reduceat(seg, ends - counts)


def _trim_ends(points: np.ndarray, counts: np.ndarray, fa: np.ndarray, affine: np.ndarray, threshold: float,
               min_length_mm: float, max_length_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Packed streamlines cut back to their outermost points where ``fa`` > ``threshold``
    (trilinear, world points through ``affine``); those then outside the length limits
    (:func:`_within_lengths`) or with fewer than two points are dropped. Order is kept."""
    from scipy import ndimage

    if len(counts) == 0:
        return points, counts
    counts = np.asarray(counts, dtype=np.intp)
    starts = np.cumsum(counts) - counts
    ids = np.repeat(np.arange(len(counts)), counts)
    local = np.arange(len(points), dtype=np.intp) - starts[ids]
    inv = np.linalg.inv(affine)
    vox = np.asarray(points, np.float64) @ inv[:3, :3].T + inv[:3, 3]
    above = ndimage.map_coordinates(fa, vox.T, order=1, mode="constant", cval=0.0, prefilter=False) > threshold
    first = np.full(len(counts), -1, dtype=np.intp)
    last = np.full(len(counts), -1, dtype=np.intp)
    hit_ids = ids[above]
    # points are in order: the first hit of a streamline is where its id first appears
    uniq, first_pos = np.unique(hit_ids, return_index=True)
    first[uniq] = local[above][first_pos]
    np.maximum.at(last, hit_ids, local[above])
    keep = (first >= 0) & (last > first)
    new_counts = (last - first + 1)[keep]
    points = points[_run_rows(starts[keep] + first[keep], new_counts)]
    return _within_lengths(points, new_counts, min_length_mm, max_length_mm)


def _track_block_of_job(bounds: tuple[int, int]):
    """Worker entry point: track seeds ``bounds[0]:bounds[1]`` of the running job."""
    job = _JOB
    return _track_block(job, job.seeds[bounds[0]:bounds[1]])


def _run_tracking(job: _TrackingJob, seeds: np.ndarray, n_jobs: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Track all seeds, in ``n_jobs`` forked worker processes when more than one.

    Every seed is tracked on its own (dipy's LocalTracking keeps no state between seeds;
    the probabilistic getter re-seeds its generator from each seed position), so
    splitting the seeds into blocks and joining the blocks' streamlines in seed order
    gives exactly the serial result.
    """
    global _JOB
    n_jobs = max(1, int(n_jobs or 1))
    n_seeds = len(seeds)
    if n_jobs > 1 and n_seeds >= 2 * n_jobs:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        try:
            ctx = mp.get_context("fork")
        except ValueError:  # no fork on this platform: serial
            ctx = None
        if ctx is not None:
            n_blocks = min(n_seeds, 8 * n_jobs)  # several blocks per worker balance the load
            edges = np.linspace(0, n_seeds, n_blocks + 1).round().astype(int)
            bounds = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
            job.seeds = seeds
            _JOB = job
            try:
                with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
                    parts = list(pool.map(_track_block_of_job, bounds))
            except (OSError, RuntimeError, AssertionError) as exc:  # e.g. no process may be started here
                LOGGER.warning("parallel tracking unavailable (%s); tracking in one process", exc)
                parts = None
            finally:
                _JOB = None
                job.seeds = None
            if parts is not None:
                points = np.concatenate([p[0] for p in parts])
                counts = np.concatenate([p[1] for p in parts]).astype(np.intp)
                return points, counts, int(sum(p[2] for p in parts))
    return _track_block(job, seeds)


def _packed_sequence(points: np.ndarray, counts: np.ndarray) -> ArraySequence:
    """An ArraySequence over packed points (no copy) with the given point counts."""
    seq = ArraySequence()
    if len(counts) == 0:
        return seq
    counts = np.asarray(counts, dtype=np.intp)
    seq._data = np.ascontiguousarray(points, dtype=np.float64)
    seq._lengths = counts
    seq._offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
    return seq


# ------------------------------------------------------------------------------- trk


def _reference(reference_img_or_tuple):
    """dipy reference (affine, dimensions, voxel sizes, voxel order) from an image or tuple."""
    if isinstance(reference_img_or_tuple, nib.spatialimages.SpatialImage):
        affine = np.asarray(reference_img_or_tuple.affine, float)
        shape = reference_img_or_tuple.shape[:3]
        zooms = reference_img_or_tuple.header.get_zooms()[:3]
    else:
        try:
            affine, shape, *rest = reference_img_or_tuple
        except (TypeError, ValueError):
            raise InputError(None, "reference must be an image or an (affine, shape[, zooms]) tuple") from None
        affine = np.asarray(affine, float)
        zooms = rest[0] if rest else np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        shape = tuple(shape)[:3]
    return (
        affine,
        np.asarray(shape, dtype=np.int16),
        np.asarray(zooms, dtype=np.float32),
        "".join(aff2axcodes(affine)),
    )


def _packed(streamlines) -> tuple[np.ndarray, np.ndarray]:
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


def _trk_header(ref, n_streamlines: int) -> np.ndarray:
    """The TrackVis header nibabel writes for ``ref`` (dipy space attributes) and a streamline count."""
    import io

    from dipy.io.utils import create_tractogram_header
    from nibabel.streamlines.tractogram import Tractogram
    from nibabel.streamlines.trk import TrkFile, header_2_dtype

    buffer = io.BytesIO()
    TrkFile(Tractogram([], affine_to_rasmm=np.eye(4)), header=create_tractogram_header(TrkFile, *ref)).save(buffer)
    header = np.frombuffer(buffer.getvalue()[:header_2_dtype.itemsize], dtype=header_2_dtype).copy().reshape(())
    if n_streamlines:
        header[nib.streamlines.Field.NB_STREAMLINES] = n_streamlines
    return header


def save_trk(streamlines, reference_img_or_tuple, out_path: str | PathLike) -> Path:
    """Write streamlines given in world RAS+ mm to a TrackVis ``.trk`` file.

    Parameters
    ----------
    streamlines : ArraySequence or sequence of (n_i, 3) arrays
        Points in world RAS+ mm.
    reference_img_or_tuple : nibabel image or tuple
        The image the streamlines belong to, or ``(affine, shape)`` /
        ``(affine, shape, zooms)``; it fills the ``.trk`` header.
    out_path : path-like
        Destination file name (should end in ``.trk``).

    Returns
    -------
    path : Path
        The file written. Points are stored as float32, so a reload matches to about
        1e-5 of their magnitude.

    Notes
    -----
    The file is byte for byte what dipy's ``save_tractogram`` writes for a
    ``StatefulTractogram`` in RAS+ mm after its voxel bounding-box check (which
    sends the points to voxel space with a float32 inverse affine and back), but the
    points are transformed and written as whole arrays instead of one streamline at
    a time.
    """
    from nibabel.affines import apply_affine
    from nibabel.streamlines.trk import get_affine_rasmm_to_trackvis

    out_path = Path(out_path)
    ref = _reference(reference_img_or_tuple)
    affine, dimensions = ref[0], ref[1]
    points, counts = _packed(streamlines)
    header = _trk_header(ref, len(counts))
    if len(counts):
        # dipy's StatefulTractogram.is_bbox_in_vox_valid, in place on the points: to voxel
        # space (float32 inverse affine), to the voxel corner, check, and back.
        inv_affine = np.linalg.inv(affine).astype(np.float32)
        if not np.all(inv_affine == np.eye(4)):
            points = apply_affine(inv_affine, points, inplace=True)
        points += np.asarray([0.5, 0.5, 0.5])
        if np.any(points < 0) or np.any(points > dimensions):  # the bounding box leaves the volume
            LOGGER.warning("%s: some streamline points lie outside the reference volume", out_path)
        if not np.all(affine == np.eye(4)):
            points = apply_affine(affine, points, inplace=True)
        corner = np.eye(4)
        corner[0:3, 0:3] = affine[0:3, 0:3]
        points += -(apply_affine(corner, np.asarray([0.5, 0.5, 0.5])) * [1, 1, 1])
        # nibabel's TrkFile.save: RAS+ mm to TrackVis voxel mm, then float32
        to_trackvis = np.dot(get_affine_rasmm_to_trackvis(header), np.eye(4))
        if not np.allclose(to_trackvis, np.eye(4)):
            points = points @ to_trackvis[:-1, :-1].T + to_trackvis[:-1, -1][None, :]
        record = np.empty(len(counts) + 3 * len(points), dtype="<f4")
        starts = np.arange(len(counts)) + 3 * (np.cumsum(counts) - counts)  # the count before each streamline
        is_count = np.zeros(len(record), dtype=bool)
        is_count[starts] = True
        record[~is_count] = points.astype("<f4").ravel()
        record.view("<i4")[starts] = counts
    else:
        record = np.zeros(0, dtype="<f4")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "wb") as f:
        f.write(header.tobytes())
        f.write(record.tobytes())
    return out_path


def load_trk(path: str | PathLike) -> ArraySequence:
    """Read a ``.trk`` file's streamlines in world RAS+ mm (float32, as stored).

    The points and their world coordinates are those of ``nibabel.streamlines.load``;
    files without per-point scalars or per-streamline properties are parsed as whole
    arrays (much faster for 10^5 streamlines), others by nibabel.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "tractogram file not found")
    try:
        fast = _load_trk_arrays(path)
        if fast is not None:
            return fast
        return nib.streamlines.load(str(path)).streamlines
    except Exception as exc:  # nibabel raises several types for a malformed file
        raise InputError(path, f"not a readable tractogram ({exc})") from None


def _load_trk_arrays(path: Path) -> ArraySequence | None:
    """Streamlines of a plain ``.trk`` file (no scalars or properties), or None for other files."""
    from nibabel.streamlines import Field
    from nibabel.streamlines.tractogram import Tractogram
    from nibabel.streamlines.trk import TrkFile, get_affine_trackvis_to_rasmm

    header = TrkFile._read_header(str(path))
    if header[Field.NB_SCALARS_PER_POINT] > 0 or header[Field.NB_PROPERTIES_PER_STREAMLINE] > 0:
        return None
    i4 = np.dtype(header[Field.ENDIANNESS] + "i4")
    f4 = np.dtype(header[Field.ENDIANNESS] + "f4")
    if not f4.isnative:
        return None
    raw = path.read_bytes()[int(header["_offset_data"]):]
    raw = raw[: len(raw) - len(raw) % 4]
    words = memoryview(raw).cast("i") if i4.isnative and i4.itemsize == 4 else np.frombuffer(raw, dtype=i4)
    expected = int(header[Field.NB_STREAMLINES]) or None
    counts = []
    pos, n_words = 0, len(words)
    while pos < n_words and (expected is None or len(counts) < expected):
        n = int(words[pos])
        if n < 0 or pos + 1 + 3 * n > n_words:
            return None  # truncated or malformed: let nibabel report it
        counts.append(n)
        pos += 1 + 3 * n
    counts = np.asarray(counts, dtype=np.intp)
    starts = np.arange(len(counts)) + 3 * (np.cumsum(counts) - counts)
    is_point = np.ones(pos, dtype=bool)
    is_point[starts] = False
    points = np.frombuffer(raw, dtype=f4, count=pos)[is_point].reshape(-1, 3)
    seq = ArraySequence()
    if len(counts):
        seq._data = np.ascontiguousarray(points)
        seq._lengths = counts
        seq._offsets = (np.cumsum(counts) - counts).astype(np.intp)
    tractogram = Tractogram(seq)
    tractogram.affine_to_rasmm = get_affine_trackvis_to_rasmm(header)
    return tractogram.to_world().streamlines

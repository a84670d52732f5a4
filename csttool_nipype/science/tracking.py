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
    return np.array(
        [float(np.linalg.norm(np.diff(np.asarray(s, float), axis=0), axis=1).sum()) for s in streamlines],
        dtype=float,
    )


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


def seed_points(seed_mask: np.ndarray, affine: np.ndarray, *, seeds_per_voxel: int = 1, seed: int = 0) -> np.ndarray:
    """Random seed positions inside the voxels of a mask, in world space.

    Seed voxels are visited in world (z, y, x) order of their centres and each seed is
    offset uniformly within its voxel (a unit cube in voxel coordinates) by
    ``numpy.random.default_rng(seed)``; the offset components are drawn along world
    axes and mapped to the closest voxel axes. The same mask stored with flipped or
    permuted axes therefore gives the same world positions, in the same order.

    Parameters
    ----------
    seed_mask : ndarray of bool, shape (X, Y, Z)
        Voxels to seed.
    affine : ndarray, shape (4, 4)
        Voxel-to-world (RAS+ mm) affine.
    seeds_per_voxel : int
        Seeds drawn in each voxel (>= 1).
    seed : int
        Random generator seed.

    Returns
    -------
    seeds : ndarray, shape (n_voxels * seeds_per_voxel, 3)
        World RAS+ coordinates in mm.
    """
    if int(seeds_per_voxel) < 1:
        raise InputError(None, f"seeds_per_voxel must be at least 1, got {seeds_per_voxel}")
    affine = np.asarray(affine, float)
    ijk = np.argwhere(np.asarray(seed_mask, bool)).astype(float)
    if len(ijk) == 0:
        return np.zeros((0, 3))
    centres = ijk @ affine[:3, :3].T + affine[:3, 3]
    # Round so that rounding noise between storage orders cannot change the order.
    key = np.round(centres, 3)
    order = np.lexsort((key[:, 0], key[:, 1], key[:, 2]))
    ijk = np.repeat(ijk[order], int(seeds_per_voxel), axis=0)
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


def _csa_direction_getter(data, bvals, bvecs_voxel, mask, max_angle_deg):
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
    b0_threshold = 50.0
    keep = _single_shell(bvals, b0_threshold)
    n_dirs = int((bvals[keep] > b0_threshold).sum())
    order = CSA_SH_ORDER_MAX
    while order > 2 and (order + 1) * (order + 2) // 2 > n_dirs:
        order -= 2
    LOGGER.info("probabilistic tracking: CSA ODF, SH order %d, %d directions of b=%g s/mm^2",
                order, n_dirs, float(np.median(bvals[keep & (bvals > b0_threshold)])))
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
    seeds_per_voxel: int = 1,
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
    seeds_per_voxel : int
        Seeds per seed voxel, at random positions within the voxel.
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

    Returns
    -------
    streamlines : ArraySequence
        float64 points in world RAS+ mm, in seed order (world z, y, x of the seed
        voxel); each streamline runs through its seed in both directions.
    """
    from dipy.tracking.local_tracking import LocalTracking
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
        getter = _csa_direction_getter(data, bvals, bvecs_voxel, mask, max_angle_deg)
        random_seed = int(seed)

    criterion = ThresholdStoppingCriterion(np.ascontiguousarray(fa), float(fa_threshold))
    max_points = int(np.ceil(max_length_mm / step_size_mm)) + 2  # per half; longer ones are dropped below
    start = time.perf_counter()
    kept = []
    n_total = 0
    with warnings.catch_warnings():
        # dipy 1.12 deprecates PeaksAndMetrics in LocalTracking in favour of its
        # multi-threaded tracker API; the serial LocalTracking is kept for its exact,
        # documented behaviour (pinned dipy < 1.13). The legacy-basis note comes from
        # the probabilistic getter (see _csa_direction_getter).
        warnings.filterwarnings("ignore", message=".*EuDXDirectionGetter.*")
        warnings.filterwarnings("ignore", message=".*legacy descoteaux07.*")
        tracker = LocalTracking(
            getter,
            criterion,
            seeds,
            affine,
            step_size=float(step_size_mm),
            max_cross=1,
            maxlen=max_points,
            return_all=True,
            random_seed=random_seed,
        )
        for sl in tracker:
            n_total += 1
            sl = np.asarray(sl, dtype=np.float64)
            if len(sl) < 2:
                continue
            length = float(np.linalg.norm(np.diff(sl, axis=0), axis=1).sum())
            if min_length_mm <= length <= max_length_mm:
                kept.append(sl)
    LOGGER.info(
        "%s tracking: %d seeds, %d streamlines, %d kept (%g-%g mm) in %.1f s",
        method, len(seeds), n_total, len(kept), min_length_mm, max_length_mm, time.perf_counter() - start,
    )
    return ArraySequence(kept)


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
    """
    from dipy.io.stateful_tractogram import Space, StatefulTractogram
    from dipy.io.streamline import save_tractogram

    out_path = Path(out_path)
    ref = _reference(reference_img_or_tuple)
    sft = StatefulTractogram(_as_sequence(streamlines), ref, Space.RASMM)
    if len(sft) and not sft.is_bbox_in_vox_valid():
        LOGGER.warning("%s: some streamline points lie outside the reference volume", out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_tractogram(sft, str(out_path), bbox_valid_check=False)
    return out_path


def load_trk(path: str | PathLike) -> ArraySequence:
    """Read a ``.trk`` file's streamlines in world RAS+ mm (float32, as stored)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "tractogram file not found")
    try:
        return nib.streamlines.load(str(path)).streamlines
    except Exception as exc:  # nibabel raises several types for a malformed file
        raise InputError(path, f"not a readable tractogram ({exc})") from None

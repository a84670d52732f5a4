"""Diffusion preprocessing on arrays: Gibbs-ringing removal, brain mask and processing region.

Denoising: :mod:`csttool_nipype.science.denoise`; motion correction:
:mod:`csttool_nipype.science.motion`. All functions take and return plain numpy arrays;
no files, no Nipype.

Array conventions
-----------------
* ``data`` is a 4D array ``(X, Y, Z, N)`` in voxel order (one 3D volume per
  diffusion measurement); outputs are ``float32``.
* ``bvals`` is ``(N,)`` in s/mm^2; a volume is a "b0" when ``bval <= b0_threshold``.
* ``bvecs_voxel`` is ``(N, 3)`` in the image's voxel axes (see
  :mod:`csttool_nipype.science.gradients`).

Every function is deterministic: the same input gives bit-identical output.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from ..config import B0_THRESHOLD

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers
def as_4d_float32(data: np.ndarray) -> np.ndarray:
    """``data`` as a C-contiguous float32 array, checked to be 4D (X, Y, Z, N)."""
    arr = np.asarray(data)
    if arr.ndim != 4:
        raise ValueError(f"expected a 4D (X, Y, Z, N) array, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_bvals(bvals: np.ndarray, n_volumes: int) -> np.ndarray:
    """b-values (s/mm^2) as a flat float array, checked to number ``n_volumes``."""
    bvals = np.asarray(bvals, dtype=float).ravel()
    if bvals.size != n_volumes:
        raise ValueError(f"{bvals.size} b-values for {n_volumes} volumes")
    return bvals


def check_mask(mask: np.ndarray | None, shape3: tuple[int, ...]) -> np.ndarray | None:
    """``mask`` as bool, checked to have ``shape3`` and a voxel (None stays None)."""
    if mask is None:
        return None
    mask = np.asarray(mask).astype(bool)
    if mask.shape != tuple(shape3):
        raise ValueError(f"mask shape {mask.shape} does not match image shape {tuple(shape3)}")
    if not mask.any():
        raise ValueError("mask is empty")
    return mask


def b0_indices(bvals: np.ndarray, b0_threshold: float) -> np.ndarray:
    """Indices of the b0 volumes: ``bvals <= b0_threshold`` (s/mm^2)."""
    return np.flatnonzero(bvals <= b0_threshold)



def bounding_box(region: np.ndarray, margin: int) -> tuple:
    """Slices of the bounding box of ``region`` grown by ``margin`` voxels (whole grid if empty)."""
    idx = np.argwhere(region)
    if not idx.size:
        return tuple(slice(0, int(n)) for n in region.shape)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, region.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


# --------------------------------------------------------------------------- Gibbs
def gibbs_unring(
    data: np.ndarray, slice_axis: int = 2, n_points: int = 3, num_processes: int = 1,
    mask: np.ndarray | None = None, workers: int = 1,
) -> np.ndarray:
    """Remove Gibbs ringing (Kellner 2016 sub-voxel shift method).

    Uses :func:`csttool_nipype.science.gibbs.gibbs_removal_fast`, a vectorised
    implementation of dipy's ``gibbs_removal`` that gives the same output (checked in
    ``tests/test_gibbs.py``) several times faster, in one process.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z) or (X, Y, Z, N)
        Magnitude images in voxel order; apply before any resampling (motion correction),
        on the acquired grid.
    slice_axis : int
        Voxel axis along which slices were acquired (0, 1 or 2); ringing is removed in
        the two in-plane axes.
    n_points : int
        Neighbour points used for the local total-variation estimate.
    num_processes : int
        Kept for compatibility; the fast implementation runs in the calling process
        (dipy's ``num_processes > 1`` would switch multiprocessing to "spawn").
    mask : ndarray of bool, shape (X, Y, Z), optional
        Region that must be corrected (see :func:`processing_region`); work that cannot
        affect it is skipped, so voxels outside it may differ from dipy's result.
    workers : int
        Threads; never changes the result.

    Returns
    -------
    ndarray, float32, same shape as ``data`` (the input is not modified).
    """
    from .gibbs import gibbs_removal_fast

    arr = np.array(data, dtype=np.float32, copy=True)
    if arr.ndim not in (3, 4):
        raise ValueError(f"expected a 3D or 4D array, got shape {arr.shape}")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    del num_processes
    extra = {}
    if mask is not None:
        extra["mask"] = check_mask(mask, arr.shape[:3])
    if workers > 1:
        extra["workers"] = int(workers)
    out = gibbs_removal_fast(arr, slice_axis=slice_axis, n_points=n_points, inplace=True, **extra)
    return np.asarray(out, dtype=np.float32)


# --------------------------------------------------------------------------- mask
#: Margin (voxels) added around the preliminary brain mask by :func:`processing_region`:
#: covers head motion between volumes (the mask is drawn on the mean of the uncorrected
#: b0s), the interpolation support of motion correction and a mask edge that the final
#: mask (drawn after preprocessing) may place differently.
PROCESSING_MARGIN_VOX = 4


def processing_region(
    data: np.ndarray, bvals: np.ndarray, b0_threshold: float = B0_THRESHOLD, margin_vox: int = PROCESSING_MARGIN_VOX,
) -> np.ndarray:
    """Where denoising and Gibbs removal must be right: a generous brain region.

    Otsu threshold of the raw (uncorrected) mean b0 smoothed by a Gaussian of 1 voxel,
    its largest connected component, dilated by ``margin_vox`` voxels with a cube (so by
    ``margin_vox`` voxel widths along each axis): a rougher, 50x cheaper
    :func:`brain_mask` (no median filter, no edge refinement, no hole filling - the
    margin makes them moot; tests check it holds the final mask). Denoising and
    Gibbs removal restricted to it skip the background - half to three quarters of a
    typical field of view - while everything that later stages read (the final brain
    mask, which is drawn on the preprocessed series, and what motion correction
    interpolates into it) lies inside.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
        All True when no brain mask can be drawn (no b0 volume, empty mask): then
        nothing is skipped.
    """
    from dipy.segment.threshold import otsu

    arr = np.asarray(data)
    b0_idx = b0_indices(check_bvals(bvals, arr.shape[-1]), b0_threshold)
    mask = None
    if b0_idx.size:
        mean_b0 = ndimage.gaussian_filter(arr[..., b0_idx].astype(np.float32).mean(axis=-1), 1.0)
        mask = _largest_component(mean_b0 > otsu(mean_b0))
    if mask is None or not mask.any():
        logger.warning("processing_region: no preliminary brain mask (no b0 or empty); using the whole field of view")
        return np.ones(arr.shape[:3], bool)
    if margin_vox > 0:   # a cube dilation, as a separable maximum filter
        mask = ndimage.maximum_filter(mask.view(np.uint8), size=2 * margin_vox + 1).view(bool)
    logger.info("processing_region: %d of %d voxels (%.0f %%)", int(mask.sum()), mask.size, 100 * mask.mean())
    return mask


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def brain_mask(
    data: np.ndarray,
    bvals: np.ndarray,
    b0_threshold: float = B0_THRESHOLD,
    median_radius: int = 2,
    numpass: int = 1,
    edge_band: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Brain mask from the mean b0 (dipy ``median_otsu``), cleaned up.

    Steps: mean of the b0 volumes -> ``median_otsu`` (median filter of radius
    ``median_radius`` voxels applied ``numpass`` times, then Otsu threshold) -> largest
    connected component (6-connectivity), holes filled -> edge refinement: voxels within
    ``edge_band`` voxels of that boundary are re-classified by the Otsu threshold of the
    unfiltered mean b0 (the median filter rounds off convex edges; gain measured:
    docs/decisions.md) ->
    largest component -> fill holes (3D, then slice by slice along each axis).

    Made for b0 images without skull or with the skull dark (CSF bright is fine: it is
    part of the mask); a bright scalp would need skull stripping first.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
    bvals : ndarray, shape (N,)
        s/mm^2.
    b0_threshold : float
        b-values at or below this count as b0 (s/mm^2).
    median_radius, numpass : int
        ``median_otsu`` parameters.
    edge_band : int
        Width (voxels) of the edge refinement band; 0 switches refinement off.

    Returns
    -------
    mask : ndarray of bool, shape (X, Y, Z)
    mean_b0 : ndarray, float32, shape (X, Y, Z)

    Raises
    ------
    ValueError
        No volume has ``bval <= b0_threshold``, or the mask comes out empty.
    """
    from dipy.segment.mask import median_otsu

    arr = np.asarray(data)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"expected a 4D (X, Y, Z, N) array, got shape {arr.shape}")
    bvals = check_bvals(bvals, arr.shape[-1])
    b0_idx = b0_indices(bvals, b0_threshold)
    if b0_idx.size == 0:
        raise ValueError(f"no b0 volume (b <= {b0_threshold:g} s/mm^2) to build a brain mask from")
    mean_b0 = arr[..., b0_idx].astype(np.float64).mean(axis=-1).astype(np.float32)

    _, mask = median_otsu(mean_b0, median_radius=median_radius, numpass=numpass)
    mask = ndimage.binary_fill_holes(_largest_component(np.asarray(mask, dtype=bool)))
    # edge refinement: the median filter rounds off convex edges and corners; within
    # _MASK_EDGE_BAND voxels of its boundary, re-classify voxels by the Otsu threshold of
    # the unfiltered mean b0
    if mask.any() and edge_band > 0:
        from dipy.segment.threshold import otsu

        threshold = float(otsu(mean_b0.astype(np.float64)))
        band = ndimage.binary_dilation(mask, iterations=edge_band) & ~ndimage.binary_erosion(mask, iterations=edge_band)
        mask[band] = mean_b0[band] > threshold
        mask = _largest_component(mask)
    mask = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        for i in range(mask.shape[axis]):
            sl = [slice(None)] * 3
            sl[axis] = i
            mask[tuple(sl)] = ndimage.binary_fill_holes(mask[tuple(sl)])
    if not mask.any():
        raise ValueError("brain mask is empty")
    logger.info("brain_mask: %d voxels", int(mask.sum()))
    return mask.astype(bool), mean_b0

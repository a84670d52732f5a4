"""Vectorised Gibbs-ringing removal (local sub-voxel shifts, Kellner et al. 2016).

:func:`gibbs_removal_fast` implements the same method, with the same numerical
choices, as :func:`dipy.denoise.gibbs.gibbs_removal` (dipy 1.12), but processes all 2D
slices of all volumes together instead of one slice at a time:

1. For each in-plane direction (the image and its transpose), every image line is
   Fourier-shifted by the 90 sub-voxel shifts ``+-s``, ``s`` in
   ``linspace(0.02, 0.9, 45)``; for each sample the shift that minimises the local
   total variation ``min(TV_right, TV_left)`` (``n_points`` neighbours each side,
   periodic boundaries) is kept, separately for positive and negative shifts, with
   the unshifted line as the starting point (ties keep the smaller shift).
2. The best positive- and negative-shift values are linearly interpolated back to the
   original grid point: ``(i_p - i_n) / (s_p + s_n) * s_n + i_n``.
3. The two 1D-corrected images are combined in k-space with dipy's cosine weights
   ``G1 = (1 + cos k0) / (2 + cos k0 + cos k1)`` (for the image corrected along axis 1)
   and ``G0 = (1 + cos k1) / (2 + cos k0 + cos k1)``, ``k = linspace(-pi, pi, N)``
   (edges as in dipy), and the magnitude of the inverse FFT is returned.

The loop over shifts is kept (45 shifts, for each of the 2 directions of a chunk), but
each iteration works on all image lines of a chunk of slices at once
(:mod:`csttool_nipype.science.gibbs_kernels`: the kernels and their two arithmetic paths,
float64 bit-identical to dipy, float32 faster and rounded differently). Slices are
processed in memory-bounded chunks; a slice's result does not depend on the chunking.

Options (keyword-only): ``workers`` runs chunks of slices on a thread pool (numpy's
loops and pocketfft release the GIL; each chunk is computed exactly as on one thread,
so the result does not depend on ``workers``), and ``mask`` restricts the work to what
can affect a region (whole lines through it; see the Notes of
:func:`gibbs_removal_fast` for the approximation and why lines are skipped rather than
slices cropped).

Either path is deterministic: the result does not depend on ``workers`` or
``chunk_voxels`` and is bit-identical across runs on one machine. Measured differences
from dipy and the choices behind the mask handling: docs/decisions.md.

References
----------
Kellner E, Dhital B, Kiselev VG, Reisert M. Gibbs-ringing artifact removal based on
local subvoxel-shifts. Magn Reson Med 2016;76:1574-1581.

Neto Henriques R. Advanced methods for diffusion MRI data analysis and their
application to the healthy ageing brain. PhD thesis, University of Cambridge, 2018.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage as ndi

from csttool_nipype.science.gibbs_kernels import kspace_weights, unring_slices

logger = logging.getLogger(__name__)

__all__ = ["gibbs_removal_fast"]

#: Default number of voxels processed together (bounds the working memory, see Notes of
#: :func:`gibbs_removal_fast`).
DEFAULT_CHUNK_VOXELS = 1 << 16

#: With a ``mask``: lines within this many lines of a line that intersects the mask are
#: corrected too (see Notes of :func:`gibbs_removal_fast`).
MASK_LINE_MARGIN = 4


def _checked(data, slice_axis, n_points, inplace, workers, mask):
    """``(arr, n_points, workers, mask, dtype)``: the arguments of :func:`gibbs_removal_fast` checked
    (errors as documented there); ``dtype`` is the computation's (float32 or float64)."""
    arr = np.asarray(data)
    if not isinstance(inplace, bool):
        raise TypeError("inplace must be a bool")
    if arr.ndim not in (2, 3, 4):
        raise ValueError(f"expected a 2D, 3D or 4D array, got shape {arr.shape}")
    if np.iscomplexobj(arr) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"expected real numeric data, got dtype {arr.dtype}")
    if arr.ndim > 2 and slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis!r}")
    if int(n_points) != n_points or n_points < 1:
        raise ValueError(f"n_points must be a positive integer, got {n_points!r}")
    n_points = int(n_points)
    if int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    workers = int(workers)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        spatial = arr.shape[:3]
        if mask.shape != spatial:
            raise ValueError(f"mask shape {mask.shape} does not match the data's spatial shape {spatial}")

    dtype = np.promote_types(arr.dtype, np.float32)
    if dtype not in (np.float32, np.float64):
        dtype = np.dtype(np.float64)
    return arr, n_points, workers, mask, dtype


def _mask_lines(mask_planes: np.ndarray):
    """Lines to correct per slice, from a (slice, N0, N1) mask: ``(lines0, lines1, active)``,
    lines along axis 0 (slice, N1) and along axis 1 (slice, N0) that intersect the mask or lie
    within :data:`MASK_LINE_MARGIN` lines of one that does, and the slices with any."""
    lines0 = mask_planes.any(axis=1)                     # (slice, N1)
    lines1 = mask_planes.any(axis=2)                     # (slice, N0)
    if MASK_LINE_MARGIN > 0:
        size = 2 * MASK_LINE_MARGIN + 1
        lines0 = ndi.maximum_filter1d(lines0, size, axis=1, mode="constant")
        lines1 = ndi.maximum_filter1d(lines1, size, axis=1, mode="constant")
    return lines0, lines1, np.flatnonzero(lines0.any(axis=1))


def _blocks(active: np.ndarray, n_vols: int, plane_voxels: int, chunk_voxels, masked: bool) -> list:
    """Chunks ``(slice indices, volume slice)`` of about ``chunk_voxels`` voxels (whole slices)."""
    per_chunk = max(1, int(chunk_voxels or DEFAULT_CHUNK_VOXELS) // plane_voxels)
    if per_chunk >= n_vols and not masked:
        step = per_chunk // n_vols
        return [(active[s:s + step], slice(None)) for s in range(0, active.size, step)]
    # with a mask, one slice per chunk: which samples of a line are corrected depends
    # on the chunk's slices (see unring_slices), and must not depend on the chunking
    return [(active[s:s + 1], slice(v, v + per_chunk)) for s in range(active.size) for v in range(0, n_vols, per_chunk)]


def gibbs_removal_fast(
    data: np.ndarray,
    slice_axis: int = 2,
    n_points: int = 3,
    inplace: bool = False,
    *,
    workers: int = 1,
    mask: np.ndarray | None = None,
    chunk_voxels: int | None = None,
) -> np.ndarray:
    """Suppress Gibbs ringing with local sub-voxel shifts (Kellner et al. 2016), vectorised.

    Same method as ``dipy.denoise.gibbs.gibbs_removal`` (dipy 1.12), but all 2D slices
    are processed together with batched FFTs (in memory-bounded chunks), in one process,
    optionally on several threads and restricted to a region. Bit-identical to dipy for
    float64 input; for float32 input a faster single-precision path that differs from
    dipy by near-tie flips only (see Notes).

    Parameters
    ----------
    data : ndarray, shape (X, Y), (X, Y, Z) or (X, Y, Z, N)
        Real magnitude image, volume or volumes (volumes on the last axis). Process it on
        the acquired grid, before any resampling.
    slice_axis : int
        Axis (0, 1 or 2) along which slices were acquired, for 3D and 4D ``data``;
        ringing is removed in the two other (in-plane) axes. Ignored for 2D ``data``.
    n_points : int
        Number of neighbours on each side used for the local total variation (>= 1).
        Each in-plane dimension must be at least ``n_points + 1``.
    inplace : bool
        Write the result into ``data`` (which must then be a writeable float32 or
        float64 ndarray) and return it. Otherwise ``data`` is not modified.
    workers : int, keyword-only
        Threads (>= 1; default 1: no parallelism of any kind). Chunks of slices are
        processed concurrently (numpy and pocketfft release the GIL); with a single
        chunk, the FFTs of that chunk use ``workers`` threads instead. Never changes the
        result.
    mask : ndarray of bool, shape (X, Y, Z) ((X, Y) for 2D ``data``), or None, keyword-only
        Region where the result must be right (e.g. a dilated brain mask); None: all.
        Only the work that can affect it is done (see Notes): slices without a mask
        voxel are not processed (they keep their input values), and within a slice only
        the image lines along each in-plane axis that intersect the mask (plus a margin)
        are corrected.
        Inside the mask the result matches dipy's up to the small difference described
        in Notes; outside it, it is still a smooth, partly corrected image but may
        differ more.
    chunk_voxels : int or None, keyword-only
        Approximate number of voxels processed at once (whole slices; default
        :data:`DEFAULT_CHUNK_VOXELS`). Affects speed and memory, not the result.

    Returns
    -------
    ndarray, same shape as ``data``
        Corrected images. float64 for float64 input, float32 for float32 input and for
        other real input that float32 represents exactly (e.g. int16, uint8, float16);
        float64 otherwise (e.g. int32). C-contiguous unless ``inplace``.

    Raises
    ------
    ValueError
        If ``data`` is not 2D, 3D or 4D, ``slice_axis`` is not 0, 1 or 2, ``n_points``
        < 1, an in-plane dimension is smaller than ``n_points + 1``, ``inplace`` is
        requested for data that cannot hold the result, ``workers`` < 1 or ``mask`` has
        the wrong shape.
    TypeError
        If ``data`` is complex or not numeric, or ``inplace`` is not a bool.

    Notes
    -----
    Without ``mask``, for float64 input, results equal dipy's ``gibbs_removal(data,
    slice_axis=..., n_points=..., num_processes=1)``. For float32 input (and integer
    input computed in float32) the faster path of
    :mod:`~csttool_nipype.science.gibbs_kernels` is used: same method, rounded
    differently, so that isolated samples where the TV is nearly flat in the shift may
    take another shift than in dipy ("near-tie flips", as between dipy's own float32 and
    float64 results); ``tests/test_gibbs.py`` holds the difference to 1e-2 (max) and
    3e-4 (root mean square) of the image maximum. dipy keeps integer input dtypes
    (truncating the result) while this function returns floats. NaN or inf in a slice
    spread along its lines through the FFTs, as in dipy.

    With ``mask``, per slice, the lines along in-plane axis 0 (and along axis 1) that
    intersect the mask, or lie within :data:`MASK_LINE_MARGIN` lines of one that does,
    are corrected exactly as without mask (whole lines are shifted, same FFTs, same
    arithmetic); the other lines keep their input values in the image corrected along
    that axis. On the corrected lines, the samples outside the span of the corrected
    lines across (over the slice) keep their input values too: the shift search (half
    of the work besides the FFTs) is skipped there; the samples it keeps are
    bit-identical. The k-space combination (step 3 of the module docstring) is done on
    whole slices as usual. Its weights make each output voxel a slowly decaying
    (~1/r^2) weighted sum of the difference of the two 1D-corrected images around it,
    so the corrections not made far from the mask (background, scalp, neck) reach
    voxels inside it only attenuated by their distance; ``tests/test_gibbs.py`` holds
    the result inside the mask to 1e-3 of the image maximum of dipy's. Voxels outside
    the mask differ from dipy more (not all of their lines are corrected): do not use
    them. Lines are skipped rather than slices cropped to the mask, since cropping
    changes every line it shortens (periodic Fourier shifts over the crop, and the
    combination weights depend on the slice size); the measurements behind this choice
    and the margin are in docs/decisions.md.

    Working memory is about 450 bytes per voxel of a chunk for float32 data (the 46
    shifted magnitudes of both signs are kept), i.e. ~30 MB at the default chunk size,
    and about 160-200 bytes per voxel for float64 data, per worker, on top of the input
    and the output. The result of a slice does not depend on
    ``chunk_voxels`` or ``workers``.
    """
    arr, n_points, workers, mask, dtype = _checked(data, slice_axis, n_points, inplace, workers, mask)

    # views with axes (slice, volume, in-plane 0, in-plane 1)
    def planes(a: np.ndarray) -> np.ndarray:
        if a.ndim == 2:
            return a[None, None]
        if a.ndim == 3:
            return np.moveaxis(a, slice_axis, 0)[:, None]
        return np.moveaxis(a, (slice_axis, 3), (0, 1))

    src = planes(arr)
    n_slices, n_vols, n0, n1 = src.shape
    if min(n0, n1) < n_points + 1:
        raise ValueError(f"in-plane shape {(n0, n1)} too small for n_points={n_points} (needs >= n_points + 1)")

    if inplace:
        if not isinstance(data, np.ndarray) or data.dtype != dtype or not data.flags.writeable:
            raise ValueError("inplace=True needs a writeable float32 or float64 ndarray")
        out = data
    else:
        out = np.empty(arr.shape, dtype)
    dst = planes(out)
    if arr.size == 0:
        return out

    # lines to correct, per slice: along axis 0 (one per in-plane-1 index) and along axis 1
    if mask is None:
        active = np.arange(n_slices)
        lines0 = lines1 = None
    else:
        lines0, lines1, active = _mask_lines(planes(mask)[:, 0])
        if not inplace:
            idle = np.setdiff1d(np.arange(n_slices), active)
            dst[idle] = src[idle]                            # not processed: input values

    blocks = _blocks(active, n_vols, n0 * n1, chunk_voxels, mask is not None)
    logger.debug(
        "Gibbs removal: %d of %d slices x %d volumes of %dx%d in %d chunk(s), %s, n_points=%d, %d worker(s)%s",
        active.size, n_slices, n_vols, n0, n1, len(blocks), dtype, n_points, workers,
        "" if mask is None else f", {int(lines0.sum() + lines1.sum())} of {n_slices * (n0 + n1)} lines (mask)",
    )
    if not blocks:
        return out

    g0, g1 = kspace_weights((n0, n1))
    fft_workers = workers if len(blocks) == 1 else 1

    def run(block: tuple[np.ndarray, slice]) -> None:
        sl, vols = block
        # (N0, N1, slices, volumes): slice index last, as unring_slices wants it
        x = np.array(np.moveaxis(src[sl, vols], (0, 1), (2, 3)), dtype=dtype, order="C")
        b = x.shape[2] * x.shape[3]
        l0 = l1 = None
        if lines0 is not None:
            # column j of slice s, volume v is column j * b + s * V + v of the stack
            l0 = np.broadcast_to(lines0[sl].T[:, :, None], (n1, *x.shape[2:])).reshape(n1, b)
            l1 = np.broadcast_to(lines1[sl].T[:, :, None], (n0, *x.shape[2:])).reshape(n0, b)
        result = unring_slices(x.reshape(n0, n1, b), n_points, g0, g1, fft_workers, l0, l1)
        dst[sl, vols] = np.moveaxis(result.reshape(x.shape), (2, 3), (0, 1))

    if workers == 1 or len(blocks) == 1:
        for block in blocks:
            run(block)
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(blocks))) as pool:
            for done in pool.map(run, blocks):                # re-raises a worker's error
                del done
    return out

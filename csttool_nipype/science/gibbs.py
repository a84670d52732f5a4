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

The loop over shifts is kept (45 shifts x 2 signs, for each of the 2 directions of a
chunk), but each iteration works on all image lines of a chunk of slices at once: lines
are stored as the columns of an (N, M) array, so the batched FFTs run along axis 0 and
every other step is a few long contiguous array operations. Per-sample selection of the
best shift uses bitwise blends instead of boolean-masked copies (those are slow for
irregular masks). Slices are processed in memory-bounded chunks; a slice's result does
not depend on the chunking.

Arithmetic is done in the same precision and the same order of floating-point operations
as dipy (float32/complex64 for float32 input in steps 1-2, complex128 in step 3 because
dipy's weights are float64), so on the same machine the output equals dipy's
bit-for-bit in practice (``tests/test_gibbs.py`` checks it, with a tolerance as the
contract: batched and per-slice FFTs could in principle round differently on another
platform, which could flip a near-tie in the TV comparison).

References
----------
Kellner E, Dhital B, Kiselev VG, Reisert M. Gibbs-ringing artifact removal based on
local subvoxel-shifts. Magn Reson Med 2016;76:1574-1581.

Neto Henriques R. Advanced methods for diffusion MRI data analysis and their
application to the healthy ageing brain. PhD thesis, University of Cambridge, 2018.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.fft as sp_fft

logger = logging.getLogger(__name__)

__all__ = ["gibbs_removal_fast"]

#: Sub-voxel shift candidates (fractions of a voxel), as in dipy.
SHIFT_START, SHIFT_STOP, SHIFT_NUM = 0.02, 0.9, 45

#: Default number of voxels processed together (bounds the working memory, see Notes of
#: :func:`gibbs_removal_fast`).
DEFAULT_CHUNK_VOXELS = 1 << 16


# --------------------------------------------------------------------------- helpers
# Lines are stored as columns: arrays of shape (N, M) hold M independent lines of N
# samples, so that every operation below is a handful of long contiguous loops.


def _min_tv(x: np.ndarray, n_points: int, dpad: np.ndarray, ptv: np.ndarray, ntv: np.ndarray) -> np.ndarray:
    """Local total variation ``min(TV_right, TV_left)`` of each sample, along axis 0.

    Parameters
    ----------
    x : ndarray, shape (N, M)
        M lines of N samples (periodic boundary).
    n_points : int
        Neighbours on each side.
    dpad : ndarray, shape (N + 2 * n_points, M)
        Scratch for the absolute differences ``|x[i + 1] - x[i]|`` (circular), padded by
        ``n_points`` wrapped copies at each end.
    ptv, ntv : ndarray, shape (N, M)
        Scratch; ``ntv`` receives the result.

    Returns
    -------
    ndarray, shape (N, M)
        ``ntv``, overwritten with ``min(TV_right, TV_left)`` where
        ``TV_right[j] = sum_{n<n_points} |x[j+n] - x[j+n+1]|`` and
        ``TV_left[j] = sum_{n<n_points} |x[j-n] - x[j-n-1]|``, summed in that order.
    """
    p = n_points
    n = x.shape[0]
    core = dpad[p:p + n]
    # |x[i+1] - x[i]| equals dipy's |x[i] - x[i+1]| exactly (IEEE negation is exact)
    np.subtract(x[1:], x[:-1], out=core[:-1])
    np.subtract(x[:1], x[-1:], out=core[-1:])
    np.abs(core, out=core)
    dpad[:p] = dpad[n:n + p]
    dpad[p + n:] = dpad[p:2 * p]
    # right neighbours: d[j], d[j+1], ...; left neighbours: d[j-1], d[j-2], ...
    if p == 1:
        np.copyto(ptv, core)
        np.copyto(ntv, dpad[:n])
    else:
        np.add(dpad[p:p + n], dpad[p + 1:p + 1 + n], out=ptv)
        np.add(dpad[p - 1:p - 1 + n], dpad[p - 2:p - 2 + n], out=ntv)
    for k in range(2, p):
        np.add(ptv, dpad[p + k:p + k + n], out=ptv)
        np.add(ntv, dpad[p - k - 1:p - k - 1 + n], out=ntv)
    return np.minimum(ptv, ntv, out=ntv)


def _select(dst: np.ndarray, src: np.ndarray | int, mask: np.ndarray, tmp: np.ndarray) -> None:
    """``dst[mask] = src[mask]`` on integer views, with ``mask`` 0 / -1 (all bits set).

    Bitwise blending ``dst ^= (dst ^ src) & mask`` copies values exactly and, unlike a
    boolean-masked copy, runs at memory speed whatever the mask pattern.
    """
    np.bitwise_xor(dst, src, out=tmp)
    np.bitwise_and(tmp, mask, out=tmp)
    np.bitwise_xor(dst, tmp, out=dst)


def _unring_lines(x: np.ndarray, n_points: int, workers: int) -> np.ndarray:
    """Suppress Gibbs oscillations along axis 0 of a stack of lines.

    Parameters
    ----------
    x : ndarray, shape (N, M), float32 or float64, C-contiguous
        M independent image lines of N samples (one line per column).
    n_points : int
        Neighbours for the local total variation.
    workers : int
        ``workers`` passed to :mod:`scipy.fft`.

    Returns
    -------
    ndarray, shape (N, M), dtype of ``x``
        Corrected lines (a new array).
    """
    dtype = x.dtype
    itype = np.dtype(f"i{dtype.itemsize}")
    n, m = x.shape
    shifts = np.linspace(SHIFT_START, SHIFT_STOP, num=SHIFT_NUM, dtype=dtype)

    spectrum = sp_fft.fft(x, axis=0, workers=workers)
    cdtype = spectrum.dtype
    # i * 2 pi * frequency (cycles per sample), as dipy builds it
    k = sp_fft.fftfreq(n, 1 / (2.0j * np.pi)).astype(cdtype, copy=False)

    dpad = np.empty((n + 2 * n_points, m), dtype)
    ptv = np.empty((n, m), dtype)
    tv0 = _min_tv(x, n_points, dpad, ptv, np.empty((n, m), dtype))

    # per sign (+s, -s): best image, its shift and its TV so far, starting from the
    # unshifted line; a shift replaces them where its TV is strictly smaller, so ties
    # keep the earlier (smaller) shift
    best_img = [x.copy(), x.copy()]
    best_shift = [np.zeros((n, m), dtype), np.zeros((n, m), dtype)]
    best_tv = [tv0, tv0.copy()]

    buf = np.empty((n, m), cdtype)
    img = np.empty((n, m), dtype)
    tv = np.empty((n, m), dtype)
    better = np.empty((n, m), bool)
    mask = np.empty((n, m), itype)
    tmp = np.empty((n, m), itype)
    for s in shifts:
        ks = k * s
        s_bits = s.view(itype)
        for sign, phase in enumerate((np.exp(ks), np.exp(-ks))):
            np.multiply(spectrum, phase[:, None], out=buf)
            shifted = sp_fft.ifft(buf, axis=0, overwrite_x=True, workers=workers)
            np.abs(shifted, out=img)
            _min_tv(img, n_points, dpad, ptv, tv)
            np.greater(best_tv[sign], tv, out=better)
            np.negative(better, out=mask, dtype=itype)
            _select(best_img[sign].view(itype), img.view(itype), mask, tmp)
            _select(best_shift[sign].view(itype), s_bits, mask, tmp)
            _select(best_tv[sign].view(itype), tv.view(itype), mask, tmp)
    del buf, img, tv, dpad, ptv, spectrum, mask, tmp

    img_p, img_n = best_img
    s_p, s_n = best_shift
    total = np.add(s_p, s_n, out=best_tv[0])
    shifted = np.not_equal(total, 0, out=better)
    # (i_p - i_n) / (s_p + s_n) * s_n + i_n where some shift was taken, else unchanged
    out = np.subtract(img_p, img_n, out=img_p)
    np.divide(out, total, out=out, where=shifted)
    np.multiply(out, s_n, out=out, where=shifted)
    np.add(out, img_n, out=out, where=shifted)
    np.copyto(out, x, where=np.logical_not(shifted, out=shifted))
    return out


def _weights(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """dipy's k-space weights of the images corrected along axis 0 and along axis 1.

    Parameters
    ----------
    shape : tuple of int
        In-plane shape ``(N0, N1)``.

    Returns
    -------
    g0, g1 : ndarray, float64, shape (N0, N1)
        Weights of the image corrected along axis 0 / axis 1, on the ``fftshift``-ed
        k-space grid. In the interior ``g1 = (1 + cos k0) / (2 + cos k0 + cos k1)`` and
        ``g0 = (1 + cos k1) / (2 + cos k0 + cos k1)`` with ``k = linspace(-pi, pi, N)``;
        on the edges ``k0 = +-pi`` only ``g0`` (1) and on ``k1 = +-pi`` only ``g1`` (1)
        is used, with 1/2 each at the corners.
    """
    n0, n1 = shape
    g0 = np.zeros(shape)
    g1 = np.zeros(shape)
    k0 = np.linspace(-np.pi, np.pi, num=n0)[1:-1]
    k1 = np.linspace(-np.pi, np.pi, num=n1)[1:-1]
    c0 = 1.0 + np.cos(np.broadcast_to(k0[:, None], (n0 - 2, n1 - 2)))
    c1 = 1.0 + np.cos(np.broadcast_to(k1[None, :], (n0 - 2, n1 - 2)))
    g1[1:-1, 1:-1] = c0 / (c0 + c1)
    g0[1:-1, 1:-1] = c1 / (c0 + c1)
    g1[1:-1, 0] = g1[1:-1, -1] = 1.0
    g0[0, 1:-1] = g0[-1, 1:-1] = 1.0
    for g in (g0, g1):
        g[0, 0] = g[-1, -1] = g[0, -1] = g[-1, 0] = 0.5
    return g0, g1


def _unring_slices(x: np.ndarray, n_points: int, g0: np.ndarray, g1: np.ndarray, workers: int) -> np.ndarray:
    """2D Gibbs removal of a stack of slices.

    Parameters
    ----------
    x : ndarray, shape (N0, N1, B), float32 or float64, C-contiguous
        B slices (slice index last).
    n_points : int
        Neighbours for the local total variation.
    g0, g1 : ndarray, shape (N0, N1)
        Weights from :func:`_weights`.
    workers : int
        ``workers`` passed to :mod:`scipy.fft`.

    Returns
    -------
    ndarray, float64, shape (N0, N1, B)
        Corrected slices.
    """
    n0, n1, b = x.shape
    axes = (0, 1)
    # corrected along axis 0 (columns) and along axis 1 (rows, via a transposed copy)
    c0 = _unring_lines(x.reshape(n0, n1 * b), n_points, workers).reshape(n0, n1, b)
    xt = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(n1, n0 * b)
    c1 = _unring_lines(xt, n_points, workers).reshape(n1, n0, b).transpose(1, 0, 2)
    del xt
    k1 = sp_fft.fftshift(sp_fft.fft2(c1, axes=axes, workers=workers), axes=axes)
    del c1
    k0 = sp_fft.fftshift(sp_fft.fft2(c0, axes=axes, workers=workers), axes=axes)
    del c0
    # dipy inverts the fftshift-ed spectrum directly; only the magnitude is kept, which
    # the resulting linear phase does not change.
    combined = k1 * g1[:, :, None]
    del k1
    combined += k0 * g0[:, :, None]
    del k0
    return np.abs(sp_fft.ifft2(combined, axes=axes, overwrite_x=True, workers=workers))


# --------------------------------------------------------------------------- API
def gibbs_removal_fast(
    data: np.ndarray,
    slice_axis: int = 2,
    n_points: int = 3,
    inplace: bool = False,
    *,
    workers: int = 1,
    chunk_voxels: int | None = None,
) -> np.ndarray:
    """Suppress Gibbs ringing with local sub-voxel shifts (Kellner et al. 2016), vectorised.

    Same method and results as ``dipy.denoise.gibbs.gibbs_removal`` (dipy 1.12), but all
    2D slices are processed together with batched FFTs (in memory-bounded chunks), in
    one process.

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
        Threads for :mod:`scipy.fft` (default 1: no parallelism of any kind).
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
        < 1, an in-plane dimension is smaller than ``n_points + 1``, or ``inplace`` is
        requested for data that cannot hold the result.
    TypeError
        If ``data`` is complex or not numeric, or ``inplace`` is not a bool.

    Notes
    -----
    Results equal dipy's ``gibbs_removal(data, slice_axis=..., n_points=...,
    num_processes=1)`` except that dipy keeps integer input dtypes (truncating the
    result) while this function returns floats. NaN or inf in a slice spread along its
    lines through the FFTs, as in dipy.

    Working memory is about 80-100 bytes per voxel of a chunk (float32 data; about
    twice that for float64), i.e. ~6 MB at the default chunk size, on top of the input
    and the output. The result of a slice does not depend on ``chunk_voxels`` or
    ``workers``.
    """
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

    dtype = np.promote_types(arr.dtype, np.float32)
    if dtype not in (np.float32, np.float64):
        dtype = np.dtype(np.float64)

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

    per_chunk = max(1, int(chunk_voxels or DEFAULT_CHUNK_VOXELS) // (n0 * n1))
    if per_chunk >= n_vols:
        step = per_chunk // n_vols
        blocks = [(slice(s, s + step), slice(None)) for s in range(0, n_slices, step)]
    else:
        blocks = [
            (slice(s, s + 1), slice(v, v + per_chunk)) for s in range(n_slices) for v in range(0, n_vols, per_chunk)
        ]
    logger.debug(
        "Gibbs removal: %d slices of %dx%d in %d chunk(s), %s, n_points=%d",
        n_slices * n_vols, n0, n1, len(blocks), dtype, n_points,
    )

    g0, g1 = _weights((n0, n1))
    for block in blocks:
        # (N0, N1, slices, volumes): slice index last, as _unring_slices wants it
        x = np.array(np.moveaxis(src[block], (0, 1), (2, 3)), dtype=dtype, order="C")
        result = _unring_slices(x.reshape(n0, n1, -1), n_points, g0, g1, workers)
        dst[block] = np.moveaxis(result.reshape(x.shape), (2, 3), (0, 1))
    return out

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
each iteration works on all image lines of a chunk of slices at once: lines are stored as
the columns of an (N, M) array, so the batched FFTs run along axis 0 and every other step
is a few long contiguous array operations. The running best total variation is a
``np.minimum`` and the running best shift an index updated with ``np.maximum`` (both
exact, because a later shift replaces an earlier one only where its TV is strictly
smaller). Slices are processed in memory-bounded chunks; a slice's result does not
depend on the chunking.

Two arithmetic paths:

* float64 input (:func:`_unring_lines`): dipy's floating-point operations in dipy's
  order and precision (complex128), one FFT per shift and sign, the best image selected
  with a bitwise blend; the local TV reuses the pair sums of neighbouring differences for
  both sides (exact: IEEE addition is commutative). The output equals dipy's
  bit-for-bit in practice (``tests/test_gibbs.py`` checks it).
* float32 input (:func:`_unring_lines_packed`, the pipeline's case, about 1.5-2x faster
  than the float64-style path on float32 data): single precision throughout, and
  real-input tricks: for a real line ``X e^{ik s} + i X e^{-ik s} = (1 + i) X (cos ks
  + sin ks)``, so one complex inverse FFT of the spectrum times a *real* gain gives the
  ``+s`` shifted line as real part and the ``-s`` one as imaginary part (half the FFTs,
  a real instead of a complex product); the Nyquist term of an even length, which has no
  mirror frequency, is put back into the magnitude as ``sqrt(part^2 + (X_nyq / N
  sin(pi s))^2)``. Both signs are then handled as 2M lines at once, all shifted
  magnitudes are kept and the best ones gathered once at the end (no per-shift blend),
  the TV uses one sliding sum for both sides, and the k-space combination uses ``G0 +
  G1 = 1``: ``|c0 + ifft2(G1 fft2(c1 - c0))|`` in complex64 (one 2D FFT fewer). This is
  the same computation, rounded differently: the shifted magnitudes agree with dipy's to
  ~3e-7 relative, but where the TV is nearly flat in the shift such a difference can
  change the chosen shift of a sample (a "near-tie flip", as between dipy's own float32
  and float64 results), which moves that sample by up to ~1 % of the image maximum and
  its neighbours, through the k-space combination, by less. Measured against dipy
  (float32 input, no mask, max |ours - dipy| / image max; root mean square in
  parentheses): 1.3e-3 (1.3e-5) on the 32x30x6x3 test phantom, up to 4.7e-3 (1.8e-4)
  on small crops of it, 1.0e-4 (6e-7) on the 64x60x4x3 masked test phantom, 5.9e-4
  (1.7e-6) on the Philips scan (b0 + DWI), 3.0e-4 on the Canon scan and 3.3e-3 on the
  128x128x60x33 clinical-size phantom of ``benchmarks/bench_gibbs.py`` (first 2
  volumes); dipy's float32 vs its float64 result on the first four: 1.5e-4, up to 3e-7,
  7.8e-3, 5.9e-4. ``tests/test_gibbs.py`` holds the
  float32 path to 1e-2 (max) and 3e-4 (root mean square) of the image maximum, and 99.5
  % of the phantom's voxels within 1e-4 of it.

Options (keyword-only): ``workers`` runs chunks of slices on a thread pool (numpy's
loops and pocketfft release the GIL; each chunk is computed exactly as on one thread,
so the result does not depend on ``workers``), and ``mask`` restricts the work to what
can affect a region (whole lines through it; see the Notes of
:func:`gibbs_removal_fast` for the approximation and why lines are skipped rather than
slices cropped).

Either path is deterministic: the result does not depend on ``workers`` or
``chunk_voxels`` and is bit-identical across runs on one machine.

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
import scipy.fft as sp_fft
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

__all__ = ["gibbs_removal_fast"]

#: Sub-voxel shift candidates (fractions of a voxel), as in dipy.
SHIFT_START, SHIFT_STOP, SHIFT_NUM = 0.02, 0.9, 45

#: Default number of voxels processed together (bounds the working memory, see Notes of
#: :func:`gibbs_removal_fast`).
DEFAULT_CHUNK_VOXELS = 1 << 16

#: With a ``mask``: lines within this many lines of a line that intersects the mask are
#: corrected too (see Notes of :func:`gibbs_removal_fast`).
MASK_LINE_MARGIN = 4


# --------------------------------------------------------------------------- helpers
# Lines are stored as columns: arrays of shape (N, M) hold M independent lines of N
# samples, so that every operation below is a handful of long contiguous loops.


def _min_tv(
    x: np.ndarray, n_points: int, dpad: np.ndarray, ptv: np.ndarray, ntv: np.ndarray, periodic: bool = True
) -> np.ndarray:
    """Local total variation ``min(TV_right, TV_left)`` of each sample, along axis 0.

    Parameters
    ----------
    x : ndarray, shape (N, M), or (N + 2 * n_points, M) if not ``periodic``
        M lines of N samples (periodic boundary), or N samples with ``n_points``
        neighbours of the line on each side.
    n_points : int
        Neighbours on each side.
    dpad : ndarray, shape (N + 2 * n_points, M)
        Scratch for the absolute differences ``|x[i + 1] - x[i]|`` (circular), padded by
        ``n_points`` wrapped copies at each end.
    ptv, ntv : ndarray, shape (N + 2, M) (at least)
        Scratch; ``ntv[:N]`` receives the result.
    periodic : bool
        See ``x``.

    Returns
    -------
    ndarray, shape (N, M)
        ``ntv[:N]``, overwritten with ``min(TV_right, TV_left)`` where
        ``TV_right[j] = sum_{n<n_points} |x[j+n] - x[j+n+1]|`` and
        ``TV_left[j] = sum_{n<n_points} |x[j-n] - x[j-n-1]|``, summed in that order
        (dipy's order, so the sums are bit-identical to dipy's).
    """
    p = n_points
    n = _abs_differences(x, p, dpad, periodic)
    core = dpad[p:p + n]
    # with d = dpad shifted by p: right neighbours d[j], d[j+1], ...; left d[j-1], d[j-2], ...
    res = ntv[:n]
    if p == 1:
        return np.minimum(core, dpad[:n], out=res)
    # pair sums q[i] = d[i] + d[i+1] for i = j - 2 .. j (n + 2 rows): the right sum starts
    # with q[j] = d[j] + d[j+1], the left one with d[j-1] + d[j-2] == q[j-2] (addition is
    # commutative in IEEE arithmetic, so this is exact), saving one pass.
    q = ptv[:n + 2]
    np.add(dpad[p - 2:p + n], dpad[p - 1:p + n + 1], out=q)
    if p == 2:
        return np.minimum(q[2:], q[:n], out=res)
    right = res                                   # right sum built in ntv, left in q
    np.add(q[2:], dpad[p + 2:p + 2 + n], out=right)
    left = q[:n]
    np.add(left, dpad[p - 3:p - 3 + n], out=left)
    for k in range(3, p):
        np.add(right, dpad[p + k:p + k + n], out=right)
        np.add(left, dpad[p - k - 1:p - k - 1 + n], out=left)
    return np.minimum(right, left, out=res)


def _abs_differences(x: np.ndarray, p: int, dpad: np.ndarray, periodic: bool) -> int:
    """Absolute neighbour differences of ``x`` (along axis 0) into ``dpad``; returns N.

    Periodic: ``dpad[p + i] = |x[i+1] - x[i]|`` for the N = len(x) samples (wrapping
    around), with ``p`` rows of periodic padding on each side. Otherwise ``x`` carries
    ``p`` samples of context on each side: ``dpad[i] = |x[i+1] - x[i]|`` and N =
    len(x) - 2p. ``|x[i+1] - x[i]|`` equals dipy's ``|x[i] - x[i+1]|`` exactly (IEEE
    negation is exact).
    """
    if periodic:
        n = x.shape[0]
        core = dpad[p:p + n]
        np.subtract(x[1:], x[:-1], out=core[:-1])
        np.subtract(x[:1], x[-1:], out=core[-1:])
        np.abs(core, out=core)
        dpad[:p] = dpad[n:n + p]
        dpad[p + n:] = dpad[p:2 * p]
        return n
    n = x.shape[0] - 2 * p
    diffs = dpad[:n + 2 * p - 1]                 # the last row of dpad is not used
    np.subtract(x[1:], x[:-1], out=diffs)
    np.abs(diffs, out=diffs)
    return n


def _min_tv_fast(x: np.ndarray, n_points: int, dpad: np.ndarray, tsum: np.ndarray, periodic: bool = True) -> np.ndarray:
    """:func:`_min_tv` with one sliding sum for both sides (float32 path).

    ``T[i] = d[i] + d[i + 1] + ... + d[i + n_points - 1]`` (added left to right) is the
    right sum of sample ``i`` and the left sum of sample ``i + n_points``: one pass fewer
    than :func:`_min_tv`, but the left sum is added in the opposite order to dipy's (it
    may round differently). ``x``, ``n_points``, ``dpad`` and ``periodic`` as in
    :func:`_min_tv`; ``tsum``: scratch of shape (N + n_points, M) (at least), whose first
    N rows receive (and are returned as) ``min(TV_right, TV_left)``.
    """
    p = n_points
    n = _abs_differences(x, p, dpad, periodic)
    # d[j] = dpad[p + j]: right sum of j = T[j] = sum dpad[p + j .. 2p + j - 1],
    # left sum of j = sum dpad[j .. p + j - 1] = T[j - p]; T over rows -p .. n - 1
    t = tsum[:n + p]
    if p == 1:
        return np.minimum(dpad[1:n + 1], dpad[:n], out=tsum[:n])
    np.add(dpad[:n + p], dpad[1:n + p + 1], out=t)
    for k in range(2, p):
        np.add(t, dpad[k:n + p + k], out=t)
    return np.minimum(t[p:], t[:n], out=t[:n])


def _select(dst: np.ndarray, src: np.ndarray, mask: np.ndarray, tmp: np.ndarray) -> None:
    """``dst[mask] = src[mask]`` on integer views, with ``mask`` 0 / -1 (all bits set).

    Bitwise blending ``dst ^= (dst ^ src) & mask`` copies values exactly and, unlike a
    boolean-masked copy, runs at memory speed whatever the mask pattern.
    """
    np.bitwise_xor(dst, src, out=tmp)
    np.bitwise_and(tmp, mask, out=tmp)
    np.bitwise_xor(dst, tmp, out=dst)


def _unring_lines(x: np.ndarray, n_points: int, workers: int = 1, rows: tuple[int, int] | None = None) -> np.ndarray:
    """Suppress Gibbs oscillations along axis 0 of a stack of lines.

    Parameters
    ----------
    x : ndarray, shape (N, M), float32 or float64, C-contiguous
        M independent image lines of N samples (one line per column).
    n_points : int
        Neighbours for the local total variation.
    workers : int
        ``workers`` passed to :mod:`scipy.fft`.
    rows : (int, int) or None
        Only correct samples ``rows[0] <= i < rows[1]`` (the others keep their input
        values; the lines are still shifted as wholes, so the corrected samples are the
        same as without ``rows``). None: all.

    Returns
    -------
    ndarray, shape (N, M), dtype of ``x``
        Corrected lines (a new array).
    """
    dtype = x.dtype
    itype = np.dtype(f"i{dtype.itemsize}")
    n_full, m = x.shape
    p = n_points
    if rows is not None and (rows[0] - p < 0 or rows[1] + p > n_full or rows[1] - rows[0] >= n_full - 2 * p):
        rows = None                                  # too close to the ends: whole lines
    shifts = np.linspace(SHIFT_START, SHIFT_STOP, num=SHIFT_NUM, dtype=dtype)

    spectrum = sp_fft.fft(x, axis=0, workers=workers)
    cdtype = spectrum.dtype
    # i * 2 pi * frequency (cycles per sample), as dipy builds it
    k = sp_fft.fftfreq(n_full, 1 / (2.0j * np.pi)).astype(cdtype, copy=False)

    if rows is None:
        periodic, ext, n, x_full = True, slice(None), n_full, None
    else:
        # samples r0..r1-1 and their n_points neighbours each side (no wrap-around needed)
        periodic, ext, n, x_full = False, slice(rows[0] - p, rows[1] + p), rows[1] - rows[0], x
        x = x[rows[0]:rows[1]]
    n_ext = n if periodic else n + 2 * p
    dpad = np.empty((n + 2 * n_points, m), dtype)
    ptv = np.empty((n + 2, m), dtype)
    tv0 = _min_tv(x if periodic else x_full[ext], n_points, dpad, ptv, np.empty((n + 2, m), dtype), periodic)

    # per sign (+s, -s): best image, index of its shift (0: unshifted, i: shifts[i - 1])
    # and its TV so far, starting from the unshifted line. A shift replaces them where
    # its TV is strictly smaller, so ties keep the earlier (smaller) shift; hence the
    # best TV is the running minimum and the best index the running maximum of
    # ``better * i`` (exact, one pass each instead of a blend).
    best_img = [x.copy(), x.copy()]
    best_idx = [np.zeros((n, m), np.uint8), np.zeros((n, m), np.uint8)]
    best_tv = [tv0.copy(), tv0.copy()]
    del tv0

    buf = np.empty((n_full, m), cdtype)
    img_ext = np.empty((n_ext, m), dtype)
    img = img_ext if periodic else img_ext[p:p + n]
    tv_buf = np.empty((n + 2, m), dtype)
    better = np.empty((n, m), bool)
    idx = np.empty((n, m), np.uint8)
    mask = np.empty((n, m), itype)
    tmp = np.empty((n, m), itype)
    for i, s in enumerate(shifts, start=1):
        ks = k * s
        for sign, phase in enumerate((np.exp(ks), np.exp(-ks))):
            np.multiply(spectrum, phase[:, None], out=buf)
            shifted = sp_fft.ifft(buf, axis=0, overwrite_x=True, workers=workers)
            np.abs(shifted[ext], out=img_ext)
            tv = _min_tv(img_ext, n_points, dpad, ptv, tv_buf, periodic)
            np.greater(best_tv[sign], tv, out=better)
            # NaN: a comparison with NaN is False (keep), as in dipy; a line with a
            # non-finite sample is NaN in every shifted image, so np.minimum (which
            # propagates NaN) never lets a NaN TV decide anything
            np.minimum(best_tv[sign], tv, out=best_tv[sign])
            np.multiply(better.view(np.uint8), np.uint8(i), out=idx)
            np.maximum(best_idx[sign], idx, out=best_idx[sign])
            np.negative(better, out=mask, dtype=itype)
            _select(best_img[sign].view(itype), img.view(itype), mask, tmp)
    del buf, img, img_ext, tv_buf, dpad, ptv, spectrum, mask, tmp, idx

    img_p, img_n = best_img
    table = np.concatenate([np.zeros(1, dtype), shifts])
    s_p = table[best_idx[0]]
    s_n = table[best_idx[1]]
    del best_idx
    total = np.add(s_p, s_n, out=best_tv[0])
    shifted = np.not_equal(total, 0, out=better)
    # (i_p - i_n) / (s_p + s_n) * s_n + i_n where some shift was taken, else unchanged
    out = np.subtract(img_p, img_n, out=img_p)
    np.divide(out, total, out=out, where=shifted)
    np.multiply(out, s_n, out=out, where=shifted)
    np.add(out, img_n, out=out, where=shifted)
    np.copyto(out, x, where=np.logical_not(shifted, out=shifted))
    if x_full is None:
        return out
    full = x_full.copy()
    full[rows[0]:rows[1]] = out
    return full


def _shift_gains(n_full: int, shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real spectral gains of the packed shifts, and the Nyquist sines.

    For a real line with spectrum ``X`` (``f`` = :func:`scipy.fft.fftfreq` frequencies in
    cycles per sample, ``t = 2 pi f s``), ``X e^{it} + i X e^{-it} = (1 + i) X (cos t +
    sin t)`` except at the Nyquist frequency of an even ``N`` (where ``f = -1/2`` has no
    mirror): the inverse FFT of ``(1 + i) X g`` has the ``+s`` shifted line (without its
    Nyquist term) as real part and the ``-s`` one as imaginary part. The gain at the
    Nyquist bin is ``cos(pi s)`` (the real part of the term, shared by both signs); its
    imaginary part ``-+ X_nyq / N * sin(pi s) (-1)^j`` only adds ``(X_nyq / N sin(pi
    s))^2`` to the squared magnitude (same for both signs).

    Returns
    -------
    gains : float32, shape (len(shifts), N)
    nyq_sin : float64, shape (len(shifts),)
        ``sin(pi s)`` (0 for odd ``N``).
    """
    s = shifts.astype(np.float64)[:, None]                # dipy's float32 shift values
    t = 2 * np.pi * sp_fft.fftfreq(n_full)[None, :] * s
    gains = np.cos(t) + np.sin(t)
    nyq_sin = np.zeros(len(shifts))
    if n_full % 2 == 0:
        gains[:, n_full // 2] = np.cos(np.pi * s[:, 0])
        nyq_sin = np.sin(np.pi * s[:, 0])
    return gains.astype(np.float32), nyq_sin


def _unring_lines_packed(
    x: np.ndarray, n_points: int, workers: int = 1, rows: tuple[int, int] | None = None
) -> np.ndarray:
    """:func:`_unring_lines` for float32 lines, with one inverse FFT per shift pair.

    Same parameters and result layout as :func:`_unring_lines`. The ``+s`` and ``-s``
    shifted lines of a real line are the real and imaginary parts of one complex inverse
    FFT of ``(1 + i) X g_s`` (``g_s`` real, :func:`_shift_gains`), with the Nyquist term
    of an even length added back to the magnitude as ``sqrt(re^2 + (X_nyq / N sin(pi
    s))^2)``: half the FFTs and a real instead of a complex spectrum product. Every
    shifted magnitude is stored (no per-shift blend); the best ones are gathered at the
    end from the index of the best shift. Mathematically the same as dipy; it rounds
    differently (see the module docstring for the resulting difference).
    """
    n_full, m = x.shape
    p = n_points
    if rows is not None and (rows[0] - p < 0 or rows[1] + p > n_full or rows[1] - rows[0] >= n_full - 2 * p):
        rows = None
    shifts = np.linspace(SHIFT_START, SHIFT_STOP, num=SHIFT_NUM, dtype=np.float32)
    gains, nyq_sin = _shift_gains(n_full, shifts)

    spectrum = sp_fft.fft(x, axis=0, workers=workers)      # complex64
    even = n_full % 2 == 0
    # squared Nyquist amplitude per line, for both signs (columns 2j, 2j + 1)
    nyq2 = np.repeat(np.square(spectrum[n_full // 2].real.astype(np.float64) / n_full), 2) if even else None
    spectrum *= np.complex64(1 + 1j)
    spec_f = spectrum.view(np.float32)                     # (N, 2M): re, im interleaved

    # From here on, the float view of a complex (N, M) array is a stack of 2M lines:
    # column 2j is line j shifted by +s (real part), column 2j + 1 by -s (imaginary part).
    if rows is None:
        periodic, ext, n = True, slice(None), n_full
    else:
        periodic, ext, n = False, slice(rows[0] - p, rows[1] + p), rows[1] - rows[0]
    n_ext = n if periodic else n + 2 * p
    x2 = np.repeat(x[ext], 2, axis=1)                       # unshifted, for both signs
    dpad = np.empty((n + 2 * p, 2 * m), np.float32)
    tv_buf = np.empty((n + p, 2 * m), np.float32)
    best_tv = _min_tv_fast(x2, p, dpad, tv_buf, periodic).copy()
    best_idx = np.zeros((n, 2 * m), np.uint8)
    # stack[i]: magnitudes of the lines shifted by +-shifts[i - 1] (0: unshifted)
    stack = np.empty((SHIFT_NUM + 1, n_ext, 2 * m), np.float32)
    stack[0] = x2
    del x2

    buf = np.empty((n_full, m), spectrum.dtype)
    buf_f = buf.view(np.float32)
    better = np.empty((n, 2 * m), bool)
    idx = np.empty((n, 2 * m), np.uint8)
    a2 = np.empty(2 * m, np.float32)
    for i in range(1, SHIFT_NUM + 1):
        np.multiply(spec_f, gains[i - 1][:, None], out=buf_f)
        shifted = sp_fft.ifft(buf, axis=0, overwrite_x=True, workers=workers).view(np.float32)
        img = stack[i]
        if even:
            # |shifted line| = sqrt(part^2 + (X_nyq / N sin(pi s))^2)
            np.multiply(nyq2, nyq_sin[i - 1] ** 2, out=a2, casting="same_kind")
            np.multiply(shifted[ext], shifted[ext], out=img)
            np.add(img, a2, out=img)
            np.sqrt(img, out=img)
        else:
            np.abs(shifted[ext], out=img)
        tv = _min_tv_fast(img, p, dpad, tv_buf, periodic)
        # a shift replaces the best so far where its TV is strictly smaller (ties keep
        # the smaller shift; NaN never replaces, see _unring_lines)
        np.greater(best_tv, tv, out=better)
        np.minimum(best_tv, tv, out=best_tv)
        np.multiply(better.view(np.uint8), np.uint8(i), out=idx)
        np.maximum(best_idx, idx, out=best_idx)
    del buf, buf_f, shifted, dpad, tv_buf, spectrum, spec_f, idx, img

    # gather: element (row r, column c) of slot i is at i * n_ext * 2m + r * 2m + c
    offset = np.arange(n * 2 * m, dtype=np.intp) + (0 if periodic else p * 2 * m)
    best = np.take(stack.reshape(-1), best_idx.reshape(-1).astype(np.intp) * (n_ext * 2 * m) + offset)
    del stack, offset
    best = best.reshape(n, m, 2)
    img_p, img_n = best[:, :, 0], best[:, :, 1]
    table = np.concatenate([np.zeros(1, np.float32), shifts])
    s_all = table[best_idx].reshape(n, m, 2)
    s_p, s_n = s_all[:, :, 0], s_all[:, :, 1]
    del best_idx, best_tv
    total = np.add(s_p, s_n)
    shifted = np.not_equal(total, 0)
    x_core = x if periodic else x[rows[0]:rows[1]]
    # (i_p - i_n) / (s_p + s_n) * s_n + i_n where some shift was taken, else unchanged
    out = np.subtract(img_p, img_n)
    np.divide(out, total, out=out, where=shifted)
    np.multiply(out, s_n, out=out, where=shifted)
    np.add(out, img_n, out=out, where=shifted)
    np.copyto(out, x_core, where=np.logical_not(shifted, out=shifted))
    if periodic:
        return out
    full = x.copy()
    full[rows[0]:rows[1]] = out
    return full


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


def _unring_some_lines(
    x: np.ndarray, lines: np.ndarray | None, samples: np.ndarray | None, n_points: int, workers: int
) -> np.ndarray:
    """:func:`_unring_lines` on the columns of ``x`` selected by ``lines`` (all if None).

    The other columns keep their input values, and so do the samples (rows) before the
    first and after the last True of ``samples`` (None: all rows are corrected). Returns
    a new (N, M) array.
    """
    rows = None
    if samples is not None:
        used = np.flatnonzero(samples)
        if used.size == 0:
            return x.copy()
        rows = (int(used[0]), int(used[-1]) + 1)
    unring = _unring_lines_packed if x.dtype == np.float32 else _unring_lines
    cols = None if lines is None else np.flatnonzero(lines)
    if cols is None or cols.size == x.shape[1]:
        return unring(x, n_points, workers, rows)
    out = x.copy()
    if cols.size:
        out[:, cols] = unring(np.take(x, cols, axis=1), n_points, workers, rows)
    return out


def _unring_slices(
    x: np.ndarray, n_points: int, g0: np.ndarray, g1: np.ndarray, workers: int,
    lines0: np.ndarray | None = None, lines1: np.ndarray | None = None,
) -> np.ndarray:
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
    lines0, lines1 : ndarray of bool, shapes (N1, B) and (N0, B), or None
        Lines along axis 0 (columns ``x[:, j, b]``) and along axis 1 (rows
        ``x[i, :, b]``) to correct; the others keep their input values in the image
        corrected along that axis, and so do the samples of the corrected lines outside
        the span of the lines across (over all B slices). None: all.

    Returns
    -------
    ndarray, float64, shape (N0, N1, B)
        Corrected slices.
    """
    n0, n1, b = x.shape
    axes = (0, 1)
    # corrected along axis 0 (columns) and along axis 1 (rows, via a transposed copy)
    # with lines: only the samples in the span of the lines across (rows that intersect
    # the mask +- margin for the columns, and vice versa) are corrected
    if lines0 is None:
        l0 = l1 = s0 = s1 = None
    else:
        l0, l1 = lines0.ravel(), lines1.ravel()
        s0, s1 = lines1.any(axis=1), lines0.any(axis=1)
    c0 = _unring_some_lines(x.reshape(n0, n1 * b), l0, s0, n_points, workers).reshape(n0, n1, b)
    xt = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(n1, n0 * b)
    c1 = _unring_some_lines(xt, l1, s1, n_points, workers)
    c1 = c1.reshape(n1, n0, b).transpose(1, 0, 2)
    del xt
    if x.dtype == np.float32:
        # g0 + g1 = 1, so dipy's combination is c0 + ifft2(g1 * fft2(c1 - c0)) (up to the
        # spectrum's fftshift, a linear phase that the magnitude removes): one forward FFT
        # fewer, in single precision
        diff = np.subtract(c1, c0)
        del c1
        spec = sp_fft.fft2(diff, axes=axes, workers=workers, overwrite_x=True)
        del diff
        g1u = sp_fft.ifftshift(g1).astype(np.float32)
        spec_f = spec.view(np.float32).reshape(n0, n1, b, 2)
        np.multiply(spec_f, g1u[:, :, None, None], out=spec_f)
        res = sp_fft.ifft2(spec, axes=axes, overwrite_x=True, workers=workers)
        res.real += c0
        return np.abs(res)
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
    input computed in float32) the faster path of the module docstring is used: same
    method, rounded differently, so that isolated samples where the TV is nearly flat in
    the shift may take another shift than in dipy ("near-tie flips", as between dipy's
    own float32 and float64 results). Measured max ``|result - dipy|`` / image max
    without mask: 1.3e-3 (test phantom), 1.0e-4 (masked test phantom), 5.9e-4 (Philips
    b0 + DWI), up to 4.7e-3 on small images (root mean square 1e-6 to 2e-4); held to
    1e-2 (max) and 3e-4 (root mean square) by ``tests/test_gibbs.py``. dipy keeps integer
    input dtypes (truncating the result) while this function returns floats. NaN or
    inf in a slice spread along its lines through the FFTs, as in dipy.

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
    voxels inside it only attenuated by their distance. Measured with the processing
    region of :func:`csttool_nipype.science.preprocess.processing_region` (brain mask
    dilated by 4 voxels) as ``mask``, all volumes, ``max |masked - dipy|`` inside the
    mask is, relative to the image maximum: 3.3e-4 on the 128x128x60x33 clinical-size
    phantom, 4.4e-4 on the Philips and 1.7e-4 on the Canon scans of ``../shared/data``
    (relative to each volume's own maximum: up to 1.4e-3, 8e-4, 4e-4; median over the
    mask ~1e-6; largest at the mask edge, <= 2.1e-4 deeper than 4 voxels in-plane).
    These figures are for float64-style arithmetic; with the float32 path the near-tie
    flips described above add to them: measured inside the mask (first 2 volumes) 3.3e-3
    (clinical-size phantom: a flip inside the mask; the same as without mask), 5.9e-4
    (Philips), 3.0e-4 (Canon). ``tests/test_gibbs.py`` holds it to 1e-3 of the image
    maximum on the masked test phantom and the Philips scan. The difference
    scales with the signal of the skipped background (noise, scalp). Without the 4-line
    margin it is ~10 times larger (4-5e-3) for 6-9 % less work. Voxels outside the mask
    differ from dipy by up to 5-16 % of the maximum (not all of their lines are
    corrected): do not use them.

    Skipping lines was chosen over cropping each slice to the mask's bounding box plus a
    margin because every sample it corrects is exact (whole lines are shifted), while
    cropping changes every line that it shortens (the Fourier shifts become periodic over the crop, wrapping
    bright scalp or noise at the crop edges into the line) and the combination weights
    (dipy samples them on ``linspace(-pi, pi, N)``, which depends on the slice size).
    Measured on the Philips scan (3 volumes): cropping to the bounding box plus 4 / 8 / 16
    voxels differs from dipy inside the mask by 5.5e-2 / 5.2e-2 / 3.8e-2 of the maximum
    and was not faster (odd FFT lengths, per-slice crops), against 5e-3 (no margin) and
    4e-4 (margin 4) for line skipping. The CPU time with ``mask`` is 0.66 (phantom),
    0.68 (Philips) and 0.85 (Canon) of the unmasked time: the region covers 35-43 % of
    the field of view, but 75-84 % of the lines. Slices without any mask voxel are not
    processed at all and keep their input values.

    Working memory is about 450 bytes per voxel of a chunk for float32 data (the 46
    shifted magnitudes of both signs are kept), i.e. ~30 MB at the default chunk size,
    and about 160-200 bytes per voxel for float64 data, per worker, on top of the input
    and the output. The result of a slice does not depend on
    ``chunk_voxels`` or ``workers``.
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
        m = planes(mask)[:, 0]                               # (slice, N0, N1)
        lines0 = m.any(axis=1)                               # (slice, N1)
        lines1 = m.any(axis=2)                               # (slice, N0)
        if MASK_LINE_MARGIN > 0:
            size = 2 * MASK_LINE_MARGIN + 1
            lines0 = ndi.maximum_filter1d(lines0, size, axis=1, mode="constant")
            lines1 = ndi.maximum_filter1d(lines1, size, axis=1, mode="constant")
        active = np.flatnonzero(lines0.any(axis=1))
        if not inplace:
            idle = np.setdiff1d(np.arange(n_slices), active)
            dst[idle] = src[idle]                            # not processed: input values

    per_chunk = max(1, int(chunk_voxels or DEFAULT_CHUNK_VOXELS) // (n0 * n1))
    if per_chunk >= n_vols and mask is None:
        step = per_chunk // n_vols
        blocks = [(active[s:s + step], slice(None)) for s in range(0, active.size, step)]
    else:
        # with a mask, one slice per chunk: which samples of a line are corrected depends
        # on the chunk's slices (see _unring_slices), and must not depend on the chunking
        blocks = [
            (active[s:s + 1], slice(v, v + per_chunk)) for s in range(active.size) for v in range(0, n_vols, per_chunk)
        ]
    logger.debug(
        "Gibbs removal: %d of %d slices x %d volumes of %dx%d in %d chunk(s), %s, n_points=%d, %d worker(s)%s",
        active.size, n_slices, n_vols, n0, n1, len(blocks), dtype, n_points, workers,
        "" if mask is None else f", {int(lines0.sum() + lines1.sum())} of {n_slices * (n0 + n1)} lines (mask)",
    )
    if not blocks:
        return out

    g0, g1 = _weights((n0, n1))
    fft_workers = workers if len(blocks) == 1 else 1

    def run(block: tuple[np.ndarray, slice]) -> None:
        sl, vols = block
        # (N0, N1, slices, volumes): slice index last, as _unring_slices wants it
        x = np.array(np.moveaxis(src[sl, vols], (0, 1), (2, 3)), dtype=dtype, order="C")
        b = x.shape[2] * x.shape[3]
        l0 = l1 = None
        if lines0 is not None:
            # column j of slice s, volume v is column j * b + s * V + v of the stack
            l0 = np.broadcast_to(lines0[sl].T[:, :, None], (n1, *x.shape[2:])).reshape(n1, b)
            l1 = np.broadcast_to(lines1[sl].T[:, :, None], (n0, *x.shape[2:])).reshape(n0, b)
        result = _unring_slices(x.reshape(n0, n1, b), n_points, g0, g1, fft_workers, l0, l1)
        dst[sl, vols] = np.moveaxis(result.reshape(x.shape), (2, 3), (0, 1))

    if workers == 1 or len(blocks) == 1:
        for block in blocks:
            run(block)
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(blocks))) as pool:
            for done in pool.map(run, blocks):                # re-raises a worker's error
                del done
    return out

"""Line kernels of the vectorised Gibbs-ringing removal (:mod:`csttool_nipype.science.gibbs`).

The method is dipy's (:func:`dipy.denoise.gibbs.gibbs_removal`, Kellner et al. 2016), step
by step as described in :mod:`csttool_nipype.science.gibbs`; here are the batched kernels:
lines are stored as the columns of an (N, M) array, so the batched FFTs run along axis 0
and every other step is a few long contiguous array operations. The running best total
variation is a ``np.minimum`` and the running best shift an index updated with
``np.maximum`` (both exact, because a later shift replaces an earlier one only where its
TV is strictly smaller).

Two arithmetic paths:

* float64 input (:func:`_unring_lines`): dipy's floating-point operations in dipy's
  order and precision (complex128), one FFT per shift and sign, the best image selected
  with a bitwise blend; the local TV reuses the pair sums of neighbouring differences for
  both sides (exact: IEEE addition is commutative). The output equals dipy's
  bit-for-bit in practice (``tests/test_gibbs.py`` checks it).
* float32 input (:func:`_unring_lines_packed`, the pipeline's case): single precision
  throughout, and real-input tricks: for a real line ``X e^{ik s} + i X e^{-ik s} = (1 +
  i) X (cos ks + sin ks)``, so one complex inverse FFT of the spectrum times a *real*
  gain gives the ``+s`` shifted line as real part and the ``-s`` one as imaginary part
  (half the FFTs, a real instead of a complex product); the Nyquist term of an even
  length, which has no mirror frequency, is put back into the magnitude as
  ``sqrt(part^2 + (X_nyq / N sin(pi s))^2)``. Both signs are then handled as 2M lines at
  once, all shifted magnitudes are kept and the best ones gathered once at the end (no
  per-shift blend), the TV uses one sliding sum for both sides, and the k-space
  combination uses ``G0 + G1 = 1``: ``|c0 + ifft2(G1 fft2(c1 - c0))|`` in complex64 (one
  2D FFT fewer). This is the same computation, rounded differently: where the TV is
  nearly flat in the shift a sample may take another shift than in dipy (a "near-tie
  flip", as between dipy's own float32 and float64 results); how large the difference
  is was measured (docs/decisions.md) and is bounded by ``tests/test_gibbs.py``.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sp_fft

#: Sub-voxel shift candidates (fractions of a voxel), as in dipy.
SHIFT_START, SHIFT_STOP, SHIFT_NUM = 0.02, 0.9, 45


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


def kspace_weights(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
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


def unring_slices(
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
        Weights from :func:`kspace_weights`.
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

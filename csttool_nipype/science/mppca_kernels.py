"""Patch kernels of the vectorised MP-PCA denoising (:mod:`csttool_nipype.science.mppca`).

Box sums over patches (sliding-window sums along the three spatial axes of (x, y, z, channels)
arrays) and the per-patch estimator (covariance eigen-decomposition, Marchenko-Pastur noise
classification, projector terms), vectorised over many patches at once:

* Covariances from sliding-window sums: ``C = S2 / n - mu mu^T`` with
  ``S2 = sum_patch x x^T`` and ``mu = sum_patch x / n``, each of the ``m (m + 1) / 2 + m``
  channels box-summed along the three axes (a few additions per voxel instead of
  ``n m^2`` multiply-adds per patch), in float64, so the cancellation in
  ``S2 / n - mu mu^T`` costs about ``n * 1e-16`` of ``max(x^2)`` - far below the float32
  rounding of dipy's own covariance (``~6e-8 * |C|``).
* Eigen-decompositions per patch stay in LAPACK (they are most of the cost), with no
  Python work per patch besides the LAPACK calls: below :data:`TRIDIAGONAL_MIN_VOLUMES`
  volumes one batched ``numpy.linalg.eigh`` per batch of patches; from it on, per patch
  ``dsytrd`` + ``dsterf`` (all eigenvalues) and, only for the kept components,
  ``dstein`` + ``dormqr`` (eigenvectors) - about half the cost of ``eigh`` at 33 volumes,
  where most patches keep a few components of 33. The classifier and the threshold run
  on all patches of a batch at once (cumulative sums).
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- box sums
# Arrays are (x, y, z, channels); box sums run along the three spatial axes. Results go
# into preallocated flat buffers (re-used for every tile and channel group: fresh large
# arrays would cost page faults on every use).


def flat_view(buf: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The first ``prod(shape)`` elements of the flat buffer ``buf``, as a C-contiguous array."""
    return buf[:int(np.prod(shape))].reshape(shape)


def _cut(a: np.ndarray, axis: int, start: int, length: int) -> np.ndarray:
    idx = [slice(None)] * a.ndim
    idx[axis] = slice(start, start + length)
    return a[tuple(idx)]


def _axis_index(idx: np.ndarray, offset: int):
    """``idx + offset`` as a basic index where possible: a slice for an arithmetic
    progression (a view, no copy), else the integer array."""
    n = len(idx)
    if n == 1:
        return slice(int(idx[0]) + offset, int(idx[0]) + offset + 1)
    step = int(idx[1] - idx[0])
    if step > 0 and np.all(np.diff(idx) == step):
        start = int(idx[0]) + offset
        return slice(start, start + step * (n - 1) + 1, step)
    return idx + offset


class Windows:
    """Patch windows of a tile: per axis the sorted window starts (in the tile's region).

    ``index[axis][t]`` indexes the ``t``-th voxel of every window along ``axis`` (a slice
    where possible); ``every[axis]``: the windows start at every position that fits in
    ``extent[axis]`` voxels.
    """

    def __init__(self, starts, size, extent):
        self.index = [[_axis_index(st, t) for t in range(s)] for st, s in zip(starts, size)]
        self.every = [len(st) == n - s + 1 and int(st[0]) == 0 and int(st[-1]) == n - s
                      for st, s, n in zip(starts, size, extent)]
        self.counts = [len(st) for st in starts]
        self.extent = tuple(int(n) for n in extent)


def _at(a: np.ndarray, axis: int, index) -> np.ndarray:
    ix = [slice(None)] * a.ndim
    ix[axis] = index
    return a[tuple(ix)]


def valid_box_sum(a: np.ndarray, size: tuple[int, int, int], out: np.ndarray, scratch, windows=None) -> np.ndarray:
    """Sums over ``size`` windows of ``a``: every window that fits, or those of ``windows``.

    ``windows`` (optional, :class:`Windows`): the windows to sum (default: all; each
    axis shrinks by ``s - 1``); the result has ``windows.counts[axis]`` entries along each
    axis. ``out`` receives the result; ``scratch`` is two flat buffers at least ``a.size``
    long. Window starts are added in a fixed order, so a window's sum depends only on its
    values and a window of zeros sums to exactly 0.
    """
    axes = [axis for axis, s in enumerate(size) if s > 1]
    src = a
    for i, axis in enumerate(axes):
        s = size[axis]
        shape = list(src.shape)
        if windows is None or windows.every[axis]:
            n = shape[axis] - s + 1
            index = [slice(t, t + n) for t in range(s)]
        else:
            n, index = windows.counts[axis], windows.index[axis]
        shape[axis] = n
        dst = out if i == len(axes) - 1 else flat_view(scratch[i % 2], tuple(shape))
        np.add(_at(src, axis, index[0]), _at(src, axis, index[1]), out=dst)
        for t in range(2, s):
            np.add(dst, _at(src, axis, index[t]), out=dst)
        src = dst
    return out


def full_box_sum(g: np.ndarray, size: tuple[int, int, int], out: np.ndarray, scratch, windows=None) -> np.ndarray:
    """Spread each value of ``g`` over the ``size`` window it is the centre of.

    ``out[v] = sum of g[c] over the centres c whose window contains v``. Without
    ``windows`` every position is a centre: each axis grows by ``s - 1`` (``out`` index
    ``i`` = centre index ``i - r``); with ``windows`` (:class:`Windows`) ``g`` holds the
    values of its windows and ``out`` has the shape ``windows.extent``. ``scratch``: two
    flat buffers at least ``out.size`` long. Each ``out`` value adds its centres in the
    same order (window offset 0 first) either way.
    """
    axes = [axis for axis, s in enumerate(size) if s > 1]
    src = g
    for i, axis in enumerate(axes):
        s = size[axis]
        n = src.shape[axis]
        shape = list(src.shape)
        shape[axis] = n + s - 1 if windows is None else windows.extent[axis]
        dst = out if i == len(axes) - 1 else flat_view(scratch[i % 2], tuple(shape))
        if windows is None or windows.every[axis]:
            _cut(dst, axis, 0, n)[...] = src
            _cut(dst, axis, n, s - 1)[...] = 0.0
            for t in range(1, s):
                part = _cut(dst, axis, t, n)
                np.add(part, src, out=part)
        else:
            dst[...] = 0.0
            for index in windows.index[axis]:
                if isinstance(index, slice):
                    part = _at(dst, axis, index)
                    np.add(part, src, out=part)
                else:       # distinct indices: no two centres add to one value in one step
                    ix = [slice(None)] * dst.ndim
                    ix[axis] = index
                    dst[tuple(ix)] += src
        src = dst
    return out


def box_constant(a: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Whether each ``size`` window of ``a`` (x, y, z, m) is constant in every volume."""
    hi, lo = a, a
    for axis, s in enumerate(size):
        if s == 1:
            continue
        n_out = hi.shape[axis] - s + 1
        idx = [slice(None)] * a.ndim
        new_hi = new_lo = None
        for t in range(s):
            idx[axis] = slice(t, t + n_out)
            h, lw = hi[tuple(idx)], lo[tuple(idx)]
            new_hi = h.copy() if new_hi is None else np.maximum(new_hi, h, out=new_hi)
            new_lo = lw.copy() if new_lo is None else np.minimum(new_lo, lw, out=new_lo)
        hi, lo = new_hi, new_lo
    return np.all(hi == lo, axis=-1)


# --------------------------------------------------------------------------- per patch
def _classify(d: np.ndarray, n_samples: int, tau_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Marchenko-Pastur noise variance and number of dropped components, per patch.

    Parameters
    ----------
    d : ndarray, shape (B, m)
        Eigenvalues in ascending order.
    n_samples : int
        Voxels per patch.
    tau_factor : float
        ``1 + sqrt(m / n_samples)``.

    Returns
    -------
    var : ndarray, shape (B,)
        Noise variance (NaN where dipy's loop runs past the smallest eigenvalue).
    ncomps : ndarray of int, shape (B,)
        Number of eigenvalues below ``tau_factor**2 * var`` (dropped).
    """
    m = d.shape[1]
    mm = min(m, n_samples - 1)
    L = d[:, m - mm:]
    c = np.arange(mm)
    var_c = np.cumsum(L, axis=1) / (c + 1.0)
    r = L - L[:, :1] - 4.0 * np.sqrt((c + 1.0) / n_samples) * var_c
    stop = ~(r > 0)
    # dipy walks c down from mm - 1 while r > 0: the answer is the largest c with r <= 0
    any_stop = stop.any(axis=1)
    c_star = mm - 1 - np.argmax(stop[:, ::-1], axis=1)
    var = np.where(any_stop, var_c[np.arange(len(d)), c_star], np.nan)
    with np.errstate(invalid="ignore"):
        ncomps = np.count_nonzero(d < (tau_factor**2 * var)[:, None], axis=1)
    return var, ncomps


def _kept_batched(cov: np.ndarray, n_samples: int, tau_factor: float):
    """Eigenvalues, MP classification and kept eigenvectors with one batched ``eigh``.

    Returns ``(var, ncomps, w_kept)``: ``w_kept[b]`` holds the eigenvectors of the kept
    components (eigenvalues ``>= tau``) in its last ``m - ncomps[b]`` columns, zeros in
    the others.
    """
    m = cov.shape[-1]
    d, w = np.linalg.eigh(cov)
    var, ncomps = _classify(d, n_samples, tau_factor)
    w *= (np.arange(m)[None, :] >= ncomps[:, None])[:, None, :]
    return var, ncomps, w


def _kept_tridiagonal(cov: np.ndarray, n_samples: int, tau_factor: float):
    """As :func:`_kept_batched`, computing eigenvectors only for the kept components.

    Per patch (LAPACK through :mod:`scipy.linalg.lapack`): Householder tridiagonalisation
    ``dsytrd``, all eigenvalues by ``dsterf``; after the classification, the kept
    eigenvectors of the tridiagonal matrix by inverse iteration (``dstein``, which
    re-orthogonalises clusters) and back to the original basis with ``dormqr``. Where
    every component is kept the projector is the identity and no vectors are needed. A
    patch where ``dsterf`` or ``dstein`` reports a failure to converge is done with
    ``numpy.linalg.eigh`` instead.
    """
    from scipy.linalg import lapack

    sytrd, sterf, stein, ormqr = lapack.dsytrd, lapack.dsterf, lapack.dstein, lapack.dormqr
    n_batch, m, _ = cov.shape
    d = np.empty((n_batch, m))
    factors = []
    failed = []                     # patches LAPACK could not do: numpy.linalg.eigh instead
    for b in range(n_batch):
        # cov[b] is symmetric, so its transpose is the same matrix in Fortran order
        c, diag, off, tau, _ = sytrd(cov[b].T, lower=1)
        d[b], info = sterf(diag, off)
        if info != 0:
            failed.append(b)
        factors.append((c, diag, off, tau))
    if failed:
        d[failed] = np.linalg.eigvalsh(cov[failed])
    var, ncomps = _classify(d, n_samples, tau_factor)
    kept = m - ncomps
    w = np.zeros((n_batch, m, m))
    w[kept == m] = np.eye(m)
    iblock = np.ones(m, np.int32)
    isplit = np.full(m, m, np.int32)
    lwork = 64 * m
    skip = set(failed)
    for b in np.flatnonzero((kept > 0) & (kept < m)):
        if b in skip:
            continue
        k = kept[b]
        c, diag, off, tau = factors[b]
        z, info = stein(diag, off, d[b, m - k:], iblock, isplit)
        if info != 0:
            failed.append(b)
            continue
        z[1:] = ormqr("L", "N", c[1:, :m - 1], tau, z[1:], lwork)[0]
        w[b, :, m - k:] = z
    if failed:
        # rare (never seen): vectors from eigh, keeping the classification made above
        logger.debug("mppca_fast: LAPACK failed to converge for %d patch(es); eigh instead", len(failed))
        w_failed = np.linalg.eigh(cov[failed])[1]
        w_failed *= (np.arange(m)[None, :] >= ncomps[failed][:, None])[:, None, :]
        w[failed] = w_failed
    return var, ncomps, w


#: From this many volumes on, eigenvectors are computed only for the kept components
#: (tridiagonal route): below it one batched ``eigh`` per batch is faster (docs/decisions.md).
TRIDIAGONAL_MIN_VOLUMES = 20


def eigen_terms(
    s1: np.ndarray, s2: np.ndarray, constant: np.ndarray, n_samples: int, tau_factor: float,
    iu: tuple[np.ndarray, np.ndarray], full_index: np.ndarray, out: np.ndarray, eigensolver: str,
) -> None:
    """Per-patch terms of the weighted average, for a batch of patches.

    Parameters
    ----------
    s1 : ndarray, float64, shape (B, m)
        Patch sums of the signal.
    s2 : ndarray, float64, shape (B, K), K = m (m + 1) / 2
        Patch sums of ``x_i x_j`` (upper triangle in the order of ``iu``).
    constant : ndarray of bool, shape (B,)
        Patches constant in every volume (their covariance is set to exactly 0).
    n_samples, tau_factor
        Voxels per patch and ``1 + sqrt(m / n_samples)``.
    iu : tuple of ndarray
        Upper-triangle indices of an ``m x m`` matrix.
    full_index : ndarray of int, shape (m, m)
        Channel of ``s2`` holding element ``(i, j)``.
    out : ndarray, float64, shape (B, K + m + 2)
        Receives ``[theta P (upper triangle), theta (mu - mu P), theta, theta var]``.
    eigensolver : {"batched", "tridiagonal"}
        See :func:`_kept_batched` and :func:`_kept_tridiagonal` (same results to rounding).
    """
    m = s1.shape[1]
    k_tri = len(iu[0])
    mu = s1 / n_samples
    cov_tri = s2 / n_samples
    cov_tri -= mu[:, iu[0]] * mu[:, iu[1]]
    cov_tri[constant] = 0.0
    cov = np.take(cov_tri, full_index.ravel(), axis=1).reshape(-1, m, m)
    del cov_tri
    kept_fn = _kept_tridiagonal if eigensolver == "tridiagonal" else _kept_batched
    var, ncomps, w_kept = kept_fn(cov, n_samples, tau_factor)
    del cov
    theta = 1.0 / (1.0 + m - ncomps)
    # theta P, P = projector on the kept eigenvectors (the last m - ncomps columns of
    # w_kept); P = I where all are kept, else only the last k_max columns can be non-zero
    all_kept = ncomps == 0
    k_max = int(np.max(m - ncomps[~all_kept], initial=0))
    w_part = w_kept[:, :, m - k_max:]
    theta_proj = np.matmul(w_part * theta[:, None, None], w_part.transpose(0, 2, 1))
    del w_kept, w_part
    theta_proj[all_kept] = theta[all_kept, None, None] * np.eye(m)
    out[:, :k_tri] = np.take(theta_proj.reshape(-1, m * m), iu[0] * m + iu[1], axis=1)
    mu_p = np.matmul(mu[:, None, :], theta_proj)[:, 0]
    np.multiply(mu, theta[:, None], out=out[:, k_tri:k_tri + m])
    out[:, k_tri:k_tri + m] -= mu_p
    out[:, k_tri + m] = theta
    out[:, k_tri + m + 1] = theta * var

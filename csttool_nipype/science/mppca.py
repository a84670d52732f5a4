"""Vectorised Marchenko-Pastur PCA denoising (Veraart et al. 2016), as dipy computes it.

:func:`mppca_fast` computes what :func:`dipy.denoise.localpca.mppca` (dipy 1.12) computes
(``pca_method="eig"``, ``tau_factor=None``), without a Python loop over patches:

For every patch centre ``c`` (voxels at least ``patch_radius`` from the edges, inside the
mask) with the patch ``X`` (``n`` voxels x ``m`` volumes, ``n = prod(2 r + 1)``):

1. mean ``mu = mean(X)``, covariance ``C = (X - mu)^T (X - mu) / n``, eigenvalues
   ``d`` (ascending) and eigenvectors ``W``;
2. Marchenko-Pastur noise variance (dipy's ``_pca_classifier``): with ``L`` the top
   ``min(m, n - 1)`` eigenvalues, the largest ``c`` with
   ``not (L[c] - L[0] - 4 sqrt((c + 1) / n) mean(L[:c+1]) > 0)`` gives
   ``var = mean(L[:c+1])`` (NaN if there is none);
3. ``tau = (1 + sqrt(m / n))^2 var``; the eigenvectors with ``d < tau`` are dropped
   (``ncomps`` of them) and the patch estimate is ``X_est = (X - mu) P + mu`` with ``P``
   the projector onto the kept eigenvectors;
4. every voxel of the patch accumulates ``theta = 1 / (1 + m - ncomps)``,
   ``theta X_est`` and ``theta var``; the result is ``sum(theta X_est) / sum(theta)``
   clipped at 0 (0 outside the mask) and ``sigma = sqrt(sum(theta var) / sum(theta))``.

How it is vectorised (the result is the same up to floating-point rounding):

* Covariances from sliding-window sums and per-patch eigen-decompositions in LAPACK, batched
  (:mod:`csttool_nipype.science.mppca_kernels`, which says how).
* Reconstruction by linearity: ``sum_p theta_p X_est,p(v) = x_v Q_v + R_v`` with
  ``Q_v = sum_{p covering v} theta_p P_p`` and ``R_v = sum_p theta_p (mu_p - mu_p P_p)``,
  i.e. box sums (over patch centres) of ``theta P`` (upper triangle), ``theta (mu - mu P)``,
  ``theta`` and ``theta var``, followed by one ``m x m`` matrix-vector product per voxel.
* ``patch_stride > 1`` (not dipy's method: fewer patches, see :func:`mppca_fast`): the
  patch sums are taken, and the per-patch terms spread, only at the lattice centres (box
  sums along each axis evaluated at the lattice positions); the rest is unchanged.
* Patch centres are processed in tiles (with a ``patch_radius`` halo) and the
  eigen-decompositions in batches, which bounds the working memory. A patch's terms do
  not depend on the tiling; the tiles' float64 sums are added in tile order (also with
  ``workers > 1`` threads), so ``workers`` never changes the result and the tile size
  only through the order of float64 additions (no difference in practice once the
  result is rounded to float32).

Differences from dipy, all at the level of dipy's own rounding (``tests/test_mppca.py``
measures them):

* dipy works in float32 for float32 input (means, covariance, ``eigh``, accumulators);
  this module works in float64. Outputs therefore agree to ~1e-6 of the signal, except
  where dipy's float32 rounding decides a near-tie differently - an eigenvalue within
  rounding of the threshold ``tau``, or a classifier step within rounding of 0. Such a
  patch keeps one component more or less (a change of the size of the noise, weighted by
  about 1/125 in the voxels it covers; measured on a real scan: docs/decisions.md).
  Either decision is as correct as the other; this module's is the exact-arithmetic one
  (it equals dipy run on the data converted to float64, to float32 output rounding).
* A patch that is constant in every volume (e.g. zero background) has ``C = 0`` exactly
  here: ``var = 0``, no component dropped, ``X_est = mu``. dipy gets exactly that for a
  constant 0 and, for another constant, a rank-1 rounding residue of its float32 mean
  whose classification is arbitrary (its ``X_est`` is ``mu`` to float32 precision either
  way, only ``theta`` differs). Likewise, in noise-free synthetic data whose patches are
  exactly rank-deficient (e.g. two flat regions meeting), the "noise" eigenvalues are
  pure rounding in both implementations, so how many fall below the threshold - and
  the patch's weight ``theta`` - is arbitrary; the estimate itself is the data either
  way. Real (noisy) data have neither.
* NaN or inf in the data raise ``ValueError`` (dipy's ``scipy.linalg.eigh`` raises too).

References
----------
Veraart J, Novikov DS, Christiaens D, Ades-Aron B, Sijbers J, Fieremans E. Denoising of
diffusion MRI using random matrix theory. NeuroImage 2016;142:394-406.

Manjon JV, Coupe P, Concha L, Buades A, Collins DL, Robles M. Diffusion weighted image
denoising using overcomplete local PCA. PLoS One 2013;8:e73021.
"""

from __future__ import annotations

import logging

import numpy as np

from csttool_nipype.science.mppca_kernels import (
    TRIDIAGONAL_MIN_VOLUMES, Windows, box_constant, eigen_terms, flat_view, full_box_sum, valid_box_sum,
)

logger = logging.getLogger(__name__)

__all__ = ["mppca_fast"]

#: Working-memory budget (bytes) for the per-tile sums; sets the default tile size.
DEFAULT_TILE_BYTES = 96 * 2**20

#: Patches per batched eigen-decomposition (bounds the (B, m, m) temporaries).
EIGH_BATCH = 2048



# --------------------------------------------------------------------------- tiles
def _tiles(centres: tuple[tuple[int, int], ...], per_tile: int) -> list[tuple[slice, slice, slice]]:
    """Split the centre box into even, near-cubic tiles of at most ``per_tile`` centres.

    The number of tiles along the axis with the longest tile side is raised until a tile
    holds at most ``per_tile`` centres (near-cubic tiles have the smallest halo).
    """
    lengths = [hi - lo for lo, hi in centres]
    counts = [1, 1, 1]

    def sides():
        return [-(-n // c) for n, c in zip(lengths, counts)]

    while np.prod(sides()) > per_tile and max(sides()) > 1:
        counts[int(np.argmax(sides()))] += 1
    side = sides()
    starts = [range(lo, hi, s) for (lo, hi), s in zip(centres, side)]
    return [
        (slice(i, min(i + side[0], centres[0][1])), slice(j, min(j + side[1], centres[1][1])),
         slice(k, min(k + side[2], centres[2][1])))
        for k in starts[2] for j in starts[1] for i in starts[0]
    ]


class _Work:
    """Flat float64 work buffers for tiles of at most ``n_in`` voxels / ``n_c`` centres."""

    def __init__(self, n_in: int, n_c: int, m: int, k_tri: int):
        self.x = np.empty(n_in * m)
        self.prod = np.empty(n_in * m)
        self.scratch = (np.empty(n_in * (m + 2)), np.empty(n_in * (m + 2)))
        self.spread = np.empty(n_in * (m + 2))
        self.y = np.empty(n_in * m)
        self.weights = np.empty(n_in * 2)
        self.s1 = np.empty(n_c * m)
        self.s2 = np.empty(n_c * k_tri)
        self.terms = np.empty(n_c * (k_tri + m + 2))


def _process_tile(arr, tile, radius, size, centre_mask_full, n_samples, tau_factor, iu, full_index,
                  row_offsets, eigensolver, work):
    """Denoise the patches centred in ``tile``.

    ``tile``: per axis, the sorted (distinct) centre coordinates; the tile's candidate
    centres are their product grid, of which those in ``centre_mask_full`` are patch
    centres.

    Returns
    -------
    None if no patch is centred in the tile, else ``(region, y, weights, n_patches)``:
    ``region`` the tile's voxels (centres + radius), ``y`` (region shape + (m,)) the
    sums of ``theta X_est`` and ``weights`` (region shape + (2,)) the sums of ``theta``
    and ``theta var`` over the tile's patches; both are views into ``work``.
    """
    m = arr.shape[-1]
    k_tri = len(iu[0])
    n_terms = k_tri + m + 2
    centre_mask = centre_mask_full[np.ix_(*tile)]
    sel = np.flatnonzero(centre_mask)
    if sel.size == 0:
        return None
    region = tuple(slice(int(t[0]) - r, int(t[-1]) + r + 1) for t, r in zip(tile, radius))
    cshape = centre_mask.shape
    n_c = centre_mask.size
    x = flat_view(work.x, tuple(t.stop - t.start for t in region) + (m,))
    x[...] = arr[region]
    if not np.isfinite(x).all():
        raise ValueError("data contain NaN or inf")
    rshape = x.shape[:3]
    windows = Windows([t - t[0] for t in tile], size, rshape)    # window starts in the region

    # patch sums at the centres: first moments and the upper triangle of x x^T, by rows
    s1 = valid_box_sum(x, size, flat_view(work.s1, cshape + (m,)), work.scratch, windows).reshape(n_c, m)
    s2 = flat_view(work.s2, (n_c, k_tri))
    s2_grid = s2.reshape(cshape + (k_tri,))
    for a in range(m):
        p = np.multiply(x[..., a:a + 1], x[..., a:], out=flat_view(work.prod, rshape + (m - a,)))
        valid_box_sum(p, size, s2_grid[..., row_offsets[a]:row_offsets[a + 1]], work.scratch, windows)
    constant = box_constant(x, size)[np.ix_(*[t - t[0] for t in tile])].reshape(n_c)

    # per-centre terms (0 at centres outside the mask), eigen-decompositions in batches
    terms = flat_view(work.terms, (n_c, n_terms))
    if sel.size == n_c:
        for b in range(0, n_c, EIGH_BATCH):
            ib = slice(b, b + EIGH_BATCH)
            eigen_terms(s1[ib], s2[ib], constant[ib], n_samples, tau_factor, iu, full_index, terms[ib], eigensolver)
    else:
        terms[...] = 0.0
        for b in range(0, sel.size, EIGH_BATCH):
            ib = sel[b:b + EIGH_BATCH]
            part = np.empty((ib.size, n_terms))
            eigen_terms(s1[ib], s2[ib], constant[ib], n_samples, tau_factor, iu, full_index, part, eigensolver)
            terms[ib] = part
    terms = terms.reshape(cshape + (n_terms,))

    # spread over the patches: sum_p theta_p X_est,p(v) = x_v Q_v + R_v; Q by rows of its
    # upper triangle: row a adds x_a Q[a, j] to column j >= a and sum_{j>a} x_j Q[a, j]
    # to column a
    spread = full_box_sum(terms[..., k_tri:], size, flat_view(work.spread, rshape + (m + 2,)), work.scratch, windows)
    weights = flat_view(work.weights, rshape + (2,))
    weights[...] = spread[..., m:]
    y = flat_view(work.y, rshape + (m,))
    y[...] = spread[..., :m]
    for a in range(m):
        q_row = full_box_sum(terms[..., row_offsets[a]:row_offsets[a + 1]], size,
                              flat_view(work.spread, rshape + (m - a,)), work.scratch, windows)
        if a + 1 < m:
            y[..., a] += np.einsum("...j,...j->...", x[..., a + 1:], q_row[..., 1:])
        q_row *= x[..., a:a + 1]
        y[..., a:] += q_row
    return region, y, weights, int(sel.size)


def _run_tiles(tiles, work_shape, workers, process, accumulate) -> None:
    """``accumulate(process(tile, work))`` for every tile, in tile order.

    With ``workers > 1`` tiles are processed by a thread pool (numpy and LAPACK release
    the GIL), each thread with its own work buffers; results are copied out of the
    buffers and accumulated in tile order by the calling thread, so the floating-point
    sums - and the result - do not depend on ``workers``.
    """
    if workers <= 1 or len(tiles) == 1:
        work = _Work(*work_shape)
        for tile in tiles:
            accumulate(process(tile, work))
        return

    import threading
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()

    def job(tile):
        work = getattr(local, "work", None)
        if work is None:
            work = local.work = _Work(*work_shape)
        res = process(tile, work)
        return None if res is None else (res[0], res[1].copy(), res[2].copy(), res[3])

    pending = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mppca") as pool:
        try:
            for tile in tiles:
                pending.append(pool.submit(job, tile))
                if len(pending) >= 2 * workers:
                    accumulate(pending.popleft().result())
            while pending:
                accumulate(pending.popleft().result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def _plan(mask, radius, size, stride, per_tile):
    """The tiles of patch centres: a list of ``(tile, centre_mask)``.

    ``tile`` holds per axis the sorted centre coordinates of a product grid; the grid
    points in the (full-size boolean) ``centre_mask`` are the tile's patch centres.

    ``stride == 1``: every voxel of ``mask`` at least ``radius`` from the edges is a
    centre, in near-cubic tiles of at most ``per_tile`` centres (as always).

    ``stride > 1`` (see :func:`mppca_fast`): with ``M`` those candidate centres and
    ``[lo, hi]`` their bounding box, the centres are ``M`` on the lattice
    ``{lo, lo + s, lo + 2 s, ...} U {hi}`` per axis (``s = min(stride, 2 r + 1)``, so 1
    along an axis of patch size 1), in tiles of at most ``per_tile / s^3`` lattice
    centres (about the voxels of a stride-1 tile); then, in a second pass of stride-1
    tiles, the centres of ``M`` not on the lattice that cover a mask voxel which no
    lattice centre covers but some centre of ``M`` does (none where the mask is the
    brain mask dilated by the radius, as the pipeline calls it; only thin mask parts
    need them).
    """
    shape3 = mask.shape
    if stride == 1:
        centres = tuple((int(r), int(n - r)) for r, n in zip(radius, shape3))
        return [(tuple(np.arange(t.start, t.stop) for t in tile), mask) for tile in _tiles(centres, per_tile)]

    from scipy import ndimage

    valid = np.zeros(shape3, bool)
    valid[tuple(slice(int(r), int(n - r)) for r, n in zip(radius, shape3))] = True
    cand = mask & valid
    if not cand.any():
        return _plan(mask, radius, size, 1, per_tile)       # no patch at all, as with stride 1
    idx = np.argwhere(cand)
    lo, hi = idx.min(0), idx.max(0)
    steps = [min(stride, s) for s in size]
    axes = []
    for a in range(3):
        lattice = np.arange(lo[a], hi[a] + 1, steps[a])
        if lattice[-1] != hi[a]:
            lattice = np.r_[lattice, hi[a]]
        axes.append(lattice)
    on_lattice = np.zeros(shape3, bool)
    on_lattice[np.ix_(*axes)] = True
    on_lattice &= cand
    per_lattice_tile = max(1, per_tile // int(np.prod(steps)))
    plan = [
        (tuple(ax[t] for ax, t in zip(axes, tile)), on_lattice)
        for tile in _tiles(tuple((0, len(ax)) for ax in axes), per_lattice_tile)
    ]

    def dilate(a):
        return ndimage.maximum_filter(a, size=size, mode="constant", cval=False)

    uncovered = mask & ~dilate(on_lattice) & dilate(cand)
    if uncovered.any():
        extra = cand & ~on_lattice & dilate(uncovered)
        idx = np.argwhere(extra)
        box = tuple((int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0)))
        plan += [(tuple(np.arange(t.start, t.stop) for t in tile), extra) for tile in _tiles(box, per_tile)]
        logger.debug("mppca_fast: %d mask voxel(s) not covered by the lattice: %d extra centre(s)",
                     int(uncovered.sum()), len(idx))
    return plan


# --------------------------------------------------------------------------- API
def mppca_fast(
    data: np.ndarray,
    mask: np.ndarray | None = None,
    patch_radius: int | tuple[int, int, int] = 2,
    *,
    return_sigma: bool = False,
    out_dtype=None,
    chunk_voxels: int | None = None,
    eigensolver: str = "auto",
    workers: int = 1,
    patch_stride: int = 1,
):
    """Marchenko-Pastur PCA denoising (Veraart 2016), vectorised; same results as dipy's ``mppca``.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
        Diffusion series (volumes on the last axis), real.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Patches are centred only on mask voxels; output (and sigma) is 0 outside it.
        Default: every voxel.
    patch_radius : int or sequence of 3 ints
        Patch radius per axis (``2`` = 5 x 5 x 5 patches). Set to 0 along axes of size 1,
        as dipy does. Each other axis must be at least ``2 r + 1`` long.
    return_sigma : bool
        Also return the local noise standard deviation map.
    out_dtype : dtype, optional
        dtype of the denoised array (default: that of ``data``, as dipy).
    chunk_voxels : int, optional, keyword-only
        Approximate number of patch centres per tile (default: from a ~100 MB working
        memory budget). Affects speed and memory, not the result.
    eigensolver : {"auto", "batched", "tridiagonal"}, keyword-only
        How the per-patch eigen-decompositions are computed: ``"batched"`` - one
        ``numpy.linalg.eigh`` per batch of patches; ``"tridiagonal"`` - LAPACK
        tridiagonalisation and eigenvalues per patch, eigenvectors only for the kept
        components; ``"auto"`` - tridiagonal from :data:`TRIDIAGONAL_MIN_VOLUMES` volumes
        on. Affects speed, not the result (beyond rounding).
    workers : int, keyword-only
        Threads processing tiles concurrently (default 1: no threads). Affects speed and
        memory (one set of tile buffers per thread), not the result: tile results are
        summed in the same order whatever ``workers``.
    patch_stride : int, keyword-only
        Spacing of the patch centres along each axis (default 1: every voxel, dipy's
        ``mppca``; the result is then exactly what it is without this option). With
        ``s > 1`` only the candidate centres (mask voxels at least ``patch_radius`` from
        the edges) on a lattice are used: per axis ``{lo, lo + s, lo + 2 s, ...}`` plus
        ``hi``, with ``[lo, hi]`` the bounding box of the candidates (so the first and the
        last candidate centre along each axis are always on it; ``s`` is capped at the
        patch width ``2 r + 1``, i.e. 1 along an axis of radius 0). Every voxel is still
        covered by several overlapping patches (about ``((2 r + 1) / s)^3``) and gets the
        same ``theta``-weighted average of their estimates and the same sigma map
        definition. A mask voxel that stride 1 covers but no lattice patch does (thin
        mask parts only; never with the pipeline's mask - the brain dilated by the radius)
        additionally gets all its stride-1 patches, so the NaN positions are those of
        stride 1. About ``s^3`` fewer eigen-decompositions; on the phantoms ~2 % higher
        error vs the noise-free signal at ``s = 2``, ~5 % at ``s = 3``
        (``benchmarks/bench_mppca_stride.py``). Deterministic, independent of ``workers``
        and the tiling.

    Returns
    -------
    denoised : ndarray, shape (X, Y, Z, N)
        ``sum(theta X_est) / sum(theta)``, clipped at 0; 0 outside the mask; NaN at mask
        voxels no patch covers (as dipy).
    sigma : ndarray, shape (X, Y, Z)
        Only with ``return_sigma``: ``sqrt(sum(theta var) / sum(theta))``, 0 outside the
        mask; float64 for float64 data, else float32 (dipy's calculation dtype).

    Raises
    ------
    ValueError
        ``data`` not 4D, a bad ``patch_radius`` or ``mask`` shape, an axis shorter than
        the patch, a 1-voxel patch, or NaN / inf in the data.
    TypeError
        Complex or non-numeric ``data``.

    Notes
    -----
    Equivalent to ``dipy.denoise.localpca.mppca(data, mask=mask, patch_radius=...,
    pca_method="eig", return_sigma=...)`` up to rounding (see the module docstring), but
    computed in float64 without a Python loop over patches. Working memory: the tile
    buffers (about ``DEFAULT_TILE_BYTES`` plus ~50 bytes x ``N`` per voxel of a tile; one
    set per thread) and float64 accumulators (``8 (N + 2)`` bytes per voxel), on top of
    the input and the output - measured peak rise ~0.2 GB for 80x80x40x16 and ~0.5 GB for
    128x128x60x33 (``benchmarks/results/denoise.txt``).
    """
    arr = np.asarray(data)
    if arr.ndim != 4:
        raise ValueError(f"PCA denoising needs a 4D array, got shape {arr.shape}")
    if np.iscomplexobj(arr) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"expected real numeric data, got dtype {arr.dtype}")
    shape3 = arr.shape[:3]
    m = arr.shape[3]
    radius = np.broadcast_to(np.asarray(patch_radius), (3,)) if np.ndim(patch_radius) == 0 else np.asarray(patch_radius)
    if radius.shape != (3,) or np.any(radius < 0) or np.any(radius != np.round(radius)):
        raise ValueError(f"patch_radius must be a non-negative int or 3 of them, got {patch_radius!r}")
    radius = np.where(np.asarray(shape3) == 1, 0, radius).astype(int)
    size = tuple(int(v) for v in 2 * radius + 1)
    if any(n != 1 and n < s for n, s in zip(shape3, size)):
        raise ValueError(f"array of spatial shape {shape3} is smaller than the {size} patch")
    n_samples = int(np.prod(size))
    if n_samples == 1:
        raise ValueError("cannot have only 1 sample: increase patch_radius")
    if mask is None:
        mask = np.ones(shape3, bool)
    else:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != shape3:
            raise ValueError(f"mask shape {mask.shape} does not match data shape {shape3}")
    if int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if isinstance(patch_stride, bool) or int(patch_stride) != patch_stride or patch_stride < 1:
        raise ValueError(f"patch_stride must be a positive integer, got {patch_stride!r}")
    stride = int(patch_stride)
    if eigensolver not in ("auto", "batched", "tridiagonal"):
        raise ValueError(f"eigensolver must be 'auto', 'batched' or 'tridiagonal', got {eigensolver!r}")
    if eigensolver == "auto":
        eigensolver = "tridiagonal" if m >= TRIDIAGONAL_MIN_VOLUMES else "batched"
    out_dtype = arr.dtype if out_dtype is None else np.dtype(out_dtype)
    calc_dtype = np.float64 if arr.dtype == np.float64 else np.float32

    tau_factor = 1.0 + np.sqrt(m / n_samples)
    iu = np.triu_indices(m)
    full_index = np.empty((m, m), int)
    full_index[iu] = np.arange(len(iu[0]))
    full_index[iu[1], iu[0]] = np.arange(len(iu[0]))
    row_offsets = np.r_[0, np.cumsum(np.arange(m, 0, -1))]

    acc_x = np.zeros(arr.shape)
    acc_theta = np.zeros(shape3)
    acc_var = np.zeros(shape3)
    per_tile = int(chunk_voxels) if chunk_voxels else max(512, DEFAULT_TILE_BYTES // (16 * (m * (m + 3) // 2 + 2)))
    plan = _plan(mask, radius, size, stride, max(1, per_tile))
    logger.debug("mppca_fast: %s, patch %s, stride %d, %d tile(s) of <= %d centres",
                 arr.shape, size, stride, len(plan), per_tile)
    n_c_max = max(int(np.prod([len(t) for t in tile])) for tile, _ in plan)
    n_in_max = max(int(np.prod([t[-1] - t[0] + 1 + 2 * r for t, r in zip(tile, radius)])) for tile, _ in plan)
    n_patches = 0

    def process(item, work):
        tile, centre_mask = item
        return _process_tile(arr, tile, radius, size, centre_mask, n_samples, tau_factor, iu, full_index,
                             row_offsets, eigensolver, work)

    def accumulate(res):
        nonlocal n_patches
        if res is None:
            return
        region, y, weights, count = res
        acc_x[region] += y
        acc_theta[region] += weights[..., 0]
        acc_var[region] += weights[..., 1]
        n_patches += count

    _run_tiles(plan, (n_in_max, n_c_max, m, len(iu[0])), int(workers), process, accumulate)
    logger.debug("mppca_fast: %d patches", n_patches)

    with np.errstate(invalid="ignore", divide="ignore"):
        acc_x /= acc_theta[..., None]
        np.clip(acc_x, 0, None, out=acc_x)
        acc_x[~mask] = 0
        denoised = acc_x.astype(calc_dtype).astype(out_dtype, copy=False)
        del acc_x
        if not return_sigma:
            return denoised
        sigma = np.sqrt(acc_var / acc_theta)
    sigma[~mask] = 0
    return denoised, sigma.astype(calc_dtype)

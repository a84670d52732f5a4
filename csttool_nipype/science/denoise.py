"""Denoising of a diffusion series on arrays: MP-PCA, Patch2Self, non-local means.

Array conventions as in :mod:`csttool_nipype.science.preprocess` (``data`` (X, Y, Z, N) in
voxel order, ``bvals`` in s/mm^2, ``bvecs_voxel`` in the voxel axes); outputs are float32.
Every function is deterministic: the same input gives bit-identical output.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
from scipy import ndimage

from ..config import B0_THRESHOLD, DENOISE_METHODS
from .preprocess import as_4d_float32, b0_indices, bounding_box, check_bvals, check_mask

logger = logging.getLogger(__name__)

#: Minimum number of b0 volumes for Patch2Self to denoise the b0s themselves. With one
#: b0 there is nothing to regress on; with two, the regression of one noisy b0 on the
#: other returns a (scaled) image with noise of the same size, so nothing is gained.
_P2S_MIN_B0 = 3



def _foreground(arr: np.ndarray) -> np.ndarray:
    """Voxels of the mean image above its Otsu threshold (the head, roughly)."""
    from dipy.segment.threshold import otsu

    mean_img = np.asarray(arr, np.float64).mean(axis=-1)
    return mean_img > otsu(mean_img)


def _estimate_sigma(
    data: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray | None, mask: np.ndarray | None,
    n_coils: int, b0_threshold: float,
) -> tuple[float, str]:
    """Noise standard deviation of the underlying Gaussian noise (signal units).

    1. PIESNO (Koay 2009) on the noise-only background, the natural source for magnitude
       images with an unmasked background. Accepted only if it found enough noise voxels
       (>= 100 and >= 1 % of the grid), their mean intensity is that of pure noise of
       the estimated sigma (the mean of a ``n_coils`` chi distribution, within 25 %), they
       show no diffusion contrast (mean over b0s / mean over DW volumes in [0.8, 1.25])
       and, when a ``mask`` is given, at most 5 % of them lie in it: on a cropped or
       background-zeroed image PIESNO happily calls tissue "noise" (on a phantom block
       without background it returned 9x the true sigma).
    2. Otherwise dipy's local-PCA estimate (``pca_noise_estimate``, Manjon 2013, Rician
       bias corrected), median over the head.
    """
    from dipy.core.gradients import gradient_table
    from dipy.denoise.noise_estimate import piesno
    from dipy.denoise.pca_noise_estimate import pca_noise_estimate

    from scipy.special import gammaln

    n_vox = int(np.prod(data.shape[:3]))
    # mean of a chi distribution with 2N degrees of freedom and scale sigma, per sigma
    chi_mean = float(np.sqrt(2.0) * np.exp(gammaln(n_coils + 0.5) - gammaln(n_coils)))
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sigma, noise_mask = piesno(data, N=n_coils, return_mask=True)
        sigma = float(np.asarray(sigma).ravel()[0])
        noise_mask = np.asarray(noise_mask, bool)
        n_noise = int(noise_mask.sum())
        in_mask = float((noise_mask & mask).sum()) / max(n_noise, 1) if mask is not None else 0.0
        noise_vals = data[noise_mask]
        mean_ratio = float(np.mean(noise_vals)) / (chi_mean * sigma) if n_noise else np.inf
        is_b0 = np.asarray(bvals) <= b0_threshold
        contrast = 1.0  # pure noise has no diffusion contrast: b0 mean == DW mean
        if n_noise and is_b0.any() and (~is_b0).any():
            contrast = float(np.mean(noise_vals[:, is_b0])) / max(float(np.mean(noise_vals[:, ~is_b0])), 1e-12)
    except Exception as exc:  # piesno raises on degenerate input (e.g. all-zero slices)
        logger.debug("piesno failed: %s", exc)
        sigma, n_noise, in_mask, mean_ratio, contrast = float("nan"), 0, 1.0, np.inf, np.inf
    if (np.isfinite(sigma) and sigma > 0 and n_noise >= max(100, 0.01 * n_vox)
            and in_mask <= 0.05 and 0.75 <= mean_ratio <= 1.25 and 0.8 <= contrast <= 1.25):
        return sigma, "piesno"
    logger.info("piesno unusable (%d noise voxels, %.0f %% in the mask, mean/expected %.2f, "
                "b0/DW %.2f); local PCA estimate instead", n_noise, 100 * in_mask, mean_ratio, contrast)
    head = mask if mask is not None else _foreground(data)
    if bvecs is None:  # directions do not enter the estimate; the gradient table needs some
        bvecs = np.tile([1.0, 0.0, 0.0], (len(bvals), 1))
    bvecs = np.where((np.asarray(bvals) > b0_threshold)[:, None], bvecs, 0.0)
    gtab = gradient_table(np.asarray(bvals, float), bvecs=bvecs, b0_threshold=b0_threshold)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sigma_map = pca_noise_estimate(np.asarray(data, np.float64), gtab, correct_bias=True, smooth=2)
    vals = np.asarray(sigma_map)[head]
    vals = vals[np.isfinite(vals) & (vals > 0)]
    return (float(np.median(vals)) if vals.size else float("nan")), "local_pca"


def _mppca_patch_radius(n_volumes: int) -> int:
    """Smallest patch radius (at least 2, dipy's default) with more patch voxels than volumes."""
    radius = 2
    while (2 * radius + 1) ** 3 <= n_volumes:
        radius += 1
    return radius


def denoise(
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs_voxel: np.ndarray | None,
    method: str = "mppca",
    mask: np.ndarray | None = None,
    b0_threshold: float = B0_THRESHOLD,
    n_coils: int = 1,
    p2s_tensor_constraint: bool = True,
    workers: int | None = None,
    mppca_patch_stride: int = 1,
) -> tuple[np.ndarray, dict]:
    """Denoise a 4D diffusion series.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
        Magnitude diffusion images, voxel order, any real dtype.
    bvals : ndarray, shape (N,)
        b-values in s/mm^2.
    bvecs_voxel : ndarray, shape (N, 3) or None
        b-vectors in voxel axes (any orthonormal frame gives the same result); used by
        ``"patch2self"`` with ``p2s_tensor_constraint``, ignored otherwise.
    method : {"patch2self", "nlmeans", "mppca", "none"}
        * ``"patch2self"`` - Patch2Self (Fadnavis et al. 2020) with ``model="ols"`` and a
          single-voxel patch, implemented here (dipy 1.12.1's version 1 loses the
          regression intercept with current scikit-learn; its version 3 is not
          reproducible - see :func:`_denoise_patch2self`). Each volume is predicted by
          linear regression on all other volumes of its kind (b0s / diffusion-weighted);
          deterministic. By default (``p2s_tensor_constraint=True``) the
          diffusion-weighted regression runs on log signals with weights constrained to
          reproduce any single-tensor signal exactly, which keeps FA unbiased for fibre
          orientations that are rare in the volume. The b0s are denoised only when there
          are at least 3 of them (otherwise they are returned unchanged); at least 2
          diffusion-weighted volumes are required. Negative predictions are set to 0.
        * ``"nlmeans"`` - dipy non-local means, ``method="classic"``, 3x3x3 patches
          compared within a 5x5x5 search block, ``rician=True``, one thread. dipy 1.12's
          default ``"blockwise"`` method was not used: on the phantom it flattened the b0
          tissue contrast (RMSE against the noise-free image 4x that of the noisy input,
          whatever sigma). sigma: PIESNO (``n_coils``) on the noise-only background, or
          dipy's local-PCA estimate when there is no usable background (see
          :func:`_estimate_sigma`).
        * ``"mppca"`` - Marchenko-Pastur PCA (Veraart et al. 2016) as dipy's ``mppca``
          computes it, by the vectorised :func:`csttool_nipype.science.mppca.mppca_fast`
          (dipy's result up to rounding, several times faster; ``OMP_NUM_THREADS``
          threads); the patch radius is the smallest >= 2 (dipy's default) whose cubic
          patch has more voxels than there are volumes.
        * ``"none"`` - a float32 copy.
    mask : ndarray of bool, shape (X, Y, Z), optional
        If given, voxels outside the mask are returned unchanged (input values) for every
        method; Patch2Self fits its regressions on the mask's voxels, nlmeans and mppca
        only compute inside it (mppca: inside the mask its result equals the unmasked
        one), and sigma estimates are taken inside it. See :func:`processing_region`.
    b0_threshold : float
        b-values at or below this (s/mm^2) count as b0.
    n_coils : int
        Receiver coils for the PIESNO noise model of ``nlmeans`` (1: Rician, e.g. SENSE or
        adaptive combine).
    p2s_tensor_constraint : bool
        Patch2Self variant (see above); False gives plain Patch2Self (linear domain).
    workers : int, optional
        Threads for mppca (default ``OMP_NUM_THREADS``); never changes the result.
    mppca_patch_stride : int
        mppca only: patch centres on every n-th voxel of each axis (1: every voxel, dipy's
        result; see :func:`csttool_nipype.science.mppca.mppca_fast`).

    Returns
    -------
    denoised : ndarray, float32, shape (X, Y, Z, N)
    info : dict
        ``{"method": str, "sigma_estimate": float or None, "parameters": dict}``.
        ``sigma_estimate`` is the noise standard deviation in signal units, taken inside
        the mask when given, else inside the Otsu foreground of the mean image: for
        nlmeans the sigma handed to nlmeans; for mppca the median of its local sigma
        map; for patch2self the standard deviation of the removed part (input - output)
        of the diffusion-weighted volumes (residual-based: it also contains whatever
        signal the regression could not explain); None for ``"none"``.

    Raises
    ------
    ValueError
        Unknown method (the message lists the choices) or inconsistent shapes.
    """
    method_key = str(method).lower()
    if method_key not in DENOISE_METHODS:
        raise ValueError(f"unknown denoising method {method!r}; choose one of {', '.join(DENOISE_METHODS)}")
    arr = as_4d_float32(data)
    bvals = check_bvals(bvals, arr.shape[-1])
    mask = check_mask(mask, arr.shape[:3])

    if method_key == "none":
        return arr.copy(), {"method": "none", "sigma_estimate": None, "parameters": {}}

    if method_key == "patch2self":
        out, info = _denoise_patch2self(arr, bvals, bvecs_voxel, mask, b0_threshold, p2s_tensor_constraint)
    elif method_key == "nlmeans":
        out, info = _denoise_nlmeans(arr, bvals, bvecs_voxel, mask, n_coils, b0_threshold)
    else:
        out, info = _denoise_mppca(arr, mask, workers=workers, patch_stride=mppca_patch_stride)

    out = np.asarray(out, dtype=np.float32)
    if mask is not None:
        out[~mask] = arr[~mask]
    logger.info("denoise(%s): sigma estimate %s", method_key, info["sigma_estimate"])
    return out, info


def _tensor_design(bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    """Log-linear diffusion-tensor design matrix ``(N, 7)``: ``ln S = B @ (ln S0, Dxx, Dyy, Dzz, Dxy, Dxz, Dyz)``."""
    g = np.asarray(bvecs, float)
    b = np.asarray(bvals, float)
    return np.column_stack([
        np.ones_like(b),
        -b * g[:, 0] ** 2, -b * g[:, 1] ** 2, -b * g[:, 2] ** 2,
        -2 * b * g[:, 0] * g[:, 1], -2 * b * g[:, 0] * g[:, 2], -2 * b * g[:, 1] * g[:, 2],
    ])


def _self_supervised_ols(
    values: np.ndarray, train: np.ndarray, constraints: np.ndarray | None = None
) -> tuple[np.ndarray, bool]:
    """Predict each column of ``values`` from all the other columns (OLS with intercept).

    ``values`` is ``(V, K)`` (voxels x volumes); the regression of column ``k`` on the
    other ``K - 1`` columns is fitted on the rows ``train`` and applied to all rows. The
    noise of column ``k`` is independent of the regressors, so it is not reproduced
    (J-invariance, Batson & Royer 2019). Normal equations on centred, unit-variance
    columns in float64; the Gram matrix is computed once and each held-out fit solves a
    ``(K-1)`` system.

    ``constraints`` ``(K, C)``: when given, the weights ``w`` of column ``k`` must satisfy
    ``sum_l w_l constraints[l] = constraints[k]`` (equality-constrained least squares via
    Lagrange multipliers), i.e. any signal lying in the span of the constraint columns is
    predicted exactly whatever the training voxels contain. Used only when it leaves at
    least 6 free weights; the second return value says whether it was used.
    """
    x = np.asarray(values, np.float64)
    mean = x[train].mean(axis=0)
    xc = x - mean
    xc_train = xc[train]
    gram = xc_train.T @ xc_train
    scale = np.sqrt(np.clip(np.diag(gram), 1e-30, None))
    gram_n = gram / np.outer(scale, scale)
    n_cols = x.shape[1]
    use_constraints = False
    if constraints is not None:
        rank = np.linalg.matrix_rank(np.asarray(constraints, float))
        use_constraints = n_cols - 1 >= rank + 6
    weights = np.zeros((n_cols, n_cols))  # column k: weights predicting volume k
    k_all = np.arange(n_cols)
    for k in k_all:
        others = k_all != k
        a = gram_n[np.ix_(others, others)]
        a = a + np.eye(a.shape[0]) * 1e-10 * np.trace(a) / a.shape[0]  # numerical safety only
        rhs = gram_n[others, k]
        a_inv_rhs = np.linalg.solve(a, rhs)
        if use_constraints:
            # in normalised units w_n = w * scale_others / scale_k
            c_n = constraints[others] / scale[others, None]
            target = constraints[k] / scale[k]
            a_inv_c = np.linalg.solve(a, c_n)
            lam, *_ = np.linalg.lstsq(c_n.T @ a_inv_c, c_n.T @ a_inv_rhs - target, rcond=1e-10)
            coef_n = a_inv_rhs - a_inv_c @ lam
        else:
            coef_n = a_inv_rhs
        weights[others, k] = coef_n * scale[k] / scale[others]
    return xc @ weights + mean, use_constraints


def _denoise_patch2self(arr, bvals, bvecs_voxel, mask, b0_threshold, tensor_constraint=True):
    """Patch2Self (Fadnavis et al. 2020): OLS, single-voxel "patch", own implementation.

    Plain variant (``tensor_constraint=False``) = dipy's
    ``patch2self(version=1, patch_radius=0, model="ols")``. It is implemented here
    because in dipy 1.12.1 that path loses the regression intercept with scikit-learn
    >= 1.x (``Ridge(copy_X=False)`` centres the design matrix in place before
    ``predict`` is called on it, shifting every output volume by about minus the mean
    signal), and dipy's version 3 draws its count-sketch from numpy's global random
    state (not reproducible).

    Default variant (``tensor_constraint=True``): the diffusion-weighted regression is
    done on log signals with weights constrained to reproduce exactly every signal of the
    form ``ln S = B q`` (B = log-linear tensor design, see :func:`_tensor_design`), i.e.
    any single diffusion tensor of any orientation. A plain global regression learns
    which angular profiles are common in the training voxels and shrinks the rest; with
    ~30 directions that lowers the FA of fibre populations whose orientation is rare in
    the volume. The constraint removes that population dependence; the remaining free
    weights are still fitted by OLS to the data (J-invariance intact: the constraint does
    not depend on the data). Being voxel-wise it adds no information a tensor fit does
    not already use (measurements on the phantom: docs/decisions.md).
    """
    b0_idx = b0_indices(bvals, b0_threshold)
    dw_idx = np.flatnonzero(bvals > b0_threshold)
    if dw_idx.size < 2:
        raise ValueError(
            f"patch2self needs at least 2 diffusion-weighted volumes (b > {b0_threshold:g}); got {dw_idx.size}"
        )
    if tensor_constraint and bvecs_voxel is None:
        raise ValueError("patch2self with the tensor constraint needs the b-vectors")
    denoise_b0 = b0_idx.size >= _P2S_MIN_B0
    if not denoise_b0 and b0_idx.size:
        logger.info("patch2self: %d b0 volume(s) < %d, b0s left unchanged", b0_idx.size, _P2S_MIN_B0)

    shape3 = arr.shape[:3]
    flat = arr.reshape(-1, arr.shape[-1])
    out_flat = flat.copy()
    # with a mask, fit and predict on its voxels only (the rest is returned unchanged)
    rows = np.ones(flat.shape[0], bool) if mask is None else mask.reshape(-1)
    flat = flat[rows]
    train = np.ones(flat.shape[0], bool)

    dw = flat[:, dw_idx].astype(np.float64)
    constrained = False
    if tensor_constraint:
        positive = dw[train][dw[train] > 0]
        floor = 1e-3 * float(np.percentile(positive, 99)) if positive.size else 1.0
        design = _tensor_design(bvals[dw_idx], np.asarray(bvecs_voxel, float)[dw_idx])
        pred, constrained = _self_supervised_ols(np.log(np.maximum(dw, floor)), train, design)
        if constrained:
            pred = np.exp(pred)
        else:
            logger.info("patch2self: too few volumes for the tensor constraint; plain regression")
            pred, _ = _self_supervised_ols(dw, train)
    else:
        pred, _ = _self_supervised_ols(dw, train)
    out_flat[np.ix_(rows, dw_idx)] = np.clip(pred, 0.0, None).astype(np.float32)
    if denoise_b0:
        pred_b0, _ = _self_supervised_ols(flat[:, b0_idx], train)
        out_flat[np.ix_(rows, b0_idx)] = np.clip(pred_b0, 0.0, None).astype(np.float32)
    out = out_flat.reshape(shape3 + (arr.shape[-1],))

    params = {
        "model": "ols",
        "patch_radius": 0,
        "b0_threshold": float(b0_threshold),
        "b0_denoising": bool(denoise_b0),
        "training_voxels": "mask" if mask is not None else "all",
        "tensor_constraint": bool(constrained),
        "domain": "log" if constrained else "linear",
        "clip_negative_vals": True,
    }
    region = mask if mask is not None else _foreground(arr)
    resid = (arr[..., dw_idx] - out[..., dw_idx])[region]
    sigma = float(np.std(resid.astype(np.float64))) if resid.size else None
    return out, {"method": "patch2self", "sigma_estimate": sigma, "parameters": params}


def _denoise_nlmeans(arr, bvals, bvecs, mask, n_coils, b0_threshold):
    """dipy non-local means, ``method="classic"`` (see :func:`denoise` for why not blockwise)."""
    from dipy.denoise.nlmeans import nlmeans

    sigma, source = _estimate_sigma(arr, bvals, bvecs, mask, n_coils, b0_threshold)
    params = {
        "patch_radius": 1,
        "block_radius": 2,
        "rician": True,
        "method": "classic",
        "sigma_source": source,
        "n_coils": int(n_coils),
        "num_threads": 1,
    }
    if not np.isfinite(sigma) or sigma <= 0:
        logger.warning("nlmeans: noise estimate is %s; data returned unchanged", sigma)
        return arr.copy(), {"method": "nlmeans", "sigma_estimate": None, "parameters": params}
    out = nlmeans(
        arr, sigma=float(sigma), mask=mask, patch_radius=1, block_radius=2,
        rician=True, num_threads=1, method="classic",
    )
    return out, {"method": "nlmeans", "sigma_estimate": float(sigma), "parameters": params}


def _env_threads() -> int:
    """Threads allowed by ``OMP_NUM_THREADS`` (set per job by the batch runner); 1 if unset or invalid."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", "1"))
    except ValueError:
        return 1
    return max(1, min(n, os.cpu_count() or 1))


def _denoise_mppca(arr, mask, implementation: str = "fast", workers: int | None = None, patch_stride: int = 1):
    """MP-PCA (Veraart 2016) as dipy 1.12 ``mppca`` computes it.

    ``implementation="fast"`` (the default) uses
    :func:`csttool_nipype.science.mppca.mppca_fast`, a vectorised reimplementation that
    gives dipy's result up to floating-point rounding (it computes in float64 where dipy
    uses float32 for float32 data; checked in ``tests/test_mppca.py``) several times
    faster, with ``workers`` threads (default ``OMP_NUM_THREADS``, 1 if unset; the result
    does not depend on it). ``"dipy"`` calls ``dipy.denoise.localpca.mppca`` (the
    reference). With a ``mask``, patches are centred on the mask dilated by the patch
    radius, so that every voxel of the mask gets exactly its whole-image value (with
    ``patch_stride`` 1; a coarser lattice of centres starts at the corner of that region).
    """
    radius = _mppca_patch_radius(arr.shape[-1])
    params = {"patch_radius": radius, "pca_method": "eig", "implementation": implementation,
              "patch_stride": int(patch_stride)}
    if implementation == "dipy" and patch_stride != 1:
        raise ValueError("dipy's mppca centres a patch on every voxel (patch_stride 1)")
    region = mask
    if mask is not None:
        # every patch that covers a mask voxel is centred within `radius` of it: with those
        # centres, mask voxels get exactly the whole-field-of-view result
        mask = ndimage.binary_dilation(mask, structure=np.ones((2 * radius + 1,) * 3, bool))
    with np.errstate(invalid="ignore", divide="ignore"):
        if implementation == "dipy":
            from dipy.denoise.localpca import mppca

            out, sigma_map = mppca(
                arr, mask=mask, patch_radius=radius, pca_method="eig", return_sigma=True,
                out_dtype=np.float32, suppress_warning=True,
            )
        elif implementation == "fast":
            from .mppca import mppca_fast

            # only the box around the patch centres (plus the patch radius) takes part: the
            # same patches, the same sums, without the tiles' fixed costs over the background
            box = bounding_box(mask, radius) if mask is not None else (slice(None),) * 3
            out = np.zeros(arr.shape, np.float32)
            sigma_map = np.zeros(arr.shape[:3], np.float32)
            out[box], sigma_map[box] = mppca_fast(
                arr[box], mask=mask[box] if mask is not None else None, patch_radius=radius,
                return_sigma=True, out_dtype=np.float32, workers=workers or _env_threads(),
                patch_stride=int(patch_stride),
            )
        else:
            raise ValueError(f"unknown MP-PCA implementation {implementation!r} (fast, dipy)")
    out = np.nan_to_num(np.asarray(out, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    sigma_map = np.asarray(sigma_map, np.float64)
    if region is None:
        # the head, not the background (where magnitude noise is Rayleigh, std ~0.66 sigma)
        region = _foreground(arr)
    vals = sigma_map[region]
    vals = vals[np.isfinite(vals) & (vals > 0)]
    sigma = float(np.median(vals)) if vals.size else None
    return out, {"method": "mppca", "sigma_estimate": sigma, "parameters": params}

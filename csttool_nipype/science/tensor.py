"""Diffusion tensor fit (its QC figure: :func:`csttool_nipype.reports.figures.tensor_qc_png`).

Units: diffusivities (MD, RD, AD, eigenvalues) in mm^2/s when b-values are in s/mm^2.
Frames: eigenvectors are returned in the image's voxel axes (what dipy fits with voxel
b-vectors); the colour-FA map is built from the principal eigenvector in world (RAS+)
axes so that red = left-right, green = anterior-posterior, blue = superior-inferior
whatever the storage orientation.
"""

from __future__ import annotations

import logging

import numpy as np

from csttool_nipype.config import B0_THRESHOLD
from csttool_nipype.science.gradients import voxel_to_world

logger = logging.getLogger(__name__)

FIT_METHODS = ("WLS", "OLS", "NLLS")


def fit_tensor(
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs_voxel: np.ndarray,
    mask: np.ndarray | None,
    fit_method: str = "WLS",
    b0_threshold: float = B0_THRESHOLD,
    affine: np.ndarray | None = None,
    workers: int = 1,
) -> dict[str, np.ndarray]:
    """Fit the diffusion tensor voxel-wise (dipy ``TensorModel``).

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
        Diffusion series in voxel order.
    bvals : ndarray, shape (N,)
        s/mm^2.
    bvecs_voxel : ndarray, shape (N, 3)
        Unit gradient directions in voxel axes (after any motion rotation); rows of b0
        volumes may be zero.
    mask : ndarray of bool, shape (X, Y, Z) or None
        Voxels to fit; None fits every voxel.
    fit_method : {"WLS", "OLS", "NLLS"}
        dipy tensor fit method: weighted linear least squares (default), ordinary linear
        least squares, or non-linear least squares. (RESTORE needs a noise sigma and is
        not offered.)
    b0_threshold : float
        s/mm^2.
    affine : ndarray, shape (4, 4), optional
        Voxel-to-world affine, used only to express v1 in world axes for ``color_fa``.
        None: voxel axes are taken to be world axes (RAS+ storage).
    workers : int
        Threads: the masked voxels are fitted in contiguous blocks, one per thread (numpy
        releases the GIL in the fit's array work). Every voxel is fitted on its own, so the
        result is identical for any number of workers.

    Returns
    -------
    dict of ndarrays
        ``fa`` (X, Y, Z) float32 in [0, 1]; ``md``, ``rd``, ``ad`` (X, Y, Z) float32 in
        mm^2/s; ``evals`` (X, Y, Z, 3) float32 in mm^2/s, descending; ``evecs``
        (X, Y, Z, 3, 3) float32, column ``[..., :, k]`` is the eigenvector of
        ``evals[..., k]`` in voxel axes; ``v1`` (X, Y, Z, 3) principal eigenvector,
        voxel axes; ``color_fa`` (X, Y, Z, 3) float32 in [0, 1] = FA * |v1_world|
        (R, G, B = world x, y, z). All maps are 0 outside the mask and where the fit is
        not finite.
    """
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    arr = np.asarray(data)
    if arr.ndim != 4:
        raise ValueError(f"expected a 4D (X, Y, Z, N) array, got shape {arr.shape}")
    n_vol = arr.shape[-1]
    bvals = np.asarray(bvals, float).ravel()
    bvecs = np.asarray(bvecs_voxel, float)
    if bvals.size != n_vol or bvecs.shape != (n_vol, 3):
        raise ValueError(f"{bvals.size} b-values / {bvecs.shape} b-vectors for {n_vol} volumes")
    shape = arr.shape[:3]
    if mask is None:
        mask = np.ones(shape, bool)
    mask = np.asarray(mask, bool)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {shape}")
    if str(fit_method).upper() not in FIT_METHODS:
        raise ValueError(f"unknown tensor fit method {fit_method!r}; choose one of {', '.join(FIT_METHODS)}")
    n_dw = int(np.count_nonzero(bvals > b0_threshold))
    if n_dw < 6 or n_vol < 7:
        raise ValueError(
            f"a tensor fit needs at least 6 diffusion-weighted volumes (b > {b0_threshold:g}) and 7 volumes "
            f"in all; got {n_dw} of {n_vol}"
        )

    # normalise b>0 directions (dipy checks unit length); b0 rows are zeroed
    bvecs = bvecs.copy()
    dw = bvals > b0_threshold
    norms = np.linalg.norm(bvecs[dw], axis=1)
    if np.any(norms < 1e-6):
        raise ValueError("a diffusion-weighted volume has a zero b-vector")
    bvecs[dw] /= norms[:, None]
    bvecs[~dw] = 0.0
    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=b0_threshold)

    model = TensorModel(gtab, fit_method=str(fit_method).upper())
    evals = np.zeros(shape + (3,), np.float64)
    evecs = np.zeros(shape + (3, 3), np.float64)
    if mask.any():
        # non-finite samples would make the whole (vectorised) WLS solve fail: treat them
        # as no signal, which dipy clips to its minimum signal
        signal = np.nan_to_num(np.asarray(arr[mask], np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        evals[mask], evecs[mask] = _fit_blocks(model, signal, max(1, int(workers)))
    bad = ~np.all(np.isfinite(evals), axis=-1) | ~np.all(np.isfinite(evecs), axis=(-2, -1))
    evals[bad] = 0.0
    evecs[bad] = 0.0

    from dipy.reconst.dti import axial_diffusivity, fractional_anisotropy, mean_diffusivity, radial_diffusivity

    with np.errstate(invalid="ignore", divide="ignore"):
        fa = np.nan_to_num(fractional_anisotropy(evals), nan=0.0, posinf=0.0, neginf=0.0)
    fa = np.clip(fa, 0.0, 1.0)
    md = mean_diffusivity(evals)
    rd = radial_diffusivity(evals)
    ad = axial_diffusivity(evals)
    v1 = evecs[..., :, 0]
    for m in (fa, md, rd, ad):
        m[~mask] = 0.0

    if affine is None:
        v1_world = v1
    else:
        v1_world = voxel_to_world(v1.reshape(-1, 3), affine).reshape(v1.shape)
    color_fa = np.clip(fa[..., None] * np.abs(v1_world), 0.0, 1.0)

    logger.info("fit_tensor(%s): %d voxels, median FA %.3f", fit_method, int(mask.sum()),
                float(np.median(fa[mask])) if mask.any() else float("nan"))
    return {
        "fa": fa.astype(np.float32),
        "md": md.astype(np.float32),
        "rd": rd.astype(np.float32),
        "ad": ad.astype(np.float32),
        "evals": evals.astype(np.float32),
        "evecs": evecs.astype(np.float32),
        "v1": v1.astype(np.float32),
        "tensor": tensor_components(evals, evecs).astype(np.float32),
        "color_fa": color_fa.astype(np.float32),
    }


def tensor_components(evals: np.ndarray, evecs: np.ndarray) -> np.ndarray:
    """The six distinct tensor elements from its eigen-decomposition.

    Parameters
    ----------
    evals : ndarray, (..., 3)
        Eigenvalues (mm²/s).
    evecs : ndarray, (..., 3, 3)
        Eigenvectors in columns (dipy layout), in voxel axes.

    Returns
    -------
    tensor : ndarray, (..., 6)
        Dxx, Dxy, Dyy, Dxz, Dyz, Dzz (dipy's lower-triangular order) in voxel axes, mm²/s.
    """
    from dipy.reconst.dti import lower_triangular, vec_val_vect

    return lower_triangular(vec_val_vect(evecs, evals))


def _fit_blocks(model, signal: np.ndarray, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of ``model.fit`` on (n_voxels, N) ``signal``, in ``workers`` threads."""
    if workers == 1 or len(signal) < 2 * workers:
        fit = model.fit(signal)
        return fit.evals, fit.evecs
    from concurrent.futures import ThreadPoolExecutor

    def run(block):
        fit = model.fit(block)
        return fit.evals, fit.evecs

    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(run, np.array_split(signal, workers)))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

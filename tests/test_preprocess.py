"""Denoising, Gibbs removal and brain masking on small synthetic data with known truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import fft as sp_fft
from scipy import ndimage

from csttool_nipype.config import DENOISE_METHODS
from csttool_nipype.science import denoise as denoise_mod
from csttool_nipype.science import preprocess
from csttool_nipype.science.denoise import denoise
from csttool_nipype.science.preprocess import brain_mask, gibbs_unring


# --------------------------------------------------------------------------- synthetic data
def _half_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1 - i / n
    r = np.sqrt(1 - z**2)
    phi = np.pi * (1 + 5**0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _tensor(l_par: float, l_perp: float, axis) -> np.ndarray:
    u = np.asarray(axis, float) / np.linalg.norm(axis)
    return l_perp * np.eye(3) + (l_par - l_perp) * np.outer(u, u)


def _signal(s0, D, bvals, bvecs):
    return s0 * np.exp(-bvals * np.einsum("ni,ij,nj->n", bvecs, D, bvecs))


def _acquisition(n_b0: int, n_dirs: int = 30, bval: float = 1000.0):
    bvals = np.r_[np.zeros(n_b0), np.full(n_dirs, bval)]
    bvecs = np.r_[np.zeros((n_b0, 3)), _half_sphere(n_dirs)]
    return bvals, bvecs


def _rician(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n1 = rng.standard_normal(clean.shape)
    n2 = rng.standard_normal(clean.shape)
    return np.hypot(clean + sigma * n1, sigma * n2).astype(np.float32)


def _brain_phantom(n_b0: int = 1, sigma: float = 30.0, seed: int = 0, shape=(22, 22, 14)):
    """Ellipsoidal 'brain' in a noisy background: GM, a fibre along x, an oblique fibre, CSF."""
    bvals, bvecs = _acquisition(n_b0)
    ii, jj, kk = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij")
    brain = (ii / 9.0) ** 2 + (jj / 9.0) ** 2 + (kk / 5.5) ** 2 <= 1
    labels = np.zeros(shape, int)
    labels[brain] = 1                                     # GM
    labels[brain & (np.abs(jj + 3) <= 1.5) & (np.abs(kk) <= 2)] = 2   # fibre along x
    labels[brain & (np.abs(ii - jj - 4) <= 1.5) & (jj > 0)] = 3      # oblique fibre
    labels[brain & (ii**2 + (jj - 4) ** 2 <= 4) & (np.abs(kk) <= 1)] = 4  # CSF
    tissues = {
        1: (1500.0, _tensor(0.9e-3, 0.75e-3, (0, 0, 1))),
        2: (1000.0, _tensor(1.7e-3, 0.3e-3, (1, 0, 0))),
        3: (1000.0, _tensor(1.7e-3, 0.3e-3, (1, 1, 1))),
        4: (3000.0, _tensor(3e-3, 3e-3, (0, 0, 1))),
    }
    clean = np.zeros(shape + (bvals.size,), np.float32)
    for lab, (s0, D) in tissues.items():
        clean[labels == lab] = _signal(s0, D, bvals, bvecs)
    noisy = _rician(clean, sigma, seed)
    return noisy, clean, bvals, bvecs, brain, labels


def _rmse(a, b, region):
    return float(np.sqrt(np.mean((np.asarray(a, float) - b)[region] ** 2)))


# --------------------------------------------------------------------------- denoise
def test_unknown_method_lists_choices():
    data = np.zeros((4, 4, 4, 8), np.float32)
    with pytest.raises(ValueError) as err:
        denoise(data, np.zeros(8), None, method="bm4d")
    for name in DENOISE_METHODS:
        assert name in str(err.value)


def test_none_is_a_float32_copy():
    noisy, _, bvals, bvecs, *_ = _brain_phantom()
    out, info = denoise(noisy.astype(np.float64), bvals, bvecs, method="none")
    assert out.dtype == np.float32 and np.array_equal(out, noisy)
    assert info == {"method": "none", "sigma_estimate": None, "parameters": {}}
    out2, _ = denoise(noisy, bvals, bvecs, method="none")
    assert out2 is not noisy


@pytest.mark.parametrize("method", ["patch2self", "nlmeans", "mppca"])
def test_denoising_lowers_error_and_is_deterministic(method):
    noisy, clean, bvals, bvecs, brain, _ = _brain_phantom(n_b0=3, sigma=40.0)
    out, info = denoise(noisy, bvals, bvecs, method=method)
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert info["method"] == method and isinstance(info["parameters"], dict)
    assert _rmse(out, clean, brain) < 0.9 * _rmse(noisy, clean, brain)
    again, _ = denoise(noisy.copy(), bvals, bvecs, method=method)
    np.testing.assert_array_equal(out, again)


@pytest.mark.parametrize("method", ["patch2self", "nlmeans", "mppca"])
def test_mask_leaves_outside_unchanged(method):
    noisy, _, bvals, bvecs, brain, _ = _brain_phantom(n_b0=1)
    out, _ = denoise(noisy, bvals, bvecs, method=method, mask=brain)
    np.testing.assert_array_equal(out[~brain], noisy[~brain])
    assert not np.array_equal(out[brain], noisy[brain])


def test_mppca_inside_mask_equals_whole_image():
    """With a mask, MP-PCA centres patches on the mask dilated by the patch radius, so every
    mask voxel averages exactly the patches it would without a mask."""
    noisy, _, bvals, bvecs, brain, _ = _brain_phantom(n_b0=1)
    full, _ = denoise(noisy, bvals, bvecs, method="mppca", workers=1)
    masked, _ = denoise(noisy, bvals, bvecs, method="mppca", mask=brain, workers=2)
    np.testing.assert_allclose(masked[brain], full[brain], rtol=0, atol=1e-6 * float(noisy.max()))
    np.testing.assert_array_equal(masked[~brain], noisy[~brain])


def _holds_final_mask_with_margin(data, bvals, margin=2):
    """The processing region must hold the final brain mask grown by ``margin`` voxels."""
    mask, _ = brain_mask(data, bvals)
    region = preprocess.processing_region(data, bvals)
    grown = ndimage.binary_dilation(mask, structure=np.ones((2 * margin + 1,) * 3, bool))
    assert region[grown].all(), f"{int((grown & ~region).sum())} voxels of the grown brain mask outside"
    return region


def test_processing_region_holds_the_brain_with_a_margin():
    noisy, _, bvals, *_ = _brain_phantom(n_b0=3, shape=(40, 40, 30))
    region = _holds_final_mask_with_margin(noisy, bvals)
    assert region.mean() < 0.9
    # no b0: nothing can be drawn, so nothing is skipped
    assert preprocess.processing_region(noisy[..., 3:], bvals[3:]).all()


def test_processing_region_on_real_scans(shared_data):
    from csttool_nipype.science.dwi_import import load_dwi

    for nifti in (shared_data / "philips_achieva_vanderbilt_dti15_b2000/nifti/601_WIP_dti_ax.nii.gz",
                  shared_data / "canon_galan_dti12_b1500/nifti/3000_DTI_PA-ortho_cl.nii.gz",
                  shared_data / "canon_galan_dti12_b1500/nifti/10000_SAG_DTI_PA-COR_20d_cl.nii.gz"):
        dwi = load_dwi(nifti, str(nifti).replace(".nii.gz", ".bval"), str(nifti).replace(".nii.gz", ".bvec"))
        region = _holds_final_mask_with_margin(dwi.data, dwi.bvals)
        assert region.mean() < 0.6   # the background is skipped


def test_nlmeans_sigma_from_background_matches_truth():
    noisy, _, bvals, bvecs, brain, _ = _brain_phantom(sigma=30.0, shape=(26, 26, 16))
    _, info = denoise(noisy, bvals, bvecs, method="nlmeans")
    assert info["parameters"]["sigma_source"] == "piesno"
    assert info["sigma_estimate"] == pytest.approx(30.0, rel=0.1)
    assert info["parameters"]["rician"] is True


def test_nlmeans_sigma_without_background_uses_local_pca():
    """Cropped inside the brain (no noise-only background): PIESNO must not be trusted."""
    noisy, clean, bvals, bvecs, brain, _ = _brain_phantom(sigma=30.0, shape=(26, 26, 16))
    inner = (slice(8, 18), slice(8, 18), slice(5, 11))
    assert brain[inner].all()
    out, info = denoise(noisy[inner], bvals, bvecs, method="nlmeans")
    assert info["parameters"]["sigma_source"] == "local_pca"
    assert info["sigma_estimate"] == pytest.approx(30.0, rel=0.25)
    assert _rmse(out, clean[inner], slice(None)) < _rmse(noisy[inner], clean[inner], slice(None))


def test_mppca_sigma_and_patch_radius():
    noisy, _, bvals, bvecs, brain, _ = _brain_phantom(sigma=30.0)
    _, info = denoise(noisy, bvals, bvecs, method="mppca", mask=brain)
    assert info["sigma_estimate"] == pytest.approx(30.0, rel=0.2)
    assert denoise_mod._mppca_patch_radius(31) == 2  # 125 > 31
    assert denoise_mod._mppca_patch_radius(124) == 2
    assert denoise_mod._mppca_patch_radius(125) == 3  # 343 > 125
    assert denoise_mod._mppca_patch_radius(6) == 2


def test_patch2self_b0_handling():
    # one b0: left untouched
    noisy, _, bvals, bvecs, *_ = _brain_phantom(n_b0=1)
    out, info = denoise(noisy, bvals, bvecs, method="patch2self")
    np.testing.assert_array_equal(out[..., 0], noisy[..., 0])
    assert info["parameters"]["b0_denoising"] is False
    # three b0s: denoised
    noisy3, clean3, bvals3, bvecs3, brain, _ = _brain_phantom(n_b0=3)
    out3, info3 = denoise(noisy3, bvals3, bvecs3, method="patch2self")
    assert info3["parameters"]["b0_denoising"] is True
    assert _rmse(out3[..., :3], clean3[..., :3], brain) < _rmse(noisy3[..., :3], clean3[..., :3], brain)
    # no b0 at all
    out0, _ = denoise(noisy[..., 1:], bvals[1:], bvecs[1:], method="patch2self")
    assert out0.shape == noisy[..., 1:].shape
    # fewer than 2 diffusion-weighted volumes
    with pytest.raises(ValueError, match="at least 2 diffusion-weighted"):
        denoise(noisy[..., :2], bvals[:2], bvecs[:2], method="patch2self")


def test_patch2self_constraint_reproduces_any_tensor_exactly():
    """Noise-free single tensors of random shape and orientation: the constrained
    regression predicts every volume exactly (it is exact on the tensor model)."""
    bvals, bvecs = _acquisition(1)
    rng = np.random.default_rng(3)
    n_vox = 300
    data = np.empty((n_vox, 1, 1, bvals.size), np.float32)
    for v in range(n_vox):
        axis = rng.normal(size=3)
        D = _tensor(rng.uniform(1.2e-3, 1.8e-3), rng.uniform(0.3e-3, 0.8e-3), axis)
        data[v, 0, 0] = _signal(rng.uniform(800, 1600), D, bvals, bvecs)
    out, info = denoise(data, bvals, bvecs, method="patch2self")
    assert info["parameters"]["tensor_constraint"] is True
    assert info["parameters"]["domain"] == "log"
    np.testing.assert_allclose(out, data, rtol=2e-4)


def test_patch2self_constraint_removes_population_bias():
    """Noisy data, 95 % of fibres along x, 5 % oblique: plain Patch2Self pulls the oblique
    voxels' profile towards the common one; the constrained variant does not."""
    bvals, bvecs = _acquisition(1)
    n_common, n_rare = 2000, 100
    data = np.empty((n_common + n_rare, 1, 1, bvals.size), np.float32)
    for v in range(n_common + n_rare):
        axis = (1, 0, 0) if v < n_common else (0.2, 0.5, 1.0)
        data[v, 0, 0] = _signal(1000.0, _tensor(1.7e-3, 0.3e-3, axis), bvals, bvecs)
    noisy = _rician(data, 30.0, seed=1)
    rare = slice(n_common, None)
    truth = data[rare].mean(axis=0)

    def worst_bias(out):
        return float(np.max(np.abs(out[rare].mean(axis=0) - truth) / truth))

    constrained, _ = denoise(noisy, bvals, bvecs, method="patch2self")
    plain, info = denoise(noisy, bvals, bvecs, method="patch2self", p2s_tensor_constraint=False)
    assert info["parameters"]["tensor_constraint"] is False
    assert worst_bias(constrained) < 0.015
    assert worst_bias(plain) > 0.03


def test_patch2self_sigma_estimate_is_residual_based():
    noisy, _, bvals, bvecs, brain, _ = _brain_phantom(sigma=30.0)
    _, info = denoise(noisy, bvals, bvecs, method="patch2self", mask=brain)
    assert 20.0 < info["sigma_estimate"] < 45.0


# --------------------------------------------------------------------------- Gibbs
def _ringing_disk(n: int = 48, oversample: int = 4, n_slices: int = 3):
    """A bright disk on a dim background; truncated k-space (ringing) and ideal versions.

    The ideal image is the fine image block-averaged to the target grid (no ringing, same
    resolution); the ringing image keeps the central n x n k-space samples of the fine
    image (the acquisition), magnitude.
    """
    m = n * oversample
    c = (m - 1) / 2
    yy, xx = np.mgrid[0:m, 0:m]
    fine = np.where((xx - c) ** 2 + (yy - c - 7.3) ** 2 <= (0.3 * m) ** 2, 1000.0, 100.0)
    ideal = fine.reshape(n, oversample, n, oversample).mean(axis=(1, 3))
    spec = sp_fft.fftshift(sp_fft.fft2(fine))
    lo = (m - n) // 2
    crop = spec[lo:lo + n, lo:lo + n] / oversample**2
    # sample positions: average over each block (shift by half a fine pixel)
    shift = np.exp(-2j * np.pi * (np.arange(n) - n // 2) * (oversample - 1) / 2 / m)
    crop = crop * shift[:, None] * shift[None, :]
    ringing = np.abs(sp_fft.ifft2(sp_fft.ifftshift(crop)))
    vol_r = np.repeat(ringing[:, :, None], n_slices, axis=2).astype(np.float32)
    vol_i = np.repeat(ideal[:, :, None], n_slices, axis=2).astype(np.float32)
    edge = np.abs(ndimage.sobel(ideal, 0)) + np.abs(ndimage.sobel(ideal, 1)) > 0
    band = ndimage.binary_dilation(edge, iterations=4) & ~ndimage.binary_dilation(edge, iterations=1)
    return vol_r, vol_i, np.repeat(band[:, :, None], n_slices, axis=2)


def test_gibbs_unring_reduces_ringing_energy():
    ringing, ideal, band = _ringing_disk()
    before = ringing.copy()
    out = gibbs_unring(ringing, slice_axis=2)
    np.testing.assert_array_equal(ringing, before)  # input untouched
    assert out.shape == ringing.shape and out.dtype == np.float32
    e_before = np.sum((ringing - ideal)[band] ** 2)
    e_after = np.sum((out - ideal)[band] ** 2)
    assert e_after < 0.5 * e_before
    # 4D input, volume by volume
    out4 = gibbs_unring(np.stack([ringing, 2 * ringing], axis=-1), slice_axis=2)
    np.testing.assert_allclose(out4[..., 1], 2 * out, rtol=1e-4, atol=1e-2)


def test_gibbs_unring_rejects_bad_axis():
    with pytest.raises(ValueError, match="slice_axis"):
        gibbs_unring(np.zeros((8, 8, 8), np.float32), slice_axis=3)


# --------------------------------------------------------------------------- mask
def test_brain_mask_recovers_brain_with_bright_csf_and_drops_other_blobs():
    noisy, _, bvals, bvecs, brain, labels = _brain_phantom(n_b0=2, sigma=30.0, shape=(26, 26, 18))
    data = noisy.copy()
    # a disconnected bright object outside the brain (e.g. an eye / fat)
    data[1:4, 1:4, 1:4, :2] += 2500.0
    # a dark pocket inside the brain (signal void) that must be filled
    data[11:13, 9:11, 8:10, :2] = 0.0
    mask, mean_b0 = brain_mask(data, bvals)
    assert mask.dtype == bool and mean_b0.shape == brain.shape
    np.testing.assert_allclose(mean_b0, data[..., :2].mean(-1), rtol=1e-6)
    dice = 2 * np.sum(mask & brain) / (mask.sum() + brain.sum())
    assert dice >= 0.95
    assert not mask[1:4, 1:4, 1:4].any()
    assert mask[11:13, 9:11, 8:10].all()


def test_brain_mask_needs_a_b0():
    noisy, _, bvals, *_ = _brain_phantom()
    with pytest.raises(ValueError, match="no b0"):
        brain_mask(noisy[..., 1:], bvals[1:])

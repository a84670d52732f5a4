"""Acceptance tests of preprocessing and tensor fitting on the 3 mm digital phantom.

Every number is compared with the phantom's ground truth (``Phantom.truth``, the
noise-free ``dwi_clean`` or the known ``motion``). Phantoms and expensive results are
built once per module; the whole file takes about one to two minutes on 2 cores.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from csttool_nipype.science.gradients import reorient_array, voxel_to_world, world_to_voxel
from csttool_nipype.science.motion import apply_motion, motion_correct
from csttool_nipype.sims.model import PhantomSpec
from csttool_nipype.sims.phantom import make_phantom
from csttool_nipype.science.denoise import denoise
from csttool_nipype.science.preprocess import brain_mask, gibbs_unring
from csttool_nipype.science.tensor import fit_tensor

pytestmark = pytest.mark.slow

STRUCTURES = ("cst_left", "cst_right", "callosum")


def _core(truth: dict, structure: str) -> np.ndarray:
    """Core voxels of a structure: >= 90 % of the voxel is that single compartment.

    Only there is the phantom's truth FA the FA of the tensor that generated the signal
    (in partial-volume voxels the truth is the FA of the fraction-weighted mean tensor,
    which a single-tensor fit of the mixed signal does not return), so only there must
    a DTI fit recover it.
    """
    return truth[f"f_{structure}"] >= 0.9


def _pipeline(ph):
    """Brain mask -> Patch2Self (inside the mask) -> WLS tensor, as the workflow runs it."""
    mask, _ = brain_mask(ph.dwi, ph.bvals)
    den, info = denoise(ph.dwi, ph.bvals, ph.bvecs_voxel, method="patch2self", mask=mask)
    ten = fit_tensor(den, ph.bvals, ph.bvecs_voxel, mask, fit_method="WLS", affine=ph.affine)
    return {"mask": mask, "denoised": den, "info": info, "tensor": ten}


@pytest.fixture(scope="module")
def base():
    return make_phantom(PhantomSpec())  # 3 mm, 30 directions b=1000, 1 b0, SNR 30, RAS


@pytest.fixture(scope="module")
def base_result(base):
    return _pipeline(base)


# --------------------------------------------------------------------------- tensor / FA
def test_fa_recovered_in_cst_and_callosum(base, base_result):
    fa = base_result["tensor"]["fa"]
    md = base_result["tensor"]["md"]
    for name in STRUCTURES:
        core = _core(base.truth, name) & base_result["mask"]
        assert core.sum() > 100, name
        assert abs(fa[core].mean() - base.truth["fa"][core].mean()) < 0.05, name
        # MD in mm^2/s within 5 %
        assert md[core].mean() == pytest.approx(base.truth["md"][core].mean(), rel=0.05), name


def test_principal_direction_in_world_axes(base, base_result):
    """Callosum runs left-right: colour FA red; v1 (voxel axes) -> world matches truth."""
    ten = base_result["tensor"]
    core = _core(base.truth, "callosum") & base_result["mask"]
    rgb = ten["color_fa"][core].mean(axis=0)
    assert rgb[0] > 2 * max(rgb[1], rgb[2])
    v1w = voxel_to_world(ten["v1"][core], base.affine)
    cos = np.abs(np.sum(v1w * base.truth["v1_world"][core], axis=1))
    assert np.median(cos) > np.cos(np.deg2rad(10))


def test_brain_mask_dice(base, base_result):
    est, true = base_result["mask"], base.truth["brain_mask"]
    dice = 2 * np.sum(est & true) / (est.sum() + true.sum())
    assert dice >= 0.95


# --------------------------------------------------------------------------- denoising
def test_denoising_lowers_error_against_noise_free_signal(base, base_result):
    """RMSE(denoised - clean) < RMSE(noisy - clean) inside the true brain.

    Patch2Self runs on the whole phantom. MP-PCA and NLMeans cost seconds per 10^4
    voxels, so they run on a 24 x 28 x 20 block through the centre of the brain (all
    volumes), with the true brain mask of that block.
    """
    brain = base.truth["brain_mask"]
    noisy_rmse = np.sqrt(np.mean((base.dwi - base.dwi_clean)[brain] ** 2))
    den = base_result["denoised"]
    assert np.sqrt(np.mean((den - base.dwi_clean)[brain] ** 2)) < noisy_rmse

    idx = np.argwhere(brain)
    c = ((idx.min(0) + idx.max(0)) // 2).astype(int)
    block = tuple(slice(ci - h, ci + h) for ci, h in zip(c, (12, 14, 10)))
    data, clean, mask = base.dwi[block], base.dwi_clean[block], brain[block]
    before = np.sqrt(np.mean((data - clean)[mask] ** 2))
    for method in ("mppca", "nlmeans"):
        out, info = denoise(data, base.bvals, base.bvecs_voxel, method=method, mask=mask)
        after = np.sqrt(np.mean((out - clean)[mask] ** 2))
        assert after < before, method
        assert info["sigma_estimate"] == pytest.approx(base.sigma, rel=0.25), method


# --------------------------------------------------------------------------- motion
@pytest.fixture(scope="module")
def moving():
    ph = make_phantom(PhantomSpec(motion_deg=5.0, motion_mm=2.0))
    return ph, motion_correct(ph.dwi, ph.affine, ph.bvals, ph.bvecs_voxel)


def _angle_deg(r: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


def test_motion_rotations_recovered(moving):
    ph, (corrected, _, transforms, report) = moving
    assert max(_angle_deg(m[:3, :3]) for m in ph.motion) > 3.0  # the test has teeth
    for n in range(len(ph.bvals)):
        assert _angle_deg(transforms[n][:3, :3] @ ph.motion[n][:3, :3].T) < 1.0, n
    assert report["reference_volume"] == 0
    assert report["max_fd_mm"] > 0


def test_bvec_rotation_lowers_fa_error(moving):
    """Noise-free moved series, corrected with the transforms estimated from the noisy one:
    FA error vs truth is lowest with b-vectors rotated by R^T (this module's convention),
    higher unrotated, and higher still rotated the wrong way (R)."""
    ph, (_, bvecs_rot, transforms, _) = moving
    clean = apply_motion(ph.dwi_clean, ph.affine, transforms)
    brain = ph.truth["brain_mask"]
    g_world = voxel_to_world(ph.bvecs_voxel, ph.affine)
    wrong = world_to_voxel(np.array([t[:3, :3] @ g for t, g in zip(transforms, g_world)]), ph.affine)

    def fa_error(bvecs):
        fa = fit_tensor(clean, ph.bvals, bvecs, brain)["fa"]
        return float(np.mean(np.abs(fa - ph.truth["fa"])[brain]))

    err_rot, err_unrot, err_wrong = fa_error(bvecs_rot), fa_error(ph.bvecs_voxel), fa_error(wrong)
    assert err_rot < err_unrot < err_wrong


# --------------------------------------------------------------------------- Gibbs
def test_gibbs_removal_reduces_ringing_outside_brain_edge():
    """Noise-free phantom with and without k-space truncation (ringing in stored axes 0, 1).

    Ringing energy = energy of the difference from the ringing-free image in the band
    1-3 voxels (in-plane) outside the true brain edge: there the ringing-free image is 0
    (no tissue), so whatever the ringing image shows there is ringing. Inside the brain
    the ringing-free image is point-sampled (sharper than any band-limited image), so it
    is no reference for ringing. 16 central slices, a b0 and a DW volume keep it fast
    (ringing and its removal are per slice).
    """
    spec = PhantomSpec(snr=None)
    ringing = make_phantom(PhantomSpec(snr=None, gibbs=True))
    ideal = make_phantom(spec)
    z = slice(ideal.dwi.shape[2] // 2 - 8, ideal.dwi.shape[2] // 2 + 8)
    vols = [0, 1]
    r, i = ringing.dwi_clean[:, :, z][..., vols], ideal.dwi_clean[:, :, z][..., vols]
    brain = ideal.truth["brain_mask"][:, :, z]
    inplane = ndimage.generate_binary_structure(3, 1)
    inplane[:, :, 0] = inplane[:, :, 2] = False
    band = ndimage.binary_dilation(brain, inplane, iterations=3) & ~ndimage.binary_dilation(brain, inplane, iterations=1)
    unrung = gibbs_unring(r, slice_axis=2)
    energy_before = np.sum((r - i)[band] ** 2)
    energy_after = np.sum((unrung - i)[band] ** 2)
    assert energy_after < 0.9 * energy_before


# --------------------------------------------------------------------------- orientation
@pytest.mark.parametrize("orientation", ["LAS", "PSR"])
def test_fa_independent_of_storage_orientation(base, base_result, orientation):
    ph = make_phantom(PhantomSpec(orientation=orientation))
    res = _pipeline(ph)
    fa_ras, aff = reorient_array(res["tensor"]["fa"], ph.affine, "RAS")
    np.testing.assert_allclose(aff, base.affine, atol=1e-6)
    mask = base_result["mask"]
    ref = base_result["tensor"]["fa"]
    assert np.corrcoef(fa_ras[mask], ref[mask])[0, 1] >= 0.99
    # colour FA is built in world axes, so it must agree too
    rgb_ras, _ = reorient_array(res["tensor"]["color_fa"], ph.affine, "RAS")
    rgb_ref = base_result["tensor"]["color_fa"]
    for ch in range(3):
        assert np.corrcoef(rgb_ras[..., ch][mask], rgb_ref[..., ch][mask])[0, 1] >= 0.99

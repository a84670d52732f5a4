"""Tensor fit on synthetic noise-free tensors with known eigen-systems."""

from __future__ import annotations

import numpy as np
import pytest

from csttool_nipype.science.gradients import reorient_array
from csttool_nipype.reports.figures import tensor_qc_png
from csttool_nipype.science.tensor import fit_tensor


def _directions(n: int, seed: int = 0) -> np.ndarray:
    """n unit vectors spread on the sphere (Fibonacci lattice, deterministic)."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _acquisition(n_dirs=30, n_b0=2, bval=1000.0):
    bvals = np.r_[np.zeros(n_b0), np.full(n_dirs, bval)]
    bvecs = np.r_[np.zeros((n_b0, 3)), _directions(n_dirs)]
    return bvals, bvecs


def _signal(D: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, s0: float = 1000.0) -> np.ndarray:
    return s0 * np.exp(-bvals * np.einsum("ni,ij,nj->n", bvecs, D, bvecs))


def _tensor(evals, v1) -> np.ndarray:
    v1 = np.asarray(v1, float) / np.linalg.norm(v1)
    helper = np.array([1.0, 0, 0]) if abs(v1[0]) < 0.9 else np.array([0, 1.0, 0])
    v2 = np.cross(v1, helper)
    v2 /= np.linalg.norm(v2)
    v3 = np.cross(v1, v2)
    E = np.stack([v1, v2, v3], axis=1)
    return E @ np.diag(evals) @ E.T


def _fa(ev):
    ev = np.asarray(ev, float)
    return np.sqrt(0.5 * ((ev[0] - ev[1]) ** 2 + (ev[1] - ev[2]) ** 2 + (ev[2] - ev[0]) ** 2) / (ev**2).sum())


@pytest.fixture
def block():
    """4x3x2 block: left half a fibre along voxel axis 0, right half along (0,1,1)/sqrt2; one isotropic voxel."""
    bvals, bvecs = _acquisition()
    shape = (4, 3, 2)
    evals_fib = (1.7e-3, 0.3e-3, 0.3e-3)
    data = np.zeros(shape + (bvals.size,), np.float32)
    truth_v1 = np.zeros(shape + (3,))
    truth_evals = np.zeros(shape + (3,))
    for idx in np.ndindex(shape):
        if idx == (3, 2, 1):
            ev, v1 = (0.9e-3,) * 3, (1.0, 0, 0)
        elif idx[0] < 2:
            ev, v1 = evals_fib, (1.0, 0, 0)
        else:
            ev, v1 = evals_fib, (0, 1.0, 1.0)
        data[idx] = _signal(_tensor(ev, v1), bvals, bvecs)
        truth_v1[idx] = np.asarray(v1) / np.linalg.norm(v1)
        truth_evals[idx] = ev
    return data, bvals, bvecs, truth_evals, truth_v1


def test_scalar_maps_match_analytic_values(block):
    data, bvals, bvecs, tev, tv1 = block
    mask = np.ones(data.shape[:3], bool)
    out = fit_tensor(data, bvals, bvecs, mask)
    for key in ("fa", "md", "rd", "ad"):
        assert out[key].shape == data.shape[:3] and out[key].dtype == np.float32
    assert out["evals"].shape == data.shape[:3] + (3,)
    assert out["evecs"].shape == data.shape[:3] + (3, 3)
    fa_true = np.apply_along_axis(_fa, -1, tev)
    np.testing.assert_allclose(out["fa"], fa_true, atol=1e-4)
    np.testing.assert_allclose(out["md"], tev.mean(-1), rtol=1e-4)
    np.testing.assert_allclose(out["ad"], tev[..., 0], rtol=1e-4)
    np.testing.assert_allclose(out["rd"], tev[..., 1:].mean(-1), rtol=1e-4)
    np.testing.assert_allclose(out["evals"], tev, rtol=1e-3, atol=1e-8)
    # v1 (sign-free) in voxel axes, and it is the first evecs column
    aniso = fa_true > 0.1
    dots = np.abs(np.sum(out["v1"] * tv1, axis=-1))
    assert np.all(dots[aniso] > 0.9999)
    np.testing.assert_array_equal(out["v1"], out["evecs"][..., :, 0])
    # the six elements are those of the tensors the signal was made from (voxel axes)
    truth = np.array([_tensor(ev, v if np.any(v) else (1.0, 0, 0))
                      for ev, v in zip(tev.reshape(-1, 3), tv1.reshape(-1, 3))]).reshape(tev.shape[:3] + (3, 3))
    lower = truth[..., [0, 0, 1, 0, 1, 2], [0, 1, 1, 2, 2, 2]]
    np.testing.assert_allclose(out["tensor"], lower, rtol=1e-3, atol=1e-8)


def test_zero_outside_mask_and_degenerate_voxels(block):
    data, bvals, bvecs, *_ = block
    data = data.copy()
    data[1, 1, 1] = 0.0  # no signal at all inside the mask
    data[0, 0, 0, 5] = np.nan
    mask = np.ones(data.shape[:3], bool)
    mask[0, 2, :] = False
    out = fit_tensor(data, bvals, bvecs, mask)
    for key in ("fa", "md", "rd", "ad"):
        assert np.all(np.isfinite(out[key]))
        assert np.all(out[key][~mask] == 0)
    assert np.all((out["fa"] >= 0) & (out["fa"] <= 1))
    assert np.all(out["color_fa"][~mask] == 0)
    assert np.all(np.isfinite(out["color_fa"]))


@pytest.mark.parametrize("method", ["WLS", "OLS", "NLLS"])
def test_fit_methods_and_determinism(block, method):
    data, bvals, bvecs, tev, _ = block
    mask = np.ones(data.shape[:3], bool)
    a = fit_tensor(data, bvals, bvecs, mask, fit_method=method)
    b = fit_tensor(data.copy(), bvals, bvecs, mask, fit_method=method)
    threaded = fit_tensor(data, bvals, bvecs, mask, fit_method=method, workers=3)  # blocks of voxels
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key], threaded[key])
    np.testing.assert_allclose(a["md"], tev.mean(-1), rtol=1e-3)


def test_color_fa_uses_world_axes():
    """Fibre along world A-P stored as PSR: v1 is along voxel axis 0 but colour is green."""
    bvals, bvecs_world = _acquisition()
    D = _tensor((1.7e-3, 0.3e-3, 0.3e-3), (0, 1.0, 0))  # world A-P
    shape = (3, 3, 3)
    data_ras = np.broadcast_to(_signal(D, bvals, bvecs_world), shape + (bvals.size,)).astype(np.float32)
    ras = np.diag([3.0, 3.0, 3.0, 1.0])
    out_ras = fit_tensor(data_ras, bvals, bvecs_world, None, affine=ras)
    # PSR storage: voxel axes (i, j, k) point to world (-y, -z, +x)
    psr = np.array([[0, 0, 3.0, 0], [-3.0, 0, 0, 0], [0, -3.0, 0, 0], [0, 0, 0, 1]])
    R = psr[:3, :3] / 3.0
    bvecs_psr = bvecs_world @ R  # world -> voxel
    out_psr = fit_tensor(data_ras, bvals, bvecs_psr, None, affine=psr)
    fa = out_ras["fa"][1, 1, 1]
    np.testing.assert_allclose(out_ras["color_fa"][1, 1, 1], [0, fa, 0], atol=1e-5)
    np.testing.assert_allclose(out_psr["color_fa"][1, 1, 1], [0, fa, 0], atol=1e-5)
    assert abs(out_psr["v1"][1, 1, 1, 0]) > 0.9999  # voxel axis 0 = world -y
    # without an affine, voxel axes are taken as world axes: red
    out_noaff = fit_tensor(data_ras, bvals, bvecs_psr, None)
    np.testing.assert_allclose(out_noaff["color_fa"][1, 1, 1], [fa, 0, 0], atol=1e-5)


def test_rejects_bad_input(block):
    data, bvals, bvecs, *_ = block
    with pytest.raises(ValueError, match="WLS"):
        fit_tensor(data, bvals, bvecs, None, fit_method="magic")
    with pytest.raises(ValueError, match="6 diffusion-weighted"):
        fit_tensor(data[..., :6], bvals[:6], bvecs[:6], None)
    with pytest.raises(ValueError, match="mask shape"):
        fit_tensor(data, bvals, bvecs, np.ones((2, 2, 2), bool))


def test_qc_png(tmp_path, block):
    data, bvals, bvecs, *_ = block
    mask = np.ones(data.shape[:3], bool)
    out = fit_tensor(data, bvals, bvecs, mask)
    png = tensor_qc_png(out["fa"], out["color_fa"], mask, tmp_path / "qc" / "dti.png", title="sub-01")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # with an affine (LAS storage) the maps are shown in RAS order
    las = np.diag([-3.0, 3.0, 3.0, 1.0])
    png2 = tensor_qc_png(out["fa"], out["color_fa"], None, tmp_path / "dti_las.png", affine=las)
    assert png2.stat().st_size > 1000


def test_reorient_array_roundtrip_for_fa(block):
    """Sanity check of the helper the phantom tests rely on: LAS -> RAS flips axis 0."""
    data, bvals, bvecs, *_ = block
    fa = fit_tensor(data, bvals, bvecs, None)["fa"]
    las = np.diag([-3.0, 3.0, 3.0, 1.0])
    ras_fa, ras_aff = reorient_array(fa, las, "RAS")
    np.testing.assert_array_equal(ras_fa, fa[::-1])
    assert ras_aff[0, 0] > 0

"""Rigid motion correction on an analytic head moved by known rigid transforms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from csttool_nipype.science import motion
from csttool_nipype.science.gradients import voxel_to_world
from csttool_nipype.science.motion import (
    apply_motion,
    framewise_displacement,
    motion_correct,
    motion_parameters,
    rotate_bvecs,
)


# --------------------------------------------------------------------------- analytic head
def _head(pts: np.ndarray, contrast: str) -> np.ndarray:
    """Smooth analytic head at world points ``pts`` (..., 3) mm.

    ``contrast="b0"``: bright ventricles (CSF); ``"dw"``: dark ventricles, brighter
    white matter - a different contrast, as between b0 and diffusion-weighted images.
    """
    x, y, z = pts[..., 0], pts[..., 1], pts[..., 2]
    r = np.sqrt((x / 45) ** 2 + (y / 55) ** 2 + (z / 40) ** 2)
    brain = 1 / (1 + np.exp((r - 1) * 30))
    rw = np.sqrt((x / 30) ** 2 + (y / 40) ** 2 + ((z - 5) / 25) ** 2)
    wm = 1 / (1 + np.exp((rw - 1) * 15))
    vent = sum(np.exp(-(((x - s * 8) / 5) ** 2 + (y / 15) ** 2 + ((z - 8) / 6) ** 2)) for s in (-1, 1))
    blobs = np.exp(-(((x - 20) / 6) ** 2 + ((y + 25) / 8) ** 2 + ((z + 10) / 6) ** 2)) + 0.7 * np.exp(
        -(((x + 15) / 7) ** 2 + ((y - 30) / 6) ** 2 + ((z - 15) / 5) ** 2)
    )
    w = (1.0, 0.6, 2.0, 0.3) if contrast == "b0" else (0.5, 0.9, 0.05, 0.5)
    return 1000 * (w[0] * brain + w[1] * wm * brain + w[2] * vent + w[3] * blobs)


def _grid_points(shape, affine):
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _rigid(rot_deg, trans_mm, centre):
    m = np.eye(4)
    r = Rotation.from_euler("xyz", rot_deg, degrees=True).as_matrix()
    m[:3, :3] = r
    m[:3, 3] = centre - r @ centre + np.asarray(trans_mm, float)
    return m


def _moved(shape, affine, T, contrast):
    """Volume showing the head moved by T: the reference point x appears at T x, so the
    value at grid point y is the reference head at T^-1 y (the phantom's convention)."""
    pts = _grid_points(shape, affine)
    ti = np.linalg.inv(T)
    return _head(pts @ ti[:3, :3].T + ti[:3, 3], contrast).astype(np.float32)


def _angle_deg(r: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


@pytest.fixture(scope="module")
def series():
    """3 mm LAS grid (negative-determinant affine), 2 b0 + 6 DW volumes with known motion."""
    shape = (40, 46, 36)
    affine = np.diag([-3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [58.5, -67.5, -52.5]
    centre = np.array([2.0, -3.0, 1.0])  # head centre, world mm
    rng = np.random.default_rng(7)
    bvals = np.r_[0.0, 1000.0, 1000.0, 0.0, 1000.0, 1000.0, 1000.0, 1000.0]
    dirs = rng.normal(size=(8, 3))
    bvecs_world = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    bvecs_world[bvals == 0] = 0
    bvecs_voxel = bvecs_world @ (affine[:3, :3] / 3.0)  # world -> voxel (orthonormal part)
    truth = [np.eye(4)]
    for _ in range(1, 8):
        truth.append(_rigid(rng.uniform(-4, 4, 3), rng.uniform(-2, 2, 3), centre))
    truth = np.array(truth)
    rng_noise = np.random.default_rng(8)
    data = np.stack([
        _moved(shape, affine, truth[n], "b0" if bvals[n] == 0 else "dw") for n in range(8)
    ], axis=-1)
    data = np.abs(data + rng_noise.normal(0, 15.0, data.shape)).astype(np.float32)
    result = motion_correct(data, affine, bvals, bvecs_voxel)
    return {"data": data, "affine": affine, "bvals": bvals, "bvecs_voxel": bvecs_voxel,
            "bvecs_world": bvecs_world, "truth": truth, "result": result, "shape": shape}


def test_recovers_known_transforms(series):
    corrected, bvecs_rot, transforms, report = series["result"]
    truth, affine = series["truth"], series["affine"]
    assert transforms.shape == (8, 4, 4)
    np.testing.assert_array_equal(transforms[0], np.eye(4))
    centre = motion._grid_centre(series["shape"], affine)
    for n in range(8):
        assert _angle_deg(transforms[n][:3, :3] @ truth[n][:3, :3].T) < 0.3, n
        disp = (transforms[n] - truth[n]) @ np.r_[centre, 1.0]
        assert np.linalg.norm(disp[:3]) < 0.3, n


def test_corrected_volumes_match_reference_pose(series):
    corrected, *_ = series["result"]
    data, affine, bvals, shape = series["data"], series["affine"], series["bvals"], series["shape"]
    np.testing.assert_array_equal(corrected[..., 0], data[..., 0])  # reference copied
    pts = _grid_points(shape, affine)
    inner = np.sqrt(((pts - [2, -3, 1]) / [40, 50, 35]) ** 2).sum(-1) < 1
    for n in (3, 5):
        ref_pose = _head(pts, "b0" if bvals[n] == 0 else "dw")
        before = np.corrcoef(data[..., n][inner], ref_pose[inner])[0, 1]
        after = np.corrcoef(corrected[..., n][inner], ref_pose[inner])[0, 1]
        assert after > 0.99 and after > before


def test_bvecs_rotated_into_reference_frame(series):
    _, bvecs_rot, transforms, _ = series["result"]
    truth, affine = series["truth"], series["affine"]
    g_ref_world = voxel_to_world(bvecs_rot, affine)
    for n in range(8):
        expected = truth[n][:3, :3].T @ series["bvecs_world"][n]
        np.testing.assert_allclose(g_ref_world[n], expected, atol=0.01)


def test_report(series):
    *_, transforms, report = series["result"]
    assert report["reference_volume"] == 0
    assert len(report["rotation_deg"]) == 8 and len(report["translation_mm"]) == 8
    fd = np.asarray(report["framewise_displacement_mm"])
    assert fd.shape == (8,) and fd[0] == 0 and np.all(fd[1:] > 0)
    assert report["mean_fd_mm"] == pytest.approx(fd[1:].mean())
    assert report["max_fd_mm"] == pytest.approx(fd.max())


def test_deterministic(series):
    again = motion_correct(series["data"], series["affine"], series["bvals"], series["bvecs_voxel"])
    for a, b in zip(series["result"][:3], again[:3]):
        np.testing.assert_array_equal(a, b)


def test_rotate_bvecs_sign_convention():
    """Head turned +90 deg about z (x -> y): the gradient applied along scanner y runs
    along the reference head's x axis, so g_ref = R^T g = x."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    out = rotate_bvecs(np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), np.stack([T, T]), np.eye(4))
    np.testing.assert_allclose(out, [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], atol=1e-12)
    # same in an LAS-stored image: voxel axis 0 points to world -x
    las = np.diag([-2.0, 2.0, 2.0, 1.0])
    out_las = rotate_bvecs(np.array([[0.0, 1.0, 0.0]]), T[None], las)
    np.testing.assert_allclose(out_las, [[-1.0, 0.0, 0.0]], atol=1e-12)


def test_motion_parameters_and_fd():
    c = np.array([10.0, -5.0, 3.0])
    transforms = np.stack([
        np.eye(4),
        _rigid([0, 0, 0], [1.0, 0, 0], c),          # 1 mm along x
        _rigid([np.degrees(0.01), 0, 0], [1.0, 0, 0], c),  # + 0.01 rad about x (about c)
    ])
    rot, trans = motion_parameters(transforms, c)
    np.testing.assert_allclose(trans, [[0, 0, 0], [1, 0, 0], [1, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(rot[2], [np.degrees(0.01), 0, 0], atol=1e-9)
    fd = framewise_displacement(rot, trans)
    np.testing.assert_allclose(fd, [0.0, 1.0, 50.0 * 0.01], atol=1e-9)


def test_apply_motion_identity_and_shape_checks():
    data = np.random.default_rng(0).random((6, 5, 4, 2)).astype(np.float32)
    out = apply_motion(data, np.eye(4), np.tile(np.eye(4), (2, 1, 1)))
    np.testing.assert_array_equal(out, data)
    shift = np.tile(np.eye(4), (2, 1, 1))
    shift[1, 0, 3] = 1.0  # volume 1: reference point x appears at x + 1 voxel
    out = apply_motion(data, np.eye(4), shift, order=1)
    np.testing.assert_allclose(out[:-1, :, :, 1], data[1:, :, :, 1], rtol=1e-6)
    with pytest.raises(ValueError):
        apply_motion(data, np.eye(4), np.tile(np.eye(4), (3, 1, 1)))
    with pytest.raises(ValueError):
        motion_correct(data, np.eye(4), np.zeros(3), np.zeros((3, 3)))


def test_workers_give_identical_results(series):
    again = motion_correct(series["data"], series["affine"], series["bvals"], series["bvecs_voxel"], workers=2)
    for a, b in zip(series["result"][:3], again[:3]):
        np.testing.assert_array_equal(a, b)
    assert again[3] == series["result"][3]


def test_resample_box_matches_full():
    rng = np.random.default_rng(3)
    vol = rng.random((12, 10, 9)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    T = _rigid([3.0, -2.0, 4.0], [1.0, 0.5, -0.7], np.array([11.0, 9.0, 10.0]))
    box = (slice(2, 10), slice(1, 9), slice(3, 8))
    full = motion._resample(vol, T, affine, order=1)
    np.testing.assert_allclose(motion._resample(vol, T, affine, order=1, box=box), full[box], rtol=1e-6, atol=1e-6)
    # the fast template resampler agrees with scipy inside the field of view
    fast = motion._resample_template(vol, T, affine, box)
    vox = np.linalg.inv(affine) @ T @ affine
    ijk = np.stack(np.meshgrid(*[np.arange(b.start, b.stop) for b in box], indexing="ij"), -1)
    src = ijk @ vox[:3, :3].T + vox[:3, 3]
    inside = np.all((src >= 0) & (src <= np.array(vol.shape) - 1), axis=-1)
    assert inside.sum() > 100
    np.testing.assert_allclose(fast[inside], full[box][inside], rtol=1e-5, atol=1e-5)


def test_mi_link_on_decimated_fine_grid():
    """The cross-contrast link decimates axes with voxels <= 1.8 mm: on a 1.5 x 1.5 x 2.5 mm
    grid (in-plane decimated, slices kept) it still recovers a known rigid transform
    between b0 and DW contrast."""
    shape = (72, 86, 40)
    affine = np.diag([1.5, 1.5, 2.5, 1.0])
    affine[:3, 3] = [-53.25, -63.75, -48.75]
    centre = np.array([1.0, 2.0, 0.0])
    T = _rigid([2.0, -1.5, 1.0], [1.2, -0.8, 0.9], centre)
    static = _moved(shape, affine, np.eye(4), "b0").astype(np.float64)
    moving = _moved(shape, affine, T, "dw").astype(np.float64)
    est = motion._register_mi(static, moving, affine, motion._foreground(static), decimate_below_mm=1.8)
    assert _angle_deg(est[:3, :3] @ T[:3, :3].T) < 0.3
    c = motion._grid_centre(shape, affine)
    assert np.linalg.norm(((est - T) @ np.r_[c, 1.0])[:3]) < 0.3

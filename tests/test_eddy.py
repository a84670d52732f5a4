"""Eddy-current correction: known eddy distortions along the phase-encoding axis are undone
and reported as eddy currents, not as head motion (issue #17)."""

from __future__ import annotations

import numpy as np
import pytest

from csttool_nipype.science.eddy import eddy_matrix, phase_encoding_world, split_eddy
from csttool_nipype.science.motion import framewise_displacement, motion_correct, motion_parameters

from test_motion import _angle_deg, _grid_points, _head, _rigid

U = np.array([0.0, 1.0, 0.0])            # phase encoding along world A-P
K = np.array([1.6, -1.0, 1.2])            # eddy shift (mm) per unit gradient component
M = np.array([[0.012, 0.004, -0.006],     # eddy terms w = M g (mm/mm)
              [-0.005, 0.015, 0.003],
              [0.004, -0.003, 0.010]])


def _volume(shape, affine, transform, contrast):
    pts = _grid_points(shape, affine)
    ti = np.linalg.inv(transform)
    return _head(pts @ ti[:3, :3].T + ti[:3, 3], contrast).astype(np.float32)


@pytest.fixture(scope="module")
def series():
    """2 b0 + 12 DW volumes: small head motion, and eddy distortion of every DW volume."""
    shape = (40, 46, 36)
    affine = np.diag([-3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [58.5, -67.5, -52.5]
    grid_centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + affine[:3, 3]
    rng = np.random.default_rng(11)
    bvals = np.r_[0.0, np.full(6, 1000.0), 0.0, np.full(6, 1000.0)]
    g = rng.normal(size=(14, 3))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    g[bvals == 0] = 0
    bvecs_voxel = g @ (affine[:3, :3] / 3.0)
    head = [np.eye(4)] + [_rigid(rng.uniform(-1.5, 1.5, 3), rng.uniform(-0.8, 0.8, 3), grid_centre)
                          for _ in range(13)]
    total, shifts = [], np.zeros(14)
    for n in range(14):
        eddy = np.eye(4)
        if bvals[n] > 0:
            shifts[n] = K @ g[n]
            eddy = eddy_matrix(M @ g[n], U, grid_centre)
            eddy[:3, 3] += shifts[n] * U
        total.append(head[n] @ eddy)
    total = np.array(total)
    data = np.stack([_volume(shape, affine, total[n], "b0" if bvals[n] == 0 else "dw") for n in range(14)], -1)
    data = np.abs(data + np.random.default_rng(12).normal(0, 10.0, data.shape)).astype(np.float32)
    return {"data": data, "affine": affine, "bvals": bvals, "bvecs_voxel": bvecs_voxel, "g": g, "head": np.array(head),
            "total": total, "shifts": shifts, "shape": shape, "centre": grid_centre,
            "eddy": motion_correct(data, affine, bvals, bvecs_voxel, pe_world=U),
            "rigid": motion_correct(data, affine, bvals, bvecs_voxel)}


def test_eddy_terms_and_shifts_are_recovered(series):
    _, _, transforms, report = series["eddy"]
    assert report["eddy_correction"] and report["eddy_shift_separated"]
    terms = np.asarray(report["eddy_terms"])
    for n in np.flatnonzero(series["bvals"] > 0):
        # 0.006 mm/mm moves a point 50 mm from the centre by 0.3 mm (a tenth of a voxel)
        np.testing.assert_allclose(terms[n], M @ series["g"][n], atol=0.006)
    dw = series["bvals"] > 0
    # the shift linear in the gradient is eddy current (up to the intercept, which is head motion)
    np.testing.assert_allclose(np.asarray(report["eddy_shift_mm"])[dw], series["shifts"][dw], atol=0.35)
    assert report["mean_eddy_mm"] > 0.5


def test_head_motion_reported_without_the_eddy_shift(series):
    rot, trans = motion_parameters(series["head"], series["centre"])
    true_fd = framewise_displacement(rot, trans)
    with_eddy = series["eddy"][3]["mean_fd_mm"]
    rigid_only = series["rigid"][3]["mean_fd_mm"]
    assert with_eddy == pytest.approx(true_fd[1:].mean(), abs=0.5)
    assert rigid_only > with_eddy + 1.0   # without the model, eddy shifts are counted as motion


def test_correction_undoes_the_distortion_better_than_rigid(series):
    pts = _grid_points(series["shape"], series["affine"])
    inner = np.sqrt(((pts - [2, -3, 1]) / [40, 50, 35]) ** 2).sum(-1) < 1
    ref = _head(pts, "dw")[inner]
    dw = np.flatnonzero(series["bvals"] > 0)
    r_eddy = [np.corrcoef(series["eddy"][0][..., n][inner], ref)[0, 1] for n in dw]
    r_rigid = [np.corrcoef(series["rigid"][0][..., n][inner], ref)[0, 1] for n in dw]
    assert min(r_eddy) > 0.99
    assert np.mean(r_eddy) > np.mean(r_rigid)


def test_bvecs_rotated_by_the_head_rotation_only(series):
    from csttool_nipype.science.gradients import voxel_to_world

    g_ref = voxel_to_world(series["eddy"][1], series["affine"])
    for n in np.flatnonzero(series["bvals"] > 0):
        expected = series["head"][n][:3, :3].T @ series["g"][n]
        np.testing.assert_allclose(g_ref[n], expected, atol=0.01)


def test_split_eddy_round_trip():
    centre = np.array([3.0, -4.0, 10.0])
    rigid = _rigid([2.0, -1.0, 3.0], [1.0, 0.5, -2.0], centre)
    w = np.array([0.02, -0.01, 0.015])
    got_rigid, got_w = split_eddy(rigid @ eddy_matrix(w, U, centre), U, centre)
    np.testing.assert_allclose(got_w, w, atol=1e-6)
    assert _angle_deg(got_rigid[:3, :3] @ rigid[:3, :3].T) < 1e-4
    np.testing.assert_allclose(got_rigid @ np.r_[centre, 1], rigid @ np.r_[centre, 1], atol=1e-9)


def test_phase_encoding_axis_from_the_sidecar():
    sagittal = np.array([[0, 0, -3.0, 90], [-3.0, 0, 0, 100], [0, -3.0, 0, 80], [0, 0, 0, 1]])  # stored PSR-like
    np.testing.assert_allclose(phase_encoding_world({"PhaseEncodingAxis": "i"}, sagittal), [0, -1, 0])
    np.testing.assert_allclose(phase_encoding_world({"PhaseEncodingDirection": "j-"}, np.eye(4)), [0, 1, 0])
    assert phase_encoding_world({}, np.eye(4)) is None
    assert phase_encoding_world({"PhaseEncodingDirection": "x"}, np.eye(4)) is None


def test_phase_encoding_axis_survives_the_import_reorientation(tmp_path):
    """A sagittally stored series: the axis named in its sidecar, on its stored grid, is the
    axis named in the imported (RAS+) metadata on the imported grid."""
    import json

    import nibabel as nib

    from csttool_nipype.science.dwi_import import import_dwi
    from csttool_nipype.sims.model import PhantomSpec
    from csttool_nipype.sims.phantom import make_phantom
    from csttool_nipype.sims.writer import write_phantom

    paths = write_phantom(make_phantom(PhantomSpec(voxel_size=4.0, n_directions=8, orientation="PSR", seed=2)),
                          tmp_path, subject="sub-01")
    stored = phase_encoding_world(json.loads(paths["json"].read_text()), nib.load(paths["dwi"]).affine)
    dwi = import_dwi(nifti=paths["dwi"], work_dir=tmp_path)
    assert nib.aff2axcodes(dwi.affine) == ("R", "A", "S")
    imported = phase_encoding_world(dwi.metadata, dwi.affine)
    assert stored is not None and abs(float(stored @ imported)) == pytest.approx(1.0)

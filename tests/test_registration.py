"""Registration to MNI on a synthetic subject made from the MNI template itself.

The subject is the template's white matter (brainstem included) turned into a pseudo-FA
(0.2 + 0.5 WM inside the brain), moved by a known rigid pose (12 degrees, 8 mm), sampled on a 3 mm grid and
stored in LPS voxel order. The ground truth (pose, posed WM) is built here with scipy,
independently of the code under test.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from csttool_nipype import data
from csttool_nipype.errors import InputError
from csttool_nipype.reports.figures import registration_qc_png
from csttool_nipype.science import gradients
from csttool_nipype.science import registration as reg
from csttool_nipype.science import templates, transforms

VOXEL_MM = 3.0


def rigid_pose(angle_deg=12.0, axis=(0.6, -0.5, 0.62), translation=(5.0, -4.0, 5.0)) -> np.ndarray:
    """MNI mm -> subject world mm: rotation about the MNI origin, then a translation."""
    pose = np.eye(4)
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    pose[:3, :3] = Rotation.from_rotvec(np.deg2rad(angle_deg) * axis).as_matrix()
    pose[:3, 3] = translation
    return pose


def _sample_posed(volume_1mm, mni_affine, pose, shape, grid_affine, order=1):
    """Value at subject voxel v = volume at MNI point pose^-1 (grid_affine v); Gaussian pre-smoothing to 3 mm."""
    sigma = np.sqrt(VOXEL_MM**2 - 1.0) / 2.3548
    smooth = ndimage.gaussian_filter(np.asarray(volume_1mm, np.float32), sigma)
    m = np.linalg.inv(mni_affine) @ np.linalg.inv(pose) @ grid_affine
    return ndimage.affine_transform(smooth, m[:3, :3], m[:3, 3], output_shape=shape, order=order)


def make_posed_subject(pose: np.ndarray, orientation: str = "LPS", fa_noise: bool = False):
    """Pseudo-FA subject: dict with fa, mask, wm (truth), affine; voxel order ``orientation``."""
    wm, gm, csf, mni_aff = data.load_mni_tissue()
    # in real FA the brainstem is as bright as white matter (median FA 0.38 vs 0.43 in
    # WM and 0.15 in GM on the Philips data) while the T1-based template calls half of
    # it grey matter: count it as white matter, as the phantom does
    stem, _ = data.load_atlas_map("harvard_oxford", "Brain-Stem")
    wm = np.clip(wm + gm * stem, 0, 1)
    brain1 = ((wm + gm + csf) >= 0.5).astype(np.float32)
    fa1 = (0.2 + 0.5 * wm) * brain1
    ijk = np.argwhere(brain1 > 0)
    corners = np.array(np.meshgrid(*[[a, b] for a, b in zip(ijk.min(0), ijk.max(0))])).reshape(3, -1).T
    posed = nib.affines.apply_affine(pose @ mni_aff, corners)
    lo, hi = posed.min(0) - 12.0, posed.max(0) + 12.0
    shape = tuple(int(n) for n in np.ceil((hi - lo) / VOXEL_MM))
    ras = np.diag([VOXEL_MM] * 3 + [1.0])
    ras[:3, 3] = lo
    mask = _sample_posed(brain1, mni_aff, pose, shape, ras) >= 0.5
    fa = np.where(mask, _sample_posed(fa1, mni_aff, pose, shape, ras), 0).astype(np.float32)
    wm_s = _sample_posed(wm, mni_aff, pose, shape, ras)
    out = {}
    for key, arr in (("fa", fa), ("mask", mask.astype(np.uint8)), ("wm", wm_s)):
        out[key], affine = gradients.reorient_array(arr, ras, orientation)
    out["mask"] = out["mask"].astype(bool)
    out["affine"] = affine
    out["pose"] = pose
    return out


def atlas_centroid_mni(atlas, label, threshold=0.5):
    prob, aff = data.load_atlas_map(atlas, label)
    ijk = np.argwhere(prob >= threshold)
    return nib.affines.apply_affine(aff, ijk.mean(0))


def landmarks_mni():
    return np.array([
        atlas_centroid_mni("harvard_oxford", "Brain-Stem"),
        atlas_centroid_mni("harvard_oxford", "Left_Precentral_Gyrus", 0.25),
        atlas_centroid_mni("harvard_oxford", "Right_Precentral_Gyrus", 0.25),
        atlas_centroid_mni("juelich", "WM_Corticospinal_tract_L", 0.25),
        atlas_centroid_mni("juelich", "WM_Corticospinal_tract_R", 0.25),
    ])


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def subject():
    return make_posed_subject(rigid_pose(), "LPS")


@pytest.fixture(scope="module")
def result(subject):
    return reg.register_to_mni(subject["fa"], subject["mask"], subject["affine"], template_resolution_mm=2.0)


# --------------------------------------------------------------------------- synthetic subject
def test_synthetic_subject_is_stored_lps_and_posed(subject):
    assert nib.aff2axcodes(subject["affine"]) == ("L", "P", "S")
    # the pose moved the brain: its centre of mass is where the pose puts the MNI one
    wm, _, _, mni_aff = data.load_mni_tissue()
    com_mni = nib.affines.apply_affine(mni_aff, ndimage.center_of_mass(np.asarray(wm)))
    com_sub = nib.affines.apply_affine(subject["affine"], ndimage.center_of_mass(subject["wm"]))
    np.testing.assert_allclose(com_sub, nib.affines.apply_affine(subject["pose"], com_mni), atol=1.5)


# --------------------------------------------------------------------------- registration
def test_recovers_pose_at_landmarks(result, subject):
    pts = landmarks_mni()
    truth = nib.affines.apply_affine(subject["pose"], pts)
    affine_err = np.linalg.norm(nib.affines.apply_affine(result.affine_subject_to_mni, pts) - truth, axis=1)
    full_err = np.linalg.norm(transforms.mni_to_subject_points(pts, result) - truth, axis=1)
    assert affine_err.max() < 2.0, affine_err
    assert full_err.max() < 2.0, full_err
    # and back
    back = transforms.subject_to_mni_points(truth, result)
    assert np.linalg.norm(back - pts, axis=1).max() < 2.0
    assert np.linalg.det(result.affine_subject_to_mni[:3, :3]) > 0
    np.testing.assert_allclose(result.subject_to_mni_affine @ result.mni_to_subject_affine, np.eye(4), atol=1e-9)


def test_warped_template_wm_overlaps_subject_wm(result, subject):
    tpl = templates.load_template(2.0)
    wm_warped = transforms.warp_to_subject(tpl.wm, tpl.affine, result, subject["fa"].shape, subject["affine"])
    inside = subject["mask"]
    assert dice((wm_warped > 0.5) & inside, (subject["wm"] > 0.5) & inside) >= 0.8


def test_quality_numbers_are_reported_and_high(result, subject):
    q = result.quality
    assert set(q) >= {"wm_dice", "brain_dice", "correlation", "affine_wm_dice", "acceptable"}
    assert q["wm_dice"] >= 0.85
    assert q["brain_dice"] >= 0.9
    assert q["correlation"] >= 0.85
    assert result.mapping is not None
    assert result.runtime_s > 0
    assert result.subject_shape == subject["fa"].shape
    np.testing.assert_array_equal(result.subject_affine, subject["affine"])


def test_noise_registration_scores_clearly_lower(result, subject):
    rng = np.random.default_rng(0)
    noise = np.where(subject["mask"], rng.uniform(0, 0.8, subject["fa"].shape), 0).astype(np.float32)
    bad = reg.register_to_mni(noise, subject["mask"], subject["affine"], syn=False, affine_level_iters=(50, 20, 5))
    assert bad.quality["wm_dice"] < result.quality["wm_dice"] - 0.3
    assert bad.quality["correlation"] < 0.2
    assert result.quality["acceptable"] and not bad.quality["acceptable"]


def test_quality_drops_for_a_flipped_subject(result, subject):
    """The metric itself: the right template placement scored against an A-P flipped FA."""
    tpl = templates.load_template(2.0)
    shape, aff = subject["fa"].shape, subject["affine"]
    wm_t = transforms.warp_to_subject(tpl.wm, tpl.affine, result, shape, aff)
    brain_t = transforms.warp_to_subject(tpl.brain, tpl.affine, result, shape, aff)
    good = reg.registration_quality(subject["fa"], subject["mask"], wm_t, brain_t)
    flipped = reg.registration_quality(subject["fa"][:, ::-1], subject["mask"][:, ::-1], wm_t, brain_t)
    assert flipped["wm_dice"] < good["wm_dice"] - 0.3
    assert flipped["correlation"] < good["correlation"] - 0.5


def test_affine_only_in_psr_storage_recovers_pose():
    pose = rigid_pose(angle_deg=14.0, axis=(-0.3, 0.8, 0.5), translation=(-6.0, 7.0, -4.0))
    sub = make_posed_subject(pose, "PSR")
    assert nib.aff2axcodes(sub["affine"]) == ("P", "S", "R")
    res = reg.register_to_mni(sub["fa"], sub["mask"], sub["affine"], syn=False, affine_level_iters=(50, 25, 5))
    assert res.mapping is None
    pts = landmarks_mni()
    err = np.linalg.norm(nib.affines.apply_affine(res.affine_subject_to_mni, pts)
                         - nib.affines.apply_affine(pose, pts), axis=1)
    assert err.max() < 2.0, err
    assert res.quality["wm_dice"] >= 0.85  # the affine-only image warp puts the template in place
    # affine-only points agree with the affine
    np.testing.assert_allclose(transforms.mni_to_subject_points(pts, res),
                               nib.affines.apply_affine(res.affine_subject_to_mni, pts))


def test_deterministic(subject):
    kwargs = dict(affine_level_iters=(20, 10, 2), level_iters=(5, 2, 0), template_resolution_mm=3.0)
    one = reg.register_to_mni(subject["fa"], subject["mask"], subject["affine"], seed=0, **kwargs)
    two = reg.register_to_mni(subject["fa"], subject["mask"], subject["affine"], seed=1, **kwargs)
    np.testing.assert_array_equal(one.affine_subject_to_mni, two.affine_subject_to_mni)
    np.testing.assert_array_equal(one.mapping.forward, two.mapping.forward)
    assert one.quality == two.quality


# --------------------------------------------------------------------------- warps
def test_warp_to_mni_matches_template_and_round_trips(result, subject):
    fa_mni, mni_aff = transforms.warp_to_mni(subject["fa"], subject["affine"], result)
    tpl = templates.load_template(2.0)
    assert fa_mni.shape == tpl.shape
    np.testing.assert_allclose(mni_aff, tpl.affine)
    inside = tpl.brain > 0.5
    assert np.corrcoef(fa_mni[inside], tpl.wm[inside])[0, 1] > 0.85
    back = transforms.warp_to_subject(fa_mni, mni_aff, result, subject["fa"].shape, subject["affine"])
    m = ndimage.binary_erosion(subject["mask"], iterations=2)
    assert np.corrcoef(back[m], subject["fa"][m])[0, 1] > 0.9


def test_warp_4d_nearest_and_custom_grid(result, subject):
    tpl = templates.load_template(2.0)
    labels = (tpl.wm > 0.5).astype(np.float32) + 2 * (tpl.brain > 0.5)
    stack = np.stack([labels, labels], axis=-1)
    out = transforms.warp_to_subject(stack, tpl.affine, result, subject["fa"].shape, subject["affine"],
                              interpolation="nearest")
    assert out.shape == subject["fa"].shape + (2,)
    assert set(np.unique(out)) <= {0.0, 2.0, 3.0}
    # a custom MNI output grid
    grid = np.diag([4.0, 4.0, 4.0, 1.0])
    grid[:3, 3] = (-80, -110, -60)
    img, aff = transforms.warp_to_mni(subject["fa"], subject["affine"], result, out_shape=(41, 49, 41), out_affine=grid)
    assert img.shape == (41, 49, 41)
    np.testing.assert_allclose(aff, grid)
    with pytest.raises(ValueError):
        transforms.warp_to_mni(subject["fa"], subject["affine"], result, out_shape=(4, 4, 4))
    with pytest.raises(ValueError):
        transforms.warp_to_subject(labels, tpl.affine, result, subject["fa"].shape, subject["affine"], interpolation="cubic")


# --------------------------------------------------------------------------- files
def test_save_load_round_trip(result, subject, tmp_path):
    paths = transforms.save_registration(result, tmp_path / "reg")
    assert {"affine_txt", "affine_npy", "inverse_affine_txt", "json", "syn_forward", "syn_backward"} <= set(paths)
    np.testing.assert_allclose(np.loadtxt(paths["affine_txt"]), result.affine_subject_to_mni, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.loadtxt(paths["inverse_affine_txt"]) @ result.affine_subject_to_mni, np.eye(4),
                               atol=1e-9)
    field = nib.load(paths["syn_forward"])
    assert field.shape == tuple(result.template_shape) + (3,)
    np.testing.assert_allclose(field.affine, result.template_affine)
    meta = json.loads(paths["json"].read_text())
    assert meta["quality"] == result.quality

    for source in (paths, tmp_path / "reg", paths["json"]):
        loaded = transforms.load_registration(source)
        np.testing.assert_array_equal(loaded.affine_subject_to_mni, result.affine_subject_to_mni)
        assert loaded.quality == result.quality
        tpl = templates.load_template(2.0)
        a = transforms.warp_to_subject(tpl.wm, tpl.affine, result, subject["fa"].shape, subject["affine"])
        b = transforms.warp_to_subject(tpl.wm, tpl.affine, loaded, subject["fa"].shape, subject["affine"])
        np.testing.assert_array_equal(a, b)
        pts = landmarks_mni()
        np.testing.assert_allclose(transforms.mni_to_subject_points(pts, loaded), transforms.mni_to_subject_points(pts, result))


def test_save_load_affine_only(tmp_path):
    res = transforms.RegistrationResult(
        affine_subject_to_mni=rigid_pose(), mapping=None, quality={"wm_dice": 0.5},
        template_shape=(10, 11, 12), template_affine=np.eye(4), subject_shape=(5, 6, 7),
        subject_affine=np.diag([3.0, 3.0, 3.0, 1.0]))
    paths = transforms.save_registration(res, tmp_path)
    assert "syn_forward" not in paths
    loaded = transforms.load_registration(paths)
    assert loaded.mapping is None
    np.testing.assert_array_equal(loaded.affine_subject_to_mni, res.affine_subject_to_mni)
    assert loaded.subject_shape == (5, 6, 7)


def test_load_registration_errors(tmp_path):
    with pytest.raises(InputError):
        transforms.load_registration(tmp_path)
    (tmp_path / "registration.json").write_text("{}")
    with pytest.raises(InputError):
        transforms.load_registration(tmp_path)


# --------------------------------------------------------------------------- QC picture
def test_qc_png(result, subject, tmp_path):
    import matplotlib.image as mpimg

    tpl = templates.load_template(2.0)
    wm = transforms.warp_to_subject(tpl.wm, tpl.affine, result, subject["fa"].shape, subject["affine"])
    out = registration_qc_png(subject["fa"], subject["affine"], wm, tmp_path / "qc" / "reg.png", title="test")
    assert out.is_file()
    img = mpimg.imread(out)
    assert img.ndim == 3 and img.shape[1] == 1300
    red = (img[..., 0] > 0.8) & (img[..., 1] < 0.4) & (img[..., 2] < 0.4)
    grey = (np.abs(img[..., 0] - img[..., 1]) < 0.02) & (img[..., 0] > 0.3)
    assert red.sum() > 500  # the outline is drawn
    assert grey.sum() > 5000  # over the FA


# --------------------------------------------------------------------------- template and inputs
def test_template_grid_and_fibre_tracts():
    tpl = templates.load_template(3.0)
    np.testing.assert_allclose(np.diag(tpl.affine)[:3], 3.0)
    assert tpl.wm.shape == tpl.brain.shape == tpl.shape
    assert 0 <= tpl.wm.min() and tpl.wm.max() <= 1 and np.all(tpl.wm <= tpl.brain + 1e-6)
    # the brainstem counts as white matter in the FA-like template (pons, MNI (0, -25, -30))
    ijk = np.round(nib.affines.apply_affine(np.linalg.inv(tpl.affine), [0, -25, -30])).astype(int)
    assert tpl.wm[tuple(ijk)] > 0.7
    with pytest.raises(ValueError):
        templates.load_template(0)


def test_input_validation(subject):
    fa, mask, aff = subject["fa"], subject["mask"], subject["affine"]
    with pytest.raises(ValueError):
        reg.register_to_mni(fa[..., None], mask, aff)
    with pytest.raises(ValueError):
        reg.register_to_mni(fa, mask[:-1], aff)
    with pytest.raises(ValueError):
        reg.register_to_mni(fa, np.zeros_like(mask), aff)
    with pytest.raises(ValueError):
        reg.register_to_mni(fa, mask, np.zeros((4, 4)))
    with pytest.raises(ValueError):
        reg.register_to_mni(fa, mask, aff, b0=fa[:-1])
    with pytest.raises(ValueError):
        reg.register_to_mni(np.zeros_like(fa), mask, aff)
    with pytest.raises(ValueError):
        reg.register_to_mni(fa, mask, aff, affine_stages=("rigid", "shear"))

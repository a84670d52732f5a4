"""Atlas CST ROIs in subject space, on the digital phantom (known pose and true CST).

The phantom is the MNI anatomy moved by a random rigid pose (15 degrees, 10 mm) and
stored in LPS order; its true FA is registered to MNI and the ROIs are compared with the
atlas structures moved by the *known* pose (resampled here with scipy, independently of
the code under test) and with the phantom's true corticospinal tracts.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from csttool_nipype import data
from csttool_nipype.science import gradients
from csttool_nipype.science import registration as reg
from csttool_nipype.science import transforms
from csttool_nipype.science import rois as roi_mod

SIDES = ("left", "right")


@pytest.fixture(scope="module")
def phantom():
    from csttool_nipype.sims.model import PhantomSpec
    from csttool_nipype.sims.phantom import make_phantom

    # the truth maps do not depend on the gradient scheme or the noise: keep them cheap
    return make_phantom(PhantomSpec(voxel_size=3.0, rotation_deg=15, translation_mm=10, orientation="LPS", seed=1,
                                    n_directions=6, snr=None))


@pytest.fixture(scope="module")
def result(phantom):
    return reg.register_to_mni(phantom.truth["fa"], phantom.truth["brain_mask"], phantom.affine)


@pytest.fixture(scope="module")
def rois(phantom, result):
    mask = phantom.truth["brain_mask"]
    return roi_mod.cst_rois(result, mask.shape, phantom.affine, mask=mask)


def _mni_of_voxels(phantom, shape=None, affine=None):
    """True MNI coordinates (via the known pose) of every voxel centre."""
    shape = phantom.truth["fa"].shape if shape is None else shape
    affine = phantom.affine if affine is None else affine
    ijk = np.indices(shape).reshape(3, -1).T
    world = nib.affines.apply_affine(affine, ijk)
    return nib.affines.apply_affine(np.linalg.inv(phantom.pose), world).reshape(tuple(shape) + (3,))


def _true_roi(phantom, name):
    """The ROI's atlas definition moved by the known pose (scipy, trilinear)."""
    atlas, label, key, zrange, side = roi_mod._ROI_SOURCES[name]
    prob, mni_aff = data.load_atlas_map(atlas, label)
    prob = np.array(prob)
    if zrange is not None:
        z = mni_aff[2, 3] + mni_aff[2, 2] * np.arange(prob.shape[2])
        prob[..., (z < zrange[0]) | (z > zrange[1])] = 0
    shape = phantom.truth["fa"].shape
    m = np.linalg.inv(mni_aff) @ np.linalg.inv(phantom.pose) @ phantom.affine
    moved = ndimage.affine_transform(prob, m[:3, :3], m[:3, 3], output_shape=shape, order=1)
    out = moved >= roi_mod.THRESHOLDS[key]
    x = _mni_of_voxels(phantom)[..., 0]
    if side == "left":
        out &= x < 0
    elif side == "right":
        out &= x > 0
    return out & phantom.truth["brain_mask"]


def _dice(a, b):
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_phantom_registration_recovers_pose(phantom, result):
    # atlas landmarks and points spread over the brain (MNI mm)
    pts = np.array([[0, -31, -34], [-35, -11, 48], [36, -10, 50], [-20, -15, 5], [20, -15, 5],
                    [-60, -20, 10], [60, -20, 10], [0, 60, 0], [0, -95, 10], [0, -20, 70], [0, -60, -40]], float)
    truth = nib.affines.apply_affine(phantom.pose, pts)
    affine_err = np.linalg.norm(nib.affines.apply_affine(result.affine_subject_to_mni, pts) - truth, axis=1)
    full_err = np.linalg.norm(transforms.mni_to_subject_points(pts, result) - truth, axis=1)
    assert affine_err.max() < 2.0, affine_err
    assert full_err.max() < 2.5, full_err
    assert result.quality["wm_dice"] > 0.85
    assert result.quality["brain_dice"] > 0.9


def test_rois_land_where_the_pose_puts_the_atlas(phantom, rois):
    expected_keys = {"brainstem", "precentral_left", "precentral_right", "capsule_left", "capsule_right",
                     "peduncle_left", "peduncle_right", "midline"}
    assert expected_keys <= set(rois)
    for name in expected_keys - {"midline"}:
        roi = rois[name]
        assert roi.dtype == bool and roi.shape == phantom.truth["fa"].shape
        truth = _true_roi(phantom, name)
        assert _dice(roi, truth) >= 0.7, (name, _dice(roi, truth))


def test_rois_hit_the_true_cst_of_their_own_side_only(phantom, rois):
    cst = {side: phantom.truth[f"cst_{side}"] for side in SIDES}
    for side in SIDES:
        other = "right" if side == "left" else "left"
        for stem in ("precentral", "capsule", "peduncle"):
            roi = rois[f"{stem}_{side}"]
            assert (roi & cst[side]).sum() >= 10, (stem, side)
            assert (roi & cst[other]).sum() == 0, (stem, side)
    # the waypoints lie mostly on the true tract
    for side in SIDES:
        for stem in ("capsule", "peduncle"):
            roi = rois[f"{stem}_{side}"]
            assert (roi & cst[side]).sum() >= 0.6 * roi.sum()
    # the brainstem holds both tracts, the midline exclusion neither
    assert (rois["brainstem"] & cst["left"]).any() and (rois["brainstem"] & cst["right"]).any()
    assert not (rois["midline"] & (cst["left"] | cst["right"])).any()


@pytest.mark.parametrize("codes", ["RAS", "LAS", "LPS", "PSR"])
def test_left_is_left_in_world_space_for_any_storage(phantom, result, rois, codes):
    mask_o, aff_o = gradients.reorient_array(phantom.truth["brain_mask"].astype(np.uint8), phantom.affine, codes)
    mask_o = mask_o.astype(bool)
    assert nib.aff2axcodes(aff_o) == tuple(codes)
    out = roi_mod.cst_rois(result, mask_o.shape, aff_o, mask=mask_o)
    mni = _mni_of_voxels(phantom, mask_o.shape, aff_o)
    for stem in ("precentral", "capsule", "peduncle"):
        centroid = {side: nib.affines.apply_affine(aff_o, ndimage.center_of_mass(out[f"{stem}_{side}"]))
                    for side in SIDES}
        # world space: the left ROI is at smaller x, and across the head's midline
        assert centroid["left"][0] < centroid["right"][0] - 10
        head = {side: nib.affines.apply_affine(np.linalg.inv(phantom.pose), centroid[side]) for side in SIDES}
        assert head["left"][0] < -5 and head["right"][0] > 5
        # voxel by voxel: nothing of a side's ROI beyond the true midline by more than 3 mm
        assert mni[..., 0][out[f"{stem}_left"]].max() < 3.0
        assert mni[..., 0][out[f"{stem}_right"]].min() > -3.0
    # same voxels as on the LPS grid, just stored differently
    for name, roi in rois.items():
        roi_o, _ = gradients.reorient_array(roi.astype(np.uint8), phantom.affine, codes)
        assert np.sum(roi_o.astype(bool) != out[name]) <= max(2, 0.01 * roi.sum()), name


def test_midline_separates_the_hemispheres(phantom, rois):
    mni = _mni_of_voxels(phantom)
    region = phantom.truth["brain_mask"] & ~rois["midline"] & (mni[..., 2] >= roi_mod.MIDLINE_MIN_Z_MM + 5)
    labels, _ = ndimage.label(region)  # 6-connectivity
    left = np.unique(labels[rois["precentral_left"] & region])
    right = np.unique(labels[rois["precentral_right"] & region])
    left, right = set(left[left > 0]), set(right[right > 0])
    assert left and right and not left & right
    # and it is a thin surface, about one voxel thick
    assert rois["midline"].sum() < 0.06 * phantom.truth["brain_mask"].sum()


def test_priors(phantom, rois):
    mni_x = _mni_of_voxels(phantom)[..., 0]
    for side in SIDES:
        prior = rois.priors[f"cst_prior_{side}"]
        assert prior.dtype == np.float32 and prior.shape == phantom.truth["fa"].shape
        assert 0 <= prior.min() and prior.max() <= 1 and prior.max() > 0.5
        beyond = mni_x > 3 if side == "left" else mni_x < -3
        assert prior[beyond].max() == 0
        # the prior is high on the true tract
        assert np.mean(prior[phantom.truth[f"cst_{side}"]]) > 0.2


def test_coverage_whole_brain(phantom, rois):
    cov = roi_mod.coverage(rois, phantom.truth["brain_mask"])
    assert cov["cst_covered"] and cov["cst_left_covered"] and cov["cst_right_covered"]
    assert cov["covered"] and cov["reason"] == ""
    assert cov["missing"] == []
    assert "midline" not in cov["rois"]
    for name, entry in cov["rois"].items():
        assert entry["fraction"] > 0.9, name


def test_coverage_of_a_slab_that_misses_the_brainstem(phantom, result):
    """A field of view cut at MNI z ~ 0 (an axial slab): the grid itself is truncated."""
    mni_z = _mni_of_voxels(phantom)[..., 2]
    # LPS storage: the third axis is S; keep the slices whose centre lies above MNI z = 0
    keep_k = np.flatnonzero(np.median(mni_z.reshape(-1, mni_z.shape[2]), axis=0) > 0)
    k0 = int(keep_k.min())
    mask = phantom.truth["brain_mask"][:, :, k0:]
    affine = phantom.affine @ nib.affines.from_matvec(np.eye(3), [0, 0, k0])
    slab = roi_mod.cst_rois(result, mask.shape, affine, mask=mask)
    cov = roi_mod.coverage(slab, mask)
    assert not cov["cst_covered"] and not cov["covered"]
    assert "brainstem" in cov["reason"] and "precentral" not in cov["reason"]
    assert {"brainstem", "peduncle_left", "peduncle_right"} <= set(cov["missing"])
    assert cov["rois"]["brainstem"]["fraction"] < 0.2
    assert cov["rois"]["brainstem"]["expected_voxels"] > 500  # the full structure is still known
    assert cov["rois"]["precentral_left"]["covered"] and cov["rois"]["precentral_right"]["covered"]


def test_coverage_plain_dict_and_errors():
    mask = np.zeros((5, 5, 5), bool)
    mask[:, :, :3] = True
    roi = np.zeros_like(mask)
    roi[2, 2, :] = True  # 3 of 5 voxels inside
    cov = roi_mod.coverage({"brainstem": roi}, mask)
    assert cov["rois"]["brainstem"]["fraction"] == pytest.approx(0.6)
    assert cov["rois"]["brainstem"]["covered"]
    assert not cov["cst_covered"]  # the other required ROIs are absent
    with pytest.raises(ValueError):
        roi_mod.coverage({"brainstem": roi[:-1]}, mask)


def test_cropped_atlas_maps_keep_a_margin_of_zeros():
    """The cached ROI maps are cropped to the brain and atlas box: every map is 0 in the
    margin left around it, so trilinear sampling sees exactly the whole grid's values."""
    names, volumes, box_mm, crop_affine = roi_mod._prepared_maps()
    shape, mni_affine = data.mni_grid()
    start = np.rint(np.linalg.inv(mni_affine) @ crop_affine[:, 3])[:3].astype(int)
    stop = start + np.array(volumes[0].shape)
    assert np.allclose(crop_affine[:3, :3], mni_affine[:3, :3])
    assert (start >= 0).all() and (stop <= np.array(shape)).all()
    margin = roi_mod._CROP_MARGIN
    for name, vol in zip(names, volumes):
        assert vol.any(), name
        for axis in range(3):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis] = slice(0, margin)
            hi[axis] = slice(vol.shape[axis] - margin, None)
            if start[axis] > 0:
                assert not vol[tuple(lo)].any(), f"{name}: values at the lower crop edge of axis {axis}"
            if stop[axis] < shape[axis]:
                assert not vol[tuple(hi)].any(), f"{name}: values at the upper crop edge of axis {axis}"
    # the brain box the maps were cropped to lies inside the crop
    corners = nib.affines.apply_affine(np.linalg.inv(crop_affine), box_mm)
    assert (corners >= -1e-6).all() and (corners <= np.array(volumes[0].shape) - 1 + 1e-6).all()


def test_coverage_of_a_field_of_view_from_mid_pons(phantom, rois):
    """The imaged brain cut at MNI z = -30 mm (mid-pons, by the known pose): partial coverage,
    the extent starting at the cut, both sides at one level; the whole brain is covered in full."""
    from csttool_nipype.science.coverage import FULL_COVERAGE_Z_MM, start_roi

    whole = roi_mod.coverage(rois, phantom.truth["brain_mask"])
    assert not whole["partial"] and whole["extent"]["z_min_mm"] <= FULL_COVERAGE_Z_MM
    mni_z = _mni_of_voxels(phantom)[..., 2]
    mask = phantom.truth["brain_mask"] & (mni_z >= -30.0)
    cov = roi_mod.coverage(rois, mask)
    assert cov["covered"] and cov["partial"] and "cst_not_covered" not in cov["reason"]
    extent = cov["extent"]
    # levels are one voxel (3 mm) high and the registration is good to a few mm
    assert -33.0 <= extent["z_min_mm"] <= -24.0
    assert extent["z_min_mm"] == max(extent["sides"]["left"]["z_min_mm"], extent["sides"]["right"]["z_min_mm"])
    assert 0.6 < extent["share"] < 0.8      # (79 + 30) / (79 + 67) = 0.75 of the template's length
    assert "-2" in cov["partial_reason"] or "-3" in cov["partial_reason"]
    start = start_roi(rois, rois.mni_z, extent["z_min_mm"], 6.0, rois.priors) & mask
    z = rois.mni_z[start]
    assert start.any() and z.min() >= extent["z_min_mm"] and z.max() < extent["z_min_mm"] + 6.0
    # above the peduncles too little is imaged for any CST
    high = roi_mod.coverage(rois, phantom.truth["brain_mask"] & (mni_z >= -6.0))
    assert not high["covered"] and not high["partial"] and "peduncle" in high["reason"]


def test_sensorimotor_cortex_holds_the_precentral_gyrus_and_more(rois):
    """``cortex_<side>`` (precentral, postcentral gyrus and SMA at the precentral threshold) contains
    the precentral ROI and adds the gyri behind and above it, on its own side."""
    for side in ("left", "right"):
        cortex, pre = rois[f"cortex_{side}"], rois[f"precentral_{side}"]
        assert cortex.dtype == bool and not (pre & ~cortex).any()
        assert cortex.sum() > 1.5 * pre.sum()
    assert not (rois["cortex_left"] & rois["cortex_right"]).any()

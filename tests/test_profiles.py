"""Along-tract profiles, bundle metrics, laterality and the summary tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from csttool_nipype.science.bundles import bundle_mask, extract_cst
from csttool_nipype.science.profiles import (
    N_NODES,
    bundle_metrics,
    laterality_index,
    profiles_table,
    summary_row,
    tract_profile,
)
from csttool_nipype.science.streamlines import streamline_lengths
from csttool_nipype.science.tracking import track
from test_tracking import synthetic_tracts

# A 20 x 20 x 50 grid of 2 mm voxels; world = 2 * index + (-20, -20, -10).
SHAPE = (20, 20, 50)
AFFINE = np.array([[2.0, 0, 0, -20.0], [0, 2.0, 0, -20.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])
Z_LO, Z_HI = 0.0, 80.0  # straight streamlines run from z = 0 to z = 80 mm
Z_DIP = 56.0


def _world_z():
    return (np.arange(SHAPE[2]) * 2.0 - 10.0)[None, None, :] * np.ones(SHAPE)


def _straight_bundle(n=40, seed=0, reverse_half=True):
    """Vertical streamlines within 3 mm of the z axis, every other one stored top-down."""
    rng = np.random.default_rng(seed)
    z = np.linspace(Z_LO, Z_HI, 161)
    out = []
    for i in range(n):
        x0, y0 = rng.uniform(-3.0, 3.0, size=2)
        s = np.stack([np.full_like(z, x0), np.full_like(z, y0), z], axis=1)
        out.append(s[::-1].copy() if (reverse_half and i % 2) else s)
    return out


def test_profile_minimum_sits_at_the_dip_and_runs_inferior_to_superior():
    z = _world_z()
    fa = 0.6 * (1.0 - 0.3 * np.exp(-0.5 * ((z - Z_DIP) / 4.0) ** 2))
    fa = fa + 0.001 * z  # slight rise upwards, so orientation matters away from the dip
    bundle = _straight_bundle()
    profile = tract_profile(bundle, fa, AFFINE)
    assert profile.shape == (N_NODES,)
    expected_node = (Z_DIP - Z_LO) / (Z_HI - Z_LO) * (N_NODES - 1)
    assert abs(int(np.argmin(profile)) - expected_node) <= 3
    assert profile.min() == pytest.approx(0.6 * 0.7 + 0.001 * Z_DIP, abs=0.01)
    # node 0 is the inferior end
    assert profile[0] == pytest.approx(0.6 + 0.001 * Z_LO, abs=0.005)
    assert profile[-1] == pytest.approx(0.6 + 0.001 * Z_HI, abs=0.005)
    # the same bundle all stored bottom-up gives the same profile
    same = tract_profile(_straight_bundle(reverse_half=False), fa, AFFINE)
    np.testing.assert_allclose(profile, same, atol=1e-12)


def test_profile_weights_favour_the_bundle_core():
    z = _world_z()
    x = (np.arange(SHAPE[0]) * 2.0 - 20.0)[:, None, None] * np.ones(SHAPE)
    fa = np.where(np.abs(x) <= 5.0, 0.5, 0.9)  # core 0.5, far lateral voxels 0.9
    bundle = _straight_bundle(seed=2)
    z_line = np.linspace(Z_LO, Z_HI, 161)
    stray = np.stack([np.full_like(z_line, 14.0), np.zeros_like(z_line), z_line], axis=1)
    profile = tract_profile(bundle + [stray], fa, AFFINE)
    plain_mean = (40 * 0.5 + 0.9) / 41
    assert np.all(profile < 0.5 + 0.1 * (plain_mean - 0.5))  # the outlier barely counts
    assert np.all(profile >= 0.5)


def test_profile_of_empty_bundle_and_nan_voxels():
    fa = np.full(SHAPE, 0.4)
    assert np.isnan(tract_profile([], fa, AFFINE)).all()
    fa[:, :, 20:] = np.nan  # z >= 30 mm unknown
    profile = tract_profile(_straight_bundle(), fa, AFFINE, n_nodes=50)
    assert profile.shape == (50,)
    assert np.allclose(profile[:15], 0.4) and np.isnan(profile[-10:]).all()


def test_bundle_metrics_on_known_maps():
    fa = np.full(SHAPE, 0.2)
    md = np.full(SHAPE, 0.9e-3)
    bundle = _straight_bundle()
    mask = bundle_mask(bundle, SHAPE, AFFINE)
    fa[mask] = np.linspace(0.4, 0.6, int(mask.sum()))
    m = bundle_metrics(bundle, {"fa": fa, "md": md}, AFFINE, weighting="voxel")
    assert m["streamline_count"] == 40
    assert m["mean_length_mm"] == pytest.approx(80.0)
    # streamlines within |x|, |y| <= 3 mm, z 0..80 mm: voxels x,y centred at -2, 0, 2 ... (9 columns) x 41 slices
    assert m["volume_mm3"] == pytest.approx(8.0 * mask.sum())
    assert mask.sum() <= 9 * 41 and mask[:, :, 5:46].any(axis=(0, 1)).all()
    assert m["fa_mean"] == pytest.approx(0.5)
    assert m["fa_std"] == pytest.approx(np.linspace(0.4, 0.6, int(mask.sum())).std())
    assert m["md_mean"] == pytest.approx(0.9e-3) and m["md_std"] == pytest.approx(0.0, abs=1e-12)
    empty = bundle_metrics([], {"fa": fa}, AFFINE)
    assert empty["streamline_count"] == 0 and empty["volume_mm3"] == 0.0
    assert math.isnan(empty["fa_mean"]) and math.isnan(empty["mean_length_mm"])


def test_laterality_index():
    assert laterality_index(3.0, 1.0) == pytest.approx(0.5)  # left larger -> positive
    assert laterality_index(1.0, 3.0) == pytest.approx(-0.5)
    assert laterality_index(2.0, 2.0) == 0.0
    assert math.isnan(laterality_index(0.0, 0.0))
    assert math.isnan(laterality_index(float("nan"), 1.0))
    assert math.isnan(laterality_index(None, 1.0))
    assert math.isnan(laterality_index(1.0, float("inf")))


def test_profiles_table_long_format():
    profiles = {"left": {"fa": np.arange(4.0), "md": np.arange(4.0) * 1e-3},
                "right": {"fa": np.arange(4.0) + 10}}
    table = profiles_table("sub-01", profiles)
    assert list(table.columns) == ["subject", "side", "node", "metric", "value"]
    assert len(table) == 12 and (table["subject"] == "sub-01").all()
    right_fa = table[(table.side == "right") & (table.metric == "fa")]
    assert right_fa["node"].tolist() == [0, 1, 2, 3] and right_fa["value"].tolist() == [10, 11, 12, 13]
    assert pd.api.types.is_integer_dtype(table["node"])
    assert len(profiles_table("sub-01", {})) == 0


def test_summary_row_has_sides_laterality_and_flags():
    left = {"streamline_count": 120, "fa_mean": 0.55, "volume_mm3": 4000.0}
    right = {"streamline_count": 4, "fa_mean": 0.45, "volume_mm3": 1000.0}
    row = summary_row("sub-02", left, right, {"registration_poor": "MI below 0.3"})
    assert row["subject"] == "sub-02"
    assert row["fa_mean_left"] == 0.55 and row["fa_mean_right"] == 0.45
    assert row["fa_mean_li"] == pytest.approx(0.1 / 1.0)
    assert row["volume_mm3_li"] == pytest.approx(0.6)
    assert row["flags"] == "registration_poor;too_few_streamlines_right"
    assert "too_few_streamlines_right: 4 right CST streamlines" in row["flag_reasons"]
    assert row["n_flags"] == 2
    clean = summary_row("sub-03", left, {**right, "streamline_count": 100})
    assert clean["flags"] == "" and clean["n_flags"] == 0
    assert summary_row("sub-04", left, right, min_streamlines=0)["n_flags"] == 0


def test_end_to_end_on_a_tracked_tract():
    """Tracked synthetic tract with an FA dip at z = 20 mm: profile and metrics agree with the truth."""
    field = synthetic_tracts()
    z = field["xyz"][..., 2]
    dip = 1.0 - 0.3 * np.exp(-0.5 * ((z - 20.0) / 4.0) ** 2)
    fa = np.where(field["left"], 0.7 * dip, field["fa"])
    # ROIs inside the tract (slices 4-6 and 29-31 of 1-34): clipping removes the ends
    # where tracking overshoots into the FA 0.1 background
    rois = {key: np.zeros(fa.shape, bool) for key in ("brainstem", "precentral_left", "precentral_right")}
    rois["brainstem"][..., 4:7] = field["left"][..., 4:7] | field["right"][..., 4:7]
    rois["precentral_left"][..., 29:32] = field["left"][..., 29:32]
    rois["precentral_right"][..., 29:32] = field["right"][..., 29:32]
    streamlines = track(field["v1"], fa, field["mask"], field["affine"], fa_threshold=0.2)
    bundle = extract_cst(streamlines, rois, field["affine"], side="left", clip_end="last")
    assert len(bundle) > 200
    profile = tract_profile(bundle, fa, field["affine"])
    lo = np.median([s[0, 2] for s in bundle])
    hi = np.median([s[-1, 2] for s in bundle])
    assert lo == pytest.approx(-13.0, abs=1.0) and hi == pytest.approx(43.0, abs=1.0)  # ROI slab edges
    expected = (20.0 - lo) / (hi - lo) * (N_NODES - 1)
    assert abs(int(np.argmin(profile)) - expected) <= 3
    # relative depth of the dip: 30 % (edge streamlines sample a little background FA at
    # every node, which lowers the whole profile by a few per cent but not the ratio)
    assert profile.min() / np.median(profile) == pytest.approx(0.7, abs=0.03)
    m = bundle_metrics(bundle, {"fa": fa}, field["affine"])
    truth = fa[field["left"]]
    assert abs(m["fa_mean"] - truth.mean()) < 0.05
    assert m["mean_length_mm"] == pytest.approx(np.mean(streamline_lengths(bundle)))


def _reference_profile(bundle, scalar_map, affine, n_nodes=N_NODES):
    """tract_profile as it was: per-streamline orientation, dipy resampling of a list."""
    from dipy.tracking.streamline import set_number_of_points

    from csttool_nipype.science.profiles import node_weights, orient_inferior_superior, sample_nodes

    arrays = [np.ascontiguousarray(s, np.float64) for s in orient_inferior_superior(bundle)]
    resampled = np.asarray(set_number_of_points(arrays, nb_points=n_nodes), dtype=np.float64)
    values = sample_nodes(resampled, scalar_map, affine)
    weights = node_weights(resampled)
    valid = np.isfinite(values)
    weights = np.where(valid, weights, 0.0)
    total = weights.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights * np.where(valid, values, 0.0)).sum(axis=0) / total, np.nan)


def test_tract_profiles_of_several_maps_match_single_profiles_and_the_reference():
    from nibabel.streamlines import ArraySequence

    from csttool_nipype.science.profiles import tract_profiles

    rng = np.random.default_rng(3)
    maps = {"fa": rng.uniform(0.2, 0.8, SHAPE), "md": rng.uniform(0.5e-3, 1e-3, SHAPE)}
    maps["md"][10, 10, 20] = np.nan
    bundle = _straight_bundle(30, reverse_half=True)
    bundle = [s + rng.normal(scale=0.3, size=s.shape) for s in bundle]
    for given in (bundle, ArraySequence(bundle)):
        together = tract_profiles(given, maps, AFFINE)
        for name, arr in maps.items():
            expected = _reference_profile(bundle, arr, AFFINE)
            assert np.array_equal(together[name], expected, equal_nan=True)
            assert np.array_equal(tract_profile(given, arr, AFFINE), expected, equal_nan=True)
    empty = tract_profiles([], maps, AFFINE)
    assert set(empty) == set(maps) and all(np.isnan(v).all() for v in empty.values())


def test_density_volume_keeps_the_body_and_does_not_grow_with_the_count():
    """40 streamlines along one line of voxels (z = 0..40 mm at x = y = 0), one stray along
    another (x = 10 mm): the visited volume holds both lines, the density volume (voxels that
    at least 5 % of the streamlines pass) only the first; twice the streamlines, same volumes."""
    from csttool_nipype.science.profiles import DENSITY_SHARE, bundle_metrics

    z = np.linspace(0.0, 40.0, 81)
    body = [np.column_stack([np.zeros_like(z), np.zeros_like(z), z])] * 40
    stray = [np.column_stack([np.full_like(z, 10.0), np.zeros_like(z), z])]
    fa = {"fa": np.full(SHAPE, 0.5)}
    line_voxels = 21   # z = 0, 2, ..., 40 mm on the 2 mm grid
    m = bundle_metrics(body + stray, fa, AFFINE)
    assert m["volume_mm3"] == pytest.approx(2 * line_voxels * 8.0)
    assert 1 < DENSITY_SHARE * 41 <= 40
    assert m["density_volume_mm3"] == pytest.approx(line_voxels * 8.0)
    doubled = bundle_metrics(2 * (body + stray), fa, AFFINE)
    assert doubled["density_volume_mm3"] == m["density_volume_mm3"]
    assert bundle_metrics([], fa, AFFINE)["density_volume_mm3"] == 0.0


def test_core_means_are_the_middle_nodes():
    from csttool_nipype.science.profiles import core_means

    ramp = np.arange(100.0)
    assert core_means({"fa": ramp})["fa_core_mean"] == pytest.approx(np.mean(np.arange(20, 80)))
    cut = ramp.copy()
    cut[:30] = np.nan            # a field of view that starts higher: the covered core nodes only
    assert core_means({"fa": cut})["fa_core_mean"] == pytest.approx(np.mean(np.arange(30, 80)))
    assert math.isnan(core_means({"fa": np.full(100, np.nan)})["fa_core_mean"])


def test_anchored_profile_runs_between_the_two_mni_levels():
    """With an MNI z map the profile runs from PROFILE_START_Z_MM to PROFILE_END_Z_MM whatever each
    streamline's own ends: profiling the MNI z map itself gives the evenly spaced levels."""
    from csttool_nipype.science.profiles import PROFILE_END_Z_MM, PROFILE_START_Z_MM, tract_profiles

    # MNI z = world z - 40 mm: the straight streamlines (world z 0-80 mm) span MNI z -40 to 40 mm
    mni_z = _world_z() - 40.0
    bundle = _straight_bundle()
    profile = tract_profiles(bundle, {"z": mni_z}, AFFINE, N_NODES, mni_z=mni_z)["z"]
    expected = np.linspace(PROFILE_START_Z_MM, PROFILE_END_Z_MM, N_NODES)
    np.testing.assert_allclose(profile, expected, atol=1e-6)
    # shorter streamlines (tracking stopped at different levels) give the same node levels
    cut = [s[(s[:, 2] >= 5.0 + i % 7) & (s[:, 2] <= 70.0 + i % 5)] for i, s in enumerate(bundle)]
    np.testing.assert_allclose(tract_profiles(cut, {"z": mni_z}, AFFINE, N_NODES, mni_z=mni_z)["z"], expected,
                               atol=1e-6)


def test_anchored_profile_leaves_nodes_below_a_late_start_nan():
    """Streamlines that all start 10 mm (MNI z) above the first level: the nodes of those 10 mm are NaN,
    the others where they would be on a whole streamline."""
    from csttool_nipype.science.profiles import (PROFILE_END_Z_MM, PROFILE_START_Z_MM, resample_between_levels,
                                                 tract_profiles)

    mni_z = _world_z() - 40.0
    start = PROFILE_START_Z_MM + 10.0
    bundle = [s[s[:, 2] - 40.0 >= start] for s in _straight_bundle(reverse_half=False)]
    nodes = resample_between_levels(bundle, mni_z, AFFINE, N_NODES)
    levels = np.linspace(PROFILE_START_Z_MM, PROFILE_END_Z_MM, N_NODES)
    missing = levels < start - 0.5  # the streamlines' first points lie within 0.5 mm above ``start``
    assert np.isnan(nodes[:, missing]).all()
    profile = tract_profiles(bundle, {"z": mni_z}, AFFINE, N_NODES, mni_z=mni_z)["z"]
    assert np.isnan(profile[missing]).all()
    late = levels > start + 0.5
    np.testing.assert_allclose(profile[late], levels[late], atol=0.6)


def test_volumes_do_not_depend_on_the_scan_grid():
    """The same streamlines measured with maps on a 2 mm axial grid and on a 3 mm grid turned
    by 20° (a sagittally sliced, angulated scan): identical volumes, counted on the 2 mm
    world-aligned grid. A line along z from 0 to 40 mm at x = y = 0 passes the 21 voxels
    centred at z = 0, 2, ..., 40 mm of that grid."""
    from nibabel.eulerangles import euler2mat

    from csttool_nipype.science.bundles import world_grid
    from csttool_nipype.science.profiles import VOLUME_GRID_MM, bundle_metrics

    assert VOLUME_GRID_MM == 2.0
    z = np.linspace(0.0, 40.0, 81)
    body = [np.column_stack([np.zeros_like(z), np.zeros_like(z), z])] * 40
    stray = [np.column_stack([np.full_like(z, 10.0), np.zeros_like(z), z])]
    turned = np.eye(4)
    turned[:3, :3] = euler2mat(0.0, np.deg2rad(20.0), 0.0) @ np.diag([3.0, 3.0, 3.0])
    turned[:3, 3] = [-30.0, -30.0, -20.0]
    axial = bundle_metrics(body + stray, {"fa": np.full(SHAPE, 0.5)}, AFFINE)
    angled = bundle_metrics(body + stray, {"fa": np.full((30, 30, 30), 0.5)}, turned)
    for key in ("volume_mm3", "density_volume_mm3"):
        assert axial[key] == angled[key]
    assert angled["density_volume_mm3"] == 21 * 8.0 and angled["volume_mm3"] == 2 * 21 * 8.0
    shape, affine = world_grid(body + stray, 2.0)
    assert np.allclose(np.diag(affine)[:3], 2.0) and np.allclose(affine[:3, 3] % 2.0, 0.0)
    corners = affine[:3, :3] @ np.array([[0, 0, 0], np.array(shape) - 1]).T + affine[:3, 3:]
    assert (corners[:, 0] < [0, 0, 0]).all() and (corners[:, 1] > [10, 0, 40]).all()


def test_prior_weights_count_samples_by_the_atlas_probability_with_a_floor():
    """Two groups of straight streamlines, one in a voxel column the atlas gives p = 0.8, one where
    it gives 0: each node weighs them 0.8 : PRIOR_WEIGHT_FLOOR (so the off-atlas group still counts),
    and a profile of a map that is 0.5 in the first column and 0.9 in the second is their weighted
    mean, whatever the group sizes' ratio to each other in Gaussian core terms."""
    from csttool_nipype.science.profiles import PRIOR_WEIGHT_FLOOR, prior_weights, tract_profiles

    x = (np.arange(SHAPE[0]) * 2.0 - 20.0)[:, None, None] * np.ones(SHAPE)
    prior = np.where(np.abs(x) <= 1.0, 0.8, 0.0)           # the column at world x = 0
    fa = np.where(np.abs(x) <= 1.0, 0.5, 0.9)
    z = np.linspace(Z_LO, Z_HI, 161)
    column = lambda x0: np.stack([np.full_like(z, x0), np.zeros_like(z), z], axis=1)  # noqa: E731
    on, off = [column(0.0)] * 10, [column(10.0)] * 30
    weights = prior_weights(np.stack([s[::16][:10] for s in on + off]), prior, AFFINE)
    assert weights.shape == (40, 10)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0)
    np.testing.assert_allclose(weights[0] / weights[-1], 0.8 / PRIOR_WEIGHT_FLOOR)
    profile = tract_profiles(on + off, {"fa": fa}, AFFINE, prior=prior)["fa"]
    expected = (10 * 0.8 * 0.5 + 30 * PRIOR_WEIGHT_FLOOR * 0.9) / (10 * 0.8 + 30 * PRIOR_WEIGHT_FLOOR)
    np.testing.assert_allclose(profile, expected, atol=1e-9)
    # an atlas that holds none of the tract leaves equal weights: the plain mean
    nowhere = tract_profiles(on + off, {"fa": fa}, AFFINE, prior=np.zeros(SHAPE))["fa"]
    np.testing.assert_allclose(nowhere, (10 * 0.5 + 30 * 0.9) / 40, atol=1e-9)
    # unreached (NaN) nodes weigh nothing
    nodes = np.stack([s[::16][:10] for s in on + off])
    nodes[:10, 0] = np.nan
    w = prior_weights(nodes, prior, AFFINE)
    assert np.all(w[:10, 0] == 0) and w[:, 0].sum() == pytest.approx(1.0)

"""The test-retest scores of ``benchmarks/retest.py`` on inputs whose answer is known by hand."""

import numpy as np
import pytest

from csttool_nipype.science.reliability import (
    atlas_profile, coefficient_of_variation, max_deviation, median_pairwise_correlation, median_pairwise_weighted_dice,
    weighted_dice,
)


def test_cv_and_max_deviation():
    # mean 100, sample SD 10 (deviations -10, 0, 10: sum of squares 200 / 2 = 100)
    assert coefficient_of_variation([90, 100, 110]) == pytest.approx(0.10)
    assert max_deviation([90, 100, 110]) == pytest.approx(0.10)
    assert max_deviation([80, 100, 120, 100]) == pytest.approx(0.20)
    assert np.isnan(coefficient_of_variation([0, 0]))


def test_weighted_dice_by_hand():
    a = np.zeros((4, 4, 4))
    b = np.zeros((4, 4, 4))
    a[0, 0, 0], a[1, 0, 0] = 3, 1        # normalised: 0.75, 0.25
    b[1, 0, 0], b[2, 0, 0] = 2, 2        # normalised: 0.5, 0.5
    # only voxel (1,0,0) is shared: (0.25 + 0.5) / 2
    assert weighted_dice(a, b) == pytest.approx(0.375)
    assert weighted_dice(a, a * 7) == pytest.approx(1.0)   # the scale of a density map does not matter
    assert weighted_dice(a, np.zeros_like(a)) == 0.0
    with pytest.raises(ValueError, match="one grid"):
        weighted_dice(a, np.zeros((3, 3, 3)))
    assert median_pairwise_weighted_dice([a, a, b]) == pytest.approx(0.375)   # pairs: 1, .375, .375


def test_profile_correlation_ignores_uncovered_nodes():
    x = np.linspace(0, 1, 100)
    p1 = np.sin(3 * x)
    p2 = 2 * np.sin(3 * x) + 1           # r = 1 with p1
    p3 = p1.copy()
    p3[:30] = np.nan                      # a scan that starts higher up: common nodes only
    assert median_pairwise_correlation([p1, p2, p3]) == pytest.approx(1.0)
    assert median_pairwise_correlation([p1, -p1]) == pytest.approx(-1.0)
    assert np.isnan(median_pairwise_correlation([p1, np.full(100, np.nan)]))


def test_atlas_profile_is_the_weighted_level_mean():
    z_mm = np.arange(-10.0, 10.0, 2.0)                  # 10 levels, 2 mm apart
    scalar = np.broadcast_to(z_mm, (4, 4, 10)).copy()   # the map's value is its level's z
    prior = np.zeros((4, 4, 10))
    prior[1:3, 1:3, :] = 0.5
    prior[0, 0, :] = 1.0
    profile = atlas_profile(scalar, prior, z_mm, -4.0, 4.0)
    np.testing.assert_allclose(profile, [-4, -2, 0, 2, 4])   # inferior to superior, ends included
    # weights: a voxel of value 1 at p = 1 and four of value 0 at p = 0.5 in one level -> 1/3
    scalar[0, 0, 5] = 1.0
    scalar[1:3, 1:3, 5] = 0.0
    scalar[0, 1, 5] = np.nan                            # outside the tract: no effect
    assert atlas_profile(scalar, prior, z_mm, 0.0, 0.0)[0] == pytest.approx(1.0 / 3.0)
    prior[:, :, 0] = 0.0
    assert np.isnan(atlas_profile(scalar, prior, z_mm, -10.0, -10.0)[0])
    with pytest.raises(ValueError, match="axial grid"):
        atlas_profile(scalar, prior[..., :5], z_mm, 0, 1)

"""The covered extent of a CST and profiles of a tract cut by the field of view, on
synthetic grids whose answer follows from their construction."""

from __future__ import annotations

import numpy as np
import pytest

from csttool_nipype.interfaces.metrics import coverage_record, quality_flags
from csttool_nipype.science import coverage as cov
from csttool_nipype.science.profiles import resample_below_missing, tract_profiles


def _column(z_lo=-66.0, z_hi=78.0, shape=(5, 5, 145)):
    """A straight template tract: one voxel per mm of MNI z (= world z), 5 x 5 voxels a level."""
    ijk = np.indices(shape).reshape(3, -1).T
    world = ijk.astype(float)
    z = z_lo + world[:, 2]
    template = cov.template_levels(z, world, np.arange(len(z)), bin_mm=3.0)
    return template, shape, z.reshape(shape)


def test_side_extent_starts_at_the_lowest_imaged_level():
    template, shape, z = _column()
    full = cov.side_extent(template, np.ones(shape, bool))
    assert full["z_min_mm"] == -66.0 and full["z_max_mm"] == 78.0 and full["share"] == 1.0
    mask = z >= -20.0
    part = cov.side_extent(template, mask)
    assert part["z_min_mm"] == -20.0 and part["z_max_mm"] == 78.0
    assert part["share"] == pytest.approx(98.0 / 144.0, abs=1e-3)
    # a hole of one level (CSF in the midbrain) is not the edge of the field of view
    holed = mask & ~((z >= -6.0) & (z < -3.0))
    assert cov.side_extent(template, holed)["z_min_mm"] == -20.0
    # nothing imaged at the capsule: no extent
    assert np.isnan(cov.side_extent(template, z >= 20.0)["z_min_mm"])


def test_interior_drops_the_faces_of_the_grid():
    inner = cov.interior(np.ones((4, 5, 6), bool))
    assert inner.sum() == 2 * 3 * 4 and inner[1:-1, 1:-1, 1:-1].all()


def test_centreline_length_of_a_straight_tract():
    template, _, _ = _column()
    # voxel centres 1 mm apart in z: the centroids of 3 mm levels from PROFILE_START_Z_MM to -12 mm,
    # the first and last centroids half a level inside the range
    assert cov.missing_length_mm(template, -12.0) == pytest.approx(-12.0 - cov.PROFILE_START_Z_MM - 3.0, abs=3.0)
    assert cov.missing_length_mm(template, -40.0) == 0.0


def test_nodes_below_the_field_of_view_are_nan_and_the_others_keep_their_place():
    line = np.stack([np.zeros(181), np.zeros(181), np.linspace(0.0, 90.0, 181)], axis=1)
    nodes = resample_below_missing([line], 11, 10.0)   # 100 mm in all, 10 of them missing
    assert np.isnan(nodes[0, 0]).all()
    np.testing.assert_allclose(nodes[0, 1:, 2], np.arange(0.0, 91.0, 10.0))
    # FA rising linearly with z: each node's value is that of its height
    shape, affine = (3, 3, 100), np.eye(4)
    affine[:3, 3] = (-1.0, -1.0, 0.0)
    fa = np.broadcast_to(np.arange(100.0) / 100.0, shape).copy()
    lines = [line + [dx, 0.0, 0.0] for dx in (-0.2, 0.0, 0.2)]
    profile = tract_profiles(lines, {"fa": fa}, affine, n_nodes=11, missing_length_mm=10.0)["fa"]
    assert np.isnan(profile[0])
    np.testing.assert_allclose(profile[1:], np.arange(0.0, 91.0, 10.0) / 100.0, atol=1e-9)
    # without a missing stretch: the profile as before
    np.testing.assert_allclose(tract_profiles(lines, {"fa": fa}, affine, n_nodes=11)["fa"],
                               np.linspace(0.0, 0.9, 11), atol=1e-9)


def test_partial_coverage_flag_and_sidecar_record():
    coverage = {"covered": True, "partial": True, "partial_reason": "from MNI z = -12 mm up",
                "extent": {"z_min_mm": -12.0, "z_max_mm": 75.0, "share": 0.6}}
    assert quality_flags(None, coverage, 0.5) == {"partial_coverage": "from MNI z = -12 mm up"}
    assert "partial_coverage" not in quality_flags(None, {**coverage, "partial": False}, 0.5)
    profile = np.r_[np.full(20, np.nan), np.ones(80)]
    record = coverage_record(coverage, {"left": {"fa": profile}, "right": {"fa": np.full(100, np.nan)}})
    assert record["CoveredExtent"] == {"MNIzRangeMM": [-12.0, 75.0], "TemplateShare": 0.6, "Partial": True,
                                       "NotCovered": False}
    assert record["ProfileNodesCovered"] == {"left": [20, 99], "right": None}


def test_cohort_table_text_of_the_covered_extent():
    import pandas as pd

    from csttool_nipype.reports.cohort_report import covered_nodes, coverage_text

    profiles = pd.DataFrame({"key": ["sub-01"] * 4, "side": ["left", "left", "right", "right"],
                             "node": [0, 1, 0, 1], "metric": "fa", "value": [np.nan, 0.5, 0.4, 0.5]})
    nodes = covered_nodes(profiles)
    assert nodes == {"sub-01": {"left": (1, 1), "right": (0, 1)}}
    row = {"covered_z_min_mm": "-12.4", "covered_z_max_mm": "75", "covered_share": "0.6"}
    assert coverage_text(row, nodes["sub-01"]) == "z -12 to 75 mm (60 %); nodes L 1–1, R 0–1"

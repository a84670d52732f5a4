"""CST extraction: ROI logic on hand-made streamlines, then on tracked synthetic fields."""

from __future__ import annotations

import numpy as np
import pytest
from nibabel.streamlines import ArraySequence

from csttool_nipype.errors import InputError
from csttool_nipype.science.bundles import (
    bundle_mask,
    clip_to_rois,
    density_map,
    dice,
    extract_cst,
    roi_hits,
    select_cst,
)
from csttool_nipype.science.cleaning import clean_bundle
from csttool_nipype.science.midline import cut_at_midline, midline_plane, midline_x
from csttool_nipype.science.tracking import track
from test_tracking import synthetic_tracts

# ----------------------------------------------------------------- hand-made geometry
# A 30 x 10 x 30 grid of 2 mm voxels; world x = 2 i + 5 (midline of the "brain" at
# x = 35 mm, i.e. between voxels 14 and 15), y = 2 j, z = 2 k.
SHAPE = (30, 10, 30)
AFFINE = np.array([[2.0, 0, 0, 5.0], [0, 2.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
MID = 35.0


def _rois():
    rois = {k: np.zeros(SHAPE, bool) for k in ("brainstem", "precentral_left", "precentral_right",
                                               "capsule_left", "capsule_right")}
    rois["brainstem"][10:21, 3:7, 0:4] = True  # x 25..45 mm, z 0..6 mm
    rois["precentral_left"][2:8, 3:7, 25:29] = True  # x 9..19 mm, z 50..56
    rois["precentral_right"][23:29, 3:7, 25:29] = True  # x 51..61 mm
    rois["capsule_left"][5:12, 3:7, 14:16] = True  # x 15..27, z 28..30
    rois["capsule_right"][19:26, 3:7, 14:16] = True  # x 43..55
    return rois


def _line(*points, step=0.5):
    """Polyline through world points, sampled every ``step`` mm."""
    out = [np.asarray(points[0], float)]
    for a, b in zip(points[:-1], points[1:]):
        a, b = np.asarray(a, float), np.asarray(b, float)
        n = max(int(np.ceil(np.linalg.norm(b - a) / step)), 1)
        out.extend(a + (b - a) * t for t in np.arange(1, n + 1) / n)
    return np.array(out)


LEFT_OK = _line((31, 9, 2), (21, 9, 29), (13, 9, 54))  # brainstem -> left capsule -> left precentral
LEFT_REVERSED = LEFT_OK[::-1].copy()
RIGHT_OK = _line((39, 9, 2), (49, 9, 29), (57, 9, 54))  # mirror image of LEFT_OK
CROSSING = _line((31, 9, 2), (40, 9, 20), (57, 9, 54))  # left brainstem -> right cortex
WANDERING = _line((31, 9, 2), (36, 9, 15), (21, 9, 29), (13, 9, 54))  # strays 1 mm past the midline
NO_CAPSULE = _line((31, 9, 2), (31, 9, 29), (13, 9, 54))  # x = 31 at z = 29: misses the left capsule
SHORT = _line((31, 9, 2), (31, 9, 8))
CORTEX_ONLY = _line((13, 9, 54), (13, 9, 40))


def test_roi_hits_and_midline():
    rois = _rois()
    sl = [LEFT_OK, RIGHT_OK, CORTEX_ONLY]
    assert roi_hits(sl, rois["brainstem"], AFFINE).tolist() == [True, True, False]
    assert roi_hits(sl, rois["precentral_left"], AFFINE).tolist() == [True, False, True]
    assert midline_x(rois, AFFINE) == pytest.approx(MID)  # brainstem centroid
    no_bs = {k: v for k, v in rois.items() if k != "brainstem"}
    assert midline_x(no_bs, AFFINE) == pytest.approx(MID)  # halfway between the precentral ROIs
    plane = np.zeros(SHAPE, bool)
    plane[12] = True
    assert midline_x({**rois, "midline": plane}, AFFINE) == pytest.approx(29.0)


def test_midline_plane_follows_a_rolled_head():
    rois = _rois()
    rois["precentral_left"][:] = False
    rois["precentral_left"][5:11, 3:7, 25:29] = True  # centroid x = 20 mm
    rois["precentral_right"][:] = False
    rois["precentral_right"][24:30, 3:7, 25:29] = True  # centroid x = 58 mm: midpoint 39 at z = 53
    point, normal = midline_plane(rois, AFFINE)
    np.testing.assert_allclose(point, [35.0, 9.0, 3.0])
    np.testing.assert_allclose(normal, np.array([50.0, 0.0, -4.0]) / np.hypot(50.0, 4.0))
    # 1.5 mm right of x = 35 at z = 30, but 0.66 mm left of the tilted midline
    leaning = _line((33, 9, 2), (36.5, 9, 30), (20, 9, 54))
    rois.pop("capsule_left")
    assert select_cst([leaning], rois, AFFINE, side="left").tolist() == [0]
    sheet = np.zeros(SHAPE, bool)
    sheet[15, :, :] = True  # x = 35 mm, upright: the midline ROI overrides the tilt
    np.testing.assert_allclose(midline_plane({**rois, "midline": sheet}, AFFINE)[1], [1.0, 0.0, 0.0], atol=1e-9)
    assert select_cst([leaning], {**rois, "midline": sheet}, AFFINE, side="left").tolist() == []


def test_select_cst_applies_rois_midline_and_length():
    rois = _rois()
    sl = [LEFT_OK, LEFT_REVERSED, RIGHT_OK, CROSSING, WANDERING, NO_CAPSULE, SHORT, CORTEX_ONLY]
    # the capsule waypoint drops NO_CAPSULE, the midline WANDERING and CROSSING
    assert select_cst(sl, rois, AFFINE, side="left").tolist() == [0, 1]
    assert select_cst(sl, rois, AFFINE, side="right").tolist() == [2]
    # a tolerance lets the wandering streamline (1 mm past the midline) through
    assert select_cst(sl, rois, AFFINE, side="left", midline_tolerance_mm=1.5).tolist() == [0, 1, 4]
    no_capsule = {k: v for k, v in rois.items() if not k.startswith("capsule")}
    assert select_cst(sl, no_capsule, AFFINE, side="left").tolist() == [0, 1, 5]
    # capsule_left given alone: used for the left side only
    left_capsule = {k: v for k, v in rois.items() if k != "capsule_right"}
    assert select_cst(sl, left_capsule, AFFINE, side="left").tolist() == [0, 1]
    assert select_cst(sl, left_capsule, AFFINE, side="right").tolist() == [2]


def test_capsule_waypoint_excludes_streamlines_missing_it():
    rois = _rois()
    rois["capsule_left"][:] = False
    rois["capsule_left"][8:12, 3:7, 14:16] = True  # x 21..27 only: NO_CAPSULE (x=31) misses it
    assert select_cst([LEFT_OK, NO_CAPSULE], rois, AFFINE, side="left").tolist() == [0]
    rois.pop("capsule_left")
    assert select_cst([LEFT_OK, NO_CAPSULE], rois, AFFINE, side="left").tolist() == [0, 1]


def test_midline_roi_excludes_streamlines_touching_it():
    rois = _rois()
    plane = np.zeros(SHAPE, bool)
    plane[15, :, 5:] = True  # x = 35 mm above the brainstem
    # WANDERING touches x=35..36 at z~15; it is excluded even with a generous tolerance
    assert select_cst([LEFT_OK, WANDERING], {**rois, "midline": plane}, AFFINE, side="left",
                      midline_tolerance_mm=5.0).tolist() == [0]


# runs up through a block medial to LEFT_OK's path (the thalamus below) before it joins the
# capsule: what the sensory pathway from the brainstem through the thalamus looks like
THALAMIC = _line((31, 9, 2), (31, 9, 22), (21, 9, 29), (13, 9, 54))


def test_thalamus_roi_excludes_streamlines_through_it():
    rois = _rois()
    assert select_cst([LEFT_OK, THALAMIC], rois, AFFINE, side="left").tolist() == [0, 1]
    thalamus = np.zeros(SHAPE, bool)
    thalamus[12:15, :, 10:14] = True  # x 29..33 mm, z 20..26 mm: medial to LEFT_OK (x 22..25 mm there)
    rois["thalamus"] = thalamus
    assert roi_hits([LEFT_OK, THALAMIC], thalamus, AFFINE).tolist() == [False, True]
    assert select_cst([LEFT_OK, THALAMIC], rois, AFFINE, side="left").tolist() == [0]
    for midline in ("cut", "reject"):
        bundle = extract_cst([LEFT_OK, THALAMIC], rois, AFFINE, side="left", clip=False, midline=midline)
        assert len(bundle) == 1, midline
        np.testing.assert_allclose(bundle[0], LEFT_OK)
    # a cut field of view: the CST starts in ``cst_start`` instead of the brainstem; same rule
    start = np.zeros(SHAPE, bool)
    start[10:15, :, 4:6] = True  # x 25..33 mm, z 8..10 mm: both streamlines pass it
    partial = {**rois, "cst_start": start}
    assert select_cst([LEFT_OK, THALAMIC], partial, AFFINE, side="left").tolist() == [0]
    no_thalamus = {k: v for k, v in partial.items() if k != "thalamus"}
    assert select_cst([LEFT_OK, THALAMIC], no_thalamus, AFFINE, side="left").tolist() == [0, 1]


def test_extract_cst_orients_from_brainstem_and_keeps_small_bundles():
    rois = _rois()
    sl = ArraySequence([LEFT_REVERSED, CROSSING, LEFT_OK])
    bundle = extract_cst(sl, rois, AFFINE, side="left", clip_end="last")
    assert len(bundle) == 2  # fewer than min_streamlines: cleaning leaves it whole
    for s in bundle:
        np.testing.assert_allclose(s, LEFT_OK)
        assert s.dtype == np.float64


# enters the brainstem on the right, crosses to the left inside it (x = 35 at z ~ 3), then
# runs up the left tract: a left CST streamline whose lowest part tracking took across
PONS_CROSSING = _line((41, 9, 1), (31, 9, 5), (21, 9, 29), (13, 9, 54))


def test_cut_at_midline_splits_where_a_streamline_crosses():
    rois = _rois()
    pieces, parent = cut_at_midline([LEFT_OK, CROSSING, PONS_CROSSING, RIGHT_OK], rois, AFFINE, side="left")
    assert parent.tolist() == [0, 1, 2]  # RIGHT_OK lies wholly right of the midline: no piece
    whole, below, upper = (pieces.points[pieces.ids == i] for i in range(3))
    np.testing.assert_array_equal(whole, LEFT_OK)
    assert np.all(below[:, 0] <= MID) and np.all(upper[:, 0] <= MID)
    # each piece is the streamline's own run of points on the left
    np.testing.assert_array_equal(below, CROSSING[CROSSING[:, 0] <= MID])
    np.testing.assert_array_equal(upper, PONS_CROSSING[PONS_CROSSING[:, 0] <= MID])


def test_extract_cst_cut_keeps_the_part_of_a_crossing_streamline_on_its_side():
    rois = _rois()
    sl = [LEFT_OK, PONS_CROSSING, WANDERING, CROSSING]
    assert len(extract_cst(sl, rois, AFFINE, side="left", clip=False, midline="reject")) == 1  # only LEFT_OK
    bundle = extract_cst(sl, rois, AFFINE, side="left", clip=False, midline="cut")
    # PONS_CROSSING keeps its part from the midline (still in the brainstem) up; WANDERING's
    # upper piece starts above the brainstem and CROSSING's lower piece never reaches the
    # cortex, so neither is rescued
    assert len(bundle) == 2
    np.testing.assert_allclose(bundle[0], LEFT_OK)
    kept = bundle[1]
    np.testing.assert_array_equal(kept, PONS_CROSSING[PONS_CROSSING[:, 0] <= MID])
    assert kept[0, 2] < 6.0  # starts inside the brainstem slab (z < 6 mm)
    with pytest.raises(InputError, match="midline"):
        extract_cst(sl, rois, AFFINE, side="left", midline="keep")


def test_clip_to_rois_cuts_what_lies_beyond_the_rois():
    rois = _rois()
    long = _line((31, 9, -20), (31, 9, 2), (21, 9, 29), (13, 9, 54), (13, 9, 58), (30, 9, 58))
    (clipped,) = clip_to_rois([long], rois, AFFINE, side="left")
    inv = np.linalg.inv(AFFINE)
    ends = np.rint(clipped[[0, -1]] @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    assert rois["brainstem"][tuple(ends[0])] and rois["precentral_left"][tuple(ends[1])]
    assert clipped[0, 2] == pytest.approx(-1.0)  # the brainstem slab starts at z = -1 mm
    assert clipped[-1, 2] == pytest.approx(57.0)  # the precentral slab ends at z = 57 mm
    assert clipped[-1, 0] <= 20.0  # the horizontal tail past the gyrus is gone
    # a streamline missing an ROI is left whole
    (same,) = clip_to_rois([CORTEX_ONLY], rois, AFFINE, side="left")
    np.testing.assert_array_equal(same, CORTEX_ONLY)


def test_swapped_precentral_rois_are_an_input_error():
    rois = _rois()
    rois["precentral_left"], rois["precentral_right"] = rois["precentral_right"], rois["precentral_left"]
    with pytest.raises(InputError, match="wrong side"):
        select_cst([LEFT_OK], rois, AFFINE, side="left")
    with pytest.raises(InputError, match="side"):
        select_cst([LEFT_OK], _rois(), AFFINE, side="middle")
    with pytest.raises(InputError, match="missing"):
        select_cst([LEFT_OK], {"brainstem": rois["brainstem"]}, AFFINE, side="left")


def test_clean_bundle_drops_outliers_but_never_below_the_minimum():
    rng = np.random.default_rng(0)
    z = np.linspace(0.0, 80.0, 161)
    bundle = []
    for _ in range(60):
        x0, y0 = rng.normal(0.0, 1.5, size=2)
        bundle.append(np.stack([x0 + 0.02 * z, y0 + np.zeros_like(z), z], axis=1))
    detour = np.stack([12.0 * np.exp(-((z - 40.0) / 10.0) ** 2), np.zeros_like(z), z], axis=1)
    too_long = np.stack([np.zeros(321), np.zeros(321), np.linspace(0.0, 160.0, 321)], axis=1)
    bundle += [detour, too_long]
    kept = clean_bundle(bundle)
    assert 60 not in kept and 61 not in kept
    assert len(kept) >= 55  # the regular streamlines stay
    assert len(clean_bundle(bundle, distance_threshold=0.1, min_streamlines=20)) >= 20
    assert clean_bundle(bundle[:5]).tolist() == [0, 1, 2, 3, 4]


def test_density_map_counts_each_streamline_once_per_voxel():
    coarse = np.array([[5.0, 0.0, 0.0], [5.0, 0.0, 20.0]])  # one 20 mm step: voxels k = 0..10
    fine = _line((5, 0, 0), (5, 0, 20), step=0.1)
    counts = density_map([coarse, fine], SHAPE, AFFINE)
    assert counts.dtype.kind == "i"
    assert counts[0, 0, :11].tolist() == [2] * 11
    assert counts.sum() == 22
    outside = np.array([[-50.0, 0, 0], [5.0, 0.0, 0.0]])
    assert density_map([outside], SHAPE, AFFINE).sum() >= 1  # points off the grid are ignored
    assert bundle_mask([coarse], SHAPE, AFFINE).sum() == 11
    assert bundle_mask([coarse, fine], SHAPE, AFFINE, min_count=3).sum() == 0
    assert density_map([], SHAPE, AFFINE).sum() == 0


# ------------------------------------------------------------------- tracked fields


@pytest.fixture(scope="module", params=[0.0, 7.3], ids=["midline0", "midline7.3"])
def tracked(request):
    field = synthetic_tracts(midline_x=request.param)
    field["streamlines"] = track(field["v1"], field["fa"], field["mask"], field["affine"])
    field["mid"] = request.param
    return field


@pytest.mark.parametrize("side", ["left", "right"])
def test_extract_cst_recovers_the_tract_of_its_side(tracked, side):
    bundle = extract_cst(tracked["streamlines"], tracked["rois"], tracked["affine"], side=side)
    assert len(bundle) > 200
    pts = bundle.get_data()
    sign = -1.0 if side == "left" else 1.0
    assert (sign * (pts[:, 0] - tracked["mid"]) > 0).all()  # never crosses the midline
    mask = bundle_mask(bundle, tracked["fa"].shape, tracked["affine"])
    assert dice(mask, tracked[side]) >= 0.7
    assert not (mask & tracked["left" if side == "right" else "right"]).any()
    brainstem = tracked["rois"]["brainstem"]
    inv = np.linalg.inv(tracked["affine"])
    for s in bundle:
        assert s[0, 2] < s[-1, 2]  # inferior -> superior
    ends = np.array([[s[0], s[-1]] for s in bundle])
    first, last = (np.rint(e @ inv[:3, :3].T + inv[:3, 3]).astype(int) for e in (ends[:, 0], ends[:, 1]))
    # clipped: first points in the brainstem ROI, last points in the precentral ROI
    assert brainstem[tuple(first.T)].all()
    assert tracked["rois"][f"precentral_{side}"][tuple(last.T)].all()
    # unclipped: the streamlines run on past both slabs, into the low-FA margins
    whole = extract_cst(tracked["streamlines"], tracked["rois"], tracked["affine"], side=side, clip=False)
    assert min(s[0, 2] for s in whole) < min(s[0, 2] for s in bundle)
    assert max(s[-1, 2] for s in whole) > max(s[-1, 2] for s in bundle)


def test_extraction_is_repeatable(tracked):
    a = extract_cst(tracked["streamlines"], tracked["rois"], tracked["affine"], side="right")
    b = extract_cst(tracked["streamlines"], tracked["rois"], tracked["affine"], side="right")
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# ----------------------------------------------------------------------------- phantom


def _phantom_api():
    try:
        from csttool_nipype.sims.model import LesionSpec, PhantomSpec
        from csttool_nipype.sims.phantom import make_phantom
    except ImportError:
        return None
    return PhantomSpec, make_phantom, LesionSpec


BOTTOM_MM = 12.0  # height of the brainstem ROI at the bottom of the true tracts


def _track_phantom_truth(lesion=None):
    """Track the 3 mm phantom's true FA / principal direction field and place the CST ROIs.

    ROIs come from the truth, as the acceptance test defines them: ``brainstem`` = both
    true CSTs in their lowest ``BOTTOM_MM`` (medulla); ``precentral_<side>`` = the true
    CST of that side inside the Harvard-Oxford precentral gyrus (>= 25 %, the pipeline's
    cortical target), i.e. the tract's cortical end: its fibres reach the gyrus from the
    hand-knob region at the vertex down to the face area on the lateral convexity.
    Deterministic tensor tracking with the default FA threshold 0.2 and 45 degree angle.
    """
    import nibabel as nib

    from csttool_nipype import data
    from csttool_nipype.science.gradients import world_to_voxel

    PhantomSpec, make_phantom, _ = _phantom_api()
    ph = make_phantom(PhantomSpec(voxel_size=3.0, n_directions=6, snr=None, lesion=lesion))  # truth only
    truth = ph.truth
    affine = np.asarray(ph.affine, float)
    fa = np.asarray(truth["fa"], float)
    shape = fa.shape
    v1 = world_to_voxel(np.asarray(truth["v1_world"], float).reshape(-1, 3), affine).reshape(shape + (3,))
    mask = np.asarray(truth["brain_mask"], bool)
    cst = {side: np.asarray(truth[f"cst_{side}"], bool) for side in ("left", "right")}
    both = cst["left"] | cst["right"]
    k = np.nonzero(both.any(axis=(0, 1)))[0]  # RAS storage, MNI-aligned pose: axis 2 is z
    bottom = np.zeros(shape, bool)
    bottom[..., k.min():k.min() + int(round(BOTTOM_MM / 3.0))] = True
    (pre_l, pre_r), mni_affine = data.load_atlas_maps(
        "harvard_oxford", ["Left_Precentral_Gyrus", "Right_Precentral_Gyrus"])
    to_atlas = np.linalg.inv(mni_affine) @ np.linalg.inv(ph.pose) @ affine
    ijk = np.rint(nib.affines.apply_affine(to_atlas, np.argwhere(np.ones(shape, bool)))).astype(int)
    inside = np.all((ijk >= 0) & (ijk < pre_l.shape), axis=1)
    rois = {"brainstem": both & bottom}
    for side, prob in (("left", pre_l), ("right", pre_r)):
        values = np.zeros(len(ijk))
        values[inside] = prob[tuple(ijk[inside].T)]
        rois[f"precentral_{side}"] = cst[side] & (values.reshape(shape) >= 0.25)
    streamlines = track(v1, fa, mask, affine)
    return dict(phantom=ph, fa=fa, cst=cst, rois=rois, affine=affine, streamlines=streamlines)


@pytest.mark.slow
@pytest.mark.skipif(_phantom_api() is None, reason="csttool_nipype.sims not available yet")
def test_extraction_on_the_phantom_truth_field():
    """Acceptance test of CST extraction on the 3 mm phantom's truth field.

    Both extracted CSTs overlap their true masks with Dice >= 0.6, never touch the other
    side, and their mean FA is within 0.05 of the true mean. Measured (left / right):
    Dice 0.81 / 0.82, precision 0.88 / 0.87, mean FA 0.022 / 0.027 below the truth with
    the bundle cut at its last point in the gyrus (the edge voxels the streamlines graze
    pull it down); cut at the first point: Dice 0.77 / 0.80, mean FA within 0.01.
    """
    from csttool_nipype.science.profiles import bundle_metrics

    run = _track_phantom_truth()
    fa, cst, rois, affine = run["fa"], run["cst"], run["rois"], run["affine"]
    shape = fa.shape
    world_x = (affine[:3, :3] @ np.indices(shape).reshape(3, -1) + affine[:3, 3:])[0].reshape(shape)
    for side, other, sign in (("left", "right", -1.0), ("right", "left", 1.0)):
        bundle = extract_cst(run["streamlines"], rois, affine, side=side)
        assert len(bundle) >= 100, side
        found = bundle_mask(bundle, shape, affine)
        assert dice(found, cst[side]) >= 0.6, (side, dice(found, cst[side]))
        assert not (found & cst[other]).any(), side
        assert (sign * world_x[found] > 0).all(), side  # MNI-aligned head: midline at x = 0
        metrics = bundle_metrics(bundle, {"fa": fa}, affine)
        assert abs(metrics["fa_mean"] - fa[cst[side]].mean()) <= 0.05, (side, metrics["fa_mean"])


@pytest.mark.slow
@pytest.mark.skipif(_phantom_api() is None, reason="csttool_nipype.sims not available yet")
def test_phantom_lesion_shows_as_a_dip_in_the_left_profile():
    """A 30 % FA lesion over 10 mm of the left CST (posterior limb of the internal capsule,
    MNI z = 10 mm) is the lowest point of the left FA profile, at the lesion's node, and
    makes the FA laterality index (L - R)/(L + R) of the profiles' mean FA negative.

    The lesion's node is the one whose median height over the bundle is closest to the
    lesion's z. The first and last 10 nodes are left out of the minimum: the ends of the
    clipped tract lie in the narrow medulla at the bottom of the template and, when the
    bundle is cut at its last point in the gyrus, in the cortex ribbon, where partial
    volume lowers FA (measured: node 0 0.49, node 99 0.36; the lesion dip 0.54 at the
    lesion's node, 59; the healthy right side 0.66 there).

    The laterality index uses the along-tract (profile) mean: the mean over the bundle's
    voxels moves by up to about 0.007 with which edge voxels of the tract a bundle
    happens to visit, as much as the 10 mm lesion moves it (measured on this phantom:
    profile-mean LI -0.009, voxel-mean LI -0.003; without a lesion the phantom is left-right
    symmetric and the profile-mean LI is +0.001).
    """
    from csttool_nipype.science.streamlines import resample_streamlines
    from csttool_nipype.science.profiles import N_NODES, laterality_index, orient_inferior_superior, tract_profile

    _, _, LesionSpec = _phantom_api()
    lesion = LesionSpec(side="left", fa_reduction=0.3, length_mm=10.0, z_mni=10.0)
    run = _track_phantom_truth(lesion)
    fa, rois, affine = run["fa"], run["rois"], run["affine"]
    profiles = {}
    for side in ("left", "right"):
        bundle = extract_cst(run["streamlines"], rois, affine, side=side)
        assert len(bundle) >= 100, side
        profiles[side] = tract_profile(bundle, fa, affine)
        assert np.isfinite(profiles[side]).all(), side
        if side == "left":
            nodes = resample_streamlines(orient_inferior_superior(bundle), N_NODES)
            node_z = np.median(nodes[..., 2], axis=0)  # MNI-aligned head: world z = MNI z
    lesion_node = int(np.argmin(np.abs(node_z - lesion.z_mni)))
    interior = slice(10, N_NODES - 10)
    dip = interior.start + int(np.argmin(profiles["left"][interior]))
    assert abs(dip - lesion_node) <= 5, (dip, lesion_node)
    # a real dip: well below the healthy side at the same place
    assert profiles["left"][dip] < profiles["right"][dip] - 0.1
    assert laterality_index(profiles["left"].mean(), profiles["right"].mean()) < 0


# ---------------------------------------------- vectorised internals keep the results


def _reference_extract(streamlines, rois, affine, side, **kwargs):
    """extract_cst as it was written before vectorising: per-streamline lists."""
    from csttool_nipype.science import bundles as B
    from csttool_nipype.science.streamlines import in_roi

    sel = select_cst([np.asarray(s, float) for s in streamlines], rois, affine, side=side,
                     min_length_mm=kwargs.get("min_length_mm", 40.0))
    chosen = [np.asarray(streamlines[int(i)], np.float64) for i in sel]
    flip = np.array([s[0, 2] > s[-1, 2] for s in chosen], dtype=bool)
    bs = B._first_hit_rank(chosen, rois["brainstem"], affine)
    pc = B._first_hit_rank(chosen, rois[f"precentral_{side}"], affine)
    known = np.isfinite(bs) & np.isfinite(pc) & (bs != pc)
    flip[known] = bs[known] > pc[known]
    oriented = [s[::-1] if f else s for s, f in zip(chosen, flip)]
    out = []
    for s in oriented:  # clip_end="first"
        in_bs = in_roi(s, rois["brainstem"], affine)
        in_pc = in_roi(s, rois[f"precentral_{side}"], affine)
        first = int(np.flatnonzero(in_bs)[0]) if in_bs.any() else len(s)
        after = np.flatnonzero(in_pc & (np.arange(len(s)) > first))
        stop = int(after[0]) if len(after) else -1
        out.append(s[first:stop + 1] if first < stop else s)
    kept = clean_bundle(out, min_streamlines=20) if out else []
    return [out[int(i)] for i in kept]


@pytest.mark.parametrize("side", ["left", "right"])
def test_extract_cst_matches_the_per_streamline_reference(tracked, side):
    sl = tracked["streamlines"]
    expected = _reference_extract(sl, tracked["rois"], tracked["affine"], side)
    for given in (sl, [np.asarray(s) for s in sl], sl[np.arange(len(sl))]):
        got = extract_cst(given, tracked["rois"], tracked["affine"], side=side, clip_end="first", midline="reject")
        assert len(got) == len(expected) > 0
        assert all(np.array_equal(a, b) for a, b in zip(got, expected))


def _reference_density(bundle, shape, affine):
    """density_map as it was: per-segment densifying, argsort and unique pairs."""
    from csttool_nipype.science.streamlines import voxel_index

    arrays = [np.asarray(s, np.float64).reshape(-1, 3) for s in bundle]
    counts_per = np.array([len(a) for a in arrays])
    points = np.concatenate(arrays)
    ids = np.repeat(np.arange(len(arrays)), counts_per)
    zooms = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    same = ids[1:] == ids[:-1]
    n_extra = np.maximum(np.where(same, np.ceil(seg / (0.5 * zooms.min())).astype(np.intp) - 1, 0), 0)
    if n_extra.any():
        starts = np.repeat(np.arange(len(seg)), n_extra)
        frac = np.concatenate([np.arange(1, k + 1) / (k + 1) for k in n_extra[n_extra > 0]])
        extra = points[starts] + frac[:, None] * (points[starts + 1] - points[starts])
        order = np.argsort(np.concatenate([np.arange(len(points), dtype=float), starts + frac]), kind="stable")
        points = np.concatenate([points, extra])[order]
        ids = np.concatenate([ids, ids[starts]])[order]
    ijk, inside = voxel_index(points, affine, shape)
    lin = np.ravel_multi_index(tuple(ijk[inside].T), shape)
    pairs = np.unique(np.stack([ids[inside], lin], axis=1), axis=0)
    counts = np.zeros(shape, dtype=np.int64)
    np.add.at(counts.reshape(-1), pairs[:, 1], 1)
    return counts


def test_density_map_matches_the_reference(tracked):
    from csttool_nipype.science.streamlines import densify

    shape, affine = tracked["fa"].shape, tracked["affine"]
    bundle = extract_cst(tracked["streamlines"], tracked["rois"], affine, side="left")
    sparse = [np.asarray(s)[::9] for s in bundle]  # 4.5 mm steps: densified
    wandering = [np.asarray(s) + np.sin(np.arange(len(s)))[:, None] * 3.0 for s in bundle[:40]]  # revisits voxels
    for b in (bundle, sparse, wandering, [np.array([[-50.0, 0, 0], [5.0, 0.0, 0.0]])]):
        got = density_map(b, shape, affine)
        assert got.dtype == np.int64 and np.array_equal(got, _reference_density(b, shape, affine))
    pts = np.concatenate(sparse)
    ids = np.repeat(np.arange(len(sparse)), [len(s) for s in sparse])
    dense, dense_ids = densify(pts, ids, 1.0)
    assert len(dense) > 3 * len(pts)
    for i in (0, len(sparse) // 2):
        run = dense[dense_ids == i]
        assert np.allclose(run[0], sparse[i][0]) and np.allclose(run[-1], sparse[i][-1])
        assert np.linalg.norm(np.diff(run, axis=0), axis=1).max() <= 1.0 + 1e-9


def test_sensorimotor_cortex_is_the_cortical_target_when_given():
    """A streamline ending one gyrus behind the precentral ROI (in the postcentral gyrus) is kept
    when the ``cortex_<side>`` ROI holds that gyrus, and cut where it first reaches it."""
    rois = _rois()
    postcentral = _line((31, 9, 2), (21, 9, 29), (25, 9, 54))  # x 25 mm at the top: past the precentral ROI
    assert len(extract_cst([LEFT_OK, postcentral], rois, AFFINE, side="left", clip=False)) == 1
    cortex = rois["precentral_left"].copy()
    cortex[9:12, 3:7, 25:29] = True  # x 23..29 mm, z 50..56: the postcentral gyrus of this toy head
    bundle = extract_cst([LEFT_OK, postcentral], {**rois, "cortex_left": cortex}, AFFINE, side="left")
    assert len(bundle) == 2
    ends = np.array([s[-1] for s in bundle])
    inv = np.linalg.inv(AFFINE)
    ijk = np.rint(ends @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    assert cortex[tuple(ijk.T)].all()  # both cut where they first reach the cortex
    assert ends[:, 2].max() < 54.0

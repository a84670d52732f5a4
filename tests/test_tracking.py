"""Tractography on synthetic tensor fields with a known answer, and .trk round trips.

``synthetic_tracts`` and ``simulate_dwi`` are imported by test_bundles.py and
test_profiles.py as well.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from csttool_nipype.errors import InputError
from csttool_nipype.science.gradients import reorient_array, voxel_to_world, world_to_voxel
from csttool_nipype.science.streamlines import streamline_lengths
from csttool_nipype.science.tracking import principal_direction, seed_points, smoothed_tensor_field, track
from csttool_nipype.science.trk_io import load_trk, save_trk

VOXEL = 2.0
SLANT_DEG = 30.0


def synthetic_tracts(midline_x: float = 0.0, seed: int = 1) -> dict:
    """Two tracts running along z, left and right of the plane x = ``midline_x`` (world mm).

    Grid 40 x 20 x 36 voxels of 2 mm; the array centre is deliberately not on the midline.
    Background: FA 0.1 with random directions. Left tract: |x - mid + 16| < 4 mm,
    |y| < 4 mm, straight. Right tract: centred at x - mid = 16 up to z = 10 mm, then slanting
    outwards by 30 degrees up to z = 26 mm, then straight again. Tract FA 0.7. The tracts
    fill the grid from the second to the second-last slice.

    Returns a dict with ``v1`` (voxel axes), ``fa``, ``mask``, ``affine``, ``left`` and
    ``right`` (true tract masks), ``rois`` (brainstem = bottom 3 slices of both tracts,
    precentral_<side> = top 3 slices of each), and ``xyz`` (world coordinates of voxel centres).
    """
    shape = (40, 20, 36)
    affine = np.diag([VOXEL, VOXEL, VOXEL, 1.0])
    affine[:3, 3] = [midline_x - VOXEL * 21.5, -VOXEL * 9.5, -20.0]
    ijk = np.indices(shape).reshape(3, -1).T.astype(float)
    xyz = (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(shape + (3,))
    x, y, z = xyz[..., 0] - midline_x, xyz[..., 1], xyz[..., 2]
    rng = np.random.default_rng(seed)
    v1 = rng.normal(size=shape + (3,))
    v1 /= np.linalg.norm(v1, axis=-1, keepdims=True)
    fa = np.full(shape, 0.1)
    half = 4.0
    inside_z = np.zeros(shape, bool)
    inside_z[:, :, 1:-1] = True
    left = inside_z & (np.abs(x + 16) < half) & (np.abs(y) < half)
    z0, z1 = 10.0, 26.0
    t = np.tan(np.deg2rad(SLANT_DEG))
    xc = 16 + t * np.clip(z - z0, 0, z1 - z0)
    right = inside_z & (np.abs(x - xc) < half) & (np.abs(y) < half)
    direction = np.zeros(shape + (3,))
    direction[..., 2] = 1.0
    slant = (z > z0) & (z < z1)
    direction[slant] = [np.sin(np.deg2rad(SLANT_DEG)), 0.0, np.cos(np.deg2rad(SLANT_DEG))]
    fa[left] = 0.7
    v1[left] = [0.0, 0.0, 1.0]
    fa[right] = 0.7
    v1[right] = direction[right]
    bottom = np.zeros(shape, bool)
    bottom[..., 1:4] = True
    top = np.zeros(shape, bool)
    top[..., -4:-1] = True
    rois = {
        "brainstem": (left | right) & bottom,
        "precentral_left": left & top,
        "precentral_right": right & top,
    }
    return {"v1": v1, "fa": fa, "mask": np.ones(shape, bool), "affine": affine, "left": left,
            "right": right, "rois": rois, "xyz": xyz}


def _fibonacci_hemisphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1.0 - i / n
    phi = np.pi * (1.0 + 5.0**0.5) * i
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def simulate_dwi(v1: np.ndarray, fa: np.ndarray, n_dirs: int = 32, bval: float = 1000.0):
    """Noise-free single-tensor signal (prolate tensors, MD 0.8e-3 mm^2/s) in voxel axes."""
    bvecs = np.r_[np.zeros((2, 3)), _fibonacci_hemisphere(n_dirs)]
    bvals = np.r_[0.0, 0.0, np.full(n_dirs, bval)]
    f = np.clip(fa, 0.0, 0.95)
    a = 1.0 - f**2  # FA of a prolate tensor with l1 = k l2 solves a k^2 - 2k + (1 - 2 FA^2) = 0
    k = (2.0 + np.sqrt(4.0 - 4.0 * a * (1.0 - 2.0 * f**2))) / (2.0 * a)
    md = 0.8e-3
    l2 = 3.0 * md / (k + 2.0)
    l1 = k * l2
    cos2 = np.einsum("xyzc,nc->xyzn", v1, bvecs) ** 2
    adc = l2[..., None] + (l1 - l2)[..., None] * cos2
    return 1000.0 * np.exp(-bvals * adc), bvals, bvecs


def _near(mask: np.ndarray, points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Whether each world point's nearest voxel is in ``mask`` or one of its 26 neighbours."""
    from scipy.ndimage import binary_dilation

    grown = binary_dilation(mask, structure=np.ones((3, 3, 3), bool))
    inv = np.linalg.inv(affine)
    ijk = np.rint(points @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    ijk = np.clip(ijk, 0, np.array(mask.shape) - 1)
    return grown[tuple(ijk.T)]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def field():
    return synthetic_tracts()


@pytest.fixture(scope="module")
def tractogram(field):
    return track(field["v1"], field["fa"], field["mask"], field["affine"])


def test_deterministic_streamlines_run_inside_the_tracts(field, tractogram):
    assert len(tractogram) > 500
    pts = tractogram.get_data()
    assert pts.dtype == np.float64
    assert _near(field["left"] | field["right"], pts, field["affine"]).all()
    # straight left tract: streamlines seeded in it stay at their x, y and span its length
    left = [s for s in tractogram if s[0, 0] < 0]
    assert len(left) > 400
    for s in left:
        assert np.ptp(s[:, 0]) < 1e-9 and np.ptp(s[:, 1]) < 1e-9
        assert np.ptp(s[:, 2]) > 64.0  # tract spans z = -18 .. 48 mm
    lengths = streamline_lengths(tractogram)
    assert lengths.min() >= 20.0 and lengths.max() <= 250.0


def test_deterministic_tracking_is_repeatable(field, tractogram):
    again = track(field["v1"], field["fa"], field["mask"], field["affine"])
    assert _same(tractogram, again)


@pytest.mark.parametrize("axcodes", ["LAS", "PIR"])
def test_storage_orientation_does_not_change_world_streamlines(field, tractogram, axcodes):
    affine = field["affine"]
    fa, new_affine = reorient_array(field["fa"], affine, axcodes)
    mask, _ = reorient_array(field["mask"].astype(np.uint8), affine, axcodes)
    v1, _ = reorient_array(field["v1"], affine, axcodes)
    shape = v1.shape
    v1 = world_to_voxel(voxel_to_world(v1.reshape(-1, 3), affine), new_affine).reshape(shape)
    assert not np.allclose(new_affine, affine)
    out = track(v1, fa, mask.astype(bool), new_affine)
    assert len(out) == len(tractogram)
    for a, b in zip(tractogram, out):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_evecs_and_v1_inputs_agree(field, tractogram):
    evecs = np.zeros(field["v1"].shape + (3,))
    evecs[..., :, 0] = field["v1"]
    evecs[..., :, 1] = np.cross(field["v1"], [0.3, 0.5, 0.8])
    assert np.allclose(principal_direction(evecs), field["v1"])
    out = track(evecs.astype(np.float32), field["fa"], field["mask"], field["affine"])
    assert len(out) == len(tractogram)
    for a, b in zip(tractogram, out):
        np.testing.assert_allclose(a, b, atol=1e-3)  # float32 eigenvectors


def test_seed_points_fill_their_voxels(field):
    mask = field["left"]
    seeds = seed_points(mask, field["affine"], seeds_per_voxel=3, seed=5)
    assert seeds.shape == (3 * mask.sum(), 3)
    inv = np.linalg.inv(field["affine"])
    vox = seeds @ inv[:3, :3].T + inv[:3, 3]
    assert mask[tuple(np.rint(vox).astype(int).T)].all()
    frac = vox - np.rint(vox)
    assert np.abs(frac).max() <= 0.5 and frac.std(axis=0).min() > 0.2  # spread over the voxel
    assert np.array_equal(seeds, seed_points(mask, field["affine"], seeds_per_voxel=3, seed=5))
    assert not np.array_equal(seeds, seed_points(mask, field["affine"], seeds_per_voxel=3, seed=6))


def test_fractional_seeds_per_voxel(field):
    """n + f seeds per voxel: n everywhere plus one more in a fraction f of the voxels, reproducibly;
    the whole-number part keeps the positions of the whole-number case."""
    mask = field["left"]
    n_vox = int(mask.sum())
    seeds = seed_points(mask, field["affine"], seeds_per_voxel=1.25, seed=5)
    extra = len(seeds) - n_vox
    # binomial(n_vox, 0.25): within 4 standard deviations of its mean
    assert abs(extra - 0.25 * n_vox) <= 4 * np.sqrt(n_vox * 0.25 * 0.75)
    assert np.array_equal(seeds, seed_points(mask, field["affine"], seeds_per_voxel=1.25, seed=5))
    inv = np.linalg.inv(field["affine"])
    vox = seeds @ inv[:3, :3].T + inv[:3, 3]
    assert mask[tuple(np.rint(vox).astype(int).T)].all()
    # within 1e-6 of a whole number: exactly the whole-number seeds
    assert np.array_equal(seed_points(mask, field["affine"], seeds_per_voxel=3 * (1 + 1e-9), seed=5),
                          seed_points(mask, field["affine"], seeds_per_voxel=3, seed=5))
    with pytest.raises(Exception, match="positive"):
        seed_points(mask, field["affine"], seeds_per_voxel=0)


def test_seed_density_is_per_mm3():
    from csttool_nipype.science.tracking import seeds_per_voxel_for_density

    assert seeds_per_voxel_for_density(1 / 9, np.diag([3.0, 3.0, 3.0, 1.0])) == pytest.approx(3.0)
    oblique = np.diag([1.75, 1.75, 2.5, 1.0])
    oblique[:3, :3] = oblique[:3, :3] @ np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])  # rotated axes
    assert seeds_per_voxel_for_density(1 / 9, oblique) == pytest.approx(1.75 * 1.75 * 2.5 / 9)


def test_seed_mask_restricts_seeding(field):
    seed_mask = np.zeros_like(field["left"])
    seed_mask[..., 15:18] = True
    seed_mask &= field["left"]
    out = track(field["v1"], field["fa"], field["mask"], field["affine"], seed_mask=seed_mask, seeds_per_voxel=2)
    # a seed drawn towards the outer corner of an edge voxel has less than half of its
    # trilinear neighbourhood above the FA threshold and stops at once (EuDX rule)
    assert 0.9 * 2 * seed_mask.sum() <= len(out) <= 2 * seed_mask.sum()
    assert all(s[:, 0].max() < 0 for s in out)


def test_length_limits_are_applied(field):
    out = track(field["v1"], field["fa"], field["mask"], field["affine"], min_length_mm=0.0, max_length_mm=40.0)
    lengths = streamline_lengths(out)
    assert len(out) > 0 and lengths.max() <= 40.0


def test_probabilistic_tracking_is_repeatable_and_follows_the_tracts(field):
    data, bvals, bvecs = simulate_dwi(field["v1"], field["fa"])
    seed_mask = np.zeros(field["fa"].shape, bool)
    seed_mask[..., 15:19] = True  # 4 of the 34 tract slices keep the test light
    kwargs = dict(method="probabilistic", data=data, bvals=bvals, bvecs_voxel=bvecs, seed=3, seed_mask=seed_mask)
    first = track(field["v1"], field["fa"], field["mask"], field["affine"], **kwargs)
    second = track(field["v1"], field["fa"], field["mask"], field["affine"], **kwargs)
    assert len(first) > 60
    assert np.median(streamline_lengths(first)) > 40.0  # they run along the tracts, not across
    assert _same(first, second)
    assert _near(field["left"] | field["right"], first.get_data(), field["affine"]).all()
    other = track(field["v1"], field["fa"], field["mask"], field["affine"], **{**kwargs, "seed": 4})
    assert not _same(first, other)


@pytest.mark.parametrize("n_dirs, warned", [(12, True), (15, False)])
def test_probabilistic_tracking_warns_when_the_shell_is_too_sparse(field, caplog, n_dirs, warned):
    """12 directions support an SH order 2 ODF only (6 coefficients; order 4 needs 15)."""
    data, bvals, bvecs = simulate_dwi(field["v1"], field["fa"], n_dirs=n_dirs)
    seed_mask = np.zeros(field["fa"].shape, bool)
    seed_mask[..., 17] = True
    with caplog.at_level("WARNING", logger="csttool_nipype.science.tracking"):
        track(field["v1"], field["fa"], field["mask"], field["affine"], method="probabilistic", data=data,
              bvals=bvals, bvecs_voxel=bvecs, seed=3, seed_mask=seed_mask)
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if warned:
        assert any(f"{n_dirs} diffusion directions support an SH order 2 ODF" in m for m in messages), messages
    else:
        assert not messages


def test_bad_arguments_raise_input_error(field):
    with pytest.raises(InputError):
        track(field["v1"], field["fa"], field["mask"], field["affine"], method="magic")
    with pytest.raises(InputError, match="probabilistic"):
        track(field["v1"], field["fa"], field["mask"], field["affine"], method="probabilistic")
    with pytest.raises(InputError):
        track(field["v1"][..., :2], field["fa"], field["mask"], field["affine"])


def test_no_seed_gives_an_empty_tractogram(field):
    assert len(track(field["v1"], np.zeros_like(field["fa"]), field["mask"], field["affine"])) == 0


@pytest.mark.parametrize("as_image", [True, False])
def test_save_trk_round_trip(tmp_path, field, tractogram, as_image):
    from dipy.io.streamline import load_tractogram

    affine = field["affine"].copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag([-1.0, 1.0, 1.0])  # LAS storage: header must follow
    affine[0, 3] = 40.0
    shape = field["fa"].shape
    bundle = tractogram[:50]
    reference = nib.Nifti1Image(np.zeros(shape, np.float32), affine) if as_image else (affine, shape)
    path = save_trk(bundle, reference, tmp_path / "sub" / "tracts.trk")
    assert path.is_file()
    back = load_trk(path)
    assert len(back) == len(bundle)
    for a, b in zip(bundle, back):
        np.testing.assert_allclose(b, a, atol=1e-4)
    header = nib.streamlines.load(str(path)).header
    assert tuple(header["dimensions"]) == shape
    np.testing.assert_allclose(header["voxel_to_rasmm"], affine, atol=1e-5)
    sft = load_tractogram(str(path), "same")
    np.testing.assert_allclose(sft.streamlines.get_data(), bundle.get_data(), atol=1e-4)


def test_save_trk_writes_an_empty_bundle(tmp_path, field):
    path = save_trk([], (field["affine"], field["fa"].shape), tmp_path / "empty.trk")
    assert len(load_trk(path)) == 0


def test_load_trk_reports_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_trk(tmp_path / "none.trk")


# ------------------------------------------------------------- speed-ups keep results


def test_parallel_tracking_gives_the_serial_result(field, tractogram):
    parallel = track(field["v1"], field["fa"], field["mask"], field["affine"], n_jobs=2)
    assert _same(tractogram, parallel)


def test_parallel_probabilistic_tracking_gives_the_serial_result(field):
    data, bvals, bvecs = simulate_dwi(field["v1"], field["fa"])
    seed_mask = np.zeros(field["fa"].shape, bool)
    seed_mask[..., 16:18] = True
    kwargs = dict(method="probabilistic", data=data, bvals=bvals, bvecs_voxel=bvecs, seed=3, seed_mask=seed_mask)
    serial = track(field["v1"], field["fa"], field["mask"], field["affine"], **kwargs)
    parallel = track(field["v1"], field["fa"], field["mask"], field["affine"], n_jobs=2, **kwargs)
    assert len(serial) > 20 and _same(serial, parallel)


def _dipy_save_trk(streamlines, reference, path):
    """save_trk as it was: dipy's StatefulTractogram and save_tractogram."""
    from dipy.io.stateful_tractogram import Space, StatefulTractogram
    from dipy.io.streamline import save_tractogram
    from nibabel.streamlines import ArraySequence

    from csttool_nipype.science.trk_io import reference as trk_reference

    seq = ArraySequence([np.asarray(s, np.float64).reshape(-1, 3) for s in streamlines])
    sft = StatefulTractogram(seq, trk_reference(reference), Space.RASMM)
    if len(sft):
        sft.is_bbox_in_vox_valid()
    save_tractogram(sft, str(path), bbox_valid_check=False)


@pytest.mark.parametrize("storage", ["RAS", "LAS"])
def test_save_trk_writes_the_bytes_of_dipy_and_load_trk_reads_as_nibabel(tmp_path, field, tractogram, storage):
    affine = field["affine"].copy()
    if storage == "LAS":
        affine[:3, :3] = affine[:3, :3] @ np.diag([-1.0, 1.0, 1.0])
        affine[0, 3] = 40.0
    reference = (affine, field["fa"].shape)
    cases = {
        "all": tractogram,
        "view": tractogram[np.arange(0, len(tractogram), 5)],
        "float32 list": [np.asarray(s, np.float32) for s in tractogram[:30]],
        "outside": [np.asarray(tractogram[0]) + 300.0],
        "empty": [],
    }
    for name, streamlines in cases.items():
        ours, dipys = save_trk(streamlines, reference, tmp_path / f"{name}.trk"), tmp_path / f"{name}_dipy.trk"
        _dipy_save_trk(streamlines, reference, dipys)
        assert ours.read_bytes() == dipys.read_bytes(), name
        fast, slow = load_trk(ours), nib.streamlines.load(str(ours)).streamlines
        assert len(fast) == len(slow)
        if len(slow):
            assert fast.get_data().dtype == slow.get_data().dtype
            assert np.array_equal(fast.get_data(), slow.get_data())
            assert np.array_equal(fast._lengths, slow._lengths)


def test_load_trk_reads_files_with_scalars_through_nibabel(tmp_path, tractogram):
    from nibabel.streamlines import Tractogram

    bundle = tractogram[:5]
    scalars = [np.arange(len(s), dtype=np.float32)[:, None] for s in bundle]
    tg = Tractogram(bundle, data_per_point={"t": scalars}, affine_to_rasmm=np.eye(4))
    path = tmp_path / "scalars.trk"
    nib.streamlines.save(tg, str(path))
    back = load_trk(path)
    assert np.array_equal(back.get_data(), nib.streamlines.load(str(path)).streamlines.get_data())


def test_streamline_lengths_of_a_sequence_match_the_per_streamline_sum(tractogram):
    expected = [float(np.linalg.norm(np.diff(np.asarray(s), axis=0), axis=1).sum()) for s in tractogram]
    assert np.array_equal(streamline_lengths(tractogram), expected)
    assert np.array_equal(streamline_lengths(tractogram[::3]), expected[::3])


def _tensor_field(shape, evals, direction):
    """Six-element tensor field (Dxx, Dxy, Dyy, Dxz, Dyz, Dzz) of one tensor everywhere."""
    v1 = np.asarray(direction, float) / np.linalg.norm(direction)
    helper = np.array([0.0, 0.0, 1.0]) if abs(v1[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    v2 = np.cross(v1, helper)
    v2 /= np.linalg.norm(v2)
    frame = np.stack([v1, v2, np.cross(v1, v2)], axis=1)
    d = frame @ np.diag(evals) @ frame.T
    return np.broadcast_to(d[[0, 0, 1, 0, 1, 2], [0, 1, 1, 2, 2, 2]], tuple(shape) + (6,)).copy()


def test_smoothed_tensor_field_without_smoothing_is_the_tensors_own_fa_and_direction():
    evals = np.array([1.7e-3, 0.3e-3, 0.2e-3])
    tensor = _tensor_field((4, 5, 6), evals, (1.0, 2.0, 0.5))
    mask = np.ones((4, 5, 6), bool)
    mask[0] = False
    fa, v1 = smoothed_tensor_field(tensor, mask, np.diag([2.0, 2.0, 2.0, 1.0]), 0.0)
    mean = evals.mean()
    expected_fa = np.sqrt(1.5 * ((evals - mean) ** 2).sum() / (evals ** 2).sum())
    np.testing.assert_allclose(fa[mask], expected_fa, rtol=1e-9)
    assert np.all(fa[~mask] == 0) and np.all(v1[~mask] == 0)
    direction = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
    np.testing.assert_allclose(np.abs(v1[mask] @ direction), 1.0, atol=1e-9)


def test_smoothing_lets_a_noisy_voxel_follow_its_neighbours_and_keeps_a_uniform_field():
    evals = np.array([1.7e-3, 0.3e-3, 0.3e-3])
    shape = (9, 9, 9)
    tensor = _tensor_field(shape, evals, (0.0, 1.0, 0.0))
    mask = np.zeros(shape, bool)
    mask[1:8, 1:8, 1:8] = True
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    uniform_fa, uniform_v1 = smoothed_tensor_field(tensor, mask, affine, 2.0)
    # normalised convolution: a uniform field stays the same up to the mask's edge
    np.testing.assert_allclose(uniform_fa[mask], smoothed_tensor_field(tensor, mask, affine, 0.0)[0][mask], rtol=1e-9)
    np.testing.assert_allclose(np.abs(uniform_v1[mask][:, 1]), 1.0, atol=1e-9)
    # one voxel whose fit points along x (a crossing or noise): unsmoothed it would turn a
    # streamline by 90 degrees; smoothed over a 2 mm sigma it points along y like its neighbours
    tensor[4, 4, 4] = _tensor_field((1,), evals, (1.0, 0.0, 0.0))[0]
    raw = smoothed_tensor_field(tensor, mask, affine, 0.0)[1]
    assert abs(raw[4, 4, 4, 0]) == pytest.approx(1.0)
    fa, v1 = smoothed_tensor_field(tensor, mask, affine, 2.0)
    assert abs(v1[4, 4, 4, 1]) > 0.99
    assert 0 < fa[4, 4, 4] < uniform_fa[4, 4, 4]  # the disagreement lowers its anisotropy
    with pytest.raises(InputError, match="tensor"):
        smoothed_tensor_field(tensor[..., :3], mask, affine, 2.0)


def test_end_fa_trims_streamline_ends_back_to_where_it_is_above_the_threshold(field, tractogram):
    f = field
    # a second FA map that is 0 in the top quarter of the tracts (world z above z_cut)
    z = f["xyz"][..., 2]
    z_cut = float(np.percentile(z[f["left"] | f["right"]], 75))
    end_fa = np.where(z > z_cut, 0.0, f["fa"])
    trimmed = track(f["v1"], f["fa"], f["mask"], f["affine"], end_fa=end_fa, min_length_mm=0.0)
    untrimmed = track(f["v1"], f["fa"], f["mask"], f["affine"], min_length_mm=0.0)
    assert max(s[:, 2].max() for s in untrimmed) > z_cut + 2 * VOXEL  # tracking itself runs on
    # kept streamlines end where end_fa (trilinear) is still above the threshold: within a
    # voxel of the cut plane
    assert len(trimmed) > 0.5 * len(untrimmed)
    assert max(s[:, 2].max() for s in trimmed) <= z_cut + VOXEL
    with pytest.raises(InputError, match="end_fa"):
        track(f["v1"], f["fa"], f["mask"], f["affine"], end_fa=end_fa[:-1])


def test_track_interface_follows_the_smoothed_tensor_field(tmp_path, monkeypatch, field):
    from csttool_nipype.interfaces.tracking import Track

    f = field
    monkeypatch.chdir(tmp_path)
    # tensors with the field's FA and direction: axially symmetric, MD 0.8e-3 mm²/s
    fa = np.clip(f["fa"], 0.0, 0.9)
    md = 0.8e-3
    # λ∥ = md (1 + 2a), λ⊥ = md (1 - a) has FA = 3a / sqrt(3 + 6a²), so a = FA / sqrt(3 - 2 FA²)
    lam_par = md * (1 + 2 * fa / np.sqrt(3 - 2 * fa ** 2))
    lam_perp = (3 * md - lam_par) / 2
    v = f["v1"]
    d = lam_perp[..., None, None] * np.eye(3) + (lam_par - lam_perp)[..., None, None] * v[..., :, None] * v[..., None, :]
    tensor = d[..., [0, 0, 1, 0, 1, 2], [0, 1, 1, 2, 2, 2]]
    paths = {}
    for name, arr in (("fa", f["fa"]), ("v1", v), ("mask", f["mask"].astype(np.uint8)), ("tensor", tensor)):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(arr, np.float32), f["affine"]), paths[name])
    smoothed = Track(in_fa=paths["fa"], in_v1=paths["v1"], in_mask=paths["mask"], in_tensor=paths["tensor"],
                     smoothing_mm=2.0, seed_density=0.5).run()
    streamlines = load_trk(smoothed.outputs.out_trk)
    assert smoothed.outputs.n_streamlines == len(streamlines) > 0
    # the smoothed field still runs along the tracts: streamlines stay in them
    inside = np.concatenate([_near(f["left"] | f["right"], s, f["affine"]) for s in streamlines])
    assert inside.mean() > 0.95
    with pytest.raises(ValueError, match="in_tensor"):
        Track(in_fa=paths["fa"], in_v1=paths["v1"], in_mask=paths["mask"], smoothing_mm=2.0).run()


def test_track_interface_seeds_only_in_the_named_rois(tmp_path, monkeypatch, field):
    """``seed_rois``: seeds in the union of those ROIs of ``rois.json`` (the pipeline's CST tracking
    seeds the capsules); a name the index lacks adds no seeds, and none at all gives no streamline."""
    import json

    from csttool_nipype.interfaces.tracking import Track

    f = field
    monkeypatch.chdir(tmp_path)
    paths = {}
    for name, arr in (("fa", f["fa"]), ("v1", f["v1"]), ("mask", f["mask"].astype(np.uint8))):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(arr, np.float32), f["affine"]), paths[name])
    band = np.zeros(f["mask"].shape, bool)
    band[:, :, 10:12] = True
    seed_roi = band & f["left"]  # a slab of the left tract only
    nib.save(nib.Nifti1Image(seed_roi.astype(np.uint8), f["affine"]), tmp_path / "roi_seed.nii.gz")
    (tmp_path / "rois.json").write_text(json.dumps({"seed": str(tmp_path / "roi_seed.nii.gz")}))
    common = dict(in_fa=paths["fa"], in_v1=paths["v1"], in_mask=paths["mask"], in_rois=str(tmp_path / "rois.json"),
                  seed_density=0.5)
    result = Track(seed_rois=["seed", "absent"], **common).run()
    streamlines = load_trk(result.outputs.out_trk)
    assert result.outputs.n_streamlines == len(streamlines) > 0
    # every streamline runs through the seed slab, and stays in the left tract
    assert all(_near(seed_roi, s, f["affine"]).any() for s in streamlines)
    assert np.concatenate([_near(f["left"], s, f["affine"]) for s in streamlines]).mean() > 0.95
    assert Track(seed_rois=["absent"], **common).run().outputs.n_streamlines == 0


def test_track_rejects_an_unknown_option():
    with pytest.raises(InputError, match="seeds_per_mm3"):
        track(np.zeros((4, 4, 4, 3)), np.zeros((4, 4, 4)), np.ones((4, 4, 4), bool), np.eye(4), seeds_per_mm3=1)

"""gibbs_removal_fast: dipy's Gibbs-ringing removal (Kellner 2016), vectorised.

The reference is ``dipy.denoise.gibbs.gibbs_removal(..., num_processes=1)`` on the same
data, always computed here by dipy itself.

* float64 input: the same floating-point operations in the same order and precision as
  dipy, so the result is bit-identical (checked; the contract is ``TOL``).
* float32 input (the pipeline's): one packed inverse FFT per shift pair and a few
  reordered sums, i.e. the same method rounded differently, which flips a few near-ties
  of the total-variation comparison (as dipy's own float32 and float64 results differ).
  The contract is ``TOL32`` on the maximum and ``RMS32`` on the root mean square of the
  difference, relative to the image maximum.
"""

import numpy as np
import pytest
from dipy.denoise.gibbs import gibbs_removal
from scipy import ndimage as ndi

from csttool_nipype.science.gibbs import gibbs_removal_fast

SHAPE = (32, 30, 6, 3)          # in-plane 32 x 30 (non-square), 6 slices, 3 volumes
TOL = 1e-5                       # float64: max |ours - dipy| / image max (achieved: 0)
#: float32: max |ours - dipy| / image max. Where the local total variation is nearly flat
#: in the shift, a rounding difference can change the chosen shift of one sample ("near-tie
#: flip"), which moves that sample by up to ~1 % and its neighbours (through the k-space
#: combination) by less; dipy's own float32 and float64 results differ the same way (up
#: to 7.8e-3 on the masked phantom below). Measured without mask: 1.3e-3 on the phantom,
#: up to 4.7e-3 on its small crops (a flip in a small image), 1.0e-4 on the masked
#: phantom, 5.9e-4 on the Philips scan (b0 + DWI); benchmarks/bench_gibbs.py --compare-old:
#: 3.3e-3 on the 128x128x60x33 clinical-size phantom, 3.0e-4 on the Canon scan.
TOL32 = 1e-2
#: float32: root mean square of (ours - dipy) / image max (measured: 1.3e-5 on the phantom,
#: <= 1.8e-4 on its crops, 1.7e-6 on the Philips scan).
RMS32 = 3e-4
#: With ``mask``: max |ours - dipy| inside the mask / image max. Measured (mask = brain
#: mask dilated by 4 voxels) with float32 input: 3.9e-4 on the masked phantom below (2 %
#: background noise), 5.9e-4 (Philips) and 3.0e-4 (Canon) on the real scans, but 3.3e-3 on
#: the 128x128x60x33 clinical-size phantom (a near-tie flip inside the mask, see TOL32 and
#: gibbs_removal_fast's Notes).
MASK_TOL = 1e-3


def _ellipse(x, y, cx, cy, ax, ay, theta=0.0):
    c, s = np.cos(theta), np.sin(theta)
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    return ((u / ax) ** 2 + (v / ay) ** 2 <= 1).astype(float)


def _ringing_phantom(shape=SHAPE, noise=0.005, seed=0, extent=1.0):
    """Head-like ellipses with true Gibbs ringing, and their ground truth.

    Each slice is drawn at twice the in-plane resolution (a head ellipse, an inner
    ellipse and a bright disc whose contrasts change between volumes and whose size
    changes between slices), then k-space truncated to ``shape`` (central frequencies
    kept, magnitude image), which produces real truncation ringing; Gaussian noise of
    ``noise`` x max is added. The ground truth is the non-truncated image sampled at
    the target voxels (target voxel m = fine sample 2m, the truncation's convention).
    ``extent`` scales the objects (1: the head spans ~80 % of the field of view).

    Returns
    -------
    data : float32 array, shape ``shape``
    truth : float64 array, shape ``shape``
    """
    nx, ny, nz, nv = shape
    x, y = np.meshgrid((np.arange(2 * nx) - nx) / (2 * nx), (np.arange(2 * ny) - ny) / (2 * ny), indexing="ij")
    x, y = x / extent, y / extent
    fine = np.zeros((2 * nx, 2 * ny, nz, nv))
    for z in range(nz):
        f = 1 - 0.2 * abs(z - (nz - 1) / 2) / nz
        head = _ellipse(x, y, 0, 0, 0.40 * f, 0.34 * f, 0.2)
        inner = _ellipse(x, y, -0.05, 0, 0.16 * f, 0.12 * f, 0.2)
        disc = _ellipse(x, y, 0.2, 0.06, 0.07, 0.07)
        for g in range(nv):
            d = (1.0, 0.7, 0.5)[g % 3]
            fine[:, :, z, g] = 1000 * (0.6 * head + 0.6 * d * inner + 1.5 * d**2 * disc)
    spectrum = np.fft.fftn(fine, axes=(0, 1))
    for axis, n in ((0, nx), (1, ny)):
        m = spectrum.shape[axis]
        spectrum = np.take(spectrum, np.r_[0:(n + 1) // 2, m - n // 2:m], axis=axis) * (n / m)
    ringing = np.abs(np.fft.ifftn(spectrum, axes=(0, 1)))
    truth = fine[::2, ::2]
    rng = np.random.default_rng(seed)
    data = ringing + rng.normal(scale=noise * truth.max(), size=ringing.shape)
    return data.astype(np.float32), truth


def _dipy(data, **kwargs):
    return gibbs_removal(np.array(data, copy=True), inplace=False, num_processes=1, **kwargs)


def _max_rel_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def phantom():
    return _ringing_phantom()


@pytest.fixture(scope="module")
def dipy_ref(phantom):
    return _dipy(phantom[0], slice_axis=2, n_points=3)


@pytest.fixture(scope="module")
def ours(phantom):
    return gibbs_removal_fast(phantom[0], slice_axis=2, n_points=3)


def _rms_rel_diff(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)) / np.max(np.abs(b)))


# --------------------------------------------------------------------------- vs dipy
def test_matches_dipy_on_ringing_phantom(phantom, dipy_ref, ours):
    data, _ = phantom
    assert ours.shape == data.shape and ours.dtype == np.float32
    assert np.isfinite(ours).all()
    assert _max_rel_diff(ours, dipy_ref) <= TOL32                # achieved 1.3e-3
    assert _rms_rel_diff(ours, dipy_ref) <= RMS32 / 10           # achieved 1.3e-5
    # almost all voxels agree to float32 rounding-level accuracy
    close = np.abs(ours.astype(float) - dipy_ref) <= 1e-4 * np.max(dipy_ref)
    assert close.mean() >= 0.995                                 # achieved 0.99925
    # it did something: ringing removal changes the image by far more than the tolerance
    assert _max_rel_diff(ours, data) > 10 * TOL32


def test_float64_bit_identical_to_dipy(phantom):
    """float64: same operations, same order, same precision as dipy: equal to the last bit here."""
    data = phantom[0].astype(np.float64)
    got = gibbs_removal_fast(data, slice_axis=2, n_points=3)
    assert got.dtype == np.float64
    ref = _dipy(data, slice_axis=2, n_points=3)
    assert _max_rel_diff(got, ref) <= TOL
    np.testing.assert_array_equal(got, ref)


def test_reduces_ringing_like_dipy(phantom, dipy_ref, ours):
    """Ringing energy: mean squared error vs the ground truth over the voxels not next to an
    edge (voxels on either side of an edge are blurred by the truncation, which no
    unringing method undoes); it includes the added noise (~1/4 of the input's)."""
    data, truth = phantom
    away = ndi.maximum_filter(truth, size=(3, 3, 1, 1)) == ndi.minimum_filter(truth, size=(3, 3, 1, 1))
    assert away.mean() > 0.5

    def energy(img):
        return float(np.mean((img.astype(float) - truth)[away] ** 2))

    before = energy(data)
    ratio_ours, ratio_dipy = energy(ours) / before, energy(dipy_ref) / before
    assert ratio_ours < 0.7                       # achieved 0.53 (0.48 without the noise)
    assert abs(ratio_ours - ratio_dipy) <= 1e-3 * ratio_dipy


@pytest.mark.parametrize(
    "ndim, slice_axis",
    [(2, 2), (3, 0), (3, 1), (3, 2), (4, 0), (4, 1), (4, 2)],
)
def test_shapes_and_slice_axes_match_dipy(phantom, ndim, slice_axis):
    data = phantom[0]
    # crops through ringing edges (kept small: dipy costs ~0.03 s per slice)
    sub = {2: data[:, :, 2, 0], 3: data[4:20, 8:22, :, 1], 4: data[4:16, 8:18, :, :2]}[ndim]
    ref = _dipy(sub, slice_axis=slice_axis)
    got = gibbs_removal_fast(sub, slice_axis=slice_axis)
    assert got.shape == sub.shape and got.dtype == np.float32
    assert _max_rel_diff(got, ref) <= TOL32
    assert _rms_rel_diff(got, ref) <= RMS32


@pytest.mark.parametrize("n_points", [1, 2, 5])
def test_n_points_match_dipy(phantom, n_points):
    sub = phantom[0][:, :, 1:3, 0]
    got, ref = gibbs_removal_fast(sub, n_points=n_points), _dipy(sub, n_points=n_points)
    assert _max_rel_diff(got, ref) <= TOL32
    assert _rms_rel_diff(got, ref) <= RMS32
    sub64 = sub.astype(np.float64)
    np.testing.assert_array_equal(gibbs_removal_fast(sub64, n_points=n_points), _dipy(sub64, n_points=n_points))


@pytest.mark.parametrize("shape", [(31, 29), (32, 29), (31, 30)])
def test_odd_sizes_match_dipy(phantom, shape):
    """Odd in-plane lengths have no Nyquist term (handled separately for even lengths)."""
    sub = np.ascontiguousarray(phantom[0][:shape[0], :shape[1], 2:4, 1])
    got, ref = gibbs_removal_fast(sub), _dipy(sub)
    assert _max_rel_diff(got, ref) <= TOL32
    assert _rms_rel_diff(got, ref) <= RMS32


def test_float64_matches_dipy(phantom):
    sub = phantom[0][:, :, 1:3, 2].astype(np.float64)
    got = gibbs_removal_fast(sub, slice_axis=2)
    assert got.dtype == np.float64
    ref = _dipy(sub, slice_axis=2)
    assert _max_rel_diff(got, ref) <= TOL
    np.testing.assert_array_equal(got, ref)                   # bit-identical (same arithmetic)


def test_non_finite_spread_like_dipy(phantom):
    sub = phantom[0][:, :, :2, 0].copy()
    sub[5, 7, 0] = np.nan
    with np.errstate(invalid="ignore"):
        ref, got = _dipy(sub), gibbs_removal_fast(sub)
    assert np.isnan(got[:, :, 0]).any() and np.isfinite(got[:, :, 1]).all()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    finite = np.isfinite(ref)
    assert np.max(np.abs(got[finite] - ref[finite])) <= TOL32 * np.max(np.abs(ref[finite]))


# --------------------------------------------------------------------------- behaviour
def test_chunking_workers_and_repeats_do_not_change_the_result(phantom, ours):
    data = phantom[0]
    for kwargs in ({"chunk_voxels": 1}, {"chunk_voxels": 5 * 32 * 30}, {"chunk_voxels": 10**9}, {"workers": 2}, {}):
        np.testing.assert_array_equal(gibbs_removal_fast(data, **kwargs), ours)


@pytest.mark.parametrize("mask", [False, True])
def test_workers_bit_identical(phantom, mask):
    """Several chunks run on 2 threads: same bits as 1 thread, with and without mask."""
    data = phantom[0]
    kwargs = {"chunk_voxels": 2 * 32 * 30}                   # 9 chunks
    if mask:
        region = np.zeros(data.shape[:3], bool)
        region[6:20, 10:24, 1:5] = True
        kwargs["mask"] = region
    one = gibbs_removal_fast(data, workers=1, **kwargs)
    for workers in (2, 3):
        np.testing.assert_array_equal(gibbs_removal_fast(data, workers=workers, **kwargs), one)
    for chunk_voxels in (1, None):
        kwargs["chunk_voxels"] = chunk_voxels
        np.testing.assert_array_equal(gibbs_removal_fast(data, workers=2, **kwargs), one)


# --------------------------------------------------------------------------- mask
@pytest.fixture(scope="module")
def masked_phantom():
    """A smaller head in a larger field of view (as in a scan: the brain region covers a
    quarter of it), 2 % noise, and its processing region (head dilated by 4 voxels)."""
    data, truth = _ringing_phantom((64, 60, 4, 3), noise=0.02, seed=1, extent=0.55)
    region = ndi.binary_dilation(truth[..., 0] > 0, np.ones((9, 9, 1), bool))
    return data, region


def test_mask_matches_dipy_inside(masked_phantom):
    data, region = masked_phantom
    ref = _dipy(data, slice_axis=2)
    got = gibbs_removal_fast(data, mask=region)
    assert got.shape == data.shape and got.dtype == np.float32 and np.isfinite(got).all()
    err = np.abs(got.astype(float) - ref) / np.max(ref)
    assert err[region].max() <= MASK_TOL                      # achieved 3.9e-4
    # work was skipped: outside the region the result is not dipy's
    assert err[~region].max() > MASK_TOL
    # the unmasked result is dipy's
    assert _max_rel_diff(gibbs_removal_fast(data), ref) <= TOL32          # achieved 1.0e-4


def test_mask_all_true_is_unmasked_and_empty_slices_keep_input(phantom, ours):
    data = phantom[0]
    np.testing.assert_array_equal(gibbs_removal_fast(data, mask=np.ones(data.shape[:3], bool)), ours)
    region = np.zeros(data.shape[:3], bool)
    region[:, :, 2:4] = True                                  # slices 0, 1, 4, 5 empty
    got = gibbs_removal_fast(data, mask=region)
    np.testing.assert_array_equal(got[:, :, 2:4], ours[:, :, 2:4])   # whole slices: exact
    np.testing.assert_array_equal(got[:, :, [0, 1, 4, 5]], data[:, :, [0, 1, 4, 5]])
    copy = data.copy()
    assert gibbs_removal_fast(copy, mask=region, inplace=True) is copy
    np.testing.assert_array_equal(copy, got)
    # other slice axes and 2D data
    for axis in (0, 1):
        full = np.ones(data.shape[:3], bool)
        np.testing.assert_array_equal(
            gibbs_removal_fast(data, slice_axis=axis, mask=full), gibbs_removal_fast(data, slice_axis=axis)
        )
    plane = data[:, :, 0, 0]
    np.testing.assert_array_equal(gibbs_removal_fast(plane, mask=np.ones(plane.shape, bool)), ours[:, :, 0, 0])
    np.testing.assert_array_equal(gibbs_removal_fast(plane, mask=np.zeros(plane.shape, bool)), plane)


@pytest.mark.realdata
def test_matches_dipy_on_a_real_scan(shared_data):
    """Without and with mask, against dipy, on a b0 and a DWI of the Philips scan."""
    nib = pytest.importorskip("nibabel")
    from csttool_nipype.science.preprocess import processing_region

    base = shared_data / "philips_achieva_vanderbilt_dti15_b2000" / "nifti" / "601_WIP_dti_ax"
    img = nib.load(f"{base}.nii.gz")
    data = np.asarray(img.dataobj, dtype=np.float32)
    region = processing_region(data, np.loadtxt(f"{base}.bval"))
    sub = np.ascontiguousarray(data[..., [0, 8]])             # b0 + a DWI (80x80x40 each)
    ref = _dipy(sub, slice_axis=2)
    got = gibbs_removal_fast(sub, workers=2)
    assert _max_rel_diff(got, ref) <= TOL32                   # achieved 5.9e-4
    assert _rms_rel_diff(got, ref) <= RMS32 / 10              # achieved 1.7e-6
    masked = gibbs_removal_fast(sub, mask=region, workers=2)
    assert region.mean() < 0.5
    assert np.max(np.abs(masked.astype(float) - ref)[region]) <= MASK_TOL * np.max(ref)


def test_input_untouched_and_inplace(phantom, ours):
    data = phantom[0].copy()
    gibbs_removal_fast(data)
    np.testing.assert_array_equal(data, phantom[0])
    out = gibbs_removal_fast(data, inplace=True)
    assert out is data
    np.testing.assert_array_equal(data, ours)


def test_other_input_dtypes(phantom):
    sub = np.round(phantom[0][:, :, :2, 0])
    as_int = gibbs_removal_fast(sub.astype(np.int16))
    assert as_int.dtype == np.float32
    np.testing.assert_array_equal(as_int, gibbs_removal_fast(sub))
    assert gibbs_removal_fast(sub.astype(np.int32)).dtype == np.float64
    assert gibbs_removal_fast(sub.astype(">f4")).dtype == np.float32


@pytest.mark.parametrize(
    "args, kwargs, error",
    [
        ((np.zeros(8),), {}, ValueError),
        ((np.zeros((8, 8, 8, 2, 2)),), {}, ValueError),
        ((np.zeros((8, 8, 8)),), {"slice_axis": 3}, ValueError),
        ((np.zeros((8, 8, 8)),), {"n_points": 0}, ValueError),
        ((np.zeros((8, 3, 8)),), {"n_points": 3}, ValueError),
        ((np.zeros((8, 8), complex),), {}, TypeError),
        ((np.zeros((8, 8), np.int16),), {"inplace": True}, ValueError),
        ((np.zeros((8, 8), np.float32),), {"inplace": 1}, TypeError),
        ((np.zeros((8, 8, 8)),), {"workers": 0}, ValueError),
        ((np.zeros((8, 8, 8)),), {"mask": np.ones((8, 8), bool)}, ValueError),
        ((np.zeros((8, 8, 8, 2)),), {"mask": np.ones((8, 8, 8, 2), bool)}, ValueError),
    ],
)
def test_invalid_input(args, kwargs, error):
    with pytest.raises(error):
        gibbs_removal_fast(*args, **kwargs)

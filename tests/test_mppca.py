"""mppca_fast: dipy's MP-PCA denoising (Veraart 2016), vectorised.

The reference is ``dipy.denoise.localpca.mppca(..., pca_method="eig")`` (dipy 1.12) on the
same data. The contract:

* float64 data: max |ours - dipy| <= 1e-10 x image max (achieved ~1e-14): the same
  arithmetic up to summation order, so this checks the algorithm itself (patch sums,
  Marchenko-Pastur classifier, threshold, weights, masking, sigma map);
* float32 data (what the pipeline passes): dipy computes them in float32, this module in
  float64, so ours is dipy's result in exact arithmetic (checked: within float32 output
  rounding, 1e-7 x max, of dipy run on the same data as float64) and the difference to
  dipy is dipy's own float32 rounding. Mostly that is ~1e-6 x max: on the phantom
  max |ours - dipy| <= TOL = 1e-4 x max (achieved 1e-6). But where dipy's rounding
  decides a near-tie (an eigenvalue within ~1e-7 x the largest of the threshold, or a
  classifier step within rounding of 0) a patch keeps one component more or less than
  in exact arithmetic and the difference can exceed TOL: on a block of the real Philips
  subject 1.8e-4 x max (0.025 x the noise sigma) in 0.5 % of the values, on adversarial
  piecewise-constant data up to ~0.1 sigma. There the test is that the difference is no
  larger than dipy's own float32-vs-float64 difference (plus 1e-6 x max).
"""

import warnings

import numpy as np
import pytest
from dipy.denoise.localpca import mppca

from csttool_nipype.science import denoise
from csttool_nipype.science.mppca import mppca_fast
from csttool_nipype.sims.model import PhantomSpec
from csttool_nipype.sims.phantom import make_phantom

TOL = 1e-4          # float32 data: max |ours - dipy| / image max (achieved ~1e-6)
TOL_EXACT = 1e-10   # float64 data (achieved ~1e-14)
TOL_F32_OUT = 1e-7  # ours (float32 out) vs dipy on float64 data: float32 rounding of the output
SUB16 = np.r_[0, np.arange(1, 31, 2)]   # b0 + 15 directions: the "batched" eigensolver path


def _dipy(data, **kwargs):
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        return mppca(np.array(data, copy=True), patch_radius=kwargs.pop("patch_radius", 2), pca_method="eig",
                     return_sigma=True, suppress_warning=True, **kwargs)


def _ours(data, **kwargs):
    with np.errstate(invalid="ignore", divide="ignore"):
        return mppca_fast(data, return_sigma=True, **kwargs)


def _max_rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def block():
    """A 24 x 24 x 14 block of the 3 mm phantom (31 volumes, SNR 30) across the brain edge.

    From 4 voxels outside the brain's left edge inwards: Rician background, the edge (the
    highest contrasts) and tissue. Returns (noisy float32, noise-free, brain mask, sigma).
    """
    ph = make_phantom(PhantomSpec())
    brain = ph.truth["brain_mask"]
    idx = np.argwhere(brain)
    lo, c = idx.min(0), (idx.min(0) + idx.max(0)) // 2
    sl = (slice(lo[0] - 4, lo[0] + 20), slice(c[1] - 12, c[1] + 12), slice(c[2] - 7, c[2] + 7))
    assert 0.5 < brain[sl].mean() < 0.95
    return np.ascontiguousarray(ph.dwi[sl]), ph.dwi_clean[sl], brain[sl], ph.sigma


@pytest.fixture(scope="module", params=["31 volumes", "16 volumes"])
def case(request, block):
    """Data, dipy's result on it as float32 and as float64, and ours (float32)."""
    data = block[0] if request.param == "31 volumes" else np.ascontiguousarray(block[0][..., SUB16])
    return {
        "data": data,
        "dipy32": _dipy(data),
        "dipy64": _dipy(data.astype(np.float64)),
        "ours": _ours(data),
        "vols": SUB16 if request.param == "16 volumes" else slice(None),
    }


# --------------------------------------------------------------------------- vs dipy
def test_float32_matches_dipy(case):
    (ref, ref_sigma), (got, got_sigma) = case["dipy32"], case["ours"]
    assert got.dtype == np.float32 and got_sigma.dtype == np.float32
    assert _max_rel(got, ref) <= TOL
    assert np.max(np.abs(got_sigma - ref_sigma) / ref_sigma) <= TOL
    # ... and ours is dipy's result in exact arithmetic (dipy on the data as float64)
    exact, exact_sigma = case["dipy64"]
    assert _max_rel(got, exact) <= TOL_F32_OUT
    assert np.max(np.abs(got_sigma - exact_sigma) / exact_sigma) <= 10 * TOL_F32_OUT


@pytest.mark.parametrize("eigensolver", ["batched", "tridiagonal"])
def test_float64_matches_dipy_exactly(case, eigensolver):
    ref, ref_sigma = case["dipy64"]
    got, got_sigma = _ours(case["data"].astype(np.float64), eigensolver=eigensolver)
    assert got.dtype == np.float64 and got_sigma.dtype == np.float64
    assert _max_rel(got, ref) <= TOL_EXACT
    assert _max_rel(got_sigma, ref_sigma) <= TOL_EXACT


def test_denoising_lowers_error(block, case):
    _, clean, brain, sigma = block
    clean = clean[..., case["vols"]]

    def rmse(img):
        return float(np.sqrt(np.mean((np.asarray(img, float) - clean)[brain] ** 2)))

    before, ours, ref = rmse(case["data"]), rmse(case["ours"][0]), rmse(case["dipy32"][0])
    assert ours < 0.5 * before                    # achieved 10.2 / 33.4 (31 vols), 13.4 / 33.4 (16)
    assert abs(ours - ref) <= 1e-5 * ref
    # the noise map: the median over the brain is the simulated sigma
    assert np.median(case["ours"][1][brain]) == pytest.approx(sigma, rel=0.1)


def test_mask_like_dipy(block):
    data, _, brain, _ = block
    data = np.ascontiguousarray(data[..., SUB16])
    ref, ref_sigma = _dipy(data, mask=brain)
    got, got_sigma = _ours(data, mask=brain)
    assert np.all(got[~brain] == 0) and np.all(got_sigma[~brain] == 0)
    # NaN where a mask voxel is covered by no patch (no mask voxel within the radius)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isnan(got_sigma), np.isnan(ref_sigma))
    finite = np.isfinite(ref)
    assert np.max(np.abs(got[finite] - ref[finite])) <= TOL * np.max(ref[finite])
    finite = np.isfinite(ref_sigma) & brain
    assert np.max(np.abs(got_sigma[finite] - ref_sigma[finite]) / ref_sigma[finite]) <= TOL


def _piecewise_constant(shape=(16, 15, 12), m=33, sigma=30.0, seed=0):
    """Four flat regions with unrelated 33-volume signals (contrast up to 30 sigma), Rician noise.

    Covariances with eigenvalues spread over 4 orders of magnitude: dipy's float32
    eigenvalues are off by ~1e-7 of the largest, enough to move some near the threshold
    across it (a component kept by one implementation and dropped by the other).
    """
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij")
    inside = (ii / (shape[0] / 2.5)) ** 2 + (jj / (shape[1] / 2.5)) ** 2 + (kk / (shape[2] / 2.5)) ** 2 <= 1
    labels = inside * (1 + (ii > 0) + 2 * (jj > 0))
    signals = rng.uniform(200, 1000, (5, m))
    clean = np.where(labels[..., None] > 0, signals[labels], 0.0)
    noisy = np.hypot(clean + sigma * rng.standard_normal(clean.shape), sigma * rng.standard_normal(clean.shape))
    return noisy.astype(np.float32)


def test_flip_prone_data_within_dipy_float32_error():
    data = _piecewise_constant()
    (ref32, _), (ref64, _) = _dipy(data), _dipy(data.astype(np.float64))
    got, _ = _ours(data)
    scale = np.max(ref32)
    own_error = np.max(np.abs(ref64 - ref32))            # dipy float32 vs dipy in float64
    assert own_error > 1e-5 * scale                       # the data do provoke float32 near-ties
    assert np.max(np.abs(got - ref32)) <= own_error + 1e-6 * scale
    assert _max_rel(got, ref64) <= TOL_F32_OUT
    # a flipped decision moves a patch estimate by a noise-sized component, weighted by
    # ~1/125 in each voxel it covers: here a few % of the voxels differ by > 1e-5 x max,
    # all by < 0.1 sigma (sigma = 30)
    assert np.mean(np.abs(got - ref32) > 1e-5 * scale) < 0.1
    assert np.max(np.abs(got - ref32)) < 0.2 * 30.0


def test_zero_background_and_constant_patches():
    """Patches constant in every volume have a covariance of exactly 0 (dipy: exactly 0 for
    a constant 0 always, for other constants when its float mean is exact, as here)."""
    data = _piecewise_constant(shape=(20, 15, 12), m=12).astype(np.float64)
    data[:8] = 0.0                           # zero-filled background (as on some scanners)
    data[12:, :7] = 123.25                   # a constant region (noisy data in between)
    ref, ref_sigma = _dipy(data)
    got, got_sigma = _ours(data)
    assert _max_rel(got, ref) <= TOL_EXACT
    assert _max_rel(got_sigma, ref_sigma) <= TOL_EXACT
    assert np.all(got[:3] == 0)              # covered by all-zero patches only
    np.testing.assert_allclose(got[16:, :3], 123.25, rtol=1e-12)   # by constant patches only
    assert np.all(got_sigma[16:, :3] == 0)


@pytest.mark.parametrize(
    "shape, radius",
    [
        ((9, 10, 8, 31), 1),            # 27-voxel patches < 31 volumes: classifier on the top 26
        ((12, 9, 8, 16), (2, 1, 3)),    # anisotropic radius
        ((11, 12, 1, 16), 2),           # single slice: radius 0 along it (dipy's rule)
    ],
)
def test_patch_radius_variants_match_dipy(block, shape, radius):
    data = block[0][:shape[0], 6:6 + shape[1], :shape[2], :shape[3]].astype(np.float64)
    ref, ref_sigma = _dipy(data, patch_radius=radius)
    got, got_sigma = _ours(data, patch_radius=radius)
    assert _max_rel(got, ref) <= TOL_EXACT
    assert _max_rel(got_sigma, ref_sigma) <= TOL_EXACT


def test_real_data_difference_is_dipy_float32_rounding(shared_data):
    """Philips subject (80x80x40x16, values up to ~9e5), a 20x20x24 block through the brain.

    Here dipy's float32 rounding does decide some near-ties: max |ours - dipy| was
    1.8e-4 x max (86 signal units, 0.025 x the noise sigma ~3400), 0.5 % of the values
    differ by > 1e-5 x max - exactly dipy's own float32-vs-float64 difference (ours is
    within 3e-8 x max of dipy on the same data in float64).
    """
    import nibabel as nib

    path = shared_data / "philips_achieva_vanderbilt_dti15_b2000" / "nifti" / "601_WIP_dti_ax.nii.gz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    data = np.ascontiguousarray(nib.load(str(path)).get_fdata(dtype=np.float32)[30:50, 30:50, 10:34])
    (ref32, sig32), (ref64, _) = _dipy(data), _dipy(data.astype(np.float64))
    got, got_sigma = _ours(data)
    scale = np.max(ref32)
    assert np.max(np.abs(got - ref32)) <= np.max(np.abs(ref64 - ref32)) + 1e-6 * scale
    assert _max_rel(got, ref64) <= TOL_F32_OUT
    assert np.max(np.abs(got - ref32)) <= 0.05 * np.median(sig32[sig32 > 0])
    assert np.percentile(np.abs(got - ref32), 99) <= 1e-5 * scale


# --------------------------------------------------------------------------- behaviour
def test_tiling_workers_and_solver_do_not_change_the_result(case):
    data, (ours, ours_sigma) = case["data"], case["ours"]
    for kwargs in ({"chunk_voxels": 400}, {"chunk_voxels": 10**9}, {"workers": 2}, {"workers": 3, "chunk_voxels": 900}):
        got, got_sigma = _ours(data, **kwargs)
        np.testing.assert_array_equal(got, ours)
        np.testing.assert_array_equal(got_sigma, ours_sigma)
    for solver in ("batched", "tridiagonal"):      # same decisions, eigenvectors to rounding
        assert _max_rel(_ours(data, eigensolver=solver)[0], ours) <= TOL_F32_OUT


def test_lapack_failures_fall_back_to_eigh(monkeypatch):
    """dsterf / dstein reporting non-convergence (never seen in practice): eigh for those patches."""
    from scipy.linalg import lapack

    from csttool_nipype.science import mppca_kernels as module

    rng = np.random.default_rng(0)
    n, m = 125, 24
    x = rng.standard_normal((40, n, m))
    x[:, :, :3] *= 5
    x -= x.mean(axis=1, keepdims=True)
    cov = np.einsum("bni,bnj->bij", x, x) / n
    tau_factor = 1 + np.sqrt(m / n)
    var, ncomps, w = module._kept_batched(cov.copy(), n, tau_factor)
    calls = {"dsterf": 0, "dstein": 0}

    def failing(name, which):
        real = getattr(lapack, name)

        def wrapped(*args):
            calls[name] += 1
            out = real(*args)
            return out[0], (1 if calls[name] in which else out[1])
        return wrapped

    monkeypatch.setattr(lapack, "dsterf", failing("dsterf", (3, 7)))
    monkeypatch.setattr(lapack, "dstein", failing("dstein", (2, 5)))
    var2, ncomps2, w2 = module._kept_tridiagonal(cov.copy(), n, tau_factor)
    assert calls["dsterf"] == 40 and calls["dstein"] > 5
    np.testing.assert_array_equal(ncomps2, ncomps)
    np.testing.assert_allclose(var2, var, rtol=1e-12)
    proj = np.einsum("bik,bjk->bij", w, w)
    np.testing.assert_allclose(np.einsum("bik,bjk->bij", w2, w2), proj, atol=1e-12)


def test_dtypes_and_input_untouched(block):
    data = np.ascontiguousarray(block[0][:10, :10, :8, SUB16])
    copy = data.copy()
    out = mppca_fast(data)
    np.testing.assert_array_equal(data, copy)
    assert out.dtype == np.float32 and out.shape == data.shape
    assert mppca_fast(data, out_dtype=np.float64).dtype == np.float64
    as_int = np.round(data).astype(np.int16)     # like dipy: computed in float32, cast back
    ref = _dipy(as_int)[0]
    got = mppca_fast(as_int)
    assert got.dtype == np.int16
    assert np.max(np.abs(got.astype(int) - ref)) <= 1      # truncation of values equal to ~1e-6


@pytest.mark.parametrize(
    "args, kwargs, error",
    [
        ((np.zeros((8, 8, 8)),), {}, ValueError),
        ((np.zeros((8, 8, 8, 4)),), {"mask": np.ones((8, 8, 7), bool)}, ValueError),
        ((np.zeros((8, 4, 8, 4)),), {}, ValueError),                    # axis shorter than the patch
        ((np.zeros((8, 8, 8, 4)),), {"patch_radius": (1, 1)}, ValueError),
        ((np.zeros((8, 8, 8, 4)),), {"patch_radius": -1}, ValueError),
        ((np.zeros((1, 1, 1, 4)),), {}, ValueError),                    # 1-voxel patch
        ((np.full((8, 8, 8, 4), np.nan),), {}, ValueError),
        ((np.zeros((8, 8, 8, 4)),), {"workers": 0}, ValueError),
        ((np.zeros((8, 8, 8, 4)),), {"eigensolver": "svd"}, ValueError),
        ((np.zeros((8, 8, 8, 4), complex),), {}, TypeError),
        ((np.zeros((8, 8, 8, 4)),), {"patch_stride": 0}, ValueError),
        ((np.zeros((8, 8, 8, 4)),), {"patch_stride": 1.5}, ValueError),
    ],
)
def test_invalid_input(args, kwargs, error):
    with pytest.raises(error):
        mppca_fast(*args, **kwargs)


# --------------------------------------------------------------------------- patch stride
def test_stride_1_is_the_default(block):
    data = np.ascontiguousarray(block[0][:12, :12, :9, SUB16])
    ref, ref_sigma = _ours(data)
    got, got_sigma = _ours(data, patch_stride=1)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got_sigma, ref_sigma)


def test_stride_quality_close_to_stride_1(block, case):
    """Patch centres on a lattice of stride 2 (8x fewer patches): the error vs the
    noise-free signal in the brain is within 5 % of stride 1's (achieved +2.0 % with 31
    volumes, +1.8 % with 16; stride 3: +5.7 %, +4.3 %), both far below the noise."""
    _, clean, brain, sigma = block
    clean = clean[..., case["vols"]]

    def rmse(img):
        return float(np.sqrt(np.mean((np.asarray(img, float) - clean)[brain] ** 2)))

    noisy, full = rmse(case["data"]), rmse(case["ours"][0])
    got, got_sigma = _ours(case["data"], patch_stride=2)
    strided = rmse(got)
    assert full <= strided <= 1.05 * full
    assert strided < 0.45 * noisy                   # achieved 10.4 / 33.4 (31 vols), 13.6 / 33.4 (16)
    assert np.median(got_sigma[brain]) == pytest.approx(sigma, rel=0.1)
    assert rmse(_ours(case["data"], patch_stride=3)[0]) <= 1.10 * full


def test_stride_independent_of_workers_and_tiles(case):
    data = case["data"]
    ref, ref_sigma = _ours(data, patch_stride=2)
    for kwargs in ({"chunk_voxels": 60}, {"workers": 2}, {"workers": 3, "chunk_voxels": 100}):
        got, got_sigma = _ours(data, patch_stride=2, **kwargs)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(got_sigma, ref_sigma)


@pytest.mark.parametrize("stride", [2, 3, 5])
@pytest.mark.parametrize(
    "shape, radius, mask_kind",
    [
        ((23, 20, 13, 16), 2, "none"),          # last valid centre off the lattice on every axis
        ((23, 20, 13, 16), 2, "dilated"),       # the pipeline's mask: brain dilated by the radius
        ((23, 20, 13, 16), 2, "brain"),         # undilated mask
        ((23, 20, 13, 16), 2, "sparse"),        # scattered voxels: lattice gaps filled by extra centres
        ((17, 14, 1, 16), 2, "none"),           # single slice: radius (and stride) 0 / 1 along it
        ((19, 16, 12, 16), (2, 1, 3), "brain"),  # anisotropic radius
    ],
)
def test_stride_covers_every_mask_voxel(block, stride, shape, radius, mask_kind):
    """Every mask voxel stride 1 computes is computed: finite, non-zero where the data
    are, a positive noise level; as stride 1, NaN only where no mask voxel is a possible
    centre within the patch radius."""
    from scipy import ndimage

    data, _, brain, _ = block
    data = np.ascontiguousarray(data[:shape[0], 2:2 + shape[1], :shape[2], SUB16[:shape[3]]])
    brain = brain[:shape[0], 2:2 + shape[1], :shape[2]]
    r = np.broadcast_to(radius, (3,))
    mask = {
        "none": None,
        "brain": brain,
        "dilated": ndimage.binary_dilation(brain, structure=np.ones(tuple(2 * r + 1), bool)),
        "sparse": np.random.default_rng(1).random(shape[:3]) < 0.05,
    }[mask_kind]
    ref, ref_sigma = _ours(data, mask=mask, patch_radius=radius)
    got, got_sigma = _ours(data, mask=mask, patch_radius=radius, patch_stride=stride)
    inside = np.ones(shape[:3], bool) if mask is None else mask
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isnan(got_sigma), np.isnan(ref_sigma))
    covered = inside & np.isfinite(ref_sigma)
    assert covered.sum() > 0.4 * inside.sum()
    assert np.all(np.isfinite(got[covered]))
    # no voxel left empty (values are clipped at 0, so single zeros occur in the background)
    assert not np.any(np.all(got[covered] == 0, axis=-1) & np.any(data[covered] != 0, axis=-1))
    assert np.mean(got[covered] == 0) <= np.mean(ref[covered] == 0) + 1e-3
    assert np.all(got_sigma[covered] > 0)
    assert np.all(got[~inside] == 0) and np.all(got_sigma[~inside] == 0)
    # a different estimate, of the same quality: within a fraction of the noise of stride 1
    sigma = np.median(ref_sigma[covered])
    assert np.sqrt(np.mean((got[covered] - ref[covered]) ** 2)) < 0.5 * sigma


def test_stride_lattice_includes_the_last_centre():
    """The lattice starts at the first candidate centre and ends at the last, per axis."""
    from csttool_nipype.science.mppca import _plan

    mask = np.zeros((20, 17, 11), bool)
    mask[3:18, 2:15, 4:9] = True
    plan = _plan(mask, np.array([2, 2, 2]), (5, 5, 5), 4, 10**6)
    assert len(plan) == 1                          # one tile, no extra centres needed
    tile, centres = plan[0]
    assert [list(t) for t in tile] == [[3, 7, 11, 15, 17], [2, 6, 10, 14], [4, 8]]
    assert centres[np.ix_(*tile)].all()


# --------------------------------------------------------------------------- pipeline
def test_preprocess_denoise_uses_it_and_matches_dipy_reference(block):
    data, _, brain, _ = block
    data = np.ascontiguousarray(data[..., SUB16])
    bvals = np.r_[0.0, np.full(15, 1000.0)]
    out, info = denoise.denoise(data, bvals, None, method="mppca")
    assert info["parameters"]["implementation"] == "fast"
    ref, ref_info = denoise._denoise_mppca(data, None, implementation="dipy")
    assert _max_rel(out, ref) <= TOL
    assert info["sigma_estimate"] == pytest.approx(ref_info["sigma_estimate"], rel=TOL)
    with pytest.raises(ValueError):
        denoise._denoise_mppca(data, None, implementation="gpu")

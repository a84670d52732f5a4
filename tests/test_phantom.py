"""The digital phantom: its signal matches its ground truth, in any pose and storage order."""

import dataclasses
import json
from functools import lru_cache

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from csttool_nipype import data
from csttool_nipype.science import gradients
from csttool_nipype.sims.model import COMPARTMENTS, S0_CSF, S0_GM, S0_WM, LesionSpec, PhantomSpec
from csttool_nipype.sims.phantom import make_phantom, on_truth_grid
from csttool_nipype.sims.writer import write_bids_dataset, write_phantom

FEW = dict(n_directions=6)                       # fast: 7 volumes
POSED = dict(rotation_deg=15.0, translation_mm=10.0, seed=1)
FRACTIONS = ("f_cst_left", "f_cst_right", "f_callosum", "f_wm_other", "gm", "csf")


@lru_cache(maxsize=None)
def phantom(**kwargs):
    """Phantoms are shared between tests (read-only use)."""
    return make_phantom(PhantomSpec(**kwargs))


def _world_mm(ph, mask):
    return nib.affines.apply_affine(ph.affine, np.argwhere(mask))


def _mni_mm(ph, mask):
    return nib.affines.apply_affine(np.linalg.inv(ph.pose), _world_mm(ph, mask))


def _pure(ph):
    """Single-compartment voxels: one compartment holds the whole voxel."""
    return np.stack([ph.truth[k] for k in FRACTIONS]).max(axis=0) >= 1 - 1e-6


def test_dti_fit_of_noise_free_data_recovers_the_truth():
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    ph = phantom(snr=None, orientation="LPS", **POSED)
    pure = _pure(ph)
    pure_cst = pure & ((ph.truth["f_cst_left"] > 0.5) | (ph.truth["f_cst_right"] > 0.5))
    assert pure_cst.sum() > 200
    gtab = gradient_table(ph.bvals, bvecs=ph.bvecs_voxel)   # voxel-axis b-vectors, as dipy expects
    fit = TensorModel(gtab, fit_method="WLS").fit(ph.dwi_clean, mask=pure)
    np.testing.assert_allclose(fit.fa[pure], ph.truth["fa"][pure], atol=1e-3)
    np.testing.assert_allclose(fit.md[pure], ph.truth["md"][pure], rtol=1e-3)
    # CST voxels really have CST diffusivities (truth is not just self-consistent)
    np.testing.assert_allclose(fit.fa[pure_cst], COMPARTMENTS[0].fa, atol=1e-3)
    # principal direction: fitted in voxel axes, compared in world axes
    aniso = pure & (ph.truth["fa"] > 0.3)
    v1_world = gradients.voxel_to_world(fit.evecs[..., 0][aniso], ph.affine)
    cos = np.abs(np.sum(v1_world * ph.truth["v1_world"][aniso], axis=1))
    assert cos.min() > 0.99
    # and the CST runs head-foot: in MNI axes (pose undone) mostly along z
    v1_mni = gradients.voxel_to_world(fit.evecs[..., 0][pure_cst], ph.affine) @ ph.pose[:3, :3]
    assert np.median(np.abs(v1_mni[:, 2])) > 0.8


@pytest.mark.parametrize("orientation", ["LPS", "PSR"])
def test_cst_left_is_on_the_subjects_left(orientation):
    ph = phantom(snr=None, orientation=orientation, **POSED, **FEW)
    left, right = ph.truth["cst_left"], ph.truth["cst_right"]
    mni_l, mni_r = _mni_mm(ph, left), _mni_mm(ph, right)
    assert mni_l[:, 0].mean() < -10 and mni_r[:, 0].mean() > 10
    # storage order, without the affine: LPS's 1st axis and PSR's 3rd axis point left/right
    axis, left_grows = {"LPS": (0, True), "PSR": (2, False)}[orientation]
    mean_l, mean_r = np.argwhere(left)[:, axis].mean(), np.argwhere(right)[:, axis].mean()
    assert (mean_l > mean_r) == left_grows
    # cross-check against the atlas the tract came from
    (atlas_l, atlas_r), mni_affine = data.load_atlas_maps(
        "juelich", ["WM_Corticospinal_tract_L", "WM_Corticospinal_tract_R"])
    vox = np.rint(nib.affines.apply_affine(np.linalg.inv(mni_affine), mni_l)).astype(int)
    assert atlas_l[tuple(vox.T)].mean() > 0.3 and atlas_r[tuple(vox.T)].max() == 0.0


def test_cst_runs_from_brainstem_to_precentral_gyrus():
    ph = phantom(snr=None, orientation="PSR", **POSED, **FEW)
    (pre_l, stem), mni_affine = data.load_atlas_maps("harvard_oxford", ["Left_Precentral_Gyrus", "Brain-Stem"])
    # one continuous tract (3 mm sampling may leave a stray voxel or two where the corona radiata fans out)
    labels, n_parts = ndi.label(ph.truth["cst_left"], ndi.generate_binary_structure(3, 3))
    sizes = np.bincount(labels.ravel())[1:]
    mask = labels == 1 + np.argmax(sizes)
    assert sizes.max() >= 0.97 * sizes.sum()
    mni = _mni_mm(ph, mask)
    vox = np.rint(nib.affines.apply_affine(np.linalg.inv(mni_affine), mni)).astype(int)
    low, top = mni[:, 2] < -30, mni[:, 2] > mni[:, 2].max() - 15
    assert mni[:, 2].min() < -55 and mni[:, 2].max() > 65
    assert np.mean(stem[tuple(vox[low].T)] >= 0.5) > 0.9
    assert np.mean(pre_l[tuple(vox[top].T)] >= 0.25) > 0.4


def _neighbour_angles(vectors, mask):
    """Angles (degrees, axial) between the vectors of face-neighbouring voxels of ``mask``."""
    out = []
    for axis in range(3):
        v, m = np.moveaxis(vectors, axis, 0), np.moveaxis(mask, axis, 0)
        both = m[:-1] & m[1:]
        cos = np.abs(np.sum(v[:-1][both] * v[1:][both], axis=-1))
        out.append(np.degrees(np.arccos(np.clip(cos, 0.0, 1.0))))
    return np.concatenate(out)


def test_cst_is_separate_wide_and_anisotropic_from_the_medulla_up():
    ph = phantom(snr=None, orientation="PSR", **POSED, **FEW)
    left, right = ph.truth["cst_left"], ph.truth["cst_right"]
    # a gap at the midline: no voxel of one tract touches the other, not even diagonally
    assert not (ndi.binary_dilation(left, np.ones((3, 3, 3), bool)) & right).any()
    for side, mask in (("left", left), ("right", right)):
        fa = ph.truth["fa"][mask]
        assert np.mean(fa > 0.3) > 0.97, side     # trackable (FA threshold 0.2) nearly everywhere
        mni = _mni_mm(ph, mask)
        # brainstem (medulla, pons) and midbrain: in every 6 mm of height the tract is at
        # least two 3 mm voxels across, in both directions, and strongly anisotropic
        for lo in np.arange(mni[:, 2].min(), -20.0, 6.0):
            band = (mni[:, 2] >= lo) & (mni[:, 2] < lo + 6.0)
            assert band.sum() >= 5, (side, lo)
            assert np.ptp(mni[band, 0]) >= 2.5 and np.ptp(mni[band, 1]) >= 2.5, (side, lo)
            assert np.median(fa[band]) > 0.6, (side, lo)


def test_cst_direction_is_smooth_and_fans_out():
    ph = phantom(snr=None, orientation="PSR", **POSED, **FEW)
    v1 = ph.truth["v1_world"]
    for side in ("left", "right"):
        mask = ph.truth[f"cst_{side}"]
        # where the tract fills the voxel, neighbouring directions differ by well under 30 degrees
        core = mask & (ph.truth[f"f_cst_{side}"] >= 0.9)
        angles = _neighbour_angles(v1, core)
        assert len(angles) > 500 and np.percentile(angles, 99) < 25 and angles.max() < 35, side
        # one direction per voxel, not per slice: across the corona radiata the fibres
        # spread out, the lateral ones heading laterally and the medial ones medially
        mni = _mni_mm(ph, mask)
        up = v1[mask] @ ph.pose[:3, :3]            # MNI axes
        up *= np.sign(up[:, 2:3])                  # pointing upward
        band = (mni[:, 2] > 35) & (mni[:, 2] < 65)
        assert np.corrcoef(mni[band, 0], up[band, 0])[0, 1] > 0.5, side
        assert np.subtract(*np.percentile(up[band, 0], [95, 5])) > 0.6, side


def test_unlesioned_head_is_left_right_symmetric():
    ph = phantom(snr=None, **FEW)        # MNI-aligned, RAS: axis 0 is x, centred on x = 0
    x = ph.affine[0, 0] * np.arange(ph.truth["fa"].shape[0]) + ph.affine[0, 3]
    np.testing.assert_allclose(x, -x[::-1], atol=1e-9)
    np.testing.assert_array_equal(ph.truth["cst_left"], ph.truth["cst_right"][::-1])
    np.testing.assert_allclose(ph.truth["fa"], ph.truth["fa"][::-1], atol=0.01)
    mirrored = ph.truth["v1_world"][::-1] * np.array([-1.0, 1.0, 1.0])
    cos = np.abs(np.sum(ph.truth["v1_world"] * mirrored, axis=-1))[ph.truth["cst_left"]]
    assert cos.min() > 0.999


def test_storage_orientation_does_not_change_world_content():
    spec = dict(snr=30.0, **POSED, **FEW)
    ras = phantom(orientation="RAS", **spec)
    g_world = gradients.voxel_to_world(ras.bvecs_voxel, ras.affine)
    for codes in ("LAS", "PSR"):
        ph = phantom(orientation=codes, **spec)
        assert nib.aff2axcodes(ph.affine) == tuple(codes)
        clean, affine = gradients.reorient_array(ph.dwi_clean, ph.affine, "RAS")
        noisy, _ = gradients.reorient_array(ph.dwi, ph.affine, "RAS")
        np.testing.assert_allclose(affine, ras.affine, atol=1e-9)
        np.testing.assert_allclose(clean, ras.dwi_clean, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(noisy, ras.dwi, rtol=1e-5, atol=1e-3)   # same noise per world voxel
        fa, _ = gradients.reorient_array(ph.truth["fa"], ph.affine, "RAS")
        np.testing.assert_allclose(fa, ras.truth["fa"], atol=1e-6)
        np.testing.assert_allclose(gradients.voxel_to_world(ph.bvecs_voxel, ph.affine), g_world, atol=1e-9)


def test_on_truth_grid_undoes_any_storage_order():
    """An output stored in another voxel order (here the truth FA flipped and permuted to LPS
    and PSR, and a 4D map) comes back exactly on the truth grid; outside the image it is 0."""
    ph = phantom(orientation="LAS", **POSED, **FEW)
    truth = ph.truth["fa"].astype(np.float32)
    for codes in ("LPS", "PSR"):
        stored, affine = gradients.reorient_array(truth, ph.affine, codes)
        np.testing.assert_array_equal(on_truth_grid(nib.Nifti1Image(stored, affine), ph), truth)
        both, _ = gradients.reorient_array(np.stack([truth, 2 * truth], axis=-1), ph.affine, codes)
        np.testing.assert_array_equal(on_truth_grid(nib.Nifti1Image(both, affine), ph)[..., 1], 2 * truth)
    cropped = nib.Nifti1Image(truth[:10], ph.affine)       # covers the first 10 planes of axis 0 only
    out = on_truth_grid(cropped, ph)
    np.testing.assert_array_equal(out[:10], truth[:10])
    assert not out[10:].any()


def test_noise_is_rician_with_the_stated_sigma():
    ph = phantom(snr=30.0, orientation="RAS", **POSED, **FEW)
    assert ph.sigma == pytest.approx(S0_WM / 30.0)
    bright = ph.dwi_clean >= 10 * ph.sigma            # Rician ~ Gaussian at high SNR
    residual = (ph.dwi - ph.dwi_clean)[bright]
    assert residual.size > 10000
    assert residual.std() == pytest.approx(ph.sigma, rel=0.1)
    assert abs(residual.mean()) < 0.1 * ph.sigma
    background = ph.dwi_clean == 0                    # Rician with no signal is Rayleigh
    assert ph.dwi[background].mean() == pytest.approx(ph.sigma * np.sqrt(np.pi / 2), rel=0.05)


def test_lesion_lowers_fa_in_its_slab_on_its_side_only():
    base = phantom(snr=None, **FEW)
    lesion = LesionSpec(side="left", fa_reduction=0.3, length_mm=10.0, z_mni=10.0)
    ph = phantom(snr=None, lesion=lesion, **FEW)
    les = ph.truth["lesion"]
    assert les.sum() > 10 and not np.any(les & ~ph.truth["cst_left"])
    z = _mni_mm(ph, les)[:, 2]
    assert np.all(np.abs(z - 10.0) <= 5.0 + 1e-6)
    pure = les & (ph.truth["f_cst_left"] >= 1 - 1e-6)
    assert pure.sum() > 3
    np.testing.assert_allclose(ph.truth["fa"][pure], 0.7 * base.truth["fa"][pure], rtol=1e-4)
    np.testing.assert_allclose(ph.truth["md"][pure], base.truth["md"][pure], rtol=1e-5)
    # every change is in the left CST within the slab
    changed = (np.abs(ph.truth["fa"] - base.truth["fa"]) > 1e-6) | np.any(ph.dwi_clean != base.dwi_clean, axis=-1)
    in_slab = np.zeros_like(changed)
    in_slab[tuple(np.argwhere(changed).T)] = np.abs(_mni_mm(ph, changed)[:, 2] - 10.0) <= 5.0 + 1.5  # + 1/2 voxel
    assert changed.any() and np.all(in_slab[changed]) and np.all(ph.truth["f_cst_left"][changed] > 0)
    # FA falls wherever the lesioned tract dominates the voxel; where it is a small partial
    # volume beside crossing fibres, less anisotropy in it can even raise the voxel's FA a bit
    dominant = changed & (ph.truth["f_cst_left"] >= 0.5)
    assert dominant.sum() > 10 and np.all(ph.truth["fa"][dominant] < base.truth["fa"][dominant])
    assert np.mean(ph.truth["fa"][changed] - base.truth["fa"][changed]) < -0.05
    np.testing.assert_array_equal(ph.truth["fa"][ph.truth["cst_right"]], base.truth["fa"][ph.truth["cst_right"]])


def test_motion_moves_the_head_and_rotates_the_gradients_it_sees():
    ph = phantom(snr=None, n_b0=2, motion_deg=10.0, motion_mm=3.0, rotation_deg=10.0, seed=3, **FEW)
    np.testing.assert_array_equal(ph.motion[0], np.eye(4))
    angles = np.degrees(np.linalg.norm(Rotation.from_matrix(ph.motion[:, :3, :3]).as_rotvec(), axis=1))
    assert angles[0] == 0 and np.all(angles <= 10.0 + 1e-9) and angles[1:].min() > 0
    # a moved b0 = the reference b0 resampled through the motion (x of the head appears at M x)
    n = int(np.flatnonzero(ph.bvals == 0)[1])
    to_ref = np.linalg.inv(ph.affine) @ np.linalg.inv(ph.motion[n]) @ ph.affine
    predicted = ndi.affine_transform(ph.dwi_clean[..., 0], to_ref[:3, :3], to_ref[:3, 3], order=1)
    mask = ph.truth["brain_mask"]

    def corr(a, b):   # smoothing by one voxel hides the 3 mm trilinear resampling error
        return np.corrcoef(ndi.gaussian_filter(a, 1.0)[mask], ndi.gaussian_filter(b, 1.0)[mask])[0, 1]

    assert corr(predicted, ph.dwi_clean[..., n]) > 0.98
    assert corr(ph.dwi_clean[..., 0], ph.dwi_clean[..., n]) < 0.95
    # diffusion volumes: pure-CST signal follows the gradient seen in the head frame, R^T g
    comp, g_world = COMPARTMENTS[0], gradients.voxel_to_world(ph.bvecs_voxel, ph.affine)
    pure = (ph.truth["f_cst_left"] >= 1 - 1e-6) | (ph.truth["f_cst_right"] >= 1 - 1e-6)
    ijk = np.argwhere(np.ones(pure.shape, bool))
    errors = {"head frame": [], "scanner frame": []}
    for n in np.flatnonzero((ph.bvals > 0) & (angles > 3)):
        src = np.rint(nib.affines.apply_affine(
            np.linalg.inv(ph.affine) @ np.linalg.inv(ph.motion[n]) @ ph.affine, ijk)).astype(int)
        inside = np.all((src >= 0) & (src < pure.shape), axis=1)
        sel = np.zeros(len(ijk), bool)
        sel[inside] = pure[tuple(src[inside].T)]
        v1 = ph.truth["v1_world"][tuple(src[sel].T)]
        observed = ph.dwi_clean[..., n][tuple(ijk[sel].T)]
        for frame, g in (("head frame", ph.motion[n][:3, :3].T @ g_world[n]), ("scanner frame", g_world[n])):
            adc = comp.lambda_perp + (comp.lambda_par - comp.lambda_perp) * (v1 @ g) ** 2
            errors[frame].append(np.abs(comp.s0 * np.exp(-ph.bvals[n] * adc) - observed) / comp.s0)
    # residual error of the right model: nearest-voxel direction lookup and partial volume at the tract edge
    head, scanner = (np.median(np.concatenate(e)) for e in errors.values())
    assert head < 0.01 and head < 0.4 * scanner


def test_gibbs_ringing_oscillates_in_plane():
    plain = phantom(snr=None, **FEW)
    ringing = phantom(snr=None, gibbs=True, **FEW)
    t = plain.truth
    # without Gibbs the b0 is exactly the tissue-weighted S0: no ringing
    s0 = t["wm"] * S0_WM + t["gm"] * S0_GM + t["csf"] * S0_CSF
    np.testing.assert_allclose(plain.dwi_clean[..., 0], s0, atol=1e-3 * S0_CSF)
    b0, b0_plain = ringing.dwi_clean[..., 0], plain.dwi_clean[..., 0]
    # overshoot at the edges (a blur could never exceed the maximum) ...
    assert b0.max() > 1.05 * b0_plain.max()
    # ... spill into the background ...
    empty = (t["wm"] + t["gm"] + t["csf"]) == 0
    assert np.all(b0_plain[empty] == 0) and np.median(b0[empty]) > 0
    # ... and an error alternating in sign between neighbours along the in-plane axes (RAS:
    # x, y), not along the slice axis
    tissue = (t["wm"] + t["gm"] + t["csf"]) >= 0.5
    ring = b0 - b0_plain

    def lag1(axis):
        r, m = np.moveaxis(ring, axis, 0), np.moveaxis(tissue, axis, 0)
        both = m[:-1] & m[1:]
        return np.corrcoef(r[:-1][both], r[1:][both])[0, 1]

    assert lag1(0) < -0.1 and lag1(2) > 0.1


def test_gradient_scheme():
    ph = phantom(snr=None, n_b0=3, bvals=(1000.0, 2000.0), **FEW)
    assert ph.bvals[0] == 0 and np.sum(ph.bvals == 0) == 3 and ph.dwi.shape[-1] == 3 + 2 * 6
    g = ph.bvecs_voxel[ph.bvals == 1000]
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(ph.bvecs_voxel[ph.bvals == 0], 0.0)
    dots = np.abs(g @ g.T) - np.eye(len(g))
    assert dots.max() < 0.9      # antipodally distinct and spread


def _read_bvec(path):
    return np.loadtxt(path).reshape(3, -1).T


def test_write_phantom_files_round_trip(tmp_path):
    ph = phantom(snr=30.0, orientation="RAS", **POSED, **FEW)   # RAS: the FSL x flip applies
    paths = write_phantom(ph, tmp_path, subject="01", session="a")
    assert paths["dwi"] == tmp_path / "sub-01" / "ses-a" / "dwi" / "sub-01_ses-a_dwi.nii.gz"
    img = nib.load(paths["dwi"])
    np.testing.assert_allclose(img.affine, ph.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), ph.dwi)
    bvals = np.loadtxt(paths["bval"])
    bvec_file = _read_bvec(paths["bvec"])
    assert bvals.shape == (img.shape[3],) and bvec_file.shape == (img.shape[3], 3)
    np.testing.assert_allclose(gradients.fsl_to_voxel(bvec_file, img.affine), ph.bvecs_voxel, atol=1e-7)
    assert not np.allclose(bvec_file, ph.bvecs_voxel)   # the flip really is in the file
    sidecar = json.loads(paths["json"].read_text())
    assert sidecar["Manufacturer"] == "csttool-phantom" and sidecar["EchoTime"] == 0.08
    assert sidecar["PhaseEncodingDirection"] in ("j", "j-")
    for key in ph.truth:
        truth_img = nib.load(paths[key])
        assert "derivatives/phantom-truth/sub-01/ses-a/dwi" in paths[key].as_posix()
        np.testing.assert_allclose(truth_img.affine, ph.affine, atol=1e-5)
        np.testing.assert_allclose(np.asarray(truth_img.dataobj), ph.truth[key], atol=1e-6)
    record = json.loads(paths["truth_json"].read_text())
    np.testing.assert_allclose(record["pose"], ph.pose)
    assert record["spec"]["rotation_deg"] == 15.0


def test_write_bids_dataset_is_found_by_pybids(tmp_path):
    from bids import BIDSLayout

    spec = PhantomSpec(snr=30.0, rotation_deg=5.0, **FEW)
    out = write_bids_dataset(tmp_path / "bids", 2, spec=spec, seed=7)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw" and "BIDSVersion" in description
    rows = (out / "participants.tsv").read_text().split("\n")
    assert rows[1].startswith("sub-01\t7") and rows[2].startswith("sub-02\t8")
    layout = BIDSLayout(out, validate=False)
    files = layout.get(suffix="dwi", extension=".nii.gz")
    assert sorted(f.entities["subject"] for f in files) == ["01", "02"]
    # sub-02 is the phantom of seed 8: its data and pose, not sub-01's
    sub02 = make_phantom(dataclasses.replace(spec, seed=8))
    np.testing.assert_array_equal(np.asarray(nib.load(files[1].path).dataobj), sub02.dwi)
    poses = [json.loads(next((out / "derivatives" / "phantom-truth" / s).rglob("*_phantom.json")).read_text())["pose"]
             for s in ("sub-01", "sub-02")]
    assert not np.allclose(poses[0], poses[1])

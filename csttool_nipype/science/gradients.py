"""Diffusion gradient conventions: FSL/dcm2niix b-vector files, voxel and world axes.

Three frames appear in this package:

* **FSL frame** (what ``.bvec`` files hold, as written by dcm2niix): the image's voxel
  axes, except that the first component is negated when the voxel-to-world affine
  has a positive determinant ("neurological" storage, e.g. RAS). FSL defines it so
  that a LAS image's b-vectors equal its voxel-axis b-vectors.
* **Voxel frame**: components along the image's array axes i, j, k. This is what
  dipy's gradient tables expect for data indexed ``data[i, j, k]``.
* **World frame**: scanner RAS+ axes, independent of how the image is stored.

All arrays are shaped ``(n_volumes, 3)``; b=0 rows are left as they are.
"""

from __future__ import annotations

import numpy as np
import nibabel as nib
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform


def _rotation_part(affine: np.ndarray) -> np.ndarray:
    """Closest orthogonal matrix to the affine's 3x3 part (drops zooms and shear)."""
    u, _, vt = np.linalg.svd(np.asarray(affine, float)[:3, :3])
    return u @ vt


def fsl_to_voxel(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Convert FSL-convention b-vectors (as in a ``.bvec`` file) to voxel axes."""
    out = np.array(bvecs, dtype=float, copy=True)
    if np.linalg.det(np.asarray(affine, float)[:3, :3]) > 0:
        out[:, 0] *= -1
    return out


def voxel_to_fsl(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Convert voxel-axis b-vectors to the FSL ``.bvec`` convention (inverse of :func:`fsl_to_voxel`)."""
    return fsl_to_voxel(bvecs, affine)


def voxel_to_world(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Express voxel-axis b-vectors in world (RAS+) axes."""
    return np.asarray(bvecs, float) @ _rotation_part(affine).T


def world_to_voxel(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Express world (RAS+) b-vectors in the image's voxel axes."""
    return np.asarray(bvecs, float) @ _rotation_part(affine)


def reorient_image_and_bvecs(
    img: nib.spatialimages.SpatialImage, bvecs_voxel: np.ndarray | None, axcodes: str = "RAS"
) -> tuple[nib.Nifti1Image, np.ndarray | None]:
    """Reorder/flip voxel axes so the image is stored closest to ``axcodes``.

    No resampling happens: voxels are permuted and flipped only, so an oblique
    acquisition stays oblique. Voxel-axis b-vectors are permuted and negated with the
    axes so they keep pointing the same way in world space.

    Returns
    -------
    img : Nifti1Image
        Reoriented image (header and zooms updated by nibabel).
    bvecs_voxel : ndarray or None
        b-vectors in the new voxel axes.
    """
    ornt = ornt_transform(io_orientation(img.affine), axcodes2ornt(tuple(axcodes)))
    new_img = img.as_reoriented(ornt)
    if bvecs_voxel is None:
        return new_img, None
    bvecs_voxel = np.asarray(bvecs_voxel, float)
    new = np.zeros_like(bvecs_voxel)
    for axis_in, (axis_out, flip) in enumerate(ornt):
        new[:, int(axis_out)] = flip * bvecs_voxel[:, axis_in]
    return new_img, new


def reorient_array(data: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """Reorient a (3D or 4D) array stored with ``affine`` to ``axcodes``; returns data and affine."""
    new, _ = reorient_image_and_bvecs(nib.Nifti1Image(np.asarray(data), affine), None, axcodes)
    return np.asarray(new.dataobj), new.affine

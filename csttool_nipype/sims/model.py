"""What the phantom simulates: tissue compartments, the simulation's specification and result.

Six compartments (:data:`COMPARTMENTS`: ``cst_left``, ``cst_right``, ``callosum``, ``wm_other``,
``gm``, ``csf``), each one axially symmetric tensor ``D = l_perp I + (l_par - l_perp) u u^T``
(diffusivities in mm^2/s) with a b=0 signal per tissue (:data:`S0_WM`, ...). Where each
compartment lies and which way ``u`` points (MNI frame) is built in
:mod:`csttool_nipype.sims.anatomy`; the acquisition in :mod:`csttool_nipype.sims.signal`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def tensor_fa_md_v1(tensors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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



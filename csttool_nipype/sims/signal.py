"""Simulated acquisition of the phantom: geometry, sampling, signal, Gibbs ringing, noise, truth.

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

from dataclasses import dataclass
from functools import lru_cache

import nibabel as nib
import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from csttool_nipype.errors import InputError
from csttool_nipype.sims.anatomy import MniModel
from csttool_nipype.sims.model import (
    COMPARTMENTS, FIXED_AXES_MNI, Compartment, LesionSpec, PhantomSpec, axisymmetric_eigenvalues,
    tensor_fa_md_v1,
)


# --------------------------------------------------------------------------- geometry


def check_orientation(codes: str) -> str:
    """``codes`` upper-cased, checked to be a 3-letter voxel axis code (RAS, LPS, PSR, ...)."""
    codes = str(codes).upper()
    world_axis = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    if len(codes) != 3 or sorted(world_axis.get(c, -1) for c in codes) != [0, 1, 2]:
        raise InputError(None, f"phantom orientation {codes!r} is not a 3-letter axis code such as RAS, LPS or PSR")
    return codes


def random_rigid(rng: np.random.Generator, max_deg: float, max_mm: float, centre: np.ndarray) -> np.ndarray:
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


def ras_grid(spec: PhantomSpec, centre_world: np.ndarray) -> tuple[tuple[int, int, int], np.ndarray]:
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


def acquisition(spec: PhantomSpec) -> tuple[np.ndarray, np.ndarray]:
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
    array (at least one voxel from its far faces), which :func:`sample` guarantees.
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


def sample(model: MniModel, mni_to_world: np.ndarray, shape: tuple[int, ...], affine: np.ndarray) -> _Samples:
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


def _cst_axis(model: MniModel, side: int, model_ijk: np.ndarray) -> np.ndarray:
    """CST direction (MNI frame) at model voxel coordinates ``(3, Q)``: trilinear
    interpolation of the side's direction field, renormalised (head-foot where it is 0)."""
    field = model.cst_fields[side]
    coords = model_ijk - field.origin[:, None]
    inside = np.all((coords >= 0) & (coords <= np.array(field.field.shape[:3])[:, None] - 1), axis=0)
    axis = np.zeros((model_ijk.shape[1], 3))
    axis[inside] = _trilinear(field.field, coords[:, inside]).T
    norm = np.linalg.norm(axis, axis=1, keepdims=True)
    return np.where(norm > 1e-3, axis / np.where(norm > 1e-3, norm, 1.0), np.array([0.0, 0.0, 1.0]))


def _wm_other_axis(model: MniModel, stem: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Axis of ``wm_other``: anterior-posterior, blended by the brainstem indicator ``stem``
    into the brainstem's axis at MNI heights ``z`` (linear interpolation of the table)."""
    step = model.stem_z[1] - model.stem_z[0]
    q = np.clip((z - model.stem_z[0]) / step, 0, len(model.stem_z) - 1)
    k = np.minimum(np.floor(q).astype(int), len(model.stem_z) - 2)
    w = (q - k)[:, None]
    stem_axis = (1 - w) * model.stem_axis[k] + w * model.stem_axis[k + 1]
    axis = (1 - stem)[:, None] * np.asarray(FIXED_AXES_MNI["wm_other"]) + stem[:, None] * stem_axis
    return axis / np.linalg.norm(axis, axis=1, keepdims=True)


def _parts(samples: _Samples, model: MniModel, lesion: LesionSpec | None) -> list[_Part]:
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


def truth_maps(samples: _Samples, model: MniModel, lesion: LesionSpec | None, pose: np.ndarray,
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
    fa, md, v1 = tensor_fa_md_v1(tensor)
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



# --------------------------------------------------------------------------- series


def simulate(model, spec, shape, ras_affine, pose, motion, bvals, g_world, reference, codes) -> np.ndarray:
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
            samples = sample(model, mni_to_world, sim_shape, sim_affine)
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


def add_rician(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``sqrt((S + sigma n1)^2 + (sigma n2)^2)`` with independent standard normal n1, n2 per voxel and volume."""
    if sigma == 0:
        return clean.copy()
    out = np.empty_like(clean)
    for n in range(clean.shape[-1]):
        noise = rng.standard_normal((2, *clean.shape[:3]), dtype=np.float32) * np.float32(sigma)
        out[..., n] = np.hypot(clean[..., n] + noise[0], noise[1])
    return out


# --------------------------------------------------------------------------- writing

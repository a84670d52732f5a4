"""The DWI import stage: check a series, drop scanner-derived volumes, reorient to RAS+.

The import stage (:func:`import_dwi`) accepts either a 4D NIfTI with FSL
``.bval``/``.bvec`` files (and optionally a BIDS JSON sidecar; read by
:mod:`csttool_nipype.science.dwi_io`), or DICOM converted with dcm2niix
(:func:`csttool_nipype.science.dicom.convert_dicom`). It drops scanner-derived volumes
(trace/ADC/isotropic images stored inside the series), validates the result
(:func:`validate_dwi`) and reorients it to the closest canonical RAS+ voxel order
without resampling (:func:`to_ras`).

Every problem with the input is raised as a one-line
:class:`~csttool_nipype.errors.InputError` naming the file at fault.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from csttool_nipype.config import B0_THRESHOLD
from csttool_nipype.errors import InputError
from csttool_nipype.science import gradients
from csttool_nipype.science.dwi_io import DWIData, DWIPath, read_dwi

logger = logging.getLogger(__name__)

#: Fewest voxels along each spatial axis: the denoisers work on 5×5×5 patches (radius 2).
MIN_AXIS_VOXELS = 5
#: Smallest field of view (mm) along each spatial axis: the shortest CST streamline the
#: pipeline keeps is 40 mm (``PipelineConfig.cst_min_length_mm``), and registration to a
#: whole-brain template needs that much brain in every direction.
MIN_AXIS_EXTENT_MM = 40.0
#: Accepted voxel size range (mm) along each axis.
MIN_ZOOM_MM, MAX_ZOOM_MM = 0.1, 20.0
#: Largest in-plane voxel edge (mm; the two finest axes) accepted for CST tractography: the
#: tract is about 5 mm wide in the posterior limb of the internal capsule, and a coarser grid
#: cannot separate it from the fibres beside it.
MAX_TRACKING_VOXEL_MM = 4.0
#: Thickest slice (mm; the coarsest axis) accepted. Clinical protocols acquire 5-6 mm slices
#: with fine in-plane voxels; in an axial scan the slices lie across the tract's mostly
#: superior-inferior course, which tracking follows from slice to slice. Thicker slices
#: leave the brainstem (about 50 mm from medulla to peduncle) fewer than 8 slices.
MAX_SLICE_THICKNESS_MM = 6.0
#: A largest b-value at or below this (with a b=0) means the file is in ms/µm², not s/mm².
MAX_BVALUE_IN_MS_PER_UM2 = 10.0
#: b-vectors of b>0 volumes whose length is within this of 1 are normalised; others are errors.
UNIT_TOLERANCE = 0.1
#: b-vectors shorter than this count as zero.
ZERO_VECTOR = 1e-6
#: Two unit directions closer than this (|cos| above 1 - this) are the same direction up to sign.
SAME_DIRECTION = 1e-4
#: Metadata key under which the import stage records what it did.
IMPORT_KEY = "csttool_import"


# --------------------------------------------------------------------------- loading


def load_dwi(
    nifti: DWIPath,
    bval: DWIPath | None = None,
    bvec: DWIPath | None = None,
    sidecar: DWIPath | None = None,
    b0_threshold: float = B0_THRESHOLD,
) -> DWIData:
    """Read and validate a diffusion NIfTI with its FSL b-value/b-vector files.

    Parameters
    ----------
    nifti : path-like
        4D image (``.nii`` or ``.nii.gz``).
    bval, bvec : path-like, optional
        FSL text files: b-values in s/mm² (one row), b-vectors in the FSL frame
        (3 rows; N×3 accepted). Default: the same-stem files next to ``nifti``
        (:func:`~csttool_nipype.science.dwi_io.find_sidecars`).
    sidecar : path-like, optional
        BIDS JSON sidecar; default the same-stem ``.json`` if present, else none.
    b0_threshold : float
        b-values (s/mm²) at or below this are b=0 volumes.

    Returns
    -------
    DWIData
        Data as float32, b-vectors converted to voxel axes
        (:func:`gradients.fsl_to_voxel`), validated by :func:`validate_dwi`
        (b-vectors normalised, b=0 rows zeroed).

    Raises
    ------
    InputError
        A file is missing, unreadable or inconsistent (see :func:`validate_dwi`).
        A series that still contains scanner-derived volumes (b>0, zero b-vector) is
        rejected here; :func:`import_dwi` drops them instead.
    """
    dwi = read_dwi(nifti, bval, bvec, sidecar)
    validate_dwi(dwi, b0_threshold)
    return dwi


# ------------------------------------------------------------------------ validation


def _check_shapes(dwi: DWIData) -> None:
    """4D image and consistent b-value / b-vector / volume counts."""
    src = dwi.source
    data = np.asarray(dwi.data)
    if data.ndim != 4:
        shape = "×".join(str(s) for s in data.shape)
        raise InputError(src, f"image is {data.ndim}D ({shape}); a diffusion series must be 4D (x×y×z×volumes)")
    bvals = np.asarray(dwi.bvals)
    bvecs = np.asarray(dwi.bvecs_voxel)
    if bvals.ndim != 1:
        raise InputError(src, f"b-values must be a 1D list, got shape {bvals.shape}")
    if bvecs.ndim != 2 or bvecs.shape[1] != 3:
        raise InputError(src, f"b-vectors must be 3×N or N×3, got shape {bvecs.shape}")
    n_vol = data.shape[3]
    if not (bvals.size == len(bvecs) == n_vol):
        raise InputError(src, f"{bvals.size} b-values and {len(bvecs)} b-vectors for an image with {n_vol} volumes; "
                              "the counts must be equal")


def _check_affine(dwi: DWIData) -> None:
    src = dwi.source
    affine = np.asarray(dwi.affine, dtype=float)
    if affine.shape != (4, 4):
        raise InputError(src, f"affine must be 4×4, got shape {affine.shape}")
    if not np.all(np.isfinite(affine)):
        raise InputError(src, "voxel-to-world affine contains NaN or infinite values")
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9 * max(float(np.prod(zooms)), 1e-30) or np.any(zooms == 0):
        raise InputError(src, "voxel-to-world affine is singular (no valid orientation in the header)")
    if np.any(zooms < MIN_ZOOM_MM) or np.any(zooms > MAX_ZOOM_MM):
        shown = "×".join(f"{z:.3g}" for z in zooms)
        raise InputError(src, f"voxel size {shown} mm is outside {MIN_ZOOM_MM:g}–{MAX_ZOOM_MM:g} mm; check the header units")


def check_extent(shape, affine, source) -> None:
    """Reject a series too small or too thin for the pipeline (one line saying the minimum).

    Every spatial axis of ``shape`` (voxels) needs at least :data:`MIN_AXIS_VOXELS`
    voxels and a field of view of at least :data:`MIN_AXIS_EXTENT_MM` mm (voxel count ×
    voxel size from ``affine``). ``source`` names the series in the message.
    """
    shape = tuple(int(s) for s in shape[:3])
    zooms = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    extent = np.asarray(shape) * zooms
    shown = "×".join(str(s) for s in shape)
    if len(shape) < 3 or min(shape) < MIN_AXIS_VOXELS:
        raise InputError(source, f"volume of {shown} voxels is too thin for CST analysis: every axis needs at "
                                     f"least {MIN_AXIS_VOXELS} voxels")
    if extent.min() < MIN_AXIS_EXTENT_MM:
        mm = "×".join(f"{e:.0f}" for e in extent)
        raise InputError(source, f"field of view of {mm} mm is too small for CST analysis: every axis needs at "
                                     f"least {MIN_AXIS_EXTENT_MM:g} mm")


def _unique_directions(vectors: np.ndarray) -> int:
    """Number of distinct directions among unit vectors, treating v and -v as the same."""
    kept: list[np.ndarray] = []
    for v in vectors:
        if not any(abs(float(v @ k)) > 1 - SAME_DIRECTION for k in kept):
            kept.append(v)
    return len(kept)


def _tensor_design_rank(vectors: np.ndarray) -> int:
    g = np.asarray(vectors, float)
    x, y, z = g[:, 0], g[:, 1], g[:, 2]
    design = np.column_stack([x * x, y * y, z * z, 2 * x * y, 2 * x * z, 2 * y * z])
    return int(np.linalg.matrix_rank(design, tol=1e-6)) if len(g) else 0


def _first_nonfinite(data: np.ndarray) -> tuple[int, int]:
    """(number of non-finite voxels, first volume holding one); (0, -1) if all finite."""
    # Fast path: a float64 sum of finite float32 values cannot overflow.
    if np.isfinite(np.sum(data, dtype=np.float64)):
        return 0, -1
    count, first = 0, -1
    for v in range(data.shape[3]):
        bad = int(np.count_nonzero(~np.isfinite(data[..., v])))
        if bad and first < 0:
            first = v
        count += bad
    return count, first


def _check_tracking_voxels(dwi: DWIData) -> None:
    """Reject in-plane voxel edges above :data:`MAX_TRACKING_VOXEL_MM` and slices thicker than
    :data:`MAX_SLICE_THICKNESS_MM` (mm); warn about slices thicker than the in-plane limit."""
    zooms = np.linalg.norm(np.asarray(dwi.affine, dtype=float)[:3, :3], axis=0)
    shown = "×".join(f"{z:.3g}" for z in zooms)
    in_plane, thickest = np.sort(zooms)[1], zooms.max()
    tolerance = 1e-3   # rounding of a header's 4 mm
    if in_plane > MAX_TRACKING_VOXEL_MM + tolerance:
        raise InputError(dwi.source, f"voxel size {shown} mm: in-plane voxels above {MAX_TRACKING_VOXEL_MM:g} mm "
                                     "are too coarse to track the corticospinal tract")
    if thickest > MAX_SLICE_THICKNESS_MM + tolerance:
        raise InputError(dwi.source, f"voxel size {shown} mm: slices thicker than {MAX_SLICE_THICKNESS_MM:g} mm "
                                     "are too coarse to track the corticospinal tract")
    if thickest > MAX_TRACKING_VOXEL_MM + tolerance:
        logger.warning("%s: %.3g mm slices (voxel size %s mm): the tract is followed across thick slices; "
                       "compare its numbers only with scans of the same protocol", dwi.source, thickest, shown)


def _check_some_directions(dwi: DWIData, b0_threshold: float) -> None:
    """Reject a series whose b>0 volumes all have a zero b-vector (an empty b-vector file),
    before :func:`drop_derived_volumes` would take them all for scanner-derived images."""
    bvals = np.asarray(dwi.bvals, dtype=float)
    dw = bvals > b0_threshold
    norms = np.linalg.norm(np.asarray(dwi.bvecs_voxel, dtype=float).reshape(len(bvals), -1), axis=1)
    if np.count_nonzero(dw) > 1 and np.all(norms[dw] < ZERO_VECTOR):
        raise InputError(dwi.source, f"all {np.count_nonzero(dw)} volumes with b>{b0_threshold:g} s/mm² have a zero "
                                     "b-vector: the b-vector file holds no gradient directions")


def _check_bvalue_units(dwi: DWIData) -> None:
    """Reject b-values written in ms/µm² (1.0 for 1000 s/mm²): all of them at most 10, not all zero."""
    bvals = np.asarray(dwi.bvals, dtype=float)
    if bvals.size and 0 < bvals.max() <= MAX_BVALUE_IN_MS_PER_UM2:
        raise InputError(dwi.source, f"the largest b-value is {bvals.max():g}: b-values look like ms/µm² "
                                     f"(1 = 1000 s/mm²); write them in s/mm²")


def validate_dwi(dwi: DWIData, b0_threshold: float = B0_THRESHOLD) -> None:
    """Check that a DWI series is usable for tensor fitting; raise on the first problem.

    Checks, in order: 4D image; equal numbers of b-values, b-vectors (N×3) and
    volumes; finite, non-singular affine with voxel sizes in 0.1–20 mm, at most
    4 mm in-plane and 6 mm across slices for tracking; finite, non-negative b-values in s/mm² (not ms/µm²); at least one b=0 volume (b ≤ ``b0_threshold``); b-vectors
    of b>0 volumes non-zero and of unit length within 10%; at least 6
    non-collinear directions (rank 6 of the tensor design matrix
    [gx², gy², gz², 2gxgy, 2gxgz, 2gygz]); no NaN/Inf voxels.

    As a side effect the b-vectors are tidied in place: b>0 rows are rescaled to
    exactly unit length and b=0 rows set to zero (``dwi.bvecs_voxel`` is replaced
    by a new array; voxel axes unchanged).

    Parameters
    ----------
    dwi : DWIData
        The series; ``dwi.source`` names it in messages.
    b0_threshold : float
        b-values (s/mm²) at or below this count as b=0.

    Raises
    ------
    InputError
        One-line message naming ``dwi.source`` and the problem, with the numbers.
    """
    src = dwi.source
    _check_shapes(dwi)
    _check_affine(dwi)
    _check_tracking_voxels(dwi)

    bvals = np.asarray(dwi.bvals, dtype=float)
    bvecs = np.asarray(dwi.bvecs_voxel, dtype=float)
    if not np.all(np.isfinite(bvals)) or np.any(bvals < 0):
        raise InputError(src, "b-values must be finite and non-negative")
    if not np.all(np.isfinite(bvecs)):
        raise InputError(src, "b-vectors contain NaN or infinite values")
    _check_bvalue_units(dwi)

    is_b0 = bvals <= b0_threshold
    if not np.any(is_b0):
        raise InputError(src, f"no b=0 volume: the smallest b-value is {bvals.min():g} s/mm² "
                              f"(b ≤ {b0_threshold:g} counts as b=0)")
    dw = ~is_b0
    norms = np.linalg.norm(bvecs, axis=1)
    zero = np.flatnonzero(dw & (norms < ZERO_VECTOR))
    if zero.size:
        raise InputError(src, f"volume(s) {_fmt_idx(zero)} have b>{b0_threshold:g} s/mm² but a zero b-vector "
                              "(scanner-derived trace/ADC images? import_dwi drops them)")
    off = np.flatnonzero(dw & (np.abs(norms - 1) > UNIT_TOLERANCE))
    if off.size:
        raise InputError(src, f"b-vector of volume {off[0]} has length {norms[off[0]]:.3g}, expected 1 "
                              f"(±{UNIT_TOLERANCE:g}); {off.size} volume(s) affected")

    tidy = np.zeros_like(bvecs)
    tidy[dw] = bvecs[dw] / norms[dw, None]
    rescaled = int(np.count_nonzero(np.abs(norms[dw] - 1) > 1e-3))
    if rescaled:
        logger.info("%s: normalised %d b-vector(s) to unit length", src, rescaled)
    dwi.bvecs_voxel = tidy

    dirs = tidy[dw]
    rank = _tensor_design_rank(dirs)
    if rank < 6:
        n_unique = _unique_directions(dirs)
        raise InputError(src, f"only {n_unique} distinct gradient direction(s) among {dirs.shape[0]} b>0 volumes "
                              f"(tensor design rank {rank}); at least 6 non-collinear directions are needed")

    n_bad, first = _first_nonfinite(np.asarray(dwi.data))
    if n_bad:
        raise InputError(src, f"{n_bad} voxel(s) are NaN or infinite (first in volume {first})")


def _fmt_idx(idx, limit: int = 10) -> str:
    idx = [int(i) for i in idx]
    shown = ", ".join(str(i) for i in idx[:limit])
    return shown + (f", … ({len(idx)} in all)" if len(idx) > limit else "")


# ----------------------------------------------------------------- transformations


def drop_derived_volumes(dwi: DWIData, b0_threshold: float = B0_THRESHOLD) -> tuple[DWIData, list[int]]:
    """Remove scanner-derived volumes (trace/ADC/isotropic images) from a series.

    Such volumes carry a b-value above ``b0_threshold`` but a zero b-vector (e.g.
    the Philips "isotropic" image stored after the directions).

    Parameters
    ----------
    dwi : DWIData
        Series whose counts of volumes, b-values and b-vectors agree.
    b0_threshold : float
        b-values (s/mm²) at or below this are b=0 volumes and never dropped.

    Returns
    -------
    dwi : DWIData
        A new series without those volumes (the input itself when none is found).
    dropped : list of int
        Indices (0-based, in the input) of the removed volumes.
    """
    _check_shapes(dwi)
    norms = np.linalg.norm(np.asarray(dwi.bvecs_voxel, float), axis=1)
    bvals = np.asarray(dwi.bvals, float)
    derived = (bvals > b0_threshold) & (norms < ZERO_VECTOR)
    dropped = [int(i) for i in np.flatnonzero(derived)]
    if not dropped:
        return dwi, []
    keep = ~derived
    logger.warning("%s: dropping %d scanner-derived volume(s) (b>0 with zero b-vector): %s",
                   dwi.source, len(dropped), _fmt_idx(dropped))
    out = replace(
        dwi,
        data=np.ascontiguousarray(dwi.data[..., keep]),
        bvals=np.asarray(dwi.bvals)[keep].copy(),
        bvecs_voxel=np.asarray(dwi.bvecs_voxel)[keep].copy(),
        metadata=copy.deepcopy(dwi.metadata),
    )
    return out, dropped


_AXES = "ijk"


def _reorient_axis_key(value: str, ornt: np.ndarray, signed: bool) -> str | None:
    """Map a BIDS axis label ('i', 'j-', ...) through an orientation transform."""
    value = str(value).strip()
    if not value or value[0] not in _AXES or value[1:] not in ("", "-"):
        return None
    axis_in = _AXES.index(value[0])
    axis_out, flip = int(ornt[axis_in, 0]), float(ornt[axis_in, 1])
    negative = value.endswith("-") != (flip < 0)
    return _AXES[axis_out] + ("-" if signed and negative else "")


def _reorient_metadata(meta: dict, ornt: np.ndarray) -> dict:
    """Copy of a BIDS sidecar with voxel-axis keys updated for a voxel reorientation."""
    meta = copy.deepcopy(meta)
    if "SliceTiming" in meta and "SliceEncodingDirection" not in meta:
        meta["SliceEncodingDirection"] = "k"  # BIDS default, made explicit before it changes
    for key, signed in (("PhaseEncodingDirection", True), ("SliceEncodingDirection", True),
                        ("PhaseEncodingAxis", False)):
        if key in meta:
            new = _reorient_axis_key(meta[key], ornt, signed)
            if new is None:
                logger.warning("cannot reorient sidecar %s=%r; left unchanged", key, meta[key])
            else:
                meta[key] = new
    return meta


def to_ras(dwi: DWIData) -> DWIData:
    """Reorient a series to the closest canonical RAS+ voxel order (no resampling).

    Voxels are permuted/flipped only (an oblique acquisition stays oblique);
    b-vectors follow the axes so their world-space directions are unchanged
    (:func:`gradients.reorient_image_and_bvecs`). Sidecar keys that refer to voxel
    axes (``PhaseEncodingDirection``, ``SliceEncodingDirection``,
    ``PhaseEncodingAxis``) are updated to the new axes.

    Parameters
    ----------
    dwi : DWIData
        Any orientation.

    Returns
    -------
    DWIData
        New object (the input itself if it is already RAS).
    """
    affine = np.asarray(dwi.affine, float)
    ornt = ornt_transform(io_orientation(affine), axcodes2ornt(("R", "A", "S")))
    if np.array_equal(ornt, axcodes2ornt(("R", "A", "S"))):
        return dwi
    img = nib.Nifti1Image(np.asarray(dwi.data), affine)
    new_img, new_bvecs = gradients.reorient_image_and_bvecs(img, dwi.bvecs_voxel, "RAS")
    logger.info("%s: reoriented %s -> RAS", dwi.source, "".join(nib.aff2axcodes(affine)))
    return replace(
        dwi,
        data=np.ascontiguousarray(np.asarray(new_img.dataobj), dtype=np.float32),
        affine=np.asarray(new_img.affine, float),
        bvecs_voxel=new_bvecs,
        metadata=_reorient_metadata(dwi.metadata, ornt),
    )


# ------------------------------------------------------------------------- the stage


def import_dwi(
    nifti: DWIPath | None = None,
    bval: DWIPath | None = None,
    bvec: DWIPath | None = None,
    sidecar: DWIPath | None = None,
    dicom: DWIPath | None = None,
    series: str | int | None = None,
    work_dir: DWIPath = ".",
    b0_threshold: float = B0_THRESHOLD,
) -> DWIData:
    """The import stage: read a DWI series, drop derived volumes, validate, reorient to RAS+.

    Parameters
    ----------
    nifti : path-like, optional
        4D diffusion NIfTI; ``bval``/``bvec``/``sidecar`` default to its same-stem
        files (:func:`find_sidecars`).
    bval, bvec, sidecar : path-like, optional
        FSL b-values (s/mm²), FSL-frame b-vectors, BIDS JSON; only with ``nifti``.
    dicom : path-like, optional
        Instead of ``nifti``: a DICOM folder or file (gzipped accepted), converted
        with dcm2niix (:func:`csttool_nipype.science.dicom.convert_dicom`).
    series : str or int, optional
        With ``dicom``: which diffusion series to use when there are several
        (SeriesNumber or SeriesDescription substring).
    work_dir : path-like
        Where DICOM conversion writes its files (unused for NIfTI input).
    b0_threshold : float
        b-values (s/mm²) at or below this are b=0 volumes.

    Returns
    -------
    DWIData
        float32 data in closest-RAS+ voxel order, b-vectors in its voxel axes
        (unit length, zero for b=0), and ``metadata["csttool_import"]`` recording
        ``source``, ``source_type`` ("nifti"/"dicom"), ``converted_nifti`` (DICOM
        only), ``dcm2niix_removed_volumes`` (DICOM only), ``dropped_volumes``
        (indices into the read series), ``original_orientation`` (e.g. "LAS"),
        ``original_shape``, ``original_affine``, ``orientation`` ("RAS"),
        ``b0_threshold``.

    Raises
    ------
    InputError
        Neither or both of ``nifti`` and ``dicom`` given, or any problem with the
        input (see :func:`load_dwi`, :func:`validate_dwi`, ``convert_dicom``).
    """
    if (nifti is None) == (dicom is None):
        raise InputError(None, "give either a diffusion NIfTI or a DICOM folder/file (exactly one of them)")
    record: dict = {}
    if dicom is not None:
        if any(x is not None for x in (bval, bvec, sidecar)):
            raise InputError(dicom, "bval/bvec/sidecar files cannot be combined with DICOM input "
                                    "(dcm2niix writes them)")
        from csttool_nipype.science import dicom as dicom_mod

        work_dir = Path(work_dir)
        nii, bval, bvec, sidecar = dicom_mod.convert_dicom(dicom, work_dir, series=series)
        source = str(dicom)
        record.update(source_type="dicom", converted_nifti=str(nii),
                      dcm2niix_removed_volumes=dicom_mod.dcm2niix_removed_volumes(work_dir / dicom_mod.LOG_NAME))
        if series is not None:
            record["series"] = str(series)
    else:
        nii, source = Path(nifti), str(nifti)
        record["source_type"] = "nifti"

    dwi = read_dwi(nii, bval, bvec, sidecar, source=source)
    original_affine = np.asarray(dwi.affine, float).copy()
    original_shape = list(np.asarray(dwi.data).shape)
    _check_shapes(dwi)
    _check_some_directions(dwi, b0_threshold)
    dwi, dropped = drop_derived_volumes(dwi, b0_threshold)
    validate_dwi(dwi, b0_threshold)
    dwi = to_ras(dwi)

    meta = dict(dwi.metadata) if dwi.metadata is not None else {}
    meta[IMPORT_KEY] = {
        "source": source,
        **record,
        "dropped_volumes": dropped,
        "original_orientation": "".join(nib.aff2axcodes(original_affine)),
        "original_shape": original_shape,
        "original_affine": original_affine.tolist(),
        "orientation": "".join(nib.aff2axcodes(dwi.affine)),
        "b0_threshold": float(b0_threshold),
    }
    dwi.metadata = meta
    logger.info("imported %s: %s, %d volumes (%d dropped), %s -> %s", source,
                "×".join(str(s) for s in dwi.data.shape[:3]), dwi.n_volumes, len(dropped),
                meta[IMPORT_KEY]["original_orientation"], meta[IMPORT_KEY]["orientation"])
    return dwi

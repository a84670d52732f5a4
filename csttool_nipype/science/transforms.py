"""Registration transforms: the result of a registration to MNI, warps and points through it, files.

Transform conventions (all in world RAS+ millimetres)
-----------------------------------------------------
dipy's convention is kept: the template is the *static* image, the subject the
*moving* one. :attr:`RegistrationResult.affine_subject_to_mni` is the affine found by
registering the subject *to* MNI, which, as a map of points, takes an **MNI point to
the subject point** that corresponds to it::

    x_subject = affine_subject_to_mni @ x_mni        (homogeneous, 4x4)

so resampling the subject onto an MNI grid pulls subject values through it, and the
matrix equals the *pose* that places an MNI brain in the scanner (as the phantom's
``pose`` is defined). Its inverse maps subject points to MNI points. The SyN map
(``mapping``, a :class:`dipy.align.imwarp.DiffeomorphicMap` whose ``prealign`` is the
affine) adds a displacement on top of it; use :func:`mni_to_subject_points` and
:func:`subject_to_mni_points` to map points through the whole transform, and
:func:`warp_to_subject` / :func:`warp_to_mni` for images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..jsonutil import jsonable
from .templates import Template


# --------------------------------------------------------------------------- checks
def check_3d(name, arr, shape=None):
    """``arr`` as an array, checked to be 3D (and of ``shape`` if given); ValueError naming ``name`` otherwise."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3D array, got shape {arr.shape}")
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} shape {arr.shape} does not match {tuple(shape)}")
    return arr


def check_affine(affine):
    """``affine`` as a float (4, 4) array, checked to be finite and invertible (ValueError otherwise)."""
    affine = np.asarray(affine, float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError("affine must be a finite, invertible 4x4 matrix")
    return affine


def affine_map(affine, template: Template | None = None, shape=None, grid=None):
    """dipy ``AffineMap`` of a 4x4 affine (MNI mm -> subject mm) between the ``template`` grid (domain) and a
    subject grid of ``shape`` with voxel-to-world ``grid`` (codomain); grids may be None."""
    from dipy.align.imaffine import AffineMap

    return AffineMap(np.asarray(affine, float),
                     domain_grid_shape=None if template is None else template.shape,
                     domain_grid2world=None if template is None else template.affine,
                     codomain_grid_shape=shape, codomain_grid2world=grid)



# --------------------------------------------------------------------------- result
@dataclass
class RegistrationResult:
    """Outcome of :func:`~csttool_nipype.science.registration.register_to_mni`.

    Attributes
    ----------
    affine_subject_to_mni : ndarray, (4, 4)
        dipy's registration affine of the subject (moving) to MNI (static), world mm.
        As a point map it sends MNI points to subject points:
        ``x_subject = A @ x_mni``; see the module docstring.
    mapping : DiffeomorphicMap or None
        SyN map on the template grid, pre-aligned by the affine (None when SyN was
        skipped). ``mapping.transform`` pulls a subject image onto the template grid,
        ``mapping.transform_inverse`` an MNI image onto the subject grid.
    quality : dict
        Numbers computed after warping the template onto the subject (see
        :func:`~csttool_nipype.science.registration.registration_quality`): ``wm_dice``, ``brain_dice``, ``correlation``
        (all in [0, 1] or [-1, 1]; higher is better), ``affine_wm_dice`` (the same
        Dice with the affine part only) and ``acceptable`` (bool: both Dice values above
        :data:`~csttool_nipype.science.registration.QUALITY_MIN_WM_DICE` / ``QUALITY_MIN_BRAIN_DICE``).
    template_shape, template_affine :
        The template grid the registration ran on (the SyN field's grid).
    subject_shape, subject_affine :
        The subject grid the registration was computed for.
    template_resolution_mm : float
        Voxel size of the template grid, mm.
    runtime_s : float
        Wall-clock time of :func:`register_to_mni`, seconds.
    stages : dict
        Diagnostics: centre-of-mass translation (mm), wall time per stage (s), the
        grey/white FA ratio used for SyN, total CPU time ``cpu_s``.
    """

    affine_subject_to_mni: np.ndarray
    mapping: object | None
    quality: dict
    template_shape: tuple[int, int, int]
    template_affine: np.ndarray
    subject_shape: tuple[int, int, int]
    subject_affine: np.ndarray
    template_resolution_mm: float = 2.0
    runtime_s: float = float("nan")
    stages: dict = field(default_factory=dict)

    @property
    def mni_to_subject_affine(self) -> np.ndarray:
        """Point map MNI mm -> subject mm of the affine part (same matrix as ``affine_subject_to_mni``)."""
        return np.asarray(self.affine_subject_to_mni, float)

    @property
    def subject_to_mni_affine(self) -> np.ndarray:
        """Point map subject mm -> MNI mm of the affine part (its inverse)."""
        return np.linalg.inv(self.affine_subject_to_mni)



# --------------------------------------------------------------------------- warps
def _apply_3d_or_4d(fn, image):
    image = np.asarray(image)
    if image.ndim == 3:
        return fn(image)
    if image.ndim == 4:
        return np.stack([fn(image[..., i]) for i in range(image.shape[3])], axis=-1)
    raise ValueError(f"expected a 3D or 4D image, got shape {image.shape}")


def _prep(image, interpolation):
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    # a writable float32 copy (dipy's Cython warps need writable buffers); labels and
    # masks survive the float32 round trip of nearest-neighbour interpolation
    return np.array(image, dtype=np.float32, copy=True, order="C")


def warp_to_subject(
    mni_image: np.ndarray,
    mni_affine: np.ndarray,
    result: RegistrationResult,
    subject_shape: tuple[int, int, int],
    subject_affine: np.ndarray,
    interpolation: str = "linear",
) -> np.ndarray:
    """Resample an image in MNI space onto a subject grid through the registration.

    Parameters
    ----------
    mni_image : ndarray, (X, Y, Z) or (X, Y, Z, N)
        Image on any MNI grid (e.g. a 1 mm atlas, in any voxel order).
    mni_affine : ndarray, (4, 4)
        Its voxel-to-world (MNI mm) affine.
    result : RegistrationResult
    subject_shape : tuple of int
        Output grid shape (3D).
    subject_affine : ndarray, (4, 4)
        Output voxel-to-world (subject RAS+ mm) affine; need not be the grid the
        registration was run on.
    interpolation : {'linear', 'nearest'}

    Returns
    -------
    ndarray, float32, ``subject_shape`` (+ (N,) for 4D input)
        Zero outside the MNI image.
    """
    mni_affine = check_affine(mni_affine)
    subject_affine = check_affine(subject_affine)
    shape = tuple(int(n) for n in subject_shape)
    w2g = np.linalg.inv(mni_affine)

    if result.mapping is not None:
        mapping = result.mapping

        def fn(vol):
            return mapping.transform_inverse(_prep(vol, interpolation), interpolation=interpolation,
                                             image_world2grid=w2g, out_shape=shape,
                                             out_grid2world=subject_affine)
    else:
        amap = affine_map(result.affine_subject_to_mni, None)

        def fn(vol):
            vol = _prep(vol, interpolation)
            return amap.transform_inverse(vol, interpolation=interpolation, image_grid2world=mni_affine,
                                          sampling_grid_shape=shape, sampling_grid2world=subject_affine)

    return _apply_3d_or_4d(lambda v: np.asarray(fn(v), np.float32), mni_image)


def warp_to_mni(
    subject_image: np.ndarray,
    subject_affine: np.ndarray,
    result: RegistrationResult,
    *,
    out_shape: tuple[int, int, int] | None = None,
    out_affine: np.ndarray | None = None,
    interpolation: str = "linear",
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a subject image onto an MNI grid through the registration.

    Parameters
    ----------
    subject_image : ndarray, (X, Y, Z) or (X, Y, Z, N)
    subject_affine : ndarray, (4, 4)
        Its voxel-to-world (subject RAS+ mm) affine.
    result : RegistrationResult
    out_shape, out_affine : optional
        MNI output grid; default the template grid the registration ran on.
    interpolation : {'linear', 'nearest'}

    Returns
    -------
    image : ndarray, float32
    mni_affine : ndarray, (4, 4)
        Voxel-to-MNI-world affine of the output.
    """
    subject_affine = check_affine(subject_affine)
    if (out_shape is None) != (out_affine is None):
        raise ValueError("give both out_shape and out_affine, or neither")
    if out_shape is None:
        out_shape, out_affine = result.template_shape, result.template_affine
    out_affine = check_affine(out_affine)
    shape = tuple(int(n) for n in out_shape)
    w2g = np.linalg.inv(subject_affine)

    if result.mapping is not None:
        mapping = result.mapping

        def fn(vol):
            return mapping.transform(_prep(vol, interpolation), interpolation=interpolation,
                                     image_world2grid=w2g, out_shape=shape, out_grid2world=out_affine)
    else:
        amap = affine_map(result.affine_subject_to_mni, None)

        def fn(vol):
            return amap.transform(_prep(vol, interpolation), interpolation=interpolation,
                                  image_grid2world=subject_affine, sampling_grid_shape=shape,
                                  sampling_grid2world=out_affine)

    return _apply_3d_or_4d(lambda v: np.asarray(fn(v), np.float32), subject_image), np.array(out_affine)


def mni_to_subject_points(points_mni: np.ndarray, result: RegistrationResult) -> np.ndarray:
    """Map MNI world points (N, 3) in mm to the subject's world space (mm), SyN included."""
    pts = np.atleast_2d(np.asarray(points_mni, float))
    if result.mapping is None:
        return nib.affines.apply_affine(result.affine_subject_to_mni, pts)
    return np.asarray(result.mapping.transform_points(pts.astype(np.float64)), float)


def subject_to_mni_points(points_subject: np.ndarray, result: RegistrationResult) -> np.ndarray:
    """Map subject world points (N, 3) in mm to MNI world space (mm), SyN included."""
    pts = np.atleast_2d(np.asarray(points_subject, float))
    if result.mapping is None:
        return nib.affines.apply_affine(np.linalg.inv(result.affine_subject_to_mni), pts)
    return np.asarray(result.mapping.transform_points_inverse(pts.astype(np.float64)), float)


# --------------------------------------------------------------------------- files
_FORMAT_VERSION = 1
_MAP_ARRAYS = ("disp_grid2world", "domain_grid2world", "codomain_grid2world", "prealign")
_MAP_SHAPES = ("disp_shape", "domain_shape", "codomain_shape")


def save_registration(result: RegistrationResult, out_dir: str | Path) -> dict[str, Path]:
    """Write a registration to a folder, loadable by :func:`load_registration`.

    Files
    -----
    ``affine_subject_to_mni.txt`` / ``.npy``
        :attr:`RegistrationResult.affine_subject_to_mni` (dipy convention: maps MNI
        world mm to subject world mm), text with 17 significant digits and binary.
    ``affine_mni_from_subject.txt``
        Its inverse (maps subject world mm to MNI world mm), for convenience.
    ``syn_forward.nii``, ``syn_backward.nii`` (only with SyN)
        dipy's displacement fields, float32 (X, Y, Z, 3) in mm, on the template grid
        (the NIfTI affine is the field's voxel-to-MNI affine). ``forward``/``backward``
        are dipy's internal names; which one an image warp uses depends on
        ``is_inverse``, stored in the JSON.
    ``registration.json``
        Grids, the DiffeomorphicMap's metadata (shapes, affines, prealign,
        ``is_inverse``), quality, stage timings and the convention in words.

    Returns
    -------
    dict of str -> Path
        Keys ``affine_txt``, ``affine_npy``, ``inverse_affine_txt``, ``json`` and, with
        SyN, ``syn_forward``, ``syn_backward``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    aff = np.asarray(result.affine_subject_to_mni, float)
    paths = {
        "affine_txt": out_dir / "affine_subject_to_mni.txt",
        "affine_npy": out_dir / "affine_subject_to_mni.npy",
        "inverse_affine_txt": out_dir / "affine_mni_from_subject.txt",
        "json": out_dir / "registration.json",
    }
    np.savetxt(paths["affine_txt"], aff, fmt="%.17g",
               header="dipy registration affine of the subject (moving) to MNI (static): x_subject = A @ x_mni (mm)")
    np.save(paths["affine_npy"], aff)
    np.savetxt(paths["inverse_affine_txt"], np.linalg.inv(aff), fmt="%.17g",
               header="inverse of affine_subject_to_mni: x_mni = B @ x_subject (mm)")
    meta = {
        "format_version": _FORMAT_VERSION,
        "convention": "world RAS+ mm; affine_subject_to_mni maps MNI points to subject points (dipy: static=MNI, "
                      "moving=subject); the SyN map is a dipy DiffeomorphicMap whose transform() pulls subject images "
                      "onto MNI and transform_inverse() MNI images onto the subject",
        "template_shape": list(result.template_shape),
        "template_affine": np.asarray(result.template_affine, float).tolist(),
        "subject_shape": list(result.subject_shape),
        "subject_affine": np.asarray(result.subject_affine, float).tolist(),
        "template_resolution_mm": float(result.template_resolution_mm),
        "quality": jsonable(result.quality),
        "stages": jsonable(result.stages),
        "runtime_s": float(result.runtime_s),
        "files": {k: v.name for k, v in paths.items() if k != "json"},
        "mapping": None,
    }
    mapping = result.mapping
    if mapping is not None:
        disp_aff = np.asarray(mapping.disp_grid2world, float)
        for key, field_ in (("syn_forward", mapping.forward), ("syn_backward", mapping.backward)):
            # uncompressed: gzip saves only ~15 % on float32 displacements and costs
            # more time than the rest of the file writing
            paths[key] = out_dir / f"{key}.nii"
            img = nib.Nifti1Image(np.asarray(field_, np.float32), disp_aff)
            img.header.set_intent("vector")
            img.header["descrip"] = b"dipy DiffeomorphicMap displacement (mm)"
            img.to_filename(paths[key])
            meta["files"][key] = paths[key].name
        meta["mapping"] = {
            "dim": int(mapping.dim),
            "is_inverse": bool(mapping.is_inverse),
            **{k: None if getattr(mapping, k) is None else np.asarray(getattr(mapping, k), float).tolist()
               for k in _MAP_ARRAYS},
            **{k: None if getattr(mapping, k) is None else [int(n) for n in getattr(mapping, k)] for k in _MAP_SHAPES},
        }
    paths["json"].write_text(json.dumps(meta, indent=2))
    return paths


def load_registration(paths: dict | str | Path) -> RegistrationResult:
    """Read a registration written by :func:`save_registration`.

    Parameters
    ----------
    paths : dict, or path of the folder or of its ``registration.json``
        The dict returned by :func:`save_registration` (only ``json`` is needed; the
        other files are looked up next to it).

    Returns
    -------
    RegistrationResult
        Warps with it give the same output as with the original result.

    Raises
    ------
    InputError
        A file is missing or not a registration written by this module.
    """
    from dipy.align.imwarp import DiffeomorphicMap

    from csttool_nipype.errors import InputError

    if isinstance(paths, dict):
        json_path = Path(paths["json"])
    else:
        json_path = Path(paths)
        if json_path.is_dir():
            json_path = json_path / "registration.json"
    if not json_path.is_file():
        raise InputError(json_path, "registration file not found")
    try:
        meta = json.loads(json_path.read_text())
        version = meta["format_version"]
    except (ValueError, KeyError) as exc:
        raise InputError(json_path, f"not a registration written by csttool ({exc})") from exc
    if version != _FORMAT_VERSION:
        raise InputError(json_path, f"unsupported registration format version {version}")
    folder = json_path.parent
    aff_path = folder / meta["files"]["affine_npy"]
    if not aff_path.is_file():
        raise InputError(aff_path, "registration affine file not found")
    affine = np.load(aff_path)
    mapping = None
    mm = meta.get("mapping")
    if mm is not None:
        mapping = DiffeomorphicMap(
            dim=mm["dim"], disp_shape=mm["disp_shape"],
            disp_grid2world=None if mm["disp_grid2world"] is None else np.array(mm["disp_grid2world"]),
            domain_shape=mm["domain_shape"],
            domain_grid2world=None if mm["domain_grid2world"] is None else np.array(mm["domain_grid2world"]),
            codomain_shape=mm["codomain_shape"],
            codomain_grid2world=None if mm["codomain_grid2world"] is None else np.array(mm["codomain_grid2world"]),
            prealign=None if mm["prealign"] is None else np.array(mm["prealign"]),
        )
        fields_ = []
        for key in ("syn_forward", "syn_backward"):
            path = folder / meta["files"][key]
            if not path.is_file():
                raise InputError(path, "SyN displacement field file not found")
            data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
            if data.shape != tuple(mm["disp_shape"]) + (mm["dim"],):
                raise InputError(path, f"displacement field shape {data.shape} does not match the registration")
            fields_.append(np.ascontiguousarray(data))
        mapping.forward, mapping.backward = fields_
        mapping.is_inverse = bool(mm["is_inverse"])
    return RegistrationResult(
        affine_subject_to_mni=affine, mapping=mapping, quality=dict(meta.get("quality", {})),
        template_shape=tuple(meta["template_shape"]), template_affine=np.array(meta["template_affine"]),
        subject_shape=tuple(meta["subject_shape"]), subject_affine=np.array(meta["subject_affine"]),
        template_resolution_mm=float(meta["template_resolution_mm"]), runtime_s=float(meta.get("runtime_s", np.nan)),
        stages=dict(meta.get("stages", {})),
    )
